"""Two CPU processes (gloo) under DistributedDataParallel train exactly like one process with the global batch.

The driver normalises every loss by counts over the global batch (ssfdan_ext.train.distributed), BatchNorm uses
running statistics (``freeze_bn``), and the data stream gives rank r the r-th half of each global batch.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from ssfdan_ext.train import train
from ssfdan_ext.train.runlog import read_csv
from train_helpers import tiny_config

SETTINGS = {"iterations": 4, "freeze_bn": True, "lr": 0.05, "lr_d": 0.01}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, adaptation: str, backend: str,
            self_training: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    result = train(tiny_config(out_dir, adaptation=adaptation, batch_size=1, disc_backend=backend,
                               self_training=self_training, **SETTINGS))
    torch.save({"model": result.model.state_dict(), "discs": result.discriminators.state_dict()},
               os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("adaptation, backend, self_training", [
    ("ssd+global", "fused", 0.0), ("soft", "grouped", 0.0),
    ("ssd", "fused", 0.5), ("none", "fused", 0.5)])  # self-training with SS-D's selection, and alone
def test_two_process_ddp_equals_one_process(tmp_path, adaptation, backend, self_training):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    # Each worker sets the environment torchrun would (RANK, WORLD_SIZE, ...) and calls the driver.
    mp.spawn(_worker, args=(2, _free_port(), str(ddp_dir), adaptation, backend, self_training), nprocs=2,
             join=True)
    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = train(tiny_config(single_dir, adaptation=adaptation, batch_size=2, disc_backend=backend,
                               self_training=self_training, **SETTINGS))
    for part, module in (("model", single.model), ("discs", single.discriminators)):
        for name, value in module.state_dict().items():
            assert torch.equal(ranks[0][part][name], ranks[1][part][name]), f"ranks differ in {part}.{name}"
            # Same global batch: equal up to the order of float32 sums (gradient all-reduce, split losses).
            torch.testing.assert_close(ranks[0][part][name], value, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"{part}.{name}: {m}")
    rows_ddp, rows_single = read_csv(ddp_dir / "train.csv"), read_csv(single_dir / "train.csv")
    for a, b in zip(rows_ddp, rows_single):
        for key in ("loss_seg", "loss_adv", "loss_d", "loss_st"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), (a["iteration"], key)
    assert len(rows_ddp) == len(rows_single) == 4
    assert float(rows_single[-1]["loss_adv"]) > 0 or adaptation == "none"
    assert (float(rows_single[-1]["loss_st"]) > 0) == (self_training > 0)
