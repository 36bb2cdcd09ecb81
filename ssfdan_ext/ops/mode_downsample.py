"""mode_downsample (docs/semantics.md section 2) on the compiled CPU / CUDA kernels."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import reference
from .._checks import check_nonempty, check_num_classes, check_size, check_tensor
from .._ext import has_compiled_ops, use_reference


def mode_downsample(labels: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """Downsample a label map by the per-bin mode (the majority class among non-IGNORE pixels).

    Output cell (i, j) covers the adaptive-pooling bin rows [floor(i*H/h), ceil((i+1)*H/h)) and likewise for
    columns; ties go to the lowest class index and a bin without a labelled pixel gets IGNORE (255).

    Shapes:
        labels: (B, H, W) int64 with values in [0, num_classes) or 255.
        returns: (B, h, w) int64 with (h, w) = size, h <= H, w <= W.

    Raises:
        TypeError: labels is not an int64 tensor, or size is not a pair of ints.
        ValueError: wrong rank, an empty map (B, H or W = 0), size out of range, num_classes outside [1, 255], or a
            label outside [0, num_classes) ∪ {255}.

    Without a compiled kernel for the labels' device this runs :func:`ssfdan_ext.reference.mode_downsample`
    (the same result; see :func:`ssfdan_ext._ext.use_reference`).
    """
    labels = check_tensor(labels, "labels", 3, "(B, H, W)")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    num_classes = check_num_classes(num_classes)
    check_nonempty(labels, "labels", "(B, H, W)")
    h, w = check_size(size, labels)
    if use_reference("mode_downsample", labels.device):  # the documented fallback
        return reference.mode_downsample(labels, (h, w), num_classes)
    # The kernels validate the label values while they read them (no extra pass, no extra host sync).
    return torch.ops.ssfdan_ext.mode_downsample(labels, h, w, num_classes)


if has_compiled_ops():

    @torch.library.register_fake("ssfdan_ext::mode_downsample")
    def _(labels: Tensor, out_h: int, out_w: int, num_classes: int) -> Tensor:
        torch._check(labels.dim() == 3, lambda: "labels must be (B, H, W)")
        return labels.new_empty((labels.shape[0], out_h, out_w))
