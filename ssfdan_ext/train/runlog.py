"""Run logs: a CSV row per iteration, TensorBoard scalars and images, and a tqdm progress bar."""
from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

CSV_FIELDS = ("iteration", "loss_seg", "loss_adv", "loss_d", "rho", "lr", "lr_d", "kept_pixels", "loss_st", "seconds")


class CsvLog:
    """``train.csv``: one row per iteration. On resume, rows after the checkpoint's iteration are dropped (the
    run killed after the checkpoint had logged iterations that are now computed again).

    Shapes: n/a.
    """

    def __init__(self, path: str | Path, resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        if resume_from is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("iteration", "").isdigit()
                        and int(r["iteration"]) < resume_from]
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()

    def write(self, row: Mapping[str, float]) -> None:
        """Append one row; floats are written with ``repr`` so that reruns compare exactly."""
        self._writer.writerow({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``train.csv``.

    Shapes: n/a.
    """
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


class TensorBoard:
    """A lazily imported ``SummaryWriter``; ``enabled=False`` makes every call a no-op.

    Shapes: n/a.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError("tensorboard=true needs the tensorboard package: pip install tensorboard "
                               f"(or set tensorboard=false); import failed with: {err}") from None
        # purge_step: a resumed run drops the events the killed run logged after its checkpoint.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, float(value), step)

    def per_class(self, prefix: str, values: Tensor, names: Sequence[str], step: int) -> None:
        if self.writer is not None:
            for name, value in zip(names, values.tolist()):
                if value == value:  # NaN: class absent
                    self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def images(self, tag: str, images: Sequence[np.ndarray], step: int) -> None:
        """RGB uint8 images (H, W, 3)."""
        if self.writer is not None:
            for i, img in enumerate(images):
                self.writer.add_image(f"{tag}/{i}", img, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A tqdm bar over the iterations with the losses as postfix (nothing when disabled).

    Shapes: n/a.
    """

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True,
                            file=sys.stderr)

    def update(self, postfix: Mapping[str, float] | None = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
