"""Randomized properties (hypothesis): every backend and every compiled op equals the reference, and every bad input
raises its documented exception type.

The default profile ("ci", set in tests/conftest.py) keeps the run short; ``SSFDAN_HYPOTHESIS_PROFILE=thorough``
draws many more examples for local runs.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import ssfdan_ext as sd
from ssfdan_ext import reference
from ssfdan_ext.ops import routed_layer1_dense
from ssfdan_ext.ops.sparse_ssd import sparse_ssd_forward
from ssfdan_ext.testing import checkerboard_labels, street_labels

from conftest import CUDA, assert_close_scaled, require_triton

pytestmark = pytest.mark.skipif(not sd.build_info()["compiled"], reason="compares the compiled ops")

LAYOUTS = ("random", "street", "checkerboard", "single", "ignore", "sparse")


def _labels(layout: str, B: int, H: int, W: int, C: int, gen: torch.Generator) -> torch.Tensor:
    if layout == "street":
        return street_labels(B, H, W, num_classes=C, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
    if layout == "checkerboard":
        return checkerboard_labels(B, H, W, num_classes=C, cell=max(1, min(H, W) // 3))
    if layout == "single":
        return torch.full((B, H, W), int(torch.randint(0, C, (1,), generator=gen)), dtype=torch.int64)
    if layout == "ignore":
        return torch.full((B, H, W), sd.IGNORE, dtype=torch.int64)
    labels = torch.randint(0, C, (B, H, W), generator=gen)
    if layout == "sparse":  # mostly IGNORE, a few labelled pixels
        labels[torch.rand(B, H, W, generator=gen) < 0.8] = sd.IGNORE
    return labels


def _layout_memory(x: torch.Tensor, memory: str) -> torch.Tensor:
    if memory == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if memory == "strided":  # a non-contiguous view with the same values (every other element of an interleave)
        return torch.stack([x, x], dim=-1)[..., 0]
    return x


@st.composite
def discriminator_cases(draw):
    B = draw(st.integers(1, 2))
    C = draw(st.integers(1, 5))
    n = draw(st.integers(1, 6))
    channels = tuple(draw(st.lists(st.integers(1, 5), min_size=4, max_size=4)))
    strides = (1, *draw(st.lists(st.sampled_from((1, 2)), min_size=4, max_size=4)))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    scale = draw(st.integers(1, 3))
    return dict(B=B, C=C, n=n, channels=channels, strides=strides, h=h, w=w, H=h * scale, W=w * scale,
                layout=draw(st.sampled_from(LAYOUTS)), dtype=draw(st.sampled_from((torch.float32, torch.float64))),
                memory=draw(st.sampled_from(("contiguous", "channels_last", "strided"))),
                seed=draw(st.integers(0, 2**16)))


def _seeded_disc(case: dict) -> tuple[sd.SeparatedDiscriminator, torch.Generator]:
    """The case's discriminator (torch's seed set to the case's) and a generator for its inputs."""
    torch.manual_seed(case["seed"])
    disc = sd.SeparatedDiscriminator(case["C"], case["n"], case["channels"], case["strides"]).to(case["dtype"])
    return disc, torch.Generator().manual_seed(case["seed"])


def _drawn(case: dict) -> tuple[sd.SeparatedDiscriminator, torch.Tensor, torch.Tensor]:
    """The case's discriminator, contiguous features (B, n, h, w) and labels (B, H, W)."""
    disc, gen = _seeded_disc(case)
    features = torch.randn(case["B"], case["n"], case["h"], case["w"], generator=gen, dtype=case["dtype"])
    return disc, features, _labels(case["layout"], case["B"], case["H"], case["W"], case["C"], gen)


def _ramp(t: torch.Tensor) -> torch.Tensor:
    """Weights from -1 to 1 over t's elements: an upstream gradient that tells every element apart."""
    return torch.linspace(-1, 1, t.numel(), dtype=t.dtype, device=t.device).view_as(t)


def _forward_backward(disc: sd.SeparatedDiscriminator, features: torch.Tensor, labels: torch.Tensor,
                      grad: torch.Tensor | None):
    features = features.detach().requires_grad_(True)
    disc.zero_grad(set_to_none=True)
    out = disc(features, labels)
    grad = torch.randn_like(out.logits) if grad is None else grad
    (out.logits * grad).sum().backward()
    return out, [features.grad, *(p.grad for p in disc.parameters())], grad


@given(discriminator_cases())
def test_every_backend_equals_the_reference(case):
    disc, features, labels = _drawn(case)
    features = _layout_memory(features, case["memory"])
    disc.backend = "reference"
    ref, ref_grads, grad = _forward_backward(disc, features, labels, None)
    for backend in ("grouped", "fused"):
        disc.backend = backend
        out, grads, _ = _forward_backward(disc, features, labels, grad)
        assert torch.equal(out.labels, ref.labels)
        assert_close_scaled(out.logits, ref.logits, f"{backend} logits")
        for i, (g, r) in enumerate(zip(grads, ref_grads)):
            assert_close_scaled(g, r, f"{backend} gradient {i}")


@pytest.mark.parametrize("device", [CUDA])
@given(case=discriminator_cases())
def test_fused_on_the_gpu_equals_the_cpu_reference(device, case):
    """The fused backend on the GPU (its Triton kernels for float32, ATen for float64) against the reference on
    the CPU, on the same random shapes, strides, layouts and memory formats as the CPU property above: tiles that
    straddle class boundaries, widths of 1-6 channels, classes without pairs."""
    disc, features, labels = _drawn(case)
    disc.backend = "reference"
    ref, ref_grads, grad = _forward_backward(disc, features, labels, None)
    disc.to(device).backend = "fused"
    out, grads, _ = _forward_backward(disc, _layout_memory(features.to(device), case["memory"]), labels.to(device),
                                      grad.to(device))
    assert torch.equal(out.labels.cpu(), ref.labels)
    assert_close_scaled(out.logits.cpu(), ref.logits, "fused logits on the GPU")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert_close_scaled(g.cpu(), r, f"fused gradient {i} on the GPU")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="TRITON_INTERPRET is not 1: the GPU runs the compiled kernels (the test above)")
@settings(max_examples=8)  # the interpreter runs each kernel launch in Python
@given(discriminator_cases())
def test_interpreted_triton_kernels_equal_aten(case):
    """The fused evaluation through the Triton kernels (run by Triton's interpreter on CPU tensors, as the GPU runs
    them compiled) against the same evaluation through the ATen kernels, on random shapes and layouts."""
    require_triton()
    disc, features, labels = _drawn(case)
    plan = disc.plan(labels, (case["h"], case["w"]))
    params = [conv.weight for conv in disc.convs] + [conv.bias for conv in disc.convs]

    def evaluate(impl):
        leaves = [_layout_memory(features, case["memory"]).requires_grad_(True), *params]
        out = sparse_ssd_forward(leaves[0], plan.lf, plan.lo, params[:5], params[5:], disc.strides, case["C"],
                                 impl=impl, rulebook=plan.rulebook)
        return out, torch.autograd.grad((out * _ramp(out)).sum(), leaves, allow_unused=True)

    out, grads = evaluate("triton")
    ref, ref_grads = evaluate("aten")
    assert_close_scaled(out, ref, "interpreted Triton logits")
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        assert (g is None) == (r is None), f"gradient {i}"
        if r is not None:
            assert_close_scaled(g, r, f"interpreted Triton gradient {i}")


@st.composite
def domain_pairs(draw):
    """A discriminator and two domains drawn apart: own batch, feature size, label layout (so a class may be in one
    domain only, or a domain all IGNORE), one of them optionally given as a plan."""
    case = draw(discriminator_cases())
    domains = []
    for _ in range(2):
        h, w, scale = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 3))
        domains.append(dict(B=draw(st.integers(1, 2)), h=h, w=w, H=h * scale, W=w * scale,
                            layout=draw(st.sampled_from(LAYOUTS)), plan=draw(st.booleans())))
    return case, domains


@given(domain_pairs())
def test_forward_domains_equals_two_forwards(pair):
    """SeparatedDiscriminator.forward_domains (one joined evaluation on the fused backend, also at two feature
    sizes) gives each domain's logits, labels and, through a loss over both, every gradient of two forwards."""
    case, domains = pair
    disc, gen = _seeded_disc(case)
    disc.backend = "fused"
    inputs = []
    for d in domains:
        features = _layout_memory(torch.randn(d["B"], case["n"], d["h"], d["w"], generator=gen,
                                              dtype=case["dtype"]), case["memory"])
        labels = _labels(d["layout"], d["B"], d["H"], d["W"], case["C"], gen)
        inputs.append((features.detach().requires_grad_(True), labels))

    def run(forward):
        disc.zero_grad(set_to_none=True)
        for features, _ in inputs:
            features.grad = None
        outputs = forward()
        loss = sum((o.logits * _ramp(o.logits)).sum() for o in outputs)
        loss.backward()
        return outputs, [f.grad for f, _ in inputs] + [p.grad for p in disc.parameters()]

    apart, apart_grads = run(lambda: [disc(f, l) for f, l in inputs])
    given_labels = [disc.plan(l, f.shape[-2:]) if d["plan"] else l for (f, l), d in zip(inputs, domains)]
    joint, joint_grads = run(lambda: disc.forward_domains(inputs[0][0], given_labels[0], inputs[1][0],
                                                          given_labels[1]))
    for got, want in zip(joint, apart):
        assert torch.equal(got.labels, want.labels)
        assert_close_scaled(got.logits, want.logits, "forward_domains logits")
    for i, (got, want) in enumerate(zip(joint_grads, apart_grads)):
        assert_close_scaled(got, want, f"forward_domains gradient {i}")


@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**16),
       st.sampled_from((0.0, 1.0, 0.5, 1e-7)) | st.floats(0, 1), st.booleans())
def test_confidence_select_equals_the_reference(B, C, H, W, seed, rho, ties):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, C, H, W, generator=gen)
    if ties:  # few distinct values: many equal confidences and equal logits
        logits = logits.round()
    sizes = ((max(1, H // 2), max(1, W // 3)),)
    got = sd.confidence_select(logits, rho, out_sizes=sizes)
    want = reference.confidence_select(logits, rho, out_sizes=sizes)
    assert torch.equal(got.labels, want.labels)
    assert torch.equal(got.counts, want.counts)
    assert torch.equal(got.downsampled[0], want.downsampled[0])
    torch.testing.assert_close(got.confidence, want.confidence)
    torch.testing.assert_close(got.conf_sums, want.conf_sums, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.tau, want.tau, rtol=1e-5, atol=1e-6)


@given(st.integers(1, 2), st.integers(1, 6), st.integers(1, 12), st.integers(1, 12), st.integers(1, 12),
       st.integers(1, 12), st.sampled_from(LAYOUTS), st.integers(0, 2**16))
def test_mode_downsample_equals_the_reference(B, C, H, W, h, w, layout, seed):
    assume(h <= H and w <= W)
    labels = _labels(layout, B, H, W, C, torch.Generator().manual_seed(seed))
    assert torch.equal(sd.mode_downsample(labels, (h, w), C), reference.mode_downsample(labels, (h, w), C))


@given(st.integers(1, 2), st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(1, 6),
       st.integers(1, 6), st.sampled_from(LAYOUTS), st.integers(0, 2**16))
def test_routed_layer1_equals_the_grouped_convolution(B, C, n, m, h, w, layout, seed):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, n, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(C * m, n, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(C * m, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = _labels(layout, B, h, w, C, gen)
    own = labels.view(B, 1, 1, h, w) == torch.arange(C).view(1, C, 1, 1, 1)
    separated = torch.where(own, features.unsqueeze(1), 0.0).reshape(B, C * n, h, w)
    want = torch.nn.functional.conv2d(separated, weight, bias, groups=C)
    got = routed_layer1_dense(features, labels, weight, bias, C)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad((want * g).sum(), (features, weight, bias))
    got_grads = torch.autograd.grad((got * g).sum(), (features, weight, bias))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


# --- bad inputs raise their documented exception types ----------------------------------------------------

BAD_RHO = st.one_of(st.floats(allow_nan=True).filter(lambda r: not 0 <= r <= 1), st.just(math.nan))


@given(BAD_RHO)
def test_bad_rho_is_a_value_error(rho):
    with pytest.raises(ValueError):
        sd.confidence_select(torch.randn(1, 3, 4, 4), rho)


@given(st.one_of(st.text(), st.none(), st.booleans(), st.lists(st.floats())))
def test_non_numeric_rho_is_a_type_error(rho):
    with pytest.raises(TypeError):
        sd.confidence_select(torch.randn(1, 3, 4, 4), rho)


@given(st.integers(0, 6).filter(lambda d: d != 4))
def test_wrong_rank_features_is_a_value_error(ndim):
    disc = sd.SeparatedDiscriminator(3, 2, (2, 2, 2, 2))
    with pytest.raises(ValueError):
        disc(torch.randn([2] * ndim), torch.zeros(1, 4, 4, dtype=torch.int64))


@given(st.sampled_from((torch.int32, torch.int64, torch.uint8, torch.bool)))
def test_integer_features_is_a_type_error(dtype):
    disc = sd.SeparatedDiscriminator(3, 2, (2, 2, 2, 2))
    with pytest.raises(TypeError):
        disc(torch.zeros(1, 2, 4, 4, dtype=dtype), torch.zeros(1, 4, 4, dtype=torch.int64))


@given(st.integers(-300, 300).filter(lambda v: not (0 <= v < 3 or v == 255)))
def test_labels_out_of_range_is_a_value_error(value):
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, 1, 2] = value
    with pytest.raises(ValueError):
        sd.mode_downsample(labels, (2, 2), 3)
    with pytest.raises(ValueError):
        sd.SeparatedDiscriminator(3, 2, (2, 2, 2, 2))(torch.randn(1, 2, 4, 4), labels)


@given(st.sampled_from((torch.float32, torch.int32, torch.uint8)))
def test_non_int64_labels_is_a_type_error(dtype):
    with pytest.raises(TypeError):
        sd.mode_downsample(torch.zeros(1, 4, 4, dtype=dtype), (2, 2), 3)
