"""The driver writes a PNG of held-out target scenes (image | ground truth | prediction, legend) after training."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ssfdan_ext.data import palette
from ssfdan_ext.train import train
from train_helpers import tiny_config


def test_run_writes_and_names_the_target_samples_png(tmp_path, capsys):
    result = train(tiny_config(tmp_path, sample_figure=2))
    out = capsys.readouterr().out
    path = tmp_path / "target_samples.png"
    assert f"wrote 2 held-out target scenes (image | ground truth | prediction) to {path}" in out
    img = np.asarray(Image.open(path).convert("RGB"))
    # 32x32 scenes drawn 8 times larger: three panels side by side, two scene rows, a header and the legend.
    assert img.shape[1] == 3 * 256 + 4 * 4 and img.shape[0] > 2 * 256
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    assert all(tuple(int(v) for v in c) in colours for c in palette(result.model.num_classes))  # the legend
    assert img[:16].min() < 128  # the panel titles


def test_sample_figure_zero_writes_nothing(tmp_path, capsys):
    train(tiny_config(tmp_path, sample_figure=0))
    assert not (tmp_path / "target_samples.png").exists()
    assert "target_samples.png" not in capsys.readouterr().out
