"""Result types shared by the reference, the public ops and the discriminator."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

IGNORE = 255
"""Label value meaning "no class", in datasets, pseudo labels and downsampled maps alike."""


class Selection(NamedTuple):
    """Pseudo labels chosen by the progressive confidence strategy.

    Shapes:
        labels: (B, H, W) int64, the argmax class where kept, else IGNORE.
        confidence: (B, H, W) float32, the max softmax probability where kept, else 0.
        counts: (B, C) int64, kept pixels per image and class.
        conf_sums: (B, C) float32, sum of the kept confidences per image and class.
        tau: (B, C) float32, the CA-R weight sqrt(counts / conf_sums), 0 for a class with no kept pixel.
        downsampled: one (B, h, w) int64 map per requested ``out_sizes`` entry, the mode-downsampled ``labels``
            (docs/semantics.md section 2); empty when no size was requested.
    """

    labels: Tensor
    confidence: Tensor
    counts: Tensor
    conf_sums: Tensor
    tau: Tensor
    downsampled: tuple[Tensor, ...] = ()


class DiscriminatorOutput(NamedTuple):
    """What a class-wise discriminator returns: a pair, not a tensor.

    Code written for a discriminator that returns a logit tensor (``D(x).data``, ``bce(D(x), label)``) needs the
    losses instead: :func:`~ssfdan_ext.adversarial_loss`, :func:`~ssfdan_ext.discriminator_loss` or, one domain
    at a time, :func:`~ssfdan_ext.domain_loss`. A plain BCE on ``logits`` would also count the output cells that
    have no class (IGNORE), whose logit is a placeholder 0, and would drop the CA-R weights.

    Shapes:
        logits: (B, 1, h', w'), the domain logit of each output cell (0 on IGNORE cells).
        labels: (B, h', w') int64, the output-resolution class of each cell (IGNORE where none).
    """

    logits: Tensor
    labels: Tensor

    def __getattr__(self, name: str):
        # Only reached for names a NamedTuple lacks, e.g. the tensor attributes of a tensor-returning discriminator.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"'DiscriminatorOutput' object has no attribute {name!r}: it is the pair (logits, labels), not a tensor. "
            "Use ssfdan_ext.adversarial_loss / discriminator_loss / domain_loss on it (a plain BCE on .logits would "
            "count the output cells without a class), or .logits for the (B, 1, h', w') tensor itself")
