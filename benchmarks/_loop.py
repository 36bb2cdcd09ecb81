"""The baseline a user writes without this library: C independent discriminators, one per class.

Each class has its own ``nn.Sequential`` of the five SS-D layers with parameters of its own (no views of shared
tensors), run on its class's features and picked per output cell. Built from a :class:`SeparatedDiscriminator` so
that it computes the same function with the same weights; the benchmarks time it next to the library's backends.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ssfdan_ext import DiscriminatorOutput, SeparatedDiscriminator, mode_downsample


class LoopDiscriminator(nn.Module):
    """C independent five-layer FCNs with ``disc``'s weights, called like it.

    Shapes: features (B, n, h, w), labels (B, H, W) -> DiscriminatorOutput((B, 1, h', w'), (B, h', w')).
    """

    backend = "loop"

    def __init__(self, disc: SeparatedDiscriminator) -> None:
        super().__init__()
        C = self.num_classes = disc.num_classes
        self.output_size = disc.output_size
        stacks = []
        for c in range(C):
            layers: list[nn.Module] = []
            for index, conv in enumerate(disc.convs):
                rows = conv.out_channels // C
                own = nn.Conv2d(conv.in_channels // C, rows, conv.kernel_size, conv.stride, conv.padding).to(
                    conv.weight.device, conv.weight.dtype)
                with torch.no_grad():
                    own.weight.copy_(conv.weight[c * rows:(c + 1) * rows])
                    own.bias.copy_(conv.bias[c * rows:(c + 1) * rows])
                layers.append(own)
                if index < len(disc.convs) - 1:
                    layers.append(nn.LeakyReLU(disc.negative_slope))
            stacks.append(nn.Sequential(*layers))
        self.stacks = nn.ModuleList(stacks)

    def first_layer(self, c: int) -> nn.Conv2d:
        return self.stacks[c][0]

    def forward(self, features: Tensor, labels: Tensor) -> DiscriminatorOutput:
        h, w = features.shape[-2:]
        lf = mode_downsample(labels, (h, w), self.num_classes)
        lo = mode_downsample(labels, self.output_size(h, w), self.num_classes)
        logits = None
        for c, stack in enumerate(self.stacks):
            out = stack(torch.where((lf == c).unsqueeze(1), features, features.new_zeros(())))
            logits = torch.zeros_like(out) if logits is None else logits
            logits = torch.where((lo == c).unsqueeze(1), out, logits)
        return DiscriminatorOutput(logits, lo)
