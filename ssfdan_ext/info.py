"""What this installation of ssfdan_ext is, and whether its kernels are right on this machine.

    python -m ssfdan_ext.info                     # versions, what was compiled, Triton, TF32 flags, devices
    python -m ssfdan_ext.info --check             # every op and kernel against the reference, per device/dtype
    TRITON_INTERPRET=1 python -m ssfdan_ext.info --check --device cpu   # Triton kernels too, interpreted

``--check`` prints one PASS/FAIL/SKIP row per (op, device, dtype) with the largest error and its tolerance
(see :mod:`ssfdan_ext._selfcheck`) and exits with status 1 when any row fails (an op that raises fails its row),
2 on a bad option. SKIP rows (a kernel this machine cannot run) are not failures.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import re
import sys
from collections.abc import Iterator

import torch

from . import __version__, build_info


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception as exc:  # not installed, or broken
        return f"not available ({type(exc).__name__}: {exc})"


def _tf32_flags() -> dict[str, bool]:
    return {"torch.backends.cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "torch.backends.cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def available_devices() -> list[str]:
    """The device types this process can check: cpu, and cuda when a GPU is visible."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _class_gemm_policy() -> str:
    """How the CPU kernels orient their per-class products (SSFDAN_CLASS_GEMM; docs/troubleshooting.md)."""
    from ._ext import _C

    policy = getattr(_C, "class_gemm_policy", None)
    if policy is None:  # an extension built before the setting existed
        return "unknown (an older build: rebuild the extension)"
    try:
        return policy()
    except ValueError as exc:
        return f"INVALID: {exc}"


def report_lines() -> list[str]:
    """The plain report: versions, the build, Triton, TF32 flags and devices."""
    from ._selfcheck import triton_error, triton_interpreted

    info = build_info()
    lines = [f"ssfdan_ext {__version__}",
             "versions:",
             f"  python   {platform.python_version()} ({sys.executable})",
             f"  torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             f"  triton   {_version('triton')}",
             f"  numpy    {_version('numpy')}"]
    lines.append("extension ssfdan_ext._C:")
    if not info["compiled"]:
        lines.append(f"  NOT LOADED: {info['error']}")
        lines.append("  (the reference fallbacks run; build with `pip install --no-build-isolation .`)")
    else:
        kernels = ["CPU"] + ([f"CUDA {info['cuda_version']} (archs {info['cuda_archs'] or '?'})"]
                             if info["cuda"] else [])
        lines.append(f"  kernels  {', '.join(kernels)}" + ("" if info["cuda"] else " (built without CUDA)"))
        lines.append(f"  built    with torch {info['torch_version']}, compiler {info.get('compiler', 'unknown')}")
        lines.append(f"  CPU per-class products {_class_gemm_policy()}")
        if info["torch_version"] != torch.__version__:
            lines.append(f"  WARNING  built against torch {info['torch_version']} but torch {torch.__version__} "
                         "is running: rebuild the extension")
    error = triton_error()
    mode = ("interpreted (TRITON_INTERPRET=1: on CPU tensors)" if triton_interpreted() else
            "compiled for the GPU (TRITON_INTERPRET=1 runs them on CPU tensors)")
    lines.append(f"triton: {'imports, kernels ' + mode if error is None else 'does not import: ' + error}")
    lines.append("TF32 (float32 convolutions / matmuls on Ampere and newer GPUs):")
    lines += [f"  {name} = {value}" for name, value in _tf32_flags().items()]
    lines.append("devices:")
    lines.append(f"  cpu      {platform.machine()}, {torch.get_num_threads()} torch threads, "
                 f"ISA {torch.backends.cpu.get_cpu_capability()}")
    if not torch.cuda.is_available():
        lines.append("  cuda     none visible")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        arch = f"{props.major}.{props.minor}"
        archs = re.split(r"[;,\s]+", info["cuda_archs"].replace("+PTX", "")) if info["cuda"] else []
        covered = arch in archs
        lines.append(f"  cuda:{i}   {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB"
                     + ("" if covered or not info["cuda"] else f" (no sm_{props.major}{props.minor} code in the "
                        "build: PTX JIT or failure)"))
    return lines


@contextlib.contextmanager
def float32_arithmetic() -> Iterator[None]:
    """TF32 off while checking: the float32 tolerances of docs/semantics.md assume float32 products (as
    tests/conftest.py)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _format(row) -> str:
    err = "" if row.error is None else f"{row.error:.2e}"
    tol = "" if row.tol is None else f"{row.tol:.1e}" if row.tol else "0 (exact)"
    return f"{row.op:<31} {row.device:<5} {row.dtype:<9} {row.status:<5} {err:>9} {tol:>10}  {row.detail}"


def check(devices: list[str], seed: int, only: list[str] | None = None) -> int:
    """Run the checks, print the table; returns the exit status (1 when a row failed)."""
    from ._selfcheck import run_checks

    print(f"checking on {', '.join(devices)} (seed {seed}, TF32 off; max_err = max|actual - reference| / "
          "max(max|reference|, 1), the worst field of each row)")
    print(f"{'op':<31} {'dev':<5} {'dtype':<9} {'res':<5} {'max_err':>9} {'tol':>10}  detail")
    with float32_arithmetic():
        rows = run_checks(devices, seed, only, report=lambda row: print(_format(row), flush=True))
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    if not rows:
        print("no check matched --ops")
        return 2
    return 1 if counts["FAIL"] else 0


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0, 1 when a check failed, 2 on a bad option)."""
    parser = argparse.ArgumentParser(prog="python -m ssfdan_ext.info", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="run every op against the reference")
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="devices to check (all: every available one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (e.g. routed_conv1x1 or "
                        "'SeparatedDiscriminator[fused]')")
    args = parser.parse_args(argv)
    for line in report_lines():
        print(line)
    if not args.check:
        return 0
    devices = available_devices() if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible")
        return 2
    print()
    return check(devices, args.seed, args.ops)


if __name__ == "__main__":
    sys.exit(main())
