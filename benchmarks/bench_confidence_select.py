"""confidence_select: the naive per-class loop (reference) against the fused kernel.

    python benchmarks/bench_confidence_select.py --preset cpu                      # this machine's CPU
    python benchmarks/bench_confidence_select.py --preset paper paper2k --device cuda

Modes: ``select`` is docs/semantics.md sections 1 and 4 alone; ``select+maps`` also produces the two label maps the
discriminator needs (feature size = 1/8 of the logits, and the discriminator's output size), with
``reference.mode_downsample`` for the naive loop and ``out_sizes`` for the fused op. Each (preset, provider,
mode) runs in its own interpreter so that its peak memory is its own. Reports median times, the speed-up over
the naive loop, and the effective bandwidth (logits read once, labels and confidence written once) against the
machine's memory bandwidth: the CUDA device's theoretical peak, or a measured copy bandwidth on the CPU.
Writes CSV (and a PNG plot when matplotlib is installed) to benchmarks/results/.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    PeakMemory, bandwidth_gbs, benchmark_parser, median_ms, parse_benchmark_args, plot_bars, print_table, run_worker,
    write_csv,
)

import ssfdan_ext  # noqa: E402
from ssfdan_ext import reference  # noqa: E402
from ssfdan_ext.geometry import output_size  # noqa: E402

PROVIDERS = ("naive", "fused")
MODES = ("select", "select+maps")


@dataclass(frozen=True)
class Preset:
    batch: int
    num_classes: int
    size: tuple[int, int]  # (H, W) of the logits
    rho: float = 0.5


PRESETS = {
    "tiny": Preset(1, 19, (64, 128)),
    "cpu": Preset(1, 19, (256, 512)),
    "paper": Preset(1, 19, (512, 1024)),  # GTA5 -> Cityscapes crops, 1024 x 512
    "paper2k": Preset(1, 19, (1024, 2048)),  # full-resolution Cityscapes, 2048 x 1024
}


def map_sizes(preset: Preset) -> tuple[tuple[int, int], tuple[int, int]]:
    """The discriminator's feature size (output stride 8, as DeepLab-v2: (H - 1) // 8 + 1) and output size."""
    H, W = preset.size
    h, w = (H - 1) // 8 + 1, (W - 1) // 8 + 1
    return (h, w), output_size(h, w, (1, 2, 2, 2, 2))


def make_logits(preset: Preset, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Smooth class scores (blocks of 8x8 pixels, upsampled) like a segmenter's, so classes form regions."""
    gen = torch.Generator().manual_seed(seed)
    H, W = preset.size
    coarse = 4 * torch.randn(preset.batch, preset.num_classes, (H + 7) // 8, (W + 7) // 8, generator=gen)
    logits = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    return logits.to(device).contiguous()


def runner(provider: str, mode: str, preset: Preset, logits: torch.Tensor):
    sizes = map_sizes(preset) if mode == "select+maps" else ()
    C = preset.num_classes
    if provider == "naive":
        def run():
            sel = reference.confidence_select(logits, preset.rho)
            return sel, [reference.mode_downsample(sel.labels, size, C) for size in sizes]
    else:
        def run():
            return ssfdan_ext.confidence_select(logits, preset.rho, out_sizes=sizes)
    return run


def measure(provider: str, mode: str, preset_name: str, device: torch.device, repeats: int, warmup: int) -> dict:
    preset = PRESETS[preset_name]
    logits = make_logits(preset, device)
    run = runner(provider, mode, preset, logits)
    with PeakMemory(device) as peak:
        ms = median_ms(run, device, repeats, warmup)
    B, C, (H, W) = preset.batch, preset.num_classes, preset.size
    moved = B * C * H * W * logits.element_size() + B * H * W * (8 + 4)  # logits in; labels, confidence out
    return {"preset": preset_name, "device": device.type, "provider": provider, "mode": mode,
            "shape": f"{B}x{C}x{H}x{W}", "median_ms": round(ms, 3), "peak_mb": round(peak.mb, 1),
            "effective_gbs": round(moved / (ms * 1e-3) / 1e9, 2), "repeats": repeats, "warmup": warmup,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = benchmark_parser(__doc__, PROVIDERS, MODES, repeats=9)
    parser.add_argument("--preset", nargs="+", choices=sorted(PRESETS), default=["cpu"])
    args, device = parse_benchmark_args(parser, argv)
    if args.worker:
        row = measure(args.providers[0], args.modes[0], args.preset[0], device, args.repeats, args.warmup)
        print(json.dumps(row))
        return [row]

    peak_gbs, source = bandwidth_gbs(device)
    print(f"confidence_select benchmark, presets {args.preset}, device {device}, median of {args.repeats} "
          f"(after {args.warmup} warm-up), torch threads {torch.get_num_threads()}; memory bandwidth "
          f"{peak_gbs:.1f} GB/s ({source})", flush=True)
    rows = []
    for preset in args.preset:
        common = ["--preset", preset, "--device", args.device, "--repeats", str(args.repeats), "--warmup",
                  str(args.warmup), "--threads", str(args.threads)]
        for mode in args.modes:
            for provider in args.providers:
                row = run_worker(Path(__file__), [*common, "--providers", provider, "--modes", mode])
                row["case"] = f"{preset} {mode}"
                print(f"  {preset:>8} {mode:>12} {provider:>6}: {row['median_ms']:10.3f} ms, "
                      f"{row['effective_gbs']:8.2f} GB/s, peak {row['peak_mb']:8.1f} MB", flush=True)
                rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["case"] == row["case"] and r["provider"] == "naive"), None)
        row["speedup_vs_naive"] = round(base["median_ms"] / row["median_ms"], 2) if base else ""
        row["bandwidth_gbs"] = round(peak_gbs, 1)
        row["bandwidth_source"] = source
        row["bandwidth_fraction"] = round(row["effective_gbs"] / peak_gbs, 4)
    print()
    print_table(rows, ["preset", "mode", "provider", "median_ms", "speedup_vs_naive", "effective_gbs",
                       "bandwidth_fraction", "peak_mb"])
    stem = f"bench_confidence_select_{'_'.join(args.preset)}_{device.type}"
    stem += f"_t{args.threads}" if args.threads else ""
    write_csv(rows, args.out / f"{stem}.csv")
    plotted = plot_bars(rows, args.out / f"{stem}.png", f"confidence_select ({device.type})", group="case",
                        series="provider", value="median_ms")
    print(f"\nwrote {args.out / (stem + '.csv')}" + (f" and {stem}.png" if plotted else " (no matplotlib: no plot)"))
    return rows


if __name__ == "__main__":
    main()
