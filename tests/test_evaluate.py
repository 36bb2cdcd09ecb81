"""Evaluation: confusion-matrix mIoU against hand-computed values, protocols, full resolution, tables and the CLI."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_trees import cityscapes_tree, crosscity_tree
from ssfdan_ext.data import Cityscapes, SyntheticScenes, classes
from ssfdan_ext.evaluate import (ConfusionMatrix, colorize, confusion_matrix, evaluate, iou_from_confusion,
                                 iou_table, mean_iou, write_iou_table)
from ssfdan_ext.evaluate.cli import main
from ssfdan_ext.models import build_model, save_checkpoint
from conftest import subprocess_env

LABEL = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])


def test_confusion_and_iou_by_hand():
    conf = confusion_matrix(PRED, LABEL, 3)
    # rows = labels: class 0 -> predicted 0 and 1; class 1 -> 1 twice; class 2 -> 0; the IGNORE pixel is skipped
    assert conf.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    iou = iou_from_confusion(conf)
    # IoU = TP / (TP + FP + FN): 1 / (1 + 1 + 1), 2 / (2 + 1 + 0), 0 / (0 + 0 + 1)
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64))
    assert mean_iou(iou) == pytest.approx(1 / 3)
    assert mean_iou(iou, [0, 1]) == pytest.approx(0.5)
    iou4 = iou_from_confusion(confusion_matrix(PRED, LABEL, 4))  # class 3 absent everywhere: undefined
    assert math.isnan(float(iou4[3])) and mean_iou(iou4) == pytest.approx(1 / 3)
    running = ConfusionMatrix(3)
    running.update(PRED, LABEL)
    running.update(PRED[:, :1], LABEL[:, :1])
    assert running.matrix.tolist() == [[2, 1, 0], [0, 3, 0], [1, 0, 0]]
    assert running.pixel_accuracy() == pytest.approx(5 / 7)


def test_confusion_errors():
    with pytest.raises(ValueError, match="one shape"):
        confusion_matrix(PRED, LABEL[:1], 3)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(PRED.float(), LABEL, 3)
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 3\)"):
        confusion_matrix(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]), 3)
    # labels outside [0, C) are skipped with their predictions, whatever those are
    assert confusion_matrix(torch.tensor([[0, 5]]), torch.tensor([[0, 7]]), 3).sum() == 1


def test_iou_tables(tmp_path):
    iou = torch.tensor([0.5, float("nan"), 0.25], dtype=torch.float64)
    md = iou_table(iou, ["road", "sidewalk", "building"])
    assert "| road     |   50.00 |" in md and "| sidewalk |     n/a |" in md and "| mIoU     |   37.50 |" in md
    assert iou_table(iou, ["a", "b", "c"], "csv") == "class,iou\na,50.00\nb,n/a\nc,25.00\nmIoU,37.50\n"
    md_path, csv_path = write_iou_table(iou, ["a", "b", "c"], tmp_path / "res" / "iou")
    assert md_path.read_text().startswith("| class") and csv_path.read_text().endswith("mIoU,37.50\n")
    with pytest.raises(ValueError, match="names"):
        iou_table(iou, ["a"])


class Oracle(torch.nn.Module):
    """Reads the class index from the image's first channel and returns confident one-hot logits."""

    def __init__(self, num_classes: int, lut: np.ndarray | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.lut = None if lut is None else torch.from_numpy(lut).long()

    def forward(self, x):
        cls = x[:, 0].round().long()
        if self.lut is not None:
            cls = self.lut[cls]
        cls = cls.clamp(0, self.num_classes - 1)
        return 10 * F.one_hot(cls, self.num_classes).permute(0, 3, 1, 2).float(), x


def _oracle_items(labels: torch.Tensor):
    return [(torch.stack([lbl.float().where(lbl != 255, torch.tensor(0.0))] * 3), lbl, f"x{i}")
            for i, lbl in enumerate(labels)]


@pytest.mark.parametrize("model_classes,label_classes", [(19, 19), (19, 16), (16, 13), (19, 13)])
def test_protocols_map_labels_into_the_model_space(model_classes, label_classes):
    labels = torch.randint(0, label_classes, (3, 10, 12))
    labels[:, 0] = 255
    model = Oracle(model_classes, classes.index_lut(label_classes, model_classes))
    res = evaluate(model, _oracle_items(labels), num_classes=label_classes, progress=False)
    assert res.iou.shape == (label_classes,) and res.class_names == classes.class_names(label_classes)
    assert res.miou == pytest.approx(1.0) and res.pixel_accuracy == pytest.approx(1.0)
    assert int(res.confusion.sum()) == 3 * 9 * 12
    with pytest.raises(ValueError, match="lack"):
        evaluate(Oracle(13), _oracle_items(labels), num_classes=19, progress=False)


def test_mIoU_star_keeps_the_16_class_confusion():
    labels = torch.tensor([[[3, 0], [0, 1]]])  # a wall pixel (16-class index 3), predicted as road below
    model = Oracle(16, np.where(np.arange(256) == 3, 0, np.arange(256)).astype(np.uint8))
    res = evaluate(model, _oracle_items(labels), protocol=13, progress=False)
    assert res.class_names == classes.class_names(13)
    # road: TP 2, FP 1 (the wall pixel) -> 2/3; sidewalk 1; the other classes are absent (NaN)
    assert float(res.iou[0]) == pytest.approx(2 / 3) and float(res.iou[1]) == pytest.approx(1.0)
    assert res.miou == pytest.approx((2 / 3 + 1) / 2)


def test_logits_are_upsampled_to_the_full_label_resolution(tmp_path):
    class Coarse(torch.nn.Module):
        num_classes = 2

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):  # 2x2 logits: class 0 on the left column, class 1 on the right
            return torch.tensor([[[1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [-1.0, 1.0]]])[None], x

    label = torch.zeros(16, 16, dtype=torch.long)
    label[:, 8:] = 1
    model = Coarse().train()
    res = evaluate(model, [(torch.zeros(3, 4, 4), label, "left_right.png")], num_classes=2, progress=False,
                   save_dir=tmp_path, save_predictions=1)
    assert int(res.confusion.sum()) == 256 and res.miou == pytest.approx(1.0)
    assert model.training  # evaluation hands the model back in the mode it came in
    saved = Image.open(tmp_path / "left_right_pred.png")
    assert saved.size == (16, 16)


def test_colorize_uses_the_cityscapes_palette():
    pred = torch.tensor([[0, 3], [12, 255]])
    rgb = np.asarray(colorize(pred, 13).convert("RGB"))
    assert rgb[0, 0].tolist() == [128, 64, 128]  # road
    assert rgb[0, 1].tolist() == [250, 170, 30]  # 13-class index 3 = traffic light
    assert rgb[1, 0].tolist() == [119, 11, 32]  # bicycle
    assert rgb[1, 1].tolist() == [0, 0, 0]


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_model("small", 19, width=4, feature_channels=8)
    save_checkpoint(model, tmp_path / "tiny.pth")
    return tmp_path / "tiny.pth"


def test_cli_on_a_cityscapes_tree(tmp_path, tiny_checkpoint, capsys):
    cityscapes_tree(tmp_path / "cs", "val")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(tiny_checkpoint), "--dataset", "cityscapes", "--root", str(tmp_path / "cs"),
                 "--input-size", "8x16", "--out", str(out), "--workers", "0", "--device", "cpu",
                 "--save-predictions", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| traffic light |" in printed and "4 images" in printed
    # The file agrees with evaluating the same model on the same data directly.
    from ssfdan_ext.models import load_checkpoint

    direct = evaluate(load_checkpoint(tiny_checkpoint),
                      Cityscapes(tmp_path / "cs", "val", size=(8, 16), resize_label=False), progress=False)
    assert (out / "iou.csv").read_text().splitlines()[-1] == f"mIoU,{100 * direct.miou:.2f}"
    assert (out / "iou.md").exists()
    preds = sorted((out / "predictions").glob("*_pred.png"))
    assert len(preds) == 2 and Image.open(preds[0]).size == (32, 16)  # at the label's full resolution


def test_cli_on_a_crosscity_tree(tmp_path, tiny_checkpoint, capsys):
    crosscity_tree(tmp_path / "nthu", "Taipei")
    args = ["--checkpoint", str(tiny_checkpoint), "--dataset", "crosscity", "--root", str(tmp_path / "nthu"),
            "--city", "Taipei", "--workers", "0", "--no-progress", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "(crosscity test, 2 images)" in printed and "| wall" not in printed  # the 13-class protocol
    assert len((tmp_path / "o" / "iou.csv").read_text().splitlines()) == 1 + 13 + 1
    with pytest.raises(SystemExit):
        main([*args, "--label-encoding", "rgb"])
    assert "invalid choice: 'rgb'" in capsys.readouterr().err


def test_cli_on_synthetic_scenes_and_plain_state_dicts(tmp_path, tiny_checkpoint, capsys):
    plain = tmp_path / "plain.pth"
    model = build_model("small", 13)
    torch.save(model.state_dict(), plain)
    args = ["--dataset", "synthetic", "--length", "3", "--input-size", "32x64", "--workers", "0",
            "--out", str(tmp_path / "o"), "--no-progress", "--save-predictions", "0"]
    assert main(["--checkpoint", str(plain), "--model", "small", "--num-classes", "13", *args]) == 0
    assert "bicycle" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--model"):
        main(["--checkpoint", str(plain), *args])
    with pytest.raises(SystemExit, match="no classifier for 19"):
        main(["--checkpoint", str(plain), "--model", "small", *args])
    with pytest.raises(SystemExit, match="--root"):
        main(["--checkpoint", str(tiny_checkpoint), "--dataset", "gta5"])
    with pytest.raises(SystemExit, match="images/<name>.png"):
        main(["--checkpoint", str(tiny_checkpoint), "--dataset", "gta5", "--root", str(tmp_path)])


def test_python_dash_m_entry_point(tmp_path, tiny_checkpoint):
    env = subprocess_env()
    done = subprocess.run([sys.executable, "-m", "ssfdan_ext.evaluate", "--checkpoint", str(tiny_checkpoint),
                           "--dataset", "synthetic", "--length", "2", "--input-size", "16x32", "--workers", "0",
                           "--out", str(tmp_path / "m")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "mIoU" in done.stdout and "evaluate" in done.stderr  # the tqdm progress bar
    assert (tmp_path / "m" / "iou.csv").exists()


def test_cli_on_a_plain_state_dict_with_non_default_widths(tmp_path, capsys):
    plain = tmp_path / "narrow.pth"
    torch.save(build_model("small", 13, width=8, feature_channels=16).state_dict(), plain)
    args = ["--checkpoint", str(plain), "--model", "small", "--num-classes", "13", "--dataset", "synthetic",
            "--length", "2", "--input-size", "32x64", "--workers", "0", "--out", str(tmp_path / "o"),
            "--no-progress", "--save-predictions", "0"]
    with pytest.raises(SystemExit):  # the default widths do not fit the weights
        main(args)
    capsys.readouterr()
    assert main([*args, "--model-kwargs", "{width: 8, feature_channels: 16}"]) == 0
    assert "mIoU" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="do not fit small"):
        main([*args, "--model-kwargs", "{depth: 3}"])
    with pytest.raises(SystemExit):
        main([*args, "--model-kwargs", "[1, 2]"])
    assert "expected a YAML mapping" in capsys.readouterr().err
