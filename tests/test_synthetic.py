"""Synthetic two-domain scenes: determinism, shared label statistics, different appearance, a real domain gap."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssfdan_ext.data import SyntheticScenes, build_dataset, class_names
from ssfdan_ext.evaluate import evaluate
from ssfdan_ext.models import build_model


def _statistics(domain: str, n: int = 64, seed: int = 3):
    ds = SyntheticScenes(domain, 19, (32, 64), seed=seed, length=n)
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
