"""Training checkpoints: atomic writes with a digest, the last K kept, the best by validation mIoU, RNG states."""
from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..models.verified_io import CheckpointError, read_verified, write_verified

_NAME = re.compile(r"^ckpt_(\d{8})\.pt$")
# What a resumed run reads from a training checkpoint (Trainer.state writes these and more).
_TRAINING_KEYS = ("model", "discriminators", "opt_g", "sched_g", "scaler_g", "scaler_d", "iteration", "rng",
                  "best_miou")


def atomic_save(obj: object, path: str | Path) -> Path:
    """``torch.save`` with a SHA-256 digest trailer to a temporary file in the same folder, flushed to disk, then
    renamed over ``path`` (:func:`ssfdan_ext.models.verified_io.write_verified`).

    A run killed mid-write leaves the previous file intact (the rename is atomic on POSIX file systems) and a
    ``.<name>.<random>.tmp`` file that the next run in the folder removes; a failed write raises
    :class:`CheckpointError` ``cannot write <path>: <reason>``.

    Shapes: n/a.
    """
    return write_verified(obj, path)


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
        """Read a training checkpoint (plain tensors and Python values: it loads with ``weights_only``) after
        verifying its digest; a damaged, truncated, empty or foreign file is a :class:`CheckpointError`."""
        state = read_verified(path, map_location)
        missing = [k for k in _TRAINING_KEYS if k not in state] if isinstance(state, dict) else list(_TRAINING_KEYS)
        if missing:
            raise CheckpointError(f"{path} is not a training checkpoint (it lacks {', '.join(missing)})")
        return state

    def load_newest(self, report: Callable[[str], None] | None = None) -> tuple[Path, dict] | None:
        """The newest checkpoint that reads back intact, as ``(path, state)``; None when there is none at all.

        Each damaged or unreadable newer one is passed to ``report`` by name and skipped; when every one is, a
        :class:`CheckpointError` says so.
        """
        found = self.checkpoints()
        for path in reversed(found):
            try:
                return path, self.load(path, "cpu")
            except CheckpointError as err:
                if report is not None:
                    report(f"warning: {err}; trying the previous checkpoint")
        if found:
            raise CheckpointError(f"resume=true but none of the {len(found)} checkpoints in {self.directory} is "
                                  f"intact ({', '.join(p.name for p in found)}): delete them to start afresh, or "
                                  "choose another out_dir")
        return None
