"""A grid of source and target synthetic scenes, so a reader sees the domain shift (needs matplotlib).

Rows: source images, their labels, target images, their labels; then the class frequencies of both domains.

    python benchmarks/plot_synthetic_domains.py                  # shift=class, 128x256
    python benchmarks/plot_synthetic_domains.py --shift none --size 32 64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shift", default="class", choices=("none", "class"))
    p.add_argument("--size", type=int, nargs=2, default=[128, 256])
    p.add_argument("--num-classes", type=int, default=13)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--frequency-scenes", type=int, default=200, help="scenes per domain for the class frequencies")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/synthetic_<shift>_shift_samples.png")
    return p.parse_args(argv)


def class_frequencies(ds, num_classes: int, scenes: int) -> np.ndarray:
    """Fraction of labelled pixels per class over the first ``scenes`` scenes of ``ds``."""
    hist = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(min(scenes, len(ds))):
        label = ds[i][1]
        hist += torch.bincount(label[label != 255].flatten(), minlength=num_classes)[:num_classes].double()
    return (hist / hist.sum()).numpy()


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from ssfdan_ext.data import SyntheticScenes, palette
    from ssfdan_ext.evaluate import colorize

    args = parse_args(argv)
    out = args.out or RESULTS / f"synthetic_{args.shift}_shift_samples.png"
    C, n = args.num_classes, args.columns
    data = {d: SyntheticScenes(d, C, tuple(args.size), seed=0, length=max(n, args.frequency_scenes),
                               shift=args.shift) for d in ("source", "target")}
    fig = plt.figure(figsize=(3.2 * n, 2.0 * 4 + 3.2), constrained_layout=True)
    grid = fig.add_gridspec(5, n, height_ratios=[1, 1, 1, 1, 1.6])
    for r, (domain, what) in enumerate([(d, w) for d in ("source", "target") for w in ("image", "label")]):
        for c in range(n):
            ax = fig.add_subplot(grid[r, c])
            rgb, _ = data[domain].render(c)
            label = data[domain][c][1]
            ax.imshow(rgb.permute(1, 2, 0).byte().numpy() if what == "image"
                      else np.asarray(colorize(label, C).convert("RGB")), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{domain}\n{what}")
    names = data["source"].class_names
    ax = fig.add_subplot(grid[4, :])
    freq = {d: class_frequencies(ds, C, args.frequency_scenes) for d, ds in data.items()}
    x = np.arange(C)
    ax.bar(x - 0.2, 100 * freq["source"], 0.4, label="source", color="0.55")
    ax.bar(x + 0.2, 100 * freq["target"], 0.4, label="target", color=palette(C)[x] / 255.0, edgecolor="k")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("pixels (%)")
    ax.set_title(f"class frequencies over {args.frequency_scenes} scenes per domain (grey: source; coloured: target)")
    handles = [Patch(color=palette(C)[k] / 255.0, label=names[k]) for k in range(C)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(C, 7), fontsize=8)
    fig.suptitle(f"SyntheticScenes(shift={args.shift!r}), {args.size[0]}x{args.size[1]}, seed 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
