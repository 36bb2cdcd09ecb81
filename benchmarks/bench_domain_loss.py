"""The discriminator's step three ways: both domains' graphs alive for one ``discriminator_loss`` backward
("joint"), AdaptSegNet's order, each domain's forward followed at once by its ``domain_loss`` backward ("halves"),
or both domains in one forward, ``discriminator_loss(*disc.forward_domains(...))`` ("paired").

    python benchmarks/bench_domain_loss.py                         # paper widths, 128x256 crops, this CPU
    python benchmarks/bench_domain_loss.py --preset paper --device cuda
    python benchmarks/bench_domain_loss.py --preset paper-two-sizes --device cuda  # the paper's two crop sizes

All three give the same gradients (tests/test_losses.py, tests/test_ssd.py); this measures their time and peak
memory, each with the two ways a loop clears gradients: ``--grads none`` (``zero_grad()``, PyTorch's default
set_to_none=True: a backward hands its gradient to the parameter) and ``kept`` (``zero_grad(set_to_none=False)``:
the gradient buffers persist and every backward adds into them). Each (provider, mode, grads) runs in its own
interpreter so that its peak memory is its own; the peak is taken above the level after the discriminator, its
inputs and (kept) its gradient buffers exist, so it covers the autograd graphs and the parameter gradients.
Writes CSV and a PNG plot to benchmarks/results/.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    PeakMemory, benchmark_parser, median_ms, parse_benchmark_args, plot_bars, print_table, run_worker, write_csv,
)

from ssfdan_ext import SeparatedDiscriminator, discriminator_loss, domain_loss  # noqa: E402
from ssfdan_ext.testing import street_labels  # noqa: E402

PROVIDERS = ("fused", "grouped", "reference")
MODES = ("joint", "halves", "paired")
GRADS = ("none", "kept")


@dataclass(frozen=True)
class Preset:
    feature_size: tuple[int, int]
    label_size: tuple[int, int]
    num_classes: int = 19
    in_channels: int = 2048
    channels: tuple[int, int, int, int] = (1024, 512, 256, 128)
    # the target's (feature_size, label_size) where it differs from the source's
    target: tuple[tuple[int, int], tuple[int, int]] | None = None


PRESETS = {
    "tiny": Preset((8, 16), (64, 128), in_channels=32, channels=(16, 16, 8, 8)),
    # the paper's widths on 128x256 crops (DeepLab-v2 features 17x33), the size a CPU can run
    "paperwidth": Preset((17, 33), (136, 264)),
    # the paper's widths and crop (512x1024 target: features 65x129), for a GPU
    "paper": Preset((65, 129), (512, 1024)),
    # a source crop larger than the target's, as in the paper (720x1280 against 512x1024): 136x264 against 104x200
    "paperwidth-two-sizes": Preset((17, 33), (136, 264), target=((13, 25), (104, 200))),
    # the paper's crops: source 720x1280 (features 91x161), target 512x1024 (65x129), for a GPU
    "paper-two-sizes": Preset((91, 161), (720, 1280), target=((65, 129), (512, 1024))),
}


def make_case(preset: Preset, device: torch.device):
    torch.manual_seed(0)
    disc = SeparatedDiscriminator(preset.num_classes, preset.in_channels, preset.channels).to(device)
    sizes = [(preset.feature_size, preset.label_size), preset.target or (preset.feature_size, preset.label_size)]
    feats = [torch.randn(1, preset.in_channels, *feature_size, device=device) for feature_size, _ in sizes]
    labels = [street_labels(1, *label_size, num_classes=preset.num_classes, seed=s).to(device)
              for s, (_, label_size) in zip((1, 2), sizes)]
    tau = torch.rand(1, preset.num_classes, device=device) + 0.5
    return disc, feats, labels, tau


def step(disc, feats, labels, tau, mode: str, grads: str):
    def run():
        disc.zero_grad(set_to_none=grads == "none")
        if mode == "joint":
            discriminator_loss(disc(feats[0], labels[0]), disc(feats[1], labels[1]), tau).backward()
        elif mode == "paired":
            discriminator_loss(*disc.forward_domains(feats[0], labels[0], feats[1], labels[1]), tau).backward()
        else:
            domain_loss(disc(feats[0], labels[0]), 0, tau).backward()
            domain_loss(disc(feats[1], labels[1]), 1, tau).backward()
    return run


def measure(provider: str, mode: str, grads: str, preset_name: str, device: torch.device, repeats: int,
            warmup: int) -> dict:
    disc, feats, labels, tau = make_case(PRESETS[preset_name], device)
    disc.backend = provider
    if grads == "kept":  # the gradient buffers exist before the measurement, as in a training that keeps them
        for p in disc.parameters():
            p.grad = torch.zeros_like(p)
    fn = step(disc, feats, labels, tau, mode, grads)
    with PeakMemory(device) as peak:
        ms = median_ms(fn, device, repeats, warmup)
    return {"preset": preset_name, "device": device.type, "provider": provider, "mode": mode, "grads": grads,
            "median_ms": round(ms, 2), "peak_mb": round(peak.mb, 1), "repeats": repeats,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = benchmark_parser(__doc__, PROVIDERS, MODES, repeats=5)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paperwidth")
    parser.add_argument("--grads", nargs="+", choices=GRADS, default=list(GRADS),
                        help="none: zero_grad() (set_to_none=True, PyTorch's default); kept: set_to_none=False")
    parser.set_defaults(providers=["fused", "grouped"])
    args, device = parse_benchmark_args(parser, argv)
    if args.worker:
        row = measure(args.providers[0], args.modes[0], args.grads[0], args.preset, device, args.repeats,
                      args.warmup)
        print(json.dumps(row))
        return [row]
    preset = PRESETS[args.preset]
    print(f"discriminator step, joint vs halves vs paired: preset {args.preset} {asdict(preset)}, device {device}, median of "
          f"{args.repeats} (after {args.warmup} warm-up)", flush=True)
    rows = []
    common = ["--preset", args.preset, "--device", args.device, "--repeats", str(args.repeats), "--warmup",
              str(args.warmup), "--threads", str(args.threads)]
    for grads in args.grads:
        for provider in args.providers:
            for mode in args.modes:
                row = run_worker(Path(__file__),
                                 [*common, "--providers", provider, "--modes", mode, "--grads", grads])
                print(f"  {provider:>9} {mode:>6} grads {grads:>4}: {row['median_ms']:9.1f} ms, peak "
                      f"{row['peak_mb']:8.1f} MB", flush=True)
                row["case"] = f"{provider}, grads {grads}"
                rows.append(row)
    for row in rows:
        joint = next((r for r in rows if r["case"] == row["case"] and r["mode"] == "joint"), None)
        row["peak_vs_joint"] = round(row["peak_mb"] / joint["peak_mb"], 3) if joint and joint["peak_mb"] else ""
        row["time_vs_joint"] = round(row["median_ms"] / joint["median_ms"], 3) if joint else ""
    print()
    print_table(rows, ["provider", "grads", "mode", "median_ms", "peak_mb", "peak_vs_joint", "time_vs_joint"])
    stem = f"bench_domain_loss_{args.preset}_{device.type}"
    write_csv(rows, args.out / f"{stem}.csv")
    plotted = plot_bars(rows, args.out / f"{stem}.png", f"discriminator step memory ({args.preset}, {device.type})",
                        group="case", series="mode", value="peak_mb")
    print(f"\nwrote {args.out / (stem + '.csv')}" + (f" and {stem}.png" if plotted else ""))
    return rows


if __name__ == "__main__":
    main()
