"""Timing, memory and reporting helpers shared by the benchmark scripts (never asserts a speed)."""
from __future__ import annotations

import argparse
import csv
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def benchmark_parser(doc: str | None, providers: Sequence[str], modes: Sequence[str],
                     repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark script shares; the script adds its own (presets, layouts) before parsing."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--providers", nargs="+", choices=providers, default=list(providers))
    parser.add_argument("--modes", nargs="+", choices=modes, default=list(modes))
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def parse_benchmark_args(parser: argparse.ArgumentParser,
                         argv: list[str] | None) -> tuple[argparse.Namespace, torch.device]:
    """Parse, apply --threads, and return the arguments with the device."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, torch.device(args.device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int,
              setup: Callable[[], object] | None = None) -> float:
    """Median wall time of ``fn(setup())`` (or ``fn()``) in milliseconds; ``setup`` is not timed."""
    times = []
    for i in range(warmup + repeats):
        arg = setup() if setup is not None else None
        synchronize(device)
        start = time.perf_counter()
        fn(arg) if setup is not None else fn()
        synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
        arg = None  # release this repeat's inputs (e.g. an autograd graph) before the next setup runs
    return statistics.median(times)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Peak memory above the level at entry: the CUDA allocator's peak on a GPU; on the CPU this process's own
    high-water RSS (VmHWM), lowered to the current RSS at entry (:func:`reset_peak_rss`).

    Neither the parent's RSS at the time a worker was forked (which ``ru_maxrss`` inherits: a benchmark's parent
    holding a paper-width discriminator and the bandwidth probe's buffers raised the figure of every worker to the
    parent's level) nor earlier work in the same process counts. Where the kernel does not allow the reset
    (``reset`` is then False), the high-water mark is the process's own since it started: run one case per process.
    Blocks do not nest on the CPU: an inner block's reset lowers the outer block's mark.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb = 0.0
        self.reset = True

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.reset = reset_peak_rss()
            self._base = current_rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
        else:
            self.mb = max(0.0, own_peak_rss_mb() - self._base)


def run_worker(script: Path, args: Sequence[str]) -> dict:
    """Run ``script --worker ARGS`` in a fresh interpreter and parse the JSON line it prints last."""
    proc = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_csv(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def print_table(rows: Sequence[dict], columns: Sequence[str]) -> None:
    text = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for t in text:
        print("  ".join(v.rjust(w) for v, w in zip(t, widths)))


def plot_bars(rows: Sequence[dict], path: Path, title: str, group: str, series: str, value: str) -> bool:
    """A grouped bar chart (one group per ``group`` value, one bar per ``series`` value); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(groups), 3.6))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        values = [next((float(r[value]) for r in rows if r[group] == g and r[series] == name), 0.0) for g in groups]
        ax.bar([g + i * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(value)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- Shared by the per-op benchmarks (bench_mode_downsample.py, bench_routed_conv1x1.py, bench_sparse_conv3x3.py,
# bench_sparse_ssd_rulebook.py): the worker's row, the case loop, the reference check and the report.


@dataclass(frozen=True)
class LayerPreset:
    """The shapes of one SS-D layer's benchmark: C classes, the per-class input and output widths (layer 1: the
    feature width n and m), the feature size and the label size the feature-resolution labels come from."""

    num_classes: int
    in_channels: int
    out_channels: int
    feature_size: tuple[int, int]
    label_size: tuple[int, int]
    batch: int = 1


def op_parser(doc: str | None, providers: Sequence[str], modes: Sequence[str], repeats: int,
              presets: Sequence[str]) -> argparse.ArgumentParser:
    """:func:`benchmark_parser` with ``--preset`` (one or more of ``presets``, default ``cpu``)."""
    parser = benchmark_parser(doc, providers, modes, repeats)
    parser.add_argument("--preset", nargs="+", choices=sorted(presets), default=["cpu"])
    return parser


def run_header(title: str, args: argparse.Namespace, device: torch.device) -> str:
    """The first line a benchmark prints: what runs where, and how it is timed."""
    return (f"{title}, presets {args.preset}, device {device}, median of {args.repeats} (after {args.warmup} "
            f"warm-up), torch threads {torch.get_num_threads()}")


def add_flop_rate(row: dict, fwd_gflop: float, dense_fwd_gflop: float) -> dict:
    """Add the GFLOPs the row's provider executes (``fwd_gflop``, x3 in a mode with a backward: its two products),
    the dense forward's and the GFLOP/s reached on the executed ones."""
    done = fwd_gflop * (1 if row["mode"] == "fwd" else 3)
    row.update(executed_gflop=round(done, 4), dense_fwd_gflop=round(dense_fwd_gflop, 4),
               gflops=round(done / (row["median_ms"] * 1e-3), 2))
    return row


def checked_row(provider: str, mode: str, preset: str, device: torch.device, err: float, fields: dict,
                fn: Callable[[], object], repeats: int, warmup: int) -> dict:
    """:func:`timed_row` of a provider that has passed its check against the reference (``err``: the largest
    difference :func:`check_against_reference` found), with the case's own ``fields``."""
    head = {"preset": preset, "device": device.type, "provider": provider, "mode": mode, **fields,
            "matches_reference": True, "max_err": err}
    return timed_row(head, fn, device, repeats, warmup)


def run_layer_benchmark(script: Path, args: argparse.Namespace, device: torch.device, op: str, title: str,
                        dense: str, presets: dict[str, LayerPreset],
                        flops: Callable[[LayerPreset], tuple[str, float, float]],
                        columns: Sequence[str] = ()) -> list[dict]:
    """The driver of the one-layer benchmarks: a sparse op against its reference and the ``dense`` provider, rows
    with :func:`add_flop_rate`. ``flops(preset)``: (what the executed FLOPs count, executed and dense forward
    GFLOPs), printed for each preset first."""
    print(run_header(title, args, device), flush=True)
    for name in args.preset:
        what, executed, dense_gflop = flops(presets[name])
        print(f"  {name} {asdict(presets[name])}: {what}; forward FLOPs executed {executed:.3f} GFLOP, dense "
              f"{dense_gflop:.3f} GFLOP ({dense_gflop / max(executed, 1e-12):.1f}x more)", flush=True)
    rows = run_cases(script, args, [(name, ["--preset", name]) for name in args.preset],
                     lambda r: f", {r['gflops']:8.2f} GFLOP/s")
    speedups = [add_speedup(rows, base) for base in ("reference", dense)]
    report(rows, ["preset", "mode", "provider", *columns, "median_ms", *speedups, "executed_gflop", "gflops",
                  "peak_mb"], args.out, results_stem(op, args, device), f"{title} ({device.type})")
    return rows


def answer_worker(args: argparse.Namespace, device: torch.device, measure: Callable[..., dict],
                  *options: object) -> list[dict]:
    """A worker's whole job: ``measure(provider, mode, preset, *options, device, repeats, warmup)`` for its one case,
    printed as the JSON line :func:`run_worker` reads back, and returned as its rows."""
    row = measure(args.providers[0], args.modes[0], args.preset[0], *options, device, args.repeats, args.warmup)
    print(json.dumps(row))
    return [row]


def reset_peak_rss() -> bool:
    """Lower this process's high-water RSS (VmHWM) to its current RSS (Linux: ``/proc/self/clear_refs``); False where
    the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def own_peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM). Unlike ``ru_maxrss`` it is not raised by the RSS of the parent a worker
    was forked from, and :func:`reset_peak_rss` lowers it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def timed_row(fields: dict, fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> dict:
    """``fields`` followed by the median time and peak memory of ``fn`` and the settings they were taken with.

    The peak is taken above the memory in use before the first call (:class:`PeakMemory`), so that work done before
    in the same process (the check against the reference) and the parent's peak do not count; blank on a CPU whose
    kernel does not allow the high-water mark's reset, where that work would count.
    """
    with PeakMemory(device) as memory:
        ms = median_ms(fn, device, repeats, warmup)
    peak = round(memory.mb, 1) if memory.reset else ""
    return {**fields, "median_ms": round(ms, 3), "peak_mb": peak, "repeats": repeats, "warmup": warmup,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_cases(script: Path, args: argparse.Namespace, cases: Sequence[tuple[str, Sequence[str]]],
              describe: Callable[[dict], str]) -> list[dict]:
    """Every (case, mode, provider) in its own interpreter (``script --worker``), so that its peak memory is its own.

    ``cases``: (label, the worker arguments that name the case: its preset and the script's own options). Each row
    gets ``case`` = "<label> <mode>", the group its speed-ups and plot bars are taken in. After each worker a progress
    line prints its median time and peak memory, followed by ``describe(row)``.
    """
    shared = ["--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads",
              str(args.threads)]
    width = max(len(label) for label, _ in cases)
    rows = []
    for (label, case_args), mode, provider in itertools.product(cases, args.modes, args.providers):
        row = run_worker(script, [*case_args, *shared, "--providers", provider, "--modes", mode])
        row["case"] = f"{label} {mode}"
        print(f"  {label:>{width}} {mode:>7} {provider:>9}: {row['median_ms']:10.3f} ms, peak {row['peak_mb']:>7} MB"
              f"{describe(row)}", flush=True)
        rows.append(row)
    return rows


def add_speedup(rows: Sequence[dict], base: str) -> str:
    """Add ``speedup_vs_<base>`` to every row: the median time of ``base``'s row of the same case over the row's
    ('' where the case has no such row); returns the column's name."""
    column = f"speedup_vs_{base}"
    for row in rows:
        ref = next((r for r in rows if r["case"] == row["case"] and r["provider"] == base), None)
        row[column] = round(ref["median_ms"] / row["median_ms"], 2) if ref else ""
    return column


def results_stem(op: str, args: argparse.Namespace, device: torch.device) -> str:
    """``bench_<op>_<presets>_<device>``, and ``_t<threads>`` where --threads was given (as bench_confidence_select)."""
    stem = f"bench_{op}_{'_'.join(args.preset)}_{device.type}"
    return stem + (f"_t{args.threads}" if args.threads else "")


def report(rows: Sequence[dict], columns: Sequence[str], out: Path, stem: str, title: str) -> None:
    """Print the table of ``columns``, write every column to ``out/<stem>.csv`` and plot the median times per case."""
    print()
    print_table(rows, columns)
    write_csv(rows, out / f"{stem}.csv")
    plotted = plot_bars(rows, out / f"{stem}.png", title, group="case", series="provider", value="median_ms")
    print(f"\nwrote {out / (stem + '.csv')}" + (f" and {stem}.png" if plotted else " (no matplotlib: no plot)"))


def reference_tolerance(device: torch.device) -> tuple[float, float]:
    """(rtol, atol as a fraction of the reference's largest magnitude) for float32 results: the 1e-4 and 1e-5 of
    docs/semantics.md, or 5e-3 and 2e-3 on a GPU where TF32 convolutions or matmuls are allowed (10-bit mantissas,
    PyTorch's cuDNN default), so that a provider is checked under the settings it is timed with."""
    tf32 = device.type == "cuda" and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    return (5e-3, 2e-3) if tf32 else (1e-4, 1e-5)


def check_against_reference(provider: str, actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                            device: torch.device) -> float:
    """Raise RuntimeError unless each of ``expected`` (name -> the reference's tensor) is matched by ``actual``:
    integer tensors exactly, floating ones within :func:`reference_tolerance`. Returns the largest floating
    difference relative to the reference's largest magnitude (0.0 where everything is exact)."""
    rtol, atol = reference_tolerance(device)
    worst = 0.0
    for name, want in expected.items():
        got, want = actual[name].detach(), want.detach()
        if got.shape != want.shape:
            raise RuntimeError(f"{provider}: {name} has shape {tuple(got.shape)}, the reference {tuple(want.shape)}")
        if not want.is_floating_point():
            if not torch.equal(got, want):
                raise RuntimeError(f"{provider}: {name} differs from the reference in {int((got != want).sum())} "
                                   f"of {want.numel()} entries")
            continue
        if not want.numel():
            continue
        scale = max(float(want.abs().max()), 1.0)
        err = float((got.to(want.dtype) - want).abs().max()) / scale
        if not torch.allclose(got.to(want.dtype), want, rtol=rtol, atol=atol * scale):
            raise RuntimeError(f"{provider}: {name} differs from the reference by up to {err:.3g} of its largest "
                               f"magnitude (rtol {rtol}, atol {atol} x {scale:.3g})")
        worst = max(worst, err)
    return worst


def with_gradients(out: torch.Tensor, inputs: dict[str, torch.Tensor], mode: str, seed: int = 1) -> dict:
    """``{"output": out}``, and in a mode with a backward ("fwd+bwd") also the gradient of ``sum(out * U)`` w.r.t.
    each of ``inputs`` (as "grad <name>"), U random from ``seed`` and out's shape: the same for every provider
    whose ``out`` is in the reference's layout."""
    values = {"output": out}
    if mode != "fwd":
        gen = torch.Generator().manual_seed(seed)
        upstream = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
        grads = torch.autograd.grad(out, list(inputs.values()), upstream)
        values.update((f"grad {name}", grad) for name, grad in zip(inputs, grads))
    return values


def timed_step(forward: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor],
               mode: str) -> Callable[[], object]:
    """What a mode times: ``forward`` ("fwd"), or forward and backward ("fwd+bwd"), the gradients of ``inputs``
    for a fixed upstream gradient (drawn once, untimed) returned rather than accumulated into ``.grad``."""
    if mode == "fwd":
        return forward
    upstream = torch.randn_like(forward().detach())
    return lambda: torch.autograd.grad(forward(), inputs, upstream)


def benchmark_case(benchmark, build: Callable[[torch.device], Callable[[], object]], rounds: int = 5) -> None:
    """Time ``build(device)()`` (synchronised on a GPU) with pytest-benchmark's fixture on the GPU where there is
    one, else the CPU: the body of the test_bench_*.py companions."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fn = build(device)

    def timed() -> None:
        fn()
        synchronize(device)

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1)


def bandwidth_gbs(device: torch.device) -> tuple[float, str]:
    """The memory bandwidth the effective figure is compared with: a measured copy (read + write) on the device,
    which is what a memory-bound kernel can reach, rather than the datasheet peak it cannot."""
    size = copy_bytes(device)
    x = torch.empty(size // 4, device=device)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), device, repeats=9, warmup=2)
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9, f"measured copy (read + write) of {size // 2**20} MiB"


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache of cpu0 (Linux sysfs), None where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMmGg")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def cpu_description() -> str:
    """The CPU model (Linux /proc/cpuinfo) and its last-level cache, e.g. "AMD EPYC, LLC 32 MiB"; the machine a
    shared CI pool lends changes between runs, and the committed results say which one they come from."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    llc = last_level_cache_bytes()
    return model + (f", LLC {llc // 2**20} MiB" if llc else "")


def copy_bytes(device: torch.device) -> int:
    """Each buffer of the bandwidth copy: beyond the caches, so the copy measures memory rather than cache. 1 GiB on
    a GPU (an H200's L2 alone holds 50 MB); on the CPU four times the last-level cache, from 64 MiB to 1 GiB
    (server CPUs' last-level caches reach hundreds of MB; 1 GiB where the size cannot be read)."""
    if device.type == "cuda":
        return 2**30
    llc = last_level_cache_bytes()
    return 2**30 if llc is None else min(max(4 * llc, 64 * 2**20), 2**30)


def gemm_gflops(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The measured rate of one large matrix product (2048^3) on the device: the compute roof of a roofline."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, device, repeats=5, warmup=1)
    return 2 * 2048**3 / (ms * 1e-3) / 1e9
