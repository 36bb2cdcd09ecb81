"""(logits, features) from any segmenter: a forward hook on a named layer.

Segmenters of the AdaptSegNet era, torchvision's and mmsegmentation's return logits only, while the SS-D needs the
feature map the classifier reads. Wrapping the model keeps its code, weights and state-dict keys (under
``model.``) unchanged.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

from torch import Tensor, nn


class WithFeatures(nn.Module):
    """Wrap ``model`` so that it returns ``(logits, features)``, ``features`` being the output of ``layer``.

    Args:
        model: any ``nn.Module`` segmenter. Its output may be a tensor, a mapping (torchvision's segmentation
            models return ``{"out": ..., "aux": ...}``: ``output_key`` picks the logits) or a tuple/list (the first
            element is taken, as AdaptSegNet's multi-level models return ``(aux, main)``: give ``output_index``).
        layer: the dotted name of the submodule whose output is the feature map, as in ``model.named_modules()``,
            e.g. ``"backbone.layer4"`` for torchvision's ResNet segmenters or ``"layer4"`` for AdaptSegNet's
            DeepLab. A name the model does not have is a ``ValueError`` listing the closest names.
        output_key, output_index: which entry of a mapping or sequence output holds the logits.

    If the layer runs more than once in a forward, the features are its last output. The features keep their
    graph: detach them yourself for the discriminator's own step.

    Shapes: input as ``model`` takes it -> logits as ``model`` gives them, features (B, n, h, w) of ``layer``.
    """

    def __init__(self, model: nn.Module, layer: str, output_key: str = "out", output_index: int = 0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a submodule name (str), got {type(layer).__name__}")
        modules = dict(model.named_modules())
        if layer not in modules or layer == "":
            names = [n for n in modules if n]
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.4)
            hint = f"closest names: {close}" if close else f"its submodules start with: {names[:8]}"
            raise ValueError(f"layer {layer!r} is not a submodule of {type(model).__name__}; {hint}")
        self.model = model
        self.layer = layer
        self.output_key = output_key
        self.output_index = output_index
        self._captured: Tensor | None = None
        self._handle = modules[layer].register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: object, output: object) -> None:
        self._captured = output

    def forward(self, *args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        self._captured = None
        out = self.model(*args, **kwargs)
        features, self._captured = self._captured, None  # never keep a graph alive between calls
        if features is None:
            raise RuntimeError(f"layer {self.layer!r} did not run in {type(self.model).__name__}'s forward")
        if not isinstance(features, Tensor):
            raise TypeError(f"layer {self.layer!r} returned a {type(features).__name__}, not a feature tensor; name "
                            f"a layer whose output is the (B, n, h, w) feature map")
        if isinstance(out, Mapping):
            if self.output_key not in out:
                raise KeyError(f"the model returned a mapping without {self.output_key!r} (keys {list(out)}); "
                               f"give output_key")
            out = out[self.output_key]
        elif isinstance(out, (tuple, list)):
            out = out[self.output_index]
        return out, features

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}"
