"""SeparatedDiscriminator: the Semantic-wise Separable Discriminator (SS-D) of docs/semantics.md section 3."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference
from ..geometry import KERNELS, PADDINGS, output_size
from .._checks import as_finite_float, check_batch, check_floating, check_labels, check_layer_shapes, check_nonempty
from .._checks import check_num_classes, check_same_device, check_size, check_tensor
from .._ext import has_compiled_ops, triton_available
from ..ops.mode_downsample import mode_downsample
from ..ops.sparse_ssd import sparse_ssd_forward
from ..ops.sparse_ssd_rulebook import Rulebook, _rulebook, concat_rulebooks
from ..types import IGNORE, DiscriminatorOutput

BACKENDS = ("auto", "reference", "grouped", "fused")
# "auto" runs the fused backend whenever the extension is compiled: it computes only the (class, cell) pairs that
# can reach a labelled output cell, a fraction of the dense backends' work (benchmarks/bench_ssd.py).


class SSDPlan(NamedTuple):
    """The label-dependent part of an SS-D forward (:meth:`SeparatedDiscriminator.plan`), reusable by every forward
    on features of the same batch, size and device, as torchsparse reuses its kernel maps.

    Shapes: lf (B, h, w) and lo (B, h', w') int64, the labels mode-downsampled to the feature and output sizes;
    rulebook: the fused backend's explicit pairs (None for the dense backends); feature_size (h, w).
    """

    lf: Tensor
    lo: Tensor
    rulebook: Rulebook | None
    feature_size: tuple[int, int]
    num_classes: int
    strides: tuple[int, ...]


class SeparatedDiscriminator(nn.Module):
    """Class-wise discriminator on semantically separated features (SSF-DAN's SS-D).

    Each class c owns a five-layer FCN (kernels 1, 3, 3, 3, 3; LeakyReLU after layers 1-4) that only sees the
    feature cells whose mode-downsampled label is c; the output cell q reports the logit of the stack of its
    own class (0 where the cell has no class). Parameters use the canonical layout: ``convs[l]`` is a
    ``Conv2d(C*in_l, C*out_l, k_l, groups=C)`` whose rows ``[c*out_l, (c+1)*out_l)`` belong to class c, so
    checkpoints move between backends.

    Args:
        num_classes: C, in [1, 255].
        in_channels: n, the width of the segmenter's feature map.
        channels: widths of layers 1-4 (layer 5 has one output channel).
        strides: strides of the five layers; layer 1 (1x1) must have stride 1, layers 2-5 stride 1 or 2.
        negative_slope: LeakyReLU slope.
        backend: ``"reference"`` (one conv stack per class, a loop), ``"grouped"`` (the separated tensor
            (B, C*n, h, w) through five grouped convolutions), ``"fused"`` (an exact sparse evaluation: separation
            + layer 1 as a routed GEMM, layers 2-5 only on the (class, cell) pairs that differ from their class's
            constant response and reach a labelled output cell; compiled CPU code or Triton GPU kernels) or
            ``"auto"`` (``"fused"`` when the extension is compiled, ``"reference"`` otherwise).
            All backends compute the same function.

    Shapes:
        features: (B, n, h, w) floating point, same dtype and device as the parameters.
        labels: (B, H, W) int64 with H >= h, W >= w; values in [0, C) or 255 (IGNORE).
        returns: :class:`DiscriminatorOutput` with logits (B, 1, h', w') and labels (B, h', w').
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 2048,
        channels: Sequence[int] = (1024, 512, 256, 128),
        strides: Sequence[int] = (1, 2, 2, 2, 2),
        negative_slope: float = 0.2,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        widths, strides = check_layer_shapes(in_channels, channels, strides)
        self.in_channels = widths[0]
        self.channels = tuple(widths[1:5])
        self.strides = strides
        self.negative_slope = as_finite_float(negative_slope, "negative_slope")
        C = self.num_classes
        self.convs = nn.ModuleList(
            nn.Conv2d(C * cin, C * cout, k, stride=s, padding=p, groups=C)
            for cin, cout, k, s, p in zip(widths[:-1], widths[1:], KERNELS, strides, PADDINGS)
        )
        self.backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        self._backend = value

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, in_channels={self.in_channels}, channels={self.channels}, "
                f"strides={self.strides}, negative_slope={self.negative_slope}, backend={self.backend!r}")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h', w'): the logit map size for an (h, w) feature map."""
        return output_size(h, w, self.strides)

    def resolve_backend(self, device: torch.device) -> str:
        """The backend a forward on ``device`` uses: ``auto`` is ``fused`` where its kernels exist for the device
        (the compiled extension on the CPU; with Triton too on CUDA) and ``reference`` elsewhere."""
        if self.backend != "auto":
            return self.backend
        device = torch.device(device)
        if not has_compiled_ops():
            return "reference"
        if device.type == "cpu" or (device.type == "cuda" and triton_available()):
            return "fused"
        return "reference"

    def plan(self, labels: Tensor, feature_size: Sequence[int], *,
             label_maps: tuple[Tensor, Tensor] | None = None) -> SSDPlan:
        """The label-dependent part of a forward, built once and reused by every forward on these labels.

        A training iteration runs the SS-D on the same target labels twice (the generator's pass and the
        discriminator's target pass): ``plan = disc.plan(labels, feat_t.shape[-2:])`` then ``disc(feat, plan=plan)``
        downsamples the labels and builds the fused backend's rulebook once instead of at every forward. The plan
        fits features of this batch, size and device only; another is a ``ValueError``.

        Shapes: labels (B, H, W) int64, feature_size (h, w) with h <= H, w <= W; label_maps as in :meth:`forward`.
        """
        check_tensor(labels, "labels", 3, "(B, H, W)")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64, got {labels.dtype}")
        check_nonempty(labels, "labels", "(B, H, W)")
        h, w = check_size(feature_size, labels, "feature_size")
        if label_maps is not None:
            lf, lo = self._check_label_maps(labels.shape[0], (h, w), labels.device, label_maps)
        else:  # mode_downsample validates the label values as it reads them
            lf = mode_downsample(labels, (h, w), self.num_classes)
            lo = mode_downsample(labels, self.output_size(h, w), self.num_classes)
        rulebook = None
        if self.resolve_backend(labels.device) == "fused":
            rulebook = _rulebook(lf, lo, self.num_classes, self.strides[1:])
        return SSDPlan(lf, lo, rulebook, (h, w), self.num_classes, self.strides)

    def concat_plans(self, first: SSDPlan, second: SSDPlan) -> SSDPlan:
        """The plan of two batches evaluated together (``first``'s images first), made from their plans without
        downsampling or walking the sets again: one forward over both batches reads the weights, and writes
        their gradient, once (a training step's source and target passes). The plans must fit features of one
        size on one device.
        """
        for plan in (first, second):
            self._check_plan_source(plan)
        if tuple(first.feature_size) != tuple(second.feature_size) or first.lf.device != second.lf.device:
            raise ValueError(f"plans for feature maps of sizes {first.feature_size} and {second.feature_size} on "
                             f"{first.lf.device} and {second.lf.device} cannot be joined: one size, one device")
        rulebook = None
        if first.rulebook is not None and second.rulebook is not None:
            rulebook = concat_rulebooks(first.rulebook, second.rulebook, self.num_classes)
        elif self.resolve_backend(first.lf.device) == "fused":
            rulebook = _rulebook(torch.cat([first.lf, second.lf]), torch.cat([first.lo, second.lo]), self.num_classes,
                                 self.strides[1:])
        return SSDPlan(torch.cat([first.lf, second.lf]), torch.cat([first.lo, second.lo]), rulebook,
                       tuple(first.feature_size), self.num_classes, self.strides)

    def forward(self, features: Tensor, labels: Tensor | None = None, *,
                label_maps: tuple[Tensor, Tensor] | None = None, plan: SSDPlan | None = None) -> DiscriminatorOutput:
        """Class-wise domain logits of the feature cells.

        ``label_maps``: the feature- and output-resolution mode downsamplings of ``labels``, e.g.
        ``confidence_select(..., out_sizes=((h, w), self.output_size(h, w))).downsampled``; given, they are used
        instead of downsampling ``labels`` again (the result is the same). ``plan``: what :meth:`plan` prepared for
        these labels, given instead of ``labels`` and ``label_maps``.

        Shapes: features (B, n, h, w), labels (B, H, W), label_maps ((B, h, w), (B, h', w')) int64
        -> logits (B, 1, h', w'), labels (B, h', w').
        """
        self._check_features(features)
        if plan is not None:
            if labels is not None or label_maps is not None:
                raise ValueError("give labels (and label_maps) or a plan, not both")
            self._check_plan(features, plan)
        else:
            if labels is None:
                raise TypeError("forward needs labels (B, H, W) or a plan from SeparatedDiscriminator.plan")
            self._check_labels(features, labels)
            plan = self.plan(labels, features.shape[-2:], label_maps=label_maps)
        lf, lo = plan.lf, plan.lo
        backend = self.resolve_backend(features.device)
        if backend == "reference":
            weights = [conv.weight for conv in self.convs]
            biases = [conv.bias for conv in self.convs]
            return reference.ssd_forward(features, None, weights, biases, self.strides, self.num_classes,
                                         self.negative_slope, label_maps=(lf, lo))
        B, n, h, w = features.shape
        C = self.num_classes
        if backend == "fused":
            return DiscriminatorOutput(self._fused_logits(features, lf, lo, plan.rulebook), lo)
        classes = torch.arange(C, device=features.device).view(1, C, 1, 1, 1)
        # Separation by selection, not by multiplying with the mask: 0 * NaN is NaN, and a non-finite feature must
        # reach its own class's stack only (docs: semantics, separation).
        own = lf.view(B, 1, 1, h, w) == classes
        x = torch.where(own, features.unsqueeze(1), features.new_zeros(())).reshape(B, C * n, h, w)
        return self._grouped_layers(x, lo, first=0)

    def forward_domains(self, source_features: Tensor, source_labels: Tensor | SSDPlan, target_features: Tensor,
                        target_labels: Tensor | SSDPlan) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
        """The outputs of both domains for one discriminator step: ``(self(source...), self(target...))``.

        Each ``*_labels`` is a label map (B, H, W) or a plan from :meth:`plan` for those features. When both
        feature maps have one size and dtype, the two batches run as one forward on their joined plans
        (:meth:`concat_plans`; every image is evaluated on its own, so the outputs are those of two forwards):
        the weights are read, and their gradient written, once. Two separate forwards make autograd add two
        weight-sized gradients before the parameters see them, which at the paper's widths took more time and
        memory than the whole fused step (docs/benchmarks.md, ``bench_domain_loss``). Feature maps of different
        sizes (the paper's source and target crops) are joined too on the fused backend, whose pairs do not depend
        on positions; the dense backends run them as two forwards.

        Shapes: as :meth:`forward` for each domain; returns (source output, target output).
        """
        plans = []
        for features, labels, name in ((source_features, source_labels, "source_labels"),
                                       (target_features, target_labels, "target_labels")):
            self._check_features(features)
            if isinstance(labels, SSDPlan):
                self._check_plan(features, labels)
                plans.append(labels)
            elif isinstance(labels, Tensor):
                self._check_labels(features, labels)
                plans.append(self.plan(labels, features.shape[-2:]))
            else:
                raise TypeError(f"{name} must be a label map (B, H, W) or an SSDPlan, got {type(labels).__name__}")
        one_dtype = source_features.dtype == target_features.dtype
        if not one_dtype or source_features.shape[-2:] != target_features.shape[-2:]:
            fused = self.resolve_backend(source_features.device) == "fused"
            if one_dtype and fused and all(plan.rulebook is not None for plan in plans):
                return self._fused_domains_of_two_sizes(source_features, target_features, plans)
            return self(source_features, plan=plans[0]), self(target_features, plan=plans[1])
        B = source_features.shape[0]
        out = self(torch.cat([source_features, target_features]), plan=self.concat_plans(*plans))
        return (DiscriminatorOutput(out.logits[:B], out.labels[:B]),
                DiscriminatorOutput(out.logits[B:], out.labels[B:]))

    def _fused_logits(self, features: Tensor, lf: Tensor, lo: Tensor, rulebook: Rulebook | None) -> Tensor:
        weights = [conv.weight for conv in self.convs]
        biases = [conv.bias for conv in self.convs]
        if torch.is_autocast_enabled(features.device.type):
            # Custom autograd ops are not autocast: run them in the dtype autocast would give the convolutions
            # (autocast leaves float64 tensors as they are).
            dtype = torch.get_autocast_dtype(features.device.type)
            features, *params = (t if t.dtype == torch.float64 else t.to(dtype) for t in (features, *weights, *biases))
            weights, biases = params[:5], params[5:]
        return sparse_ssd_forward(features, lf, lo, weights, biases, self.strides, self.num_classes,
                                  self.negative_slope, rulebook=rulebook)

    def _fused_domains_of_two_sizes(self, source_features: Tensor, target_features: Tensor, plans: list[SSDPlan]
                                    ) -> tuple[DiscriminatorOutput, DiscriminatorOutput]:
        """Both domains in one fused evaluation when their feature maps differ in size. The rulebook lists pairs and
        value-table rows, not positions, so two batches' rulebooks join whatever their sizes; layer 1 is a 1x1
        routed product, so the cells of both batches can form one row of cells (1, n, 1, N_s + N_t) in the order of
        the joined rulebook's layer-1 labels (source images first, each in raster order)."""
        rulebook = concat_rulebooks(plans[0].rulebook, plans[1].rulebook, self.num_classes)
        n = source_features.shape[1]
        cells = torch.cat([f.transpose(0, 1).reshape(n, -1) for f in (source_features, target_features)], 1)
        lo = torch.cat([plan.lo.reshape(-1) for plan in plans]).view(1, 1, -1)
        logits = self._fused_logits(cells.view(1, n, 1, -1), rulebook.lf_masked, lo, rulebook).view(-1)
        outputs, start = [], 0
        for plan in plans:
            size = plan.lo.numel()
            outputs.append(DiscriminatorOutput(logits[start:start + size].view(plan.lo.shape[0], 1, *plan.lo.shape[1:]),
                                               plan.lo))
            start += size
        return outputs[0], outputs[1]

    def _check_plan_source(self, plan: object) -> None:
        if not isinstance(plan, SSDPlan):
            raise TypeError(f"plan must come from SeparatedDiscriminator.plan, got {type(plan).__name__}")
        if plan.num_classes != self.num_classes or tuple(plan.strides) != tuple(self.strides):
            raise ValueError(f"plan was built for {plan.num_classes} classes and strides {plan.strides}, this "
                             f"discriminator has {self.num_classes} and {self.strides}")

    def _check_plan(self, features: Tensor, plan: object) -> None:
        self._check_plan_source(plan)
        B, _, h, w = features.shape
        built = (plan.lf.shape[0], tuple(plan.feature_size), plan.lf.device)
        if (B, (h, w), features.device) != built:
            raise ValueError(f"plan was built for a batch of {built[0]} feature maps of size {built[1]} on "
                             f"{built[2]}; got features {tuple(features.shape)} on {features.device}: build a plan "
                             f"for these features")

    def _check_label_maps(self, batch: int, size: tuple[int, int], device: torch.device,
                          label_maps: object) -> tuple[Tensor, Tensor]:
        if not isinstance(label_maps, (tuple, list)) or len(label_maps) != 2:
            raise TypeError(f"label_maps must be a pair (feature-resolution map, output-resolution map), got "
                            f"{type(label_maps).__name__}")
        expected = ((batch, *size), (batch, *self.output_size(*size)))
        names = ("label_maps[0] (feature resolution)", "label_maps[1] (output resolution)")
        for name, shape, m in zip(names, expected, label_maps):
            check_labels(m, name, self.num_classes)
            if tuple(m.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(m.shape)}")
            if m.device != device:
                raise ValueError(f"all inputs must be on one device, got labels on {device}, {name} on {m.device}")
        return tuple(label_maps)

    def _grouped_layers(self, x: Tensor, lo: Tensor, first: int) -> DiscriminatorOutput:
        """Layers ``first``..5 as grouped convolutions on the grouped layout, then the per-cell class pick."""
        for layer in range(first, len(self.convs)):
            x = self.convs[layer](x)
            if layer < len(self.convs) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        labelled = (lo != IGNORE).unsqueeze(1)
        picked = x.gather(1, torch.where(labelled, lo.unsqueeze(1), 0))
        return DiscriminatorOutput(torch.where(labelled, picked, torch.zeros_like(picked)), lo)

    def _check_features(self, features: Tensor) -> None:
        check_tensor(features, "features", 4, "(B, n, h, w)")
        check_floating(features, "features")
        weight = self.convs[0].weight
        check_same_device(features=features, discriminator=weight)
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features must have in_channels={self.in_channels} channels, got shape "
                             f"{tuple(features.shape)}")
        check_nonempty(features, "features", "(B, n, h, w)")
        autocast = torch.is_autocast_enabled(features.device.type)
        if features.dtype != weight.dtype and not autocast:
            raise TypeError(f"features dtype {features.dtype} differs from the discriminator's parameters "
                            f"({weight.dtype}); convert one of them with .to()")

    def _check_labels(self, features: Tensor, labels: Tensor) -> None:
        check_tensor(labels, "labels", 3, "(B, H, W)")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64, got {labels.dtype}")
        check_batch(features, "features", labels, "labels")
        check_same_device(features=features, labels=labels)
        if labels.shape[1] < features.shape[2] or labels.shape[2] < features.shape[3]:
            raise ValueError(f"labels (B, H, W) must be at least as large as the features (h, w): got labels "
                             f"{tuple(labels.shape)} for features {tuple(features.shape)}")
