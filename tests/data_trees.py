"""Generators of miniature dataset trees in the standard layouts, for the loader and evaluation tests."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_rgb(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def write_ids(path: Path, ids: np.ndarray, palette_mode: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8))
    if palette_mode:  # GTA5 ships palette PNGs whose indices are the label ids
        img = img.convert("P")
        img.putpalette(list(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8)))
    img.save(path)


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def write_png16(path: Path, arr: np.ndarray) -> None:
    """An RGB 16-bit PNG whose rows cycle through the five PNG filter types (as encoders choose them)."""
    height, width, _ = arr.shape
    data = arr.astype(">u2").view(np.uint8).reshape(height, width * 6).astype(np.int64)
    bpp, rows = 6, []
    for y in range(height):
        cur = data[y]
        prev = data[y - 1] if y else np.zeros_like(cur)
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        kind = y % 5
        pred = [np.zeros_like(cur), left, prev, (left + prev) // 2, _paeth(left, prev, upleft)][kind]
        rows.append(bytes([kind]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))


def id_map(height: int, width: int, values: np.ndarray, seed: int) -> np.ndarray:
    """A label map holding every value of ``values`` at least once, the rest random among them."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(values, size=height * width)
    ids[: len(values)] = values
    return ids.reshape(height, width)


def gta5_tree(root: Path, n: int = 2, height: int = 12, width: int = 20) -> dict[str, np.ndarray]:
    labels = {}
    for i in range(n):
        name = f"{i + 1:05d}.png"
        write_rgb(root / "images" / name, height, width, i)
        labels[name] = id_map(height, width, np.arange(35), i)
        write_ids(root / "labels" / name, labels[name], palette_mode=True)
    (root / "train.txt").write_text("".join(f"{name}\n" for name in labels))
    return labels


def synthia_tree(root: Path, n: int = 2, height: int = 12, width: int = 20) -> dict[str, np.ndarray]:
    labels = {}
    for i in range(n):
        name = f"{i:07d}.png"
        write_rgb(root / "RGB" / name, height, width, i)
        ids = id_map(height, width, np.arange(23), i)
        instance = np.random.default_rng(i).integers(0, 4000, (height, width))  # 16-bit instance channel
        write_png16(root / "GT" / "LABELS" / name, np.stack([ids, instance, np.zeros_like(ids)], -1))
        labels[name] = ids
    return labels


def cityscapes_tree(root: Path, split: str = "val", cities: tuple[str, ...] = ("aachen", "bonn"),
                    height: int = 16, width: int = 32) -> dict[str, np.ndarray]:
    labels = {}
    for c, city in enumerate(cities):
        for k in range(2):
            stem = f"{city}_{c:06d}_{k:06d}"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", height, width, 10 * c + k)
            ids = id_map(height, width, np.arange(-1, 34) % 256, 10 * c + k)
            write_ids(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            labels[f"{stem}_leftImg8bit.png"] = ids
    return labels


def crosscity_tree(root: Path, city: str = "Rome", height: int = 16, width: int = 32) -> dict[str, np.ndarray]:
    """Train images as JPEG and PNG; test labels in Cityscapes label ids, as the released files hold them."""
    labels = {}
    for k in range(3):
        write_rgb(root / city / "Images" / "Train" / f"train_{k:03d}.{'jpg' if k else 'png'}", height, width, k)
    for k in range(2):
        name = f"pano_{k:05d}"
        write_rgb(root / city / "Images" / "Test" / f"{name}.png", height, width, 100 + k)
        ids = id_map(height, width, np.arange(35), k)
        write_ids(root / city / "Labels" / "Test" / f"{name}_eval.png", ids)
        labels[f"{name}.png"] = ids
    return labels


def dataset_tree(dataset: str, root: Path, splits: tuple[str, ...], height: int, width: int,
                 city: str | None = None) -> None:
    """A miniature tree of ``dataset`` (a name of ``ssfdan_ext.data.DATASETS``) holding ``splits``, as a config's
    ``source_root``/``target_root`` expects it.

    Shapes: images (height, width).
    """
    if dataset == "gta5":  # 'all' lists images/, other splits read <split>.txt
        gta5_tree(root, height=height, width=width)
    elif dataset == "synthia":
        synthia_tree(root, height=height, width=width)
    elif dataset == "cityscapes":
        for split in dict.fromkeys(splits):
            cityscapes_tree(root, split, height=height, width=width)
    elif dataset == "crosscity":  # train (unlabelled) and test both
        crosscity_tree(root, city or "Rome", height=height, width=width)
    else:
        raise ValueError(f"no miniature tree for dataset {dataset!r}")
