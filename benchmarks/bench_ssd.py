"""SS-D forward/backward: the per-class loop ("reference") against the other backends.

    python benchmarks/bench_ssd.py --preset cpu            # this machine's CPU
    python benchmarks/bench_ssd.py --preset paper --device cuda

    python benchmarks/bench_ssd.py --preset cpu --layout checkerboard   # the worst case for the fused backend

Modes: ``fwd``, ``bwd`` (the forward untimed) and ``full`` time the whole discriminator; ``plan`` is ``full`` with
the label-dependent part (downsampled maps, the fused backend's rulebook) built once beforehand and reused, as
the training driver does for the two passes over the target labels; ``l1`` times semantic
separation + layer 1 alone (forward and backward), each provider in its own output layout: the C dense class
maps (reference, grouped) or the routed rows of the class cells (fused). Every repeat with a backward starts
from gradients set to None (untimed), as after a training loop's ``zero_grad(set_to_none=True)``.

Each (provider, mode) runs in its own interpreter so that its peak memory is its own. Prints the forward FLOPs of
the dense backends and those the fused backend executes (from its rulebook), a table of median times with the
speed-ups over the reference and the grouped backend, and writes CSV (and a PNG plot when matplotlib is
installed) to benchmarks/results/.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    PeakMemory, bandwidth_gbs, benchmark_parser, cpu_description, gemm_gflops, median_ms, parse_benchmark_args,
    plot_bars, print_table, run_worker, write_csv,
)

import torch.nn.functional as F  # noqa: E402

from ssfdan_ext import SeparatedDiscriminator, mode_downsample  # noqa: E402
from ssfdan_ext.geometry import layer_sizes  # noqa: E402
from ssfdan_ext.ops import routed_conv1x1  # noqa: E402
from ssfdan_ext.ops import sparse_ssd_rulebook  # noqa: E402
from ssfdan_ext.ops.sparse_ssd import classes_with_constants, executed_flops  # noqa: E402
from ssfdan_ext.testing import checkerboard_labels, street_labels  # noqa: E402
from _loop import LoopDiscriminator  # noqa: E402

PROVIDERS = ("loop", "reference", "grouped", "fused")
DENSE = ("loop", "reference", "grouped")  # every ratio is taken against the fastest of these
MODES = ("fwd", "bwd", "full", "plan", "l1")


@dataclass(frozen=True)
class Preset:
    num_classes: int
    in_channels: int
    channels: tuple[int, int, int, int]
    feature_size: tuple[int, int]
    label_size: tuple[int, int]
    batch: int = 1


PRESETS = {
    # small enough for pytest-benchmark and the interpreter-free CI
    "tiny": Preset(19, 32, (16, 16, 8, 8), (16, 32), (128, 256)),
    # this 2-core CPU
    "cpu": Preset(19, 256, (128, 64, 32, 16), (64, 128), (512, 1024)),
    # the paper's DeepLab-v2 ResNet-101 on 512x1024 crops: features 65x129
    "paper": Preset(19, 2048, (1024, 512, 256, 128), (65, 129), (512, 1024)),
    # the paper's widths (157.6 M parameters) on 128x256 crops, as an AdaptSegNet-style loop on a CPU runs them
    "paperwidth": Preset(19, 2048, (1024, 512, 256, 128), (17, 33), (136, 264)),
}


# Precisions: "fp32" keeps PyTorch's default TF32 settings (cuDNN convolutions in TF32 on Ampere and newer, the
# fused backend's Triton dots following the same flag), "fp32-ieee" turns TF32 off everywhere, "bf16" stores
# weights and features in bfloat16.
PRECISIONS = ("fp32", "fp32-ieee", "bf16")


def apply_precision(precision: str) -> torch.dtype:
    """Set the TF32 flags for ``precision`` and return the dtype of weights and features."""
    if precision == "fp32-ieee":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch.bfloat16 if precision == "bf16" else torch.float32


def make_case(preset: Preset, layout: str, device: torch.device, seed: int = 0, dtype: torch.dtype = torch.float32):
    """(discriminator, features, labels) for a preset; the same weights and inputs for every provider."""
    torch.manual_seed(seed)
    disc = SeparatedDiscriminator(preset.num_classes, preset.in_channels, preset.channels).to(device, dtype)
    h, w = preset.feature_size
    features = torch.randn(preset.batch, preset.in_channels, h, w, device=device, dtype=dtype)
    make = street_labels if layout == "street" else checkerboard_labels
    labels = make(preset.batch, *preset.label_size, num_classes=preset.num_classes).to(device)
    return disc, features, labels


def forward_gflop(disc: SeparatedDiscriminator, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Forward GFLOPs (2 per multiply-add) of the dense backends and of the fused backend's explicit and constant
    pairs."""
    C, (h, w) = disc.num_classes, features.shape[-2:]
    widths = (disc.in_channels, *disc.channels, 1)
    sizes = layer_sizes(h, w, disc.strides)
    B = features.shape[0]
    dense = 2 * C * B * h * w * widths[0] * widths[1]
    dense += sum(2 * C * B * a * b * 9 * widths[l] * widths[l + 1] for l, (a, b) in enumerate(sizes[1:], start=1))
    lf = mode_downsample(labels, (h, w), C)
    lo = mode_downsample(labels, disc.output_size(h, w), C)
    present = int(classes_with_constants(lo, C).numel())  # one constant pair per layer for each of these classes
    fused = executed_flops(sparse_ssd_rulebook(lf, lo, C, disc.strides[1:]), widths, present)
    return {"dense": dense / 1e9, "fused": fused / 1e9}


def roofline(disc: SeparatedDiscriminator, features: torch.Tensor, labels: torch.Tensor, gemm_gflops: float,
             copy_gbs: float) -> dict[str, dict[str, float]]:
    """The fused backend's lower bound per mode: its executed FLOPs at the measured GEMM rate plus the weight bytes
    the pass must move at the measured copy bandwidth (what the roofline of a weight-traffic-bound pass is).

    Bytes: the forward reads the weights of the classes with a labelled output cell (the only ones it evaluates);
    the backward reads them again (for the input gradients) and writes their weight-gradient rows. The other
    classes' gradient rows are zero and need no traffic (on the CPU they are pages never touched). The backward
    executes twice the forward's FLOPs (input and weight gradients). Features, activations and tables are left out
    (under 1% of the weights at the paper's widths).
    """
    C, (h, w) = disc.num_classes, features.shape[-2:]
    lf = mode_downsample(labels, (h, w), C)
    lo = mode_downsample(labels, disc.output_size(h, w), C)
    present = int(classes_with_constants(lo, C).numel())
    widths = (disc.in_channels, *disc.channels, 1)
    flop = executed_flops(sparse_ssd_rulebook(lf, lo, C, disc.strides[1:]), widths, present)
    params = sum(p.numel() for p in disc.parameters())
    size = features.element_size()
    read = params * present / C * size
    bound = {"fwd": (flop, read), "bwd": (2 * flop, 2 * read)}
    bound["full"] = bound["plan"] = (3 * flop, 3 * read)
    out = {}
    for mode, (f, b) in bound.items():
        ms = (f / (gemm_gflops * 1e9) + b / (copy_gbs * 1e9)) * 1e3
        out[mode] = {"roofline_ms": ms, "gflop": f / 1e9, "weight_mb": b / 1e6}
    out["present_classes"] = present
    return out


def triton_configs(preset: Preset, dtype: torch.dtype = torch.float32) -> list[dict]:
    """The Triton launch configurations (tiles, warps, stages, TF32) the fused backend uses on CUDA for this
    preset's widths, as chosen by ssfdan_ext.triton.configs; [] where Triton is not installed."""
    try:
        from ssfdan_ext.triton.configs import describe_configs
    except ImportError:
        return []
    return describe_configs((preset.in_channels, *preset.channels, 1), dtype)


def layer1_loss(disc: SeparatedDiscriminator, features: torch.Tensor, lf: torch.Tensor) -> torch.Tensor:
    """Separation + layer 1 of ``disc.backend``, reduced to a scalar (mean square of its output)."""
    C = disc.num_classes
    if disc.backend == "loop":
        total = sum(disc.first_layer(c)(torch.where((lf == c).unsqueeze(1), features, 0.0)).square().mean()
                    for c in range(C))
        return total / C
    conv = disc.convs[0]
    if disc.backend == "fused":
        return routed_conv1x1(features, lf, conv.weight, conv.bias, C).rows.square().mean()
    if disc.backend == "grouped":
        B, n, h, w = features.shape
        own = lf.view(B, 1, 1, h, w) == torch.arange(C, device=lf.device).view(1, C, 1, 1, 1)
        return conv(torch.where(own, features.unsqueeze(1), 0.0).reshape(B, C * n, h, w)).square().mean()
    weights, biases = conv.weight.chunk(C), conv.bias.chunk(C)
    total = sum(F.conv2d(torch.where((lf == c).unsqueeze(1), features, 0.0), weights[c], biases[c]).square().mean()
                for c in range(C))
    return total / C


def step(disc: SeparatedDiscriminator, features: torch.Tensor, labels: torch.Tensor, mode: str):
    """The callable and its untimed setup for one mode.

    Every mode with a backward starts each repeat with the gradients set to None, as a training loop's
    ``zero_grad(set_to_none=True)`` leaves them (untimed): the backward writes fresh gradients, as in training,
    instead of adding into the previous repeat's.
    """
    features = features.requires_grad_(True)

    def fresh_grads(then=None):
        def setup():
            disc.zero_grad(set_to_none=True)
            features.grad = None
            return then() if then is not None else None
        return setup

    if mode == "l1":
        lf = mode_downsample(labels, features.shape[-2:], disc.num_classes)
        return lambda _=None: layer1_loss(disc, features, lf).backward(), fresh_grads()

    if mode == "plan" and disc.backend != "loop":  # fwd+bwd reusing the label-dependent part built once, untimed
        plan = disc.plan(labels, features.shape[-2:])
        return lambda _=None: disc(features, plan=plan).logits.square().mean().backward(), fresh_grads()

    def forward(_=None):
        return disc(features, labels).logits.square().mean()

    if mode == "fwd":
        return forward, None
    if mode in ("full", "plan"):  # the loop has no plan: its "plan" row is its full step
        return lambda _=None: forward().backward(), fresh_grads()
    return lambda loss: loss.backward(), fresh_grads(forward)  # bwd: the forward runs untimed


def roofline_inputs(device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    """The GEMM rate and the copy bandwidth, measured now."""
    return gemm_gflops(device, dtype), bandwidth_gbs(device)[0]


def measure(provider: str, mode: str, preset_name: str, layout: str, device: torch.device, repeats: int,
            warmup: int, precision: str = "fp32") -> dict:
    preset = PRESETS[preset_name]
    disc, features, labels = make_case(preset, layout, device, dtype=apply_precision(precision))
    if provider == "loop":
        disc = LoopDiscriminator(disc)
    else:
        disc.backend = provider
    fn, setup = step(disc, features, labels, mode)
    with PeakMemory(device) as peak:
        ms = median_ms(fn, device, repeats, warmup, setup)
    return {"preset": preset_name, "layout": layout, "precision": precision, "device": device.type,
            "provider": provider, "mode": mode,
            "median_ms": round(ms, 3), "peak_mb": round(peak.mb, 1), "repeats": repeats, "warmup": warmup,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = benchmark_parser(__doc__, PROVIDERS, MODES, repeats=7)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--layout", choices=("street", "checkerboard"), default="street")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    args, device = parse_benchmark_args(parser, argv)
    if args.worker:
        row = measure(args.providers[0], args.modes[0], args.preset, args.layout, device, args.repeats, args.warmup,
                      args.precision)
        print(json.dumps(row))
        return [row]

    preset = PRESETS[args.preset]
    print(f"SS-D benchmark, preset {args.preset} {asdict(preset)}, layout {args.layout}, precision "
          f"{args.precision}, device {device}, "
          f"median of {args.repeats} (after {args.warmup} warm-up), torch threads {torch.get_num_threads()}"
          + (f", {cpu_description()}" if device.type == "cpu" else ""), flush=True)
    disc, features, labels = make_case(preset, args.layout, torch.device("cpu"))
    gflop = forward_gflop(disc, features, labels)
    print(f"forward FLOPs: dense backends {gflop['dense']:.3f} GFLOP, fused (explicit pairs) {gflop['fused']:.3f} "
          f"GFLOP ({gflop['dense'] / gflop['fused']:.1f}x fewer)", flush=True)
    bound = {}
    if "fused" in args.providers:
        gemm, (copy, copy_source) = gemm_gflops(device, apply_precision(args.precision)), bandwidth_gbs(device)
        bound = roofline(disc, features, labels, gemm, copy)
        print(f"roofline of the fused backend (each fused row measures its own inputs around its timings): now "
              f"GEMM {gemm:.0f} GFLOP/s (2048^3), {copy_source} {copy:.1f} GB/s, "
              f"{bound['present_classes']} of {disc.num_classes} classes with a labelled output cell; "
              + ", ".join(f"{m} {bound[m]['gflop']:.2f} GFLOP + {bound[m]['weight_mb']:.0f} MB of weights = "
                          f"{bound[m]['roofline_ms']:.1f} ms" for m in ("fwd", "full")), flush=True)
    stem = f"bench_ssd_{args.preset}_{args.layout}_{device.type}"
    if args.precision != "fp32":
        stem += f"_{args.precision}"
    dtype = apply_precision(args.precision)  # the TF32 flags the launch configurations depend on
    configs = triton_configs(preset, dtype) if device.type == "cuda" and "fused" in args.providers else []
    if configs:  # the kernels' launch choices belong with their timings
        print(f"\nTriton launch configurations of the fused backend ({args.precision}):")
        print_table(configs, list(configs[0]))
        write_csv(configs, args.out / f"{stem}_triton_configs.csv")
        print(flush=True)
    rows = []
    common = ["--preset", args.preset, "--device", args.device, "--layout", args.layout, "--precision",
              args.precision, "--repeats",
              str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    for mode in args.modes:
        for provider in args.providers:
            known = provider == "fused" and mode in bound
            # A machine shared with other jobs drifts over a run of several minutes: each fused row measures the
            # roofline's inputs (here, outside the worker whose peak memory is measured) right before and right
            # after its timings, and its bound takes the means.
            before = roofline_inputs(device, dtype) if known else None
            row = run_worker(Path(__file__), [*common, "--providers", provider, "--modes", mode])
            if known:
                after = roofline_inputs(device, dtype)
                row["gemm_gflops"] = round((before[0] + after[0]) / 2, 1)
                row["copy_gbs"] = round((before[1] + after[1]) / 2, 1)
                row["gemm_gflops_spread"] = f"{before[0]:.0f}-{after[0]:.0f}"
                row_bound = roofline(disc, features, labels, row["gemm_gflops"], row["copy_gbs"])[mode]
                row["roofline_ms"] = round(row_bound["roofline_ms"], 4)
                row["vs_roofline"] = round(row["median_ms"] / row_bound["roofline_ms"], 2)
            note = (f", roofline {row['roofline_ms']:.1f} ms (GEMM {row['gemm_gflops']:.0f} GFLOP/s, copy "
                    f"{row['copy_gbs']:.1f} GB/s): {row['vs_roofline']:.2f}x" if known else "")
            print(f"  {provider:>10} {mode:>4}: {row['median_ms']:10.2f} ms, peak {row['peak_mb']:9.1f} MB{note}",
                  flush=True)
            row["fwd_gflop"] = round(gflop["fused" if provider == "fused" else "dense"], 4) if mode != "l1" else ""
            rows.append(row)
    bound_columns = ("roofline_ms", "vs_roofline", "gemm_gflops", "copy_gbs", "gemm_gflops_spread")
    for row in rows:  # how far the fused backend is from its bound (1.0: at the roofline); blank for the others
        for key in bound_columns:
            row.setdefault(key, "")
    columns = ["provider", "mode", "median_ms", "peak_mb", "fwd_gflop", "speedup_vs_fastest_dense",
               "memory_vs_fastest_dense", *(bound_columns if bound else ())]
    for row in rows:  # the honest ratio: against the fastest thing a user could write instead
        dense = [r for r in rows if r["mode"] == row["mode"] and r["provider"] in DENSE]
        best = min(dense, key=lambda r: r["median_ms"]) if dense else None
        row["fastest_dense"] = best["provider"] if best else ""
        row["speedup_vs_fastest_dense"] = round(best["median_ms"] / row["median_ms"], 2) if best else ""
        row["memory_vs_fastest_dense"] = (round(row["peak_mb"] / best["peak_mb"], 3)
                                          if best and best["peak_mb"] > 0 else "")
    for base_name in ("reference", "grouped"):
        if base_name not in args.providers:
            continue
        columns += [f"speedup_vs_{base_name}", f"memory_vs_{base_name}"]
        for row in rows:
            base = next((r for r in rows if r["mode"] == row["mode"] and r["provider"] == base_name), None)
            row[f"speedup_vs_{base_name}"] = round(base["median_ms"] / row["median_ms"], 2) if base else ""
            # peak memory of the provider relative to the base (below 1: less memory)
            row[f"memory_vs_{base_name}"] = (round(row["peak_mb"] / base["peak_mb"], 3)
                                             if base and base["peak_mb"] > 0 else "")
    print()
    print_table(rows, columns)
    write_csv(rows, args.out / f"{stem}.csv")
    plotted = plot_bars(rows, args.out / f"{stem}.png",
                        f"SS-D {args.preset} ({args.layout}, {args.precision}, {device.type})",
                        group="mode", series="provider", value="median_ms")
    print(f"\nwrote {args.out / (stem + '.csv')}" + (f" and {stem}.png" if plotted else " (no matplotlib: no plot)"))
    return rows


if __name__ == "__main__":
    main()
