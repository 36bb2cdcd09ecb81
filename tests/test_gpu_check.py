"""benchmarks/gpu_check.sh without a GPU: stub programs stand in for python, the sanitizer and the GPU tools, so
that the script's own logic is checked here (the time budget, the verdicts, one archive that survives a hung
step, the 8-file limit of the device's results) before a session with a GPU depends on it."""
from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"

# A python stand-in: records its arguments, fails the self-test when asked to, hangs in pytest when asked to.
STUB_PYTHON = """#!/usr/bin/env bash
echo "python $*" >> "$STUB_CALLS"
case "$*" in
  *"-m pytest"*) [ -n "${STUB_HANG_TESTS:-}" ] && sleep 120 ;;
  *"ssfdan_ext.info"*) [ -n "${STUB_FAIL_INFO:-}" ] && { echo "routed_conv1x1 cuda float32 FAIL"; exit 1; } ;;
esac
echo "ran: $*"
exit 0
"""
STUB_SANITIZER = """#!/usr/bin/env bash
echo "sanitizer $*" >> "$STUB_CALLS"
echo "========= ERROR SUMMARY: 0 errors"
"""


def _stub(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _run(tmp_path: Path, *steps: str, budget: int = 60, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    environment = {**os.environ, "OUT": str(out), "GPU_CHECK_BUDGET": str(budget),
                   "PYTHON": _stub(tmp_path / "python", STUB_PYTHON),
                   "COMPUTE_SANITIZER": _stub(tmp_path / "sanitizer", STUB_SANITIZER),
                   "STUB_CALLS": str(tmp_path / "calls.txt"), **env}
    proc = subprocess.run(["bash", str(SCRIPT), *steps], env=environment, capture_output=True, text=True,
                          timeout=budget + 60)
    return proc, out


def _summary(out: Path) -> dict[str, str]:
    verdicts = {}
    for line in (out / "summary.txt").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("PASS", "FAIL", "TIMEOUT", "SKIP"):
            verdicts[parts[0]] = parts[1]
    return verdicts


def _archived(out: Path) -> set[str]:
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        return {Path(name).name for name in tar.getnames()}


@pytest.mark.slow
def test_hung_step_is_cut_to_the_budget_and_nothing_is_lost(tmp_path):
    proc, out = _run(tmp_path, budget=25, STUB_HANG_TESTS="1")
    assert proc.returncode != 0
    verdicts = _summary(out)
    assert verdicts["build"] == "PASS" and verdicts["info"] == "PASS"
    assert verdicts["memcheck"] == "PASS" and verdicts["racecheck"] == "PASS"
    assert verdicts["tests_cuda"] == "TIMEOUT"
    assert verdicts["bench_ssd"] == "SKIP" and verdicts["bench_iteration"] == "SKIP"
    # At most 8 files come back from the device: the archive and the summary.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.txt"]
    assert {"build.log", "info.log", "tests_cuda.log", "summary.txt"} <= _archived(out)


def test_named_steps_and_failures(tmp_path):
    proc, out = _run(tmp_path, "info", "racecheck", STUB_FAIL_INFO="1")
    assert proc.returncode != 0
    assert _summary(out) == {"env": _summary(out)["env"], "build": "PASS", "info": "FAIL", "racecheck": "PASS"}
    calls = (tmp_path / "calls.txt").read_text()
    assert "pip install --no-build-isolation --no-deps" in calls
    assert "-m pytest" not in calls and "bench_ssd" not in calls
    # Racecheck runs the self-test's CUDA rows under the sanitizer with an error exit code.
    assert "--tool racecheck --error-exitcode" in calls and "ssfdan_ext.info --check --device cuda" in calls
    assert "info.log" in _archived(out)


def test_every_step_runs_once_and_the_randomized_gpu_test_only_in_its_own_step(tmp_path):
    proc, out = _run(tmp_path, budget=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    verdicts = _summary(out)
    assert list(verdicts) == ["env", "build", "info", "memcheck", "racecheck", "tests_cuda", "bench_ssd",
                              "bench_confidence_select", "bench_iteration", "compile_cuda", "bench_ssd_variants",
                              "bench_domain_loss", "tests_cuda_random", "bench_iteration_reference"]
    assert set(verdicts.values()) == {"PASS"}
    pytest_calls = [c for c in (tmp_path / "calls.txt").read_text().splitlines() if "-m pytest" in c]
    random_test = "fused_on_the_gpu_equals_the_cpu_reference"
    # pytest -k: the kernel tests leave the randomized test out; its own step runs only it.
    assert sum(f"not {random_test}" in c for c in pytest_calls) == 1
    assert sum(f"-k {random_test}" in c for c in pytest_calls) == 1
