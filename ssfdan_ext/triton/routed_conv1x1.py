"""Triton kernels of the routed first SS-D layer (semantic separation + 1x1 convolution as a grouped GEMM).

Rows are feature cells sorted by class (IGNORE last). A row tile may straddle a class boundary, so each program
runs one GEMM per class present in its tile (usually one, two at a boundary); no padding of the class buckets and
no host synchronisation is needed. The gather of a cell's feature column (stride h*w in the NCHW input) is fused
into the operand load, and the backward scatters straight into the NCHW gradient. Runs on the GPU, or on CPU
tensors under ``TRITON_INTERPRET=1`` (how the tests exercise it).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..types import IGNORE

# Tile sizes: tl.dot needs every dimension >= 16; 64x64 output tiles keep an H200's SMs busy at paper scale
# (8,385 cells x 1,024 channels) while small test shapes stay cheap under the interpreter.
BLOCK_ROWS, BLOCK_COLS, BLOCK_K = 64, 64, 32


@triton.jit
def _class_range(cls, C):
    """The lowest and highest class among a tile's rows (IGNORE rows hold C); an empty range when all are C."""
    lo = tl.min(cls, axis=0)
    hi = tl.max(tl.where(cls < C, cls, -1), axis=0)
    return lo, hi


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
def _routed_gemm_kernel(a_ptr, order_ptr, row_class_ptr, w_ptr, b_ptr, out_ptr, N, K, COLS, n, HW, C,
                        w_stride_col, w_stride_k, GATHER_A: tl.constexpr, HAS_BIAS: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[row, col] = sum_k A[row, k] W_c[col, k] (+ b_c[col]) for each row of class c.

    Forward (GATHER_A): A is the features, read at the row's cell (stride h*w between channels), and the result
    goes to the dense (N, m) rows. Input gradient (not GATHER_A): A is the dense (N, m) row gradient, and the
    result is scattered into the (B, n, h, w) gradient at the row's cell; every cell has one row, so each output
    element is written by exactly one program (no atomics). Class c's weight block starts at c * K * COLS.
    """
    rows, row_ok, cls, base = _row_tile(order_ptr, row_class_ptr, N, n, HW, C, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < COLS
    cols64 = cols.to(tl.int64)
    if GATHER_A:
        a_rows, a_stride, out_rows, out_stride = base, HW, rows * COLS, 1
    else:
        a_rows, a_stride, out_rows, out_stride = rows * K, 1, base, HW
    result = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    lo, hi = _class_range(cls, C)
    for c in range(lo, hi + 1):
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
                acc += tl.dot(a, wt, input_precision="ieee", out_dtype=ACC)
            if HAS_BIAS:
                acc += tl.load(b_ptr + c * COLS + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
            result = tl.where(sel[:, None], acc, result)
    tl.store(out_ptr + out_rows[:, None] + cols64[None, :] * out_stride, result.to(out_ptr.dtype.element_ty),
             mask=(row_ok & (cls < C))[:, None] & col_ok[None, :])


@triton.jit
def _routed_grad_weight_kernel(g_ptr, order_ptr, offsets_ptr, x_ptr, gw_ptr, gb_ptr, n, m, HW,
                               ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr):
    # grad W_c = sum over class c's rows of grad_rows[row]^T x features[cell]: one program per (class, tile),
    # looping over the class's bucket [offsets[c], offsets[c+1]) read on the device.
    c = tl.program_id(0)
    outs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)  # layer-1 output channels
    ins = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)  # feature channels
    out_ok = outs < m
    in_ok = ins < n
    start = tl.load(offsets_ptr + c)
    end = tl.load(offsets_ptr + c + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_M,), dtype=ACC)
    for r0 in range(start, end, BLOCK_K):
        rows = r0 + tl.arange(0, BLOCK_K)
        row_ok = rows < end
        cell = tl.load(order_ptr + rows, mask=row_ok, other=0)
        base = (cell // HW) * n * HW + cell % HW
        gt = tl.load(g_ptr + rows[None, :] * m + outs[:, None], mask=out_ok[:, None] & row_ok[None, :], other=0.0)
        a = tl.load(x_ptr + base[:, None] + ins.to(tl.int64)[None, :] * HW, mask=row_ok[:, None] & in_ok[None, :],
                    other=0.0)
        acc += tl.dot(gt, a, input_precision="ieee", out_dtype=ACC)
        bias_acc += tl.sum(gt.to(ACC), axis=1)
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
    grid = (triton.cdiv(N, BLOCK_ROWS), triton.cdiv(m, BLOCK_COLS))
    # W_c[col, k] = weight[c*m + col, k]: column stride n, k stride 1.
    _routed_gemm_kernel[grid](features, order, row_class, weight.reshape(C * m, n).contiguous(), bias.contiguous(),
                              out, N, n, m, n, h * w, C, n, 1, GATHER_A=True, HAS_BIAS=True,
                              ACC=_acc_dtype(features.dtype), BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_COLS,
                              BLOCK_K=BLOCK_K)
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
    acc = _acc_dtype(features.dtype)
    grad_features = grad_weight = grad_bias = None
    if output_mask[0]:
        row_class = torch.searchsorted(offsets[1:], torch.arange(N, device=order.device), right=True)
        grad_features = torch.zeros_like(features)
        grid = (triton.cdiv(N, BLOCK_ROWS), triton.cdiv(n, BLOCK_COLS))
        # (W_c^T)[col, k] = weight[c*m + k, col]: column stride 1, k stride n.
        _routed_gemm_kernel[grid](grad_rows, order, row_class, w2, w2, grad_features, N, m, n, n, h * w, C, 1, n,
                                  GATHER_A=False, HAS_BIAS=False, ACC=acc, BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_COLS,
                                  BLOCK_K=BLOCK_K)
    if output_mask[1] or output_mask[2]:
        gw = torch.empty((C * m, n), dtype=features.dtype, device=features.device)
        gb = torch.empty((C * m,), dtype=features.dtype, device=features.device)
        grid = (C, triton.cdiv(m, BLOCK_ROWS), triton.cdiv(n, BLOCK_COLS))
        _routed_grad_weight_kernel[grid](grad_rows, order, offsets, features, gw, gb, n, m, h * w, ACC=acc,
                                         BLOCK_M=BLOCK_ROWS, BLOCK_N=BLOCK_COLS, BLOCK_K=BLOCK_K)
        grad_weight = gw.view(weight.shape) if output_mask[1] else None
        grad_bias = gb if output_mask[2] else None
    return grad_features, grad_weight, grad_bias
