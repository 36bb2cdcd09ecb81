"""Tiny training configurations shared by the driver's tests."""
from __future__ import annotations

from pathlib import Path

from ssfdan_ext.train import TrainConfig, from_dict, load_config

TINY = {
    "iterations": 2, "batch_size": 2, "source_size": [32, 32], "target_size": [32, 32], "val_size": [32, 32],
    "synthetic_length": 6, "val_length": 2, "model_kwargs": {"width": 4, "feature_channels": 8},
    "disc_channels": [8, 8, 8, 8], "tensorboard": False, "progress": False, "val_every": 0,
    "checkpoint_every": 0, "lr": 0.01, "lr_d": 0.01, "delta": 0.1, "save_images": 0, "threads": 1,
}


def tiny_config(out_dir: str | Path, **overrides: object) -> TrainConfig:
    """The embedded synthetic config shrunk to a run that takes well under a second per iteration.

    Shapes: 32x32 scenes, 4x4 features, 1x1 discriminator outputs.
    """
    return from_dict({**TINY, "out_dir": str(out_dir), **overrides}, load_config())


def tiny_overrides(out_dir: str | Path, **overrides: object) -> list[str]:
    """The same run as ``key=value`` command-line overrides.

    Shapes: n/a.
    """
    import yaml

    values = {**TINY, "out_dir": str(out_dir), **overrides}
    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in values.items()]
