"""Loaders for GTA5, Synthia-Rand-Cityscapes, Cityscapes and NTHU Cross-City from their standard layouts.

Every dataset yields ``(image, label, name)``: the image normalised for the backbone, (3, H, W) float32; the
label (H, W) int64 holding indices of the chosen class protocol (19, 16 or 13) or IGNORE; the file's name.
Unlabelled images (Cross-City train) carry an all-IGNORE label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..types import IGNORE
from . import classes
from .png16 import read_png
from .transforms import augment, load_image, load_label_array, normalize, resize_pair

Item = tuple[Path, "Path | None", str]


class SegmentationDataset(Dataset):
    """Common machinery: the item list, resizing, augmentation and normalisation.

    ``size`` = (H, W) resizes every image (bilinear); the label follows by nearest neighbour unless
    ``resize_label`` is False (evaluation at the label's full resolution). ``crop`` = (H, W), ``scale`` =
    (low, high) and ``flip`` are the random augmentations, applied after resizing.

    Shapes: ``dataset[i]`` -> image (3, H, W) float32, label (H, W) int64, name str.
    """

    LAYOUT = ""
    PROTOCOLS: tuple[int, ...] = (19, 16, 13)
    SPLITS: tuple[str, ...] | None = None  # the splits the layout has; None: any split list file

    def __init__(self, root: str | Path, split: str, num_classes: int, size: tuple[int, int] | None = None,
                 crop: tuple[int, int] | None = None, scale: tuple[float, float] | None = None,
                 flip: bool = False, normalization: str = "imagenet", resize_label: bool = True) -> None:
        if self.SPLITS is not None and split not in self.SPLITS:
            raise ValueError(f"split for {type(self).__name__} must be one of {list(self.SPLITS)}, got {split!r}")
        if num_classes not in self.PROTOCOLS:
            raise ValueError(f"num_classes for {type(self).__name__} must be one of {list(self.PROTOCOLS)}, "
                             f"got {num_classes}")
        normalize(torch.zeros(3, 1, 1), normalization)  # validates the name early
        self.root, self.split, self.num_classes = Path(root), split, num_classes
        self.size, self.crop, self.scale, self.flip = size, crop, scale, flip
        self.normalization, self.resize_label = normalization, resize_label
        if not resize_label and self._augments:
            raise ValueError("resize_label=False (labels at full resolution, for evaluation) cannot be combined "
                             f"with crop/scale/flip augmentation, got crop={crop}, scale={scale}, flip={flip}")
        self.class_names = classes.class_names(num_classes)
        self._require(self.root, "dataset root")
        self.items: list[Item] = self._list_items()
        if not self.items:
            raise FileNotFoundError(f"no images found for split {split!r} under {self.root}; "
                                    f"expected layout:\n{self.LAYOUT}")
        for image_path, label_path, _ in self.items:
            self._require(image_path, "image")
            if label_path is not None:
                self._require(label_path, "label")

    @property
    def _augments(self) -> bool:
        return self.crop is not None or self.scale is not None or bool(self.flip)

    def _require(self, path: Path, what: str) -> None:
        if not path.exists():
            raise FileNotFoundError(f"missing {what} {path}; expected layout under {self.root}:\n{self.LAYOUT}")

    def _read_list(self, path: Path) -> list[str]:
        self._require(path, "split list")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]

    def _list_items(self) -> list[Item]:
        raise NotImplementedError

    def _read_label(self, path: Path) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, str]:
        image_path, label_path, name = self.items[index]
        image = load_image(image_path)
        if label_path is None:
            label = np.full((image.size[1], image.size[0]), IGNORE, dtype=np.int64)
        else:
            label = self._read_label(label_path)
            # A label whose size differs from its image's (reported for a few GTA5 frames) is fine when both are
            # resized to ``size`` (as the usual loaders do) or scored at the label's resolution; not otherwise.
            absorbed = self.size is not None or not self.resize_label
            if label.shape != (image.size[1], image.size[0]) and not absorbed:
                raise ValueError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                                 f"{image_path} is {image.size[0]}x{image.size[1]}; give size=(H, W) to resize "
                                 "both")
        image, label = resize_pair(image, label, self.size, self.resize_label)
        rgb = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1)
        x, y = normalize(rgb, self.normalization), torch.from_numpy(np.ascontiguousarray(label))
        if self._augments:
            x, y = augment(x, y, self.crop, self.scale, self.flip)
        return x, y, name


class _ListedDataset(SegmentationDataset):
    """A dataset whose images an optional list file names (``list_path``), with labels in Cityscapes label ids
    mapped to the train ids of the protocol (``_lut``; a subclass with other ids replaces it).

    ``split``, ``num_classes`` and ``size`` default to the subclass's ``SPLIT``, first of ``PROTOCOLS`` and ``SIZE``
    (``size=None`` keeps every image at its own size).
    """

    SPLIT: str = "train"
    SIZE: tuple[int, int] | None = None

    def __init__(self, root: str | Path, split: str | None = None, num_classes: int | None = None,
                 size: tuple[int, int] | None | str = "default", list_path: str | Path | None = None, **kw) -> None:
        self.list_path = list_path
        super().__init__(root, self.SPLIT if split is None else split,
                         self.PROTOCOLS[0] if num_classes is None else num_classes,
                         self.SIZE if isinstance(size, str) and size == "default" else size, **kw)
        self._lut = classes.cityscapes_id_lut(self.num_classes)

    def _read_label(self, path: Path) -> np.ndarray:
        return self._lut[np.clip(load_label_array(path), 0, 255)].astype(np.int64)


class GTA5(_ListedDataset):
    """GTA5 (Playing for Data): labels in Cityscapes label ids, mapped to the 19 train ids (or 16/13).

    Shapes: as :class:`SegmentationDataset`; default size (720, 1280).
    """

    LAYOUT = ("  images/<name>.png          RGB frames (e.g. 00001.png)\n"
              "  labels/<name>.png          Cityscapes label ids (palette or grey PNG)\n"
              "  <split>.txt                one file name per line (e.g. train.txt); split 'all' lists images/")
    SPLIT, SIZE = "all", (720, 1280)

    def _names(self, folder: str) -> list[str]:
        if self.list_path is None and self.split == "all":
            self._require(self.root / folder, "image folder")
            return sorted(p.name for p in (self.root / folder).glob("*.png"))
        return self._read_list(Path(self.list_path) if self.list_path else self.root / f"{self.split}.txt")

    def _list_items(self) -> list[Item]:
        return [(self.root / "images" / n, self.root / "labels" / n, n) for n in self._names("images")]


class Synthia(GTA5):
    """Synthia-Rand-Cityscapes: first channel of the 16-bit GT/LABELS PNGs holds the Synthia class id.

    Shapes: as :class:`SegmentationDataset`; default size (760, 1280), 16 classes.
    """

    LAYOUT = ("  RGB/<name>.png             RGB frames (e.g. 0000000.png)\n"
              "  GT/LABELS/<name>.png       16-bit PNG, channel 0 = Synthia class id\n"
              "  <split>.txt                one file name per line; split 'all' lists RGB/")
    PROTOCOLS, SIZE = (16, 13, 19), (760, 1280)

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._lut = classes.synthia_id_lut(self.num_classes)

    def _list_items(self) -> list[Item]:
        return [(self.root / "RGB" / n, self.root / "GT" / "LABELS" / n, n) for n in self._names("RGB")]

    def _read_label(self, path: Path) -> np.ndarray:
        return self._lut[np.clip(read_png(path)[..., 0], 0, 255)].astype(np.int64)


class Cityscapes(_ListedDataset):
    """Cityscapes fine annotations (train or val), label ids mapped to the 19 train ids (or 16/13).

    Shapes: as :class:`SegmentationDataset`; default size (512, 1024).
    """

    LAYOUT = ("  leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png\n"
              "  gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png\n"
              "  optional list file: lines '<city>/<city>_<seq>_<frame>_leftImg8bit.png'")
    SPLITS, SIZE = ("train", "val"), (512, 1024)

    def _list_items(self) -> list[Item]:
        image_dir = self.root / "leftImg8bit" / self.split
        if self.list_path is not None:
            rels = self._read_list(Path(self.list_path))
        else:
            self._require(image_dir, "image folder")
            rels = sorted(str(p.relative_to(image_dir)) for p in image_dir.glob("*/*_leftImg8bit.png"))
        label_dir = self.root / "gtFine" / self.split
        return [(image_dir / r, label_dir / r.replace("_leftImg8bit.png", "_gtFine_labelIds.png"), Path(r).name)
                for r in rels]


CROSSCITY_CITIES = ("Rome", "Rio", "Tokyo", "Taipei")


class CrossCity(SegmentationDataset):
    """NTHU Cross-City: per city 3,200 unlabelled train images and 100 labelled test images (13 classes).

    ``label_encoding`` says what the ``*_eval.png`` files hold: "labelid" (Cityscapes label ids, as the
    usual Cross-City loaders read them; the default), "trainid" (Cityscapes train ids) or "index13"
    (indices 0..12 of the 13-class protocol, 255 ignore). Images may be PNG or JPEG.

    Shapes: as :class:`SegmentationDataset`; default size (512, 1024), 13 classes.
    """

    LAYOUT = ("  <City>/Images/Train/<name>.jpg|png  unlabelled train images (City: Rome, Rio, Tokyo, Taipei)\n"
              "  <City>/Images/Test/<name>.png|jpg   test images\n"
              "  <City>/Labels/Test/<name>_eval.png  test labels (Cityscapes label ids; see label_encoding)")
    PROTOCOLS, SPLITS = (13,), ("train", "test")  # train is unlabelled

    def __init__(self, root: str | Path, city: str = "Rome", split: str = "train", num_classes: int = 13,
                 size: tuple[int, int] | None = (512, 1024), label_encoding: str = "labelid", **kw) -> None:
        if city not in CROSSCITY_CITIES:
            raise ValueError(f"city must be one of {CROSSCITY_CITIES}, got {city!r}")
        luts = {"index13": classes.index_lut(13, 13), "trainid": classes.trainid_lut(13),
                "labelid": classes.cityscapes_id_lut(13)}
        if label_encoding not in luts:
            raise ValueError(f"label_encoding must be one of {sorted(luts)}, got {label_encoding!r}")
        self.city, self._lut = city, luts[label_encoding]
        super().__init__(root, split, num_classes, size, **kw)

    def _list_items(self) -> list[Item]:
        folder = self.root / self.city / "Images" / self.split.capitalize()
        self._require(folder, "image folder")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if self.split == "train":
            return [(p, None, p.name) for p in images]
        labels = self.root / self.city / "Labels" / "Test"
        return [(p, labels / f"{p.stem}_eval.png", p.name) for p in images]

    def _read_label(self, path: Path) -> np.ndarray:
        return self._lut[np.clip(load_label_array(path), 0, 255)].astype(np.int64)
