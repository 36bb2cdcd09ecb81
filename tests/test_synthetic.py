"""Synthetic two-domain scenes: determinism, shared label statistics, different appearance, a real domain gap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssfdan_ext.data import SyntheticScenes, build_dataset, class_names
from ssfdan_ext.evaluate import evaluate
from ssfdan_ext.models import build_model


def _statistics(domain: str, n: int = 64, seed: int = 3, shift: str = "none", size=(32, 64)):
    ds = SyntheticScenes(domain, 19, size, seed=seed, length=n, shift=shift)
    hist, colour, count, edges = torch.zeros(256), torch.zeros(19, 3), torch.zeros(19), []
    for i in range(n):
        rgb, label = ds.render(i)
        hist += torch.bincount(label.flatten(), minlength=256).float()
        for c in range(19):
            mask = label == c
            colour[c] += rgb[:, mask].sum(1)
            count[c] += mask.sum()
        edges.append((rgb[:, :, 1:] - rgb[:, :, :-1]).abs().mean())
    return hist / hist.sum(), colour / count[:, None].clamp(min=1), float(torch.stack(edges).mean())


def test_items_shapes_and_protocols():
    ds = SyntheticScenes("target", num_classes=13, size=(24, 40), seed=2, length=5)
    image, label, name = ds[4]
    assert image.shape == (3, 24, 40) and image.dtype == torch.float32
    assert label.shape == (24, 40) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(13)) | {255}
    assert name == "target_2_00004" and len(ds) == 5 and ds.class_names == class_names(13)
    rgb, train_ids = ds.render(4)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 255
    assert bool((train_ids == 255).any())  # the ego-vehicle strip is ignored
    with pytest.raises(ValueError, match="domain"):
        SyntheticScenes("night")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticScenes(num_classes=5)
    with pytest.raises(IndexError):
        ds.render(5)


def test_deterministic_per_seed():
    a, b = SyntheticScenes("source", seed=7, length=3), SyntheticScenes("source", seed=7, length=3)
    for i in range(3):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    other = SyntheticScenes("source", seed=8, length=1)
    target = SyntheticScenes("target", seed=7, length=1)
    assert not torch.equal(a[0][1], other[0][1])
    assert not torch.equal(a[0][1], target[0][1])  # the domains draw different scenes for one seed


def test_domains_share_label_statistics_but_not_appearance():
    hist_s, colour_s, edges_s = _statistics("source")
    hist_t, colour_t, edges_t = _statistics("target")
    hist_s2 = _statistics("source", seed=4)[0]
    # Class frequencies: the domains are as close as two source samples of the same size.
    assert float((hist_s - hist_t).abs().sum()) < 0.1
    assert float((hist_s - hist_s2).abs().sum()) < 0.1
    assert hist_s[:19].gt(0).all() and hist_t[:19].gt(0).all()
    # Mean colour per class (0-255 scale) moves by more than 30 for nearly every class.
    moved = (colour_s - colour_t).norm(dim=1) > 30
    assert int(moved.sum()) >= 16
    assert edges_t > 1.3 * edges_s  # target texture and sensor noise: stronger pixel-to-pixel changes


def test_build_dataset_synthetic():
    assert build_dataset("synthetic", split="train", length=2).domain == "source"
    assert build_dataset("synthetic", split="val", length=2).domain == "target"
    with pytest.raises(ValueError, match="split"):
        build_dataset("synthetic", split="everything")


@pytest.mark.slow
def test_source_only_model_degrades_on_target():
    size, C = (32, 64), 13
    source = SyntheticScenes("source", C, size, seed=0, length=48)
    images = torch.stack([source[i][0] for i in range(len(source))])
    labels = torch.stack([source[i][1] for i in range(len(source))])
    torch.manual_seed(0)
    model = build_model("small", C, width=8, feature_channels=16)
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(80):
        idx = torch.randint(0, len(images), (8,))
        logits = F.interpolate(model(images[idx])[0], size=size, mode="bilinear", align_corners=True)
        loss = F.cross_entropy(logits, labels[idx], ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = {d: SyntheticScenes(d, C, size, seed=5, length=16) for d in ("source", "target")}
    res = {d: evaluate(model, [(x[None], y[None], [n]) for x, y, n in ds], progress=False)
           for d, ds in held_out.items()}
    assert res["source"].pixel_accuracy > 0.65  # it learned the source
    assert res["source"].miou - res["target"].miou > 0.05
    assert res["source"].pixel_accuracy - res["target"].pixel_accuracy > 0.08


# --- shift="class": class-conditional appearance and label distribution shift -----------------------------------

def _class_statistics(domain: str, shift: str, n: int = 48, size=(32, 64), seed: int = 3):
    """Class frequencies among the labelled pixels and the mean colour of each class."""
    hist, colour, _ = _statistics(domain, n, seed, shift, size)
    return hist[:19] / hist[:19].sum(), colour


def test_default_shift_is_unchanged():
    # shift="none" is the default and the source domain is the same under both shifts, bit for bit.
    for domain in ("source", "target"):
        a, b = SyntheticScenes(domain, seed=5, length=2), SyntheticScenes(domain, seed=5, length=2, shift="none")
        for i in range(2):
            assert torch.equal(a.render(i)[0], b.render(i)[0]) and torch.equal(a.render(i)[1], b.render(i)[1])
    a, b = SyntheticScenes("source", seed=5, length=2), SyntheticScenes("source", seed=5, length=2, shift="class")
    assert torch.equal(a.render(1)[0], b.render(1)[0]) and torch.equal(a.render(1)[1], b.render(1)[1])
    with pytest.raises(ValueError, match="shift"):
        SyntheticScenes(shift="global")


def test_class_shift_deterministic_per_seed():
    make = lambda seed, shift_seed=0: SyntheticScenes("target", 13, (32, 64), seed=seed, length=2,  # noqa: E731
                                                      shift="class", shift_seed=shift_seed)
    a, b = make(4), make(4)
    for i in range(2):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1])
    assert not torch.equal(a[0][1], make(5)[0][1])
    # The per-class transforms come from shift_seed alone: same layout, other colours.
    other = make(4, shift_seed=1)
    assert torch.equal(a[0][1], other[0][1]) and not torch.equal(a[0][0], other[0][0])


def test_class_shift_swaps_colours_between_domains():
    from ssfdan_ext.data.synthetic import CLASS_SHIFT

    _, colour_s = _class_statistics("source", "class")
    _, colour_t = _class_statistics("target", "class")
    for a, b in CLASS_SHIFT["swaps"]:
        for x, y in ((a, b), (b, a)):
            # What x looks like in the source, y looks like in the target (0-255 scale; the illumination falls
            # off from top to bottom, so classes at other heights differ by a few percent).
            gap = float((colour_s[x] - colour_t[y]).norm())
            assert gap < 30 and gap < 0.25 * float((colour_s[x] - colour_s[y]).norm()), (x, y, gap)
            assert float((colour_s[x] - colour_t[x]).norm()) > 60  # and x itself looks different in the target


def test_class_shift_changes_class_frequencies():
    hist_s, _ = _class_statistics("source", "class", n=64)
    hist_t, _ = _class_statistics("target", "class", n=64)
    hist_none, _ = _class_statistics("target", "none", n=64)
    # The target under shift="none" has the source's layouts; under shift="class" more vehicles and people and
    # less sky and building (CLASS_SHIFT["target_layout"]).
    assert float((hist_s - hist_none).abs().sum()) < 0.1
    assert float((hist_s - hist_t).abs().sum()) > 0.15
    vehicles, people = [13, 14, 15, 16, 17, 18], [11, 12]
    assert float(hist_t[vehicles].sum()) > 1.5 * float(hist_s[vehicles].sum())
    assert float(hist_t[people].sum()) > 1.5 * float(hist_s[people].sum())
    assert float(hist_t[10]) < 0.9 * float(hist_s[10]) and float(hist_t[2]) < 0.9 * float(hist_s[2])


def test_driver_config_selects_the_class_shift(tmp_path):
    from pathlib import Path

    from ssfdan_ext.train import ConfigError, from_dict, load_config
    from ssfdan_ext.train.data import build_datasets

    root = Path(__file__).resolve().parent.parent
    cfg = load_config(root / "configs" / "synthetic_class_shift.yaml")
    assert cfg.synthetic_shift == "class" and cfg.source_size == [128, 256]
    from ssfdan_ext.geometry import output_size

    assert output_size(16, 32, cfg.disc_strides) >= (4, 8)  # 16x32 feature cells at output stride 8
    small = from_dict({"source_size": [32, 64], "target_size": [32, 64], "val_size": [32, 64],
                       "synthetic_length": 2, "val_length": 2}, cfg)
    source, target, val = build_datasets(small)
    assert (source.dataset.domain, target.dataset.domain, val.dataset.domain) == ("source", "target", "target")
    assert target.dataset.shift == val.dataset.shift == "class"
    # source_split: target trains on the labelled target training scenes (the upper bound of the ablation).
    upper = build_datasets(from_dict({"source_split": "target"}, small))[0]
    assert torch.equal(upper[1][0], target[1][0]) and torch.equal(upper[1][1], target[1][1])
    with pytest.raises(ConfigError, match="synthetic_shift"):
        from_dict({"synthetic_shift": "global"}, cfg)


def test_domain_grid_script(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "plot_synthetic_domains.py"
    spec = importlib.util.spec_from_file_location("plot_synthetic_domains", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "grid.png"
    assert module.main(["--size", "32", "64", "--columns", "2", "--frequency-scenes", "4", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
