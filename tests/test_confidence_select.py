"""confidence_select: the SPEC's selection rule, edge cases and argument errors."""
from __future__ import annotations

import math

import pytest
import torch

import ssfdan_ext
from ssfdan_ext import IGNORE, reference


def _logits(B=2, C=5, H=9, W=13, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(B, C, H, W, generator=gen)).to(dtype)


def _brute_force(logits, rho):
    """Per image and class: sort the class's confidences, keep those >= the K-th largest."""
    prob = torch.softmax(logits.float(), 1)
    conf, label = prob.max(1)
    keep = torch.zeros_like(label, dtype=torch.bool)
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            idx = (label[b] == c).nonzero(as_tuple=True)
            n = idx[0].numel()
            k = min(math.ceil(rho * n), n)
            if k:
                thr = conf[b][idx].sort(descending=True).values[k - 1]
                keep[b] |= (label[b] == c) & (conf[b] >= thr)
    return torch.where(keep, label, IGNORE), keep


@pytest.mark.parametrize("rho", [0.0, 1e-6, 0.3, 0.5, 0.8, 1.0])
def test_matches_brute_force(rho):
    logits = _logits()
    sel = ssfdan_ext.confidence_select(logits, rho)
    labels, keep = _brute_force(logits, rho)
    assert torch.equal(sel.labels, labels)
    assert torch.equal(sel.counts, torch.stack([torch.bincount(l[l != IGNORE], minlength=5) for l in labels]))
    conf = torch.softmax(logits, 1).max(1).values
    torch.testing.assert_close(sel.confidence, torch.where(keep, conf, 0))
    sums = torch.stack([torch.zeros(5, dtype=torch.float64).index_add_(0, labels[b][keep[b]],
                                                                        conf[b][keep[b]].double())
                        for b in range(2)])
    torch.testing.assert_close(sel.conf_sums, sums.float(), rtol=1e-5, atol=0)
    expected_tau = torch.where(sel.counts > 0, (sel.counts / sums.clamp(min=1e-30)).sqrt(), 0).float()
    torch.testing.assert_close(sel.tau, expected_tau, rtol=1e-5, atol=0)


def test_rho_one_keeps_every_pixel_and_tiny_rho_one_per_class():
    logits = _logits(seed=1)
    label = logits.argmax(1)
    assert torch.equal(ssfdan_ext.confidence_select(logits, 1.0).labels, label)
    sel = ssfdan_ext.confidence_select(logits, 1e-9)
    present = torch.stack([torch.bincount(l.flatten(), minlength=5) for l in label]) > 0
    assert torch.equal(sel.counts, present.long())  # K = ceil(tiny * N) = 1 per present class (no ties here)


def test_ties_at_threshold_are_all_kept():
    # Every pixel of class 0 has the same confidence: any K >= 1 keeps all of them.
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 0] = 2.0
    logits[0, 1, 0, 0] = 5.0  # one pixel of class 1
    sel = ssfdan_ext.confidence_select(logits, 0.1)
    assert sel.counts.tolist() == [[15, 1, 0]]
    assert (sel.labels != IGNORE).all()


def test_low_precision_inputs_are_computed_in_float32():
    logits = _logits(dtype=torch.bfloat16)
    sel = ssfdan_ext.confidence_select(logits, 0.5)
    ref = ssfdan_ext.confidence_select(logits.float(), 0.5)
    assert sel.confidence.dtype == torch.float32
    assert torch.equal(sel.labels, ref.labels) and torch.equal(sel.confidence, ref.confidence)
    half = ssfdan_ext.confidence_select(_logits(dtype=torch.float16), 0.5)
    assert half.conf_sums.dtype == torch.float32 and half.tau.dtype == torch.float32


def test_single_class_and_one_pixel():
    sel = ssfdan_ext.confidence_select(torch.randn(2, 1, 3, 3), 0.5)
    # C = 1: every confidence is 1.0, so the threshold ties with all pixels.
    assert sel.counts.tolist() == [[9], [9]] and (sel.labels == 0).all()
    sel = ssfdan_ext.confidence_select(torch.tensor([[[[0.0]], [[1.0]]]]), 0.8)
    assert sel.labels.tolist() == [[[1]]] and sel.counts.tolist() == [[0, 1]]


def test_outputs_carry_no_gradient():
    logits = _logits().requires_grad_(True)
    sel = ssfdan_ext.confidence_select(logits, 0.5)
    assert all(not t.requires_grad for t in sel)


@pytest.mark.parametrize("logits,rho,error,match", [
    (torch.randn(2, 3, 4), 0.5, ValueError, r"logits must be \(B, C, H, W\)"),
    (torch.ones(1, 3, 4, 4, dtype=torch.long), 0.5, TypeError, "floating-point"),
    (torch.randn(1, 3, 4, 4), 1.5, ValueError, r"rho must be in \[0, 1\]"),
    (torch.randn(1, 3, 4, 4), -0.1, ValueError, r"rho must be in \[0, 1\]"),
    (torch.randn(1, 3, 4, 4), float("nan"), ValueError, r"rho must be in \[0, 1\]"),
    (torch.randn(1, 3, 4, 4), "0.5", TypeError, "rho must be a float"),
    (torch.tensor([[[[0.0]], [[float("nan")]]]]), 0.5, ValueError, "NaN or Inf"),
    (torch.tensor([[[[0.0]], [[float("inf")]]]]), 0.5, ValueError, "NaN or Inf"),
    (torch.randn(1, 256, 2, 2), 0.5, ValueError, r"number of classes\) must be in \[1, 255\]"),
])
def test_errors(logits, rho, error, match):
    with pytest.raises(error, match=match):
        ssfdan_ext.confidence_select(logits, rho)
    with pytest.raises(error, match=match):
        reference.confidence_select(logits, rho)
