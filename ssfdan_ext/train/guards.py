"""The driver's own errors (one line each, with the exit status ``ssfdan-train`` returns) and the divergence checks.

Exit statuses of ``ssfdan-train``: 0 done; 2 the run cannot start or continue as asked (a bad config, a refused
resume, no intact checkpoint, a checkpoint that cannot be written, ``out_dir`` locked by another run); 3 the run
diverged (a non-finite loss or weight), and no checkpoint of the diverged state was written.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor


class DriverError(RuntimeError):
    """An error the driver reports as one line (no traceback) and exits with :attr:`exit_code`."""

    exit_code = 2


class OutDirLockedError(DriverError):
    """Another run holds the lock on ``out_dir``."""


class DivergenceError(DriverError):
    """A loss or a weight became NaN or infinite."""

    exit_code = 3


LastCheckpoint = Callable[[], Path | None]  # asked only once a run has diverged (it lists a folder)


def _last_good(last_checkpoint: LastCheckpoint) -> str:
    path = last_checkpoint()
    if path is None:
        return "no checkpoint was written before it"
    return f"the last good checkpoint is {path}"


def check_finite_losses(names: Sequence[str], values: Sequence[float], iteration: int,
                        last_checkpoint: LastCheckpoint) -> None:
    """Raise :class:`DivergenceError` for the first of ``values`` (host floats, already synced for logging) that is
    not finite.

    Shapes: names and values of equal length.
    """
    for name, value in zip(names, values):
        if not math.isfinite(value):
            raise DivergenceError(f"non-finite {name} ({value}) at iteration {iteration}; "
                                  f"{_last_good(last_checkpoint)}")


def check_finite_tensors(named: Iterable[tuple[str, Tensor]], iteration: int,
                         last_checkpoint: LastCheckpoint) -> None:
    """Raise :class:`DivergenceError` if a floating-point tensor holds NaN or inf; one host sync for all of them
    (run before a checkpoint is written, not every iteration).

    Shapes: any tensors; integer ones are skipped.
    """
    named = [(n, t.detach()) for n, t in named if t.is_floating_point() and t.numel()]
    if not named:
        return
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    if bool(finite.all()):
        return
    first = named[int((~finite).nonzero()[0])][0]
    raise DivergenceError(f"non-finite weights ({first}) after iteration {iteration}; {_last_good(last_checkpoint)}")


@contextlib.contextmanager
def divergence_explained(named: Sequence[tuple[str, Tensor]], iteration: int,
                         last_checkpoint: LastCheckpoint) -> Iterator[None]:
    """Turn a ValueError raised inside the block (``confidence_select`` refuses NaN logits) into
    :class:`DivergenceError` when one of ``named`` is not finite; the check runs only after such an error, so the
    normal path pays nothing.

    Shapes: any tensors.
    """
    try:
        yield
    except ValueError:
        for name, t in named:
            if not bool(torch.isfinite(t.detach()).all()):
                raise DivergenceError(f"non-finite {name} at iteration {iteration}; "
                                      f"{_last_good(last_checkpoint)}") from None
        raise
