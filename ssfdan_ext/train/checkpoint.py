"""Training checkpoints: atomic writes, the last K kept, the best by validation mIoU, RNG states."""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")


def atomic_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``.

    A run killed mid-write leaves the previous file intact (the rename is atomic on POSIX file systems).

    Shapes: n/a.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) random states.

    Shapes: n/a.
    """
    # NumPy's key array is stored as a tensor, so that the checkpoint loads with torch.load(weights_only=True).
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss,
                                                    gauss), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned.

    Shapes: n/a.
    """
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """``ckpt_<iteration>.pt`` files in ``directory``, keeping the newest ``keep_last``, plus ``best.pt``.

    Shapes: n/a.
    """

    def __init__(self, directory: str | Path, keep_last: int = 2) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Existing iteration checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest iteration checkpoint, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def save(self, state: dict, iteration: int) -> Path:
        """Write ``state`` as ``ckpt_<iteration>.pt`` and delete all but the newest ``keep_last``."""
        path = atomic_save(state, self.directory / f"ckpt_{iteration:08d}.pt")
        for old in self.checkpoints()[:-self.keep_last] if self.keep_last > 0 else []:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict) -> Path:
        """Write ``state`` as ``best.pt`` (the best validation mIoU so far)."""
        return atomic_save(state, self.directory / "best.pt")

    @staticmethod
    def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
        """Read a training checkpoint (plain tensors and Python values: it loads with ``weights_only``)."""
        return torch.load(path, map_location=map_location, weights_only=True)
