"""Build of ssfdan_ext._C: the CPU sources always, the CUDA sources when torch and nvcc allow.

Environment:
  SSFDAN_CPU_ONLY=1     never build the CUDA sources.
  SSFDAN_FORCE_CUDA=1   build them even when no GPU is visible, and fail loudly if that is impossible.
  TORCH_CUDA_ARCH_LIST  target architectures (default without a visible GPU: "8.0;9.0+PTX").
  CUDA_HOME             the CUDA toolkit (default: the first of $CUDA_PATH, /usr/local/cuda, nvcc's prefix
                        that holds include/cuda_runtime.h).
  MAX_JOBS              parallel compile jobs (ninja).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _cuda_home_candidates() -> list[str]:
    found = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a wrapper script (e.g. /usr/local/bin/nvcc): its prefix is not the toolkit.
        found.append(str(Path(os.path.realpath(nvcc)).parent.parent))
    return [c for c in found if c]


def _find_cuda_home() -> str | None:
    for cand in _cuda_home_candidates():
        if (Path(cand) / "bin" / "nvcc").exists() and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return cand
    return None


# torch.utils.cpp_extension reads CUDA_HOME once, at import: fix it before importing.
_CUDA_HOME = _find_cuda_home()
if _CUDA_HOME and not _flag("SSFDAN_CPU_ONLY"):
    os.environ["CUDA_HOME"] = _CUDA_HOME

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvidia_wheel_includes() -> list[str]:
    """Headers that torch's CUDA headers need but a bare toolkit may lack (cusparse.h): the pip CUDA wheels ship
    them under site-packages/nvidia/*/include. Searched after the toolkit's own headers (-idirafter), and only
    when the toolkit lacks them, so that the wheel's copies of the runtime headers never shadow nvcc's."""
    if _CUDA_HOME is None or (Path(_CUDA_HOME) / "include" / "cusparse.h").exists():
        return []
    dirs: list[str] = []
    for site in sys.path:
        for inc in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include"))):
            if os.path.exists(os.path.join(inc, "cusparse.h")) and inc not in dirs:
                dirs.append(inc)
    return dirs


def _toolkit_version() -> str | None:
    """The release of the toolkit's nvcc ("13.0"), or None when it cannot be run."""
    try:
        out = subprocess.run([str(Path(_CUDA_HOME) / "bin" / "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _want_cuda() -> tuple[bool, str]:
    if _flag("SSFDAN_CPU_ONLY"):
        return False, "SSFDAN_CPU_ONLY=1"
    toolkit = _toolkit_version() if _CUDA_HOME else None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif _CUDA_HOME is None:
        reason = "no CUDA toolkit (nvcc and include/cuda_runtime.h) found; set CUDA_HOME"
    elif toolkit is None:
        reason = f"{_CUDA_HOME}/bin/nvcc --version failed"
    elif toolkit.split(".")[0] != torch.version.cuda.split(".")[0]:
        # torch refuses to compile across CUDA major versions; the CPU kernels still build.
        reason = f"nvcc {toolkit} in {_CUDA_HOME} does not match torch's CUDA {torch.version.cuda}"
    else:
        return True, f"torch CUDA {torch.version.cuda}, nvcc {toolkit} in {_CUDA_HOME}"
    if _flag("SSFDAN_FORCE_CUDA"):
        raise RuntimeError(f"SSFDAN_FORCE_CUDA=1 but the CUDA sources cannot be built: {reason}")
    return False, reason


def _extension():
    with_cuda, reason = _want_cuda()
    cpu_sources = ["csrc/ops.cpp", "csrc/module.cpp", *sorted(glob.glob("csrc/aten/*.cpp")),
                   *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    # -fno-trapping-math lets GCC vectorise loops with selects (confidence_select's exp); nothing reads FP flags.
    cxx = ["-O3", "-fno-trapping-math", "-std=c++20", f'-DSSFDAN_TORCH_VERSION="{torch.__version__}"']
    print(f"ssfdan_ext: CUDA sources {'ON' if with_cuda else 'OFF'} ({reason})", flush=True)
    if not with_cuda:
        return CppExtension("ssfdan_ext._C", cpu_sources, extra_compile_args={"cxx": cxx})

    cpp_extension.CUDA_HOME = _CUDA_HOME
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "detected")
    cxx += ["-DSSFDAN_WITH_CUDA", f'-DSSFDAN_CUDA_ARCHS="{archs}"']
    for inc in _nvidia_wheel_includes():
        cxx += ["-idirafter", inc]
    nvcc = ["-O3", "-std=c++20", "-lineinfo"]
    return CUDAExtension("ssfdan_ext._C", cpu_sources + cuda_sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc})


setup(
    packages=find_packages(include=["ssfdan_ext", "ssfdan_ext.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
