"""Where one discriminator step of the fused backend spends its time: the top ops of a torch.profiler trace.

    python benchmarks/profile_ssd_step.py --preset paperwidth          # the paper's widths on 128x256 crops

A step is what a training loop does to the SS-D: zero_grad (set_to_none), forward, backward and a fused Adam step,
on the preset's features and street labels (bench_ssd.py's presets). It also times zeroing one weight-gradient
sized tensor freshly allocated against the same tensor zeroed again, the cost of the allocator behind a large
fresh gradient. Writes ``profile_ssd_step_<preset>_<device>.csv`` (op, self time per step, share) to
benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, median_ms, print_table, synchronize, write_csv  # noqa: E402
from bench_ssd import PRESETS, make_case  # noqa: E402


def profile_step(preset: str, device: torch.device, steps: int, rows: int) -> list[dict]:
    disc, features, labels = make_case(PRESETS[preset], "street", device)
    disc.backend = "fused"
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.9, 0.99), fused=fused)

    def step():
        opt.zero_grad(set_to_none=True)
        disc(features, labels).logits.square().mean().backward()
        opt.step()

    for _ in range(2):
        step()
    synchronize(device)
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 2),
             "share": round(e.self_cpu_time_total / total, 3), "calls_per_step": e.count // steps}
            for e in events[:rows]]


def fresh_vs_reused_zeroing(numel: int, device: torch.device) -> dict:
    """ms to zero a freshly allocated tensor of ``numel`` float32 against zeroing one that is already mapped."""
    fresh = median_ms(lambda: torch.empty(numel, device=device).zero_(), device, repeats=5, warmup=1)
    buffer = torch.empty(numel, device=device)
    reused = median_ms(lambda: buffer.zero_(), device, repeats=5, warmup=1)
    return {"mb": round(numel * 4 / 2**20), "fresh_ms": round(fresh, 1), "reused_ms": round(reused, 1)}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paperwidth")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = profile_step(args.preset, device, args.steps, args.rows)
    print(f"fused SS-D step (zero_grad, forward, backward, fused Adam), preset {args.preset}, {device}, "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}")
    print_table(rows, ["op", "self_ms_per_step", "share", "calls_per_step"])
    preset = PRESETS[args.preset]
    layer2 = preset.num_classes * preset.channels[1] * preset.channels[0] * 9  # the largest weight gradient
    zeroing = fresh_vs_reused_zeroing(layer2, device)
    print(f"\nzeroing a {zeroing['mb']} MB tensor (layer 2's weight gradient): freshly allocated "
          f"{zeroing['fresh_ms']} ms, already mapped {zeroing['reused_ms']} ms")
    rows.append({"op": f"(zero a fresh {zeroing['mb']} MB tensor)", "self_ms_per_step": zeroing["fresh_ms"],
                 "share": "", "calls_per_step": 1})
    rows.append({"op": f"(zero the same {zeroing['mb']} MB again)", "self_ms_per_step": zeroing["reused_ms"],
                 "share": "", "calls_per_step": 1})
    path = args.out / f"profile_ssd_step_{args.preset}_{device.type}.csv"
    write_csv(rows, path)
    print(f"wrote {path}")
    return rows


if __name__ == "__main__":
    main()
