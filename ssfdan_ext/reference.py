"""The SPEC in plain PyTorch: the truth every kernel is compared with, written as naive per-class loops.

Nothing here is fused or clever on purpose: each function follows the SPEC section it names, step by step.
Shapes use the SPEC's notation: B batch, C classes, n feature channels, (h, w) feature size, (H, W) label size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_finite, check_floating, check_labels, check_nonempty, check_num_classes
from ._checks import check_rho, check_size, check_tensor
from .geometry import PADDINGS, output_size
from .types import IGNORE, DiscriminatorOutput, Selection



# --- SPEC section 1: progressive confidence selection -------------------------------------------------------

def softmax_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel (confidence, label): the max and argmax of the softmax over classes.

    ``label`` is the first index of the largest logit (the class of the largest probability; ties go to the
    lowest index, as ``torch.argmax``). ``confidence = 1 / sum_c exp(x_c - max_c x_c)`` is accumulated in
    float64 from the float32 logits and rounded once to float32 **(choice)**: the thresholds of SPEC 1.3 compare
    confidences exactly, and a float32 softmax rounds differently with every summation order and exp
    implementation (vectorised CPU, C++ loop, CUDA), so kernels could disagree about ties and thresholds.
    Rounding one float64 value makes every backend produce the same float32 bits (last-bit differences of
    float64 exp almost never survive the rounding), while still being the float32 max probability to within
    half an ulp.

    Shapes: logits (B, C, H, W) -> confidence (B, H, W) float32, label (B, H, W) int64.
    """
    x = logits.float()
    top = x.amax(dim=1, keepdim=True)
    label = x.argmax(dim=1)  # ties: the lowest class index
    total = torch.exp(x.double() - top.double()).sum(dim=1)
    return (1.0 / total).float(), label


def keep_count(rho: float, n: int) -> int:
    """K = ceil(rho * N) in float64, clamped to [0, N]."""
    return min(max(math.ceil(rho * n), 0), n)


def class_thresholds(confidence: Tensor, label: Tensor, rho: float, num_classes: int) -> Tensor:
    """thr[b, c] = the K-th largest confidence among the pixels labelled c (SPEC 1.3); +inf when K = 0.

    Shapes: confidence, label (B, H, W) -> (B, C) float32.
    """
    B = confidence.shape[0]
    thr = torch.full((B, num_classes), math.inf, dtype=torch.float32, device=confidence.device)
    for b in range(B):
        for c in range(num_classes):
            values = confidence[b][label[b] == c]
            k = keep_count(rho, values.numel())
            if k > 0:
                thr[b, c] = torch.topk(values, k).values[-1]
    return thr


def ca_r_tau(counts: Tensor, conf_sums: Tensor) -> Tensor:
    """Eq. 9: tau = sqrt(counts / conf_sums) where counts > 0, else 0. Shapes: (B, C) -> (B, C) float32."""
    counts64, sums64 = counts.double(), conf_sums.double()
    safe = torch.where(counts64 > 0, sums64, torch.ones_like(sums64))
    return torch.where(counts64 > 0, torch.sqrt(counts64 / safe), torch.zeros_like(sums64)).float()


def confidence_select(logits: Tensor, rho: float, *, out_sizes: Sequence[Sequence[int]] = ()) -> Selection:
    """SPEC section 1: per image and class, keep the top-rho most confident pixels (ties at the threshold kept).

    ``out_sizes``: for each (h, w), ``Selection.downsampled`` holds ``mode_downsample(labels, (h, w), C)``.

    Shapes: logits (B, C, H, W) -> Selection with (B, H, W) maps, (B, C) statistics and (B, h, w) maps.
    """
    check_tensor(logits, "logits", 4, "(B, C, H, W)")
    check_floating(logits, "logits")
    check_num_classes(logits.shape[1], "logits.shape[1] (number of classes)")
    check_nonempty(logits, "logits", "(B, C, H, W)")
    rho = check_rho(rho)
    logits = logits.float()
    check_finite(logits, "logits")  # after the cast: float64 logits beyond float32's range become inf
    B, C = logits.shape[:2]
    confidence, label = softmax_confidence(logits)
    thr = class_thresholds(confidence, label, rho, C)
    keep = confidence >= thr.gather(1, label.flatten(1)).view_as(label)  # +inf threshold keeps nothing
    counts = torch.zeros(B, C, dtype=torch.int64, device=logits.device)
    conf_sums = torch.zeros(B, C, dtype=torch.float64, device=logits.device)
    for b in range(B):
        for c in range(C):
            kept = keep[b] & (label[b] == c)
            counts[b, c] = kept.sum()
            conf_sums[b, c] = confidence[b][kept].double().sum()
    labels = torch.where(keep, label, torch.full_like(label, IGNORE))
    return Selection(
        labels=labels,
        confidence=torch.where(keep, confidence, torch.zeros_like(confidence)),
        counts=counts,
        conf_sums=conf_sums.float(),
        tau=ca_r_tau(counts, conf_sums),
        downsampled=tuple(mode_downsample(labels, tuple(size), C) for size in out_sizes),
    )


# --- SPEC section 2: mode downsampling -----------------------------------------------------------------------

def mode_downsample(labels: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """SPEC section 2: each output cell takes the most frequent labelled class of its adaptive-pooling bin.

    Shapes: labels (B, H, W) int64 -> (B, h, w) int64; IGNORE where a bin holds no labelled pixel.
    """
    num_classes = check_num_classes(num_classes)
    labels = check_labels(labels, "labels", num_classes)
    check_nonempty(labels, "labels", "(B, H, W)")
    h, w = check_size(size, labels)
    out = torch.full((labels.shape[0], h, w), IGNORE, dtype=torch.int64, device=labels.device)
    best = torch.zeros(out.shape, dtype=torch.float64, device=labels.device)
    for c in range(num_classes):
        # Every class shares the bin's area, so comparing bin means compares pixel counts exactly.
        share = F.adaptive_avg_pool2d((labels == c).double().unsqueeze(1), (h, w)).squeeze(1)
        better = share > best  # strict: ties keep the lowest class index
        out[better] = c
        best = torch.where(better, share, best)
    return out


# --- SPEC section 3: the Semantic-wise Separable Discriminator ------------------------------------------------

def ssd_forward(
    features: Tensor,
    labels: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor],
    strides: Sequence[int],
    num_classes: int,
    negative_slope: float = 0.2,
    label_maps: tuple[Tensor, Tensor] | None = None,
) -> DiscriminatorOutput:
    """SPEC section 3 as a loop over classes: separate, run class c's own stack, select per output cell.

    ``weights[l]`` (C*out_l, in_l, k_l, k_l) and ``biases[l]`` (C*out_l,) follow the canonical layout: class c
    owns rows [c*out_l, (c+1)*out_l). ``label_maps``, when given, are (lf, lo) of step 1, already downsampled.

    Shapes: features (B, n, h, w), labels (B, H, W) with H >= h, W >= w -> logits (B, 1, h', w'), labels (B, h', w').
    """
    C = num_classes
    h, w = features.shape[-2:]
    if label_maps is None:
        label_maps = (mode_downsample(labels, (h, w), C), mode_downsample(labels, output_size(h, w, strides), C))
    lf, lo = label_maps
    logits = None
    for c in range(C):
        # Selection, not multiplication by the mask (SPEC 3.2): 0 * NaN would put a non-finite feature everywhere.
        x = torch.where((lf == c).unsqueeze(1), features, features.new_zeros(()))
        for layer, (weight, bias, stride, padding) in enumerate(zip(weights, biases, strides, PADDINGS)):
            rows = weight.shape[0] // C
            x = F.conv2d(x, weight[c * rows:(c + 1) * rows], bias[c * rows:(c + 1) * rows], stride, padding)
            if layer < len(weights) - 1:
                x = F.leaky_relu(x, negative_slope)
        logits = torch.zeros_like(x) if logits is None else logits
        logits = torch.where((lo == c).unsqueeze(1), x, logits)
    return DiscriminatorOutput(logits, lo)


# --- SPEC sections 4 and 5: CA-R weights and losses ----------------------------------------------------------

def car_weights(tau: Tensor | None, labels: Tensor) -> Tensor:
    """R[b, q] = tau[b, labels[b, q]] on labelled cells, 0 on IGNORE cells; without tau, R = 1 on labelled cells.

    Shapes: tau (B, C) or None, labels (B, h', w') -> (B, h', w') float32.
    """
    weights = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    if tau is None:
        return torch.where(labels != IGNORE, 1.0, weights)
    for c in range(tau.shape[1]):
        weights = torch.where(labels == c, tau[:, c].float().view(-1, 1, 1), weights)
    return weights


def weighted_bce(output: DiscriminatorOutput, target: float, weights: Tensor) -> Tensor:
    """sum_q R[q] * BCEWithLogits(logit[q], target) / max(1, #labelled cells), over the whole batch."""
    logits = output.logits.squeeze(1)
    per_cell = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)), reduction="none")
    labelled = (output.labels != IGNORE).sum().clamp(min=1)
    return (weights.to(per_cell.dtype) * per_cell).sum() / labelled


def adversarial_loss(target_output: DiscriminatorOutput, tau: Tensor | None = None) -> Tensor:
    """Eq. 4: the generator wants target cells classified as source (domain label 0)."""
    return weighted_bce(target_output, 0.0, car_weights(tau, target_output.labels))


def domain_loss(output: DiscriminatorOutput, domain: int, tau: Tensor | None = None) -> Tensor:
    """One domain's half of eq. 5: ``0.5 * weighted BCE(output, domain)``; the source half (domain 0) plus the
    target half (domain 1) is :func:`discriminator_loss`."""
    return 0.5 * weighted_bce(output, float(domain), car_weights(tau, output.labels))


def discriminator_loss(source_output: DiscriminatorOutput, target_output: DiscriminatorOutput,
                       tau: Tensor | None = None) -> Tensor:
    """Eq. 5: source cells are domain 0, target cells domain 1; the target tau weights both sides."""
    source = weighted_bce(source_output, 0.0, car_weights(tau, source_output.labels))
    target = weighted_bce(target_output, 1.0, car_weights(tau, target_output.labels))
    return 0.5 * (source + target)
