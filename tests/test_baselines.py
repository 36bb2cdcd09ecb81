"""Baseline discriminators of the ablation table: global and soft (class-weighted) adversarial losses."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssfdan_ext as sd
from ssfdan_ext.nn import (GlobalDiscriminator, SoftDiscriminator, labelled_cells, soft_adversarial_loss,
                           soft_class_weights, soft_discriminator_loss)

CH = (8, 6, 5, 4)


def test_global_discriminator_is_a_one_class_ssd():
    torch.manual_seed(0)
    glob = GlobalDiscriminator(in_channels=7, channels=CH)
    ssd = sd.SeparatedDiscriminator(1, in_channels=7, channels=CH, backend="reference")
    ssd.load_state_dict(glob.state_dict())  # same layout as the one-class SS-D
    feats = torch.randn(2, 7, 12, 20)
    out = glob(feats)
    ref = ssd(feats, torch.zeros(2, 12, 20, dtype=torch.long))
    assert out.logits.shape == (2, 1, *glob.output_size(12, 20))
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-6)
    assert bool((out.labels == 0).all())
    # Without tau the public losses are the plain mean BCE over all cells.
    expected = F.binary_cross_entropy_with_logits(out.logits, torch.zeros_like(out.logits))
    torch.testing.assert_close(sd.adversarial_loss(out), expected)
    with pytest.raises(ValueError, match="in_channels"):
        glob(torch.randn(1, 5, 8, 8))


def test_soft_discriminator_runs_one_stack_per_class():
    torch.manual_seed(1)
    C = 3
    soft = SoftDiscriminator(C, in_channels=5, channels=CH)
    feats = torch.randn(2, 5, 16, 16)
    logits = soft(feats)
    assert logits.shape == (2, C, *soft.output_size(16, 16))
    for c in range(C):  # class c's stack is a global discriminator with its slice of the weights
        single = GlobalDiscriminator(in_channels=5, channels=CH)
        state = {}
        for l, conv in enumerate(soft.convs):
            rows = conv.out_channels // C
            state[f"convs.{l}.weight"] = conv.weight[c * rows:(c + 1) * rows]
            state[f"convs.{l}.bias"] = conv.bias[c * rows:(c + 1) * rows]
        single.load_state_dict(state)
        torch.testing.assert_close(logits[:, c:c + 1], single(feats).logits, rtol=1e-5, atol=1e-6)


def test_soft_class_weights_are_bin_fractions():
    labels = torch.tensor([[[0, 0, 1, 2],
                            [0, 1, 255, 255],
                            [2, 2, 255, 255],
                            [2, 2, 255, 255]]])
    w = soft_class_weights(labels, (2, 2), 3)
    assert w.shape == (1, 3, 2, 2)
    torch.testing.assert_close(w[0, :, 0, 0], torch.tensor([0.75, 0.25, 0.0]))
    torch.testing.assert_close(w[0, :, 0, 1], torch.tensor([0.0, 0.5, 0.5]))  # IGNORE pixels left out
    torch.testing.assert_close(w[0, :, 1, 0], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(w[0, :, 1, 1], torch.zeros(3))  # no labelled pixel
    assert int(labelled_cells(w)) == 3
    with pytest.raises(ValueError, match="labels"):
        soft_class_weights(torch.full((1, 4, 4), 7), (2, 2), 3)
    with pytest.raises(ValueError, match="size"):
        soft_class_weights(labels, (5, 2), 3)


def test_soft_losses_weight_each_class_by_its_fraction():
    torch.manual_seed(2)
    logits_s, logits_t = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    w_s = soft_class_weights(torch.randint(0, 3, (2, 8, 8)), (2, 2), 3)
    w_t = soft_class_weights(torch.randint(0, 3, (2, 8, 8)), (2, 2), 3)
    bce = lambda x, y: F.binary_cross_entropy_with_logits(x, torch.full_like(x, y), reduction="none")  # noqa: E731
    adv = (w_t * bce(logits_t, 0.0)).sum() / 8  # every one of the 2*2*2 cells has labelled pixels
    torch.testing.assert_close(soft_adversarial_loss(logits_t, w_t), adv)
    d = 0.5 * ((w_s * bce(logits_s, 0.0)).sum() / 8 + (w_t * bce(logits_t, 1.0)).sum() / 8)
    torch.testing.assert_close(soft_discriminator_loss(logits_s, w_s, logits_t, w_t), d)
    with pytest.raises(ValueError, match="logits"):
        soft_adversarial_loss(logits_t, w_t[:, :2])
