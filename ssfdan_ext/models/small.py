"""A small segmenter for CPU demos and tests, with DeepLab's interface."""
from __future__ import annotations

from torch import Tensor, nn

from .common import check_input


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallSegNet(nn.Module):
    """Seven 3x3 conv-BN-ReLU blocks to output stride 8, the last two dilated, then a 1x1 classifier.

    Shapes: x (B, 3, H, W) -> logits (B, num_classes, ceil(H/8), ceil(W/8)), features
    (B, feature_channels, same h, w).
    """

    feature_stride = 8

    def __init__(self, num_classes: int = 19, width: int = 32, feature_channels: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(3, width, 2), _block(width, width), _block(width, 2 * width, 2), _block(2 * width, 2 * width),
            _block(2 * width, feature_channels, 2), _block(feature_channels, feature_channels, dilation=2),
            _block(feature_channels, feature_channels, dilation=4))
        self.classifier = nn.Conv2d(feature_channels, num_classes, 1)
        self.num_classes, self.feature_channels = num_classes, feature_channels
        self.normalization = "imagenet"
        self.config = {"arch": "small", "num_classes": num_classes, "width": width,
                       "feature_channels": feature_channels}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the convolutional body."""
        return list(self.body.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the classifier."""
        return list(self.classifier.parameters())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x)
        features = self.body(x)
        return self.classifier(features), features


def small_segnet(num_classes: int = 19, **kwargs) -> SmallSegNet:
    """The small CPU segmenter (see :class:`SmallSegNet`).

    Shapes: x (B, 3, H, W) -> (logits (B, C, H/8, W/8), features (B, 64, H/8, W/8)).
    """
    return SmallSegNet(num_classes, **kwargs)
