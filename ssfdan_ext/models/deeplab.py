"""DeepLab-v2 with a ResNet-101 backbone: dilated layer3/layer4 (output stride 8) and a four-branch ASPP head."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .common import check_input, freeze_batchnorm, import_torchvision


class ASPPClassifier(nn.Module):
    """Atrous spatial pyramid pooling classifier: 3x3 convolutions at several dilations, summed.

    ``active_branches`` < the number of branches reproduces the AdaptSegNet-era head, whose forward loop
    returned after the second branch: all four convolutions exist (so its checkpoints load) but only the first
    ``active_branches`` contribute. The attribute name ``conv2d_list`` matches those checkpoints' keys.

    Shapes: x (B, in_channels, h, w) -> (B, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, dilations: Sequence[int] = (6, 12, 18, 24),
                 active_branches: int | None = None) -> None:
        super().__init__()
        active = len(dilations) if active_branches is None else active_branches
        if not 1 <= active <= len(dilations):
            raise ValueError(f"active_branches must be in [1, {len(dilations)}], got {active_branches}")
        self.active_branches = active
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations)
        for conv in self.conv2d_list:  # DeepLab-v2 initialisation of the classifier
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:self.active_branches]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLab-v2 ResNet-101 returning ``(logits, features)``, both at 1/8 of the input.

    ``features`` is layer4's output (2048 channels), what the class-wise discriminator consumes. Module names
    follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``) and the DeepLab head is ``layer5``,
    so torchvision ImageNet weights and DeepLab/AdaptSegNet checkpoints load by name (see
    :func:`ssfdan_ext.models.load_pretrained`).

    Args:
        num_classes: output classes.
        depth: 101 (or 50 for a lighter variant).
        aspp_branches: active ASPP branches; 4 is DeepLab-v2, 2 reproduces the AdaptSegNet-era head.
        frozen_bn: replace BatchNorm by frozen affine layers (DeepLab-v2 trains with batch size 1-2).
        caffe_style: the original DeepLab-v2 ResNet: stride on the first 1x1 convolution of a downsampling
            block, dilation already in the first block of layer3/layer4, ceil-mode max pooling. Use it with
            Caffe-converted DeepLab checkpoints (and "caffe" normalisation).

    Shapes: x (B, 3, H, W) -> logits (B, num_classes, ceil(H/8), ceil(W/8)) approximately, features
    (B, 2048, same h, w).
    """

    feature_stride = 8

    def __init__(self, num_classes: int = 19, depth: int = 101, aspp_branches: int = 4, frozen_bn: bool = True,
                 caffe_style: bool = False) -> None:
        super().__init__()
        torchvision = import_torchvision()

        builders = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
        if depth not in builders:
            raise ValueError(f"depth must be 50 or 101, got {depth}")
        # Each residual branch starts as the identity (torchvision's zero_init_residual): with the statistics
        # of a fresh BatchNorm (mean 0, variance 1) nothing normalises the sum, and ResNet-101's 33 branches take
        # a normalised image to logits of ~5e4, which the first SGD step turns into NaN. Pretrained weights
        # overwrite all of it.
        net = builders[depth](weights=None, replace_stride_with_dilation=[False, True, True],
                              zero_init_residual=not frozen_bn)
        if frozen_bn:  # a frozen BatchNorm's weight never trains: zero the branch's last convolution instead
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for block in layer:
                    nn.init.zeros_(block.conv3.weight)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if caffe_style:
            self.maxpool.ceil_mode = True
            block = self.layer2[0]
            block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
            for layer, dilation in ((self.layer3, 2), (self.layer4, 4)):
                layer[0].conv2.dilation, layer[0].conv2.padding = (dilation, dilation), (dilation, dilation)
        self.layer5 = ASPPClassifier(2048, num_classes, active_branches=aspp_branches)
        self.num_classes, self.feature_channels = num_classes, 2048
        self.normalization = "caffe" if caffe_style else "imagenet"
        self.config = {"arch": "deeplabv2_resnet101" if depth == 101 else "deeplabv2_resnet50",
                       "num_classes": num_classes, "aspp_branches": aspp_branches, "frozen_bn": frozen_bn,
                       "caffe_style": caffe_style}
        if frozen_bn:
            freeze_batchnorm(self)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the ResNet (the usual 1x learning rate; the head takes 10x)."""
        return [p for n, p in self.named_parameters() if not n.startswith("layer5.") and p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the ASPP classifier."""
        return list(self.layer5.parameters())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.layer5(features), features


def deeplabv2_resnet101(num_classes: int = 19, **kwargs) -> DeepLabV2:
    """DeepLab-v2 ResNet-101 (see :class:`DeepLabV2`).

    Shapes: x (B, 3, H, W) -> (logits (B, C, h, w), features (B, 2048, h, w)), h, w about H/8, W/8.
    """
    return DeepLabV2(num_classes, depth=101, **kwargs)


def deeplabv2_resnet50(num_classes: int = 19, **kwargs) -> DeepLabV2:
    """DeepLab-v2 ResNet-50 (see :class:`DeepLabV2`).

    Shapes: as :func:`deeplabv2_resnet101`.
    """
    return DeepLabV2(num_classes, depth=50, **kwargs)


__all__ = ["ASPPClassifier", "DeepLabV2", "deeplabv2_resnet101", "deeplabv2_resnet50"]
