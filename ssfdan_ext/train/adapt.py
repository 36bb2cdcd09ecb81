"""The adversarial part of an iteration for every ablation mode: masks, discriminators and their losses.

Modes (docs/semantics.md section 6): ``none`` (source only), ``global``, ``soft``, ``ssd`` and the sums ``soft+global``,
``ssd+global``. Each loss is returned with the count it was normalised by, so that the driver can make a
multi-process run equal to one process with the whole batch (see :mod:`.distributed`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import IGNORE, adversarial_loss, confidence_select, discriminator_loss, mode_downsample
from ..nn import (GlobalDiscriminator, SeparatedDiscriminator, SSDPlan, SoftDiscriminator, labelled_cells,
                  soft_adversarial_loss, soft_class_weights, soft_discriminator_loss)
from ..geometry import output_size
from ..types import DiscriminatorOutput
from .config import TrainConfig


class Masks(NamedTuple):
    """What the discriminators of one domain need besides the features.

    Shapes: labels (B, H, W) int64 (kept pseudo labels or ground truth); maps ((B, h, w), (B, h', w')) their
    mode downsamplings to the feature and SS-D output sizes; tau (B, C) CA-R weights of the target or None;
    soft (B, C, h', w') class fractions of the unfiltered prediction, or None; kept (B, C) int64 pixels kept per
    image and class by the confidence selection, or None; plan: the SS-D's label-dependent part (downsampled maps
    and rulebook), built once per iteration and used by every SS-D pass on this domain (the discriminator step
    joins the two domains' plans), or None.
    """

    labels: Tensor | None
    maps: tuple[Tensor, Tensor] | None
    tau: Tensor | None
    soft: Tensor | None
    kept: Tensor | None = None
    plan: SSDPlan | None = None


class LossTerm(NamedTuple):
    """A loss and the count (over this process's batch) it was divided by.

    Shapes: loss scalar, count int64 scalar.
    """

    name: str
    loss: Tensor
    count: Tensor


def _negated(output: DiscriminatorOutput) -> DiscriminatorOutput:
    # BCE(x, 1) = BCE(-x, 0): the target half of the discriminator loss through adversarial_loss.
    return DiscriminatorOutput(-output.logits, output.labels)


def _cells(labels: Tensor) -> Tensor:
    return (labels != IGNORE).sum()


class Discriminators(nn.Module):
    """The discriminators of one ablation mode (none for ``adaptation=none``).

    ``forward`` computes the discriminator step's loss terms (detached features); :meth:`generator_terms` the
    adversarial terms of the generator step. Call ``forward`` through DistributedDataParallel and
    :meth:`generator_terms` on the plain module (its parameters are frozen during the generator step).

    Shapes: features (B, n, h, w); masks as :class:`Masks`.
    """

    def __init__(self, cfg: TrainConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        parts = cfg.adaptation.split("+")
        kw = {"in_channels": in_channels, "channels": tuple(cfg.disc_channels), "strides": tuple(cfg.disc_strides)}
        self.ssd = (SeparatedDiscriminator(cfg.num_classes, backend=cfg.disc_backend, **kw)
                    if "ssd" in parts else None)
        self.soft = SoftDiscriminator(cfg.num_classes, **kw) if "soft" in parts else None
        self.glob = GlobalDiscriminator(**kw) if "global" in parts else None
        self.num_classes = cfg.num_classes

    @property
    def active(self) -> bool:
        return any(d is not None for d in (self.ssd, self.soft, self.glob))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return output_size(h, w, tuple(self.cfg.disc_strides))

    @torch.no_grad()
    def target_masks(self, pred: Tensor, rho: float, feature_size: tuple[int, int]) -> tuple[Masks, Tensor]:
        """Pseudo labels of the target by confidence selection (and the soft class fractions).

        Returns the masks and the per-class tau (the Selection's, whether or not CA-R is on) for logging.

        Shapes: pred (B, C, H, W) detached logits at the image size.
        """
        out = self.output_size(*feature_size)
        labels = maps = tau = soft = kept = None
        sel_tau = torch.zeros(pred.shape[0], self.num_classes, device=pred.device)
        if self.ssd is not None:
            sel = confidence_select(pred.float(), rho, out_sizes=(feature_size, out))
            labels, maps, sel_tau, kept = sel.labels, tuple(sel.downsampled), sel.tau, sel.counts
            tau = sel.tau if self.cfg.car else None
        if self.soft is not None:
            soft = soft_class_weights(pred.argmax(1), out, self.num_classes)
        return Masks(labels, maps, tau, soft, kept, self._plan(labels, feature_size, maps)), sel_tau

    def _plan(self, labels: Tensor | None, feature_size: tuple[int, int], maps) -> SSDPlan | None:
        # The generator's pass and the discriminator's pass read the same target labels: one rulebook for both.
        return None if self.ssd is None else self.ssd.plan(labels, feature_size, label_maps=maps)

    @torch.no_grad()
    def source_masks(self, pred: Tensor, ground_truth: Tensor, rho: float, feature_size: tuple[int, int]) -> Masks:
        """Source masks from the source prediction (confidence selection, same rho) or the ground truth.

        Shapes: pred (B, C, H, W) detached logits at the label size, ground_truth (B, H, W).
        """
        out = self.output_size(*feature_size)
        labels = maps = soft = None
        use_truth = self.cfg.source_masks == "ground_truth"
        if self.ssd is not None:
            if use_truth:
                labels = ground_truth
                maps = (mode_downsample(labels, feature_size, self.num_classes),
                        mode_downsample(labels, out, self.num_classes))
            else:
                sel = confidence_select(pred.float(), rho, out_sizes=(feature_size, out))
                labels, maps = sel.labels, tuple(sel.downsampled)
        if self.soft is not None:
            soft = soft_class_weights(ground_truth if use_truth else pred.argmax(1), out, self.num_classes)
        return Masks(labels, maps, None, soft, None, self._plan(labels, feature_size, maps))

    def _ssd(self, features: Tensor, masks: Masks) -> DiscriminatorOutput:
        if masks.plan is not None:
            return self.ssd(features, plan=masks.plan)
        return self.ssd(features, masks.labels, label_maps=masks.maps)

    def _ssd_both(self, feat_s: Tensor, feat_t: Tensor, masks_s: Masks,
                  masks_t: Masks) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
        """The SS-D outputs of both domains: SeparatedDiscriminator.forward_domains on their plans (one forward over
        the two batches; on the fused backend also when their features differ in size)."""
        return self.ssd.forward_domains(feat_s, masks_s.plan, feat_t, masks_t.plan)

    def generator_terms(self, feat_t: Tensor, masks_t: Masks) -> list[LossTerm]:
        """Adversarial losses of the target features (each against the source domain label)."""
        terms = []
        if self.ssd is not None:
            out = self._ssd(feat_t, masks_t)
            terms.append(LossTerm("ssd", adversarial_loss(out, masks_t.tau), _cells(out.labels)))
        if self.soft is not None:
            terms.append(LossTerm("soft", soft_adversarial_loss(self.soft(feat_t), masks_t.soft),
                                  labelled_cells(masks_t.soft)))
        if self.glob is not None:
            out = self.glob(feat_t)
            terms.append(LossTerm("global", adversarial_loss(out), _cells(out.labels)))
        return terms

    def forward(self, feat_s: Tensor, feat_t: Tensor, masks_s: Masks, masks_t: Masks,
                split: bool = False) -> list[LossTerm]:
        """Discriminator losses on (detached) features; the target tau weights both domains.

        ``split=False`` gives each discriminator's loss as one term (``discriminator_loss``);
        ``split=True`` gives the source and target halves (times 0.5) as separate terms with their own counts,
        which a multi-process run needs to normalise each half over the global batch.
        """
        terms = []
        if self.ssd is not None:
            out_s, out_t = self._ssd_both(feat_s, feat_t, masks_s, masks_t)
            if split:
                terms += [LossTerm("ssd_s", 0.5 * adversarial_loss(out_s, masks_t.tau), _cells(out_s.labels)),
                          LossTerm("ssd_t", 0.5 * adversarial_loss(_negated(out_t), masks_t.tau),
                                   _cells(out_t.labels))]
            else:
                terms.append(LossTerm("ssd", discriminator_loss(out_s, out_t, masks_t.tau), _cells(out_t.labels)))
        if self.soft is not None:
            d_s, d_t = self.soft(feat_s), self.soft(feat_t)
            if split:
                terms += [LossTerm("soft_s", 0.5 * soft_adversarial_loss(d_s, masks_s.soft),
                                   labelled_cells(masks_s.soft)),
                          LossTerm("soft_t", 0.5 * soft_adversarial_loss(-d_t, masks_t.soft),
                                   labelled_cells(masks_t.soft))]
            else:
                terms.append(LossTerm("soft", soft_discriminator_loss(d_s, masks_s.soft, d_t, masks_t.soft),
                                      labelled_cells(masks_t.soft)))
        if self.glob is not None:
            out_s, out_t = self.glob(feat_s), self.glob(feat_t)
            if split:
                terms += [LossTerm("global_s", 0.5 * adversarial_loss(out_s), _cells(out_s.labels)),
                          LossTerm("global_t", 0.5 * adversarial_loss(_negated(out_t)), _cells(out_t.labels))]
            else:
                terms.append(LossTerm("global", discriminator_loss(out_s, out_t), _cells(out_t.labels)))
        return terms


def self_training_term(logits: Tensor, labels: Tensor, tau: Tensor | None) -> LossTerm:
    """Self-training on the target's kept pseudo labels (beyond the paper): cross-entropy per kept pixel,
    weighted by the CA-R weight of its pseudo class, summed and divided by the number of kept pixels.

    ``tau=None`` weights every kept pixel by 1. Few confident pixels of a class mean a small tau (paper eq. 3),
    so the weights damp the classes whose pseudo labels the selection trusts least.

    Shapes: logits (B, C, H, W) at the size of labels (B, H, W) (IGNORE where not kept); tau (B, C) or None.
    """
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")  # 0 where IGNORE
    kept = labels != IGNORE
    if tau is not None:
        index = torch.where(kept, labels, torch.zeros_like(labels)).flatten(1)
        ce = ce * tau.to(ce.dtype).gather(1, index).view_as(ce) * kept
    count = kept.sum()
    return LossTerm("self_training", ce.sum() / count.clamp(min=1), count)
