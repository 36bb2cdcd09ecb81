"""Exact sparse SS-D (fused backend): the per-class constants, the pair counts and FLOPs, and the whole
discriminator against the reference on the layouts that stress it. The rulebook and the sparse layer have their own
tests (test_sparse_ssd_rulebook.py, test_sparse_conv3x3.py)."""
from __future__ import annotations

import os

import pytest
import torch
from conftest import CUDA, DEVICES, compare_backends, downsampled_maps, label_layout, require_triton

from ssfdan_ext import IGNORE, SeparatedDiscriminator
from ssfdan_ext.geometry import layer_sizes
from ssfdan_ext.ops import sparse_ssd_rulebook
from ssfdan_ext.ops.sparse_ssd import class_constants, executed_flops, sparse_ssd_forward
from ssfdan_ext.ops.sparse_ssd_rulebook import concat_rulebooks

def test_rulebook_is_sparse_on_street_layouts_and_counts_flops():
    C, h, w = 19, 32, 64
    lf, lo = downsampled_maps(label_layout("street", 1, 256, 512, C, seed=0), C, h, w, (1, 2, 2, 2, 2))
    rb = sparse_ssd_rulebook(lf, lo, C, (2, 2, 2, 2))
    counts = rb.pair_counts()
    dense = [h * w] + [C * a * b for a, b in layer_sizes(h, w, (1, 2, 2, 2, 2))[1:]]
    assert counts[0] == int((lf != IGNORE).sum() - (rb.lf_masked == IGNORE).sum() + (lf == IGNORE).sum())
    assert all(0 < c <= d for c, d in zip(counts, dense)) and counts[1] < dense[1] / 2
    widths = (8, 6, 5, 4, 3, 1)
    expected = 2 * counts[0] * 8 * 6 + sum(2 * counts[l] * 9 * widths[l] * widths[l + 1] for l in range(1, 5))
    assert executed_flops(rb, widths) == expected


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
    compare_backends(disc, torch.randn(2, 4, h, w, device=device),
                      label_layout("random", 2, H, W, 3, seed=H).to(device), "fused")


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
        labels = label_layout("street", 2, 96, 128, C, seed=3)
    disc = SeparatedDiscriminator(C, 4, (6, 5, 4, 3), strides).to(device)
    ref = compare_backends(disc, torch.randn(2, 4, 12, 16, device=device), labels.to(device), "fused")
    assert (ref.labels != IGNORE).any()


@pytest.mark.parametrize("device,impl", [("cpu", "aten"), ("cpu", "triton"),
                                         pytest.param("cuda", "auto", marks=CUDA.marks)])
def test_batches_of_two_sizes_evaluate_as_one_row_of_cells(device, impl):
    """Two batches of different feature sizes on their joined rulebook, their cells laid out as one row (what
    SeparatedDiscriminator.forward_domains does): the logits and every gradient of each batch evaluated alone."""
    if impl == "triton":
        require_triton()
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("the Triton kernels are compiled in this run: the CUDA case covers them")
    torch.manual_seed(5)
    C, n = 5, 4
    disc = SeparatedDiscriminator(C, n, (6, 5, 4, 3), (1, 2, 1, 2, 1)).to(device)
    feats = [torch.randn(2, n, 7, 9, device=device), torch.randn(1, n, 5, 6, device=device)]
    plans = [disc.plan(label_layout("street", 2, 28, 36, C, seed=1).to(device), (7, 9)),
             disc.plan(label_layout("random", 1, 20, 24, C, seed=2).to(device), (5, 6))]
    rulebook = concat_rulebooks(plans[0].rulebook, plans[1].rulebook, C)
    assert rulebook.lf_masked.shape == (1, 1, 2 * 63 + 30)
    leaves = [f.clone().requires_grad_() for f in feats]
    cells = torch.cat([f.transpose(0, 1).reshape(n, -1) for f in leaves], 1).view(1, n, 1, -1)
    lo = torch.cat([plan.lo.reshape(-1) for plan in plans]).view(1, 1, -1)
    params = [conv.weight for conv in disc.convs], [conv.bias for conv in disc.convs]
    joined = sparse_ssd_forward(cells, rulebook.lf_masked, lo, *params, disc.strides, C, impl=impl, rulebook=rulebook)
    upstream = torch.randn_like(joined)
    got = torch.autograd.grad(joined, [*leaves, *disc.parameters()], upstream)
    alone = [sparse_ssd_forward(f, plan.lf, plan.lo, *params, disc.strides, C, impl=impl, rulebook=plan.rulebook)
             for f, plan in zip(leaves, plans)]
    sizes = [a.numel() for a in alone]
    assert joined.numel() == sum(sizes)
    torch.testing.assert_close(joined.view(-1), torch.cat([a.reshape(-1) for a in alone]), rtol=1e-5, atol=1e-6)
    parts = upstream.view(-1).split(sizes)
    want = torch.autograd.grad(alone, [*leaves, *disc.parameters()], [p.view_as(a) for p, a in zip(parts, alone)])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


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
    labels = label_layout("street", 2, 64, 96, C, seed=1)
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
    out = disc(features, label_layout("random", 1, 6, 6, 2, seed=0)).logits
    (grad,) = torch.autograd.grad(out.square().sum(), features, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()




def test_constant_pairs_give_the_constant_chain_and_only_present_classes_get_them():
    """The constants come from one extra pair per class whose taps all read the class's constant row; only the
    classes with a labelled output cell get one, and the others' weight gradients are exactly zero."""
    from ssfdan_ext.ops.sparse_ssd import classes_with_constants, constant_pairs

    torch.manual_seed(0)
    C, strides = 5, (1, 2, 2, 1, 1)
    disc = SeparatedDiscriminator(C, 6, (5, 4, 4, 3), strides, backend="fused")
    labels = torch.full((1, 32, 32), IGNORE)
    labels[0, :16, :16], labels[0, 16:, 16:] = 1, 3  # classes 0, 2 and 4 absent
    features = torch.randn(1, 6, 8, 8)
    lf, lo = downsampled_maps(labels, C, 8, 8, strides)
    classes = classes_with_constants(lo, C)
    assert classes.tolist() == [1, 3]
    rb = sparse_ssd_rulebook(lf, lo, C, strides[1:])
    pairs = constant_pairs(rb.taps[0], rb.offsets[0], lf.numel(), classes)
    counts = (rb.offsets[0][1:] - rb.offsets[0][:-1]).tolist()
    assert (pairs.offsets[1:] - pairs.offsets[:-1]).tolist() == [n + (c in (1, 3)) for c, n in enumerate(counts)]
    for k, c in enumerate((1, 3)):  # the last pair of each class's segment, all nine taps on its constant row
        assert torch.equal(pairs.taps[int(pairs.offsets[c + 1]) - 1], torch.full((9,), lf.numel() + c))
    assert torch.equal(pairs.taps[pairs.rows[:rb.taps[0].shape[0]]], rb.taps[0])  # explicit pairs kept in order
    constants = class_constants([c.weight for c in disc.convs], [c.bias for c in disc.convs], C, 0.2)
    assert constants[0].shape == (C, 5)
    compare_backends(disc, features, labels, backend="fused")
    out = disc(features, labels).logits.square().sum()
    out.backward()
    for conv in disc.convs[1:]:
        rows = conv.weight.grad.view(C, -1)
        assert rows[[0, 2, 4]].abs().max() == 0 and rows[[1, 3]].abs().max() > 0
