"""Segmentation models: output shapes, feature widths, the four-branch ASPP, frozen BatchNorm and weight loading."""
from __future__ import annotations

import pytest
import torch

torchvision = pytest.importorskip("torchvision")  # the backbones' optional dependency (the 'models' extra)
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from ssfdan_ext.models import (ASPPClassifier, build_model, load_checkpoint, load_pretrained,  # noqa: E402
                               save_checkpoint)


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return build_model("deeplabv2_resnet101", 19).eval()


@pytest.fixture(scope="module")
def resnet101_state():
    torch.manual_seed(1)
    return torchvision.models.resnet101(weights=None).state_dict()


def test_deeplab_shapes_and_features(deeplab):
    with torch.no_grad():
        logits, features = deeplab(torch.randn(1, 3, 65, 65))
    assert logits.shape == (1, 19, 9, 9) and features.shape == (1, 2048, 9, 9)
    assert deeplab.feature_channels == 2048 and deeplab.feature_stride == 8
    assert [c.dilation for c in deeplab.layer5.conv2d_list] == [(6, 6), (12, 12), (18, 18), (24, 24)]


def test_deeplab_batchnorm_is_frozen(deeplab):
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deeplab.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in deeplab.modules()) == 1 + 3 * 33 + 4
    # No BatchNorm parameter is trainable: only convolutions and the ASPP head take gradients.
    assert all(n.endswith("conv1.weight") or n.endswith("conv2.weight") or n.endswith("conv3.weight")
               or n.endswith("downsample.0.weight") or n.startswith("layer5.") for n, _ in deeplab.named_parameters())
    bn = deeplab.layer2[0].bn2
    assert not bn.weight.requires_grad and "weight" not in dict(bn.named_parameters())
    # Train mode normalises with the stored statistics and leaves them alone, exactly like eval mode.
    with torch.no_grad():
        bn.running_mean.normal_(), bn.running_var.uniform_(0.5, 2.0)
        x = torch.randn(1, 3, 17, 17)
        stats = bn.running_mean.clone()
        expected = deeplab.eval()(x)[0]
        got = deeplab.train()(x)[0]
    deeplab.eval()
    torch.testing.assert_close(got, expected)
    assert torch.equal(bn.running_mean, stats)
    trainable = build_model("deeplabv2_resnet50", 5, frozen_bn=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.modules())


def test_deeplab_caffe_style(deeplab):
    model = build_model("deeplabv2_resnet101", 13, caffe_style=True).eval()
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)
    assert model.layer3[0].conv2.dilation == (2, 2) and model.layer4[0].conv2.dilation == (4, 4)
    assert model.normalization == "caffe" and deeplab.normalization == "imagenet"
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 65, 65))
    assert logits.shape == (1, 13, 9, 9) and features.shape == (1, 2048, 9, 9)


def _branch_grads(head: ASPPClassifier, x: torch.Tensor) -> list[float]:
    head.zero_grad()
    head(x).sum().backward()
    return [float(c.weight.grad.abs().sum()) if c.weight.grad is not None else 0.0 for c in head.conv2d_list]


def test_aspp_has_four_active_branches():
    torch.manual_seed(0)
    head = ASPPClassifier(4, 3)
    x = torch.randn(1, 4, 30, 30)
    expected = sum(conv(x) for conv in head.conv2d_list)
    torch.testing.assert_close(head(x), expected)
    assert all(g > 0 for g in _branch_grads(head, x))
    for conv in head.conv2d_list:  # every branch changes the output
        with torch.no_grad():
            before = head(x)
            conv.weight.add_(1.0)
            assert not torch.allclose(head(x), before)


def test_legacy_two_branch_head():
    torch.manual_seed(0)
    head = ASPPClassifier(4, 3, active_branches=2)
    x = torch.randn(1, 4, 30, 30)
    torch.testing.assert_close(head(x), head.conv2d_list[0](x) + head.conv2d_list[1](x))
    grads = _branch_grads(head, x)
    assert grads[0] > 0 and grads[1] > 0 and grads[2] == 0 and grads[3] == 0
    model = build_model("deeplabv2_resnet101", 19, aspp_branches=2)
    assert model.layer5.active_branches == 2 and len(model.layer5.conv2d_list) == 4
    with pytest.raises(ValueError, match="active_branches"):
        ASPPClassifier(4, 3, active_branches=5)


def test_fcn8s_shapes_and_imagenet_weights():
    torch.manual_seed(0)
    model = build_model("fcn8s_vgg16", 16).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, 16, 8, 12) and features.shape == (1, 4096, 2, 3)
    assert model.feature_channels == 4096
    # torchvision VGG16's keys and shapes (built on the meta device: initialising 138M weights takes seconds).
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}
    state = {k: torch.randn(shape) for k, shape in shapes.items()}
    report = load_pretrained(model, state)
    assert len(report.loaded) == 30 and report.skipped_head == []
    torch.testing.assert_close(model.fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7))
    torch.testing.assert_close(model.features[28].weight, state["features.28.weight"])


def test_small_model_shapes():
    model = build_model("small", 7, feature_channels=24)
    logits, features = model(torch.randn(2, 3, 40, 56))
    assert logits.shape == (2, 7, 5, 7) and features.shape == (2, 24, 5, 7)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 1, 40, 56))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="name"):
        build_model("unet", 19)


def test_load_imagenet_resnet(deeplab, resnet101_state, tmp_path):
    path = tmp_path / "resnet101.pth"
    torch.save(resnet101_state, path)
    report = load_pretrained(deeplab, path)
    assert len(report.missing) == 8 and all(k.startswith("layer5.") for k in report.missing)
    torch.testing.assert_close(deeplab.layer3[7].conv2.weight, resnet101_state["layer3.7.conv2.weight"])
    torch.testing.assert_close(deeplab.layer1[0].bn1.running_var, resnet101_state["layer1.0.bn1.running_var"])


def test_load_adaptsegnet_checkpoint(deeplab, resnet101_state):
    # DeepLab init files: "Scale." prefix, no BatchNorm counters, a 21-class head (skipped for 19 classes).
    state = {f"Scale.{k}": v for k, v in resnet101_state.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for i in range(4):
        state[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.zeros(21, 2048, 3, 3)
        state[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.zeros(21)
    report = load_pretrained(deeplab, state)
    assert len(report.skipped_head) == 8
    state = {k: v for k, v in state.items() if "layer5" not in k}
    for i in range(4):  # a trained 19-class model saved by DataParallel
        state[f"module.layer5.conv2d_list.{i}.weight"] = torch.full((19, 2048, 3, 3), float(i))
        state[f"module.layer5.conv2d_list.{i}.bias"] = torch.zeros(19)
    report = load_pretrained(deeplab, state)
    assert report.skipped_head == [] and report.missing == []
    assert float(deeplab.layer5.conv2d_list[3].weight.detach().mean()) == 3.0
    state["module.layer6.conv2d_list.0.weight"] = torch.zeros(19, 1024, 3, 3)  # the multi-level head
    with pytest.raises(ValueError, match="layer6.conv2d_list.0.weight"):
        load_pretrained(deeplab, state)
    load_pretrained(deeplab, state, ignore_prefixes=("layer6.",))
    del state["Scale.layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match="lacks 1 backbone keys.*layer1.0.conv1.weight"):
        load_pretrained(deeplab, state, ignore_prefixes=("layer6.",))


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = build_model("small", 13, width=8, feature_channels=16)
    save_checkpoint(model, tmp_path / "ckpt.pth", iteration=5)
    loaded = load_checkpoint(tmp_path / "ckpt.pth")
    assert loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(model, tmp_path / "missing.pth")
    torch.save({"body.0.0.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="save_checkpoint"):
        load_checkpoint(tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="shape"):
        load_pretrained(model, tmp_path / "plain.pth")
