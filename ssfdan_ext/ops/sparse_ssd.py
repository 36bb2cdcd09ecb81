"""sparse_ssd: the whole SS-D (SPEC section 3) evaluated exactly on the (class, cell) pairs that can matter.

Class c's activation after layer l equals a constant ``k_l^c`` (the stack's response to an all-zero input far
from the border) except on the explicit set ``E_l^c = A_l^c ∩ N_l^c``: ``A`` holds the cells a class-c cell or
the zero padding can reach through the 3x3 footprints, ``N`` the cells that reach an output cell labelled c.
Layer 1 is the routed GEMM (:mod:`ssfdan_ext.ops.routed_conv1x1`) on ``E_1``; every later layer gathers the nine
taps of each explicit pair from a value table ``[explicit rows | C constant rows | zero row]`` and multiplies
them by its class's weight (``sparse_conv3x3``). The constants form a small per-class chain computed with
ordinary tensor ops, so autograd carries their gradients into the weights and biases. The rulebook (the
explicit pairs and their tap rows) is built by ``torch.ops.ssfdan_ext.sparse_ssd_rulebook`` on the device.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._checks import as_int, check_floating, check_labels, check_nonempty, check_num_classes, check_same_device
from .._checks import check_tensor
from .._ext import has_compiled_ops, require_compiled
from .routed_conv1x1 import _RoutedConv1x1, _use_triton

IMPLEMENTATIONS = ("auto", "aten", "triton")


class Rulebook(NamedTuple):
    """Where the explicit (class, cell) pairs of an SS-D evaluation are and which value-table rows they read.

    Shapes (P_l = number of explicit pairs of layer l, N = B*h*w):
        lf_masked: (B, h, w) int64, the feature-resolution labels with every cell outside E_1 set to IGNORE.
        taps: four (P_l, 9) int64 tensors for layers 2-5: the table row of each tap (tap ``3*ky + kx``). A
            layer's input table is [explicit rows of the previous layer | C constant rows | one zero row]; layer
            1's explicit rows are the N routed rows of ``lf_masked``.
        offsets: four (C+1,) int64 tensors; class c owns pairs ``[offsets[c], offsets[c+1])`` (raster order).
        out_index: (B*h'*w',) int64, the row of each output cell in layer 5's table (the zero row where the
            output label is IGNORE).
    """

    lf_masked: Tensor
    taps: tuple[Tensor, ...]
    offsets: tuple[Tensor, ...]
    out_index: Tensor

    def pair_counts(self) -> list[int]:
        """Explicit pairs of layers 1-5 (layer 1: the cells the routed GEMM computes)."""
        from ..types import IGNORE

        return [int((self.lf_masked != IGNORE).sum())] + [t.shape[0] for t in self.taps]


def sparse_ssd_rulebook(lf: Tensor, lo: Tensor, num_classes: int, strides: Sequence[int]) -> Rulebook:
    """The rulebook of the exact sparse evaluation for one pair of label maps.

    ``strides`` are those of layers 2-5 (each 1 or 2).

    Shapes: lf (B, h, w) int64 at the feature resolution, lo (B, h', w') int64 at the output resolution, both
    with values in [0, C) or 255 (IGNORE).
    """
    num_classes = check_num_classes(num_classes)
    check_labels(lf, "lf", num_classes)
    check_labels(lo, "lo", num_classes)
    check_nonempty(lf, "lf", "(B, h, w)")
    check_nonempty(lo, "lo", "(B, h', w')")
    if not isinstance(strides, Sequence) or isinstance(strides, str):
        raise TypeError(f"strides must be a sequence of 4 ints (layers 2-5), got {strides!r}")
    strides = [as_int(s, "strides[i]") for s in strides]
    if len(strides) != 4 or any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be 4 ints (layers 2-5), each 1 or 2, got {strides}")
    check_same_device(lf=lf, lo=lo)
    if lf.shape[0] != lo.shape[0]:
        raise ValueError(f"lf and lo must have the same batch size, got {lf.shape[0]} and {lo.shape[0]}")
    return _rulebook(lf, lo, num_classes, strides)


def _rulebook(lf: Tensor, lo: Tensor, num_classes: int, strides: Sequence[int]) -> Rulebook:
    """:func:`sparse_ssd_rulebook` on label maps the caller has validated (no extra pass over them)."""
    require_compiled("sparse_ssd_rulebook")
    lf_masked, taps, offsets, out_index = torch.ops.ssfdan_ext.sparse_ssd_rulebook(lf, lo, num_classes,
                                                                                   list(strides))
    return Rulebook(lf_masked, tuple(taps), tuple(offsets), out_index)


def _kernels():
    from ..triton import sparse_ssd as kernels  # lazy: a CPU-only install need not import Triton

    return kernels


class _SparseConv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, weight, bias, taps, offsets, impl):
        if _use_triton(table, impl):
            out = _kernels().sparse_conv3x3_forward(table, taps, offsets, weight, bias)
        else:
            out = torch.ops.ssfdan_ext.sparse_conv3x3_forward(table, taps, offsets, weight, bias)
        ctx.save_for_backward(table, weight, taps, offsets)
        ctx.impl = impl
        return out

    @staticmethod
    @once_differentiable  # the backward ops are not differentiable: a double backward must fail, not be 0
    def backward(ctx, grad_out):
        table, weight, taps, offsets = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        if _use_triton(table, ctx.impl):
            grads = _kernels().sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, mask)
        else:
            grads = torch.ops.ssfdan_ext.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, mask)
            if grads[0] is not None:
                grads[0][-1].zero_()  # the zero row: no gradient on any backend (see sparse_conv3x3)
        return grads[0], grads[1], grads[2], None, None, None


def sparse_conv3x3(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor,
                   impl: str = "auto") -> Tensor:
    """One SS-D 3x3 layer on explicit pairs: ``out[p] = b_c + sum_t W_c[t] table[taps[p, t]]`` for class c's pairs.

    Differentiable once in ``table``, ``weight`` and ``bias``. ``impl``: ``"auto"`` (Triton for CUDA float32/
    float16/bfloat16, the compiled ATen code otherwise), ``"aten"`` or ``"triton"`` (CPU tensors only under
    ``TRITON_INTERPRET=1``). The table's last row is the zero row of the SS-D value table, a constant: its
    gradient is 0 on every backend (the Triton kernels skip it, which spares the atomics every tile would add).

    Shapes:
        table (T, m_in), taps (P, 9) int64 rows of ``table``, offsets (C+1,) int64 pairs of each class,
        weight (C*m_out, m_in, 3, 3) canonical layout, bias (C*m_out,) -> (P, m_out).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "triton" and not table.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got table on "
                         f"{table.device}")
    if impl != "triton":
        require_compiled("sparse_conv3x3")
    _check_conv(table, taps, offsets, weight, bias)
    return _SparseConv3x3.apply(table, weight, bias, taps, offsets, impl)


def _check_conv(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor) -> None:
    check_tensor(table, "table", 2, "(T, m_in)")
    check_floating(table, "table")
    check_tensor(taps, "taps", 2, "(P, 9)")
    check_tensor(offsets, "offsets", 1, "(C+1,)")
    check_tensor(weight, "weight", 4, "(C*m_out, m_in, 3, 3)")
    check_tensor(bias, "bias", 1, "(C*m_out,)")
    # Pairs may be absent (P = 0); the table and the layer widths may not.
    check_nonempty(table, "table", "(T, m_in)")
    if weight.shape[0] == 0:
        raise ValueError(f"weight must be (C*m_out, m_in, 3, 3) with m_out >= 1, got shape {tuple(weight.shape)}")
    check_same_device(table=table, taps=taps, offsets=offsets, weight=weight, bias=bias)
    if taps.dtype != torch.int64 or offsets.dtype != torch.int64:
        raise TypeError(f"taps and offsets must be int64, got {taps.dtype} and {offsets.dtype}")
    # The kernels read table[taps] unchecked: every row index and the class ranges must be valid first.
    if taps.numel() and (int(taps.min()) < 0 or int(taps.max()) >= table.shape[0]):
        raise ValueError(f"taps must index rows of table in [0, {table.shape[0]}), got values in "
                         f"[{int(taps.min())}, {int(taps.max())}]")
    if offsets.numel() < 2 or int(offsets[0]) != 0 or int(offsets[-1]) != taps.shape[0] or bool(
            (offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must be (C+1,) non-decreasing from 0 to the number of pairs {taps.shape[0]}, "
                         f"got {offsets.tolist() if offsets.numel() <= 8 else tuple(offsets.shape)}")


def class_constants(weights: Sequence[Tensor], biases: Sequence[Tensor], num_classes: int,
                    negative_slope: float) -> list[Tensor]:
    """``k_l^c`` for layers 1-5: each class stack's activation far from the border on an all-zero input.

    Shapes: weights/biases in the canonical layout -> five tensors (C, m_l) (m_5 = 1, no activation).
    """
    C = num_classes
    k = F.leaky_relu(biases[0].view(C, -1), negative_slope)
    constants = [k]
    for layer in range(1, len(weights)):
        w = weights[layer]
        taps_summed = w.view(C, w.shape[0] // C, w.shape[1], -1).sum(-1)  # (C, m_out, m_in): every tap sees k
        k = biases[layer].view(C, -1) + torch.bmm(taps_summed, k.unsqueeze(2)).squeeze(2)
        if layer < len(weights) - 1:
            k = F.leaky_relu(k, negative_slope)
        constants.append(k)
    return constants


def _table(rows: Tensor, constants: Tensor) -> Tensor:
    return torch.cat([rows, constants, rows.new_zeros((1, rows.shape[1]))])


def sparse_ssd_forward(features: Tensor, lf: Tensor, lo: Tensor, weights: Sequence[Tensor],
                       biases: Sequence[Tensor], strides: Sequence[int], num_classes: int,
                       negative_slope: float = 0.2, impl: str = "auto",
                       rulebook: Rulebook | None = None) -> Tensor:
    """SS-D logits (SPEC section 3, steps 2-4) computed on the explicit pairs only; equal to the dense backends.

    Arguments are not checked: :class:`~ssfdan_ext.SeparatedDiscriminator` validates them (``backend="fused"``).

    Shapes:
        features (B, n, h, w); lf (B, h, w) and lo (B, h', w') the mode-downsampled labels; weights/biases the
        five canonical layers -> logits (B, 1, h', w').
    """
    C = num_classes
    if rulebook is None:
        rulebook = _rulebook(lf, lo, C, strides[1:])
    rows = _RoutedConv1x1.apply(features, rulebook.lf_masked, weights[0], biases[0], C, impl)[0]
    constants = class_constants(weights, biases, C, negative_slope)
    x = F.leaky_relu(rows, negative_slope)
    for layer in range(1, len(weights)):
        x = _SparseConv3x3.apply(_table(x, constants[layer - 1]), weights[layer], biases[layer],
                                 rulebook.taps[layer - 1], rulebook.offsets[layer - 1], impl)
        if layer < len(weights) - 1:
            x = F.leaky_relu(x, negative_slope)
    logits = _table(x, constants[-1]).index_select(0, rulebook.out_index)
    return logits.view(lo.shape[0], 1, *lo.shape[1:])


def executed_flops(rulebook: Rulebook, widths: Sequence[int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of the sparse evaluation's forward: routed layer 1 plus the 3x3 layers.

    ``widths``: (n, m_1, m_2, m_3, m_4, 1).
    """
    counts = rulebook.pair_counts()
    total = 2 * counts[0] * widths[0] * widths[1]
    for layer in range(1, 5):
        total += 2 * counts[layer] * 9 * widths[layer] * widths[layer + 1]
    return total


if has_compiled_ops():

    @torch.library.register_fake("ssfdan_ext::sparse_conv3x3_forward")
    def _(table, taps, offsets, weight, bias):
        C = offsets.shape[0] - 1
        return table.new_empty((taps.shape[0], weight.shape[0] // C))

    @torch.library.register_fake("ssfdan_ext::sparse_conv3x3_backward")
    def _(grad_out, table, taps, offsets, weight, output_mask):
        return (table.new_empty(table.shape) if output_mask[0] else None,
                weight.new_empty(weight.shape) if output_mask[1] else None,
                weight.new_empty((weight.shape[0],)) if output_mask[2] else None)
