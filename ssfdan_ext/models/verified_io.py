"""Checkpoint files that carry a SHA-256 digest: written atomically, verified before they are unpickled.

A file is the bytes of ``torch.save`` followed by one trailer line, ``b"\\nSSFDAN-SHA256 <64 hex digits>\\n"``,
holding the SHA-256 of everything before it. ``torch.load`` finds the zip archive from its end record and
ignores the 80 bytes after it, so these files still load with plain ``torch.load``. A file without the trailer
(written by ``torch.save`` directly, or by an older version of this package) cannot be verified: it loads with
an :class:`UnverifiedCheckpointWarning`. A file whose digest does not match is a :class:`CheckpointError`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import BinaryIO

import torch

MAGIC = b"\nSSFDAN-SHA256 "
TRAILER_SIZE = len(MAGIC) + 64 + 1
_CHUNK = 1 << 20  # hash in 1 MiB reads: a 2 GB checkpoint is never held in memory twice


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read (damaged, truncated, empty, foreign); the message names it."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without a digest trailer was loaded: nothing shows whether its bytes are intact."""


def file_mode() -> int:
    """What ``open()`` would give a new file: ``0o666`` less the process umask (``mkstemp`` gives 0o600).

    Shapes: n/a.
    """
    try:
        with open("/proc/self/status") as f:  # reading the umask here does not change it (threads stay safe)
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class _HashingSink:
    """The file object ``torch.save`` writes to: hashes what passes and keeps the OSError a full disk raises
    (``torch.save`` turns it into an opaque RuntimeError). It has no ``seek``, so the bytes hashed are the file's.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.f.write(data)
        except OSError as err:
            self.error = err
            raise
        self.sha.update(memoryview(data)[:written])
        return written

    def flush(self) -> None:
        self.f.flush()


def write_verified(obj: object, path: str | Path) -> Path:
    """``torch.save(obj)`` plus the digest trailer, to a temporary file in the same folder, flushed to disk, given
    the usual file permissions, then renamed over ``path``: a run killed mid-write leaves the previous file intact.

    A failed write (a full disk, a read-only folder) raises :class:`CheckpointError` ``cannot write <path>:
    <reason>`` and leaves ``path`` as it was.

    Shapes: n/a.
    """
    path = Path(path)
    tmp: str | None = None
    sink = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            sink = _HashingSink(f)
            torch.save(obj, sink)
            f.write(MAGIC + sink.sha.hexdigest().encode() + b"\n")
            f.flush()
            if hasattr(os, "fchmod"):  # POSIX (and Windows from Python 3.13)
                os.fchmod(f.fileno(), file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = sink.error if sink is not None and sink.error is not None else err
        if not isinstance(cause, OSError):
            raise  # torch.save failed for another reason than the file: not ours to reword
        raise CheckpointError(f"cannot write {path}: {cause.strerror or cause}") from err
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _stored_digest(f: BinaryIO, size: int) -> str | None:
    if size < TRAILER_SIZE:
        return None
    f.seek(size - TRAILER_SIZE)
    tail = f.read(TRAILER_SIZE)
    hexdigest = tail[len(MAGIC):-1]
    if not tail.startswith(MAGIC) or tail[-1:] != b"\n" or any(c not in b"0123456789abcdef" for c in hexdigest):
        return None
    return hexdigest.decode()


def verify_file(path: str | Path) -> bool | None:
    """True when ``path``'s digest trailer matches its content, None when it has no trailer; raises
    :class:`CheckpointError` when it does not match, or the file is empty, a folder or unreadable.

    Shapes: n/a.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
            stored = _stored_digest(f, size)
            if stored is None:
                return None
            f.seek(0)
            sha, left = hashlib.sha256(), size - TRAILER_SIZE
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                sha.update(chunk)
                left -= len(chunk)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    if sha.hexdigest() != stored:
        raise CheckpointError(f"{path} is damaged: its content does not match the SHA-256 digest written with it")
    return True


def read_verified(path: str | Path, map_location: str | torch.device = "cpu", warn_unverified: bool = True) -> object:
    """Verify ``path`` (:func:`verify_file`), then ``torch.load(path, weights_only=True)``.

    Without a trailer the file loads with an :class:`UnverifiedCheckpointWarning` (unless ``warn_unverified`` is
    False: weights from elsewhere, such as ImageNet state dicts, never have one). Anything ``torch.load`` cannot
    read (truncated, foreign) is a :class:`CheckpointError` naming the file; a missing file a FileNotFoundError.

    Shapes: n/a.
    """
    path = Path(path)
    if verify_file(path) is None and warn_unverified:
        warnings.warn(f"{path} has no SHA-256 digest (written by torch.save or an older version): it is loaded "
                      "without verification", UnverifiedCheckpointWarning, stacklevel=2)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - EOFError, KeyError, UnpicklingError, RuntimeError, struct.error ...
        reason = (str(err).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"cannot read {path}: not a readable torch.save file, or damaged "
                              f"({type(err).__name__}: {reason})") from err
