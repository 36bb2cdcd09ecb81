"""Launch configurations of the Triton kernels and the one launch path they share.

``kernel_config(kernel, m_in, m_out, dtype, precision)`` picks the tile sizes, warps and pipeline stages of one
kernel for one layer shape; ``describe_configs(widths, dtype)`` lists the choice for a whole SS-D (what the
benchmarks log).
``launch`` runs a kernel on its tensors' device, with the TF32 policy and the interpreter guard applied.

Why these numbers (registers and spills from ptxas -v on sm_90 cubins, ``tests/triton_aot.py``): with four warps
the kernels whose programs own a 64-row tile needed all 255 registers of a thread and spilled (up to 372 bytes
in float32, over 700 bytes in float16 where the input gradient scatters through a 64x64 tile of 64-bit
addresses); eight warps halve each thread's share of the accumulators and addresses, and the forward kernels
store each class's rows directly instead of merging them into a second tile-sized accumulator. IEEE float32 products run
on the FMA units, which keep a thread's slice of both operands in registers: half the K step (16) halves those
in the 64-row tile kernels.
The software pipeline holds its prefetched operands as well, so those kernels keep two stages. The
weight-gradient kernels loop over a class bucket in a ``while`` loop, which Triton does not pipeline (one stage).
Widths below 64 (the last layer's m_out = 1, the tests' tiny widths) get the smallest tile covering them, down
to the 16 ``tl.dot`` needs, instead of 64 mostly masked columns. The test fails on any spill of a configuration
this table yields for the paper's widths or the tests' tiny ones.

TF32: float32 products follow PyTorch's flag for convolutions, ``torch.backends.cudnn.allow_tf32`` (these kernels
replace convolutions), read at each launch: True -> ``tl.dot(..., input_precision="tf32")``, False -> ``"ieee"``.
float16, bfloat16 and float64 always use ``"ieee"`` (the flag does not apply to them).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
import triton
from torch._subclasses.fake_tensor import is_fake

# (kernel, what its output tile's rows run over, its columns, its K loop), m_in/m_out being the layer's widths.
KERNELS = {
    "routed_fwd": ("cells", "m_out", "m_in"),
    "routed_grad_input": ("cells", "m_in", "m_out"),
    "routed_grad_weight": ("m_out", "m_in", "cells"),
    "sparse_fwd": ("pairs", "m_out", "m_in"),
    "sparse_grad_table": ("pairs", "m_in", "m_out"),
    "sparse_grad_weight": ("m_in", "m_out", "pairs"),
}
ROW_TILE = 64  # rows (cells or pairs) per program: several 16-row MMA blocks, and few programs under the interpreter
MAX_TILE = 64  # largest width tile: 64x64 float32 accumulators already fill eight warps' registers


class KernelConfig(NamedTuple):
    """One kernel's launch configuration: ``BLOCK_M x BLOCK_N`` output tile, ``BLOCK_K`` reduction step."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    def meta(self) -> dict[str, int]:
        """The constexpr tile sizes and launch options, as keyword arguments of a kernel launch."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k,
                "num_warps": self.num_warps, "num_stages": self.num_stages}


def _fit(size: int, cap: int) -> int:
    """The power-of-two tile covering ``size``, between 16 (the smallest ``tl.dot`` operand) and ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(max(size, 1))))


def kernel_config(kernel: str, m_in: int, m_out: int, dtype: torch.dtype,
                  precision: str | None = None) -> KernelConfig:
    """The launch configuration of ``kernel`` (a key of ``KERNELS``) for a layer of widths ``m_in -> m_out`` in
    ``dtype``, multiplying at ``precision`` (``"ieee"`` or ``"tf32"``; default: ``input_precision(dtype)``).

    Shapes: m_in, m_out are channel counts per class (layer 1: m_in = n, the feature channels).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if m_in < 0 or m_out < 0:
        raise ValueError(f"m_in and m_out must be >= 0, got {m_in} and {m_out}")
    widths = {"m_in": m_in, "m_out": m_out}
    rows, cols, k = KERNELS[kernel]
    precision = input_precision(dtype) if precision is None else precision
    if precision not in ("ieee", "tf32"):
        raise ValueError(f"precision must be 'ieee' or 'tf32', got {precision!r}")
    # IEEE float32 (and float64) products run on the FMA units, not the tensor cores.
    fma = dtype == torch.float64 or (dtype == torch.float32 and precision == "ieee")
    if rows in ("cells", "pairs"):
        # A 64-row tile, one product per class in it: accumulators, gathered operands and 64-bit addresses.
        block_m, block_n = ROW_TILE, _fit(widths[cols], MAX_TILE)
        block_k = _fit(widths[k], 16 if fma else 32)
        return KernelConfig(block_m, block_n, block_k, num_warps=8, num_stages=2)
    # Weight gradients: a (width x width) tile, the K loop over the class's cells or pairs.
    block_m, block_n = _fit(widths[rows], MAX_TILE), _fit(widths[cols], MAX_TILE)
    num_warps = 8 if block_m * block_n >= 64 * 64 and dtype in (torch.float32, torch.float64) else 4
    # K step 32 even on the FMA units: with 16 and four warps, ptxas (CUDA 12.8, Triton 3.6) spills a few bytes
    # around the while loop although registers are free.
    return KernelConfig(block_m, block_n, 32, num_warps=num_warps, num_stages=1)


def layer_kernels(layer: int) -> tuple[str, ...]:
    """The kernels one training step launches for SS-D layer ``layer`` (0 = the routed 1x1 layer)."""
    prefix = "routed" if layer == 0 else "sparse"
    return tuple(name for name in KERNELS if name.startswith(prefix))


def describe_configs(widths: Sequence[int], dtype: torch.dtype) -> list[dict]:
    """Every kernel configuration an SS-D with channel ``widths`` (n, m_1, ..., 1) launches in ``dtype``.

    One dict per (layer, kernel): layer, kernel, m_in, m_out, block_m, block_n, block_k, num_warps, num_stages,
    and input_precision (for float32, what ``torch.backends.cudnn.allow_tf32`` selects now).
    """
    out = []
    for layer, (m_in, m_out) in enumerate(zip(widths[:-1], widths[1:])):
        for kernel in layer_kernels(layer):
            precision = input_precision(dtype)
            config = kernel_config(kernel, m_in, m_out, dtype, precision)
            out.append({"layer": layer + 1, "kernel": kernel, "m_in": m_in, "m_out": m_out, **config._asdict(),
                        "input_precision": precision})
    return out


def input_precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision for operands of ``dtype``: TF32 for float32 when PyTorch allows it for
    convolutions (``torch.backends.cudnn.allow_tf32``), IEEE otherwise."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` runs in Triton's interpreter (``TRITON_INTERPRET=1`` when Triton was imported)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_device(device: torch.device, interpreted: bool) -> None:
    """Refuse a launch that cannot work: the interpreter computes with NumPy on host memory, so on CUDA tensors
    it would copy every operand to the host and run for hours; compiled kernels need CUDA tensors."""
    if interpreted and device.type != "cpu":
        raise ValueError(f"the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors, got tensors on "
                           f"{device}: unset TRITON_INTERPRET before importing triton to run the compiled kernels")
    if not interpreted and device.type != "cuda":
        raise ValueError(f"the compiled Triton kernels need CUDA tensors, got tensors on {device} (set "
                           f"TRITON_INTERPRET=1 before importing triton to interpret them on CPU tensors)")


def launch(kernel, grid: tuple[int, ...], args: Sequence, like: torch.Tensor, config: KernelConfig,
           **constexprs) -> None:
    """Launch ``kernel[grid](*args, **constexprs)`` on ``like``'s device with ``config``'s tiles and options.

    Compiled kernels launch through ``torch.library.wrap_triton``: inside the package's ``triton_op``s, tracing
    (torch.compile, make_fx) records the launch in the graph, and eager calls launch directly. Triton launches on
    the current CUDA device, not on the tensors' one: without the guard, tensors on cuda:1 with cuda:0 current
    would be read through the wrong context and fault (fake tensors, while tracing, need no guard).
    """
    interpreted = is_interpreted(kernel)
    check_device(like.device, interpreted)
    meta = {**constexprs, **config.meta()}
    if interpreted:
        kernel[grid](*args, **meta)
        return
    real_cuda = like.is_cuda and not is_fake(like)
    with torch.cuda.device(like.device) if real_cuda else contextlib.nullcontext():
        torch.library.wrap_triton(kernel)[grid](*args, **meta)
