"""Procedural street scenes in two domains that share their layouts but not their looks.

Layouts come from :func:`ssfdan_ext.testing.street_scene` (sky, buildings, road, sidewalks, poles with signs
and lights, vehicles, people...), drawn from one distribution for both domains. Each domain renders the classes
with its own palette, textures, illumination, blur and sensor noise: the "source" is bright, saturated and
sharp (a game engine); the "target" is dim, colour-shifted, blurred and noisy (a real camera). A model trained on
the source alone therefore loses accuracy on the target, while the label statistics stay the same.

``shift="class"`` makes the opposite case, the one SS-D is built for: a shift that differs by class and a label
distribution that differs between the domains (:data:`CLASS_SHIFT` holds every parameter). Both domains keep the
source's global rendering (illumination, no blur, low noise), so there is no global appearance change left to
remove; instead (a) each class gets its own target transform drawn from ``shift_seed`` (colour offset, brightness,
texture amplitude and frequency), and three pairs of classes exchange their source looks in the target (a target
car looks like a source building and the other way round; the same for vegetation/person and sidewalk/sky), and
(b) target layouts come from the same generator with a higher horizon (less sky and building) and more vehicles
and people. Aligning the marginal feature distributions then pulls the wrong classes together.
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
SHIFTS = ("none", "class")

# The class-conditional shift (shift="class"), fixed before any training result was seen. Train ids:
# 1 sidewalk, 2 building, 8 vegetation, 10 sky, 11 person, 13 car (all in the 13-, 16- and 19-class protocols).
CLASS_SHIFT = {
    "swaps": ((2, 13), (8, 11), (1, 10)),  # building <-> car, vegetation <-> person, sidewalk <-> sky
    "colour_sd": 0.12,  # other classes: a per-class colour offset (per channel, 0-1 scale) ...
    "brightness": (0.7, 1.3),  # ... a per-class brightness factor ...
    "tex_amp": (0.5, 2.5),  # ... and texture amplitude and frequency factors, uniform in these ranges
    "tex_freq": (0.5, 2.0),
    # Target layouts (street_scene parameters; the source keeps horizon (0.38, 0.48), vehicles [2, 8), people [1, 6)).
    "target_layout": {"horizon": (0.28, 0.36), "vehicles": (5, 12), "people": (4, 10)},
}

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


def _class_shift_target(shift_seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The target's palette and textures under the class-conditional shift: (palette, amp, fx, fy) per class."""
    palette = _palette("source")
    amp, fx, fy = _class_textures("source")
    p = CLASS_SHIFT
    gen = torch.Generator().manual_seed(10_007 + shift_seed)
    uniform = lambda lo_hi: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(19, generator=gen)  # noqa: E731
    offset = p["colour_sd"] * torch.randn(19, 3, generator=gen)
    bright, a_mult, f_mult = uniform(p["brightness"]), uniform(p["tex_amp"]), uniform(p["tex_freq"])
    t_palette = ((palette + offset) * bright[:, None]).clamp(0, 1)
    t_amp, t_fx, t_fy = amp * a_mult, fx * f_mult, fy * f_mult
    for a, b in p["swaps"]:  # what a looks like in the source, b looks like in the target, and vice versa
        for dst, src in ((a, b), (b, a)):
            t_palette[dst], t_amp[dst], t_fx[dst], t_fy[dst] = palette[src], amp[src], fx[src], fy[src]
    return t_palette, t_amp, t_fx, t_fy


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
        shift: "none" (the global appearance change above, same layouts) or "class" (class-conditional
            appearance and label distribution shift, :data:`CLASS_SHIFT`); the source domain is the same for both.
        shift_seed: draws the per-class target transforms of ``shift="class"`` (independent of ``seed``, so
            training and held-out target scenes share them).

    Shapes: ``dataset[i]`` -> image (3, H, W) float32 (normalised), label (H, W) int64, name str;
    :meth:`render` gives the raw RGB in [0, 255] and the Cityscapes train-id label.
    """

    def __init__(self, domain: str = "source", num_classes: int = 19, size: int | tuple[int, int] = (64, 128),
                 seed: int = 0, length: int = 64, normalization: str = "imagenet", shift: str = "none",
                 shift_seed: int = 0) -> None:
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if shift not in SHIFTS:
            raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
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
        self.shift, self.shift_seed = shift, int(shift_seed)
        self._style, self._layout = domain, {}
        self._palette = _palette(domain)
        self._amp, self._fx, self._fy = _class_textures(domain)
        if shift == "class" and domain == "target":
            self._style, self._layout = "source", CLASS_SHIFT["target_layout"]
            self._palette, self._amp, self._fx, self._fy = _class_shift_target(self.shift_seed)

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
        label = street_scene(H, W, gen, **self._layout)
        style = _STYLE[self._style]
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
