"""What was compiled, the public API surface, and the CMake build for libtorch users."""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ssfdan_ext

ROOT = Path(__file__).resolve().parent.parent


def test_build_info_reports_the_compiled_extension():
    info = ssfdan_ext.build_info()
    assert info["compiled"] and info["error"] is None and info["cpu"]
    assert info["torch_version"] == torch.__version__ == info["runtime_torch_version"]
    assert ssfdan_ext.has_cuda_kernels() == info["cuda"]
    if info["cuda"]:
        assert info["cuda_version"] and info["cuda_archs"]


@pytest.mark.skipif(os.environ.get("SSFDAN_FORCE_CUDA") != "1", reason="only when the build was asked for CUDA")
def test_cuda_kernels_compiled_when_forced():
    # CI builds with SSFDAN_FORCE_CUDA=1: the CUDA sources must be in the installed extension.
    assert ssfdan_ext.has_cuda_kernels()
    assert "CUDA" in str(torch._C._dispatch_dump("ssfdan_ext::mode_downsample"))


def test_public_api_is_documented():
    for name in ssfdan_ext.__all__:
        obj = getattr(ssfdan_ext, name)
        if name == "IGNORE":
            assert obj == 255
            continue
        assert inspect.getdoc(obj), f"{name} has no docstring"
    for name in ("confidence_select", "mode_downsample", "SeparatedDiscriminator", "DiscriminatorOutput",
                 "Selection", "adversarial_loss", "discriminator_loss"):
        doc = inspect.getdoc(getattr(ssfdan_ext, name))
        assert "Shapes" in doc, f"{name} documents no shapes"


@pytest.mark.slow
def test_cpu_only_build(tmp_path):
    # The CPU sources alone must build and register their kernels (torch CPU builds, machines without nvcc).
    env = dict(os.environ, SSFDAN_CPU_ONLY="1", SSFDAN_FORCE_CUDA="0", MAX_JOBS="2")
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp", str(tmp_path / "tmp"),
                            "--build-lib", str(tmp_path / "lib")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "CUDA sources OFF (SSFDAN_CPU_ONLY=1)" in build.stdout
    (library,) = (tmp_path / "lib" / "ssfdan_ext").glob("_C*.so")
    script = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        print(torch.ops.ssfdan_ext.mode_downsample(torch.tensor([[[2, 2, 1]]]), 1, 1, 3).item())
        print("CUDA" in torch._C._dispatch_dump("ssfdan_ext::mode_downsample"))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["2", "False"]


def _cmake_version() -> tuple[int, ...]:
    if shutil.which("cmake") is None:
        return ()
    out = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.split()
    return tuple(int(x) for x in out[2].split(".")[:2]) if len(out) > 2 else ()


@pytest.mark.slow
@pytest.mark.skipif(_cmake_version() < (3, 25), reason="CMakeLists.txt needs cmake >= 3.25")
def test_cmake_library_builds_and_registers_the_ops(tmp_path):
    build = tmp_path / "build"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    generator = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
    configure = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), *generator,
                                f"-DPython3_EXECUTABLE={sys.executable}"],
                               capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    if ssfdan_ext.has_cuda_kernels():  # the same toolkit that built the Python extension builds these
        assert "ssfdan_ext: CUDA kernels ON" in configure.stdout
    built = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    library = build / "libssfdan_ext.so"
    assert library.exists()
    # A fresh interpreter that never imports the Python package: the library alone registers the op.
    script = textwrap.dedent(f"""
        import torch
        torch.ops.load_library({str(library)!r})
        labels = torch.tensor([[[0, 1, 1, 2, 255]]])
        print(torch.ops.ssfdan_ext.mode_downsample(labels, 1, 2, 3).tolist())
        rows, order, offsets = torch.ops.ssfdan_ext.routed_conv1x1_forward(
            torch.ones(1, 1, 1, 5), labels, torch.tensor([[[[2.0]]], [[[3.0]]], [[[4.0]]]]), torch.zeros(3), 3)
        print(rows.flatten().tolist(), order.tolist(), offsets.tolist())
        print(torch.ops.ssfdan_ext.confidence_select(torch.zeros(1, 2, 1, 2), 1.0, [])[0].tolist())
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    # bins [0, 3) -> {0, 1, 1} -> 1 and [2, 5) -> {1, 2, 255} -> tie -> 1
    assert run.stdout.splitlines()[0] == "[[[1, 1]]]"
    # cells sorted by class (IGNORE last), each multiplied by its class's weight; IGNORE rows are 0
    assert run.stdout.splitlines()[1] == "[2.0, 3.0, 3.0, 4.0, 0.0] [0, 1, 2, 3, 4] [0, 1, 3, 4]"
    assert run.stdout.splitlines()[2] == "[[[0, 0]]]"  # equal logits: class 0, every pixel kept at rho = 1
