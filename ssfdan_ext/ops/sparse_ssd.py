"""sparse_ssd: the whole SS-D (docs/semantics.md section 3) evaluated exactly on the (class, cell) pairs that can
matter.

Class c's activation after layer l equals a constant ``k_l^c`` (the stack's response to an all-zero input far
from the border) except on the explicit set ``E_l^c = A_l^c ∩ N_l^c``: ``A`` holds the cells a class-c cell or
the zero padding can reach through the 3x3 footprints, ``N`` the cells that reach an output cell labelled c.
Layer 1 is the routed GEMM (:mod:`ssfdan_ext.ops.routed_conv1x1`) on ``E_1``; every later layer gathers the nine
taps of each explicit pair from a value table ``[explicit rows | C constant rows | zero row]`` and multiplies
them by its class's weight (``sparse_conv3x3``). The constants form a per-class chain, ``k_l = b_l + (sum over
taps of W_l) k_{l-1}``: exactly the output of one more pair of the class whose nine taps all read the class's
constant row. So each layer's sparse convolution gets one such constant pair per class that needs its constant
(the classes with a labelled output cell), and the chain costs no tap sums of the weights: every weight byte of a
present class is read once per pass and its gradient written once (docs/fused-backend.md). The rulebook (the
explicit pairs and their tap rows) is built by ``torch.ops.ssfdan_ext.sparse_ssd_rulebook`` on the device.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._buckets import row_classes
from .routed_conv1x1 import routed_conv1x1_op
from .sparse_conv3x3 import sparse_conv3x3_op
from .sparse_ssd_rulebook import Rulebook, _rulebook


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


class ConstantPairs(NamedTuple):
    """One layer's pairs with a constant pair appended to the segment of each class in ``classes``.

    Shapes (P explicit pairs, K = len(classes)): taps (P+K, 9), offsets (C+1,), rows (P+C+1,) int64: the row of
    ``cat([output, zero row])`` holding each row of the layer's next table, explicit pairs first (in rulebook
    order), then the C constants (the zero row for a class without a constant pair: nothing reads it), then the
    zero row.
    """

    taps: Tensor
    offsets: Tensor
    rows: Tensor


def constant_pairs(taps: Tensor, offsets: Tensor, constant_row: int, classes: Tensor) -> ConstantPairs:
    """Append to the pairs of each class in ``classes`` (sorted, int64) one pair whose nine taps read the class's
    constant row ``constant_row + c`` of the layer's input table; computed on the device.
    """
    C, P, K = offsets.numel() - 1, taps.shape[0], classes.numel()
    has = torch.zeros(C, dtype=torch.int64, device=taps.device).index_fill_(0, classes, 1)
    before = torch.cumsum(has, 0) - has  # constant pairs of the classes below c
    explicit_pos = torch.arange(P, device=taps.device) + before[row_classes(offsets, P)]
    constant_pos = offsets[classes + 1] + before[classes]  # the last pair of its class's segment
    extended = taps.new_empty((P + K, 9))
    extended[explicit_pos] = taps
    extended[constant_pos] = (constant_row + classes).unsqueeze(1).expand(K, 9)
    new_offsets = offsets + torch.cat([has.new_zeros(1), torch.cumsum(has, 0)])
    # Each class's constant row, then the zero row; a class without a constant pair gets the zero row too.
    tail = torch.full((C + 1,), P + K, dtype=torch.int64, device=taps.device).index_copy_(0, classes, constant_pos)
    return ConstantPairs(extended, new_offsets, torch.cat([explicit_pos, tail]))


def classes_with_constants(lo: Tensor, num_classes: int) -> Tensor:
    """The classes whose constants the evaluation reads: those with a labelled output cell (a class without one
    has no explicit pair either). Under torch.compile every class, to keep the graph free of data-dependent sizes
    (the same results, more weight read)."""
    if torch.compiler.is_compiling():
        return torch.arange(num_classes, device=lo.device)
    present = torch.zeros(num_classes + 1, dtype=torch.bool, device=lo.device)
    present[lo.reshape(-1).clamp(max=num_classes)] = True  # IGNORE lands on the extra slot
    return present[:num_classes].nonzero().view(-1)


def sparse_ssd_forward(features: Tensor, lf: Tensor, lo: Tensor, weights: Sequence[Tensor],
                       biases: Sequence[Tensor], strides: Sequence[int], num_classes: int,
                       negative_slope: float = 0.2, impl: str = "auto",
                       rulebook: Rulebook | None = None) -> Tensor:
    """SS-D logits (docs/semantics.md section 3, steps 2-4) computed on the explicit pairs only; equal to the
    dense backends.

    Arguments are not checked: :class:`~ssfdan_ext.SeparatedDiscriminator` validates them (``backend="fused"``).

    Shapes:
        features (B, n, h, w); lf (B, h, w) and lo (B, h', w') the mode-downsampled labels; weights/biases the
        five canonical layers -> logits (B, 1, h', w').
    """
    C = num_classes
    if rulebook is None:
        rulebook = _rulebook(lf, lo, C, strides[1:])
    rows = routed_conv1x1_op(features, rulebook.lf_masked, weights[0], biases[0], C, impl)[0]
    classes = classes_with_constants(lo, C)
    x = F.leaky_relu(_table(rows, biases[0].view(C, -1)), negative_slope)  # layer 1's constants: its biases
    for layer in range(1, len(weights)):
        pairs = constant_pairs(rulebook.taps[layer - 1], rulebook.offsets[layer - 1], x.shape[0] - C - 1, classes)
        out = sparse_conv3x3_op(x, pairs.taps, pairs.offsets, weights[layer], biases[layer], impl)
        x = torch.cat([out, out.new_zeros((1, out.shape[1]))]).index_select(0, pairs.rows)  # the next table
        if layer < len(weights) - 1:
            x = F.leaky_relu(x, negative_slope)  # leaky_relu(0) = 0: the zero row stays zero
    logits = x.index_select(0, rulebook.out_index)
    return logits.view(lo.shape[0], 1, *lo.shape[1:])


def executed_flops(rulebook: Rulebook, widths: Sequence[int], constant_classes: int = 0) -> int:
    """Multiply-add FLOPs (2 per MAC) of the sparse evaluation's forward: routed layer 1 plus the 3x3 layers, each
    with one constant pair per class of ``constant_classes`` (:func:`classes_with_constants`).

    ``widths``: (n, m_1, m_2, m_3, m_4, 1).
    """
    counts = rulebook.pair_counts()
    total = 2 * counts[0] * widths[0] * widths[1]
    for layer in range(1, 5):
        total += 2 * (counts[layer] + constant_classes) * 9 * widths[layer] * widths[layer + 1]
    return total
