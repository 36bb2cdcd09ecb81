"""routed_conv1x1: the routed first SS-D layer against the separated grouped convolution, on ATen and Triton."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import run_triton_aot, DEVICES, TRITON_REQUIRED, assert_close_scaled, require_triton

from ssfdan_ext import IGNORE
from ssfdan_ext.ops import routed_conv1x1, routed_layer1_dense

INTERPRETED = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or (importlib.util.find_spec("triton") is None and not TRITON_REQUIRED),
    reason="Triton on CPU tensors needs Triton and its interpreter")
IMPLS = ["aten", pytest.param("triton", marks=INTERPRETED)]


def _case(B=2, n=5, h=7, w=9, C=3, m=4, seed=0, dtype=torch.float32, device="cpu", ignore=0.2, absent=()):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, n, h, w, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, C, (B, h, w), generator=gen)
    for c in absent:
        labels[labels == c] = (c + 1) % C if C > len(absent) else IGNORE
    labels[torch.rand(B, h, w, generator=gen) < ignore] = IGNORE
    weight = torch.randn(C * m, n, 1, 1, generator=gen, dtype=torch.float64) / n**0.5
    bias = torch.randn(C * m, generator=gen, dtype=torch.float64)
    return tuple(t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
                 for t in (features, labels, weight, bias))


def _separated_conv(features, labels, weight, bias, C):
    """docs/semantics.md section 3, steps 2-3 for layer 1, literally: the separated input through the grouped 1x1
    conv."""
    B, n, h, w = features.shape
    masks = (labels.unsqueeze(1) == torch.arange(C, device=labels.device).view(1, C, 1, 1)).to(features.dtype)
    return F.conv2d((masks.unsqueeze(2) * features.unsqueeze(1)).reshape(B, C * n, h, w), weight, bias, groups=C)


def _check_rows(result, features, labels, weight, bias, C):
    """order sorts the cells by class (stable, IGNORE last), offsets bound the buckets, rows hold W_c F + b_c."""
    B, n, h, w = features.shape
    m = weight.shape[0] // C
    flat = labels.reshape(-1)
    keys = torch.where(flat == IGNORE, C, flat)
    counts = torch.bincount(keys, minlength=C + 1)
    assert torch.equal(result.offsets.cpu(), torch.cat([counts.new_zeros(1), counts.cumsum(0)[:C]]).cpu())
    assert torch.equal(result.order, torch.sort(keys, stable=True).indices)
    cells = features.permute(0, 2, 3, 1).reshape(-1, n)[result.order]
    cls = keys[result.order]
    active = cls < C
    w_rows = weight.view(C, m, n)[cls[active]]
    expected = torch.zeros_like(result.rows)
    expected[active] = torch.einsum("rmn,rn->rm", w_rows, cells[active]) + bias.view(C, m)[cls[active]]
    assert_close_scaled(result.rows, expected, "rows")


def _compare_with_gradients(out, leaves, ref, ref_leaves):
    """out equals ref, and so do the gradients of (features, weight, bias) under one random upstream gradient."""
    assert_close_scaled(out, ref, "dense layer 1")
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad((out * upstream).sum(), leaves)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), ref_leaves)
    for name, g, g_ref in zip(("features", "weight", "bias"), grads, ref_grads):
        assert_close_scaled(g, g_ref, f"grad {name}")
    return grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [dict(B=1, C=1), dict(B=2, C=3), dict(B=3, C=19, h=6, w=11, n=7, m=3),
                                   dict(B=1, C=4, h=1, w=1), dict(B=2, C=5, absent=(0, 3))])
@pytest.mark.parametrize("ignore", [0.0, 0.3, 1.0])
def test_rows_and_gradients_match_separated_convolution(device, shape, ignore):
    features, labels, weight, bias = _case(device=device, ignore=ignore, **shape)
    C = shape["C"]
    result = routed_conv1x1(features, labels, weight, bias, C)
    _check_rows(result, features, labels, weight, bias, C)
    assert result.order.dtype == result.offsets.dtype == torch.int64

    leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    dense = routed_layer1_dense(leaves[0], labels, leaves[1], leaves[2], C)
    ref_leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    ref = _separated_conv(ref_leaves[0], labels, ref_leaves[1], ref_leaves[2], C)
    grads = _compare_with_gradients(dense, leaves, ref, ref_leaves)
    if ignore == 1.0:
        assert (grads[0] == 0).all()  # no cell has a class: separation zeroes every feature


def test_few_cells_against_a_large_weight():
    # Under 128 cells per class against a 1 M-element class weight (the paper's widths): the CPU kernel computes
    # the transposed product there.
    features, labels, weight, bias = _case(B=1, n=2048, h=6, w=9, C=2, m=512, ignore=0.1)
    assert 0 < int((labels == 0).sum()) < 128 and weight.numel() // 2 >= 2**20
    leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    dense = routed_layer1_dense(leaves[0], labels, leaves[1], leaves[2], 2)
    ref_leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    _compare_with_gradients(dense, leaves, _separated_conv(ref_leaves[0], labels, ref_leaves[1], ref_leaves[2], 2),
                            ref_leaves)


def test_classes_larger_than_one_cpu_block():
    # With n = 2048 the CPU kernels split a class into blocks of 256 cells; 30x40 cells of 2 classes span several.
    features, labels, weight, bias = _case(B=1, n=2048, h=30, w=40, C=2, m=3, ignore=0.1)
    assert int((labels == 0).sum()) > 2 * 256
    leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    dense = routed_layer1_dense(leaves[0], labels, leaves[1], leaves[2], 2)
    ref_leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    _compare_with_gradients(dense, leaves, _separated_conv(ref_leaves[0], labels, ref_leaves[1], ref_leaves[2], 2),
                            ref_leaves)


@pytest.mark.parametrize("device", DEVICES)
def test_routed_bias_gradient_covers_class_cells_only(device):
    features, labels, weight, bias = _case(B=2, C=3, device=device)
    leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    result = routed_conv1x1(leaves[0], labels, leaves[1], leaves[2], 3)
    upstream = torch.randn_like(result.rows)
    grad_bias = torch.autograd.grad((result.rows * upstream).sum(), leaves[2])[0]
    cls = torch.searchsorted(result.offsets[1:], torch.arange(result.order.numel(), device=device), right=True)
    active = cls < 3
    expected = torch.zeros(3, weight.shape[0] // 3, device=device).index_add_(0, cls[active], upstream[active])
    assert_close_scaled(grad_bias, expected.flatten(), "grad bias")


def test_gradcheck_float64():
    features, labels, weight, bias = _case(B=2, n=3, h=3, w=4, C=3, m=2, dtype=torch.float64)
    leaves = tuple(t.requires_grad_(True) for t in (features, weight, bias))
    assert torch.autograd.gradcheck(lambda f, w, b: routed_conv1x1(f, labels, w, b, 3).rows, leaves)
    assert torch.autograd.gradcheck(lambda f, w, b: routed_layer1_dense(f, labels, w, b, 3), leaves)


def test_non_contiguous_inputs():
    features, labels, weight, bias = _case(B=2, C=3)
    strided = features.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    wide = torch.zeros(2, 7, 9 * 2, dtype=torch.long)[:, :, ::2]
    wide.copy_(labels)
    assert not strided.is_contiguous() and not wide.is_contiguous()
    expected = routed_conv1x1(features, labels, weight, bias, 3)
    got = routed_conv1x1(strided, wide, weight, bias, 3)
    assert torch.equal(got.order, expected.order)
    assert_close_scaled(got.rows, expected.rows, "rows")


def sample_inputs(device="cpu", dtype=torch.float32, requires_grad=False):
    """(features, labels, weight, bias, C) cases: several classes with IGNORE cells, an absent class, one class."""
    cases = [dict(B=2, C=3), dict(B=1, C=4, h=5, w=6, absent=(2,)), dict(B=2, C=1, n=3, m=2, ignore=0.0)]
    out = []
    for case in cases:
        features, labels, weight, bias = _case(**case, dtype=dtype, device=device)
        out.append((features.requires_grad_(requires_grad), labels, weight.requires_grad_(requires_grad),
                    bias.requires_grad_(requires_grad), case["C"]))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for features, labels, weight, bias, C in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1, (features, labels, weight, bias, C, "aten"))
        detached = (features.detach(), labels, weight.detach(), bias.detach(), C)
        torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_forward, detached)
        rows, order, offsets = torch.ops.ssfdan_ext.routed_conv1x1_forward(*detached)
        for mask in ([True, True, True], [False, True, False]):
            grad, plain = torch.randn_like(rows), (features.detach(), weight.detach())
            torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_grad,
                                  (grad, *plain, [order, offsets], mask, "aten"))
            torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_backward, (grad, *plain, order, offsets, mask))


@INTERPRETED
def test_opcheck_interpreted_triton():
    """impl="triton" under TRITON_INTERPRET=1: the triton_op runs its kernels inside the opaque
    ``_interpreted`` ops, which opcheck checks too."""
    features, labels, weight, bias, C = sample_inputs(requires_grad=True)[0]
    torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1, (features, labels, weight, bias, C, "triton"))
    detached = (features.detach(), labels, weight.detach(), bias.detach(), C, "triton")
    torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_interpreted, detached)
    rows, order, offsets = torch.ops.ssfdan_ext.routed_conv1x1_interpreted(*detached)
    grad_args = (torch.randn_like(rows), features.detach(), weight.detach(), [order, offsets], [True, True, True],
                 "triton")
    torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_grad, grad_args)
    torch.library.opcheck(torch.ops.ssfdan_ext.routed_conv1x1_grad_interpreted, grad_args)


def test_sample_inputs_gradcheck_and_reference():
    from ssfdan_ext import reference

    for features, labels, weight, bias, C in sample_inputs(dtype=torch.float64, requires_grad=True):
        got = routed_conv1x1(features, labels, weight, bias, C)
        expected = reference.routed_conv1x1(features, labels, weight, bias, C)
        for a, b, name in zip(got, expected, ("rows", "order", "offsets")):
            assert_close_scaled(a, b, name) if a.is_floating_point() else torch.testing.assert_close(a, b)
        assert torch.autograd.gradcheck(lambda f, w, b: routed_conv1x1(f, labels, w, b, C).rows,
                                        (features, weight, bias))


B1 = torch.zeros(1, 4, 2, 2)
L1 = torch.zeros(1, 2, 2, dtype=torch.long)
W1 = torch.zeros(6, 4, 1, 1)
BIAS1 = torch.zeros(6)


@pytest.mark.parametrize("args,error,match", [
    ((B1[0], L1, W1, BIAS1, 3), ValueError, r"features must be \(B, n, h, w\)"),
    ((B1, L1.float(), W1, BIAS1, 3), TypeError, "labels must be int64"),
    ((B1, torch.zeros(1, 2, 3, dtype=torch.long), W1, BIAS1, 3), ValueError, "feature resolution"),
    ((B1, torch.full((1, 2, 2), 3), W1, BIAS1, 3), ValueError, r"labels must lie in \[0, 3\).*3"),
    ((B1, L1, torch.zeros(6, 4, 3, 3), BIAS1, 3), ValueError, r"weight must be \(C\*m, n, 1, 1\)"),
    ((B1, L1, torch.zeros(7, 4, 1, 1), torch.zeros(7), 3), ValueError, r"weight must be \(C\*m, n, 1, 1\)"),
    ((B1, L1, W1, torch.zeros(5), 3), ValueError, r"bias must be \(6,\)"),
    ((B1, L1, W1.double(), BIAS1, 3), TypeError, "must have the features dtype"),
    ((B1, L1, W1, BIAS1, 0), ValueError, r"num_classes must be in \[1, 255\]"),
])
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        routed_conv1x1(*args)


def test_compiled_op_rejects_bad_labels_itself():
    # The C++ op validates on its own, for callers that bypass the Python checks.
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        torch.ops.ssfdan_ext.routed_conv1x1_forward(B1, torch.full((1, 2, 2), 9), W1, BIAS1, 3)


# --- Triton kernels, on CPU tensors under the interpreter -----------------------------------------------------

@pytest.fixture(scope="module")
def interpreted():
    """The Triton kernels module, run by Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""
    require_triton()
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1: the Triton kernels are compiled, not interpreted, in this run")
    from ssfdan_ext.triton import routed_conv1x1 as kernels

    return kernels


# Shapes chosen so that row tiles (64 rows) straddle several class boundaries, the channel counts are not
# multiples of the tiles, and all-IGNORE and single-class tiles occur.
TRITON_CASES = [dict(B=2, n=5, h=7, w=9, C=3, m=4), dict(B=1, n=40, h=9, w=15, C=19, m=70, ignore=0.5),
                dict(B=2, n=3, h=5, w=5, C=2, m=2, ignore=1.0), dict(B=1, n=6, h=10, w=10, C=1, m=5, ignore=0.0),
                dict(B=3, n=33, h=6, w=8, C=7, m=17, absent=(2, 5))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_matches_aten_under_interpreter(interpreted, case, dtype):
    features, labels, weight, bias = _case(dtype=dtype, **case)
    C = case["C"]
    rows, order, offsets = interpreted.routed_conv1x1_forward(features, labels, weight, bias, C)
    ref_rows, ref_order, ref_offsets = torch.ops.ssfdan_ext.routed_conv1x1_forward(features, labels, weight, bias, C)
    assert torch.equal(order, ref_order) and torch.equal(offsets, ref_offsets)
    assert_close_scaled(rows, ref_rows, "rows")
    grad_rows = torch.randn_like(rows)
    got = interpreted.routed_conv1x1_backward(grad_rows, features, weight, order, offsets, (True, True, True))
    ref = torch.ops.ssfdan_ext.routed_conv1x1_backward(grad_rows, features, weight, order, offsets,
                                                       [True, True, True])
    for name, g, g_ref in zip(("features", "weight", "bias"), got, ref):
        assert_close_scaled(g, g_ref, f"grad {name}")


def test_triton_backend_through_the_public_op_under_interpreter(interpreted):
    features, labels, weight, bias = _case(B=2, n=6, h=5, w=7, C=4, m=3, dtype=torch.float64)
    leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    out = routed_layer1_dense(leaves[0], labels, leaves[1], leaves[2], 4, impl="triton")
    ref_leaves = [t.detach().requires_grad_(True) for t in (features, weight, bias)]
    ref = _separated_conv(ref_leaves[0], labels, ref_leaves[1], ref_leaves[2], 4)
    _compare_with_gradients(out, leaves, ref, ref_leaves)


# --- Triton kernels compiled for the GPU ----------------------------------------------------------------------

CUDA_ONLY = [p for p in DEVICES if p != "cpu"]


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", TRITON_CASES + [dict(B=1, n=256, h=33, w=65, C=19, m=128, ignore=0.1)])
def test_triton_on_gpu_matches_aten(device, case, dtype):
    features, labels, weight, bias = _case(device=device, **case)
    C = case["C"]
    ref_rows, ref_order, ref_offsets = torch.ops.ssfdan_ext.routed_conv1x1_forward(features, labels, weight, bias, C)
    lowp = [t.to(dtype) for t in (features, weight, bias)]
    result = routed_conv1x1(lowp[0], labels, lowp[1], lowp[2], C)  # auto: Triton for CUDA tensors
    assert torch.equal(result.order, ref_order) and torch.equal(result.offsets, ref_offsets)
    # Low precision: operands rounded to dtype, products accumulated in float32.
    tol = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    scale = float(ref_rows.abs().max())
    torch.testing.assert_close(result.rows.float(), ref_rows, rtol=tol, atol=tol * scale)
    grad_rows = torch.randn_like(ref_rows)
    ref = torch.ops.ssfdan_ext.routed_conv1x1_backward(grad_rows, features, weight, ref_order, ref_offsets,
                                                       [True, True, True])
    from ssfdan_ext.triton import routed_conv1x1 as kernels

    got = kernels.routed_conv1x1_backward(grad_rows.to(dtype), lowp[0], lowp[1], result.order, result.offsets,
                                          (True, True, True))
    for name, g, g_ref in zip(("features", "weight", "bias"), got, ref):
        torch.testing.assert_close(g.float(), g_ref, rtol=tol, atol=tol * float(g_ref.abs().max()),
                                   msg=lambda msg: f"grad {name}: {msg}")


def test_triton_kernels_compile_for_sm90_without_a_gpu(tmp_path):
    """Every configuration the GPU path launches compiles to a Hopper cubin (Triton's own ptxas) without spills."""
    lines = run_triton_aot("routed_conv1x1", tmp_path)
    # 3 kernels x 2 width sets x (float32 with TF32 off and on, float16, bfloat16).
    assert len(lines) == 24, "\n".join(lines)
    for precision in ("ieee", "tf32"):
        assert sum(f" fp32 {precision} " in line for line in lines) == 6


def _recorded_launches(monkeypatch, module, fn, *args) -> list[dict]:
    """The keyword arguments (constexprs, tiles, options) of every launch ``fn(*args)`` makes, which do not run."""
    launches = []
    monkeypatch.setattr(module, "launch", lambda kernel, grid, args, like, config, **constexprs: launches.append(
        {**constexprs, **config.meta()}))
    fn(*args)
    return launches


@pytest.mark.parametrize("allow_tf32", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_tf32_follows_the_cudnn_flag(monkeypatch, allow_tf32, dtype):
    # The kernels replace convolutions: float32 products use TF32 exactly when cuDNN convolutions may.
    require_triton()
    from ssfdan_ext.triton import routed_conv1x1 as kernels

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    features, labels, weight, bias = _case(dtype=dtype)
    launches = _recorded_launches(monkeypatch, kernels, kernels.routed_conv1x1_forward, features, labels, weight,
                                  bias, 3)
    order, _, offsets = kernels.sort_cells(labels, 3)
    launches += _recorded_launches(monkeypatch, kernels, kernels.routed_conv1x1_backward,
                                   torch.zeros(order.numel(), 4, dtype=dtype), features, weight, order, offsets,
                                   (True, True, True))
    expected = "tf32" if allow_tf32 and dtype == torch.float32 else "ieee"
    assert len(launches) == 3 and all(launch["PRECISION"] == expected for launch in launches)


def test_triton_results_with_tf32_allowed_under_interpreter(interpreted, monkeypatch):
    # The interpreter multiplies in IEEE float32 whatever the precision: the TF32 variant still runs and matches.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    features, labels, weight, bias = _case(**TRITON_CASES[1])
    rows = interpreted.routed_conv1x1_forward(features, labels, weight, bias, 19)[0]
    assert_close_scaled(rows, torch.ops.ssfdan_ext.routed_conv1x1_forward(features, labels, weight, bias, 19)[0])


def test_interpreter_refuses_cuda_tensors(interpreted):
    # Under TRITON_INTERPRET=1 a non-CPU tensor must be refused before any launch: the interpreter would copy every
    # operand to the host and run for hours. Meta tensors stand in for CUDA ones on a machine without a GPU.
    features, labels, weight, bias = (t.to("meta") for t in _case())
    with pytest.raises(ValueError, match=r"interpreter \(TRITON_INTERPRET=1\) runs on CPU tensors.*meta"):
        interpreted.routed_conv1x1_forward(features, labels, weight, bias, 3)


def test_auto_never_sends_cuda_tensors_to_the_interpreter(monkeypatch):
    from ssfdan_ext._ext import triton_available, use_triton

    class FakeCudaTensor:  # all that the dispatch rule reads
        is_cuda, dtype = True, torch.float32

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not use_triton(FakeCudaTensor(), "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert use_triton(FakeCudaTensor(), "auto") == triton_available()


# --- Autograd edge cases --------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, False, True)])
def test_gradients_of_any_subset_of_inputs(impl, needs):
    features, labels, weight, bias = _case(B=2, C=3, dtype=torch.float64)
    leaves = [t.detach().requires_grad_(r) for t, r in zip((features, weight, bias), needs)]
    ref_leaves = [t.detach().requires_grad_(r) for t, r in zip((features, weight, bias), needs)]
    out = routed_layer1_dense(leaves[0], labels, leaves[1], leaves[2], 3, impl=impl)
    ref = _separated_conv(ref_leaves[0], labels, ref_leaves[1], ref_leaves[2], 3)
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad((out * upstream).sum(), [t for t in leaves if t.requires_grad])
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [t for t in ref_leaves if t.requires_grad])
    for g, g_ref in zip(grads, ref_grads, strict=True):
        assert_close_scaled(g, g_ref, "gradient")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dense", [False, True])
def test_double_backward_raises(impl, dense):
    # create_graph=True works for the first derivative; differentiating it again must fail, not silently give 0.
    features, labels, weight, bias = _case(B=2, C=3, dtype=torch.float64)
    leaves = [t.requires_grad_(True) for t in (features, weight, bias)]
    op = routed_layer1_dense if dense else lambda *a, **k: routed_conv1x1(*a, **k).rows
    out = op(leaves[0], labels, leaves[1], leaves[2], 3, impl=impl)
    grads = torch.autograd.grad(out.pow(2).sum(), leaves, create_graph=True)
    first = torch.autograd.grad(out.pow(2).sum(), leaves)
    for g, g_first in zip(grads, first):
        assert_close_scaled(g, g_first, "first derivative under create_graph")
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (grads[0].sum() + grads[1].sum() + grads[2].sum()).backward()


def test_triton_on_cpu_tensors_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"impl='triton' needs CUDA tensors.*cpu"):
        routed_conv1x1(B1, L1, W1, BIAS1, 3, impl="triton")


# --- Offsets past 2**31 (64-bit address arithmetic in the Triton kernels) -------------------------------------

def _check_sampled(features, labels, weight, bias, C, impl, rtol):
    """Rows, input gradient and the weight gradient of the last 64 input channels, checked at the first and last
    64 sorted rows (the largest row and channel offsets) against float32 arithmetic on the same operands."""
    result = routed_conv1x1(features, labels, weight, bias, C, impl=impl)
    N, m = result.rows.shape
    n, hw = features.shape[1], features.shape[2] * features.shape[3]
    dev = features.device
    picks = torch.cat([torch.arange(min(64, N)), torch.arange(max(N - 64, 0), N)]).to(dev)
    cells, cls = result.order[picks], torch.searchsorted(result.offsets[1:], picks, right=True)
    active = cls < C
    x = features.flatten(2)[cells // hw, :, cells % hw].float()  # (P, n)
    W = weight.view(C, m, n).float()
    expected = torch.zeros(len(picks), m, device=dev)
    expected[active] = torch.einsum("rmn,rn->rm", W[cls[active]], x[active]) + bias.view(C, m).float()[cls[active]]

    def close(got, want, name):
        scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
        torch.testing.assert_close(got.float(), want, rtol=rtol, atol=rtol * scale, msg=lambda s: f"{name}: {s}")

    close(result.rows[picks], expected, "rows")
    grad_rows = torch.randn(N, m, device=dev, dtype=features.dtype)
    grad_features, grad_weight, grad_bias = (_backward_op(impl))(grad_rows, features, weight, result.order,
                                                                result.offsets, [True, True, True])
    g = grad_rows[picks].float()
    want = torch.zeros(len(picks), n, device=dev)
    want[active] = torch.einsum("rmn,rm->rn", W[cls[active]], g[active])
    close(grad_features.flatten(2)[cells // hw, :, cells % hw], want, "grad features")
    tail = features[:, -64:].permute(0, 2, 3, 1).reshape(N, -1)  # the last 64 input channels, one row per cell
    bounds = result.offsets.tolist()
    for c in range(C):
        idx = result.order[bounds[c]:bounds[c + 1]]
        g_c = grad_rows[bounds[c]:bounds[c + 1]].float()
        close(grad_weight.view(C, m, n)[c, :, -64:], g_c.t() @ tail[idx].float(), f"grad weight, class {c}")
        close(grad_bias.view(C, m)[c], g_c.sum(0), f"grad bias, class {c}")


def _backward_op(impl):
    if impl == "triton":
        from ssfdan_ext.triton import routed_conv1x1 as kernels

        return kernels.routed_conv1x1_backward
    return torch.ops.ssfdan_ext.routed_conv1x1_backward


@pytest.mark.parametrize("impl", IMPLS)
def test_sampled_check_on_small_shapes(impl):
    # The checker of the large GPU cases below, on shapes the CPU can run (and on both implementations).
    features, labels, weight, bias = _case(B=2, n=70, h=9, w=13, C=3, m=5, ignore=0.0)
    _check_sampled(features, labels, weight, bias, 3, impl, rtol=1e-4)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("shape", [
    dict(n=8, h=2048, w=1056, m=1024),  # (B*h*w) * m > 2**31: row offsets of the rows and of their gradient
    dict(n=2048, h=1024, w=1040, m=16),  # n * h*w > 2**31: channel offsets of the features and of their gradient
])
def test_triton_offsets_past_2_31_on_gpu(device, shape):
    gen = torch.Generator(device=device).manual_seed(0)
    n, h, w, m, C = shape["n"], shape["h"], shape["w"], shape["m"], 2
    features = torch.randn(1, n, h, w, device=device, dtype=torch.float16, generator=gen)
    labels = torch.randint(0, C, (1, h, w), device=device, generator=gen)
    weight = (torch.randn(C * m, n, 1, 1, device=device, generator=gen) / n**0.5).half()
    bias = torch.randn(C * m, device=device, generator=gen).half()
    _check_sampled(features, labels, weight, bias, C, "triton", rtol=2e-3)
