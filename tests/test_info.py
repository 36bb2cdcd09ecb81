"""python -m ssfdan_ext.info: the report names what is installed, --check passes here, and a wrong op fails."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import ssfdan_ext
from ssfdan_ext import info
from conftest import subprocess_env



def _run(*args: str, interpret: bool = True, **env_vars: str) -> subprocess.CompletedProcess:
    env = subprocess_env(TRITON_INTERPRET="1" if interpret else "0", **env_vars)
    return subprocess.run([sys.executable, "-m", "ssfdan_ext.info", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _rows(text: str) -> dict[tuple[str, str, str], list[str]]:
    """(op, device, dtype) -> the row's remaining columns, for the lines of the check table."""
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3] in ("PASS", "FAIL", "SKIP"):
            rows[tuple(parts[:3])] = parts[3:]
    return rows


def test_report_names_the_versions_and_the_build():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    build = ssfdan_ext.build_info()
    for text in (f"ssfdan_ext {ssfdan_ext.__version__}", f"torch    {torch.__version__}", "triton", "numpy",
                 f"built    with torch {build['torch_version']}", f"compiler {build['compiler']}",
                 "torch.backends.cudnn.allow_tf32 =", "torch.backends.cuda.matmul.allow_tf32 =", "cpu ",
                 f"CPU per-class products {ssfdan_ext._ext._C.class_gemm_policy()}"):
        assert text in out, text
    assert build["compiler"] and build["compiler"] != "unknown"
    assert "PASS" not in out  # the checks run only with --check


def test_report_names_the_product_orientation_and_flags_a_bad_setting():
    for setting, shown in (("direct", "direct"), ("transposed", "transposed"),
                           ("sideways", "INVALID: SSFDAN_CLASS_GEMM must be auto, direct or transposed, got "
                                        "'sideways'")):
        proc = _run(SSFDAN_CLASS_GEMM=setting)
        assert proc.returncode == 0, proc.stderr
        assert f"CPU per-class products {shown}" in proc.stdout, setting
    auto = _run(SSFDAN_CLASS_GEMM="auto").stdout
    assert "CPU per-class products auto: " in auto
    assert ("direct (this CPU has AVX-512)" in auto) == ("avx512f" in _cpu_flags())


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def test_check_passes_on_the_cpu_with_interpreted_triton():
    proc = _run("--check", "--device", "cpu")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _rows(proc.stdout)
    expected_ops = ["confidence_select", "mode_downsample", "routed_conv1x1[aten]", "routed_conv1x1[triton]",
                    "sparse_conv3x3[aten]", "sparse_conv3x3[triton]", "sparse_ssd_rulebook",
                    "SeparatedDiscriminator[grouped]", "SeparatedDiscriminator[fused]", "forward_domains[fused]"]
    assert sorted({op for op, _, _ in rows}) == sorted(expected_ops)
    assert all(device == "cpu" for _, device, _ in rows)
    # Triton runs interpreted in float32; the interpreter cannot check bfloat16 (a SKIP with its reason).
    assert rows[("routed_conv1x1[triton]", "cpu", "float32")][0] == "PASS"
    assert rows[("sparse_conv3x3[triton]", "cpu", "float32")][0] == "PASS"
    assert rows[("sparse_conv3x3[triton]", "cpu", "bfloat16")][0] == "SKIP"
    assert rows[("SeparatedDiscriminator[fused]", "cpu", "bfloat16")][0] == "PASS"
    assert rows[("forward_domains[fused]", "cpu", "float32")][0] == "PASS"
    assert not any(r[0] == "FAIL" for r in rows.values())


def test_triton_rows_skip_without_the_interpreter():
    proc = _run("--check", "--device", "cpu", "--ops", "routed_conv1x1", interpret=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    assert rows[("routed_conv1x1[aten]", "cpu", "float32")][0] == "PASS"
    triton_row = rows[("routed_conv1x1[triton]", "cpu", "float32")]
    assert triton_row[0] == "SKIP" and "TRITON_INTERPRET=1" in " ".join(triton_row)


def _check_in_process(capsys, *ops: str) -> tuple[int, dict]:
    status = info.main(["--check", "--device", "cpu", "--ops", *ops])
    return status, _rows(capsys.readouterr().out)


def test_a_wrong_forward_is_a_fail(monkeypatch, capsys):
    original = ssfdan_ext.ops.routed_layer1_dense
    monkeypatch.setattr(ssfdan_ext.ops, "routed_layer1_dense", lambda *a, **k: original(*a, **k) * 1.1)
    status, rows = _check_in_process(capsys, "routed_conv1x1[aten]", "mode_downsample")
    assert status == 1
    for dtype in ("float32", "bfloat16"):
        row = rows[("routed_conv1x1[aten]", "cpu", dtype)]
        assert row[0] == "FAIL" and float(row[1]) > float(row[2]), row
    assert rows[("mode_downsample", "cpu", "int64")][0] == "PASS"


class _GradTimes(torch.autograd.Function):
    """Identity forward, gradient times ``factor``: a bug that only the backward shows."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def test_a_wrong_gradient_is_a_fail(monkeypatch, capsys):
    original = ssfdan_ext.ops.sparse_conv3x3
    monkeypatch.setattr(ssfdan_ext.ops, "sparse_conv3x3", lambda *a, **k: _GradTimes.apply(original(*a, **k), 1.01))
    status, rows = _check_in_process(capsys, "sparse_conv3x3[aten]")
    row = rows[("sparse_conv3x3[aten]", "cpu", "float32")]
    assert status == 1 and row[0] == "FAIL" and "grad" in " ".join(row), row


def test_an_op_that_raises_fails_its_row_and_the_others_still_run(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(ssfdan_ext.ops, "mode_downsample", broken)
    status, rows = _check_in_process(capsys, "mode_downsample", "confidence_select")
    assert status == 1
    row = rows[("mode_downsample", "cpu", "int64")]
    assert row[0] == "FAIL" and "RuntimeError: kernel exploded" in " ".join(row)
    assert rows[("confidence_select", "cpu", "float32")][0] == "PASS"


def test_bad_options():
    assert info.main(["--check", "--device", "cpu", "--ops", "no_such_op"]) == 2
    if not torch.cuda.is_available():
        assert info.main(["--check", "--device", "cuda"]) == 2
    with pytest.raises(SystemExit):
        info.main(["--device", "tpu"])


def test_check_restores_the_tf32_flags():
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with info.float32_arithmetic():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
