"""Datasets for domain-adaptive segmentation: GTA5, Synthia, Cityscapes, NTHU Cross-City and synthetic scenes.

Every dataset yields ``(image, label, name)``: image (3, H, W) float32 normalised for the backbone, label
(H, W) int64 with protocol class indices or IGNORE (255), and a name for saved predictions.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from . import classes
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, PROTOCOLS, class_names, palette, protocol_ids
from .datasets import CROSSCITY_CITIES, GTA5, Cityscapes, CrossCity, SegmentationDataset, Synthia
from .png16 import read_png
from .synthetic import SyntheticScenes
from .transforms import NORMALIZATIONS, augment, denormalize, normalize

DATASETS = {"gta5": GTA5, "synthia": Synthia, "cityscapes": Cityscapes, "crosscity": CrossCity,
            "synthetic": SyntheticScenes}


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: object) -> Dataset:
    """Build a dataset by name: "gta5", "synthia", "cityscapes", "crosscity" or "synthetic".

    For "synthetic" ``root`` is unused and ``split`` selects the domain ("train"/"source" -> source scenes,
    "val"/"test"/"target" -> target scenes) unless ``domain`` is given; ``kwargs`` go to the constructor
    (e.g. ``num_classes``, ``size``, ``crop``, ``city``, ``resize_label``).

    Shapes: items are (image (3, H, W) float32, label (H, W) int64, name).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    if name == "synthetic":
        domains = {"train": "source", "source": "source", "val": "target", "test": "target", "target": "target"}
        if "domain" not in kwargs:
            if split not in domains:
                raise ValueError(f"split for synthetic scenes must be one of {sorted(domains)}, got {split!r}")
            kwargs["domain"] = domains[split]
        return SyntheticScenes(**kwargs)
    if root is None:
        raise ValueError(f"root is required for dataset {name!r}")
    return DATASETS[name](root, split=split, **kwargs)


__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CROSSCITY_CITIES", "DATASETS", "GTA5", "NORMALIZATIONS",
    "PROTOCOLS", "Cityscapes", "CrossCity", "SegmentationDataset", "Synthia", "SyntheticScenes", "augment",
    "build_dataset", "class_names", "classes", "denormalize", "normalize", "palette", "protocol_ids", "read_png",
]
