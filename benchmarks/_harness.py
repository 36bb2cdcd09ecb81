"""Timing, memory and reporting helpers shared by the benchmark scripts (never asserts a speed)."""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak on a GPU, process peak RSS on the CPU.

    The CPU figure is only meaningful in a fresh process that has not yet peaked (run one case per process).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mb = 0.0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._base = current_rss_mb()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base
        else:
            self.mb = max(0.0, peak_rss_mb() - self._base)


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
