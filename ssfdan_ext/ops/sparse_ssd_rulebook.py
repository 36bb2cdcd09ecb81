"""sparse_ssd_rulebook: where the fused SS-D's explicit (class, cell) pairs are and which value-table rows they read.

The sets behind it are described in :mod:`ssfdan_ext.ops.sparse_ssd`; the rulebook is built on the device by the
compiled ATen code (``csrc/aten/sparse_ssd_rulebook.cpp``), the same code for CPU and CUDA tensors.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import as_int, check_labels, check_nonempty, check_num_classes, check_same_device
from .._buckets import row_classes
from .._ext import has_compiled_ops, require_compiled


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



def _joint_rows(counts_a: Tensor, counts_b: Tensor) -> tuple[Tensor, Tensor]:
    """Where the rows of two class-sorted tables go in their joint table (class by class, a's rows before b's):
    the shift of a's rows and of b's rows in each segment. Shapes: counts (S,) rows per segment -> two (S,)."""
    zero = counts_a.new_zeros(1)
    before_a = torch.cat([zero, torch.cumsum(counts_a, 0)[:-1]])
    before_b = torch.cat([zero, torch.cumsum(counts_b, 0)[:-1]])
    return before_b, before_a + counts_a


def _remap(index: Tensor, rows: Tensor, segments: Tensor, shift: Tensor, tail_shift: int) -> Tensor:
    """Table row numbers of one rulebook in the joint table: a row below ``rows`` (explicit, sorted into segments
    with the given start offsets ``segments``) moves by its segment's ``shift``; a constant or the zero row by
    ``tail_shift``."""
    explicit = index < rows
    # The segment of each explicit row (the row's class); constants and the zero row are clamped to the last row.
    segment = torch.searchsorted(segments[1:].contiguous(), index.clamp(max=max(rows - 1, 0)), right=True)
    return torch.where(explicit, index + shift[segment.clamp(max=shift.numel() - 1)], index + tail_shift)


def concat_rulebooks(a: Rulebook, b: Rulebook, num_classes: int) -> Rulebook:
    """The rulebook of two batches together (a's images first): equal to :func:`sparse_ssd_rulebook` on the
    concatenated label maps, without walking the sets again. Within a class, a's pairs come before b's, as the
    batch order gives them. Label maps of two sizes join too: ``lf_masked`` is then one row of cells (1, 1, N_a +
    N_b), a's cells first, and ``out_index`` lists a's output cells, then b's.
    """
    C = num_classes
    # Layer 1's rows: every cell, sorted by class with IGNORE last (C + 1 segments).
    counts = [torch.bincount(rb.lf_masked.reshape(-1).clamp(max=C), minlength=C + 1) for rb in (a, b)]
    rows = [rb.lf_masked.numel() for rb in (a, b)]
    segs = [torch.cat([c.new_zeros(1), torch.cumsum(c, 0)]) for c in counts]
    taps, offsets = [], []
    for layer in range(4):
        shift_a, shift_b = _joint_rows(*counts)
        new = []
        for k, (rb, shift) in enumerate(((a, shift_a), (b, shift_b))):
            tail = rows[1 - k]  # a constant or the zero row moves past the other table's explicit rows
            new.append(_remap(rb.taps[layer], rows[k], segs[k], shift, tail))
        off_a, off_b = a.offsets[layer], b.offsets[layer]
        pair_counts = [off_a[1:] - off_a[:-1], off_b[1:] - off_b[:-1]]
        pos_a, pos_b = _joint_rows(*pair_counts)
        joint = new[0].new_empty((new[0].shape[0] + new[1].shape[0], 9))
        for t, pos, off in ((new[0], pos_a, off_a), (new[1], pos_b, off_b)):
            joint[torch.arange(t.shape[0], device=t.device) + pos[row_classes(off, t.shape[0])]] = t
        taps.append(joint)
        offsets.append(off_a + off_b)
        counts, rows = pair_counts, [t.shape[0] for t in new]
        segs = [off_a, off_b]
    shift_a, shift_b = _joint_rows(*counts)
    out = [_remap(rb.out_index, rows[k], segs[k], shift, rows[1 - k])
           for k, (rb, shift) in enumerate(((a, shift_a), (b, shift_b)))]
    if a.lf_masked.shape[1:] == b.lf_masked.shape[1:]:
        lf_masked = torch.cat([a.lf_masked, b.lf_masked])
    else:  # feature maps of two sizes: one row of cells, a's images first, each in raster order
        lf_masked = torch.cat([a.lf_masked.reshape(-1), b.lf_masked.reshape(-1)]).view(1, 1, -1)
    return Rulebook(lf_masked, tuple(taps), tuple(offsets), torch.cat(out))


if has_compiled_ops():

    @torch.library.register_fake("ssfdan_ext::sparse_ssd_rulebook")
    def _(lf, lo, num_classes, strides):
        # How many pairs each layer has depends on the label values: unbacked sizes under torch.compile.
        ctx = torch.library.get_ctx()
        taps = [lf.new_empty((ctx.new_dynamic_size(), 9)) for _ in range(4)]
        offsets = [lf.new_empty((num_classes + 1,)) for _ in range(4)]
        return lf.new_empty(lf.shape), taps, offsets, lo.new_empty((lo.numel(),))
