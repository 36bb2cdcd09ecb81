"""The semantics of docs/semantics.md in plain PyTorch: the truth every kernel is compared with, written as naive
per-class loops.

Nothing here is fused or clever on purpose: each function follows the docs/semantics.md section it names, step by step.
Shapes use the notation of docs/semantics.md: B batch, C classes, n feature channels, (h, w) feature size, (H, W) label
size.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_finite, check_floating, check_labels, check_nonempty, check_num_classes
from ._checks import check_rho, check_size, check_tensor
from .geometry import PADDINGS, layer_sizes, output_size
from .types import IGNORE, DiscriminatorOutput, Selection



# --- docs/semantics.md section 1: progressive confidence selection ----------------------------------------------------

def softmax_confidence(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel (confidence, label): the max and argmax of the softmax over classes.

    ``label`` is the first index of the largest logit (the class of the largest probability; ties go to the
    lowest index, as ``torch.argmax``). ``confidence = 1 / sum_c exp(x_c - max_c x_c)`` is accumulated in
    float64 from the float32 logits and rounded once to float32 **(choice)**: the thresholds of docs/semantics.md
    section 1.3 compare confidences exactly, and a float32 softmax rounds differently with every summation order and exp
    implementation (vectorised CPU, C++ loop, CUDA), so kernels could disagree about ties and thresholds. Rounding one
    float64 value makes every backend produce the same float32 bits (last-bit differences of float64 exp almost never
    survive the rounding), while still being the float32 max probability to within half an ulp.

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
    """thr[b, c] = the K-th largest confidence among the pixels labelled c (docs/semantics.md section 1.3); +inf
    when K = 0.

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
    """docs/semantics.md section 1: per image and class, keep the top-rho most confident pixels (ties at the threshold
    kept).

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


# --- docs/semantics.md section 2: mode downsampling -------------------------------------------------------------------

def mode_downsample(labels: Tensor, size: Sequence[int], num_classes: int) -> Tensor:
    """docs/semantics.md section 2: each output cell takes the most frequent labelled class of its adaptive-pooling bin.

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


# --- docs/semantics.md section 3: the Semantic-wise Separable Discriminator -------------------------------------------

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
    """docs/semantics.md section 3 as a loop over classes: separate, run class c's own stack, select per output cell.

    ``weights[l]`` (C*out_l, in_l, k_l, k_l) and ``biases[l]`` (C*out_l,) follow the canonical layout: class c
    owns rows [c*out_l, (c+1)*out_l). ``label_maps``, when given, are (lf, lo) of step 1, already downsampled.

    Shapes: features (B, n, h, w), labels (B, H, W) with H >= h, W >= w -> logits (B, 1, h', w'), labels (B, h', w').
    """
    C = num_classes
    h, w = features.shape[-2:]
    if label_maps is None:
        label_maps = (mode_downsample(labels, (h, w), C), mode_downsample(labels, output_size(h, w, strides), C))
    lf, lo = label_maps
    # Class c's stack as views of the canonical parameters. One split per tensor, not a slice per class: autograd
    # then assembles each parameter's gradient once, where C slices would each fill a full-size zero gradient.
    stacks = list(zip(*(w.chunk(C) for w in weights)))
    bias_stacks = list(zip(*(b.chunk(C) for b in biases)))
    logits = None
    for c in range(C):
        # Selection, not multiplication by the mask (docs/semantics.md section 3.2): 0 * NaN would put a non-finite
        # feature everywhere.
        x = torch.where((lf == c).unsqueeze(1), features, features.new_zeros(()))
        for layer, (weight, bias, stride, padding) in enumerate(zip(stacks[c], bias_stacks[c], strides, PADDINGS)):
            x = F.conv2d(x, weight, bias, stride, padding)
            if layer < len(weights) - 1:
                x = F.leaky_relu(x, negative_slope)
        logits = torch.zeros_like(x) if logits is None else logits
        logits = torch.where((lo == c).unsqueeze(1), x, logits)
    return DiscriminatorOutput(logits, lo)


# --- The fused backend's ops, one naive definition each ------------------------------------------------------

def routed_conv1x1(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor,
                   num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Separation + layer 1 for the class cells only: cells sorted by class (stable, IGNORE last), row r holding
    ``W_c F(cell) + b_c`` for a cell of class c and 0 for an IGNORE cell.

    Shapes: features (B, n, h, w), labels (B, h, w), weight (C*m, n, 1, 1), bias (C*m,) -> rows (B*h*w, m),
    order (B*h*w,) the flat cell of each row, offsets (C+1,) the first row of each class.
    """
    C = num_classes
    B, n, h, w = features.shape
    m = weight.shape[0] // C
    flat = labels.reshape(-1)
    cells = features.permute(0, 2, 3, 1).reshape(-1, n)
    order, pieces, offsets = [], [], [0]
    for c in range(C + 1):  # class C stands for IGNORE, sorted last
        idx = torch.nonzero(flat == (c if c < C else IGNORE)).view(-1)
        order.append(idx)
        if c < C:
            pieces.append(cells[idx] @ weight[c * m:(c + 1) * m].view(m, n).t() + bias[c * m:(c + 1) * m])
            offsets.append(offsets[-1] + idx.numel())
        else:
            pieces.append(cells.new_zeros((idx.numel(), m)))
    return (torch.cat(pieces), torch.cat(order), torch.tensor(offsets, dtype=torch.int64, device=labels.device))


_TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def _explicit_sets(lf: Tensor, lo: Tensor, C: int, strides: Sequence[int]) -> tuple[list[set], list]:
    """E_l = A_l ∩ N_l for layers 1-5 as sets of (class, image, y, x), one cell at a time (docs: fused backend).

    A_1: the class-c cells; A_l: the cells whose 3x3 footprint touches A_{l-1} or the zero padding. N_5: the output
    cells labelled c; N_l: the cells inside the footprint of a cell of N_{l+1}.
    """
    B, h, w = lf.shape
    sizes = layer_sizes(h, w, (1, *strides))  # layers 1-5: the input grid of layers 2-5, then the output grid
    active = [{(int(lf[b, y, x]), b, y, x) for b in range(B) for y in range(h) for x in range(w)
               if lf[b, y, x] != IGNORE}]
    for s, (ph, pw), (oh, ow) in zip(strides, sizes, sizes[1:]):
        prev = active[-1]
        active.append({(c, b, y, x) for c in range(C) for b in range(B) for y in range(oh) for x in range(ow)
                       if any(not (0 <= s * y + dy < ph and 0 <= s * x + dx < pw) or (c, b, s * y + dy, s * x + dx)
                              in prev for dy, dx in _TAPS)})
    needed = [{(int(lo[b, y, x]), b, y, x) for b in range(B) for y in range(sizes[4][0]) for x in range(sizes[4][1])
               if lo[b, y, x] != IGNORE}]
    for s, (ph, pw) in zip(reversed(strides), reversed(sizes[:-1])):
        needed.insert(0, {(c, b, s * y + dy, s * x + dx) for c, b, y, x in needed[0] for dy, dx in _TAPS
                          if 0 <= s * y + dy < ph and 0 <= s * x + dx < pw})
    return [a & n for a, n in zip(active, needed)], sizes


def sparse_ssd_rulebook(lf: Tensor, lo: Tensor, num_classes: int, strides: Sequence[int]):
    """The fused backend's rulebook built set by set: (lf_masked, taps, offsets, out_index) as
    :class:`ssfdan_ext.ops.Rulebook` holds them. ``strides`` are those of layers 2-5. Slow (Python sets): small maps.

    Shapes: lf (B, h, w), lo (B, h', w') -> lf_masked (B, h, w), four (P_l, 9) taps, four (C+1,) offsets,
    out_index (B*h'*w',).
    """
    C = num_classes
    B, h, w = lf.shape
    explicit, sizes = _explicit_sets(lf.cpu(), lo.cpu(), C, strides)
    lf_masked = lf.cpu().clone()
    for b in range(B):
        for y in range(h):
            for x in range(w):
                if (int(lf_masked[b, y, x]), b, y, x) not in explicit[0]:
                    lf_masked[b, y, x] = IGNORE
    # Layer 1's rows: cells sorted by class (stable), IGNORE last, as routed_conv1x1 sorts them.
    flat = lf_masked.view(-1)
    keys = sorted(range(B * h * w), key=lambda i: (min(int(flat[i]), C), i))
    rows = {(int(flat[i]), i // (h * w), i % (h * w) // w, i % w): r for r, i in enumerate(keys)}
    num_rows = B * h * w
    taps, offsets = [], []
    for layer, s in enumerate(strides, start=1):
        ph, pw = sizes[layer - 1]
        pairs = sorted(explicit[layer])
        taps.append(torch.tensor([[rows.get((c, b, s * y + dy, s * x + dx), num_rows + c)
                                   if 0 <= s * y + dy < ph and 0 <= s * x + dx < pw else num_rows + C
                                   for dy, dx in _TAPS] for c, b, y, x in pairs], dtype=torch.int64).view(-1, 9))
        offsets.append(torch.tensor([sum(p[0] < c for p in pairs) for c in range(C + 1)], dtype=torch.int64))
        rows = {p: r for r, p in enumerate(pairs)}
        num_rows = len(pairs)
    out_index = torch.tensor([C + num_rows if lo[b, y, x] == IGNORE else
                              rows.get((int(lo[b, y, x]), b, y, x), num_rows + int(lo[b, y, x]))
                              for b in range(B) for y in range(sizes[4][0]) for x in range(sizes[4][1])],
                             dtype=torch.int64)
    dev = lf.device
    return (lf_masked.to(dev), tuple(t.to(dev) for t in taps), tuple(o.to(dev) for o in offsets), out_index.to(dev))


def sparse_conv3x3(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """One SS-D 3x3 layer on explicit pairs, pair by pair: ``out[p] = b_c + sum_t W_c[:, :, t] table[taps[p, t]]``.

    Shapes: table (T, m_in), taps (P, 9), offsets (C+1,), weight (C*m_out, m_in, 3, 3), bias (C*m_out,)
    -> (P, m_out).
    """
    C = offsets.numel() - 1
    mo = weight.shape[0] // C
    out = []
    for c in range(C):
        w_c = weight[c * mo:(c + 1) * mo].reshape(mo, -1, 9)  # (m_out, m_in, tap)
        for p in range(int(offsets[c]), int(offsets[c + 1])):
            gathered = table[taps[p]]  # (9, m_in)
            out.append(bias[c * mo:(c + 1) * mo] + torch.einsum("oit,ti->o", w_c, gathered))
    return torch.stack(out) if out else table.new_zeros((0, mo))


# --- docs/semantics.md sections 4 and 5: CA-R weights and losses ------------------------------------------------------

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
