"""The ablation table on the synthetic domains: every adaptation mode, several seeds, target mIoU mean and spread.

Two testbeds (``--preset``): ``synthetic`` (configs/synthetic.yaml: a global appearance change, one label
distribution, 32x64) and ``class_shift`` (configs/synthetic_class_shift.yaml: a class-conditional appearance
shift with swapped class looks, a label distribution shift, 128x256; see ``SyntheticScenes(shift="class")``).

Rows follow the paper's Table 4 (source only; the global and soft baselines and their sum; SS-D without and
with the progressive strategy and CA-R; SS-D with ground-truth source masks; SS-D + global), plus a control
row with the adversarial weight at 0, which separates the effect of the adversarial losses from that of
passing target batches through the segmenter (its BatchNorm running statistics then include the target
domain). Each run trains the small segmenter from scratch with ``ssfdan_ext.train`` and scores it on held-out
target scenes.

    python benchmarks/ablation_synthetic.py                      # writes benchmarks/results/ablation_synthetic.md
    python benchmarks/ablation_synthetic.py --seeds 0 1 --iterations 300
    python benchmarks/ablation_synthetic.py --preset class_shift --workers 2   # ablation_class_shift.md
"""
from __future__ import annotations

import argparse
import concurrent.futures
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
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

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

# The class-shift testbed. Fixed before the first run: delta 0.001 (as the other testbed), self-training weight 1
# (the segmentation loss's own scale; CA-R's tau <= 1 damps it per class), and the rest of
# configs/synthetic_class_shift.yaml. "SS-D + ..." rows use the paper's progressive strategy and CA-R.
SELF_TRAINING = 1.0
CLASS_SHIFT_ROWS: list[tuple[str, dict]] = [
    ("source only", {"adaptation": "none"}),
    ("global", {"adaptation": "global"}),
    ("soft", {"adaptation": "soft"}),
    ("SS-D (rho = 1, no CA-R)", {"adaptation": "ssd", "progressive": False, "car": False}),
    ("SS-D + progressive + CA-R", {"adaptation": "ssd", "progressive": True, "car": True}),
    ("SS-D + progressive + CA-R + global", {"adaptation": "ssd+global", "progressive": True, "car": True}),
    ("SS-D + progressive + CA-R + self-training",
     {"adaptation": "ssd", "progressive": True, "car": True, "self_training": SELF_TRAINING}),
    ("self-training alone (progressive + CA-R weights, no discriminator)",
     {"adaptation": "none", "progressive": True, "car": True, "self_training": SELF_TRAINING}),
    ("upper bound: trained on labelled target scenes", {"adaptation": "none", "source_split": "target"}),
]
PRESETS = {"synthetic": (None, ROWS, "ablation_synthetic.md"),
           "class_shift": (CONFIGS / "synthetic_class_shift.yaml", CLASS_SHIFT_ROWS, "ablation_class_shift.md")}
# The timing probe run before the ablation (same machine, two runs in parallel, seed 0) that fixed --iterations.
PROBE = ("Iteration count from a timing probe before the first run: two runs in parallel (rows 5 and 7 for 40 "
         "iterations: 42 and 45 s; rows 2 and 5 for 120 iterations: 55 and 60 s) give about 0.19 s per iteration "
         "plus about 35 s of scene rendering and evaluation per run on this shared 2-core CPU; 600 iterations "
         "(about 150 s per run) fit 9 settings x 3 seeds into 50 minutes with two workers.")
REFERENCE_ROW = "global"  # paired differences per seed are taken against this row

# The preset's config with fewer iterations (--iterations), without logs.
BASE = {"tensorboard": False, "progress": False, "val_every": 0, "checkpoint_every": 0, "save_images": 0,
        "sample_figure": 0}
TINY = {"source_size": [32, 32], "target_size": [32, 32], "val_size": [32, 32], "synthetic_length": 4,
        "val_length": 2, "model_kwargs": {"width": 4, "feature_channels": 8}, "disc_channels": [8, 8, 8, 8],
        "disc_strides": [1, 1, 1, 1, 2]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", choices=sorted(PRESETS), default="synthetic")
    p.add_argument("--iterations", type=int, help="default: 800 (synthetic), the config's (class_shift)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel (each with one compute thread)")
    p.add_argument("--rows", type=int, nargs="+", help="row numbers (1-based) to run; default all")
    p.add_argument("--tiny", action="store_true", help="a few iterations on tiny scenes (for tests)")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/ablation_<preset>.md")
    p.add_argument("--work-dir", type=Path, help="where the runs write their logs (default: a temporary folder)")
    p.add_argument("--from-csv", type=Path, help="rewrite the table and plot from the CSV of a finished or cut-short "
                   "run (same --preset, --seeds and --iterations) instead of training")
    args = p.parse_args(argv)
    config, args.rows_table, name = PRESETS[args.preset]
    args.config = config
    args.out = args.out or RESULTS / name
    if args.iterations is None:
        from ssfdan_ext.train import load_config

        args.iterations = 800 if config is None else load_config(config).iterations
    return args


def run_row(overrides: dict, seed: int, iterations: int, tiny: bool, out_dir: Path, config: Path | None = None):
    """Train one configuration and return (target mIoU, pixel accuracy, seconds)."""
    from ssfdan_ext.train import from_dict, load_config, train

    values = {**BASE, **(TINY if tiny else {}), **overrides, "iterations": iterations, "seed": seed,
              "data_seed": seed, "out_dir": str(out_dir)}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # each run prints its IoU table; the summary is enough
        result = train(from_dict(values, load_config(config)))  # the preset's config, then the row
    return result.result.miou, result.result.pixel_accuracy, time.perf_counter() - start


def _run_task(task: tuple) -> tuple:
    r, overrides, seed, iterations, tiny, out_dir, config = task
    torch.set_num_threads(1)
    return (r, seed, *run_row(overrides, seed, iterations, tiny, out_dir, config))


def _spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _paired(results: dict[int, list], rows: list, row: int) -> str:
    """Mean ± std over seeds of (row - the global row) in mIoU points, from the seeds both rows have."""
    ref = next((i + 1 for i, (label, _) in enumerate(rows) if label == REFERENCE_ROW), None)
    if ref is None or ref not in results or row == ref:
        return "–"
    base = {seed: miou for seed, miou, *_ in results[ref]}
    diffs = [miou - base[seed] for seed, miou, *_ in results[row] if seed in base]
    if not diffs:
        return "–"
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    per_seed = ", ".join(f"{100 * d:+.2f}" for d in diffs)
    return f"{100 * statistics.fmean(diffs):+.2f} ± {100 * std:.2f} ({per_seed})"


def write_table(path: Path, results: dict[int, list[tuple[int, float, float, float]]], args: argparse.Namespace,
                command: str, seconds: float, header: str = "") -> str:
    """Markdown: one line per row with mean ± sample standard deviation over seeds, min-max, every seed and the
    paired difference to the global discriminator; CSV next to it."""
    rows = args.rows_table
    config = "configs/synthetic.yaml" if args.config is None else f"configs/{args.config.name}"
    lines = [
        f"# Ablation on the synthetic domains ({args.preset} testbed)",
        "",
        f"Command: `{command}`",
        "",
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}; each seed changes the initialisation, the "
        f"data order and the scenes), {args.iterations} iterations per run{' (tiny scenes)' if args.tiny else ''}; "
        f"target mIoU (%) on the held-out target scenes of {config} (13 classes), mean ± sample "
        f"standard deviation over seeds. "
        f"torch {torch.__version__}, Python {platform.python_version()}, {seconds / 60:.1f} min in total.",
        "",
        header,
        "| # | setting | target mIoU (%) | min – max | per seed | pixel accuracy (%) | "
        "paired Δ to global (points) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, runs in sorted(results.items()):
        runs = sorted(runs)
        mious = [r[1] for r in runs]
        accs = [r[2] for r in runs]
        per_seed = ", ".join(f"{100 * m:.2f}" for m in mious)
        lines.append(f"| {row} | {rows[row - 1][0]} | {_spread(mious)} | {100 * min(mious):.2f} – "
                     f"{100 * max(mious):.2f} | {per_seed} | {_spread(accs)} | {_paired(results, rows, row)} |")
    text = "\n".join(line for line in lines if line is not None) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "setting", "seed", "miou", "pixel_accuracy", "seconds"])
        for row, runs in sorted(results.items()):
            for seed, miou, acc, secs in sorted(runs):
                writer.writerow([row, rows[row - 1][0], seed, f"{miou:.6f}", f"{acc:.6f}", f"{secs:.1f}"])
    return text


def write_plot(path: Path, results: dict[int, list], args: argparse.Namespace) -> Path | None:
    """mIoU per setting: the mean as a bar, every seed as a dot (needs matplotlib; skipped without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = sorted(results)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2), constrained_layout=True)
    for y, row in enumerate(rows):
        mious = [100 * r[1] for r in results[row]]
        ax.barh(y, statistics.fmean(mious), color="0.8")
        ax.plot(mious, [y] * len(mious), "o", color="C0", ms=4)
    ax.set_yticks(range(len(rows)), [f"{r}. {args.rows_table[r - 1][0]}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("target mIoU (%): bar = mean, dots = seeds")
    ax.set_title(f"{args.preset} testbed, {args.iterations} iterations, seeds {', '.join(map(str, args.seeds))}")
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = args.rows_table
    rows = args.rows or list(range(1, len(table) + 1))
    for r in rows:
        if not 1 <= r <= len(table):
            raise SystemExit(f"--rows: row numbers are 1..{len(table)}, got {r}")
    command = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/ablation_synthetic.py", *(sys.argv[1:] if argv is None else argv)])
    header = _design_header(args)
    results: dict[int, list] = {}
    if args.from_csv is not None:
        with args.from_csv.open(newline="") as f:
            runs = list(csv.DictReader(f))
        for r in runs:
            results.setdefault(int(r["row"]), []).append((int(r["seed"]), float(r["miou"]),
                                                          float(r["pixel_accuracy"]), float(r["seconds"])))
        minutes = max(float(r["seconds"]) for r in runs) / 60 if runs else 0.0
        old = args.from_csv.with_suffix(".md")
        command = old.read_text().split("Command: `")[1].split("`")[0] if old.is_file() else command
        total = old.read_text().split(" min in total")[0].rsplit(", ", 1)[1] if old.is_file() else f"{minutes:.1f}"
        write_table(args.out, results, args, command, 60 * float(total), header)
        plot = write_plot(args.out, results, args)
        print(f"wrote {args.out}" + (f" and {plot}" if plot else ""))
        return 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        # Seed-major order: an interrupted run still has every row for the first seeds.
        tasks = [(r, table[r - 1][1], seed, args.iterations, args.tiny, work / f"row{r}_seed{seed}", args.config)
                 for seed in args.seeds for r in rows]

        def record(done: tuple) -> None:
            r, seed, miou, acc, secs = done
            results.setdefault(r, []).append((seed, miou, acc, secs))
            print(f"row {r} ({table[r - 1][0]}), seed {seed}: target mIoU {100 * miou:.2f} ({secs:.0f} s)", flush=True)
            # The table so far, after every run: a run cut short keeps what it finished.
            write_table(args.out, results, args, command, time.perf_counter() - start, header)

        if args.workers <= 1:
            for task in tasks:
                record(_run_task(task))
        else:
            import multiprocessing

            with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context(
                    "spawn")) as pool:
                for future in concurrent.futures.as_completed([pool.submit(_run_task, t) for t in tasks]):
                    record(future.result())
    text = write_table(args.out, results, args, command, time.perf_counter() - start, header)
    plot = write_plot(args.out, results, args)
    print(text)
    if plot is not None:
        print(f"wrote {plot}")
    return 0


def _design_header(args: argparse.Namespace) -> str | None:
    """The testbed's fixed design, written into the results file (class_shift only)."""
    if args.preset != "class_shift" or args.tiny:
        return None
    from ssfdan_ext.data.synthetic import CLASS_SHIFT
    from ssfdan_ext.train import load_config

    cfg = load_config(args.config)
    return (f"Testbed (fixed before the first run): `SyntheticScenes(shift=\"class\")` with `CLASS_SHIFT = "
            f"{CLASS_SHIFT}` (train ids), `shift_seed` {cfg.synthetic_shift_seed}; {cfg.source_size[0]}x"
            f"{cfg.source_size[1]} scenes, {cfg.synthetic_length} training scenes per domain, {cfg.val_length} "
            f"held-out target scenes; `{cfg.model}` segmenter {cfg.model_kwargs}, batch {cfg.batch_size}, lr "
            f"{cfg.lr}, SS-D channels {cfg.disc_channels}, strides {cfg.disc_strides} (16x32 features -> 4x8 "
            f"output cells), lr_d {cfg.lr_d}, delta {cfg.delta}, rho_upper {cfg.rho_upper}, self-training weight "
            f"{SELF_TRAINING}. Paired Δ: the row's mIoU minus the global row's, seed by seed.\n\n{PROBE}\n")


if __name__ == "__main__":
    sys.exit(main())
