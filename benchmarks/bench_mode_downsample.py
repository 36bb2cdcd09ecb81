"""mode_downsample: the naive per-class loop (reference) against the compiled kernel.

    python benchmarks/bench_mode_downsample.py --preset cpu                      # this machine's CPU
    python benchmarks/bench_mode_downsample.py --preset paper --device cuda

Street label maps (``ssfdan_ext.testing.street_labels``) downsampled to the discriminator's feature size (and, in
the ``paper`` preset, also to its output size: one case per output size). Before timing, each worker checks that
its provider's map equals the reference's on the benchmark input (and fails otherwise). Each (case, provider)
runs in its own interpreter so that its peak memory is its own. Reports median times, the speed-up over the naive
loop, and the effective bandwidth (labels read once, the output written once) against a measured copy bandwidth
of the device. Writes CSV (and a PNG plot when matplotlib is installed) to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    add_speedup, answer_worker, bandwidth_gbs, check_against_reference, checked_row, op_parser, parse_benchmark_args,
    report, results_stem, run_cases, run_header,
)

import ssfdan_ext  # noqa: E402
from ssfdan_ext import reference  # noqa: E402
from ssfdan_ext.testing import street_labels  # noqa: E402

PROVIDERS = ("reference", "kernel")
MODES = ("fwd",)


@dataclass(frozen=True)
class Preset:
    batch: int
    num_classes: int
    size: tuple[int, int]  # (H, W) of the labels
    out_sizes: tuple[tuple[int, int], ...]  # one case per output size


PRESETS = {
    "tiny": Preset(1, 19, (64, 128), ((8, 16),)),
    "cpu": Preset(1, 19, (512, 1024), ((65, 129),)),  # 512x1024 crops to the DeepLab-v2 feature size
    "paper": Preset(1, 19, (512, 1024), ((65, 129), (5, 9))),  # feature size and SS-D output size, for a GPU
}


def make_labels(preset: Preset, device: torch.device, seed: int = 0) -> torch.Tensor:
    return street_labels(preset.batch, *preset.size, num_classes=preset.num_classes, seed=seed).to(device)


def runner(provider: str, preset: Preset, labels: torch.Tensor, size: tuple[int, int]):
    op = reference.mode_downsample if provider == "reference" else ssfdan_ext.mode_downsample
    return lambda: op(labels, size, preset.num_classes)


def measure(provider: str, mode: str, preset_name: str, size_index: int, device: torch.device, repeats: int,
            warmup: int) -> dict:
    preset = PRESETS[preset_name]
    size = preset.out_sizes[size_index]
    labels = make_labels(preset, device)
    run = runner(provider, preset, labels, size)
    expected = {"labels": runner("reference", preset, labels, size)()}
    err = check_against_reference(provider, {"labels": run()}, expected, device)  # before timing; raises
    maps = {"labels": "x".join(map(str, labels.shape)), "out_size": "x".join(map(str, size))}
    row = checked_row(provider, mode, preset_name, device, err, maps, run, repeats, warmup)
    moved = (labels.numel() + labels.shape[0] * size[0] * size[1]) * labels.element_size()  # labels in, map out
    row["effective_gbs"] = round(moved / (row["median_ms"] * 1e-3) / 1e9, 3)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = op_parser(__doc__, PROVIDERS, MODES, repeats=9, presets=PRESETS)
    parser.add_argument("--size-index", type=int, default=0, help=argparse.SUPPRESS)  # a worker's output size
    args, device = parse_benchmark_args(parser, argv)
    if args.worker:
        return answer_worker(args, device, measure, args.size_index)

    peak_gbs, source = bandwidth_gbs(device)
    print(f"{run_header('mode_downsample benchmark', args, device)}; memory bandwidth {peak_gbs:.1f} GB/s "
          f"({source})", flush=True)
    cases = [(f"{name} {h}x{w}", ["--preset", name, "--size-index", str(i)])
             for name in args.preset for i, (h, w) in enumerate(PRESETS[name].out_sizes)]
    rows = run_cases(Path(__file__), args, cases, lambda r: f", {r['effective_gbs']:8.3f} GB/s")
    speedup = add_speedup(rows, "reference")
    for row in rows:
        row["bandwidth_gbs"] = round(peak_gbs, 1)
        row["bandwidth_source"] = source
        row["bandwidth_fraction"] = round(row["effective_gbs"] / peak_gbs, 4)
    stem = results_stem("mode_downsample", args, device)
    report(rows, ["preset", "labels", "out_size", "provider", "median_ms", speedup, "effective_gbs",
                  "bandwidth_fraction", "peak_mb"], args.out, stem, f"mode_downsample ({device.type})")
    return rows


if __name__ == "__main__":
    main()
