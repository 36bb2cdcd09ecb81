"""Rows sorted into class buckets: the layout the routed and sparse ops share."""
from __future__ import annotations

import torch
from torch import Tensor


def row_classes(offsets: Tensor, rows: int) -> Tensor:
    """The class of each of ``rows`` sorted rows whose class c owns ``[offsets[c], offsets[c+1])``; rows past
    ``offsets[C]`` get C. Computed on the device (no host read).

    Shapes: offsets (C+1,) int64 -> (rows,) int64.
    """
    return torch.searchsorted(offsets[1:].contiguous(), torch.arange(rows, device=offsets.device), right=True)
