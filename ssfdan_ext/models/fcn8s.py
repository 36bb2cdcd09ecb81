"""FCN-8s with a VGG16 backbone, returning ``(logits, features)``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .common import check_input, import_torchvision


class FCN8s(nn.Module):
    """FCN-8s: VGG16 convolutions, fc6/fc7 as convolutions, and skip scores from pool4 and pool3.

    ``features`` is fc7's output (4096 channels, 1/32 of the input), what the class-wise discriminator
    consumes; ``logits`` are the fused scores at pool3's resolution (1/8), to be upsampled bilinearly to the
    label size like DeepLab's. The coarse scores are upsampled by bilinear interpolation (the fixed version of
    FCN's bilinear-initialised deconvolutions) so that no cropping offsets are needed. ``features`` (the
    torchvision VGG16 ``features`` module) keeps torchvision's names, so ImageNet VGG16 weights load by name;
    torchvision's ``classifier.0``/``classifier.3`` become ``fc6``/``fc7``.

    Shapes: x (B, 3, H, W) -> logits (B, num_classes, H/8, W/8), features (B, 4096, H/32, W/32) (floored
    by each pooling).
    """

    feature_stride = 32

    def __init__(self, num_classes: int = 19, dropout: float = 0.5) -> None:
        super().__init__()
        torchvision = import_torchvision()

        vgg = torchvision.models.vgg
        if hasattr(vgg, "make_layers") and "D" in getattr(vgg, "cfgs", {}):
            # VGG16's convolutions alone: building the whole model would also initialise its 120M-parameter
            # classifier (two seconds) only to throw it away.
            self.features = vgg.make_layers(vgg.cfgs["D"], batch_norm=False)
        else:
            self.features = torchvision.models.vgg16(weights=None).features
        self.fc6 = nn.Conv2d(512, 4096, 7, padding=3)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout2d(dropout)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        # torchvision's VGG16 initialisation (make_layers leaves PyTorch's default, whose activations shrink
        # ~2.5x per layer to 0.02 at fc7): Kaiming convolutions, and fc6/fc7 as its N(0, 0.01) linear layers.
        for conv in self.features:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        for fc in (self.fc6, self.fc7):
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)
        for score in (self.score_fr, self.score_pool4, self.score_pool3):  # FCN starts the scores at zero
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
        self.num_classes, self.feature_channels = num_classes, 4096
        self.normalization = "imagenet"
        self.config = {"arch": "fcn8s_vgg16", "num_classes": num_classes, "dropout": dropout}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """VGG16 and fc6/fc7 parameters."""
        return [p for n, p in self.named_parameters() if not n.startswith("score_")]

    def head_parameters(self) -> list[nn.Parameter]:
        """The three score layers."""
        return [p for n, p in self.named_parameters() if n.startswith("score_")]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x)
        pool3 = self.features[:17](x)
        pool4 = self.features[17:24](pool3)
        pool5 = self.features[24:](pool4)
        features = self.drop(F.relu(self.fc7(self.drop(F.relu(self.fc6(pool5))))))
        score = self.score_fr(features)
        score = F.interpolate(score, size=pool4.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool4(pool4)
        score = F.interpolate(score, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
        return score + self.score_pool3(pool3), features

    @staticmethod
    def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """torchvision VGG16 keys -> FCN-8s keys (fc layers reshaped to convolutions, the 1000-way fc dropped).

        Shapes: classifier.0.weight (4096, 25088) -> fc6.weight (4096, 512, 7, 7); classifier.3.weight
        (4096, 4096) -> fc7.weight (4096, 4096, 1, 1); other tensors unchanged.
        """
        out = {}
        for key, value in state.items():
            if key.startswith("classifier.0."):
                key = "fc6." + key.split(".")[-1]
                value = value.reshape(4096, 512, 7, 7) if value.dim() == 2 else value
            elif key.startswith("classifier.3."):
                key = "fc7." + key.split(".")[-1]
                value = value.reshape(4096, 4096, 1, 1) if value.dim() == 2 else value
            elif key.startswith("classifier.6."):
                continue
            out[key] = value
        return out


def fcn8s_vgg16(num_classes: int = 19, **kwargs) -> FCN8s:
    """FCN-8s VGG16 (see :class:`FCN8s`).

    Shapes: x (B, 3, H, W) -> (logits (B, C, H/8, W/8), features (B, 4096, H/32, W/32)).
    """
    return FCN8s(num_classes, **kwargs)


__all__ = ["FCN8s", "fcn8s_vgg16"]
