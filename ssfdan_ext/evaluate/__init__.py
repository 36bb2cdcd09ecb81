"""Evaluation: confusion matrices and mIoU on the model's device, IoU tables, prediction PNGs, ``ssfdan-eval``."""
from __future__ import annotations

from .metrics import ConfusionMatrix, confusion_matrix, iou_from_confusion, iou_table, mean_iou, write_iou_table
from .runner import EvalResult, colorize, evaluate

__all__ = [
    "ConfusionMatrix", "EvalResult", "colorize", "confusion_matrix", "evaluate", "iou_from_confusion",
    "iou_table", "mean_iou", "write_iou_table",
]
