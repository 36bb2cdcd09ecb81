"""Exact sparse SS-D (fused backend): the rulebook against a set-by-set construction, the sparse layer against a
dense convolution, and the whole discriminator against the reference on the layouts that stress it."""
from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, assert_close_scaled
from test_ssd import _compare_backends, _labels

from ssfdan_ext import IGNORE, SeparatedDiscriminator, mode_downsample, reference
from ssfdan_ext.geometry import layer_sizes, output_size
from ssfdan_ext.ops.sparse_ssd import class_constants, executed_flops, sparse_conv3x3, sparse_ssd_rulebook

TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _maps(labels, C, h, w, strides):
    disc_size = output_size(h, w, strides)
    return mode_downsample(labels, (h, w), C), mode_downsample(labels, disc_size, C)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,C", [("random", 4), ("street", 19), ("checkerboard", 5), ("all_ignore", 3)])
@pytest.mark.parametrize("strides", [(1, 2, 2, 2, 2), (1, 1, 1, 1, 1), (1, 2, 1, 1, 2)])
@pytest.mark.parametrize("h,w", [(9, 13), (2, 3)])
def test_rulebook_matches_the_explicit_sets(device, kind, C, strides, h, w):
    labels = _labels(kind, 2, 4 * h, 4 * w, C, seed=h)
    lf, lo = _maps(labels, C, h, w, strides)
    rb = sparse_ssd_rulebook(lf.to(device), lo.to(device), C, strides[1:])
    lf_masked, taps, offsets, out_index = reference.sparse_ssd_rulebook(lf, lo, C, strides[1:])  # set by set
    assert torch.equal(rb.lf_masked.cpu(), lf_masked)
    for layer in range(4):
        assert torch.equal(rb.taps[layer].cpu(), taps[layer]), f"taps of layer {layer + 2}"
        assert torch.equal(rb.offsets[layer].cpu(), offsets[layer]), f"offsets of layer {layer + 2}"
    assert torch.equal(rb.out_index.cpu(), out_index)


def test_rulebook_is_sparse_on_street_layouts_and_counts_flops():
    C, h, w = 19, 32, 64
    lf, lo = _maps(_labels("street", 1, 256, 512, C, seed=0), C, h, w, (1, 2, 2, 2, 2))
    rb = sparse_ssd_rulebook(lf, lo, C, (2, 2, 2, 2))
    counts = rb.pair_counts()
    dense = [h * w] + [C * a * b for a, b in layer_sizes(h, w, (1, 2, 2, 2, 2))[1:]]
    assert counts[0] == int((lf != IGNORE).sum() - (rb.lf_masked == IGNORE).sum() + (lf == IGNORE).sum())
    assert all(0 < c <= d for c, d in zip(counts, dense)) and counts[1] < dense[1] / 2
    widths = (8, 6, 5, 4, 3, 1)
    expected = 2 * counts[0] * 8 * 6 + sum(2 * counts[l] * 9 * widths[l] * widths[l + 1] for l in range(1, 5))
    assert executed_flops(rb, widths) == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,C,mi,B,h,w", [(torch.float32, 3, 5, 2, 7, 6), (torch.float64, 3, 5, 2, 7, 6),
                                              (torch.float32, 2, 1024, 1, 24, 24)])  # 144 pairs: several blocks
def test_sparse_conv3x3_equals_a_dense_convolution(device, dtype, C, mi, B, h, w):
    # Explicit rows on a full grid, no constants: the layer is one grouped 3x3 convolution, stride 2.
    torch.manual_seed(0)
    mo = 4
    x = torch.randn(B, C * mi, h, w, dtype=dtype, device=device)
    weight = torch.randn(C * mo, mi, 3, 3, dtype=dtype, device=device)
    bias = torch.randn(C * mo, dtype=dtype, device=device)
    dense = torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1, groups=C)
    oh, ow = dense.shape[-2:]
    table = torch.cat([x.view(B, C, mi, h * w).permute(1, 0, 3, 2).reshape(-1, mi),
                       torch.randn(C, mi, dtype=dtype, device=device), torch.zeros(1, mi, dtype=dtype, device=device)])
    c, b, y, xx = torch.meshgrid(*(torch.arange(n) for n in (C, B, oh, ow)), indexing="ij")
    rows = [torch.where((2 * y + dy >= 0) & (2 * y + dy < h) & (2 * xx + dx >= 0) & (2 * xx + dx < w),
                        (c * B + b) * h * w + (2 * y + dy).clamp(0, h - 1) * w + (2 * xx + dx).clamp(0, w - 1),
                        C * B * h * w + C) for dy, dx in TAPS]
    taps = torch.stack(rows, -1).reshape(-1, 9).to(device)
    offsets = torch.arange(C + 1, device=device) * B * oh * ow
    table.requires_grad_(True)
    out = sparse_conv3x3(table, taps, offsets, weight, bias)
    expected = dense.view(B, C, mo, oh * ow).permute(1, 0, 3, 2).reshape(-1, mo)
    assert_close_scaled(out, expected, "sparse conv")
    if dtype == torch.float64:
        # The table's last row is the constant zero row (its gradient is 0 by contract): append it in the function.
        zero_row = torch.zeros(1, mi, dtype=dtype, device=device)
        fn = lambda t, wt, bs: sparse_conv3x3(torch.cat([t, zero_row]), taps, offsets, wt, bs)  # noqa: E731
        args = (table[: C * B * h * w + C].detach().requires_grad_(True), weight.requires_grad_(True),
                bias.requires_grad_(True))
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, fast_mode=True)


def test_class_constants_are_the_interior_response():
    torch.manual_seed(1)
    C = 3
    disc = SeparatedDiscriminator(C, 4, (5, 4, 3, 2), (1, 1, 1, 1, 1), backend="reference").double()
    ks = class_constants([c.weight for c in disc.convs], [c.bias for c in disc.convs], C, 0.2)
    # Zero features: every class's layer 1 is its bias everywhere, so the output cell (5, 5), whose receptive
    # field (radius 4) stays inside the 11x11 map, is the class's constant.
    labels = torch.full((1, 11, 11), 1)
    out = disc(torch.zeros(1, 4, 11, 11, dtype=torch.float64), labels).logits
    torch.testing.assert_close(out[0, 0, 5, 5], ks[-1][1, 0])
    assert not torch.allclose(out[0, 0, 0, 0], ks[-1][1, 0])  # the border cell sees the zero padding
    assert [tuple(k.shape) for k in ks] == [(C, 5), (C, 4), (C, 3), (C, 2), (C, 1)]


SIZES = [(1, 1, 1, 1), (1, 2, 2, 5), (2, 1, 3, 3), (3, 3, 3, 3), (2, 2, 9, 4)]  # (h, w, H, W) border-heavy


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("h,w,H,W", SIZES)
@pytest.mark.parametrize("strides", [(1, 2, 2, 2, 2), (1, 1, 1, 1, 1), (1, 1, 2, 1, 2)])
def test_fused_matches_reference_on_tiny_images(device, h, w, H, W, strides):
    torch.manual_seed(h * 10 + w)
    disc = SeparatedDiscriminator(3, 4, (6, 5, 4, 3), strides).to(device)
    _compare_backends(disc, torch.randn(2, 4, h, w, device=device),
                      _labels("random", 2, H, W, 3, seed=H).to(device), "fused")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["single_class", "checkerboard1", "street"])
@pytest.mark.parametrize("strides", [(1, 2, 2, 2, 2), (1, 2, 1, 2, 1)])
def test_fused_matches_reference_on_layouts(device, kind, strides):
    torch.manual_seed(7)
    C = 19 if kind == "street" else 4
    if kind == "single_class":
        labels = torch.full((2, 48, 64), 2)
    elif kind == "checkerboard1":  # every feature cell of another class than its neighbours
        y, x = torch.meshgrid(torch.arange(48), torch.arange(64), indexing="ij")
        labels = ((y // 4 + x // 4) % C).expand(2, 48, 64).contiguous()
    else:
        labels = _labels("street", 2, 96, 128, C, seed=3)
    disc = SeparatedDiscriminator(C, 4, (6, 5, 4, 3), strides).to(device)
    ref = _compare_backends(disc, torch.randn(2, 4, 12, 16, device=device), labels.to(device), "fused")
    assert (ref.labels != IGNORE).any()


@pytest.mark.parametrize("strides", [(1, 2, 2, 2, 2), (1, 1, 2, 1, 1)])
def test_gradcheck_border_heavy_float64(strides):
    torch.manual_seed(3)
    disc = SeparatedDiscriminator(2, 2, (3, 2, 2, 2), strides, backend="fused").double()
    features = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[[0, 1, 1], [255, 0, 1]]])
    names = [n for n, _ in disc.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in disc.parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(disc, dict(zip(names, ps)), (x, labels)).logits

    assert torch.autograd.gradcheck(fn, (features, *params), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_error_within_twice_the_reference(dtype):
    # The reference run in the same dtype sets the error budget; the fused backend may be at most 2x as far from
    # the float64 truth, on the logits and on every gradient.
    torch.manual_seed(5)
    C = 5
    disc = SeparatedDiscriminator(C, 16, (16, 16, 8, 8)).double()
    features = torch.randn(2, 16, 16, 24, dtype=torch.float64)
    labels = _labels("street", 2, 64, 96, C, seed=1)
    upstream = torch.randn(2, 1, *disc.output_size(16, 24), dtype=torch.float64)
    _, truth = _run_in(disc, "reference", torch.float64, features, labels, upstream)
    _, ref = _run_in(disc, "reference", dtype, features, labels, upstream)
    _, fused = _run_in(disc, "fused", dtype, features, labels, upstream)
    for name, t, r, f in zip(["logits", "features", *dict(disc.named_parameters())], truth, ref, fused):
        scale = t.abs().max()
        ref_err, fused_err = float((r - t).abs().max() / scale), float((f - t).abs().max() / scale)
        assert fused_err <= 2 * ref_err + 1e-6, f"{name}: fused {fused_err:.2e} vs reference {ref_err:.2e}"


def _run_in(disc, backend, dtype, features, labels, upstream):
    model = SeparatedDiscriminator(disc.num_classes, disc.in_channels, disc.channels, disc.strides,
                                   backend=backend).to(dtype)
    model.load_state_dict(disc.state_dict())
    x = features.detach().to(dtype).clone().requires_grad_(True)
    out = model(x, labels).logits
    (out * upstream.to(dtype)).sum().backward()
    return out, [out.detach().double(), x.grad.double(), *(p.grad.double() for p in model.parameters())]


def test_fused_double_backward_raises():
    disc = SeparatedDiscriminator(2, 4, (6, 5, 4, 3), backend="fused")
    features = torch.randn(1, 4, 6, 6, requires_grad=True)
    out = disc(features, _labels("random", 1, 6, 6, 2, seed=0)).logits
    (grad,) = torch.autograd.grad(out.square().sum(), features, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|double backward"):
        grad.sum().backward()


def test_opcheck():
    torch.manual_seed(0)
    lf, lo = _maps(_labels("random", 2, 24, 20, 3, seed=0), 3, 6, 5, (1, 2, 1, 2, 1))
    rb = sparse_ssd_rulebook(lf, lo, 3, (2, 1, 2, 1))
    P = rb.taps[0].shape[0]
    table = torch.randn(2 * 6 * 5 + 3 + 1, 4)
    weight, bias = torch.randn(3 * 5, 4, 3, 3), torch.randn(3 * 5)
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_forward, (table, rb.taps[0], rb.offsets[0], weight,
                                                                        bias))
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_backward,
                          (torch.randn(P, 5), table, rb.taps[0], rb.offsets[0], weight, [True, True, True]))
    # The rulebook's sizes depend on the labels' values: no fake (meta) implementation can exist.
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_ssd_rulebook, (lf, lo, 3, [2, 1, 2, 1]),
                          test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.parametrize("kwargs,match", [
    ({"strides": [2, 2, 2]}, r"strides must be 4 ints \(layers 2-5\)"),
    ({"strides": [2, 3, 2, 2]}, "each 1 or 2"),
    ({"num_classes": 0}, r"num_classes must be in \[1, 255\]"),
    ({"lo": torch.zeros(1, 3, 3, dtype=torch.long)}, r"output labels must be \(1, 1, 1\)"),
    ({"lf": torch.zeros(1, 8, 8)}, "lf must be int64"),
    ({"lo": torch.full((1, 1, 1), 3)}, r"lo must lie in \[0, 3\)"),
])
def test_rulebook_errors(kwargs, match):
    args = {"lf": torch.zeros(1, 8, 8, dtype=torch.long), "lo": torch.zeros(1, 1, 1, dtype=torch.long),
            "num_classes": 3, "strides": [2, 2, 2, 2], **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        sparse_ssd_rulebook(args["lf"], args["lo"], args["num_classes"], args["strides"])


def test_sparse_conv3x3_errors():
    taps, offsets = torch.zeros(2, 9, dtype=torch.long), torch.tensor([0, 1, 2])
    table, weight, bias = torch.randn(5, 4), torch.randn(6, 4, 3, 3), torch.randn(6)
    with pytest.raises(ValueError, match=r"taps must be \(P, 9\) int64"):
        sparse_conv3x3(table, taps[:, :8], offsets, weight, bias)
    with pytest.raises(ValueError, match=r"weight must be \(C\*m_out, m_in, 3, 3\)"):
        sparse_conv3x3(table, taps, offsets, weight[:, :3], bias)
    with pytest.raises(ValueError, match=r"bias must be \(6,\)"):
        sparse_conv3x3(table, taps, offsets, weight, bias[:4])
    with pytest.raises(ValueError, match="impl must be one of"):
        sparse_conv3x3(table, taps, offsets, weight, bias, impl="cuda")
    with pytest.raises(ValueError, match=r"taps must index rows of table in \[0, 5\), got values in \[0, 5\]"):
        sparse_conv3x3(table, taps + torch.arange(9) % 6, offsets, weight, bias)
    with pytest.raises(ValueError, match="offsets must be .* non-decreasing from 0 to the number of pairs 2"):
        sparse_conv3x3(table, taps, torch.tensor([0, 2, 1]), weight, bias)
    with pytest.raises(TypeError, match="taps and offsets must be int64"):
        sparse_conv3x3(table, taps.int(), offsets, weight, bias)
