"""confidence_select (docs/semantics.md sections 1, 2 and 4) on the compiled CPU / CUDA kernels."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import reference
from .._checks import check_floating, check_nonempty, check_num_classes, check_rho, check_size, check_tensor
from .._ext import has_compiled_ops, use_reference
from ..types import Selection

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_out_sizes(out_sizes: object, logits: Tensor) -> tuple[tuple[int, int], ...]:
    """out_sizes must be a sequence of (h, w) pairs, each positive and at most the logits' (H, W)."""
    if not isinstance(out_sizes, Sequence) or isinstance(out_sizes, str):
        raise TypeError(f"out_sizes must be a sequence of (h, w) pairs, got {out_sizes!r}")
    spatial = logits[:, 0]  # a (B, H, W) view for the size checks, no copy
    return tuple(check_size(size, spatial, f"out_sizes[{i}]") for i, size in enumerate(out_sizes))


def confidence_select(logits: Tensor, rho: float, *, out_sizes: Sequence[Sequence[int]] = ()) -> Selection:
    """Keep, per image and class, the ceil(rho * N) most confident pixels of that predicted class.

    A pixel's label is its argmax class and its confidence the max softmax probability (accumulated in float64,
    rounded to float32: see :func:`ssfdan_ext.reference.softmax_confidence`). Pixels tied with the threshold
    are all kept. ``rho = 0`` keeps nothing and ``rho = 1`` keeps every pixel. For each ``(h, w)`` in
    ``out_sizes`` the kept labels are also mode-downsampled (docs/semantics.md section 2) and returned in
    ``Selection.downsampled``, e.g. ``out_sizes=((h, w), disc.output_size(h, w))`` for
    :class:`SeparatedDiscriminator`'s ``label_maps``. One compiled kernel (CPU or CUDA) computes everything
    without per-class host synchronisation; without the compiled extension the reference loops run instead.
    Outputs carry no gradient and the op keeps no reference to the logits.

    Shapes:
        logits: (B, C, H, W), float32, float16 or bfloat16 (float64 is rounded to float32 first), finite.
        out_sizes: pairs (h, w) with 1 <= h <= H, 1 <= w <= W.
        returns: :class:`Selection` with labels/confidence (B, H, W), counts/conf_sums/tau (B, C) and
            downsampled = one (B, h, w) int64 map per size.

    Raises:
        TypeError: logits is not a floating-point tensor, rho is not a number, or out_sizes is not pairs of ints.
        ValueError: wrong rank, an empty batch or map (B, H or W = 0), C outside [1, 255], rho outside [0, 1], a
            size out of range, or NaN/Inf logits.
    """
    check_tensor(logits, "logits", 4, "(B, C, H, W)")
    check_floating(logits, "logits")
    check_num_classes(logits.shape[1], "logits.shape[1] (number of classes)")
    check_nonempty(logits, "logits", "(B, C, H, W)")
    rho = check_rho(rho)
    sizes = check_out_sizes(out_sizes, logits)
    logits = logits.detach()
    if logits.dtype not in _KERNEL_DTYPES:
        logits = logits.float()  # float64 beyond float32's range becomes inf and is rejected, as in the reference
    if use_reference("confidence_select", logits.device):
        return reference.confidence_select(logits, rho, out_sizes=sizes)
    flat = [v for size in sizes for v in size]
    labels, confidence, counts, conf_sums, tau, _thr, downsampled = torch.ops.ssfdan_ext.confidence_select(
        logits, rho, flat)
    return Selection(labels, confidence, counts, conf_sums, tau, tuple(downsampled))


if has_compiled_ops():

    @torch.library.register_fake("ssfdan_ext::confidence_select")
    def _(logits: Tensor, rho: float, out_sizes: list[int]):
        torch._check(logits.dim() == 4, lambda: "logits must be (B, C, H, W)")
        B, C, H, W = logits.shape
        maps = logits.new_empty((B, H, W), dtype=torch.int64)
        stats = logits.new_empty((B, C), dtype=torch.float32)
        downsampled = [logits.new_empty((B, out_sizes[i], out_sizes[i + 1]), dtype=torch.int64)
                       for i in range(0, len(out_sizes), 2)]
        return (maps, logits.new_empty((B, H, W), dtype=torch.float32), logits.new_empty((B, C), dtype=torch.int64),
                stats, stats.clone(), stats.clone(), downsampled)

    def _setup_context(ctx, inputs, output) -> None:
        # Selections are decisions, not functions of the logits with a useful derivative; saving nothing
        # also means the op never keeps the logits alive.
        labels, confidence, counts, conf_sums, tau, thr, downsampled = output
        ctx.mark_non_differentiable(labels, confidence, counts, conf_sums, tau, thr, *downsampled)

    def _backward(ctx, *grads):
        return None, None, None

    torch.library.register_autograd("ssfdan_ext::confidence_select", _backward, setup_context=_setup_context)
