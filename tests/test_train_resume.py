"""Resuming: a run killed with SIGKILL and resumed logs the same losses, and ends with the same weights, as an
uninterrupted run."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ssfdan_ext.train.runlog import read_csv
from train_helpers import tiny_overrides
from conftest import subprocess_env

COMPARED = ("iteration", "loss_seg", "loss_adv", "loss_d", "loss_st", "rho", "lr", "lr_d")


def _command(out_dir: Path, *extra: str, adaptation: str = "ssd+global", self_training: float = 0.0) -> list[str]:
    overrides = tiny_overrides(out_dir, iterations=60, checkpoint_every=10, keep_last=2, deterministic=True,
                               adaptation=adaptation, val_every=25, self_training=self_training)
    return [sys.executable, "-m", "ssfdan_ext.train", *overrides, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("adaptation, self_training", [("ssd+global", 0.0), ("none", 0.5)])
def test_resume_after_sigkill_reaches_the_same_losses(tmp_path, adaptation, self_training):
    env = subprocess_env()
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    def command(out: Path, *extra: str) -> list[str]:
        return _command(out, *extra, adaptation=adaptation, self_training=self_training)

    ref = subprocess.Popen(command(reference), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "ckpt_00000010.pt"
    deadline = time.monotonic() + 240
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert first.exists() and not (killed / "final.pt").exists()
    logged = len(read_csv(killed / "train.csv"))
    assert 10 <= logged < 60

    resumed = subprocess.run(command(killed, "resume=true"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    start = int(resumed.stdout.split("at iteration ")[1].split()[0])
    assert 10 <= start < 60 and start % 10 == 0
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out

    rows_resumed, rows_reference = read_csv(killed / "train.csv"), read_csv(reference / "train.csv")
    assert [int(r["iteration"]) for r in rows_resumed] == list(range(60))
    # Deterministic CPU run: bit-identical losses (written with repr) after the restart.
    assert [[r[k] for k in COMPARED] for r in rows_resumed] == [[r[k] for k in COMPARED] for r in rows_reference]
    a = torch.load(killed / "final.pt", weights_only=True)["model"]
    b = torch.load(reference / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    if self_training:
        assert float(rows_reference[-1]["loss_st"]) > 0
