"""Checkpoint files with a SHA-256 digest: written atomically with the usual permissions, still plain torch.load
files, and every damaged, truncated, empty or foreign file a one-line error naming it (also in ssfdan-eval)."""
from __future__ import annotations

import errno
import io
import os
import subprocess
import sys

import pytest
import torch

from ssfdan_ext.evaluate.cli import main as eval_main
from ssfdan_ext.models import build_model, load_checkpoint, save_checkpoint
from ssfdan_ext.models import verified_io as vio
from ssfdan_ext.models.verified_io import (CheckpointError, UnverifiedCheckpointWarning, read_verified,
                                           verify_file, write_verified)
from ssfdan_ext.train.checkpoint import CheckpointManager
from conftest import DAMAGE_KINDS as KINDS
from conftest import damage, flip_bits, subprocess_env



# What each kind is reported as (the reader of a training checkpoint needs its keys).
EXPECTED = {"flipped": "is damaged: its content does not match the SHA-256 digest",
            "truncated": "cannot read .*not a readable torch.save file", "empty": "is empty",
            "pickled list": "is not a training checkpoint", "text": "cannot read .*not a readable torch.save file"}


@pytest.fixture()
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("small", 13, width=4, feature_channels=8)


def test_trailer_round_trip_and_plain_torch_load(tmp_path):
    state = {"w": torch.arange(1000.0), "step": 3}
    path = write_verified(state, tmp_path / "a.pt")
    raw = path.read_bytes()
    assert raw[-vio.TRAILER_SIZE:].startswith(vio.MAGIC) and raw.endswith(b"\n")
    assert verify_file(path) is True
    for loaded in (read_verified(path), torch.load(path, weights_only=True)):  # plain torch.load still reads it
        assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_and_final_get_the_same_umask_permissions(tmp_path, tiny_model, umask):
    old = os.umask(umask)
    try:
        write_verified({"x": torch.ones(2)}, tmp_path / "ckpt.pt")
        save_checkpoint(tiny_model, tmp_path / "final.pt")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"ckpt.pt": 0o666 & ~umask, "final.pt": 0o666 & ~umask}  # mkstemp alone gives 0o600


@pytest.mark.filterwarnings("ignore::ssfdan_ext.models.UnverifiedCheckpointWarning")  # a cut-off trailer
@pytest.mark.parametrize("kind", KINDS)
def test_broken_training_checkpoints_are_errors_that_name_the_file(tmp_path, kind):
    path = write_verified({"model": {"w": torch.arange(4096.0)}, "iteration": 2}, tmp_path / "ckpt_00000002.pt")
    damage(path, kind)
    with pytest.raises(CheckpointError, match=EXPECTED[kind]) as err:
        CheckpointManager.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_file_without_digest_loads_with_a_warning(tmp_path, tiny_model):
    torch.save({"model": tiny_model.state_dict(), "config": dict(tiny_model.config)}, tmp_path / "old.pt")
    with pytest.warns(UnverifiedCheckpointWarning, match="old.pt has no SHA-256 digest"):
        model = load_checkpoint(tmp_path / "old.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_model.state_dict().values()))


def test_load_checkpoint_verifies_and_names_directories(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "final.pt")
    load_checkpoint(tmp_path / "final.pt")
    flip_bits(tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match="final.pt is damaged"):
        load_checkpoint(tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after 1 KiB."""

    def write(self, data):
        if self.tell() + len(data) > 1024:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_is_reported_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = write_verified({"w": torch.zeros(8)}, tmp_path / "best.pt")
    monkeypatch.setattr(vio.os, "fdopen", lambda fd, mode: _FullDisk(fd, "w"))
    with pytest.raises(CheckpointError, match=r"cannot write .*best.pt: No space left on device"):
        write_verified({"w": torch.ones(100_000)}, path)
    monkeypatch.undo()
    assert torch.equal(read_verified(path)["w"], torch.zeros(8))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


EVAL_ARGS = ["--dataset", "synthetic", "--length", "2", "--input-size", "16x32", "--workers", "0", "--no-progress",
             "--save-predictions", "0"]


@pytest.mark.parametrize("kind", KINDS)
def test_ssfdan_eval_on_a_broken_checkpoint_is_one_line(tmp_path, tiny_model, kind):
    save_checkpoint(tiny_model, tmp_path / "final.pt")
    damage(tmp_path / "final.pt", kind)
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--checkpoint", str(tmp_path / "final.pt"), "--out", str(tmp_path / "o"), *EVAL_ARGS])
    message = str(exit_.value.code)
    assert message.startswith("ssfdan-eval: ") and "final.pt" in message and "\n" not in message
    assert {"flipped": "is damaged", "truncated": "cannot read", "empty": "is empty", "text": "cannot read",
            "pickled list": "holds a list"}[kind] in message


def test_ssfdan_eval_names_directories_and_ignored_options(tmp_path, tiny_model, capsys):
    with pytest.raises(SystemExit, match="is a directory; give a checkpoint file in it"):
        eval_main(["--checkpoint", str(tmp_path), *EVAL_ARGS])
    save_checkpoint(tiny_model, tmp_path / "final.pt")
    assert eval_main(["--checkpoint", str(tmp_path / "final.pt"), "--num-classes", "19", "--out", str(tmp_path / "o"),
                      *EVAL_ARGS]) == 0
    err = capsys.readouterr().err
    assert "warning: --num-classes ignored" in err and "(small, 13 classes)" in err


def test_ssfdan_eval_process_prints_no_traceback(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "final.pt")
    flip_bits(tmp_path / "final.pt")
    env = subprocess_env()
    done = subprocess.run([sys.executable, "-m", "ssfdan_ext.evaluate", "--checkpoint", str(tmp_path / "final.pt"),
                           *EVAL_ARGS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"ssfdan-eval: {tmp_path / 'final.pt'} is damaged: its content does "
                                                "not match the SHA-256 digest written with it"]
