"""Randomly initialised segmenters are numerically sane: bounded logits, finite SGD steps, and weights still load.

A DeepLab-v2 ResNet-101 with frozen BatchNorm used to give logits of ~5e4 on a normalised image (33 residual
branches added up unnormalised), and the first SGD step at the configs' learning rate turned them into NaN.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("torchvision")  # the backbones' optional dependency (the 'models' extra)

from ssfdan_ext.models import build_model, load_pretrained  # noqa: E402
from ssfdan_ext.train import load_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# (name, constructor kwargs, config whose learning rates the SGD test uses)
MODELS = [
    pytest.param("deeplabv2_resnet101", {}, "gta5_cityscapes_deeplabv2", id="deeplabv2_resnet101"),
    pytest.param("deeplabv2_resnet50", {}, "gta5_cityscapes_deeplabv2", id="deeplabv2_resnet50"),
    pytest.param("deeplabv2_resnet50", {"frozen_bn": False}, "gta5_cityscapes_deeplabv2",
                 id="deeplabv2_resnet50-trainable_bn"),
    pytest.param("fcn8s_vgg16", {}, "gta5_cityscapes_fcn8s", id="fcn8s_vgg16"),
    pytest.param("small", {}, "synthetic", id="small"),
]


def _model(name: str, kwargs: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, 19, **kwargs)


@pytest.mark.parametrize("name, kwargs, config", MODELS)
def test_random_init_logits_are_bounded(name, kwargs, config):
    model = _model(name, kwargs).eval()
    x = torch.randn(2, 3, 64, 64)  # a normalised image: zero mean, unit variance per channel
    with torch.no_grad():
        logits, features = model(x)
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    assert float(logits.abs().max()) < 10, f"{name}: logits up to {float(logits.abs().max()):.3g}"
    assert float(features.abs().max()) < 100
    if not name.startswith("fcn"):  # FCN-8s starts its score layers at zero, as the original does
        assert float(logits.abs().max()) > 0
    if name.startswith("fcn"):  # the VGG activations do not vanish on their way to fc7
        assert float(features.std()) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, config", MODELS)
def test_sgd_steps_at_the_configs_lr_stay_finite(name, kwargs, config):
    cfg = load_config(CONFIGS / f"{config}.yaml")
    model = _model(name, kwargs).train()
    head = {id(p) for p in model.head_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": cfg.lr},
              {"params": model.head_parameters(), "lr": cfg.lr * cfg.head_lr_mult}]
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    torch.manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(1, 3, 32, 48), torch.randint(0, 19, (1, 32, 48))
        logits, features = model(x)
        loss = F.cross_entropy(F.interpolate(logits, size=(32, 48), mode="bilinear", align_corners=True), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss = float(loss.detach())
        assert loss == loss and loss < 10, f"{name}: loss {loss}"
        assert torch.isfinite(features).all() and float(logits.detach().abs().max()) < 10
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if name.startswith("deeplab"):  # the residual branches start at zero but do train
        block = model.layer3[5]
        trained = block.conv3.weight if kwargs.get("frozen_bn", True) else block.bn3.weight
        assert float(trained.detach().abs().max()) > 0


@pytest.mark.parametrize("name, kwargs, config", MODELS[:4])
def test_loaded_weights_overwrite_the_initialisation(name, kwargs, config):
    model = _model(name, kwargs)
    torch.manual_seed(2)
    state = {k: torch.rand_like(v) + 0.5 for k, v in model.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    report = load_pretrained(model, state)
    assert report.missing == [] and report.skipped_head == []
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key
