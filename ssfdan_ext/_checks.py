"""Argument checks shared by every public entry point: clear Python errors before any kernel runs."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from .types import IGNORE

MAX_CLASSES = 255  # class ids share the label value space with IGNORE = 255


def check_tensor(x: object, name: str, ndim: int, layout: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")
    return x


def check_nonempty(x: Tensor, name: str, layout: str) -> None:
    """Every dimension of ``x`` non-zero: an empty batch, zero channels or a zero-sized map is a ValueError."""
    if x.numel() == 0:
        raise ValueError(f"{name} must be {layout} with every dimension non-zero, got shape {tuple(x.shape)}")


def as_int(value: object, name: str) -> int:
    """A Python or NumPy integer (not a bool, not a float such as 2.0) as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return int(value)


def as_finite_float(value: object, name: str) -> float:
    """A Python or NumPy real number (not a bool or a string) that is finite, as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_floating(x: Tensor, name: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def check_num_classes(num_classes: object, name: str = "num_classes") -> int:
    num_classes = as_int(num_classes, name)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"{name} must be in [1, {MAX_CLASSES}], got {num_classes}")
    return num_classes


def check_labels(labels: object, name: str, num_classes: int) -> Tensor:
    """labels must be (B, H, W) int64 with values in [0, num_classes) or IGNORE."""
    labels = check_tensor(labels, name, 3, "(B, H, W)")
    if labels.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {labels.dtype}")
    if labels.numel():
        bad = (labels < 0) | ((labels >= num_classes) & (labels != IGNORE))
        message = f"{name} must lie in [0, {num_classes}) or equal {IGNORE} (IGNORE)"
        if torch.compiler.is_compiling():
            # A host read would end the graph here: the check runs on the device instead and fails the call
            # with a RuntimeError carrying this message.
            torch._assert_async(~bad.any(), message)
        elif bool(bad.any()):
            raise ValueError(f"{message}, found {int(labels[bad][0])}")
    return labels


def check_size(size: object, labels: Tensor, name: str = "size") -> tuple[int, int]:
    """A positive (h, w) no larger than the (B, H, W) labels it downsamples."""
    if not isinstance(size, Sequence) or len(size) != 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size
    ):
        raise TypeError(f"{name} must be a pair of ints (h, w), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    if h > labels.shape[1] or w > labels.shape[2]:
        raise ValueError(f"{name} {(h, w)} must not exceed the label size {tuple(labels.shape[1:])}")
    return h, w


def check_rho(rho: object, name: str = "rho") -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"{name} must be a float, got {rho!r} ({type(rho).__name__})")
    rho = float(rho)
    if not (0.0 <= rho <= 1.0) or math.isnan(rho):
        raise ValueError(f"{name} must be in [0, 1], got {rho}")
    return rho


def check_finite(x: Tensor, name: str) -> None:
    if not x.numel():
        return
    if torch.compiler.is_compiling():  # as in check_labels: a device-side check instead of a graph break
        torch._assert_async(torch.isfinite(x).all(), f"{name} contains NaN or Inf values")
    elif not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def check_same_device(**tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {desc}")


def check_batch(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{a_name} and {b_name} must have the same batch size, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError(f"{a_name} is an empty batch (B = 0): every op needs at least one image")


def check_layer_shapes(in_channels: int, channels: Sequence[int], strides: Sequence[int]) -> tuple[list[int], tuple]:
    """The widths (n, m_1..m_4, 1) and strides of a five-layer discriminator, checked."""
    if not isinstance(channels, Sequence) or isinstance(channels, str):
        raise TypeError(f"channels must be a sequence of 4 ints (the widths of layers 1-4), got {channels!r}")
    if not isinstance(strides, Sequence) or isinstance(strides, str):
        raise TypeError(f"strides must be a sequence of 5 ints, got {strides!r}")
    in_channels = as_int(in_channels, "in_channels")
    channels = [as_int(c, "channels[i]") for c in channels]
    strides = tuple(as_int(s, "strides[i]") for s in strides)
    widths = [in_channels, *channels, 1]
    if len(channels) != 4:
        raise ValueError(f"channels must give the widths of layers 1-4 (4 ints), got {tuple(channels)}")
    if not all(c > 0 for c in widths):
        raise ValueError(f"in_channels and channels must be positive ints, got {in_channels}, {tuple(channels)}")
    if len(strides) != 5 or strides[0] != 1 or any(s not in (1, 2) for s in strides[1:]):
        raise ValueError(f"strides must be 5 ints: 1 for the 1x1 layer, then 1 or 2, got {strides}")
    return widths, strides
