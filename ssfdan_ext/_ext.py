"""Loading of the compiled extension ssfdan_ext._C and reports of what it contains."""
from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import torch
from torch import Tensor

try:
    from . import _C  # noqa: F401  (importing it registers the torch.ops.ssfdan_ext operators)

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout without a build, or a torch ABI mismatch
    _C = None
    _LOAD_ERROR = exc


def build_info() -> dict[str, Any]:
    """What the installed extension was compiled with.

    Keys: ``compiled`` (the extension loaded), ``cpu`` and ``cuda`` (which kernel sets are in it),
    ``cuda_version`` and ``cuda_archs`` (of the CUDA build, if any), ``compiler`` (the host C++ compiler),
    ``torch_version`` (torch at build time),
    ``runtime_torch_version`` (torch now), and ``error`` (why loading failed, when it did).
    """
    info: dict[str, Any] = {"runtime_torch_version": torch.__version__}
    if _C is None:
        info.update(compiled=False, cpu=False, cuda=False, cuda_version=None, cuda_archs="",
                    compiler=None, torch_version=None, error=str(_LOAD_ERROR))
        return info
    info.update(_C.build_info())
    info.update(compiled=True, error=None)
    return info


@functools.cache  # fixed at build time; asked on every op call on a GPU (use_reference)
def has_cuda_kernels() -> bool:
    """True when the extension was compiled with its CUDA kernels (no GPU is needed to ask)."""
    return bool(build_info()["cuda"])


def has_compiled_ops() -> bool:
    """True when the compiled operators (torch.ops.ssfdan_ext.*) are available."""
    return _C is not None


def require_compiled(what: str) -> None:
    """Raise a RuntimeError that explains how to build the extension when it is missing."""
    if _C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension ssfdan_ext._C, which did not load ({_LOAD_ERROR}). "
            "Build it against the installed torch: `pip install --no-build-isolation .` from the source tree."
        )


_FALLBACK_WARNED: set[str] = set()


def use_reference(op: str, device: torch.device) -> bool:
    """The package's one fallback policy: True when ``op`` has no compiled kernel for ``device`` (the extension did
    not load, it was built without CUDA kernels and the input is on a GPU, or the device is neither CPU nor CUDA).
    The op then runs its plain-PyTorch definition from :mod:`ssfdan_ext.reference` (the same results, slower),
    and the first time this happens for ``op`` a ``RuntimeWarning`` says why. Ops without a reference definition
    raise instead (:func:`require_compiled`).
    """
    if device.type == "cpu" and _C is not None:
        return False
    if device.type == "cuda" and _C is not None and has_cuda_kernels():
        return False
    if op not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(op)
        why = (f"the compiled extension did not load ({_LOAD_ERROR})" if _C is None
               else f"the extension has no kernels for {device.type} tensors")
        warnings.warn(f"{op}: {why}; running the plain-PyTorch reference instead (same results, slower). "
                      "Rebuild with `pip install --no-build-isolation .` for the compiled kernels.", RuntimeWarning,
                      stacklevel=3)
    return True


IMPLEMENTATIONS = ("auto", "aten", "triton")  # the ``impl`` argument of the routed and sparse ops
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def triton_available() -> bool:
    """True when Triton imports (it ships with CUDA builds of torch); the GPU path needs it."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache  # Triton decides when its kernels are decorated, at the first import of the kernel modules
def triton_kernels_interpreted() -> bool:
    """Whether the Triton kernels of this package run in Triton's interpreter (``TRITON_INTERPRET=1``)."""
    from .triton.configs import is_interpreted
    from .triton.routed_conv1x1 import class_bucket

    return is_interpreted(class_bucket)


def check_impl(impl: object, x: Tensor, name: str) -> None:
    """``impl`` is one of :data:`IMPLEMENTATIONS`; ``"triton"`` on CPU tensors needs the interpreter."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if impl == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {name} on "
                         f"{x.device}")
    if not use_triton(x, impl):
        require_compiled(f"impl={impl!r} on {x.device.type} tensors")


def use_triton(x: Tensor, impl: str) -> bool:
    """Whether an op with input ``x`` and ``impl`` runs its Triton kernels rather than the compiled ATen code.

    ``auto`` leaves CUDA tensors to the ATen kernels under ``TRITON_INTERPRET=1``: the interpreter computes on the
    host and would take hours on them (``impl="triton"`` is refused there with a clear error instead)."""
    if impl == "triton":
        return True
    return (impl == "auto" and x.is_cuda and x.dtype in _TRITON_DTYPES and triton_available()
            and os.environ.get("TRITON_INTERPRET") != "1")
