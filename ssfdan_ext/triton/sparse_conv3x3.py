"""Triton kernels of the sparse SS-D 3x3 layer: a gather-GEMM over the explicit (class, cell) pairs.

Pairs are sorted by class; class c owns ``[offsets[c], offsets[c+1])``. As in the routed layer 1, a pair tile may
straddle class boundaries, so each program runs one GEMM per class present in its tile, with the classes read on
the device (never on the host). The nine taps of a pair are gathered from the value table inside the K loop
(tap-major: K = 9*m_in), so the (P, 9*m_in) operand is never materialised.

The input gradient scatters each pair's nine tap gradients into the table with atomic adds. Materialising the tap
gradients and then ``index_add_``-ing them would need a (P*9, m_in) float32 buffer: at paper scale (layer 2:
m_in = 1024, ~50k pairs) that is ~1.8 GB, against no extra memory for the atomics (the float32 accumulator is
the gradient itself for float32 inputs, and the table's size for float16/bfloat16). Every explicit row is read
by at most nine taps, so its atomics rarely collide; the hot constant rows (a class's constant row is read by
thousands of taps) are first summed over the tile and then added once per tile. The table's last row is the
zero row of the SS-D value table (``ops/sparse_ssd.py``'s ``_table``: a constant, not a function of the
weights), whose gradient the caller discards: it is not computed, and that row of the table gradient is 0. The
summation order of the atomics is not fixed: results are reproducible up to float32 rounding, not bit for bit.

Launch configurations come from :mod:`ssfdan_ext.triton.configs` per kernel and layer shape. TF32: float32
products use TF32 when ``torch.backends.cudnn.allow_tf32`` is True and IEEE float32 otherwise (other dtypes are
unaffected). The tap-major weight copy the kernels read is cached per weight tensor and version (see
``_tap_major``). Data-dependent loops are ``while`` loops and the channel loops run to constexpr widths, for the
reason given in :mod:`ssfdan_ext.triton.routed_conv1x1`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._buckets import row_classes
from ._weight_cache import WeightCache
from .configs import input_precision, kernel_config, launch
from .routed_conv1x1 import _acc_dtype, _class_range, class_bucket


@triton.jit
def _pair_tile(row_class_ptr, P, C, BLOCK_M: tl.constexpr):
    """This program's pairs (64-bit: pair * m and row * m pass 2**31 at large sizes), mask and classes."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < P
    cls = tl.load(row_class_ptr + rows, mask=row_ok, other=C)
    return rows, row_ok, cls


@triton.jit
def _sparse_conv_fwd_kernel(table_ptr, taps_ptr, row_class_ptr, wt_ptr, b_ptr, out_ptr, P, C, MI: tl.constexpr,
                            MO: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[p, col] = b_c[col] + sum_t sum_k table[taps[p, t], k] Wt[c, t, k, col] for each pair p of class c.

    Wt is the tap-major weight (C, 9, m_in, m_out). Each output element is written by one program, when its
    class's product is done (no second tile-sized accumulator: see the routed kernel).
    """
    rows, _, cls = _pair_tile(row_class_ptr, P, C, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < MO
    cols64 = cols.to(tl.int64)
    c, hi = _class_range(row_class_ptr, P, C, BLOCK_M)
    while c <= hi:
        sel = cls == c
        if tl.sum(sel.to(tl.int32), axis=0) > 0:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
            for t in range(9):
                tap_rows = tl.load(taps_ptr + rows * 9 + t, mask=sel, other=0)
                w_base = (c * 9 + t) * MI * MO  # 64-bit: c comes from the int64 classes
                for k0 in range(0, MI, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < MI
                    a = tl.load(table_ptr + tap_rows[:, None] * MI + ks[None, :], mask=sel[:, None] & k_ok[None, :],
                                other=0.0)
                    w = tl.load(wt_ptr + w_base + ks.to(tl.int64)[:, None] * MO + cols64[None, :],
                                mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    acc += tl.dot(a, w, input_precision=PRECISION, out_dtype=ACC)
            acc += tl.load(b_ptr + c * MO + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
            tl.store(out_ptr + rows[:, None] * MO + cols64[None, :], acc.to(out_ptr.dtype.element_ty),
                     mask=sel[:, None] & col_ok[None, :])
        c += 1


@triton.jit
def _add_hot_row(gt_ptr, tap_rows, hot, acc, cols64, col_ok, MI):
    """Adds the tile's rows flagged ``hot`` (all reading one table row) to that row with one atomic per column."""
    if tl.sum(hot.to(tl.int32), axis=0) > 0:
        row = tl.max(tl.where(hot, tap_rows, 0), axis=0)  # the shared row, as int64 (row * m_in may pass 2**31)
        tl.atomic_add(gt_ptr + row * MI + cols64, tl.sum(tl.where(hot[:, None], acc, 0.0), axis=0), mask=col_ok,
                      sem="relaxed")


@triton.jit
def _sparse_conv_grad_table_kernel(g_ptr, taps_ptr, row_class_ptr, wt_ptr, gt_ptr, P, T, C, MI: tl.constexpr,
                                   MO: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """grad_table[taps[p, t], col] += sum_o grad_out[p, o] Wt[c, t, col, o] for each pair p of class c and tap t,
    except into the zero row T - 1 (the caller discards its gradient: no atomics for the row every tile hits).

    The columns are m_in (the table's width), K runs over m_out. Rows reading their class's constant row
    (T - C - 1 + c) are summed over the tile first: one atomic per tile instead of one per pair on the row every
    tile of the class hits. Any other tap row is handled exactly (the pre-sum only reorders the sum).
    """
    rows, _, cls = _pair_tile(row_class_ptr, P, C, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < MI
    cols64 = cols.to(tl.int64)
    zero_row = T - 1
    c, hi = _class_range(row_class_ptr, P, C, BLOCK_M)
    while c <= hi:
        sel = cls == c
        if tl.sum(sel.to(tl.int32), axis=0) > 0:
            const_row = T - 1 - C + c
            for t in range(9):
                w_base = (c * 9 + t) * MI * MO  # 64-bit: c comes from the int64 classes
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
                for k0 in range(0, MO, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < MO
                    a = tl.load(g_ptr + rows[:, None] * MO + ks[None, :], mask=sel[:, None] & k_ok[None, :],
                                other=0.0)
                    w = tl.load(wt_ptr + w_base + cols64[None, :] * MO + ks[:, None],
                                mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    acc += tl.dot(a, w, input_precision=PRECISION, out_dtype=ACC)
                tap_rows = tl.load(taps_ptr + rows * 9 + t, mask=sel, other=0)
                hot = sel & (tap_rows == const_row)
                cold = sel & ~hot & (tap_rows != zero_row)
                tl.atomic_add(gt_ptr + tap_rows[:, None] * MI + cols64[None, :], acc,
                              mask=cold[:, None] & col_ok[None, :], sem="relaxed")
                _add_hot_row(gt_ptr, tap_rows, hot, acc, cols64, col_ok, MI)
        c += 1


@triton.jit
def _sparse_conv_grad_weight_kernel(g_ptr, taps_ptr, offsets_ptr, table_ptr, gw_ptr, gb_ptr, MI: tl.constexpr,
                                    MO: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                                    ACC: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grad W_c[o, i, t] = sum over class c's pairs p of grad_out[p, o] table[taps[p, t], i]: one program per
    # (class, tap x input-channel tile, output-channel tile), looping over the class's pairs read on the device.
    # The gradient is stored straight into the canonical (C*m_out, m_in, 3, 3) layout (tap stride 1).
    c = tl.program_id(0)
    start, end = class_bucket(offsets_ptr, c)
    tiles_in = tl.cdiv(MI, BLOCK_M)
    t = tl.program_id(1) // tiles_in
    ins = (tl.program_id(1) % tiles_in) * BLOCK_M + tl.arange(0, BLOCK_M)
    outs = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    in_ok = ins < MI
    out_ok = outs < MO
    bias_acc = tl.zeros((BLOCK_N,), dtype=ACC)  # the bias gradient sums grad_out over the class's pairs
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    r0 = start
    while r0 < end:
        pairs = r0 + tl.arange(0, BLOCK_K)
        pair_ok = pairs < end
        g = tl.load(g_ptr + pairs[:, None] * MO + outs[None, :], mask=pair_ok[:, None] & out_ok[None, :],
                    other=0.0)
        if HAS_WEIGHT:
            tap_rows = tl.load(taps_ptr + pairs * 9 + t, mask=pair_ok, other=0)
            xt = tl.load(table_ptr + tap_rows[None, :] * MI + ins[:, None], mask=in_ok[:, None] & pair_ok[None, :],
                         other=0.0)
            acc += tl.dot(xt, g, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            bias_acc += tl.sum(g.to(ACC), axis=0)
        r0 += BLOCK_K
    if HAS_WEIGHT:
        dst = ((c.to(tl.int64) * MO + outs[None, :]) * MI + ins[:, None]) * 9 + t
        tl.store(gw_ptr + dst, acc.to(gw_ptr.dtype.element_ty), mask=in_ok[:, None] & out_ok[None, :])
    if HAS_BIAS:
        if tl.program_id(1) == 0:
            tl.store(gb_ptr + c * MO + outs, bias_acc.to(gb_ptr.dtype.element_ty), mask=out_ok)


def _check_conv_args(op: str, table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor) -> None:
    """The argument checks of the ATen ops, so that both backends reject the same inputs."""
    if table.dim() != 2:
        raise ValueError(f"{op}: table must be (T, m_in), got shape {tuple(table.shape)}")
    if taps.dim() != 2 or taps.shape[1] != 9 or taps.dtype != torch.int64:
        raise ValueError(f"{op}: taps must be (P, 9) int64, got shape {tuple(taps.shape)} and dtype {taps.dtype}")
    if offsets.dim() != 1 or offsets.shape[0] < 2 or offsets.dtype != torch.int64:
        raise ValueError(f"{op}: offsets must be (C+1,) int64, got shape {tuple(offsets.shape)}")
    C = offsets.shape[0] - 1
    if (weight.dim() != 4 or weight.shape[0] % C != 0 or weight.shape[1] != table.shape[1]
            or tuple(weight.shape[2:]) != (3, 3)):
        raise ValueError(f"{op}: weight must be (C*m_out, m_in, 3, 3) with C = {C} and m_in = {table.shape[1]}, "
                         f"got shape {tuple(weight.shape)}")
    if weight.dtype != table.dtype:
        raise TypeError(f"{op}: weight dtype {weight.dtype} differs from the table dtype {table.dtype}")
    devices = {t.device for t in (table, taps, offsets, weight)}
    if len(devices) != 1:
        raise ValueError(f"{op}: table, taps, offsets and weight must be on one device, got "
                         f"{sorted(map(str, devices))}")


def _acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tap_major_copy(weight: Tensor, C: int) -> Tensor:
    mo, mi = weight.shape[0] // C, weight.shape[1]
    return weight.reshape(C, mo, mi, 9).permute(0, 3, 2, 1).contiguous()


# W as (C, 9, m_in, m_out), a class's tap t one contiguous (m_in, m_out) block, built once per weight version: the
# forward and backward of the source and target passes of a training step share one copy.
_tap_major = WeightCache(_tap_major_copy)


def sparse_conv3x3_forward(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Same contract as ``torch.ops.ssfdan_ext.sparse_conv3x3_forward`` (see ops/sparse_conv3x3.py).

    Shapes:
        table (T, m_in), taps (P, 9) int64, offsets (C+1,) int64, weight (C*m_out, m_in, 3, 3), bias (C*m_out,)
        -> (P, m_out) in the table's dtype (accumulated in float32, float64 for float64).
    """
    op = "sparse_conv3x3_forward"
    _check_conv_args(op, table, taps, offsets, weight)
    C = offsets.shape[0] - 1
    mo, mi, P = weight.shape[0] // C, table.shape[1], taps.shape[0]
    if bias.dim() != 1 or bias.shape[0] != C * mo:
        raise ValueError(f"{op}: bias must be ({C * mo},), got shape {tuple(bias.shape)}")
    out = torch.empty((P, mo), dtype=table.dtype, device=table.device)
    if P == 0 or mo == 0:
        return out
    dtype = table.dtype
    precision = input_precision(dtype)
    config = kernel_config("sparse_fwd", mi, mo, dtype, precision)
    grid = (triton.cdiv(P, config.block_m), triton.cdiv(mo, config.block_n))
    launch(_sparse_conv_fwd_kernel, grid, (table.contiguous(), taps.contiguous(), row_classes(offsets, P),
                                           _tap_major(weight, C), bias.to(_acc_torch_dtype(dtype)).contiguous(),
                                           out, P, C), table, config,
           MI=mi, MO=mo, ACC=_acc_dtype(dtype), PRECISION=precision)
    return out


def sparse_conv3x3_backward(grad_out: Tensor, table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor,
                            output_mask: tuple[bool, bool, bool] | list[bool]
                            ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Same contract as ``torch.ops.ssfdan_ext.sparse_conv3x3_backward``, except for the table's last row: it is
    the SS-D value table's zero row, whose gradient the caller discards, and its gradient is returned as 0.

    Sums are accumulated in float32 (float64 for float64 inputs) and cast to the input dtype at the end: a
    constant row collects the tap gradients of thousands of pairs.

    Shapes:
        grad_out (P, m_out), table (T, m_in), taps (P, 9), offsets (C+1,), weight (C*m_out, m_in, 3, 3)
        -> grad table (T, m_in), grad weight (C*m_out, m_in, 3, 3), grad bias (C*m_out,) (None where not asked).
    """
    op = "sparse_conv3x3_backward"
    _check_conv_args(op, table, taps, offsets, weight)
    C = offsets.shape[0] - 1
    mo, mi, P, T = weight.shape[0] // C, table.shape[1], taps.shape[0], table.shape[0]
    if grad_out.dim() != 2 or tuple(grad_out.shape) != (P, mo):
        raise ValueError(f"{op}: grad_out must be (P, m_out) = ({P}, {mo}), got shape {tuple(grad_out.shape)}")
    dtype, acc = table.dtype, _acc_torch_dtype(table.dtype)
    grad_out, table, taps = grad_out.to(dtype).contiguous(), table.contiguous(), taps.contiguous()
    precision = input_precision(dtype)
    flags = {"MI": mi, "MO": mo, "ACC": _acc_dtype(dtype), "PRECISION": precision}
    grad_table = grad_weight = grad_bias = None
    if output_mask[0]:
        buffer = torch.zeros((T, mi), dtype=acc, device=table.device)  # atomics add into it
        if P > 0 and mi > 0 and mo > 0:
            config = kernel_config("sparse_grad_table", mi, mo, dtype, precision)
            grid = (triton.cdiv(P, config.block_m), triton.cdiv(mi, config.block_n))
            launch(_sparse_conv_grad_table_kernel, grid, (grad_out, taps, row_classes(offsets, P),
                                                          _tap_major(weight, C), buffer, P, T, C), table, config,
                   **flags)
        grad_table = buffer.to(dtype)
    if output_mask[1] or output_mask[2]:
        has_weight, has_bias = bool(output_mask[1]) and mi > 0, bool(output_mask[2])
        run = P > 0 and mo > 0
        # The kernel writes every element it computes, empty classes included: no zero fill before it.
        gw = (torch.empty if run and has_weight else torch.zeros)(weight.shape, dtype=dtype, device=table.device)
        gb = (torch.empty if run and has_bias else torch.zeros)((C * mo,), dtype=dtype, device=table.device)
        if run:
            config = kernel_config("sparse_grad_weight", mi, mo, dtype, precision)
            in_tiles = 9 * triton.cdiv(mi, config.block_m) if has_weight else 1
            grid = (C, in_tiles, triton.cdiv(mo, config.block_n))
            launch(_sparse_conv_grad_weight_kernel, grid, (grad_out, taps, offsets.contiguous(), table, gw, gb),
                   table, config, HAS_WEIGHT=has_weight, HAS_BIAS=has_bias, **flags)
        grad_weight = gw if output_mask[1] else None
        grad_bias = gb if output_mask[2] else None
    return grad_table, grad_weight, grad_bias
