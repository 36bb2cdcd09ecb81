"""Adversarial losses of SSF-DAN with CA-R weighting (docs/semantics.md sections 4 and 5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import MAX_CLASSES, check_floating, check_labels, check_nonempty, check_same_device, check_tensor
from .types import IGNORE, DiscriminatorOutput


def _check_output(output: object, name: str) -> DiscriminatorOutput:
    if not isinstance(output, tuple) or len(output) != 2 or not all(isinstance(t, Tensor) for t in output):
        raise TypeError(f"{name} must be a DiscriminatorOutput(logits, labels), got {type(output).__name__}")
    logits, labels = output
    check_tensor(logits, f"{name}.logits", 4, "(B, 1, h', w')")
    check_tensor(labels, f"{name}.labels", 3, "(B, h', w')")
    check_floating(logits, f"{name}.logits")
    check_nonempty(logits, f"{name}.logits", "(B, 1, h', w')")
    if logits.shape[1] != 1 or logits.shape[0] != labels.shape[0] or logits.shape[2:] != labels.shape[1:]:
        raise ValueError(f"{name}.logits {tuple(logits.shape)} must be (B, 1, h', w') for labels "
                         f"{tuple(labels.shape)}")
    check_same_device(**{f"{name}.logits": logits, f"{name}.labels": labels})
    return DiscriminatorOutput(logits, labels)


def _check_labels_and_tau(output: DiscriminatorOutput, name: str, tau: Tensor | None) -> None:
    """int64 labels in [0, C) or IGNORE, with C = tau's width (or 255 without tau), before any gather runs."""
    if tau is not None:
        check_tensor(tau, "tau", 2, "(B, C)")
        check_floating(tau, "tau")
        if tau.shape[0] != output.logits.shape[0]:
            raise ValueError(f"tau must have one row per image ({output.logits.shape[0]}), got {tuple(tau.shape)}")
        check_same_device(tau=tau, **{f"{name}.labels": output.labels})
    check_labels(output.labels, f"{name}.labels", tau.shape[1] if tau is not None else MAX_CLASSES)


def _weighted_bce(output: DiscriminatorOutput, target: float, tau: Tensor | None) -> Tensor:
    """sum over labelled cells of R * BCE(logit, target) / max(1, #labelled cells), R = tau of the cell's class
    (1 without tau): the weighted BCE of paper eqs. 4-5 with CA-R (docs: semantics, losses)."""
    logits, labels = output.logits.squeeze(1), output.labels
    labelled = labels != IGNORE
    if tau is None:
        weights = labelled.to(logits.dtype)
    else:
        picked = tau.to(logits.dtype).gather(1, labels.masked_fill(~labelled, 0).flatten(1)).view_as(labels)
        weights = picked * labelled
    total = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), weight=weights,
                                               reduction="sum")
    return total / labelled.sum().clamp(min=1)


def adversarial_loss(target_output: DiscriminatorOutput, tau: Tensor | None = None) -> Tensor:
    """Generator loss on target features: weighted BCE of the SS-D logits against the source label 0.

    ``tau`` (the target selection's CA-R weights) weights each output cell by its class; without it every
    labelled cell weighs 1. The sum is divided by the number of labelled cells (at least 1).

    Shapes: target_output.logits (B, 1, h', w'), target_output.labels (B, h', w'), tau (B, C) -> scalar.
    """
    target_output = _check_output(target_output, "target_output")
    _check_labels_and_tau(target_output, "target_output", tau)
    return _weighted_bce(target_output, 0.0, tau)


def discriminator_loss(source_output: DiscriminatorOutput, target_output: DiscriminatorOutput,
                       tau: Tensor | None = None) -> Tensor:
    """Discriminator loss: 0.5 * (BCE(source, 0) + BCE(target, 1)), both weighted by the target's tau.

    Row b of ``tau`` weights source image b and target image b. Compute the outputs on detached features.

    Shapes: *_output.logits (B, 1, h', w'), *_output.labels (B, h', w'), tau (B, C) -> scalar.
    """
    source_output = _check_output(source_output, "source_output")
    target_output = _check_output(target_output, "target_output")
    if source_output.logits.shape[0] != target_output.logits.shape[0]:
        raise ValueError(f"source_output and target_output must have the same batch size, got "
                         f"{source_output.logits.shape[0]} and {target_output.logits.shape[0]}")
    check_same_device(source_output=source_output.logits, target_output=target_output.logits)
    _check_labels_and_tau(source_output, "source_output", tau)
    _check_labels_and_tau(target_output, "target_output", tau)
    return 0.5 * (_weighted_bce(source_output, 0.0, tau) + _weighted_bce(target_output, 1.0, tau))


def domain_loss(output: DiscriminatorOutput, domain: int, tau: Tensor | None = None) -> Tensor:
    """One domain's half of :func:`discriminator_loss`: ``0.5 * BCE(output, domain)`` weighted by ``tau``.

    ``domain`` is 0 for source features and 1 for target features; ``tau`` is the target selection's CA-R
    weights for both halves, and each half is divided by its own number of labelled cells, exactly as inside
    :func:`discriminator_loss`, so ``domain_loss(source, 0, tau) + domain_loss(target, 1, tau)`` equals
    ``discriminator_loss(source, target, tau)``. Backpropagating each half right after its own forward keeps only
    one discriminator graph alive at a time (AdaptSegNet's order), which lowers peak memory.

    Shapes: output.logits (B, 1, h', w'), output.labels (B, h', w'), tau (B, C) -> scalar.
    """
    output = _check_output(output, "output")
    if isinstance(domain, bool) or domain not in (0, 1):
        raise ValueError(f"domain must be 0 (source) or 1 (target), got {domain!r}")
    _check_labels_and_tau(output, "output", tau)
    return 0.5 * _weighted_bce(output, float(domain), tau)
