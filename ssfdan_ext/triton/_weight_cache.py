"""A small cache of layouts derived from weight tensors, rebuilt whenever the weight may have changed.

The sparse 3x3 kernels read the weight tap-major, a permuted copy of the canonical layout (358 MB for layer 2 at
the paper's widths). Building it on every call costs one copy per forward and one per backward; within a training
step the weights do not change between the source and target passes and their backward, so one copy per weight
version suffices.

An entry is reused only for the very same tensor object (a weak reference, so the cache never keeps a weight
alive and a new tensor at a recycled ``id`` is never mistaken for it) in the same state: the same version counter
(every in-place update through the tensor, such as an optimiser step, increments it), storage address, dtype,
device, shape and strides. Writes through ``weight.data`` bypass the version counter and are not seen: call
``clear()`` after them. Inference tensors have no version counter and are never cached, nor are fake tensors
(tracing for torch.compile records the layout's computation in the graph instead).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake


class _Entry(NamedTuple):
    ref: weakref.ref
    state: tuple
    value: Tensor


def _state(weight: Tensor) -> tuple:
    return (weight._version, weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape), weight.stride(),
            weight.storage_offset())


class WeightCache:
    """``cache(weight, *args)`` returns ``fn(weight, *args)``, computed once per weight state; at most
    ``capacity`` entries (least recently used dropped first), each dropped as soon as its weight is freed."""

    def __init__(self, fn: Callable[..., Tensor], capacity: int = 8) -> None:
        self._fn = fn
        self._capacity = capacity
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.builds = 0  # how many times fn ran (tests check that hits do not rebuild)

    def __call__(self, weight: Tensor, *args) -> Tensor:
        if weight.is_inference() or weight.device.type == "meta" or is_fake(weight):
            return self._fn(weight, *args)
        key = (id(weight), *args)
        state = _state(weight)
        entry = self._entries.get(key)
        if entry is not None and entry.ref() is weight and entry.state == state:
            self._entries.move_to_end(key)
            return entry.value
        self._entries.pop(key, None)  # stale: free the old copy before building the new one
        with torch.no_grad():
            value = self._fn(weight.detach(), *args)
        self.builds += 1
        ref = weakref.ref(weight, lambda dead, key=key: self._drop(key, dead))
        self._entries[key] = _Entry(ref, state, value)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
        return value

    def _drop(self, key: tuple, dead: weakref.ref) -> None:
        # Only the entry of the freed tensor: a later tensor at the same id may own the key by now.
        entry = self._entries.get(key)
        if entry is not None and entry.ref is dead:
            del self._entries[key]

    def clear(self) -> None:
        """Drop every entry (after writes the version counter cannot see, e.g. through ``weight.data``)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
