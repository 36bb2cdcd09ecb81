"""Reading 16-bit PNG label files exactly (Synthia's GT/LABELS) with OpenCV.

Pillow has no 16-bit multi-channel image mode: it decodes a 16-bit RGB PNG to 8-bit "RGB", keeping only the high
byte of each sample, which is 0 for every Synthia class id. ``cv2.imread(..., IMREAD_UNCHANGED)`` returns the
full 16-bit samples (about 20 ms per 760x1280 frame); OpenCV is the optional ``synthia`` extra
(``opencv-python-headless``), imported only when a label is read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_png(path: Path | str) -> np.ndarray:
    """Read a PNG at full bit depth (8 or 16 bits per sample).

    Shapes: returns (H, W, C) int64 with C the file's channels in RGB(A) order.
    """
    path = Path(path)
    try:
        import cv2  # type: ignore[import-not-found]
    except ImportError:
        raise ImportError(f"reading the 16-bit PNG {path} needs OpenCV (Pillow keeps only the high byte of "
                          "16-bit RGB samples): pip install opencv-python-headless, or the package's "
                          "'synthia' extra") from None
    if not path.is_file():
        raise FileNotFoundError(f"PNG file {path} does not exist")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"could not read {path} as an image (OpenCV returned nothing)")
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[2] >= 3:  # OpenCV returns BGR(A)
        arr = arr[..., [2, 1, 0] + list(range(3, arr.shape[2]))]
    return arr.astype(np.int64)
