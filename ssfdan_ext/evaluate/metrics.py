"""Confusion matrices, per-class IoU and mIoU, and IoU tables (Markdown and CSV)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..types import IGNORE


def confusion_matrix(pred: Tensor, label: Tensor, num_classes: int) -> Tensor:
    """Counts of (label, prediction) pairs over pixels whose label is a class (IGNORE and ids >= C skipped).

    Computed with ``bincount`` on the inputs' device. Rows are labels, columns predictions.

    Shapes: pred and label of one shape (any), integer -> (num_classes, num_classes) int64.
    """
    if not isinstance(pred, Tensor) or not isinstance(label, Tensor):
        raise TypeError(f"pred and label must be tensors, got {type(pred).__name__} and {type(label).__name__}")
    if pred.shape != label.shape:
        raise ValueError(f"pred and label must have one shape, got {tuple(pred.shape)} and {tuple(label.shape)}")
    if pred.is_floating_point() or label.is_floating_point():
        raise TypeError(f"pred and label must be integer tensors, got {pred.dtype} and {label.dtype}")
    label, pred = label.reshape(-1).long(), pred.reshape(-1).long().to(label.device)
    keep = (label >= 0) & (label < num_classes) & (label != IGNORE)
    if bool(((pred[keep] < 0) | (pred[keep] >= num_classes)).any()):
        raise ValueError(f"pred must lie in [0, {num_classes}) where the label is a class")
    flat = label[keep] * num_classes + pred[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(confusion: Tensor) -> Tensor:
    """Per-class IoU = TP / (TP + FP + FN); NaN for a class neither labelled nor predicted.

    Shapes: (C, C) -> (C,) float64.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion must be (C, C), got shape {tuple(confusion.shape)}")
    conf = confusion.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(iou: Tensor, classes: Sequence[int] | None = None) -> float:
    """Mean over the classes (all, or the given indices) that have a defined IoU.

    Shapes: iou (C,) -> float.
    """
    sub = iou if classes is None else iou[list(classes)]
    valid = sub[~torch.isnan(sub)]
    return float(valid.mean()) if valid.numel() else float("nan")


class ConfusionMatrix:
    """Running confusion matrix kept on one device.

    Shapes: ``update(pred, label)`` with pred/label of one shape; ``matrix`` (C, C) int64; ``iou()`` (C,).
    """

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, pred: Tensor, label: Tensor) -> None:
        """Add the pixels of one prediction.

        Shapes: pred and label of one shape (any), integer.
        """
        self.matrix += confusion_matrix(pred, label.to(self.matrix.device), self.num_classes)

    def iou(self) -> Tensor:
        """Per-class IoU (NaN where undefined). Shapes: (C,) float64."""
        return iou_from_confusion(self.matrix)

    def miou(self, classes: Sequence[int] | None = None) -> float:
        """mIoU over all classes or a subset of indices.

        Shapes: returns a float.
        """
        return mean_iou(self.iou(), classes)

    def pixel_accuracy(self) -> float:
        """Fraction of labelled pixels predicted correctly.

        Shapes: returns a float (NaN before any labelled pixel).
        """
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else float("nan")


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"


def iou_table(iou: Tensor, names: Sequence[str], fmt: str = "markdown") -> str:
    """Per-class IoU (in %) and the mIoU as a Markdown table or CSV text.

    Shapes: iou (C,) with C == len(names).
    """
    if len(names) != iou.numel():
        raise ValueError(f"names must have one entry per class ({iou.numel()}), got {len(names)}")
    rows = [(name, _pct(float(v))) for name, v in zip(names, iou.tolist())]
    rows.append(("mIoU", _pct(mean_iou(iou))))
    if fmt == "csv":
        return "class,iou\n" + "".join(f"{n},{v}\n" for n, v in rows)
    if fmt != "markdown":
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    width = max(len(n) for n, _ in rows)
    lines = [f"| {'class'.ljust(width)} | IoU (%) |", f"| {'-' * width} | ------: |"]
    lines += [f"| {n.ljust(width)} | {v.rjust(7)} |" for n, v in rows]
    return "\n".join(lines) + "\n"


def write_iou_table(iou: Tensor, names: Sequence[str], prefix: str | Path) -> tuple[Path, Path]:
    """Write ``<prefix>.md`` and ``<prefix>.csv`` and return their paths.

    Shapes: iou (C,).
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, csv = prefix.with_suffix(".md"), prefix.with_suffix(".csv")
    md.write_text(iou_table(iou, names, "markdown"))
    csv.write_text(iou_table(iou, names, "csv"))
    return md, csv
