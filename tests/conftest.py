"""Shared test settings: devices, tolerances and comparison helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton decides when it is imported whether its kernels run compiled or in its interpreter. Without a GPU the
# suite runs them interpreted, on CPU tensors (the only way to execute them here); with one it leaves them
# compiled, so that the CUDA tests exercise the real kernels (the interpreter on GPU-sized tests would run for
# hours). An explicit TRITON_INTERPRET in the environment always wins. Asking torch whether a device exists
# initialises no CUDA context.
if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"

import ssfdan_ext  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests (tests/test_properties.py): a quick default for CI, many more examples for local runs
# (SSFDAN_HYPOTHESIS_PROFILE=thorough). No deadline: shared 2-core machines time single examples unevenly.
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SSFDAN_HYPOTHESIS_PROFILE", "ci"))


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and ssfdan_ext.has_cuda_kernels()


# The SPEC's float32 tolerances assume float32 arithmetic: TF32 convolutions and matmuls (on by default for cuDNN
# on Ampere and newer) round differently in each backend and would exceed them.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_ready(),
                                                                          reason="needs a GPU and the CUDA kernels")])
DEVICES = ["cpu", CUDA]

# SPEC section 3: fp32 rtol 1e-4, atol 1e-5 after scaling by the reference's largest magnitude.
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    actual, expected = actual.detach(), expected.detach()
    rtol, atol = TOLERANCES[expected.dtype]
    scale = max(float(expected.abs().max()), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{name}: {m}")


def load_script(relative: str):
    """Import a script of the repository (``benchmarks/bench_x.py``, ``examples/x.py``) as a module; benchmarks/
    goes on ``sys.path`` first, for the scripts that import their ``_harness``."""
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    benchmarks = str(root / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    path = root / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Triton comes with the CUDA builds of torch. CI (SSFDAN_FORCE_CUDA=1) must fail, not skip, when it is missing, as
# it fails when the CUDA sources do not build; elsewhere the Triton tests skip without it.
TRITON_REQUIRED = os.environ.get("SSFDAN_FORCE_CUDA", "0") == "1"


def require_triton() -> None:
    """Skip (or, in CI, fail) the calling test when Triton does not import."""
    try:
        import triton  # noqa: F401
    except ImportError as err:
        if TRITON_REQUIRED:
            pytest.fail(f"Triton does not import ({err}) but SSFDAN_FORCE_CUDA=1 requires the GPU toolchain")
        pytest.skip(f"Triton does not import: {err}")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a test's child Python process: it imports the same ssfdan_ext as the test (the installed
    package with its compiled extension in CI, the checkout during development), never a source tree without it."""
    package_root = str(Path(ssfdan_ext.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (the checkout, when pytest runs from
    # it) before PYTHONPATH, and import the source tree without its compiled extension.
    return {**os.environ, "PYTHONPATH": path, "PYTHONSAFEPATH": "1", **extra}
