"""Baseline discriminators of the ablation table (docs/semantics.md section 6): a global one and class-wise soft ones.

``GlobalDiscriminator`` has the SS-D layer shapes with a single class and sees the whole feature map; its
output carries class 0 on every cell, so :func:`ssfdan_ext.adversarial_loss` and
:func:`ssfdan_ext.discriminator_loss` without ``tau`` give the unweighted mean BCE over all cells.

``SoftDiscriminator`` holds C discriminators that all see the *unseparated* features (the class-wise
adversarial baseline of Chen et al., 2017): class c's loss at output cell q is weighted by the fraction of
class-c pixels of a label map (the unfiltered prediction) inside q's bin (:func:`soft_class_weights`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import KERNELS, PADDINGS, output_size
from .._checks import as_finite_float, check_floating, check_labels, check_layer_shapes, check_nonempty
from .._checks import check_num_classes, check_tensor
from ..types import IGNORE, DiscriminatorOutput


def _check_features(features: object, in_channels: int, weight: Tensor) -> Tensor:
    features = check_tensor(features, "features", 4, "(B, n, h, w)")
    check_floating(features, "features")
    if features.shape[1] != in_channels:
        raise ValueError(f"features must have in_channels={in_channels} channels, got shape {tuple(features.shape)}")
    check_nonempty(features, "features", "(B, n, h, w)")
    if features.device != weight.device:
        raise ValueError(f"features are on {features.device}, the discriminator on {weight.device}")
    return features


class GlobalDiscriminator(nn.Module):
    """One FCN discriminator (kernels 1, 3, 3, 3, 3) on the whole feature map: the "global" baseline.

    Its parameters have the state-dict layout of ``SeparatedDiscriminator(num_classes=1, ...)``.

    Shapes: features (B, n, h, w) -> DiscriminatorOutput(logits (B, 1, h', w'), labels (B, h', w') all 0).
    """

    def __init__(self, in_channels: int = 2048, channels: Sequence[int] = (1024, 512, 256, 128),
                 strides: Sequence[int] = (1, 2, 2, 2, 2), negative_slope: float = 0.2) -> None:
        super().__init__()
        widths, strides = check_layer_shapes(in_channels, channels, strides)
        self.in_channels, self.channels, self.strides = widths[0], tuple(widths[1:5]), strides
        self.negative_slope = as_finite_float(negative_slope, "negative_slope")
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, k, stride=s, padding=p)
            for cin, cout, k, s, p in zip(widths[:-1], widths[1:], KERNELS, strides, PADDINGS))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h', w'): the logit map size for an (h, w) feature map."""
        return output_size(h, w, self.strides)

    def forward(self, features: Tensor) -> DiscriminatorOutput:
        """Domain logits of every output cell.

        Shapes: features (B, n, h, w) -> logits (B, 1, h', w'), labels (B, h', w') int64 zeros.
        """
        x = _check_features(features, self.in_channels, self.convs[0].weight)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        labels = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.int64, device=x.device)
        return DiscriminatorOutput(x, labels)


class SoftDiscriminator(nn.Module):
    """C class-wise discriminators on the unseparated features, as grouped convolutions.

    Layer 1 maps the shared features to C groups of ``channels[0]`` (each class its own 1x1 weights); layers
    2-5 are grouped convolutions, so class c's stack only reads its own group.

    Shapes: features (B, n, h, w) -> logits (B, C, h', w'), channel c holding class c's domain logit.
    """

    def __init__(self, num_classes: int, in_channels: int = 2048, channels: Sequence[int] = (1024, 512, 256, 128),
                 strides: Sequence[int] = (1, 2, 2, 2, 2), negative_slope: float = 0.2) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        widths, strides = check_layer_shapes(in_channels, channels, strides)
        self.in_channels, self.channels, self.strides = widths[0], tuple(widths[1:5]), strides
        self.negative_slope = as_finite_float(negative_slope, "negative_slope")
        C = self.num_classes
        layers = [nn.Conv2d(widths[0], C * widths[1], 1)]
        layers += [nn.Conv2d(C * cin, C * cout, k, stride=s, padding=p, groups=C)
                   for cin, cout, k, s, p in zip(widths[1:-1], widths[2:], KERNELS[1:], strides[1:],
                                                 PADDINGS[1:])]
        self.convs = nn.ModuleList(layers)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h', w'): the logit map size for an (h, w) feature map."""
        return output_size(h, w, self.strides)

    def forward(self, features: Tensor) -> Tensor:
        """Per-class domain logits of every output cell.

        Shapes: features (B, n, h, w) -> (B, C, h', w').
        """
        x = _check_features(features, self.in_channels, self.convs[0].weight)
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x


def soft_class_weights(labels: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """Fraction of the labelled pixels of each class inside each output bin (IGNORE pixels left out).

    Bins are those of ``adaptive_avg_pool2d`` (as in mode downsampling); a bin without labelled pixels has all
    weights 0.

    Shapes: labels (B, H, W) int64, size (h, w) -> (B, C, h, w) float32, summing to 1 or 0 over C.
    """
    num_classes = check_num_classes(num_classes)
    labels = check_labels(labels, "labels", num_classes)
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
    h, w = (int(s) for s in size)
    if not (1 <= h <= labels.shape[1] and 1 <= w <= labels.shape[2]):
        raise ValueError(f"size must be within the label size {tuple(labels.shape[1:])}, got {(h, w)}")
    onehot = F.one_hot(torch.where(labels == IGNORE, num_classes, labels), num_classes + 1)[..., :num_classes]
    pooled = F.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), (h, w))
    total = pooled.sum(1, keepdim=True)
    return torch.where(total > 0, pooled / total.clamp(min=1e-12), torch.zeros_like(pooled))


def labelled_cells(weights: Tensor) -> Tensor:
    """How many output cells carry a soft loss (a bin with labelled pixels): the loss's normaliser.

    Shapes: weights (B, C, h, w) -> int64 scalar.
    """
    return (weights.sum(1) > 0).sum()


def _soft_bce(logits: Tensor, weights: Tensor, target: float) -> Tensor:
    if logits.dim() != 4 or logits.shape != weights.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and weights {tuple(weights.shape)} must both be "
                         "(B, C, h', w')")
    per_cell = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")
    return (weights.to(per_cell.dtype) * per_cell).sum() / labelled_cells(weights).clamp(min=1)


def soft_adversarial_loss(target_logits: Tensor, target_weights: Tensor) -> Tensor:
    """Generator loss of the soft baseline: class-weighted BCE of the target cells against the source label 0,
    divided by the number of cells with labelled pixels.

    Shapes: target_logits (B, C, h', w'), target_weights (B, C, h', w') -> scalar.
    """
    return _soft_bce(target_logits, target_weights, 0.0)


def soft_discriminator_loss(source_logits: Tensor, source_weights: Tensor, target_logits: Tensor,
                            target_weights: Tensor) -> Tensor:
    """Discriminator loss of the soft baseline: 0.5 * (BCE(source, 0) + BCE(target, 1)), class-weighted.

    Shapes: all (B, C, h', w') -> scalar.
    """
    return 0.5 * (_soft_bce(source_logits, source_weights, 0.0) + _soft_bce(target_logits, target_weights, 1.0))
