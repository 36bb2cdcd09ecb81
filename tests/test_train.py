"""The training driver: one step of every ablation mode, the iteration's losses, amp, logs and checkpoints."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import ssfdan_ext as sd
from ssfdan_ext.models import load_checkpoint
from ssfdan_ext.train import Trainer, train
from ssfdan_ext.train.checkpoint import CheckpointManager
from ssfdan_ext.train.data import StreamBatchSampler
from ssfdan_ext.train.runlog import read_csv
from train_helpers import tiny_config

MODES = [
    {"adaptation": "none"},
    {"adaptation": "global"},
    {"adaptation": "soft"},
    {"adaptation": "soft+global"},
    {"adaptation": "ssd"},
    {"adaptation": "ssd+global"},
    {"adaptation": "ssd", "progressive": False},
    {"adaptation": "ssd", "car": False},
    {"adaptation": "ssd", "source_masks": "ground_truth"},
    {"adaptation": "soft", "source_masks": "ground_truth"},
]


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{v}" for v in m.values()))
def test_one_step_of_every_mode_trains(tmp_path, mode):
    trainer = Trainer(tiny_config(tmp_path, **mode))
    try:
        g0, d0 = _params(trainer.model), _params(trainer.discs)
        rows = [trainer.step(0), trainer.step(1)]
    finally:
        trainer.close()
    adapting = mode["adaptation"] != "none"
    assert [r["rho"] for r in rows] == ([1.0, 1.0] if mode.get("progressive") is False else [0.0, 0.5])
    assert all(r["loss_seg"] > 0 for r in rows)
    assert all(not torch.equal(a, b) for a, b in zip(g0, trainer.model.parameters()))
    assert len(d0) == 0 if not adapting else len(d0) > 0
    if adapting:
        assert rows[1]["loss_adv"] > 0 and rows[1]["loss_d"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(d0, trainer.discs.parameters()))
        parts = mode["adaptation"].split("+")
        assert (trainer.discs.ssd is not None) == ("ssd" in parts)
        assert (trainer.discs.soft is not None) == ("soft" in parts)
        assert (trainer.discs.glob is not None) == ("global" in parts)
    else:
        assert rows[1]["loss_adv"] == 0 and rows[1]["loss_d"] == 0 and trainer.opt_d is None


def _batch(trainer, it):
    cfg = trainer.cfg
    items = []
    for k, ds in enumerate((trainer.source, trainer.target)):
        idx = StreamBatchSampler(len(ds), cfg.batch_size, cfg.seed * 2 + k).batch(it)
        items.append([torch.stack([ds[i][j] for i in idx]) for j in (0, 1)])
    return items


@pytest.mark.parametrize("car, masks", [(True, "prediction"), (False, "ground_truth")])
def test_step_computes_the_spec_losses(tmp_path, car, masks):
    """The logged losses of an ssd+global step, and the gradients each optimiser steps with, equal the docs/semantics.md
    section 5 iteration written with the public API."""
    trainer = Trainer(tiny_config(tmp_path, adaptation="ssd+global", car=car, source_masks=masks, iterations=4))
    try:
        trainer.step(0)
        model, discs = copy.deepcopy(trainer.model), copy.deepcopy(trainer.discs)
        (img_s, lbl_s), (img_t, _) = _batch(trainer, 1)
        row = trainer.step(1)
    finally:
        trainer.close()
    rho = sd.rho_schedule(1, 4)
    logits_s, feat_s = model(img_s)
    pred_s = F.interpolate(logits_s, size=lbl_s.shape[-2:], mode="bilinear", align_corners=True)
    loss_seg = F.cross_entropy(pred_s, lbl_s, ignore_index=sd.IGNORE)
    logits_t, feat_t = model(img_t)
    pred_t = F.interpolate(logits_t, size=img_t.shape[-2:], mode="bilinear", align_corners=True)
    sel_t = sd.confidence_select(pred_t.detach(), rho)
    src_labels = sd.confidence_select(pred_s.detach(), rho).labels if masks == "prediction" else lbl_s
    tau = sel_t.tau if car else None
    ssd, glob = discs.ssd, discs.glob
    loss_adv = sd.adversarial_loss(ssd(feat_t, sel_t.labels), tau) + sd.adversarial_loss(glob(feat_t))
    f_s, f_t = feat_s.detach(), feat_t.detach()
    loss_d = (sd.discriminator_loss(ssd(f_s, src_labels), ssd(f_t, sel_t.labels), tau)
              + sd.discriminator_loss(glob(f_s), glob(f_t)))
    assert row["rho"] == rho
    for name, value in (("loss_seg", loss_seg), ("loss_adv", loss_adv), ("loss_d", loss_d)):
        assert row[name] == pytest.approx(float(value.detach()), rel=1e-5), name
    # The segmenter steps with grad(L_seg + delta L_adv) (the discriminators fixed), the discriminators with
    # grad(L_d) on detached features.
    expected_g = torch.autograd.grad(loss_seg + trainer.cfg.delta * loss_adv, list(model.parameters()),
                                     allow_unused=True)
    expected_d = torch.autograd.grad(loss_d, list(discs.parameters()))
    for got, want in zip([p.grad for p in trainer.model.parameters()], expected_g):
        torch.testing.assert_close(got, want if want is not None else torch.zeros_like(got), rtol=1e-4, atol=1e-6)
    for got, want in zip([p.grad for p in trainer.discs.parameters()], expected_d):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_split_discriminator_terms_add_up(tmp_path):
    """The per-half terms a multi-process run normalises separately sum to the one-process losses."""
    trainer = Trainer(tiny_config(tmp_path, adaptation="ssd+global", iterations=4))
    soft = Trainer(tiny_config(tmp_path / "soft", adaptation="soft", iterations=4))
    try:
        for t in (trainer, soft):
            (img_s, lbl_s), (img_t, _) = _batch(t, 1)
            logits_s, feat_s = t.model(img_s)
            logits_t, feat_t = t.model(img_t)
            size = tuple(feat_t.shape[-2:])
            m_t, _ = t.discs.target_masks(F.interpolate(logits_t, size=(32, 32), mode="bilinear"), 0.5, size)
            m_s = t.discs.source_masks(F.interpolate(logits_s, size=(32, 32), mode="bilinear"), lbl_s, 0.5, size)
            whole = sum(term.loss for term in t.discs(feat_s, feat_t, m_s, m_t))
            halves = sum(term.loss for term in t.discs(feat_s, feat_t, m_s, m_t, split=True))
            torch.testing.assert_close(halves, whole)
    finally:
        trainer.close()
        soft.close()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_step(tmp_path, amp):
    trainer = Trainer(tiny_config(tmp_path, adaptation="ssd+global", amp=amp))
    try:
        g0 = _params(trainer.model)
        rows = [trainer.step(0), trainer.step(1)]
    finally:
        trainer.close()
    assert all(torch.isfinite(torch.tensor([r["loss_seg"], r["loss_adv"], r["loss_d"]])).all() for r in rows)
    assert rows[1]["loss_adv"] > 0
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # autocast keeps fp32 weights
    assert any(not torch.equal(a, b) for a, b in zip(g0, trainer.model.parameters()))
    assert trainer.scaler_g.is_enabled() == (amp == "fp16")  # a GradScaler per optimiser for fp16


def test_full_run_writes_logs_checkpoints_and_the_iou_table(tmp_path, capsys):
    cfg = tiny_config(tmp_path, iterations=6, checkpoint_every=2, keep_last=2, val_every=3, tensorboard=True,
                      save_images=1)
    result = train(cfg)
    out = capsys.readouterr().out
    assert "target-domain IoU" in out and "| mIoU" in out
    rows = read_csv(tmp_path / "train.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(6))
    assert float(rows[0]["lr"]) == cfg.lr and float(rows[-1]["lr"]) < cfg.lr  # poly decay
    manager = CheckpointManager(tmp_path / "checkpoints")
    assert [p.name for p in manager.checkpoints()] == ["ckpt_00000004.pt", "ckpt_00000006.pt"]  # last K
    state = manager.load(manager.latest())
    assert state["iteration"] == 6 and state["train_config"]["iterations"] == 6
    assert {"model", "discriminators", "opt_g", "opt_d", "sched_g", "sched_d", "rng"} <= set(state)
    best = manager.load(tmp_path / "checkpoints" / "best.pt")
    assert best["best_miou"] == max(best["best_miou"], result.result.miou)
    assert (tmp_path / "iou.md").read_text().startswith("| class")
    assert any((tmp_path / "tensorboard").iterdir())
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # atomic writes leave no temporary file
    reloaded = load_checkpoint(manager.latest())  # a training checkpoint is also an ssfdan-eval checkpoint
    for a, b in zip(reloaded.state_dict().values(), result.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("adaptation", ["ssd", "soft+global"])
@pytest.mark.parametrize("source_masks", ["prediction", "ground_truth"])
def test_source_and_target_of_different_sizes(tmp_path, adaptation, source_masks):
    # GTA5 / Synthia images are larger than Cityscapes': each domain's masks use its own feature size.
    trainer = Trainer(tiny_config(tmp_path, adaptation=adaptation, source_masks=source_masks,
                                  source_size=[48, 64], target_size=[32, 32]))
    try:
        row = trainer.step(1)
    finally:
        trainer.close()
    assert row["loss_adv"] > 0 and row["loss_d"] > 0


def test_a_new_run_refuses_an_out_dir_with_checkpoints(tmp_path):
    train(tiny_config(tmp_path, iterations=2, checkpoint_every=2))
    with pytest.raises(ValueError, match="already holds checkpoints of a run: pass resume=true"):
        Trainer(tiny_config(tmp_path, iterations=2, checkpoint_every=2))


def test_resume_rejects_changed_keys_and_restores_the_rng_last(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, iterations=4))
    try:
        for it in range(2):
            trainer.step(it)
            torch.rand(3)  # what a segmenter with dropout draws in a step
        state = trainer.state(2)
        trainer.ckpt.save(state, 2)
    finally:
        trainer.close()
    with pytest.raises(ValueError, match="cannot resume from .*other values of iterations, amp"):
        Trainer(tiny_config(tmp_path, iterations=6, amp="bf16", resume=True))
    resumed = Trainer(tiny_config(tmp_path, iterations=4, resume=True))
    try:
        # The data loaders are built after the checkpoint is read and draw from the global RNG: the resumed run
        # must still start from the checkpoint's RNG states.
        assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
        assert resumed.start == 2
    finally:
        resumed.close()


def test_kept_pixels_are_logged_and_start_at_zero(tmp_path):
    # rho_schedule(0, N) = 0: the first iteration keeps no target pixel, so the SS-D losses are exactly 0 there;
    # the log says so instead of leaving the user to wonder.
    train(tiny_config(tmp_path, iterations=4, adaptation="ssd", progressive=True))
    rows = read_csv(tmp_path / "train.csv")
    kept = [int(r["kept_pixels"]) for r in rows]
    assert kept[0] == 0 and float(rows[0]["loss_adv"]) == 0.0
    assert all(k > 0 for k in kept[1:])
    train(tiny_config(tmp_path / "none", iterations=1, adaptation="none"))
    assert read_csv(tmp_path / "none" / "train.csv")[0]["kept_pixels"] == "0"


def test_each_label_map_gets_one_rulebook_per_iteration(tmp_path, monkeypatch):
    # The target labels serve the generator's pass and the discriminator's target pass: one rulebook for both,
    # and one for the source labels; the discriminator step joins the two without building another.
    from ssfdan_ext.nn import separated_discriminator as module

    calls = []
    original = module._rulebook

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "_rulebook", counting)
    train(tiny_config(tmp_path, iterations=3, adaptation="ssd", disc_backend="fused"))
    assert len(calls) == 2 * 3


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_discriminator_step_over_both_domains_at_once_equals_two_passes(tmp_path, backend):
    from ssfdan_ext.train.adapt import Discriminators

    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, adaptation="ssd", disc_backend=backend, num_classes=5, disc_channels=[6, 5, 4, 3],
                      disc_strides=[1, 2, 1, 1, 1])
    discs = Discriminators(cfg, in_channels=8)
    feat_s, feat_t = torch.randn(2, 8, 9, 11), torch.randn(2, 8, 9, 11)
    masks_s = discs.source_masks(torch.randn(2, 5, 36, 44), torch.randint(0, 5, (2, 36, 44)), 0.5, (9, 11))
    masks_t, _ = discs.target_masks(torch.randn(2, 5, 36, 44), 0.5, (9, 11))

    def loss_and_grads(outputs):
        discs.zero_grad(set_to_none=True)
        loss = sd.discriminator_loss(*outputs, masks_t.tau)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in discs.parameters()]

    both = loss_and_grads(discs._ssd_both(feat_s, feat_t, masks_s, masks_t))
    apart = loss_and_grads((discs._ssd(feat_s, masks_s), discs._ssd(feat_t, masks_t)))
    torch.testing.assert_close(both[0], apart[0])
    for g_both, g_apart in zip(both[1], apart[1]):
        torch.testing.assert_close(g_both, g_apart, rtol=1e-4, atol=1e-6)
    # Different sizes: two passes.
    small, _ = discs.target_masks(torch.randn(2, 5, 20, 24), 0.5, (5, 6))
    out_s, out_t = discs._ssd_both(feat_s, torch.randn(2, 8, 5, 6), masks_s, small)
    assert out_s.logits.shape[-2:] == discs.output_size(9, 11) and out_t.logits.shape[-2:] == discs.output_size(5, 6)
