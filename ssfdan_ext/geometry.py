"""The SS-D's layer geometry: kernel sizes, paddings and the map size after each layer, in one place.

Every discriminator of the package (the SS-D and the baselines) has five layers: a 1x1 convolution, then four 3x3
convolutions with padding 1; the strides are the discriminator's own.
"""
from __future__ import annotations

from collections.abc import Sequence

KERNELS = (1, 3, 3, 3, 3)
PADDINGS = (0, 1, 1, 1, 1)


def layer_sizes(h: int, w: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """The (h_l, w_l) map size after each of the five layers for an (h, w) input.

    Shapes: n/a (sizes).
    """
    sizes = []
    for k, s, p in zip(KERNELS, strides, PADDINGS):
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        sizes.append((h, w))
    return sizes


def output_size(h: int, w: int, strides: Sequence[int]) -> tuple[int, int]:
    """(h', w'), the logit map size after the five layers.

    Shapes: n/a (sizes).
    """
    return layer_sizes(h, w, strides)[-1]
