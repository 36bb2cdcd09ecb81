"""The ablation table on the synthetic domains: every adaptation mode, several seeds, target mIoU mean and spread.

Rows follow the paper's Table 4 (source only; the global and soft baselines and their sum; SS-D without and
with the progressive strategy and CA-R; SS-D with ground-truth source masks; SS-D + global), plus a control
row with the adversarial weight at 0, which separates the effect of the adversarial losses from that of
passing target batches through the segmenter (its BatchNorm running statistics then include the target
domain). Each run trains the small segmenter from scratch with ``ssfdan_ext.train`` and scores it on held-out
target scenes.

    python benchmarks/ablation_synthetic.py                      # writes benchmarks/results/ablation_synthetic.md
    python benchmarks/ablation_synthetic.py --seeds 0 1 --iterations 300
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# (label, overrides). SS-D rows spell out progressive / car so the table reads without the defaults.
ROWS: list[tuple[str, dict]] = [
    ("source only", {"adaptation": "none"}),
    ("global", {"adaptation": "global"}),
    ("soft", {"adaptation": "soft"}),
    ("soft + global", {"adaptation": "soft+global"}),
    ("SS-D (rho = 1, no CA-R)", {"adaptation": "ssd", "progressive": False, "car": False}),
    ("SS-D + progressive", {"adaptation": "ssd", "progressive": True, "car": False}),
    ("SS-D + CA-R (rho = 1)", {"adaptation": "ssd", "progressive": False, "car": True}),
    ("SS-D + progressive + CA-R", {"adaptation": "ssd", "progressive": True, "car": True}),
    ("SS-D + progressive + CA-R, ground-truth source masks",
     {"adaptation": "ssd", "progressive": True, "car": True, "source_masks": "ground_truth"}),
    ("SS-D + progressive + CA-R + global", {"adaptation": "ssd+global", "progressive": True, "car": True}),
    # Control, not a row of the paper: the target batches go through the segmenter (so its BatchNorm running
    # statistics see the target domain) but the adversarial loss has weight 0.
    ("control: SS-D with delta = 0 (target forward passes only)", {"adaptation": "ssd", "delta": 0.0}),
]

# The embedded synthetic config (configs/synthetic.yaml) with fewer iterations (--iterations), without logs.
BASE = {"tensorboard": False, "progress": False, "val_every": 0, "checkpoint_every": 0, "save_images": 0}
TINY = {"source_size": [32, 32], "target_size": [32, 32], "val_size": [32, 32], "synthetic_length": 4,
        "val_length": 2, "model_kwargs": {"width": 4, "feature_channels": 8}, "disc_channels": [8, 8, 8, 8]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=800)
    p.add_argument("--rows", type=int, nargs="+", help="row numbers (1-based) to run; default all")
    p.add_argument("--tiny", action="store_true", help="a few iterations on tiny scenes (for tests)")
    p.add_argument("--out", type=Path, default=RESULTS / "ablation_synthetic.md")
    p.add_argument("--work-dir", type=Path, help="where the runs write their logs (default: a temporary folder)")
    return p.parse_args(argv)


def run_row(overrides: dict, seed: int, iterations: int, tiny: bool, out_dir: Path):
    """Train one configuration and return (target mIoU, pixel accuracy, seconds)."""
    from ssfdan_ext.train import from_dict, load_config, train

    values = {**BASE, **(TINY if tiny else {}), **overrides, "iterations": iterations, "seed": seed,
              "data_seed": seed, "out_dir": str(out_dir)}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # each run prints its IoU table; the summary is enough
        result = train(from_dict(values, load_config()))  # the embedded synthetic config, then the row
    return result.result.miou, result.result.pixel_accuracy, time.perf_counter() - start


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def write_table(path: Path, results: dict[int, list[tuple[int, float, float, float]]], args: argparse.Namespace,
                command: str, seconds: float) -> str:
    """Markdown: one line per row with mean ± sample standard deviation over seeds, min-max and every seed."""
    lines = [
        "# Ablation on the synthetic domains",
        "",
        f"Command: `{command}`",
        "",
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}; each seed changes the initialisation, the "
        f"data order and the scenes), {args.iterations} iterations per run{' (tiny scenes)' if args.tiny else ''}; "
        f"target mIoU (%) on the held-out target scenes of configs/synthetic.yaml (13 classes), mean ± sample "
        f"standard deviation over seeds. "
        f"torch {torch.__version__}, Python {platform.python_version()}, {seconds / 60:.1f} min in total.",
        "",
        "| # | setting | target mIoU (%) | min – max | per seed | pixel accuracy (%) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, runs in sorted(results.items()):
        mious = [r[1] for r in runs]
        accs = [r[2] for r in runs]
        per_seed = ", ".join(f"{100 * m:.2f}" for m in mious)
        lines.append(f"| {row} | {ROWS[row - 1][0]} | {_spread(mious)} | {100 * min(mious):.2f} – "
                     f"{100 * max(mious):.2f} | {per_seed} | {_spread(accs)} |")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "setting", "seed", "miou", "pixel_accuracy", "seconds"])
        for row, runs in sorted(results.items()):
            for seed, miou, acc, secs in runs:
                writer.writerow([row, ROWS[row - 1][0], seed, f"{miou:.6f}", f"{acc:.6f}", f"{secs:.1f}"])
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = args.rows or list(range(1, len(ROWS) + 1))
    for r in rows:
        if not 1 <= r <= len(ROWS):
            raise SystemExit(f"--rows: row numbers are 1..{len(ROWS)}, got {r}")
    command = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/ablation_synthetic.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[int, list] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        for r in rows:
            for seed in args.seeds:
                miou, acc, secs = run_row(ROWS[r - 1][1], seed, args.iterations, args.tiny,
                                          work / f"row{r}_seed{seed}")
                results.setdefault(r, []).append((seed, miou, acc, secs))
                print(f"row {r} ({ROWS[r - 1][0]}), seed {seed}: target mIoU {100 * miou:.2f} ({secs:.0f} s)",
                      flush=True)
    text = write_table(args.out, results, args, command, time.perf_counter() - start)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
