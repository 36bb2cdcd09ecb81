"""Procedural street scenes in two domains that share their layouts but not their looks.

Layouts come from :func:`ssfdan_ext.testing.street_scene` (sky, buildings, road, sidewalks, poles with signs
and lights, vehicles, people...), drawn from one distribution for both domains. Each domain renders the classes
with its own palette, textures, illumination, blur and sensor noise: the "source" is bright, saturated and
sharp (a game engine); the "target" is dim, colour-shifted, blurred and noisy (a real camera). A model trained on
the source alone therefore loses accuracy on the target, while the label statistics stay the same.
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..testing import street_scene
from ..types import IGNORE
from . import classes
from .transforms import normalize

DOMAINS = ("source", "target")

# The target's colours: the source palette pushed through a channel mix (a hue rotation with desaturation), a
# colour cast and a lower exposure, so several classes move towards another class's source colour.
_TARGET_MIX = torch.tensor([[0.25, 0.60, 0.15], [0.15, 0.25, 0.60], [0.60, 0.15, 0.25]])
_STYLE = {
    "source": {"gain": 1.0, "cast": (0.0, 0.0, 0.0), "tex_amp": 0.10, "tex_freq": 1.0, "blur": 0.0,
               "noise": 0.01, "light": (1.05, 0.9)},
    "target": {"gain": 0.75, "cast": (0.06, 0.05, 0.12), "tex_amp": 0.22, "tex_freq": 2.3, "blur": 1.2,
               "noise": 0.06, "light": (0.8, 1.05)},
}


def _palette(domain: str) -> Tensor:
    base = torch.tensor(classes.CITYSCAPES_PALETTE, dtype=torch.float32) / 255.0
    if domain == "source":
        return base
    style = _STYLE[domain]
    return (base @ _TARGET_MIX.T * style["gain"] + torch.tensor(style["cast"])).clamp(0, 1)


def _class_textures(domain: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-class texture amplitude and spatial frequencies (fixed per domain)."""
    gen = torch.Generator().manual_seed(1 + DOMAINS.index(domain))
    amp = _STYLE[domain]["tex_amp"] * (0.5 + torch.rand(19, generator=gen))
    fx = _STYLE[domain]["tex_freq"] * (2 + 10 * torch.rand(19, generator=gen))
    fy = _STYLE[domain]["tex_freq"] * (2 + 10 * torch.rand(19, generator=gen))
    return amp, fx, fy


def _gaussian_blur(img: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    img = F.pad(img[None], (radius, radius, radius, radius), mode="replicate")
    img = F.conv2d(img, k, groups=3)
    return F.conv2d(img, k.transpose(-1, -2), groups=3)[0]


class SyntheticScenes(Dataset):
    """Street-like scenes with pixel labels, deterministic per ``(seed, index)``; no files needed.

    Args:
        domain: "source" or "target" (same layout statistics, different appearance).
        num_classes: class protocol of the labels, 19, 16 or 13 (classes outside it become IGNORE).
        size: (H, W) of every scene, or one int for square scenes.
        seed: selects the set of scenes; the two domains draw different scenes for the same seed.
        length: number of scenes.
        normalization: "imagenet" or "caffe", as for the real datasets.

    Shapes: ``dataset[i]`` -> image (3, H, W) float32 (normalised), label (H, W) int64, name str;
    :meth:`render` gives the raw RGB in [0, 255] and the Cityscapes train-id label.
    """

    def __init__(self, domain: str = "source", num_classes: int = 19, size: int | tuple[int, int] = (64, 128),
                 seed: int = 0, length: int = 64, normalization: str = "imagenet") -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) < 8:
            raise ValueError(f"size must be (H, W) with both at least 8, got {size}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.lut = torch.from_numpy(classes.trainid_lut(num_classes)).long()
        normalize(torch.zeros(3, 1, 1), normalization)
        self.domain, self.num_classes, self.size = domain, num_classes, (int(size[0]), int(size[1]))
        self.seed, self.length, self.normalization = int(seed), length, normalization
        self.class_names = classes.class_names(num_classes)
        self._palette = _palette(domain)
        self._amp, self._fx, self._fy = _class_textures(domain)

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> torch.Generator:
        # CPU generators keep 32 bits of a seed, so (seed, domain, index) is hashed into 32 bits; the domain in
        # the key keeps source and target scenes apart.
        key = hashlib.blake2b(f"{self.seed}/{self.domain}/{index}".encode(), digest_size=4).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little"))

    def render(self, index: int) -> tuple[Tensor, Tensor]:
        """Scene ``index``: raw RGB and its label in Cityscapes train ids (IGNORE on the ego vehicle).

        Shapes: returns rgb (3, H, W) float32 in [0, 255] and label (H, W) int64.
        """
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        H, W = self.size
        gen = self._generator(index)
        label = street_scene(H, W, gen)
        style = _STYLE[self.domain]
        known = label.clamp(max=18)  # the ego vehicle (IGNORE) is drawn dark below
        # Per-scene colour jitter per class, so colour alone is a noisy cue.
        colours = (self._palette + 0.05 * torch.randn(19, 3, generator=gen)).clamp(0, 1)
        img = colours[known].permute(2, 0, 1)
        ys = torch.linspace(0, 1, H).view(H, 1)
        xs = torch.linspace(0, 1, W).view(1, W)
        phase = 2 * math.pi * torch.rand(19, generator=gen)
        waves = torch.sin(2 * math.pi * (self._fx[known] * xs + self._fy[known] * ys) + phase[known])
        coarse = torch.randn(1, 1, H // 8 + 2, W // 8 + 2, generator=gen)
        grain = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        img = img * (1 + self._amp[known] * (0.6 * waves + 0.6 * grain))
        top, bottom = style["light"]  # illumination falls off from top to bottom differently per domain
        exposure = 1 + 0.1 * (2 * float(torch.rand((), generator=gen)) - 1)
        img = img * (top + (bottom - top) * ys) * exposure
        img = torch.where(label == IGNORE, torch.full_like(img, 0.08), img)
        if style["blur"] > 0:
            img = _gaussian_blur(img, style["blur"] * max(W, H) / 128)
        img = img + style["noise"] * torch.randn(img.shape, generator=gen)
        return (img.clamp(0, 1) * 255.0), label

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        rgb, label = self.render(index)
        return normalize(rgb, self.normalization), self.lut[label], f"{self.domain}_{self.seed}_{index:05d}"
