"""A PNG a user can open after a run: held-out target scenes with their ground truth and the model's prediction.

Drawn with Pillow (already a dependency, unlike matplotlib): one row per scene (image | ground truth |
prediction, in the protocol's Cityscapes colours), then a legend of every class of the protocol.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import classes, denormalize
from ..evaluate import colorize

_PAD = 4


def _upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    # Nearest neighbour: small synthetic scenes stay readable and label edges stay sharp.
    return arr.repeat(factor, axis=0).repeat(factor, axis=1)


@torch.no_grad()
def save_target_samples(model: nn.Module, dataset: Dataset, path: str | Path, count: int, num_classes: int,
                        class_names: Sequence[str], device: torch.device, normalization: str = "imagenet") -> Path:
    """Write ``count`` scenes of ``dataset`` (the first ones) as rows image | ground truth | prediction, with a
    colour legend, to the PNG ``path``; returns the path.

    Shapes: dataset items (image (3, H, W) normalised, label (H, W), name); the model returns (logits, features).
    """
    from PIL import Image, ImageDraw

    was = model.training
    model.eval()
    rows = []
    for i in range(min(count, len(dataset))):
        image, label, _ = dataset[i]
        logits = model(image[None].to(device))[0]
        pred = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=True)[0]
        rgb = denormalize(image, normalization).clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
        if rgb.shape[:2] != tuple(label.shape):
            rgb = np.asarray(Image.fromarray(rgb).resize(label.shape[::-1], Image.BILINEAR))
        maps = [np.asarray(colorize(x, num_classes).convert("RGB")) for x in (label, pred.argmax(0))]
        rows.append((rgb, *maps))
    model.train(was)
    if not rows:
        raise ValueError("the dataset holds no scenes to draw")
    h, w = rows[0][0].shape[:2]
    factor = max(1, 256 // w)
    h, w = h * factor, w * factor
    header, swatch, per_line = 16, 14, 4
    legend_rows = -(-(num_classes + 1) // per_line)
    width = 3 * w + 4 * _PAD
    height = header + len(rows) * (h + _PAD) + _PAD + legend_rows * (swatch + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, title in enumerate(("target image", "ground truth", "prediction")):
        draw.text((_PAD + k * (w + _PAD), 2), title, fill=(0, 0, 0))
    for r, panels in enumerate(rows):
        for k, arr in enumerate(panels):
            canvas.paste(Image.fromarray(_upscale(np.ascontiguousarray(arr), factor)),
                         (_PAD + k * (w + _PAD), header + r * (h + _PAD)))
    colours = classes.palette(num_classes)
    top = header + len(rows) * (h + _PAD) + _PAD
    cell = (width - _PAD) // per_line
    entries = [(str(n), tuple(int(v) for v in colours[c])) for c, n in enumerate(class_names)]
    for c, (name, colour) in enumerate(entries + [("ignored", (0, 0, 0))]):
        x, y = _PAD + (c % per_line) * cell, top + (c // per_line) * (swatch + _PAD)
        draw.rectangle((x, y, x + swatch, y + swatch), fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y + 1), str(name), fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
