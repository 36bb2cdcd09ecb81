"""A run's claim on its ``out_dir``: an exclusive lock held for the whole run, and the clean-up it makes safe.

Two runs writing into one ``out_dir`` would overwrite each other's checkpoints, ``final.pt`` and ``train.csv``.
The lock is ``fcntl.flock`` on ``out_dir/.lock`` (the file holds the holder's pid and host, for the message the
second run prints). The operating system drops a flock when its process ends however it ends, so a killed run
leaves no stale lock: the file stays, unlocked, and the next run takes it.
"""
from __future__ import annotations

import datetime
import functools
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from . import distributed as D
from .guards import DriverError, OutDirLockedError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"
# Temporary files of atomic_save/write_verified (".<name>.<random>.tmp") left by a run killed mid-write.
_ORPHAN = re.compile(r"^\.(?:ckpt_\d{8}|best|final)\.pt\.[A-Za-z0-9_]+\.tmp$")


class OutDirLock:
    """An exclusive lock on ``out_dir`` for this process (see :func:`claim_out_dir`).

    Shapes: n/a.
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise DriverError(f"cannot use out_dir {self.path.parent}: {err.strerror or err}") from None
        self._file = os.fdopen(fd, "r+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise OutDirLockedError(f"out_dir {self.path.parent} is in use by another run ({holder}): wait for it "
                                    "to finish or choose another out_dir") from None
        self._file.seek(0)
        self._file.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        self._file.flush()

    def release(self) -> None:
        """Give the lock up (also done by the operating system when the process ends); idempotent."""
        if self._file.closed:
            return
        if fcntl is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()


def remove_orphans(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files of interrupted checkpoint writes in ``out_dir`` and ``out_dir/checkpoints``
    (only under the lock: a live run's are not orphans). Returns what was deleted.

    Shapes: n/a.
    """
    removed = []
    for folder in (Path(out_dir), Path(out_dir) / "checkpoints"):
        if folder.is_dir():
            for p in folder.iterdir():
                if _ORPHAN.match(p.name) and p.is_file():
                    p.unlink(missing_ok=True)
                    removed.append(p)
    return removed


def claim_out_dir(out_dir: str | Path, info: D.DistInfo, device: torch.device) -> OutDirLock | None:
    """Lock ``out_dir`` for this run and remove orphaned temporary files; raises :class:`OutDirLockedError` naming
    the holder when another run has it.

    Under DDP rank 0 (the one that writes) takes the lock and every rank learns whether it did, so that all of them
    stop together instead of the others waiting for rank 0 in their first collective.

    Shapes: n/a.
    """
    lock, error = None, None
    if info.is_main:
        try:
            lock = OutDirLock(out_dir)
        except OutDirLockedError as err:
            error = err
    if info.enabled:
        flag = torch.tensor([0 if error is not None else 1], device=device)
        dist.broadcast(flag, src=0)
        if not info.is_main and not int(flag):
            error = OutDirLockedError(f"out_dir {out_dir} is in use by another run (see rank 0)")
    if error is not None:
        raise error
    if lock is not None:
        removed = remove_orphans(out_dir)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of interrupted checkpoint writes in {out_dir}")
    return lock


def releases_lock_on_error(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate ``__init__`` of an object that keeps its :class:`OutDirLock` in ``self._lock``: when the
    constructor fails after taking the lock, give it back at once (the half-built object never reaches
    ``close()``, and a traceback kept alive would otherwise hold the lock).

    Shapes: n/a.
    """
    @functools.wraps(init)
    def wrapper(self: object, *args: object, **kwargs: object) -> None:
        try:
            init(self, *args, **kwargs)
        except BaseException:
            lock = getattr(self, "_lock", None)
            if lock is not None:
                lock.release()
            raise

    return wrapper
