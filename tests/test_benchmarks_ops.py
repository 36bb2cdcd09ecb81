"""The per-op benchmarks (benchmarks/bench_<op>.py) run their tiny preset: each provider matched the reference on the
benchmark inputs before it was timed, and the CSV holds one row per (case, mode, provider) with every column.

The two-mode scripts run their ``fwd+bwd`` mode through the workers (it checks the outputs and the gradients) and
their ``fwd`` mode in this process, to keep each test short on two cores.
"""
from __future__ import annotations

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
CPU = torch.device("cpu")
TINY = ["--preset", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0"]
COMMON_COLUMNS = ("preset", "device", "provider", "mode", "case", "matches_reference", "max_err", "median_ms",
                  "peak_mb", "repeats", "warmup", "threads", "torch", "speedup_vs_reference")

# script -> (extra arguments, the expected (case, mode, provider) rows in order, its own columns)
SCRIPTS = {
    "mode_downsample": ([], [("tiny 8x16", "fwd", p) for p in ("reference", "kernel")],
                        ("labels", "out_size", "effective_gbs", "bandwidth_gbs", "bandwidth_source",
                         "bandwidth_fraction")),
    "routed_conv1x1": (["--modes", "fwd+bwd"], [("tiny", "fwd+bwd", p) for p in ("reference", "grouped", "routed")],
                       ("shape", "classes", "n", "m", "class_cells", "executed_gflop", "dense_fwd_gflop", "gflops",
                        "speedup_vs_grouped")),
    "sparse_conv3x3": (["--modes", "fwd+bwd"], [("tiny", "fwd+bwd", p) for p in ("reference", "dense", "sparse")],
                       ("shape", "classes", "m_in", "m_out", "pairs", "executed_gflop", "dense_fwd_gflop", "gflops",
                        "speedup_vs_dense")),
    "sparse_ssd_rulebook": ([], [(f"tiny {layout}", "build", p) for layout in ("street", "checkerboard")
                                 for p in ("reference", "compiled")],
                            ("layout", "lf", "lo", "pairs_l1", "pairs_l2", "pairs_l3", "pairs_l4", "pairs_l5")),
}


def _module(name: str):
    """Import ``benchmarks/<name>.py`` by name. Not conftest.load_script: the scripts' dataclasses need their module
    in sys.modules, which load_script does not register."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _bench(op: str):
    return _module(f"bench_{op}")


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(SCRIPTS))
def test_tiny_preset_checks_every_provider_and_writes_its_rows(op, tmp_path, capsys):
    extra, expected, columns = SCRIPTS[op]
    rows = _bench(op).main([*TINY, *extra, "--out", str(tmp_path)])
    stem = f"bench_{op}_tiny_cpu"
    with open(tmp_path / f"{stem}.csv") as f:
        table = list(csv.DictReader(f))
    assert (tmp_path / f"{stem}.png").exists()
    assert len(table) == len(rows)
    assert [(r["case"], r["mode"], r["provider"]) for r in table] == [(f"{c} {m}", m, p) for c, m, p in expected]
    for column in (*COMMON_COLUMNS, *columns):
        assert column in table[0], column
    for r in table:
        # each worker compared its provider with the reference before timing it (a mismatch fails the worker)
        assert r["matches_reference"] == "True" and 0 <= float(r["max_err"]) < 1e-4, r
        assert float(r["median_ms"]) > 0 and r["preset"] == "tiny" and r["device"] == "cpu"
        assert float(r["speedup_vs_reference"]) > 0
        if r["provider"] == "reference":
            assert float(r["speedup_vs_reference"]) == 1.0
    assert stem + ".csv" in capsys.readouterr().out


def test_rulebook_pair_counts_are_the_providers_and_the_layouts():
    bench = _bench("sparse_ssd_rulebook")
    for layout in ("street", "checkerboard"):
        rows = [bench.measure(p, "build", "tiny", layout, CPU, 1, 0) for p in ("reference", "compiled")]
        counts = [[r[f"pairs_l{i}"] for i in range(1, 6)] for r in rows]
        assert counts[0] == counts[1] and all(c > 0 for c in counts[0])


@pytest.mark.parametrize("op, providers", [("routed_conv1x1", ("reference", "grouped", "routed")),
                                           ("sparse_conv3x3", ("reference", "dense", "sparse"))])
def test_fwd_mode_matches_the_reference(op, providers):
    bench = _bench(op)
    for provider in providers:
        row = bench.measure(provider, "fwd", "tiny", CPU, 1, 0)
        assert row["matches_reference"] is True and row["max_err"] < 1e-4 and row["median_ms"] > 0
        assert row["executed_gflop"] > 0 and row["gflops"] > 0


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_a_provider_that_disagrees_with_the_reference_is_not_timed(mode, monkeypatch):
    bench = _bench("routed_conv1x1")
    real = bench.routed_conv1x1

    def off_by_one_cell(*args, **kwargs):
        out = real(*args, **kwargs)
        return out._replace(rows=out.rows + (torch.arange(out.rows.shape[0]) == 0).unsqueeze(1))

    monkeypatch.setattr(bench, "routed_conv1x1", off_by_one_cell)
    monkeypatch.setattr(bench, "checked_row", lambda *args: pytest.fail("timed a provider that failed its check"))
    with pytest.raises(RuntimeError, match="routed: output differs from the reference"):
        bench.measure("routed", mode, "tiny", CPU, 1, 0)


def test_the_check_compares_integers_exactly_and_floats_within_tolerance():
    harness = _module("_harness")
    labels = torch.arange(12).view(3, 4)
    assert harness.check_against_reference("p", {"x": labels.clone()}, {"x": labels}, CPU) == 0.0
    with pytest.raises(RuntimeError, match="p: x differs from the reference in 1 of 12 entries"):
        harness.check_against_reference("p", {"x": labels + (labels == 5)}, {"x": labels}, CPU)
    with pytest.raises(RuntimeError, match="has shape"):
        harness.check_against_reference("p", {"x": labels[:2]}, {"x": labels}, CPU)
    values = torch.linspace(-3, 3, 50)
    assert 0 < harness.check_against_reference("p", {"v": values + 1e-6}, {"v": values}, CPU) < 1e-5
    with pytest.raises(RuntimeError, match="p: v differs from the reference by up to"):
        harness.check_against_reference("p", {"v": values + 1e-3}, {"v": values}, CPU)


@pytest.mark.slow
def test_bench_ssd_prints_the_fused_roofline_and_the_honest_ratio(tmp_path, capsys, monkeypatch):
    bench = _module("bench_ssd")
    measured = []

    def roofline_inputs(device, dtype):  # the real measurement, recorded to check what the row was given
        measured.append(real_inputs(device, dtype))
        return measured[-1]

    real_inputs = bench.roofline_inputs
    monkeypatch.setattr(bench, "roofline_inputs", roofline_inputs)
    rows = bench.main(["--preset", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0",
                       "--providers", "loop", "fused", "--modes", "full", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "roofline of the fused backend" in out and "GEMM" in out and "GB/s" in out
    fused = next(r for r in rows if r["provider"] == "fused")
    loop = next(r for r in rows if r["provider"] == "loop")
    assert fused["fastest_dense"] == "loop" and fused["roofline_ms"] > 0
    # Both ratios are rounded to 2 decimals in the table.
    assert fused["vs_roofline"] == pytest.approx(fused["median_ms"] / fused["roofline_ms"], rel=0.01, abs=0.006)
    assert fused["speedup_vs_fastest_dense"] == pytest.approx(loop["median_ms"] / fused["median_ms"], rel=0.01,
                                                              abs=0.006)
    assert loop["roofline_ms"] == "" and loop["gemm_gflops"] == ""
    # The fused row's inputs were measured right before and right after its worker (only for the fused row); the
    # row records their means and the spread of the GEMM rate, and its printed line gives its own ratio.
    (gemm_before, copy_before), (gemm_after, copy_after) = measured
    assert fused["gemm_gflops"] == pytest.approx((gemm_before + gemm_after) / 2, abs=0.06)
    assert fused["copy_gbs"] == pytest.approx((copy_before + copy_after) / 2, abs=0.06)
    assert fused["gemm_gflops_spread"] == f"{gemm_before:.0f}-{gemm_after:.0f}"
    assert f"{fused['vs_roofline']:.2f}x" in out
    # The roofline is recomputed from its recorded inputs: the measured GEMM rate and copy bandwidth.
    disc, features, labels = bench.make_case(bench.PRESETS["tiny"], "street", CPU)
    bound = bench.roofline(disc, features, labels, fused["gemm_gflops"], fused["copy_gbs"])
    assert fused["roofline_ms"] == pytest.approx(bound["full"]["roofline_ms"], rel=0.02)
    with open(tmp_path / "bench_ssd_tiny_street_cpu.csv") as f:
        assert {"roofline_ms", "vs_roofline", "gemm_gflops", "copy_gbs"} <= set(next(csv.DictReader(f)))


def test_the_bandwidth_copy_reaches_beyond_the_last_level_cache(monkeypatch):
    harness = _module("_harness")
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: 300 * 2**20)  # a server CPU's 300 MiB
    assert harness.copy_bytes(CPU) == 2**30
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: 8 * 2**20)
    assert harness.copy_bytes(CPU) == 64 * 2**20
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: 48 * 2**20)
    assert harness.copy_bytes(CPU) == 192 * 2**20
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: None)
    assert harness.copy_bytes(CPU) == 2**30
    assert harness.copy_bytes(torch.device("cuda")) == 2**30


def test_a_workers_cpu_peak_memory_is_its_own_not_its_parents():
    """A worker forked from a parent that holds 768 MB reports the 64 MB it allocates itself (``ru_maxrss`` would
    report about the parent's RSS), also after a larger peak of its own earlier in the process."""
    child = f"""
import sys
sys.path.insert(0, {str(BENCHMARKS)!r})
import torch
from _harness import PeakMemory
earlier = torch.ones(2**27)  # 512 MB touched, then freed: the process's own earlier peak
del earlier
with PeakMemory(torch.device("cpu")) as peak:
    x = torch.ones(2**24)  # 64 MB touched
print(peak.mb)
"""
    parent = torch.ones(3 * 2**26)  # 768 MB touched, held while the worker is forked
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    del parent
    mb = float(proc.stdout.split()[-1])
    harness = _module("_harness")
    if not harness.reset_peak_rss():  # without the reset the worker's own earlier 512 MB counts
        assert 60 < mb < 600
    else:
        assert 60 < mb < 160


def test_timed_row_leaves_the_peak_blank_where_the_high_water_mark_cannot_be_reset(monkeypatch):
    harness = _module("_harness")
    row = harness.timed_row({"case": "x"}, lambda: torch.ones(2**20).sum(), CPU, repeats=1, warmup=0)
    assert isinstance(row["peak_mb"], float) == harness.reset_peak_rss()
    monkeypatch.setattr(harness, "reset_peak_rss", lambda: False)
    row = harness.timed_row({"case": "x"}, lambda: torch.ones(2**20).sum(), CPU, repeats=1, warmup=0)
    assert row["peak_mb"] == "" and row["median_ms"] > 0


def test_the_cpu_is_described_from_proc_cpuinfo(monkeypatch, tmp_path):
    harness = _module("_harness")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    real_path = harness.Path
    monkeypatch.setattr(harness, "Path", lambda p: tmp_path / "cpuinfo" if p == "/proc/cpuinfo" else real_path(p))
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: 32 * 2**20)
    assert harness.cpu_description() == "AMD EPYC, LLC 32 MiB"
    monkeypatch.setattr(harness, "Path", lambda p: tmp_path / "absent")
    monkeypatch.setattr(harness, "last_level_cache_bytes", lambda: None)
    assert harness.cpu_description() == "unknown CPU"


def test_the_last_level_cache_is_read_from_sysfs(monkeypatch, tmp_path):
    harness = _module("_harness")
    for index, size in (("index0", "48K"), ("index2", "2048K"), ("index3", "307200K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    real_path = harness.Path
    monkeypatch.setattr(harness, "Path", lambda p: tmp_path if "cpu0/cache" in str(p) else real_path(p))
    assert harness.last_level_cache_bytes() == 300 * 2**20
    monkeypatch.setattr(harness, "Path", lambda p: tmp_path / "absent")
    assert harness.last_level_cache_bytes() is None


@pytest.mark.slow
def test_profile_ssd_step_lists_the_top_ops_and_the_zeroing_costs(tmp_path, capsys):
    rows = _module("profile_ssd_step").main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--rows", "5",
                                             "--out", str(tmp_path)])
    ops = [r["op"] for r in rows]
    assert len(ops) == 7 and ops[-2].startswith("(zero a fresh") and ops[-1].startswith("(zero the same")
    shares = [r["share"] for r in rows[:5]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
    assert (tmp_path / "profile_ssd_step_tiny_cpu.csv").exists()
    assert "fused SS-D step" in capsys.readouterr().out
