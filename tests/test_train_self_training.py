"""Self-training on the kept target pseudo labels (``self_training: <weight>``, beyond the paper): the loss is a
tau-weighted cross-entropy over the kept pixels, it runs with and without a discriminator, and is logged."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ssfdan_ext import IGNORE, confidence_select
from ssfdan_ext.train import train
from ssfdan_ext.train.adapt import self_training_term
from ssfdan_ext.train.data import StreamBatchSampler
from ssfdan_ext.train.loop import Trainer
from ssfdan_ext.train.runlog import read_csv
from train_helpers import tiny_config


def test_self_training_term_is_the_tau_weighted_cross_entropy():
    logits = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]], [[0.0, 1.0], [0.5, 0.0]], [[-1.0, 0.5], [0.0, 3.0]]]],
                          dtype=torch.float64, requires_grad=True)  # (1, 3, 2, 2)
    labels = torch.tensor([[[0, 1], [IGNORE, 2]]])
    tau = torch.tensor([[0.5, 0.25, 1.0]], dtype=torch.float64)
    term = self_training_term(logits, labels, tau)
    logp = torch.log_softmax(logits.detach().float(), 1)[0]
    expected = -(0.5 * logp[0, 0, 0] + 0.25 * logp[1, 0, 1] + 1.0 * logp[2, 1, 1]) / 3
    assert term.name == "self_training" and int(term.count) == 3
    torch.testing.assert_close(term.loss, expected)
    # Gradient: tau[y] * (softmax - onehot(y)) / count at kept pixels, 0 at IGNORE.
    term.loss.backward()
    prob = torch.softmax(logits.detach(), 1)[0]
    grad = torch.zeros(3, 2, 2, dtype=torch.float64)
    for (i, j), y in zip([(0, 0), (0, 1), (1, 1)], (0, 1, 2)):
        grad[:, i, j] = tau[0, y] * (prob[:, i, j] - F.one_hot(torch.tensor(y), 3).double()) / 3
    torch.testing.assert_close(logits.grad[0], grad, rtol=1e-5, atol=1e-6)
    # Without CA-R every kept pixel weighs 1; nothing kept gives 0 (not NaN).
    plain = self_training_term(logits.detach(), labels, None)
    torch.testing.assert_close(plain.loss, F.cross_entropy(logits.detach().float(), labels, ignore_index=IGNORE))
    empty = self_training_term(logits.detach(), torch.full_like(labels, IGNORE), tau)
    assert float(empty.loss) == 0 and int(empty.count) == 0


@pytest.mark.parametrize("adaptation", ["none", "ssd", "global"])
def test_one_step_logs_the_self_training_loss(tmp_path, adaptation):
    cfg = tiny_config(tmp_path, adaptation=adaptation, self_training=0.5, progressive=False, iterations=2)
    result = train(cfg)
    rows = read_csv(tmp_path / "train.csv")
    assert len(rows) == 2 and all(float(r["loss_st"]) > 0 for r in rows)
    assert all(int(r["kept_pixels"]) > 0 for r in rows)  # rho = 1: every target pixel is kept
    assert result.result is not None and result.history[0]["loss_st"] > 0


def test_self_training_off_logs_zero_and_changes_nothing(tmp_path):
    a = train(tiny_config(tmp_path / "a", adaptation="ssd", iterations=2))
    b = train(tiny_config(tmp_path / "b", adaptation="ssd", iterations=2, self_training=0.0))
    assert all(r["loss_st"] == 0 for r in a.history)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])


@pytest.mark.parametrize("car", [True, False])
def test_driver_loss_equals_hand_computed_self_training(tmp_path, car):
    # Self-training alone (no discriminator): the logged loss is the tau-weighted CE of the model before the
    # step on the iteration's target batch, with the confidence selection at rho = 1.
    cfg = tiny_config(tmp_path, adaptation="none", self_training=1.0, progressive=False, car=car, iterations=1,
                      batch_size=2)
    trainer = Trainer(cfg)
    try:
        before = copy.deepcopy(trainer.model)
        row = trainer.step(0)
        sampler = StreamBatchSampler(len(trainer.target), cfg.batch_size, cfg.seed * 2 + 1)
        images = torch.stack([trainer.target[i][0] for i in sampler.batch(0)])
        before.train()
        with torch.no_grad():
            pred = F.interpolate(before(images)[0], size=images.shape[-2:], mode="bilinear", align_corners=True)
        sel = confidence_select(pred, 1.0)
        logp = torch.log_softmax(pred, 1).gather(1, sel.labels[:, None])[:, 0]
        weight = sel.tau.gather(1, sel.labels.flatten(1)).view_as(logp) if car else torch.ones_like(logp)
        expected = float(-(weight * logp).sum() / sel.labels.numel())
        assert row["loss_st"] == pytest.approx(expected, rel=1e-4)
        assert row["kept_pixels"] == sel.labels.numel() and row["loss_adv"] == 0
    finally:
        trainer.close()


def test_self_training_must_not_be_negative(tmp_path):
    from ssfdan_ext.train import ConfigError

    with pytest.raises(ConfigError, match="self_training"):
        tiny_config(tmp_path, self_training=-1.0)
