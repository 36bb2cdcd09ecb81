"""Separation selects (docs: semantics, separation): a non-finite feature reaches only its own class's stack, and
every backend gives the same non-finite pattern, in the logits and in every gradient."""
from __future__ import annotations

import pytest
import torch

import ssfdan_ext as sd
from ssfdan_ext.nn.separated_discriminator import BACKENDS

C, N = 3, 4


def _case(value: float):
    torch.manual_seed(0)
    disc = sd.SeparatedDiscriminator(C, N, (4, 4, 4, 4), strides=(1, 1, 2, 1, 2)).double()
    labels = torch.zeros(2, 12, 12, dtype=torch.int64)
    labels[:, :, 8:] = 1  # class 1 on the right third, class 0 elsewhere (the majority: it labels outputs too)
    labels[1, :4, :4] = 2
    features = torch.randn(2, N, 6, 6, dtype=torch.float64)
    features[0, 1, 2, 1] = value  # a class-0 cell
    return disc, features, labels


def _run(backend: str, value: float):
    disc, features, labels = _case(value)
    disc.backend = backend
    features.requires_grad_(True)
    out = disc(features, labels)
    weights = torch.randn_like(out.logits)
    (out.logits * weights).sum().backward()
    grads = {"features": features.grad}
    grads.update({name: p.grad for name, p in disc.named_parameters()})
    return out, grads, disc


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_feature_reaches_only_its_class(value):
    runs = {b: _run(b, value) for b in BACKENDS if b != "auto"}
    ref_out, ref_grads, disc = runs["reference"]
    assert not torch.isfinite(ref_out.logits).all(), "the non-finite feature must reach its own class's logits"
    # Class 1 and class 2 outputs never see it.
    other = (ref_out.labels != 0).unsqueeze(1)
    assert torch.isfinite(ref_out.logits[other]).all()
    for name, grad in ref_grads.items():
        if name == "features":
            continue
        per_class = grad.view(C, -1)
        assert torch.isfinite(per_class[1:]).all(), f"{name}: another class's gradient is not finite"
    for backend, (out, grads, _) in runs.items():
        assert torch.equal(torch.isfinite(out.logits), torch.isfinite(ref_out.logits)), backend
        finite = torch.isfinite(ref_out.logits)
        torch.testing.assert_close(out.logits[finite], ref_out.logits[finite])
        for name, grad in grads.items():
            want = ref_grads[name]
            if name == "features":  # the same entries non-finite, the same values elsewhere
                assert torch.equal(torch.isfinite(grad), torch.isfinite(want)), f"{backend} features gradient"
                ok = torch.isfinite(want)
                torch.testing.assert_close(grad[ok], want[ok], msg=f"{backend} features gradient")
                continue
            # Parameters: the other classes' gradients are finite and equal on every backend; the own class's are
            # non-finite on every backend. Which of its entries are differs: the dense backends also multiply the
            # zero gradient of cells that reach no labelled output cell by their non-finite activations, cells
            # the fused backend never computes (docs: semantics, separation).
            got, ref = grad.view(C, -1), want.view(C, -1)
            assert torch.isfinite(got[1:]).all(), f"{backend} {name}: another class's gradient is not finite"
            torch.testing.assert_close(got[1:], ref[1:], msg=f"{backend} {name}")
            if name.endswith("weight"):
                assert not torch.isfinite(got[0]).all(), f"{backend} {name}: the own class's gradient is finite"
            both = torch.isfinite(got[0]) & torch.isfinite(ref[0])
            torch.testing.assert_close(got[0][both], ref[0][both], msg=f"{backend} {name}")


def test_finite_features_unchanged_by_selection():
    # Selection and multiplication agree on finite inputs: the backends still match exactly there.
    outs = {b: _run(b, 0.5)[0].logits for b in ("reference", "grouped", "fused")}
    torch.testing.assert_close(outs["grouped"], outs["reference"])
    torch.testing.assert_close(outs["fused"], outs["reference"])
