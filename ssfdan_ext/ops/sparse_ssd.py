"""sparse_ssd: the whole SS-D (docs/semantics.md section 3) evaluated exactly on the (class, cell) pairs that can matter.

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

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

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


def sparse_ssd_forward(features: Tensor, lf: Tensor, lo: Tensor, weights: Sequence[Tensor],
                       biases: Sequence[Tensor], strides: Sequence[int], num_classes: int,
                       negative_slope: float = 0.2, impl: str = "auto",
                       rulebook: Rulebook | None = None) -> Tensor:
    """SS-D logits (docs/semantics.md section 3, steps 2-4) computed on the explicit pairs only; equal to the dense backends.

    Arguments are not checked: :class:`~ssfdan_ext.SeparatedDiscriminator` validates them (``backend="fused"``).

    Shapes:
        features (B, n, h, w); lf (B, h, w) and lo (B, h', w') the mode-downsampled labels; weights/biases the
        five canonical layers -> logits (B, 1, h', w').
    """
    C = num_classes
    if rulebook is None:
        rulebook = _rulebook(lf, lo, C, strides[1:])
    rows = routed_conv1x1_op(features, rulebook.lf_masked, weights[0], biases[0], C, impl)[0]
    constants = class_constants(weights, biases, C, negative_slope)
    x = F.leaky_relu(rows, negative_slope)
    for layer in range(1, len(weights)):
        x = sparse_conv3x3_op(_table(x, constants[layer - 1]), rulebook.taps[layer - 1],
                              rulebook.offsets[layer - 1], weights[layer], biases[layer], impl)
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
