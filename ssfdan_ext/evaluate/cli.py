"""``ssfdan-eval``: evaluate a checkpoint on a dataset root and write the per-class IoU table."""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import CROSSCITY_CITIES, DATASETS, build_dataset, classes
from ..models import MODELS, build_model, load_pretrained, model_from_checkpoint
from ..models.verified_io import UnverifiedCheckpointWarning, read_verified
from .metrics import iou_table, write_iou_table
from .runner import evaluate


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x1024, got {text!r}") from None
    return h, w


def _mapping(text: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{width: 16}}', got {text!r}: {err}")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{width: 16}}', got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command-line interface of ``ssfdan-eval``.

    Shapes: n/a.
    """
    p = argparse.ArgumentParser(prog="ssfdan-eval", description=__doc__)
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="a checkpoint from save_checkpoint, or a plain state dict (then give --model)")
    p.add_argument("--model", choices=sorted(MODELS), help="architecture of a plain state dict")
    p.add_argument("--num-classes", type=int, help="classes of a plain state dict's model (default 19)")
    p.add_argument("--aspp-branches", type=int, default=4, help="DeepLab: 2 for AdaptSegNet-era weights")
    p.add_argument("--caffe-style", action="store_true", help="DeepLab: Caffe ResNet layout and normalisation")
    p.add_argument("--model-kwargs", type=_mapping, default={}, metavar="YAML",
                   help="constructor arguments of a plain state dict's model with non-default widths, as a YAML "
                        "mapping, e.g. '{width: 16, feature_channels: 32}' (the training config's model_kwargs)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", type=Path, help="dataset root (not needed for 'synthetic')")
    p.add_argument("--split", default=None,
                   help="split (default: val for cityscapes, test for crosscity, all for gta5/synthia, "
                        "target for synthetic)")
    p.add_argument("--city", choices=CROSSCITY_CITIES, default="Rome", help="Cross-City city")
    p.add_argument("--label-encoding", choices=("labelid", "trainid", "index13"), default="labelid",
                   help="what Cross-City's *_eval.png files hold (default: Cityscapes label ids)")
    p.add_argument("--protocol", type=int, choices=sorted(classes.PROTOCOLS),
                   help="classes to report (default: the dataset's); 13 on a 16-class model gives mIoU*")
    p.add_argument("--input-size", type=_size, help="resize images to HxW (labels stay at full resolution)")
    p.add_argument("--length", type=int, default=100, help="synthetic scenes to evaluate")
    p.add_argument("--seed", type=int, default=1, help="synthetic scene seed")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("eval_out"), help="folder for iou.md, iou.csv, predictions")
    p.add_argument("--save-predictions", type=int, default=10, help="colour PNGs of the first N predictions")
    p.add_argument("--no-progress", action="store_true")
    return p


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    """The model of ``--checkpoint``; every way the file can be wrong is one line (SystemExit), not a traceback."""
    path = args.checkpoint
    if path.is_dir():
        raise SystemExit(f"ssfdan-eval: --checkpoint {path} is a directory; give a checkpoint file in it (such as "
                         f"{path / 'final.pt'})")
    if not path.exists():
        raise SystemExit(f"ssfdan-eval: checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnverifiedCheckpointWarning)
            obj = read_verified(path)  # the digest is checked before anything is unpickled
        for w in caught:
            print(f"ssfdan-eval: warning: {w.message}", file=sys.stderr)
        if not isinstance(obj, dict):
            raise SystemExit(f"ssfdan-eval: {path} holds a {type(obj).__name__}, not a checkpoint or a state dict")
        if "config" in obj:
            given = [f"--{k.replace('_', '-')}" for k in ("model", "num_classes") if getattr(args, k) is not None]
            given += ["--model-kwargs"] if args.model_kwargs else []
            if given:
                print(f"ssfdan-eval: warning: {' and '.join(given)} ignored: {path} carries its model configuration "
                      f"({obj['config'].get('arch')}, {obj['config'].get('num_classes')} classes)", file=sys.stderr)
            return model_from_checkpoint(obj, path)
        return _plain_state_dict_model(args)
    except ValueError as err:  # CheckpointError and the shape / key errors of load_pretrained
        raise SystemExit(f"ssfdan-eval: {err}") from None


def _plain_state_dict_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model is None:
        raise SystemExit(f"ssfdan-eval: {args.checkpoint} is a plain state dict; give --model and --num-classes")
    options = ({"aspp_branches": args.aspp_branches, "caffe_style": args.caffe_style}
               if args.model.startswith("deeplab") else {})
    options.update(args.model_kwargs)
    try:
        model = build_model(args.model, args.num_classes or 19, **options)
    except TypeError as err:  # an argument the model's constructor does not take
        raise SystemExit(f"ssfdan-eval: --model-kwargs {args.model_kwargs} do not fit {args.model}: {err}") from None
    report = load_pretrained(model, args.checkpoint)
    if report.skipped_head or report.missing:
        raise SystemExit(f"ssfdan-eval: {args.checkpoint} has no classifier for {model.num_classes} classes "
                         f"(missing or reshaped: {(report.skipped_head + report.missing)[:4]})")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ssfdan-eval``; returns the exit status.

    Shapes: n/a (``--input-size`` is HxW).
    """
    args = parser().parse_args(argv)
    model = _load_model(args)
    kwargs: dict[str, object] = {"normalization": getattr(model, "normalization", "imagenet")}
    if args.dataset == "synthetic":
        kwargs.update(length=args.length, seed=args.seed, num_classes=model.num_classes)
        if args.input_size:
            kwargs["size"] = args.input_size
        split = args.split or "target"
    else:
        if args.root is None:
            raise SystemExit(f"ssfdan-eval: --root is required for --dataset {args.dataset}")
        split = args.split or {"cityscapes": "val", "crosscity": "test"}.get(args.dataset, "all")
        kwargs["resize_label"] = False
        if args.input_size:
            kwargs["size"] = args.input_size
        if args.dataset == "crosscity":
            kwargs["city"], kwargs["label_encoding"] = args.city, args.label_encoding
        else:
            kwargs["num_classes"] = model.num_classes if model.num_classes in classes.PROTOCOLS else 19
    try:
        dataset = build_dataset(args.dataset, args.root, split, **kwargs)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"ssfdan-eval: {err}") from None
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=args.workers)
    result = evaluate(model, loader, protocol=args.protocol, device=args.device, save_dir=args.out / "predictions",
                      save_predictions=args.save_predictions, progress=not args.no_progress, limit=args.limit)
    print(iou_table(result.iou, result.class_names))
    print(f"mIoU {100 * result.miou:.2f}  pixel accuracy {100 * result.pixel_accuracy:.2f}  "
          f"({args.dataset} {split}, {len(dataset) if args.limit is None else min(args.limit, len(dataset))} images)")
    md, csv = write_iou_table(result.iou, result.class_names, args.out / "iou")
    print(f"wrote {md} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
