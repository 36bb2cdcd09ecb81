"""sparse_conv3x3: the sparse 3x3 layer against a dense convolution, its errors, the registered op (opcheck,
gradcheck), its Triton kernels against the ATen ops, and the whole sparse SS-D on the Triton kernels."""
from __future__ import annotations

import gc
import os

import pytest
import torch
from conftest import CUDA, DEVICES, assert_close_scaled, require_triton, run_triton_aot

from ssfdan_ext import IGNORE
from ssfdan_ext.ops import sparse_conv3x3, sparse_ssd_rulebook
from ssfdan_ext.ops.sparse_ssd import sparse_ssd_forward
from ssfdan_ext.testing import street_labels

ALL = (True, True, True)
TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


@pytest.fixture(scope="module")
def kernels():
    """The Triton kernels module; run by Triton's interpreter on CPU tensors (tests/conftest.py sets it)."""
    require_triton()
    from ssfdan_ext.triton import sparse_conv3x3

    return sparse_conv3x3


@pytest.fixture(scope="module")
def interpreted(kernels):
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1: the Triton kernels are compiled, not interpreted, in this run")
    return kernels


def _out_size(size, strides):
    for s in strides:
        size = (size - 1) // s + 1
    return size


def _labels(B, h, w, C, strides, source="random", seed=0, absent=(), ignore=0.2, device="cpu"):
    """Feature- and output-resolution label maps; ``absent`` classes appear nowhere (no pairs)."""
    gen = torch.Generator().manual_seed(seed)
    ho, wo = _out_size(h, strides), _out_size(w, strides)
    if source == "street":
        lf = street_labels(B, h, w, C, seed=seed)
        lo = street_labels(B, ho, wo, C, seed=seed + 1)
    else:
        lf = torch.randint(0, C, (B, h, w), generator=gen)
        lo = torch.randint(0, C, (B, ho, wo), generator=gen)
        lf[torch.rand(B, h, w, generator=gen) < ignore] = IGNORE
        lo[torch.rand(B, ho, wo, generator=gen) < ignore] = IGNORE
    for c in absent:
        lf[lf == c] = IGNORE
        lo[lo == c] = IGNORE
    return lf.to(device), lo.to(device)


def _layer_case(C, strides, layer, mi, mo, dtype=torch.float64, device="cpu", seed=0, **label_args):
    """One 3x3 layer of a real rulebook: (table, taps, offsets, weight, bias) with random values."""
    lf, lo = _labels(label_args.pop("B", 2), label_args.pop("h", 7), label_args.pop("w", 9), C, strides,
                     seed=seed, device=device, **label_args)
    rb = sparse_ssd_rulebook(lf, lo, C, strides)
    rows = lf.numel() if layer == 0 else rb.taps[layer - 1].shape[0]
    gen = torch.Generator().manual_seed(seed + 10)
    table = torch.randn(rows + C + 1, mi, generator=gen, dtype=torch.float64)
    table[-1] = 0  # the zero row
    weight = torch.randn(C * mo, mi, 3, 3, generator=gen, dtype=torch.float64) / (3 * mi**0.5)
    bias = torch.randn(C * mo, generator=gen, dtype=torch.float64)
    values = [t.to(device=device, dtype=dtype) for t in (table, weight, bias)]
    return values[0], rb.taps[layer], rb.offsets[layer], values[1], values[2]


def _aten(table, taps, offsets, weight, bias, grad_out, mask=ALL):
    """The ATen op's results, with the table's last row (the zero row) given no gradient: the Triton backend does
    not compute it, since the SS-D discards it (test_zero_row_gradient_is_not_computed)."""
    out = torch.ops.ssfdan_ext.sparse_conv3x3_forward(table, taps, offsets, weight, bias)
    grads = torch.ops.ssfdan_ext.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, list(mask))
    if grads[0] is not None:
        grads[0][-1] = 0
    return out, grads


def _triton(kernels, table, taps, offsets, weight, bias, grad_out, mask=ALL):
    out = kernels.sparse_conv3x3_forward(table, taps, offsets, weight, bias)
    return out, kernels.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, mask)


# Tiny shapes (the interpreter is slow) whose pair tiles (64 pairs) straddle class boundaries; widths are not
# multiples of 16; C = 1 and C = 19 (street scenes); strides 1 and 2; classes without pairs.
CASES = [
    dict(C=1, strides=(1, 1, 1, 1), layer=0, mi=5, mo=3, ignore=0.1),
    dict(C=3, strides=(2, 1, 2, 1), layer=1, mi=20, mo=17, h=13, w=16, absent=(1,)),
    dict(C=19, strides=(1, 2, 1, 1), layer=2, mi=7, mo=9, source="street", h=8, w=12),
    dict(C=4, strides=(2, 2, 1, 1), layer=0, mi=18, mo=1, h=9, w=11),  # one output channel, as the last layer
]


@pytest.mark.parametrize("case,dtype", [(case, dtype) for case in CASES for dtype in (torch.float64, torch.float32)
                                        if dtype == torch.float64 or case["C"] < 19],  # C = 19 is the slowest
                         ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else None)
def test_triton_matches_aten(interpreted, case, dtype):
    table, taps, offsets, weight, bias = _layer_case(dtype=dtype, **case)
    assert taps.shape[0] > 64, "the case must span several pair tiles"
    if case.get("absent"):
        assert (offsets.diff() == 0).any(), "the case must hold a class without pairs"
    grad_out = torch.randn(taps.shape[0], weight.shape[0] // case["C"], dtype=dtype)
    out, grads = _triton(interpreted, table, taps, offsets, weight, bias, grad_out)
    ref, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out)
    assert out.dtype == dtype and out.shape == ref.shape
    assert_close_scaled(out, ref, "out")
    for name, g, g_ref in zip(("table", "weight", "bias"), grads, ref_grads):
        assert g.dtype == dtype and g.shape == g_ref.shape
        assert_close_scaled(g, g_ref, f"grad {name}")


# bfloat16 runs on the GPU only (test_triton_on_gpu_matches_aten): the interpreter's tl.dot gives wrong results
# for bfloat16 operands (errors of 1e10 on a plain 16x16 product), so it cannot check the kernels in bfloat16.
@pytest.mark.parametrize("dtype", [torch.float16])
@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_triton_low_precision_matches_aten_in_float32(interpreted, case, dtype):
    # Operands rounded to dtype, sums in float32: the ATen op on the same rounded operands in float32 differs by
    # the final rounding to dtype only.
    table, taps, offsets, weight, bias = _layer_case(dtype=dtype, **case)
    grad_out = torch.randn(taps.shape[0], weight.shape[0] // case["C"]).to(dtype)
    out, grads = _triton(interpreted, table, taps, offsets, weight, bias, grad_out)
    ref, ref_grads = _aten(*(t.float() if t.is_floating_point() else t for t in
                             (table, taps, offsets, weight, bias, grad_out)))
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for name, g, g_ref in zip(("out", "table", "weight", "bias"), (out, *grads), (ref, *ref_grads)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g_ref, rtol=tol, atol=tol * float(g_ref.abs().max()),
                                   msg=lambda m: f"{name}: {m}")


def test_arbitrary_taps_follow_the_contract(interpreted):
    # The contract allows any table row in any tap: rows read by several pairs and classes, the constant and zero
    # rows read by other classes, pairs whose taps repeat a row. The hot-row sums must still be exact.
    gen = torch.Generator().manual_seed(3)
    C, T, mi, mo, P = 3, 12, 6, 5, 150
    table = torch.randn(T, mi, generator=gen, dtype=torch.float64)
    taps = torch.randint(0, T, (P, 9), generator=gen)
    taps[::3, 4] = T - 1
    taps[::2, :3] = T - C - 1 + torch.randint(0, C, (1,), generator=gen)
    offsets = torch.tensor([0, 40, 41, P])
    weight = torch.randn(C * mo, mi, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(C * mo, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(P, mo, generator=gen, dtype=torch.float64)
    out, grads = _triton(interpreted, table, taps, offsets, weight, bias, grad_out)
    ref, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out)
    assert_close_scaled(out, ref, "out")
    for name, g, g_ref in zip(("table", "weight", "bias"), grads, ref_grads):
        assert_close_scaled(g, g_ref, f"grad {name}")


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True), (True, False, True)])
def test_any_subset_of_gradients(interpreted, mask):
    table, taps, offsets, weight, bias = _layer_case(C=3, strides=(1, 1, 1, 1), layer=0, mi=6, mo=4, h=5, w=6)
    grad_out = torch.randn(taps.shape[0], 4, dtype=torch.float64)
    _, grads = _triton(interpreted, table, taps, offsets, weight, bias, grad_out, mask)
    _, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out, mask)
    for wanted, g, g_ref in zip(mask, grads, ref_grads):
        assert (g is None) == (not wanted) == (g_ref is None)
        if wanted:
            assert_close_scaled(g, g_ref, "gradient")


def test_non_contiguous_inputs(interpreted):
    table, taps, offsets, weight, bias = _layer_case(C=2, strides=(1, 1, 1, 1), layer=0, mi=6, mo=4, h=5, w=6)
    grad_out = torch.randn(taps.shape[0], 4, dtype=torch.float64)
    strided = [torch.stack([t, t], dim=-1)[..., 0] for t in (table, taps, grad_out)]
    w_strided = weight.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    assert not any(t.is_contiguous() for t in (*strided, w_strided))
    out, grads = _triton(interpreted, strided[0], strided[1], offsets, w_strided, bias, strided[2])
    ref, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out)
    for name, g, g_ref in zip(("out", "table", "weight", "bias"), (out, *grads), (ref, *ref_grads)):
        assert_close_scaled(g, g_ref, name)


def test_layer_without_pairs(interpreted):
    # No output cell is labelled: no layer has an explicit pair, the gradients are zeros of the right shapes.
    table, taps, offsets, weight, bias = _layer_case(C=2, strides=(1, 2, 1, 1), layer=2, mi=5, mo=3, ignore=1.0)
    assert taps.shape == (0, 9)
    grad_out = torch.zeros(0, 3, dtype=torch.float64)
    out, grads = _triton(interpreted, table, taps, offsets, weight, bias, grad_out)
    ref, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out)
    assert out.shape == ref.shape == (0, 3)
    for g, g_ref in zip(grads, ref_grads):
        assert g.shape == g_ref.shape and not g.any() and not g_ref.any()


T1, TAPS1, OFF1 = torch.zeros(6, 4), torch.zeros(3, 9, dtype=torch.long), torch.tensor([0, 1, 3])
W1, B1 = torch.zeros(10, 4, 3, 3), torch.zeros(10)


@pytest.mark.parametrize("args,error,match", [
    ((T1[0], TAPS1, OFF1, W1, B1), ValueError, r"table must be \(T, m_in\)"),
    ((T1, TAPS1[:, :8], OFF1, W1, B1), ValueError, r"taps must be \(P, 9\) int64"),
    ((T1, TAPS1.int(), OFF1, W1, B1), ValueError, r"taps must be \(P, 9\) int64"),
    ((T1, TAPS1, OFF1[:1], W1, B1), ValueError, r"offsets must be \(C\+1,\) int64"),
    ((T1, TAPS1, OFF1, W1[:9], B1), ValueError, r"weight must be \(C\*m_out, m_in, 3, 3\)"),
    ((T1, TAPS1, OFF1, W1[:, :3], B1), ValueError, r"weight must be \(C\*m_out, m_in, 3, 3\)"),
    ((T1, TAPS1, OFF1, W1.double(), B1), TypeError, "weight dtype .* differs from the table dtype"),
    ((T1, TAPS1, OFF1, W1, B1[:4]), ValueError, r"bias must be \(10,\)"),
])
def test_errors_match_the_aten_op(kernels, args, error, match):
    with pytest.raises(error, match=match):
        kernels.sparse_conv3x3_forward(*args)
    with pytest.raises(error, match=match):
        torch.ops.ssfdan_ext.sparse_conv3x3_forward(*args)


def test_backward_rejects_bad_grad_out(kernels):
    with pytest.raises(ValueError, match=r"grad_out must be \(P, m_out\) = \(3, 5\)"):
        kernels.sparse_conv3x3_backward(torch.zeros(3, 4), T1, TAPS1, OFF1, W1, ALL)


def test_zero_row_gradient_is_not_computed(interpreted):
    # The zero row (the table's last) is a constant of the SS-D value table: its gradient is discarded, so the
    # Triton backend spends no atomics on it. Every other row's gradient is the ATen op's.
    table, taps, offsets, weight, bias = _layer_case(C=3, strides=(1, 1, 1, 1), layer=0, mi=6, mo=4, h=5, w=6)
    T = table.shape[0]
    assert (taps == T - 1).any(), "the case must read the zero row (the padding)"
    grad_out = torch.randn(taps.shape[0], 4, dtype=torch.float64)
    grad_table = interpreted.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, ALL)[0]
    ref = torch.ops.ssfdan_ext.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, list(ALL))[0]
    assert ref[-1].abs().sum() > 0 and not grad_table[-1].any()
    assert_close_scaled(grad_table[:-1], ref[:-1], "grad table without the zero row")


def test_tap_major_weight_is_cached_per_weight_version(interpreted):
    # One permuted copy per weight state: reused while the weight is unchanged, rebuilt after any in-place update
    # (an optimiser step), dropped when the weight is freed.
    cache = interpreted._tap_major
    table, taps, offsets, weight, bias = _layer_case(C=2, strides=(1, 1, 1, 1), layer=0, mi=6, mo=4, h=5, w=6)
    weight = torch.nn.Parameter(weight)
    grad_out = torch.randn(taps.shape[0], 4, dtype=torch.float64)
    builds = cache.builds
    _triton(interpreted, table, taps, offsets, weight.detach(), bias, grad_out)  # a view: its own entry
    out = interpreted.sparse_conv3x3_forward(table, taps, offsets, weight, bias)
    interpreted.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, ALL)
    assert cache.builds == builds + 2, "the forward and backward of one weight state share one copy"
    assert torch.equal(cache(weight, 2), interpreted._tap_major_copy(weight.detach(), 2))
    optimiser = torch.optim.SGD([weight], lr=0.5)
    weight.grad = torch.randn_like(weight)
    optimiser.step()
    out_after = interpreted.sparse_conv3x3_forward(table, taps, offsets, weight, bias)
    assert cache.builds == builds + 3 and not torch.allclose(out_after, out)
    assert_close_scaled(out_after, _aten(table, taps, offsets, weight.detach(), bias, grad_out)[0], "after a step")
    with torch.no_grad():
        weight.mul_(2)
    assert torch.equal(cache(weight, 2), interpreted._tap_major_copy(weight.detach(), 2))
    assert cache.builds == builds + 4
    entries = len(cache)
    del weight, optimiser
    gc.collect()
    assert len(cache) < entries, "a freed weight's copy must not stay in the cache"


# --- The whole sparse SS-D through the public function --------------------------------------------------------

def _ssd_case(device="cpu", dtype=torch.float64, B=2, n=5, h=7, w=9, C=3, widths=(6, 5, 7, 4),
              strides=(1, 2, 1, 2, 1), seed=0):
    lf, lo = _labels(B, h, w, C, strides[1:], seed=seed, absent=(C - 1,) if C > 2 else (), device=device)
    gen = torch.Generator().manual_seed(seed + 20)
    chans = (n, *widths, 1)
    weights = [torch.randn(C * o, i, k, k, generator=gen, dtype=torch.float64) / (k * i**0.5)
               for i, o, k in zip(chans[:-1], chans[1:], (1, 3, 3, 3, 3))]
    biases = [torch.randn(C * o, generator=gen, dtype=torch.float64) for o in chans[1:]]
    features = torch.randn(B, n, h, w, generator=gen, dtype=torch.float64)
    cast = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (features, *weights, *biases)]
    return cast, lf, lo, strides, C


def _ssd_forward_and_grads(leaves, lf, lo, strides, C, impl):
    features, weights, biases = leaves[0], leaves[1:6], leaves[6:]
    out = sparse_ssd_forward(features, lf, lo, weights, biases, strides, C, impl=impl)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    grads = torch.autograd.grad((out * upstream.to(out)).sum(), leaves)
    return out, grads


def test_sparse_ssd_forward_triton_matches_aten(interpreted):
    leaves, lf, lo, strides, C = _ssd_case()
    out, grads = _ssd_forward_and_grads(leaves, lf, lo, strides, C, "triton")
    ref, ref_grads = _ssd_forward_and_grads(leaves, lf, lo, strides, C, "aten")
    assert (lo != IGNORE).any() and out.abs().sum() > 0
    assert_close_scaled(out, ref, "logits")
    for i, (g, g_ref) in enumerate(zip(grads, ref_grads)):
        assert_close_scaled(g, g_ref, f"gradient of leaf {i}")


# --- Compiled for the GPU -------------------------------------------------------------------------------------

def test_triton_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """Every configuration the GPU path launches compiles to a Hopper cubin (Triton's own ptxas) without spills."""
    lines = run_triton_aot("sparse_conv3x3", tmp_path)
    # Per width set and dtype: layers 2-5 x (forward, table gradient, weight+bias gradient), and layer 2's
    # weight-only and bias-only gradients; 2 width sets x (float32 with TF32 off and on, float16, bfloat16).
    assert len(lines) == 14 * 2 * 4, "\n".join(lines)
    for precision in ("ieee", "tf32"):
        assert sum(f" fp32 {precision} " in line for line in lines) == 28


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [
    dict(C=19, strides=(1, 2, 2, 2), layer=0, mi=256, mo=128, source="street", B=2, h=65, w=129),
    dict(C=19, strides=(1, 2, 2, 2), layer=1, mi=100, mo=70, source="street", B=2, h=65, w=129),
    dict(C=5, strides=(2, 2, 2, 2), layer=3, mi=128, mo=1, B=2, h=40, w=56, absent=(2,)),
])
def test_triton_on_gpu_matches_aten(device, case, dtype):
    from ssfdan_ext.triton import sparse_conv3x3 as kernels

    table, taps, offsets, weight, bias = _layer_case(dtype=torch.float32, device=device, **case)
    grad_out = torch.randn(taps.shape[0], weight.shape[0] // case["C"], device=device)
    ref, ref_grads = _aten(table, taps, offsets, weight, bias, grad_out)
    lowp = [t.to(dtype) for t in (table, weight, bias, grad_out)]
    out, grads = _triton(kernels, lowp[0], taps, offsets, lowp[1], lowp[2], lowp[3])
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for name, g, g_ref in zip(("out", "table", "weight", "bias"), (out, *grads), (ref, *ref_grads)):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), g_ref, rtol=tol, atol=tol * float(g_ref.abs().max()),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sparse_ssd_forward_auto_on_gpu_matches_aten(device, dtype):
    leaves, lf, lo, strides, C = _ssd_case(device=device, dtype=torch.float32, B=2, n=64, h=33, w=65, C=19,
                                           widths=(96, 80, 48, 32), strides=(1, 2, 2, 2, 2))
    ref, ref_grads = _ssd_forward_and_grads(leaves, lf, lo, strides, C, "aten")
    lowp = [t.detach().to(dtype).requires_grad_(True) for t in leaves]
    out, grads = _ssd_forward_and_grads(lowp, lf, lo, strides, C, "auto")  # auto: Triton for these tensors
    tol = {torch.float32: 1e-4, torch.bfloat16: 1e-1}[dtype]
    for i, (g, g_ref) in enumerate(zip((out, *grads), (ref, *ref_grads))):
        torch.testing.assert_close(g.float(), g_ref, rtol=tol, atol=tol * float(g_ref.abs().max()),
                                   msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)

@pytest.mark.parametrize("dtype,C,mi,mo,B,h,w", [
    (torch.float32, 3, 5, 4, 2, 7, 6), (torch.float64, 3, 5, 4, 2, 7, 6),
    (torch.float32, 2, 1024, 4, 1, 24, 24),  # 144 pairs: several blocks
    (torch.float32, 2, 1024, 128, 1, 10, 10)])  # 25 pairs against a 1.2 M-element weight: the transposed product
def test_sparse_conv3x3_equals_a_dense_convolution(device, dtype, C, mi, mo, B, h, w):
    # Explicit rows on a full grid, no constants: the layer is one grouped 3x3 convolution, stride 2.
    torch.manual_seed(0)
    x = torch.randn(B, C * mi, h, w, dtype=dtype, device=device)
    weight = torch.randn(C * mo, mi, 3, 3, dtype=dtype, device=device, requires_grad=True)
    bias = torch.randn(C * mo, dtype=dtype, device=device, requires_grad=True)
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
    # Every gradient equals the dense convolution's: the table's first rows are x, laid out as above.
    x.requires_grad_(True)
    dense = torch.nn.functional.conv2d(x, weight, bias, stride=2, padding=1, groups=C)
    expected = dense.view(B, C, mo, oh * ow).permute(1, 0, 3, 2).reshape(-1, mo)
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad((out * upstream).sum(), (table, weight, bias))
    dense_grads = torch.autograd.grad((expected * upstream).sum(), (x, weight, bias))
    dense_grads = (dense_grads[0].view(B, C, mi, h * w).permute(1, 0, 3, 2).reshape(-1, mi), *dense_grads[1:])
    assert_close_scaled(grads[0][: C * B * h * w], dense_grads[0], "grad table")
    for name, g, ref in zip(("weight", "bias"), grads[1:], dense_grads[1:]):
        assert_close_scaled(g, ref, f"grad {name}")
    weight, bias = weight.detach(), bias.detach()
    if dtype == torch.float64:
        # The table's last row is the constant zero row (its gradient is 0 by contract): append it in the function.
        zero_row = torch.zeros(1, mi, dtype=dtype, device=device)
        fn = lambda t, wt, bs: sparse_conv3x3(torch.cat([t, zero_row]), taps, offsets, wt, bs)  # noqa: E731
        args = (table[: C * B * h * w + C].detach().requires_grad_(True), weight.requires_grad_(True),
                bias.requires_grad_(True))
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, fast_mode=True)
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


def sample_inputs(device="cpu", dtype=torch.float64, requires_grad=False):
    """(table, taps, offsets, weight, bias) of real rulebook layers (the CASES above), on ``device``."""
    out = []
    for case in CASES:
        table, taps, offsets, weight, bias = _layer_case(**case, dtype=dtype, device=device)
        out.append((table.requires_grad_(requires_grad), taps, offsets, weight.requires_grad_(requires_grad),
                    bias.requires_grad_(requires_grad)))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for table, taps, offsets, weight, bias in sample_inputs(device, torch.float32, requires_grad=True):
        torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3, (table, taps, offsets, weight, bias, "aten"))
        grad_out = torch.randn(taps.shape[0], weight.shape[0] // (offsets.numel() - 1), device=device)
        for mask in ([True, True, True], [False, True, False]):
            plain_table, plain_weight = table.detach(), weight.detach()
            torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_grad,
                                  (grad_out, plain_table, plain_weight, [taps, offsets], mask, "aten"))
            torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_backward,
                                  (grad_out, plain_table, taps, offsets, plain_weight, mask))
        # The compiled kernel behind it has no autograd of its own: checked on plain tensors.
        torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_forward,
                              (table.detach(), taps, offsets, weight.detach(), bias.detach()))


def test_opcheck_interpreted_triton(interpreted):
    """impl="triton" under TRITON_INTERPRET=1: the triton_op runs its kernels inside the opaque
    ``_interpreted`` ops, which opcheck checks too."""
    table, taps, offsets, weight, bias = sample_inputs("cpu", torch.float32, requires_grad=True)[0]
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3, (table, taps, offsets, weight, bias, "triton"))
    plain = (table.detach(), taps, offsets, weight.detach(), bias.detach(), "triton")
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_interpreted, plain)
    grad_out = torch.randn(taps.shape[0], weight.shape[0] // (offsets.numel() - 1))
    grad_args = (grad_out, table.detach(), weight.detach(), [taps, offsets], [True, True, True], "triton")
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_grad, grad_args)
    torch.library.opcheck(torch.ops.ssfdan_ext.sparse_conv3x3_grad_interpreted, grad_args)


def test_sample_inputs_gradcheck_and_reference():
    """The public op on every sample: the plain-PyTorch reference's values, and gradcheck in float64 (the zero row,
    a constant of the SS-D value table, gets no gradient: it is left out of the checked input)."""
    from ssfdan_ext import reference

    for table, taps, offsets, weight, bias in sample_inputs(requires_grad=True):
        expected = reference.sparse_conv3x3(table, taps, offsets, weight, bias)
        assert_close_scaled(sparse_conv3x3(table, taps, offsets, weight, bias), expected, "sparse_conv3x3")
        zero_row = table[-1:].detach()
        rows = table[:-1].detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda r, w, b: sparse_conv3x3(torch.cat([r, zero_row]), taps, offsets, w, b), (rows, weight, bias))
