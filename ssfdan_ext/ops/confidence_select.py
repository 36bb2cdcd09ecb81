"""confidence_select (SPEC sections 1 and 4): pseudo labels by the progressive confidence strategy."""
from __future__ import annotations

from torch import Tensor

from .. import reference
from ..types import Selection


def confidence_select(logits: Tensor, rho: float) -> Selection:
    """Keep, per image and class, the ceil(rho * N) most confident pixels of that predicted class.

    ``prob = softmax(logits)`` in float32; a pixel's label is its argmax class and its confidence the max
    probability. Pixels tied with the threshold are all kept. ``rho = 0`` keeps nothing and ``rho = 1`` keeps
    every pixel. Outputs carry no gradient. Computed by the per-class PyTorch implementation in
    :mod:`ssfdan_ext.reference`.

    Shapes:
        logits: (B, C, H, W), float32, float16 or bfloat16, finite.
        returns: :class:`Selection` with labels/confidence (B, H, W) and counts/conf_sums/tau (B, C).

    Raises:
        TypeError: logits is not a floating-point tensor, or rho is not a number.
        ValueError: wrong rank, C outside [1, 255], rho outside [0, 1], or NaN/Inf logits.
    """
    return reference.confidence_select(logits.detach() if isinstance(logits, Tensor) else logits, rho)
