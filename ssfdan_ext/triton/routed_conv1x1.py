"""Triton kernels of the routed first SS-D layer (semantic separation + 1x1 convolution as a grouped GEMM).

Rows are feature cells sorted by class (IGNORE last). A row tile may straddle a class boundary, so each program
runs one GEMM per class present in its tile (usually one, two at a boundary); no padding of the class buckets and
no host synchronisation is needed. The gather of a cell's feature column (stride h*w in the NCHW input) is fused
into the operand load, and the backward scatters straight into the NCHW gradient. Runs on the GPU, or on CPU
tensors under ``TRITON_INTERPRET=1`` (how the tests exercise it).

Launch configurations (tiles, warps, stages) come from :mod:`ssfdan_ext.triton.configs`, per kernel and layer
shape. TF32: float32 products use TF32 when ``torch.backends.cudnn.allow_tf32`` is True (PyTorch's flag for the
convolutions this layer replaces) and IEEE float32 otherwise; other dtypes are unaffected.

Loops whose bounds are data (a tile's classes, a class's bucket) are ``while`` loops and the channel loops run to
constexpr widths: Triton 3.6's interpreter turns ``range()`` bounds into Python ints with ``int()`` of a 1-element
array, which NumPy >= 2.4 rejects, whereas a ``while`` condition goes through ``bool()``, which accepts it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._buckets import row_classes
from ..types import IGNORE
from .configs import input_precision, kernel_config, launch


@triton.jit
def _class_range(row_class_ptr, N, C, BLOCK_M: tl.constexpr):
    """The first and last class of this program's rows, which are sorted by class with IGNORE (class C) last:
    every class of the tile lies in [lo, hi], and hi < lo when the tile holds IGNORE rows only. Two scalar loads
    instead of a min and a max over the tile."""
    first = tl.program_id(0).to(tl.int64) * BLOCK_M
    lo = tl.load(row_class_ptr + first)
    hi = tl.minimum(tl.load(row_class_ptr + tl.minimum(first + BLOCK_M, N) - 1), C - 1)
    return lo, hi


@triton.jit
def class_bucket(offsets_ptr, c):
    """Rows [start, end) of class c's bucket of sorted rows, read on the device."""
    return tl.load(offsets_ptr + c), tl.load(offsets_ptr + c + 1)


@triton.jit
def _row_tile(order_ptr, row_class_ptr, N, n, HW, C, BLOCK_M: tl.constexpr):
    """This program's sorted rows: (rows, in-range mask, class (C for IGNORE/out of range), NCHW channel-0
    address of each row's cell)."""
    # 64-bit row indices and channel offsets: rows * m and channel * h*w pass 2**31 at large sizes (e.g. 2M cells
    # x 1024 channels), where 32-bit products would wrap to wrong addresses on the GPU.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    cls = tl.load(row_class_ptr + rows, mask=row_ok, other=C)
    cell = tl.load(order_ptr + rows, mask=row_ok, other=0)
    return rows, row_ok, cls, (cell // HW) * n * HW + cell % HW


@triton.jit
def _routed_gemm_kernel(a_ptr, order_ptr, row_class_ptr, w_ptr, b_ptr, out_ptr, N, COLS, n, HW, C,
                        w_stride_col, w_stride_k, K: tl.constexpr, GATHER_A: tl.constexpr, HAS_BIAS: tl.constexpr,
                        ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """out[row, col] = sum_k A[row, k] W_c[col, k] (+ b_c[col]) for each row of class c.

    Forward (GATHER_A): A is the features, read at the row's cell (stride h*w between channels), and the result
    goes to the dense (N, m) rows. Input gradient (not GATHER_A): A is the dense (N, m) row gradient, and the
    result is scattered into the (B, n, h, w) gradient at the row's cell; every cell has one row, so each output
    element is written by exactly one program (no atomics). Class c's weight block starts at c * K * COLS.
    Each class's rows are stored as soon as they are computed, under their class mask, rather than merged into a
    second tile-sized accumulator first: that accumulator cost a 64x64 tile of registers. IGNORE rows are not
    written (the caller zero-fills the output).
    """
    rows, _, cls, base = _row_tile(order_ptr, row_class_ptr, N, n, HW, C, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < COLS
    cols64 = cols.to(tl.int64)
    if GATHER_A:
        a_rows, a_stride, out_rows, out_stride = base, HW, rows * COLS, 1
    else:
        a_rows, a_stride, out_rows, out_stride = rows * K, 1, base, HW
    out_ptrs = out_ptr + out_rows[:, None] + cols64[None, :] * out_stride
    c, hi = _class_range(row_class_ptr, N, C, BLOCK_M)
    while c <= hi:
        sel = cls == c
        if tl.sum(sel.to(tl.int32), axis=0) > 0:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                a = tl.load(a_ptr + a_rows[:, None] + ks.to(tl.int64)[None, :] * a_stride,
                            mask=sel[:, None] & k_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + c * K * COLS + cols[None, :] * w_stride_col + ks[:, None] * w_stride_k,
                             mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                acc += tl.dot(a, wt, input_precision=PRECISION, out_dtype=ACC)
            if HAS_BIAS:
                acc += tl.load(b_ptr + c * COLS + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=sel[:, None] & col_ok[None, :])
        c += 1


@triton.jit
def _routed_grad_weight_kernel(g_ptr, order_ptr, offsets_ptr, x_ptr, gw_ptr, gb_ptr, n, m, HW,
                               ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grad W_c = sum over class c's rows of grad_rows[row]^T x features[cell]: one program per (class, tile),
    # looping over the class's bucket [offsets[c], offsets[c+1]) read on the device.
    c = tl.program_id(0)
    outs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # layer-1 output channels
    ins = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # feature channels
    out_ok = outs < m
    in_ok = ins < n
    start, end = class_bucket(offsets_ptr, c)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC)
    r0 = start
    while r0 < end:
        rows = r0 + tl.arange(0, BLOCK_K)
        row_ok = rows < end
        cell = tl.load(order_ptr + rows, mask=row_ok, other=0)
        base = (cell // HW) * n * HW + cell % HW
        gt = tl.load(g_ptr + rows[None, :] * m + outs[:, None], mask=out_ok[:, None] & row_ok[None, :], other=0.0)
        a = tl.load(x_ptr + base[:, None] + ins.to(tl.int64)[None, :] * HW, mask=row_ok[:, None] & in_ok[None, :],
                    other=0.0)
        acc += tl.dot(gt, a, input_precision=PRECISION, out_dtype=ACC)
        bias_acc += tl.sum(gt.to(ACC), axis=1)
        r0 += BLOCK_K
    tl.store(gw_ptr + (c * m + outs)[:, None] * n + ins[None, :], acc.to(gw_ptr.dtype.element_ty),
             mask=out_ok[:, None] & in_ok[None, :])
    if tl.program_id(2) == 0:
        tl.store(gb_ptr + c * m + outs, bias_acc.to(gb_ptr.dtype.element_ty), mask=out_ok)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def sort_cells(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """(order, row_class, offsets): cells sorted by class with IGNORE last, stable (raster order inside a class).

    One device sort and one ``searchsorted``; nothing is read back to the host.

    Shapes:
        labels: (B, h, w) int64 in [0, C) or 255 (IGNORE) -> order (B*h*w,) int64 flat cell index of each sorted
        row, row_class (B*h*w,) int64 class of each row (C for IGNORE), offsets (C+1,) int64 first row of each class.
    """
    flat = labels.reshape(-1)
    keys = torch.where(flat == IGNORE, torch.full_like(flat, num_classes), flat)
    row_class, order = torch.sort(keys, stable=True)
    offsets = torch.searchsorted(row_class, torch.arange(num_classes + 1, device=flat.device))
    return order, row_class, offsets


def routed_conv1x1_forward(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor,
                           num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Same contract as ``torch.ops.ssfdan_ext.routed_conv1x1_forward`` (see ops/routed_conv1x1.py).

    Shapes:
        features (B, n, h, w), labels (B, h, w), weight (C*m, n, 1, 1), bias (C*m,) -> rows (B*h*w, m),
        order (B*h*w,), offsets (C+1,).
    """
    features = features.contiguous()
    B, n, h, w = features.shape
    C, m = num_classes, weight.shape[0] // num_classes
    order, row_class, offsets = sort_cells(labels, C)
    N = order.numel()
    out = torch.zeros((N, m), dtype=features.dtype, device=features.device)  # IGNORE rows stay 0
    if N == 0 or m == 0:
        return out, order, offsets
    precision = input_precision(features.dtype)
    config = kernel_config("routed_fwd", n, m, features.dtype, precision)
    grid = (triton.cdiv(N, config.block_m), triton.cdiv(m, config.block_n))
    # W_c[col, k] = weight[c*m + col, k]: column stride n, k stride 1.
    launch(_routed_gemm_kernel, grid, (features, order, row_class, weight.reshape(C * m, n).contiguous(),
                                       bias.contiguous(), out, N, m, n, h * w, C, n, 1), features, config,
           K=n, GATHER_A=True, HAS_BIAS=True, ACC=_acc_dtype(features.dtype), PRECISION=precision)
    return out, order, offsets


def routed_conv1x1_backward(grad_rows: Tensor, features: Tensor, weight: Tensor, order: Tensor, offsets: Tensor,
                            output_mask: tuple[bool, bool, bool]) -> tuple[Tensor | None, ...]:
    """Same contract as ``torch.ops.ssfdan_ext.routed_conv1x1_backward``.

    Shapes:
        grad_rows (B*h*w, m), features (B, n, h, w), weight (C*m, n, 1, 1), order (B*h*w,), offsets (C+1,)
        -> grad features (B, n, h, w), grad weight (C*m, n, 1, 1), grad bias (C*m,) (None where not asked for).
    """
    features, grad_rows = features.contiguous(), grad_rows.contiguous()
    B, n, h, w = features.shape
    C = offsets.numel() - 1
    m = weight.shape[0] // C
    N = order.numel()
    w2 = weight.reshape(C * m, n).contiguous()
    dtype = features.dtype
    precision = input_precision(dtype)
    flags = {"ACC": _acc_dtype(dtype), "PRECISION": precision}
    grad_features = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_features = torch.zeros_like(features)
        if N > 0 and n > 0 and m > 0:
            row_class = row_classes(offsets, N)
            config = kernel_config("routed_grad_input", n, m, dtype, precision)
            grid = (triton.cdiv(N, config.block_m), triton.cdiv(n, config.block_n))
            # (W_c^T)[col, k] = weight[c*m + k, col]: column stride 1, k stride n.
            launch(_routed_gemm_kernel, grid, (grad_rows, order, row_class, w2, w2, grad_features, N, n, n, h * w,
                                               C, 1, n), features, config,
                   K=m, GATHER_A=False, HAS_BIAS=False, **flags)
    if output_mask[1] or output_mask[2]:
        run = N > 0 and n > 0 and m > 0
        alloc = torch.empty if run else torch.zeros  # the kernel writes every element, empty buckets included
        gw = alloc((C * m, n), dtype=dtype, device=features.device)
        gb = alloc((C * m,), dtype=dtype, device=features.device)
        if run:
            config = kernel_config("routed_grad_weight", n, m, dtype, precision)
            grid = (C, triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n))
            launch(_routed_grad_weight_kernel, grid, (grad_rows, order, offsets, features, gw, gb, n, m, h * w),
                   features, config, **flags)
        grad_weight = gw.view(weight.shape) if output_mask[1] else None
        grad_bias = gb if output_mask[2] else None
    return grad_features, grad_weight, grad_bias
