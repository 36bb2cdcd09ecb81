"""Class tables: the Cityscapes train ids, the 16- and 13-class protocols, the official id maps and the palette.

Every class space is a tuple of Cityscapes-19 train ids: the 19-class protocol is ``range(19)``, the Synthia
16-class protocol drops terrain, truck and train, the 13-class protocol (Synthia 13 and NTHU Cross-City) also
drops wall, fence and pole. A label in a protocol holds the *index* into that tuple, so a 13-class label 3 is
traffic light (train id 6).
"""
from __future__ import annotations

import numpy as np

from ..types import IGNORE

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

PROTOCOLS: dict[int, tuple[int, ...]] = {
    19: tuple(range(19)),
    16: (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    13: (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}
"""Cityscapes train ids of each evaluation protocol, in index order."""

# cityscapesScripts labels.py: label id -> train id for the 19 evaluated classes; every other id is ignored.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# Synthia class id (first channel of GT/LABELS) -> Cityscapes train id, as in the ADVENT loader. Terrain (16),
# truck (18) and train (20) matter only to the 19-class protocol; lanemarking (22), parking-slot (13) and
# road-work (14) are ignored.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
"""RGB colour of each Cityscapes train id (cityscapesScripts)."""


def protocol_ids(num_classes: int) -> tuple[int, ...]:
    """The Cityscapes train ids of the ``num_classes`` protocol (19, 16 or 13).

    Shapes: returns a tuple of ``num_classes`` ints.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes not in PROTOCOLS:
        raise ValueError(f"num_classes must be one of {sorted(PROTOCOLS)} (a class protocol), got {num_classes}")
    return PROTOCOLS[num_classes]


def class_names(num_classes: int) -> tuple[str, ...]:
    """Class names of the ``num_classes`` protocol, in index order.

    Shapes: returns a tuple of ``num_classes`` strings.
    """
    return tuple(CITYSCAPES_CLASSES[t] for t in protocol_ids(num_classes))


def palette(num_classes: int) -> np.ndarray:
    """RGB colours of the ``num_classes`` protocol's classes (the Cityscapes colours of their train ids).

    Shapes: returns (num_classes, 3) uint8.
    """
    return np.asarray([CITYSCAPES_PALETTE[t] for t in protocol_ids(num_classes)], dtype=np.uint8)


def _lut(pairs: dict[int, int]) -> np.ndarray:
    table = np.full(256, IGNORE, dtype=np.uint8)
    for src, dst in pairs.items():
        table[src] = dst
    return table


def trainid_lut(num_classes: int) -> np.ndarray:
    """Lookup table from Cityscapes train ids (0..18, 255) to indices of the ``num_classes`` protocol.

    Shapes: returns (256,) uint8; ids outside the protocol map to IGNORE.
    """
    return _lut({t: i for i, t in enumerate(protocol_ids(num_classes))})


def cityscapes_id_lut(num_classes: int = 19) -> np.ndarray:
    """Lookup table from Cityscapes label ids (``*_gtFine_labelIds.png``, GTA5 labels) to protocol indices.

    Shapes: returns (256,) uint8.
    """
    return trainid_lut(num_classes)[_lut(CITYSCAPES_ID_TO_TRAINID)]


def synthia_id_lut(num_classes: int = 16) -> np.ndarray:
    """Lookup table from Synthia class ids to protocol indices (19, 16 or 13).

    Shapes: returns (256,) uint8.
    """
    return trainid_lut(num_classes)[_lut(SYNTHIA_ID_TO_TRAINID)]


def index_lut(from_classes: int, to_classes: int) -> np.ndarray:
    """Lookup table from indices of one protocol to indices of another (IGNORE where the class is absent).

    Shapes: returns (256,) uint8.
    """
    return trainid_lut(to_classes)[_lut(dict(enumerate(protocol_ids(from_classes))))]
