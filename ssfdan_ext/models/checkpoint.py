"""Loading ImageNet, DeepLab/AdaptSegNet and this package's checkpoints from local files."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .verified_io import CheckpointError, read_verified, write_verified

# Head parameters of each model: they may be absent (ImageNet weights) or shaped for another class count.
_HEAD_PREFIXES = ("layer5.", "score_", "classifier.")
# Wrappers of saved modules: DataParallel ("module.") and the multi-scale DeepLab of pytorch-deeplab ("Scale.").
_WRAPPERS = ("module.", "Scale.")


class LoadReport(NamedTuple):
    """What :func:`load_pretrained` did.

    Shapes: lists of state-dict keys.
    """

    loaded: list[str]
    skipped_head: list[str]
    missing: list[str]


def _read_state(path: Path) -> dict[str, Tensor]:
    # Weights from elsewhere (ImageNet, DeepLab) carry no digest: verified when they do, silent when not.
    obj = read_verified(path, "cpu", warn_unverified=False)
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict of tensors, or one under 'model' or "
                         "'state_dict')")
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_pretrained(model: nn.Module, path: str | Path | Mapping[str, Tensor],
                    ignore_prefixes: Sequence[str] = ()) -> LoadReport:
    """Load backbone (and, when shapes fit, head) weights from a local file (or a state dict) into ``model``.

    Accepts torchvision ImageNet state dicts (ResNet-101/50, VGG16; their 1000-way ``fc``/``classifier.6``
    is dropped), DeepLab-v2 and AdaptSegNet-era checkpoints (``Scale.``/``module.`` prefixes removed; the
    ASPP head is kept when its class count matches and skipped otherwise), and this package's checkpoints
    (:func:`save_checkpoint`). A key the model does not have is an error listing it, unless it starts with one
    of ``ignore_prefixes`` (e.g. ``("layer6.",)`` for AdaptSegNet's multi-level head). Backbone weights the
    file lacks are an error too; a missing head is reported and left at its initialisation.

    Shapes: parameter shapes must match the model's, except the head's class dimension.
    """
    if isinstance(path, Mapping):
        raw, path = dict(path), "the state dict"
    else:
        path = Path(path)
        raw = _read_state(path)
    state = {_strip(k): v for k, v in raw.items()}
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    convert = getattr(model, "convert_state_dict", None)
    if convert is not None:
        state = convert(state)
    own = model.state_dict()
    if "fc.weight" in state and "fc.weight" not in own:  # the ImageNet classifier of a torchvision ResNet
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    # FrozenBatchNorm2d has no counter; BatchNorm2d restarts its counter when a file lacks it.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in own}
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise ValueError(f"{path} has {len(unknown)} keys that {type(model).__name__} lacks: {shown}. Expected "
                         f"keys like {', '.join(list(own)[:4])}; pass ignore_prefixes to drop extra parts")
    loaded, skipped = [], []
    for key, value in state.items():
        head = key.startswith(_HEAD_PREFIXES)
        if value.shape != own[key].shape:
            if head:
                skipped.append(key)
                continue
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, {type(model).__name__} expects "
                             f"{tuple(own[key].shape)}")
        loaded.append(key)
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    backbone_missing = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
    if backbone_missing:
        shown = ", ".join(backbone_missing[:8]) + (" ..." if len(backbone_missing) > 8 else "")
        raise ValueError(f"{path} lacks {len(backbone_missing)} backbone keys of {type(model).__name__}: {shown}")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return LoadReport(loaded, skipped, missing)


def save_checkpoint(model: nn.Module, path: str | Path, **extra: object) -> None:
    """Save ``model``'s weights with the configuration :func:`load_checkpoint` rebuilds it from.

    The file is written atomically with a SHA-256 digest that :func:`load_checkpoint` verifies
    (:mod:`ssfdan_ext.models.verified_io`); it still loads with plain ``torch.load``.

    Shapes: n/a (writes ``{"model": state_dict, "config": model.config, **extra}``).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"model must be built by ssfdan_ext.models (with a .config), got {type(model).__name__}")
    write_verified({"model": model.state_dict(), "config": dict(config), **extra}, path)


def model_from_checkpoint(obj: object, path: str | Path) -> nn.Module:
    """The model a loaded :func:`save_checkpoint` dict describes, with its weights (strictly); ``path`` names it
    in errors.

    Shapes: n/a.
    """
    from . import build_model

    if not isinstance(obj, dict) or not isinstance(obj.get("config"), dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path} is not a checkpoint written by save_checkpoint (no 'config'/'model'); "
                              "build the model with build_model(...) and use load_pretrained for plain state dicts")
    config = dict(obj["config"])
    model = build_model(config.pop("arch"), **config)
    model.load_state_dict(obj["model"])
    return model


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_checkpoint` and load its weights (strictly).

    The file's digest is verified first: a damaged, truncated, empty or foreign file is a
    :class:`~ssfdan_ext.models.verified_io.CheckpointError` naming it; one without a digest loads with a warning.

    Shapes: n/a.
    """
    return model_from_checkpoint(read_verified(path, map_location), path)
