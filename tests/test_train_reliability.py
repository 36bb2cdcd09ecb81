"""The driver when things go wrong: broken checkpoints on resume, two runs in one out_dir, orphaned temporary
files, a full disk, non-finite config values and a diverging run; each a one-line error with a documented exit
status (2: cannot start or continue as asked, 3: diverged)."""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssfdan_ext.models import CheckpointError
from ssfdan_ext.models.verified_io import verify_file
from ssfdan_ext.train import ConfigError, Trainer, load_config, train
from ssfdan_ext.train.checkpoint import CheckpointManager
from ssfdan_ext.train.cli import main
from ssfdan_ext.train.guards import DivergenceError, OutDirLockedError
from ssfdan_ext.train.outdir import LOCK_NAME
from ssfdan_ext.train.runlog import read_csv
from conftest import DAMAGE_KINDS as KINDS
from conftest import damage
from train_helpers import tiny_config, tiny_overrides
from conftest import subprocess_env

RUN = {"iterations": 4, "checkpoint_every": 2, "keep_last": 2}
unverified_ok = pytest.mark.filterwarnings("ignore::ssfdan_ext.models.UnverifiedCheckpointWarning")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run with ckpt_00000002.pt and ckpt_00000004.pt (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("run") / "out"
    train(tiny_config(out, **RUN))
    return out


@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "out"))


def _ckpt(out: Path, it: int) -> Path:
    return out / "checkpoints" / f"ckpt_{it:08d}.pt"


def _env() -> dict:
    return subprocess_env()


# --- resume ---------------------------------------------------------------------------------------------------
@unverified_ok
@pytest.mark.parametrize("kind", KINDS)
def test_resume_falls_back_past_a_broken_newest_checkpoint(run_copy, kind, capsys):
    damage(_ckpt(run_copy, 4), kind)
    trainer = Trainer(tiny_config(run_copy, **RUN, resume=True))
    try:
        assert trainer.start == 2
    finally:
        trainer.close()
    out = capsys.readouterr().out
    warning = out.splitlines()[0]
    assert warning.startswith("warning: ") and str(_ckpt(run_copy, 4)) in warning
    assert warning.endswith("; trying the previous checkpoint")
    assert f"resumed from {_ckpt(run_copy, 2)} at iteration 2" in out


@unverified_ok
def test_resume_with_no_intact_checkpoint_is_one_line_and_exit_2(run_copy, capsys):
    damage(_ckpt(run_copy, 4), "flipped")
    damage(_ckpt(run_copy, 2), "truncated")
    with pytest.raises(CheckpointError, match="none of the 2 checkpoints"):
        Trainer(tiny_config(run_copy, **RUN, resume=True))
    capsys.readouterr()
    assert main(tiny_overrides(run_copy, **RUN, resume=True)) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"ssfdan-train: error: resume=true but none of the 2 checkpoints in {run_copy / 'checkpoints'} is intact "
        "(ckpt_00000002.pt, ckpt_00000004.pt): delete them to start afresh, or choose another out_dir"]
    assert captured.out.count("trying the previous checkpoint") == 2


def test_a_refused_resume_is_one_line_and_exit_2(run_copy, capsys):
    assert main(tiny_overrides(run_copy, **{**RUN, "iterations": 6}, resume=True)) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssfdan-train: error: cannot resume from") and err.count("\n") == 1


# --- one run per out_dir --------------------------------------------------------------------------------------
def test_a_second_run_on_a_locked_out_dir_fails_at_once(tmp_path, capsys):
    first = Trainer(tiny_config(tmp_path, **RUN))
    try:
        first.csv.write({"iteration": 0, "loss_seg": 1.0})
        with pytest.raises(OutDirLockedError, match=f"is in use by another run \\(pid {os.getpid()} on "):
            Trainer(tiny_config(tmp_path, **RUN))
        # The command line: one line naming the holder, exit 2, before anything of the first run is touched.
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "ssfdan_ext.train", *tiny_overrides(tmp_path, **RUN)],
                              env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.splitlines() == [
            f"ssfdan-train: error: out_dir {tmp_path} is in use by another run (pid {os.getpid()} on "
            f"{os.uname().nodename}, started {(tmp_path / LOCK_NAME).read_text().split('started ')[1].strip()}): "
            "wait for it to finish or choose another out_dir"]
        assert time.monotonic() - t0 < 120
        assert [r["iteration"] for r in read_csv(tmp_path / "train.csv")] == ["0"]
    finally:
        first.close()
    second = Trainer(tiny_config(tmp_path, **RUN))  # released by close()
    second.close()


def test_the_lock_is_released_when_the_trainer_fails_and_a_stale_lock_file_is_no_lock(run_copy):
    # A lock file left by a killed run (the OS dropped its flock) does not stop the next one.
    (run_copy / LOCK_NAME).write_text("pid 999999 on elsewhere, started 2020-01-01T00:00:00+00:00\n")
    with pytest.raises(ConfigError, match="cannot resume") as kept:  # the traceback (and the Trainer) stays alive
        Trainer(tiny_config(run_copy, **{**RUN, "iterations": 6}, resume=True))
    trainer = Trainer(tiny_config(run_copy, **RUN, resume=True))
    assert kept.value is not None
    assert "pid 999999" not in (run_copy / LOCK_NAME).read_text()
    trainer.close()
    assert (run_copy / LOCK_NAME).read_text() == ""  # the holder's line goes with the lock


def test_orphaned_temporary_files_are_removed_at_start(run_copy, capsys):
    orphans = [run_copy / "checkpoints" / ".ckpt_00000006.pt.k2j_x9a1.tmp", run_copy / "checkpoints" /
               ".best.pt.abc123.tmp", run_copy / ".final.pt.q8w7e6.tmp"]
    others = [run_copy / "checkpoints" / ".notes.tmp", run_copy / "keep.tmp"]
    for p in orphans + others:
        p.write_bytes(b"partial")
    trainer = Trainer(tiny_config(run_copy, **RUN, resume=True))
    trainer.close()
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in others)
    assert "removed 3 temporary file(s) of interrupted checkpoint writes" in capsys.readouterr().out


# --- a full disk ----------------------------------------------------------------------------------------------
def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(tiny_overrides(tmp_path, **RUN)) == 2
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        f"ssfdan-train: error: cannot write {_ckpt(tmp_path, 4)}: No space left on device"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_00000002.pt"]  # no .tmp left
    assert CheckpointManager.load(_ckpt(tmp_path, 2))["iteration"] == 2
    assert not (tmp_path / "final.pt").exists()


# --- config values --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("delta=nan", "delta"), ("lr=inf", "lr"), ("momentum=nan", "momentum"), ("weight_decay=inf", "weight_decay"),
    ("lr_d=.inf", "lr_d"), ("rho_upper=.nan", "rho_upper"), ("head_lr_mult=-inf", "head_lr_mult"),
    ("power=NaN", "power"), ("betas_d=[0.9, .nan]", "betas_d\\[1\\]"),
])
def test_every_float_key_must_be_finite(override, key, capsys):
    with pytest.raises(ConfigError, match=f"^{key} must be a finite number, got (nan|inf|-inf)$"):
        load_config(None, [override])
    assert main([override]) == 2
    assert "must be a finite number" in capsys.readouterr().err


# --- divergence -----------------------------------------------------------------------------------------------
def test_a_nan_loss_stops_the_run_without_checkpointing_the_diverged_state(tmp_path, monkeypatch, capsys):
    real_ce, calls = F.cross_entropy, []

    def cross_entropy(*args, **kwargs):
        calls.append(1)
        loss = real_ce(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss  # the third step: iteration 2

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    assert main(tiny_overrides(tmp_path, **{**RUN, "iterations": 6}, adaptation="none")) == 3
    monkeypatch.undo()
    assert capsys.readouterr().err.splitlines() == [
        f"ssfdan-train: error: non-finite loss_seg (nan) at iteration 2; the last good checkpoint is "
        f"{_ckpt(tmp_path, 2)}"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt_00000002.pt"]
    assert verify_file(_ckpt(tmp_path, 2)) and not (tmp_path / "final.pt").exists()


def test_a_huge_learning_rate_is_reported_as_divergence(tmp_path, capsys):
    # lr=1e30: the weights of iteration 1 give NaN logits, which the SS-D confidence selection refuses first.
    assert main(tiny_overrides(tmp_path, iterations=6, lr=1e30, adaptation="ssd")) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"ssfdan-train: error: non-finite (loss_seg|loss_adv|loss_d|target logits)( \((nan|inf)\))? "
                        r"at iteration [1-5]; no checkpoint was written before it", line), line
    assert not (tmp_path / "final.pt").exists()


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, **RUN))
    try:
        trainer.step(0)
        trainer.ckpt.save(trainer.state(1), 1)
        with torch.no_grad():
            next(trainer.discs.parameters())[0].fill_(float("inf"))
        with pytest.raises(DivergenceError, match="non-finite weights .* after iteration 2; the last good "
                                                  "checkpoint is .*ckpt_00000001.pt"):
            trainer.state(2)
    finally:
        trainer.close()
