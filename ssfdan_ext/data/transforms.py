"""Image and label loading, joint resizing / scaling / cropping / flipping, and normalisation.

Random choices draw from torch's global generator, which DataLoader seeds differently in every worker, so
augmentation is reproducible under ``torch.manual_seed`` and independent across workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..types import IGNORE

# Backbone conventions: torchvision ImageNet weights take RGB in [0, 1] normalised by mean/std; the Caffe-era
# DeepLab weights (AdaptSegNet and its descendants) take BGR in [0, 255] minus the mean, without std.
NORMALIZATIONS: dict[str, dict[str, object]] = {
    "imagenet": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "scale": 1 / 255, "bgr": False},
    "caffe": {"mean": (104.00698793, 116.66876762, 122.67891434), "std": (1.0, 1.0, 1.0), "scale": 1.0, "bgr": True},
}


def _check_normalization(normalization: str) -> dict[str, object]:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
    return NORMALIZATIONS[normalization]


def normalize(rgb: Tensor, normalization: str = "imagenet") -> Tensor:
    """Normalise an RGB image with values in [0, 255] for a backbone ("imagenet" or "caffe").

    Shapes: rgb (3, H, W) or (B, 3, H, W) float -> same shape float32.
    """
    cfg = _check_normalization(normalization)
    x = rgb.float() * float(cfg["scale"])
    if cfg["bgr"]:
        x = x.flip(-3)
    mean = torch.tensor(cfg["mean"], dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: Tensor, normalization: str = "imagenet") -> Tensor:
    """Inverse of :func:`normalize`: back to RGB in [0, 255].

    Shapes: (3, H, W) or (B, 3, H, W) -> same shape float32.
    """
    cfg = _check_normalization(normalization)
    mean = torch.tensor(cfg["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg["std"], dtype=torch.float32).view(3, 1, 1)
    rgb = (x.float() * std + mean) / float(cfg["scale"])
    return rgb.flip(-3) if cfg["bgr"] else rgb


def load_image(path: Path) -> "PIL.Image.Image":  # noqa: F821
    """Open an image file as RGB (Pillow).

    Shapes: returns a PIL image of size (W, H), mode RGB.
    """
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def load_label_array(path: Path, channel: int | None = None) -> np.ndarray:
    """Read a label PNG as integers; ``channel`` picks one channel of a multi-channel file (16-bit included).

    Shapes: returns (H, W) int64.
    """
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., 0 if channel is None else channel]
    return arr.astype(np.int64)


def resize_pair(image: "PIL.Image.Image", label: np.ndarray | None, size: tuple[int, int] | None,  # noqa: F821
                resize_label: bool = True) -> tuple["PIL.Image.Image", np.ndarray | None]:  # noqa: F821
    """Resize a PIL image bilinearly and its label by nearest neighbour to ``size = (H, W)``.

    Shapes: label (H0, W0) int64 -> (H, W) int64 (or unchanged when ``resize_label`` is False).
    """
    from PIL import Image

    if size is None:
        return image, label
    size = (int(size[1]), int(size[0]))  # PIL sizes are (W, H)
    if tuple(image.size) != size:
        image = image.resize(size, Image.BILINEAR)
    if label is not None and resize_label and label.shape != (size[1], size[0]):
        lbl = Image.fromarray(label.astype(np.uint8)).resize(size, Image.NEAREST)
        label = np.asarray(lbl).astype(np.int64)
    return image, label


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(()))


def augment(image: Tensor, label: Tensor, crop: tuple[int, int] | None = None,
            scale: tuple[float, float] | None = None, flip: bool = False) -> tuple[Tensor, Tensor]:
    """Random scale, random crop (padding the label with IGNORE) and random horizontal flip.

    ``crop`` is (H, W); ``scale`` a (low, high) range of factors. The image is scaled bilinearly, the label by
    nearest neighbour, so label values stay class ids.

    Shapes: image (3, H, W) float, label (H, W) int64 -> image (3, h, w), label (h, w); (h, w) is the crop size.
    """
    import torch.nn.functional as F

    if scale is not None:
        factor = _uniform(*scale)
        h = max(1, round(image.shape[1] * factor))
        w = max(1, round(image.shape[2] * factor))
        image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
    if crop is not None:
        ch, cw = crop
        pad_h, pad_w = max(ch - image.shape[1], 0), max(cw - image.shape[2], 0)
        if pad_h or pad_w:  # zero image (the normalised mean) and IGNORE label where the crop leaves the picture
            image = F.pad(image, (0, pad_w, 0, pad_h))
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE)
        top = int(torch.randint(0, image.shape[1] - ch + 1, ()))
        left = int(torch.randint(0, image.shape[2] - cw + 1, ()))
        image = image[:, top:top + ch, left:left + cw]
        label = label[top:top + ch, left:left + cw]
    if flip and bool(torch.rand(()) < 0.5):
        image, label = image.flip(-1), label.flip(-1)
    return image.contiguous(), label.contiguous()
