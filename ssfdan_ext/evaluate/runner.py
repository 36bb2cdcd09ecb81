"""Evaluating a segmenter on a dataset at the labels' full resolution, and colour-coded prediction PNGs."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import classes
from ..types import IGNORE
from .metrics import ConfusionMatrix, mean_iou


class EvalResult(NamedTuple):
    """Outcome of :func:`evaluate`.

    Shapes: confusion (C_model, C_model) int64 in the model's class space; iou (K,) float64 for the K
    reported classes named by ``class_names``; miou is their mean (NaN-free classes only).
    """

    confusion: Tensor
    iou: Tensor
    miou: float
    class_names: tuple[str, ...]
    pixel_accuracy: float


def colorize(pred: Tensor | np.ndarray, num_classes: int = 19) -> "PIL.Image.Image":  # noqa: F821
    """A palette PNG image of a prediction with the Cityscapes colours (IGNORE and unknown ids black).

    ``num_classes`` names the protocol (19, 16, 13) whose index ``k`` is coloured as its train id.

    Shapes: pred (H, W) integer -> PIL image of size (W, H), mode "P".
    """
    from PIL import Image

    arr = pred.detach().cpu().numpy() if isinstance(pred, Tensor) else np.asarray(pred)
    if arr.ndim != 2:
        raise ValueError(f"pred must be (H, W), got shape {arr.shape}")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = classes.palette(num_classes)
    img = Image.fromarray(np.where((arr >= 0) & (arr < 256), arr, IGNORE).astype(np.uint8))
    img = img.convert("P")
    img.putpalette(colours.reshape(-1).tolist())
    return img


def _class_maps(model_classes: int, label_classes: int, report: int | None) -> tuple[np.ndarray | None, list[int]]:
    """Label lookup (label space -> model space) and the reported class indices in model space."""
    report = label_classes if report is None else report
    if model_classes == label_classes == report:
        return None, list(range(model_classes))
    for n, what in ((model_classes, "the model's num_classes"), (label_classes, "the dataset's num_classes"),
                    (report, "protocol")):
        if n not in classes.PROTOCOLS:
            raise ValueError(f"{what} ({n}) must be one of {sorted(classes.PROTOCOLS)} when the class counts of "
                             f"model ({model_classes}), dataset ({label_classes}) and protocol ({report}) differ")
    model_ids = classes.protocol_ids(model_classes)
    missing = [classes.CITYSCAPES_CLASSES[t] for t in classes.protocol_ids(report) if t not in model_ids]
    if missing:
        raise ValueError(f"the model's {model_classes} classes lack {missing} of the {report}-class protocol")
    lut = None if model_classes == label_classes else classes.index_lut(label_classes, model_classes)
    return lut, [model_ids.index(t) for t in classes.protocol_ids(report)]


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable, num_classes: int | None = None, protocol: int | None = None,
             device: str | torch.device | None = None, save_dir: str | Path | None = None,
             save_predictions: int = 0, progress: bool = True, limit: int | None = None) -> EvalResult:
    """Evaluate ``model`` on ``data`` (a dataset or a DataLoader of ``(image, label, name)``).

    Logits are upsampled bilinearly (``align_corners=True``) to the label's full resolution, the argmax is
    accumulated into a confusion matrix on the model's device. ``num_classes`` is the labels' class count (the
    dataset's ``num_classes`` by default); ``protocol`` (19, 16, 13) picks the reported classes, e.g. 13 for
    the mIoU* of a 16-class Synthia model, which keeps the 16-class confusion. The first ``save_predictions``
    predictions are written to ``save_dir`` as Cityscapes-coloured PNGs. The model runs in eval mode on
    ``device`` (default: where its parameters are) and gets its training mode back afterwards.

    Shapes: images (B, 3, H, W), labels (B, H', W') -> EvalResult (see there).
    """
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a convenience; evaluation works without them
        def tqdm(items, **_):
            return items

    model_classes = int(getattr(model, "num_classes"))
    label_classes = num_classes if num_classes is not None else getattr(
        getattr(data, "dataset", data), "num_classes", model_classes)
    lut, report = _class_maps(model_classes, label_classes, protocol)
    lut_t = None
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(())).device
    device = torch.device(device)
    was_training = model.training
    model = model.to(device).eval()
    if lut is not None:
        lut_t = torch.from_numpy(lut).long().to(device)
    confusion = ConfusionMatrix(model_classes, device)
    saved, seen = 0, 0
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    total = len(data) if hasattr(data, "__len__") else None
    for batch in tqdm(data, total=total, disable=not progress, desc="evaluate", unit="batch"):
        image, label, name = batch
        if image.dim() == 3:  # a dataset item rather than a batch
            image, label, name = image[None], label[None], [name]
        image, label = image.to(device), label.to(device)
        logits = model(image)[0]
        logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=True)
        pred = logits.argmax(1)
        if lut_t is not None:
            label = lut_t[label.clamp(0, 255)]
        confusion.update(pred, label)
        for k in range(pred.shape[0]):
            if save_dir is not None and saved < save_predictions:
                stem = Path(str(name[k])).stem
                colorize(pred[k], model_classes if model_classes in classes.PROTOCOLS else 19).save(
                    Path(save_dir) / f"{stem}_pred.png")
                saved += 1
        seen += image.shape[0]
        if limit is not None and seen >= limit:
            break
    model.train(was_training)
    iou = confusion.iou()[report].cpu()
    names = (classes.class_names(protocol or label_classes) if (protocol or label_classes) in classes.PROTOCOLS
             else tuple(str(i) for i in range(model_classes)))
    return EvalResult(confusion.matrix.cpu(), iou, mean_iou(iou), names, confusion.pixel_accuracy())
