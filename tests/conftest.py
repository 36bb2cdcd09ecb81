"""Shared test settings: devices, tolerances and comparison helpers."""
from __future__ import annotations

import os
import subprocess
import sys
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
from ssfdan_ext import IGNORE, mode_downsample  # noqa: E402
from ssfdan_ext.geometry import output_size  # noqa: E402
from ssfdan_ext.testing import checkerboard_labels, street_labels  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Property tests (tests/test_properties.py): a quick default for CI, many more examples for local runs
# (SSFDAN_HYPOTHESIS_PROFILE=thorough). No deadline: shared 2-core machines time single examples unevenly.
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("SSFDAN_HYPOTHESIS_PROFILE", "ci"))


def _cuda_ready() -> bool:
    return torch.cuda.is_available() and ssfdan_ext.has_cuda_kernels()


# The float32 tolerances of docs/semantics.md assume float32 arithmetic: TF32 convolutions and matmuls (on by default
# for cuDNN on Ampere and newer) round differently in each backend and would exceed them.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not _cuda_ready(),
                                                                          reason="needs a GPU and the CUDA kernels")])
DEVICES = ["cpu", CUDA]

# docs/semantics.md section 3: fp32 rtol 1e-4, atol 1e-5 after scaling by the reference's largest magnitude.
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


# Helpers shared by several test modules (tests import them from here, never from each other).


def run_triton_aot(module: str, tmp_path) -> list[str]:
    """tests/triton_aot.py's report for ``module``: one line per compiled configuration; fails on any spill."""
    require_triton()
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path)}
    script = os.path.join(os.path.dirname(__file__), "triton_aot.py")
    proc = subprocess.run([sys.executable, script, module], env=env, capture_output=True, text=True, timeout=900)
    print(proc.stdout)  # the register table (pytest -s shows it)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines and all(" 0 spill bytes, " in line and int(line.split(", ")[-1].split()[0]) > 0 for line in lines)
    return lines


def label_layout(kind: str, B: int, H: int, W: int, C: int, seed: int) -> torch.Tensor:
    """(B, H, W) labels of one layout: random blocks, all IGNORE, class 0 absent, street or checkerboard."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "random":
        # Blocky random labels (3x3 blocks) so that mode downsampling keeps several classes per map.
        blocks = torch.randint(0, C, (B, (H + 2) // 3, (W + 2) // 3), generator=gen)
        labels = blocks.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, :H, :W].contiguous()
        labels[torch.rand(B, H, W, generator=gen) < 0.1] = IGNORE
        return labels
    if kind == "all_ignore":
        return torch.full((B, H, W), IGNORE, dtype=torch.int64)
    if kind == "class_absent":  # never uses class 0
        return torch.randint(1, max(C, 2), (B, H, W), generator=gen) % C if C > 1 else torch.zeros(B, H, W).long()
    if kind == "street":
        return street_labels(B, H, W, num_classes=C, seed=seed)
    if kind == "checkerboard":
        return checkerboard_labels(B, H, W, num_classes=C, cell=2)
    raise ValueError(kind)


def run_backend(disc, backend, features, labels, upstream):
    disc.zero_grad(set_to_none=True)
    features = features.detach().clone().requires_grad_(True)
    disc.backend = backend
    out = disc(features, labels)
    (out.logits * upstream).sum().backward()
    grads = [features.grad] + [p.grad for p in disc.parameters()]
    return out, grads


def compare_backends(disc, features, labels, backend="grouped"):
    """The discriminator's logits and every gradient on ``backend`` equal the reference backend's."""
    h, w = features.shape[-2:]
    upstream = torch.randn(features.shape[0], 1, *disc.output_size(h, w), device=features.device)
    ref, ref_grads = run_backend(disc, "reference", features, labels, upstream)
    out, grads = run_backend(disc, backend, features, labels, upstream)
    assert torch.equal(out.labels, ref.labels)
    assert_close_scaled(out.logits, ref.logits, "logits")
    names = ["features"] + [n for n, _ in disc.named_parameters()]
    for name, g, g_ref in zip(names, grads, ref_grads):
        assert g is not None and g_ref is not None, name
        assert_close_scaled(g, g_ref, f"grad of {name}")
    return ref


def flip_bits(path: Path) -> None:
    """Three flipped bits in the middle of the file (where the tensor data lies)."""
    data = bytearray(path.read_bytes())
    for k, bit in enumerate((0, 3, 6)):
        data[len(data) // 2 + 7 * k] ^= 1 << bit
    path.write_bytes(bytes(data))


def damage(path: Path, kind: str) -> None:
    """Make ``path`` one of the broken files a checkpoint reader meets."""
    if kind == "flipped":
        flip_bits(path)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled list":
        torch.save([1, 2, 3], path)
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    else:
        raise ValueError(kind)


DAMAGE_KINDS = ["flipped", "truncated", "empty", "pickled list", "text"]  # what damage() can do to a file


def downsampled_maps(labels, C, h, w, strides):
    """The mode-downsampled labels at the feature size (h, w) and at the SS-D output size for ``strides``."""
    disc_size = output_size(h, w, strides)
    return mode_downsample(labels, (h, w), C), mode_downsample(labels, disc_size, C)
