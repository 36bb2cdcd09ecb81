"""confidence_select: the selection rule of docs/semantics.md, the compiled kernels against the reference, edge cases,
errors."""
from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from conftest import CUDA, DEVICES

import ssfdan_ext
from ssfdan_ext import IGNORE, reference


def _logits(B=2, C=5, H=9, W=13, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(B, C, H, W, generator=gen)).to(dtype)


def _brute_force(logits, rho):
    """Per image and class: sort the class's confidences, keep those >= the K-th largest."""
    conf, label = reference.softmax_confidence(logits)
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
    sel = ssfdan_ext.confidence_select(logits, 0.5, out_sizes=((3, 3),))
    assert all(not t.requires_grad for t in (*sel[:5], *sel.downsampled))


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


# --- the compiled kernels against the reference --------------------------------------------------------------

RHOS = [0.0, 1e-7, 0.5, 0.8, 1.0]
GRID = [  # (B, C, H, W, out_sizes)
    (1, 19, 37, 53, ((5, 7), (1, 2))),  # odd sizes, overlapping bins
    (3, 5, 16, 24, ((16, 24), (4, 6))),  # B > 1, identity downsampling
    (2, 1, 6, 7, ((3, 3),)),  # C = 1: every confidence is 1, all tied
    (2, 4, 1, 1, ((1, 1),)),  # one-pixel images
    (1, 255, 12, 20, ((3, 5),)),  # the most classes, many empty
    (1, 19, 130, 140, ((17, 18), (2, 3))),  # several CPU chunks per image
]


def _grid_logits(B, C, H, W, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        # Few distinct logit values: many pixels share a confidence, ties at every threshold.
        return torch.randint(0, 3, (B, C, H, W), generator=gen).float()
    if kind == "empty":
        # Two dominant classes: every other class is empty in every image.
        x = torch.randn(B, C, H, W, generator=gen)
        x[:, : min(C, 2)] += 10
        return x
    return 3 * torch.randn(B, C, H, W, generator=gen)


def _compare(actual, expected, thr, expected_thr):
    for name in ("labels", "confidence", "counts"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype, name
        torch.testing.assert_close(a.cpu(), e, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(actual.conf_sums.cpu(), expected.conf_sums, rtol=1e-5, atol=0)
    torch.testing.assert_close(actual.tau.cpu(), expected.tau, rtol=1e-5, atol=0)
    assert len(actual.downsampled) == len(expected.downsampled)
    for a, e in zip(actual.downsampled, expected.downsampled):
        torch.testing.assert_close(a.cpu(), e, rtol=0, atol=0)
    torch.testing.assert_close(thr.cpu(), expected_thr, rtol=0, atol=0)  # identical float32 values, inf for K = 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["random", "ties", "empty"])
@pytest.mark.parametrize("case", GRID, ids=lambda c: "x".join(map(str, c[:4])))
def test_kernel_matches_reference(device, case, kind):
    B, C, H, W, sizes = case
    logits = _grid_logits(B, C, H, W, kind, seed=B * C * H + W)
    conf, label = reference.softmax_confidence(logits)
    for rho in RHOS:
        expected = reference.confidence_select(logits, rho, out_sizes=sizes)
        actual = ssfdan_ext.confidence_select(logits.to(device), rho, out_sizes=sizes)
        assert actual.labels.device.type == device
        thr = torch.ops.ssfdan_ext.confidence_select(logits.to(device), rho, [v for s in sizes for v in s])[5]
        _compare(actual, expected, thr, reference.class_thresholds(conf, label, rho, C))
        if kind == "ties" and rho == 0.5 and C > 1 and H * W >= 100:
            # A real selection, and ties at the threshold keep more than K pixels somewhere.
            assert (expected.labels != IGNORE).any() and (expected.labels == IGNORE).any()
            sizes_per_class = torch.stack([torch.bincount(l.flatten(), minlength=C) for l in label])
            assert (expected.counts > torch.ceil(0.5 * sizes_per_class)).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_kernel_low_precision_and_float64(device, dtype):
    logits = _grid_logits(2, 7, 21, 33, "random", seed=3).to(dtype)
    expected = reference.confidence_select(logits, 0.5, out_sizes=((4, 4),))
    actual = ssfdan_ext.confidence_select(logits.to(device), 0.5, out_sizes=((4, 4),))
    conf, label = reference.softmax_confidence(logits)
    kernel_input = logits.float() if dtype == torch.float64 else logits
    thr = torch.ops.ssfdan_ext.confidence_select(kernel_input.to(device), 0.5, [4, 4])[5]
    _compare(actual, expected, thr, reference.class_thresholds(conf, label, 0.5, 7))


@pytest.mark.parametrize("device", DEVICES)
def test_kernel_non_contiguous_and_empty(device):
    base = _grid_logits(2, 6, 40, 30, "random", seed=9)
    logits = base.transpose(2, 3)  # (2, 6, 30, 40), non-contiguous
    expected = reference.confidence_select(logits.contiguous(), 0.3, out_sizes=((7, 9),))
    actual = ssfdan_ext.confidence_select(logits.to(device), 0.3, out_sizes=((7, 9),))
    assert torch.equal(actual.labels.cpu(), expected.labels)
    assert torch.equal(actual.downsampled[0].cpu(), expected.downsampled[0])
    with pytest.raises(ValueError, match="every dimension non-zero"):  # an empty batch is an error everywhere
        ssfdan_ext.confidence_select(torch.zeros(0, 3, 4, 4, device=device), 0.5, out_sizes=((2, 2),))
    # The raw kernel copes with it.
    labels, _, counts, _, _, _, maps = torch.ops.ssfdan_ext.confidence_select(
        torch.zeros(0, 3, 4, 4, device=device), 0.5, [2, 2])
    assert labels.shape == (0, 4, 4) and counts.shape == (0, 3) and maps[0].shape == (0, 2, 2)


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("kind", ["random", "ties", "sharp"])
def test_cuda_matches_cpu_kernel_on_large_images(device, kind):
    # More than 4096 * 256 pixels per image: every CUDA kernel's grid-stride loop runs twice, and "sharp" logits
    # crowd whole classes into a few histogram bins (confidence 1.0 included). The CPU kernel, equal to the
    # reference on the grid above, is the fast oracle at this size.
    B, C, H, W = 2, 19, 1030, 1030
    gen = torch.Generator().manual_seed(11)
    if kind == "ties":
        logits = torch.randint(0, 3, (B, C, H, W), generator=gen).float()
    else:
        logits = (30.0 if kind == "sharp" else 3.0) * torch.randn(B, C, H, W, generator=gen)
    sizes = [129, 129, 1030, 1030]
    for rho in (1e-7, 0.5, 1.0):
        expected = torch.ops.ssfdan_ext.confidence_select(logits, rho, sizes)
        actual = torch.ops.ssfdan_ext.confidence_select(logits.to(device), rho, sizes)
        for i, (a, e) in enumerate(zip(actual[:6], expected[:6])):
            tol = 1e-5 if i in (3, 4) else 0  # conf_sums and tau: float64 sums in another order
            torch.testing.assert_close(a.cpu(), e, rtol=tol, atol=0, msg=lambda m: f"output {i}, rho {rho}: {m}")
        for a, e in zip(actual[6], expected[6]):
            assert torch.equal(a.cpu(), e)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_kernel_rejects_non_finite(device, bad):
    logits = torch.randn(2, 3, 5, 5)
    logits[1, 2, 4, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        ssfdan_ext.confidence_select(logits.to(device), 0.5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        ssfdan_ext.confidence_select(torch.full((1, 2, 1, 1), 1e300, dtype=torch.float64, device=device), 0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_non_differentiable_and_logits_not_kept(device):
    logits = torch.randn(1, 4, 6, 6, device=device, requires_grad=True)
    ref = weakref.ref(logits)
    out = torch.ops.ssfdan_ext.confidence_select(logits, 0.5, [3, 3])
    assert not any(t.requires_grad for t in out[:6]) and not out[6][0].requires_grad
    del logits
    gc.collect()
    assert ref() is None  # nothing in the outputs' history holds the logits


def sample_inputs(device="cpu"):
    """(logits, rho, flat out_sizes) cases of the op: ties at the threshold, random scores, one class, rho 0 and 1."""
    ties = _grid_logits(2, 5, 9, 11, "ties", seed=2).to(device)
    return [(ties, 0.5, [3, 4, 1, 1]), (ties.clone().requires_grad_(True), 0.8, []),
            (_grid_logits(1, 19, 16, 24, "random", seed=3).to(device), 0.3, [2, 3]),
            (_grid_logits(1, 1, 5, 6, "random", seed=4).to(device), 1.0, [5, 6]),
            (_grid_logits(1, 4, 6, 6, "random", seed=5).to(device), 0.0, [])]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_reference_on_sample_inputs(device):
    for logits, rho, flat in sample_inputs(device):
        torch.library.opcheck(torch.ops.ssfdan_ext.confidence_select.default, (logits, rho, flat))
        sizes = tuple(zip(flat[::2], flat[1::2]))
        expected = reference.confidence_select(logits.detach().cpu(), rho, out_sizes=sizes)
        actual = ssfdan_ext.confidence_select(logits, rho, out_sizes=sizes)
        assert torch.equal(actual.labels.cpu(), expected.labels) and torch.equal(actual.counts.cpu(), expected.counts)
        assert all(torch.equal(a.cpu(), e) for a, e in zip(actual.downsampled, expected.downsampled))


@pytest.mark.parametrize("sizes,error,match", [
    (((3, 0),), ValueError, r"out_sizes\[0\] must be positive"),
    (((2, 2), (6, 1)), ValueError, r"out_sizes\[1\] \(6, 1\) must not exceed"),
    ((4, 4), TypeError, r"out_sizes\[0\] must be a pair of ints"),
    ("44", TypeError, "out_sizes must be a sequence"),
])
def test_out_sizes_errors(sizes, error, match):
    with pytest.raises(error, match=match):
        ssfdan_ext.confidence_select(torch.randn(1, 3, 5, 5), 0.5, out_sizes=sizes)


def test_cpp_checks_guard_direct_calls():
    op = torch.ops.ssfdan_ext.confidence_select
    with pytest.raises(ValueError, match="rho must be in"):
        op(torch.randn(1, 3, 4, 4), 1.5, [])
    with pytest.raises(ValueError, match=r"\(h, w\) pairs"):
        op(torch.randn(1, 3, 4, 4), 0.5, [2])
    with pytest.raises(ValueError, match="must be positive and at most"):
        op(torch.randn(1, 3, 4, 4), 0.5, [5, 1])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        op(torch.randn(1, 3, 4, 4, dtype=torch.float64), 0.5, [])
    with pytest.raises(ValueError, match=r"number of classes\) must be in"):
        op(torch.randn(1, 256, 2, 2), 0.5, [])
    # 2^31 pixels per image would wrap the int32 histogram counts; an expanded view checks it without memory.
    with pytest.raises(ValueError, match=r"H \* W must be at most"):
        op(torch.zeros(1, 1, 1, 1).expand(1, 1, 65536, 32768), 0.5, [])
