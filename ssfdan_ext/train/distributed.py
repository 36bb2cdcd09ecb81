"""Process groups for ``torchrun`` and the loss normalisation that keeps DDP equal to one big batch.

DistributedDataParallel averages the gradients of the ranks. Every loss of the driver is a sum over pixels or
output cells divided by a count over the batch (labelled pixels for the segmentation loss, labelled output
cells for the adversarial losses), and the counts differ between ranks. The mean of per-rank ratios is not the
ratio over the global batch, so each rank rescales its loss by ``world * count_rank / count_global``
(:func:`global_normalize`, one all-reduce of the counts): the averaged gradient is then exactly that of the
loss over the global batch, as one process with the whole batch computes it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass
class DistInfo:
    """Rank, world size and local rank of this process (0, 1, 0 without ``torchrun``).

    Shapes: n/a.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1), if any.

    Uses NCCL for CUDA and gloo for the CPU.

    Shapes: n/a.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def global_normalize(loss: Tensor, count: Tensor, info: DistInfo) -> Tensor:
    """``loss`` (normalised by the local ``count``) rescaled so that averaging over ranks gives the loss
    normalised by the global count. One process: ``loss`` unchanged.

    Shapes: loss scalar, count scalar -> scalar.
    """
    if not info.enabled:
        return loss
    local = count.detach().to(torch.float64).clamp(min=1)
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return loss * (info.world_size * local / total.clamp(min=1)).to(loss.dtype)


def mean_over_ranks(values: Tensor, info: DistInfo) -> Tensor:
    """The average of ``values`` over ranks (for logging the global losses).

    Shapes: values (k,) -> (k,).
    """
    if not info.enabled:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / info.world_size


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process).

    Shapes: n/a.
    """
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Leave the process group.

    Shapes: n/a.
    """
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
