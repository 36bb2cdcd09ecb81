"""Helpers shared by the segmentation models."""
from __future__ import annotations

from types import ModuleType

from torch import Tensor, nn


def import_torchvision() -> ModuleType:
    """torchvision, imported when a backbone is built (the kernels and the discriminator work without it).

    Shapes: n/a.
    """
    try:
        import torchvision
    except ImportError:
        raise ImportError("the DeepLab-v2 and FCN-8s backbones need torchvision: pip install the torchvision "
                          "release that matches your torch (or the package's 'models' extra)") from None
    return torchvision


def check_input(x: object) -> Tensor:
    """Models take (B, 3, H, W) floating-point images.

    Shapes: x (B, 3, H, W) floating point; returned unchanged.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be (B, 3, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    return x


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by torchvision's FrozenBatchNorm2d (same state-dict keys, fixed statistics).

    FrozenBatchNorm2d keeps weight, bias and the running statistics as buffers: they get no gradient, an
    optimiser never sees them, and train mode normalises with the stored statistics like eval mode.

    Shapes: n/a (returns ``module``, changed in place).
    """
    FrozenBatchNorm2d = import_torchvision().ops.misc.FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
