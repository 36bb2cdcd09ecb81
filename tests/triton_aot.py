"""Compile the library's Triton kernels ahead of time for an sm_90 (Hopper) GPU, without a GPU, and report their
registers and spills.

Run in its own interpreter with TRITON_INTERPRET=0 (tests/test_routed_conv1x1.py and tests/test_sparse_conv3x3.py
do), naming the kernel module: ``routed_conv1x1`` (the default) or ``sparse_conv3x3``. The launchers themselves run on
meta tensors of the paper's layer widths (and of tiny test widths) with their ``launch`` replaced by a recorder, so
what is compiled is exactly what they would launch: kernel, argument types, constexprs, tiles, warps and stages,
for float32 (TF32 on and off), float16 and bfloat16. Triton's own binder derives the signature and the integer and
alignment specialisations from those arguments, as at a real launch. Each kernel's PTX then goes through the ptxas
bundled with Triton (``-v``), whose register and spill counts are printed, one line per compilation:

    kernel dtype precision layer m_in->m_out flags: BMxBNxBK wW sS: R regs, S spill bytes, C bytes cubin

and the script exits with status 1 when any configuration spills (``--allow-spills`` only reports).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from ssfdan_ext.triton import routed_conv1x1, sparse_conv3x3

TARGET = GPUTarget("cuda", 90, 32)
C = 19  # Cityscapes classes, as in the paper
# The paper's SS-D (ResNet-101 features, 1024-512-256-128-1) and the tiny widths the GPU tests use.
WIDTHS = {"paper": (2048, 1024, 512, 256, 128, 1), "small": (40, 17, 9, 5, 3, 1)}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ALL = (True, True, True)


def record(module, fn, *args) -> list[tuple]:
    """(kernel, positional args, keyword args) of every launch ``fn(*args)`` makes through ``module.launch``."""
    launches = []

    def capture(kernel, grid, kernel_args, like, config, **constexprs):
        launches.append((kernel, tuple(kernel_args), {**constexprs, **config.meta()}))

    saved, module.launch = module.launch, capture
    try:
        fn(*args)
    finally:
        module.launch = saved
    return launches


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def routed_launches(widths, dtype) -> list[tuple[str, tuple]]:
    """Layer 1 at a 65x129 feature map (the paper's 512x1024 crops): forward and full backward."""
    n, m, (h, w) = widths[0], widths[1], (65, 129)
    features, weight = _meta(1, n, h, w, dtype=dtype), _meta(C * m, n, 1, 1, dtype=dtype)
    bias = _meta(C * m, dtype=dtype)
    labels = _meta(1, h, w, dtype=torch.int64)
    out = record(routed_conv1x1, routed_conv1x1.routed_conv1x1_forward, features, labels, weight, bias, C)
    out += record(routed_conv1x1, routed_conv1x1.routed_conv1x1_backward, _meta(h * w, m, dtype=dtype), features,
                  weight, _meta(h * w, dtype=torch.int64), _meta(C + 1, dtype=torch.int64), ALL)
    return [(f"layer 1 {n}->{m}", launch) for launch in out]


def sparse_launches(widths, dtype) -> list[tuple[str, tuple]]:
    """Layers 2-5 on 50,000 pairs (layer 2 at paper scale): forward and backward, every gradient asked for, plus
    the weight-only and bias-only gradient kernels of layer 2."""
    out = []
    P = 50_000
    taps, offsets = _meta(P, 9, dtype=torch.int64), _meta(C + 1, dtype=torch.int64)
    for layer in range(1, len(widths) - 1):
        mi, mo = widths[layer], widths[layer + 1]
        table, weight, bias = _meta(P + C + 1, mi, dtype=dtype), _meta(C * mo, mi, 3, 3, dtype=dtype), _meta(C * mo)
        masks = [ALL] + ([(False, True, False), (False, False, True)] if layer == 1 else [])
        launches = record(sparse_conv3x3, sparse_conv3x3.sparse_conv3x3_forward, table, taps, offsets, weight, bias)
        for mask in masks:
            launches += record(sparse_conv3x3, sparse_conv3x3.sparse_conv3x3_backward, _meta(P, mo, dtype=dtype), table,
                               taps, offsets, weight, mask)
        out += [(f"layer {layer + 1} {mi}->{mo}", launch) for launch in launches]
    return out


def compile_launch(kernel, args: tuple, kwargs: dict):
    """Compile one launch for TARGET the way ``kernel[grid](*args, **kwargs)`` would on an sm_90 GPU."""
    backend = make_backend(TARGET)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET, options=options.__dict__)


def ptxas_usage(ptx: str) -> tuple[int, int]:
    """(registers per thread, spill bytes stored + loaded) that ptxas -v reports for the PTX's kernel."""
    arch = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        proc = subprocess.run([get_ptxas(TARGET.arch).path, "-v", "--gpu-name", arch, path, "-o",
                               os.path.join(tmp, "kernel.cubin")], capture_output=True, text=True, check=True)
    report = proc.stdout + proc.stderr
    regs = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    return regs, int(spills.group(1)) + int(spills.group(2))


def _flags(kwargs: dict) -> str:
    names = ("GATHER_A", "HAS_WEIGHT", "HAS_BIAS")
    return " ".join(f"{k}={int(bool(kwargs[k]))}" for k in names if k in kwargs) or "-"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", nargs="?", default="routed_conv1x1", choices=("routed_conv1x1", "sparse_conv3x3"))
    parser.add_argument("--allow-spills", action="store_true", help="report spills without failing")
    args = parser.parse_args(argv)
    launches_of = routed_launches if args.module == "routed_conv1x1" else sparse_launches
    seen, spilled = set(), []
    for dtype_name, dtype in DTYPES.items():
        for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
            torch.backends.cudnn.allow_tf32 = tf32  # the launchers read the TF32 policy from this flag
            for widths in WIDTHS.values():
                for where, (kernel, kargs, kwargs) in launches_of(widths, dtype):
                    key = (kernel.__name__, dtype_name, repr(sorted(kwargs.items())))
                    if key in seen:  # e.g. the weight-only and full gradients of a layer share the forward
                        continue
                    seen.add(key)
                    compiled = compile_launch(kernel, kargs, kwargs)
                    regs, spill = ptxas_usage(compiled.asm["ptx"])
                    line = (f"{kernel.__name__} {dtype_name} {kwargs['PRECISION']} {where} {_flags(kwargs)}: "
                            f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_N']}x{kwargs['BLOCK_K']} w{kwargs['num_warps']} "
                            f"s{kwargs['num_stages']}: {regs} regs, {spill} spill bytes, "
                            f"{len(compiled.asm['cubin'])} bytes cubin")
                    print(line, flush=True)
                    if spill:
                        spilled.append(line)
    if spilled and not args.allow_spills:
        print(f"{len(spilled)} configuration(s) spill registers:\n" + "\n".join(spilled), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
