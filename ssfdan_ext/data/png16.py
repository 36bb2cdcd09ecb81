"""Reading 16-bit PNG label files exactly (Synthia's GT/LABELS), which Pillow truncates to their high byte.

OpenCV is used when installed (fast); otherwise a small NumPy decoder handles non-interlaced 8/16-bit grey,
grey+alpha, RGB and RGBA PNGs. Rows filtered with Average or Paeth are undone pixel by pixel in Python, so the
fallback takes about a second per Synthia frame: install ``opencv-python-headless`` for training on Synthia.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels


def _unfilter(data: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    rows = np.frombuffer(data, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, raw = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = raw.copy()
        elif kind == 1:  # Sub: a running sum per byte lane, modulo 256
            lanes = np.zeros(-(-stride // bpp) * bpp, dtype=np.uint8)
            lanes[:stride] = raw
            cur = np.cumsum(lanes.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)[:stride]
        elif kind == 2:
            cur = raw + prev
        elif kind in (3, 4):
            cur = raw.astype(np.int64)
            up = prev.astype(np.int64)
            for x in range(stride):
                left = cur[x - bpp] if x >= bpp else 0
                if kind == 3:
                    pred = (left + up[x]) >> 1
                else:
                    upleft = up[x - bpp] if x >= bpp else 0
                    p = left + up[x] - upleft
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - upleft)
                    pred = left if pa <= pb and pa <= pc else up[x] if pb <= pc else upleft
                cur[x] = (cur[x] + pred) & 0xFF
            cur = cur.astype(np.uint8)
        else:
            raise ValueError(f"unknown PNG filter type {kind} in row {y}")
        out[y] = cur
        prev = cur
    return out


def _read_numpy(path: Path) -> np.ndarray:
    blob = path.read_bytes()
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos:pos + 4])
        kind, body = blob[pos + 4:pos + 8], blob[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path} has no IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or depth not in (8, 16) or interlace:
        raise ValueError(f"{path}: only non-interlaced 8/16-bit grey/RGB(A) PNGs are supported "
                         f"(got depth {depth}, colour type {colour}, interlace {interlace})")
    channels, nbytes = _CHANNELS[colour], depth // 8
    bpp = channels * nbytes
    out = _unfilter(zlib.decompress(b"".join(idat)), height, width * bpp, bpp)
    arr = out.view(">u2" if nbytes == 2 else np.uint8).reshape(height, width, channels)
    return arr.astype(np.int64)


def read_png(path: Path | str) -> np.ndarray:
    """Read a PNG at full bit depth.

    Shapes: returns (H, W, C) int64 with C the file's channels in RGB(A) order.
    """
    path = Path(path)
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        return _read_numpy(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"could not read {path} as an image")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[2] >= 3:  # OpenCV returns BGR(A)
        arr = arr[..., [2, 1, 0] + list(range(3, arr.shape[2]))]
    return arr.astype(np.int64)
