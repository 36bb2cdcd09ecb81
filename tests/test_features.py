"""WithFeatures: (logits, features) from segmenters that return logits only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import ssfdan_ext as sd


def test_sequential_model_and_the_discriminator_step():
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model = sd.WithFeatures(body, layer="1")
    image = torch.randn(2, 3, 16, 16)
    logits, features = model(image)
    torch.testing.assert_close(logits, body(image))
    assert features.shape == (2, 8, 8, 8) and features.requires_grad
    disc = sd.SeparatedDiscriminator(4, 8, (4, 4, 4, 4))
    sel = sd.confidence_select(logits.detach(), 1.0)
    sd.adversarial_loss(disc(features, sel.labels), sel.tau).backward()
    assert body[0].weight.grad is not None and body[0].weight.grad.abs().sum() > 0
    assert list(model.state_dict()) == [f"model.{k}" for k in body.state_dict()]


def test_torchvision_segmentation_model():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5,
                                                       aux_loss=True).eval()
    model = sd.WithFeatures(net, layer="backbone.layer4")  # the dict output's "out" entry is the logits
    with torch.no_grad():
        logits, features = model(torch.randn(1, 3, 64, 64))
        expected = net(torch.randn(1, 3, 64, 64))
    assert logits.shape == expected["out"].shape == (1, 5, 64, 64)
    assert features.shape == (1, 2048, 8, 8)  # ResNet-50 at output stride 8, as the paper's DeepLab


def test_tuple_outputs_and_errors():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Conv2d(3, 6, 1)
            self.aux, self.main = nn.Conv2d(6, 2, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            f = self.trunk(x)
            return self.aux(f), self.main(f)

    net = TwoHeads()
    x = torch.randn(1, 3, 4, 4)
    logits, features = sd.WithFeatures(net, "trunk", output_index=1)(x)
    torch.testing.assert_close(logits, net(x)[1])
    with pytest.raises(ValueError, match=r"'trunc' is not a submodule of TwoHeads; closest names: \['trunk'\]"):
        sd.WithFeatures(net, "trunc")
    with pytest.raises(ValueError, match="not a submodule"):
        sd.WithFeatures(net, "")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sd.WithFeatures(lambda x: x, "trunk")


def test_a_layer_that_does_not_run_is_reported():
    class Skips(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(RuntimeError, match="'unused' did not run"):
        sd.WithFeatures(Skips(), "unused")(torch.randn(1, 3, 2, 2))


def test_discriminator_output_explains_itself():
    out = sd.DiscriminatorOutput(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64))
    with pytest.raises(AttributeError, match="not a tensor.*adversarial_loss"):
        out.data
    logits, labels = out  # still a pair
    assert logits.shape == (1, 1, 2, 2)
