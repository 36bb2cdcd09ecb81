"""Shared test settings: devices, tolerances and comparison helpers."""
from __future__ import annotations

import os

# Triton decides when it is imported whether its kernels run compiled or in its interpreter. The suite runs them
# interpreted (on CPU tensors) unless told otherwise: benchmarks/gpu_check.sh sets TRITON_INTERPRET=0 so that the
# CUDA tests exercise the compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import ssfdan_ext  # noqa: E402


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
