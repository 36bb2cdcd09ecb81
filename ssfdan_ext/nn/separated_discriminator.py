"""SeparatedDiscriminator: the Semantic-wise Separable Discriminator (SS-D) of SPEC section 3."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference
from .._checks import as_finite_float, check_batch, check_floating, check_labels, check_layer_shapes, check_num_classes
from .._checks import check_same_device, check_tensor
from .._ext import has_compiled_ops
from ..ops.mode_downsample import mode_downsample as compiled_mode_downsample
from ..ops.sparse_ssd import sparse_ssd_forward
from ..types import IGNORE, DiscriminatorOutput

BACKENDS = ("auto", "reference", "grouped", "fused")
# "auto" runs the fused backend whenever the extension is compiled: it computes only the (class, cell) pairs that
# can reach a labelled output cell, a fraction of the dense backends' work (benchmarks/bench_ssd.py).


def _mode_downsample(labels: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    if has_compiled_ops():
        return compiled_mode_downsample(labels, size, num_classes)
    return reference.mode_downsample(labels, size, num_classes)


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
            for cin, cout, k, s, p in zip(widths[:-1], widths[1:], reference.KERNELS, strides, reference.PADDINGS)
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
        return reference.ssd_output_size(h, w, self.strides)

    def resolve_backend(self, device: torch.device) -> str:
        """The backend a forward on ``device`` uses."""
        if self.backend != "auto":
            return self.backend
        return "fused" if has_compiled_ops() else "reference"

    def forward(self, features: Tensor, labels: Tensor, *,
                label_maps: tuple[Tensor, Tensor] | None = None) -> DiscriminatorOutput:
        """Class-wise domain logits of the feature cells.

        ``label_maps``: the feature- and output-resolution mode downsamplings of ``labels``, e.g.
        ``confidence_select(..., out_sizes=((h, w), self.output_size(h, w))).downsampled``; given, they are used
        instead of downsampling ``labels`` again (the result is the same).

        Shapes: features (B, n, h, w), labels (B, H, W), label_maps ((B, h, w), (B, h', w')) int64
        -> logits (B, 1, h', w'), labels (B, h', w').
        """
        self._check_inputs(features, labels)
        if label_maps is not None:
            label_maps = self._check_label_maps(features, label_maps)
        backend = self.resolve_backend(features.device)
        if backend == "reference":
            weights = [conv.weight for conv in self.convs]
            biases = [conv.bias for conv in self.convs]
            return reference.ssd_forward(features, labels, weights, biases, self.strides, self.num_classes,
                                         self.negative_slope, label_maps=label_maps)
        B, n, h, w = features.shape
        C = self.num_classes
        lf, lo = self._label_maps(features, labels, label_maps)
        if backend == "fused":
            weights = [conv.weight for conv in self.convs]
            biases = [conv.bias for conv in self.convs]
            if torch.is_autocast_enabled(features.device.type):
                # Custom autograd ops are not autocast: run them in the dtype autocast would give the convolutions
                # (autocast leaves float64 tensors as they are).
                dtype = torch.get_autocast_dtype(features.device.type)
                features, *params = (t if t.dtype == torch.float64 else t.to(dtype)
                                     for t in (features, *weights, *biases))
                weights, biases = params[:5], params[5:]
            logits = sparse_ssd_forward(features, lf, lo, weights, biases, self.strides, C, self.negative_slope)
            return DiscriminatorOutput(logits, lo)
        classes = torch.arange(C, device=features.device).view(1, C, 1, 1, 1)
        # Separation by selection, not by multiplying with the mask: 0 * NaN is NaN, and a non-finite feature must
        # reach its own class's stack only (docs: semantics, separation).
        own = lf.view(B, 1, 1, h, w) == classes
        x = torch.where(own, features.unsqueeze(1), features.new_zeros(())).reshape(B, C * n, h, w)
        return self._grouped_layers(x, lo, first=0)

    def _label_maps(self, features: Tensor, labels: Tensor,
                    label_maps: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if label_maps is not None:
            return label_maps
        h, w = features.shape[-2:]
        return (_mode_downsample(labels, (h, w), self.num_classes),
                _mode_downsample(labels, self.output_size(h, w), self.num_classes))

    def _check_label_maps(self, features: Tensor, label_maps: object) -> tuple[Tensor, Tensor]:
        if not isinstance(label_maps, (tuple, list)) or len(label_maps) != 2:
            raise TypeError(f"label_maps must be a pair (feature-resolution map, output-resolution map), got "
                            f"{type(label_maps).__name__}")
        B, _, h, w = features.shape
        expected = ((B, h, w), (B, *self.output_size(h, w)))
        names = ("label_maps[0] (feature resolution)", "label_maps[1] (output resolution)")
        for name, shape, m in zip(names, expected, label_maps):
            check_labels(m, name, self.num_classes)
            if tuple(m.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(m.shape)}")
            check_same_device(features=features, **{name.split(" ")[0]: m})
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

    def _check_inputs(self, features: Tensor, labels: Tensor) -> None:
        check_tensor(features, "features", 4, "(B, n, h, w)")
        check_tensor(labels, "labels", 3, "(B, H, W)")
        check_floating(features, "features")
        if labels.dtype != torch.int64:
            raise TypeError(f"labels must be int64, got {labels.dtype}")
        check_batch(features, "features", labels, "labels")
        weight = self.convs[0].weight
        check_same_device(features=features, labels=labels, discriminator=weight)
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features must have in_channels={self.in_channels} channels, got shape "
                             f"{tuple(features.shape)}")
        if features.shape[2] < 1 or features.shape[3] < 1:
            raise ValueError(f"features must have a non-empty spatial size, got shape {tuple(features.shape)}")
        if labels.shape[1] < features.shape[2] or labels.shape[2] < features.shape[3]:
            raise ValueError(f"labels (B, H, W) must be at least as large as the features (h, w): got labels "
                             f"{tuple(labels.shape)} for features {tuple(features.shape)}")
        autocast = torch.is_autocast_enabled(features.device.type)
        if features.dtype != weight.dtype and not autocast:
            raise TypeError(f"features dtype {features.dtype} differs from the discriminator's parameters "
                            f"({weight.dtype}); convert one of them with .to()")
