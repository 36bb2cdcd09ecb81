"""Every shipped config trains end to end through ``ssfdan-train`` on miniature trees in its datasets' layouts.

Each config keeps its model at full depth, its discriminator widths and strides, its class count, learning rates
and ``pretrained: null``; only the data roots, the image sizes (the config's, divided so that the target is 32
pixels high), the iteration count and the run's plumbing (workers, logging, out_dir) are overridden. A new file in
``configs/`` is covered by the glob.
"""
from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torchvision")  # the backbones' optional dependency (the 'models' extra)

from data_trees import dataset_tree  # noqa: E402
from ssfdan_ext.train import load_config  # noqa: E402
from ssfdan_ext.train.cli import main  # noqa: E402
from ssfdan_ext.train.config import PRETRAINED_MODELS  # noqa: E402
from ssfdan_ext.train.runlog import read_csv  # noqa: E402

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
TARGET_HEIGHT = 32


def _param(path: Path):
    marks = [pytest.mark.slow]
    if load_config(path).source == "synthia":  # Synthia's 16-bit labels are read with OpenCV
        marks.append(pytest.mark.skipif(importlib.util.find_spec("cv2") is None,
                                        reason="opencv-python-headless is not installed"))
    return pytest.param(path, id=path.stem, marks=marks)


def _shrunk(size: list[int] | None, factor: int) -> list[int] | None:
    return None if size is None else [max(8, round(s / factor)) for s in size]


def test_every_config_is_covered():
    names = {p.stem for p in CONFIGS}
    assert {"synthetic", "gta5_cityscapes_deeplabv2", "gta5_cityscapes_fcn8s", "synthia_cityscapes_16",
            "synthia_cityscapes_13", "cityscapes_crosscity_rome", "cityscapes_crosscity_rio",
            "cityscapes_crosscity_tokyo", "cityscapes_crosscity_taipei"} <= names


@pytest.mark.parametrize("path", [_param(p) for p in CONFIGS])
def test_config_trains_and_validates(path, tmp_path, capsys):
    cfg = load_config(path)
    factor = max(1, (cfg.target_size or [TARGET_HEIGHT])[0] // TARGET_HEIGHT)
    sizes = {k: _shrunk(getattr(cfg, k), factor) for k in ("source_size", "target_size", "val_size")}
    overrides = {"out_dir": str(tmp_path / "run"), "iterations": 2, "num_workers": 0, "val_every": 0,
                 "checkpoint_every": 0, "tensorboard": False, "progress": False, **sizes}
    if cfg.source == "synthetic" or cfg.target == "synthetic":
        overrides.update(synthetic_length=4, val_length=2)
    for role, dataset, splits, size in (("source", cfg.source, (cfg.source_split,), sizes["source_size"]),
                                        ("target", cfg.target, (cfg.target_split, cfg.val_split),
                                         sizes["target_size"])):
        if dataset != "synthetic":
            h, w = size or (TARGET_HEIGHT, 2 * TARGET_HEIGHT)
            dataset_tree(dataset, tmp_path / role, splits, h, w, city=cfg.city)
            overrides[f"{role}_root"] = str(tmp_path / role)
    argv = ["--config", str(path)] + [f"{k}={_yaml(v)}" for k, v in overrides.items()]
    try:
        assert main(argv) == 0
        out = capsys.readouterr().out
        rows = read_csv(tmp_path / "run" / "train.csv")
        assert [int(r["iteration"]) for r in rows] == [0, 1]
        for row in rows:
            losses = [float(row[k]) for k in ("loss_seg", "loss_adv", "loss_d")]
            assert all(math.isfinite(v) for v in losses), row
            assert 0 < losses[0] < 10, row  # about log(num_classes) from a random start, not 5e4
        assert (tmp_path / "run" / "checkpoints" / "best.pt").stat().st_size > 0
        assert (tmp_path / "run" / "final.pt").stat().st_size > 0
        assert f"target-domain IoU after 2 iterations ({cfg.adaptation}, {cfg.name})" in out and "| mIoU" in out
        # The driver warns once when an ImageNet backbone starts from random weights, never for the small net.
        assert out.count("pretrained is null") == (1 if cfg.model in PRETRAINED_MODELS else 0)
    finally:  # the full checkpoints of the paper-width discriminators take gigabytes
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def _yaml(value: object) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
