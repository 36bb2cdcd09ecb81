"""Training data: datasets from the configuration and a resumable, distributed stream of batches."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import build_dataset
from .config import TrainConfig


class StreamBatchSampler(Sampler[list[int]]):
    """An endless stream of batches over ``length`` items, a fresh permutation per epoch, split across ranks.

    Sample k of the stream is item ``perm_e[k % length]`` of epoch ``e = k // length`` (``perm_e`` drawn from
    ``seed`` and ``e``). Iteration ``i`` uses samples ``[i*G, (i+1)*G)`` with the global batch
    ``G = batch_size * world_size``; rank r takes the r-th slice of ``batch_size``. So the data order depends on
    the iteration alone (resuming at iteration i needs no other state), and a run on N processes sees the same
    global batches as one process with N times the batch.

    Shapes: yields lists of ``batch_size`` indices.
    """

    def __init__(self, length: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iteration: int = 0) -> None:
        if length < 1 or batch_size < 1:
            raise ValueError(f"length and batch_size must be positive, got {length} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size, self.start_iteration = rank, world_size, start_iteration
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.length, generator=torch.Generator().manual_seed(
                self.seed * 100_003 + epoch))}
        return self._perms[epoch]

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of the first sample of ``iteration``."""
        k = iteration * self.batch_size * self.world_size
        return k // self.length, k % self.length

    def batch(self, iteration: int) -> list[int]:
        """This rank's indices for ``iteration``."""
        first = (iteration * self.world_size + self.rank) * self.batch_size
        return [int(self._perm(k // self.length)[k % self.length]) for k in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        iteration = self.start_iteration
        while True:
            yield self.batch(iteration)
            iteration += 1


class CachedDataset(Dataset):
    """Keeps the items of a deterministic dataset (the synthetic scenes) once they are rendered.

    Shapes: as the wrapped dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._items: dict = {}
        self.num_classes = getattr(dataset, "num_classes", None)
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self._items:
            self._items[index] = self.dataset[index]
        return self._items[index]


def _size(size: list[int] | None) -> tuple[int, int] | None:
    return None if size is None else (int(size[0]), int(size[1]))


def build_datasets(cfg: TrainConfig, normalization: str = "imagenet") -> tuple[Dataset, Dataset, Dataset]:
    """(source, target, validation) datasets; synthetic ones are rendered once and cached.

    Validation uses the target domain with its labels (held-out scenes for the synthetic domains) at
    ``val_size`` with labels at full resolution. For synthetic data ``source_split: target`` makes the labelled
    training set the target's training scenes (a target-supervised upper bound).

    Shapes: items (image (3, H, W), label (H, W), name).
    """
    def make(name: str, root: str | None, split: str, size, domain: str | None, **extra):
        kwargs: dict = {"num_classes": cfg.num_classes, "normalization": normalization, **extra}
        if name == "synthetic":
            kwargs.update(size=size or (64, 128), domain="target" if split == "target" else domain,
                          seed=cfg.data_seed + (1000 if split == "val" else 0),
                          length=cfg.val_length if split == "val" else cfg.synthetic_length,
                          shift=cfg.synthetic_shift, shift_seed=cfg.synthetic_shift_seed)
            return CachedDataset(build_dataset(name, None, split, **kwargs))
        if name == "crosscity":
            kwargs["city"] = cfg.city or "Rome"
        if size is not None:
            kwargs["size"] = size
        return build_dataset(name, root, split, **kwargs)

    source = make(cfg.source, cfg.source_root, cfg.source_split, _size(cfg.source_size), "source")
    target = make(cfg.target, cfg.target_root, cfg.target_split, _size(cfg.target_size), "target")
    extra = {} if cfg.target == "synthetic" else {"resize_label": False}
    val = make(cfg.target, cfg.target_root, "val" if cfg.target == "synthetic" else cfg.val_split,
               _size(cfg.val_size), "target", **extra)
    return source, target, val


def loader(dataset: Dataset, sampler: StreamBatchSampler, num_workers: int) -> Iterator:
    """Iterator over ``(images, labels, names)`` batches in the sampler's order.

    Shapes: images (b, 3, H, W), labels (b, H, W).
    """
    return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                           persistent_workers=num_workers > 0))
