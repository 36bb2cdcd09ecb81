"""Training configuration: one flat dataclass, YAML files and ``key=value`` overrides, checked key by key.

The dataclass defaults are the paper's GTA5 -> Cityscapes setting (docs/semantics.md section 7; dataset roots unset).
Without ``--config`` the driver runs the embedded synthetic config (``ssfdan_ext/train/configs/synthetic.yaml``, the
same file as ``configs/synthetic.yaml``), which needs no files.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ADAPTATIONS = ("none", "global", "soft", "soft+global", "ssd", "ssd+global")
SOURCE_MASKS = ("prediction", "ground_truth")
SYNTHETIC_SHIFTS = ("none", "class")
AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DISC_BACKENDS = ("auto", "reference", "grouped", "fused")


@dataclass
class TrainConfig:
    """Every setting of a training run (see docs/training.md for each key); the defaults are the
    paper's GTA5 -> Cityscapes DeepLab-v2 setting.

    Shapes: ``*_size`` entries are (H, W) lists; ``disc_channels`` the widths of discriminator layers 1-4.
    """

    # run
    name: str = "ssfdan"
    out_dir: str = "runs/ssfdan"
    # data: source (labelled), target (unlabelled while training, labelled for validation)
    source: str = "gta5"
    source_root: str | None = None
    source_split: str = "all"
    target: str = "cityscapes"
    target_root: str | None = None
    target_split: str = "train"
    val_split: str = "val"
    city: str | None = None
    num_classes: int = 19
    source_size: list[int] | None = field(default_factory=lambda: [720, 1280])
    target_size: list[int] | None = field(default_factory=lambda: [512, 1024])
    val_size: list[int] | None = field(default_factory=lambda: [512, 1024])
    synthetic_length: int = 512
    val_length: int = 100
    data_seed: int = 0
    synthetic_shift: str = "none"
    synthetic_shift_seed: int = 0
    num_workers: int = 4
    # segmenter
    model: str = "deeplabv2_resnet101"
    model_kwargs: dict = field(default_factory=dict)
    pretrained: str | None = None
    freeze_bn: bool = False
    sync_bn: bool = False
    # adaptation (docs/semantics.md sections 5 and 6)
    adaptation: str = "ssd"
    progressive: bool = True
    car: bool = True
    source_masks: str = "prediction"
    rho_upper: float = 0.8
    delta: float = 0.001
    disc_channels: list[int] = field(default_factory=lambda: [1024, 512, 256, 128])
    disc_strides: list[int] = field(default_factory=lambda: [1, 2, 2, 2, 2])
    disc_backend: str = "auto"
    self_training: float = 0.0
    # optimisation (docs/semantics.md section 7)
    iterations: int = 120000
    batch_size: int = 1
    lr: float = 2.5e-4
    head_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    power: float = 0.9
    lr_d: float = 1e-4
    betas_d: list[float] = field(default_factory=lambda: [0.9, 0.99])
    # runtime
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "off"
    threads: int = 0
    # logging, validation, checkpoints
    log_every: int = 50
    val_every: int = 5000
    val_batch_size: int = 1
    save_images: int = 4
    sample_figure: int = 4
    checkpoint_every: int = 5000
    keep_last: int = 3
    resume: bool = False
    tensorboard: bool = True
    progress: bool = True

    def to_dict(self) -> dict:
        """The configuration as plain YAML-able values."""
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


class ConfigError(ValueError):
    """A bad configuration key or value; the message names the key."""


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# Types whose values are taken as they are: (does the YAML value qualify, what the error calls it).
_PLAIN = {
    dict: (lambda v: isinstance(v, Mapping), "a mapping"),
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    str: (lambda v: isinstance(v, str), "a string"),
}


def _coerce(key: str, value: object, hint: object) -> object:
    """``value`` checked (and, for numbers written as text, converted) against the field's type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint in _PLAIN:
        accepts, what = _PLAIN[hint]
        if not accepts(value):
            raise ConfigError(f"{key} must be {what}, got {value!r}")
        return dict(value) if hint is dict else value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    raise ConfigError(f"{key}: unsupported type {hint}")  # a schema error, not a user error


def _choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def _check_finite(cfg: TrainConfig) -> None:
    # NaN passes every range check (all comparisons are false) and inf passes "positive": both would only
    # surface iterations later as a diverged loss, so every float key (and float list item) must be finite.
    for key, hint in _HINTS.items():
        if float not in (hint, *typing.get_args(hint)):
            continue
        value = getattr(cfg, key)
        for i, v in enumerate(value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                name = f"{key}[{i}]" if isinstance(value, (list, tuple)) else key
                raise ConfigError(f"{name} must be a finite number, got {v}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check the values that the types alone do not constrain; raises ConfigError naming the key.

    Shapes: n/a.
    """
    from ..data import DATASETS
    from ..models import MODELS

    _check_finite(cfg)
    _choice("adaptation", cfg.adaptation, ADAPTATIONS)
    _choice("source_masks", cfg.source_masks, SOURCE_MASKS)
    _choice("amp", cfg.amp, AMP_MODES)
    _choice("device", cfg.device, DEVICES)
    _choice("disc_backend", cfg.disc_backend, DISC_BACKENDS)
    _choice("synthetic_shift", cfg.synthetic_shift, SYNTHETIC_SHIFTS)
    _choice("model", cfg.model, tuple(sorted(MODELS)))
    _choice("source", cfg.source, tuple(sorted(DATASETS)))
    _choice("target", cfg.target, tuple(sorted(DATASETS)))
    positive = ("iterations", "batch_size", "val_batch_size", "synthetic_length", "val_length", "num_classes",
                "log_every")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("val_every", "checkpoint_every", "keep_last", "num_workers", "save_images", "sample_figure",
                "threads"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be 0 or more, got {getattr(cfg, key)}")
    for key in ("lr", "lr_d", "power", "head_lr_mult"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("delta", "weight_decay", "momentum", "self_training"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be 0 or more, got {getattr(cfg, key)}")
    if not 0 < cfg.rho_upper <= 1:
        raise ConfigError(f"rho_upper must be in (0, 1], got {cfg.rho_upper}")
    for key in ("source_size", "target_size", "val_size"):
        size = getattr(cfg, key)
        if size is not None and (len(size) != 2 or min(size) < 8):
            raise ConfigError(f"{key} must be [H, W] with both at least 8 (or null), got {size}")
    if len(cfg.disc_channels) != 4 or min(cfg.disc_channels) < 1:
        raise ConfigError(f"disc_channels must be 4 positive widths, got {cfg.disc_channels}")
    if len(cfg.disc_strides) != 5 or cfg.disc_strides[0] != 1 or any(s not in (1, 2) for s in cfg.disc_strides):
        raise ConfigError(f"disc_strides must be 5 values: 1, then 1 or 2 each, got {cfg.disc_strides}")
    if len(cfg.betas_d) != 2 or not all(0 <= b < 1 for b in cfg.betas_d):
        raise ConfigError(f"betas_d must be two numbers in [0, 1), got {cfg.betas_d}")
    if cfg.num_classes > 255:
        raise ConfigError(f"num_classes must be at most 255, got {cfg.num_classes}")
    return cfg


# Backbones whose published numbers fine-tune ImageNet weights (the small CPU net learns from scratch).
PRETRAINED_MODELS = ("deeplabv2_resnet101", "deeplabv2_resnet50", "fcn8s_vgg16")


def pretrained_warning(cfg: TrainConfig) -> str | None:
    """The warning for a run of an ImageNet backbone without ``pretrained`` weights, or None.

    Shapes: n/a.
    """
    if cfg.pretrained or cfg.model not in PRETRAINED_MODELS:
        return None
    return (f"warning: pretrained is null: {cfg.model} starts from random weights. The paper's results fine-tune "
            "ImageNet weights; set pretrained to a local ImageNet state dict of the backbone (see docs/training.md)"
            " to reproduce them")


def from_dict(values: Mapping[str, object], base: TrainConfig | None = None, origin: str = "config") -> TrainConfig:
    """``base`` (the defaults) updated by ``values``; an unknown key or a value of the wrong type is an error.

    Shapes: n/a.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{origin} must be a mapping of keys to values, got {type(values).__name__}")
    data = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        if key not in _FIELDS:
            close = [k for k in _FIELDS if k.split("_")[0] == str(key).split("_")[0]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {origin}{hint}")
        data[key] = _coerce(key, value, _HINTS[key])
    return validate(TrainConfig(**data))


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as YAML (``true``, ``0.5``, ``[64, 128]``, ``null``).

    Shapes: n/a.
    """
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot read value {raw!r}: {err}") from None
    if value is None and raw.strip() not in ("null", "~", "None"):
        value = raw
    if raw.strip() == "None":
        value = None
    return key, value


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic.yaml"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The dataclass defaults updated by the YAML file at ``path`` (the embedded synthetic config when None),
    then by ``key=value`` overrides.

    Shapes: n/a.
    """
    import yaml

    cfg = TrainConfig()
    path = DEFAULT_CONFIG if path is None else path
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {err}") from None
        cfg = from_dict(values, cfg, origin=str(path))
    if overrides:
        values = dict(parse_override(o) for o in overrides)
        cfg = from_dict(values, cfg, origin="the command line")
    return cfg
