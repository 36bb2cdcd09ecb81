"""Segmentation models returning ``(logits, features)``: DeepLab-v2 ResNet-101, FCN-8s VGG16 and a small CPU net.

Every model has ``num_classes``, ``feature_channels`` (the width of ``features``, what the class-wise
discriminator consumes), ``feature_stride``, ``normalization`` (the input normalisation its weights expect),
``config`` (what :func:`build_model` rebuilds it from) and ``backbone_parameters()`` / ``head_parameters()``.
torchvision is imported only when a torchvision-based model is built; nothing is ever downloaded.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .checkpoint import LoadReport, load_checkpoint, load_pretrained, model_from_checkpoint, save_checkpoint
from .deeplab import ASPPClassifier, DeepLabV2, deeplabv2_resnet50, deeplabv2_resnet101
from .fcn8s import FCN8s, fcn8s_vgg16
from .small import SmallSegNet, small_segnet
from .verified_io import CheckpointError, UnverifiedCheckpointWarning

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv2_resnet101": deeplabv2_resnet101,
    "deeplabv2_resnet50": deeplabv2_resnet50,
    "fcn8s_vgg16": fcn8s_vgg16,
    "small": small_segnet,
}


def build_model(name: str, num_classes: int = 19, **kwargs: object) -> nn.Module:
    """Build a segmenter by name (see ``MODELS``); ``kwargs`` go to its constructor.

    Shapes: the model maps (B, 3, H, W) -> (logits (B, num_classes, h, w), features (B, n, h', w')).
    """
    if name not in MODELS:
        raise ValueError(f"name must be one of {sorted(MODELS)}, got {name!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return MODELS[name](num_classes, **kwargs)


__all__ = [
    "ASPPClassifier", "CheckpointError", "DeepLabV2", "FCN8s", "LoadReport", "MODELS", "SmallSegNet",
    "UnverifiedCheckpointWarning", "build_model", "deeplabv2_resnet101", "deeplabv2_resnet50", "fcn8s_vgg16",
    "load_checkpoint", "load_pretrained", "model_from_checkpoint", "save_checkpoint", "small_segnet",
]
