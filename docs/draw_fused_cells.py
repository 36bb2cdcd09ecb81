"""Draws docs/fused_cells.png: the cells of one class that the fused SS-D backend computes, layer by layer.

The label map is a generated street scene (``SyntheticScenes``) at 512x1024 with features at 1/8 (64x128) and the
default strides, so the five layers work on 64x128, 32x64, 16x32, 8x16 and 4x8 cells. For the chosen class c the
script derives the sets of docs/fused-backend.md from their definitions (A: cells whose value can differ from the
class constant, N: cells that reach an output cell labelled c, E = A ∩ N: the explicit cells) and checks them
against the library's rulebook (``ssfdan_ext.ops.sparse_ssd_rulebook``) before drawing: every explicit cell, every
tap row and every output row must be the rulebook's, so the picture is what the backend computes.

    python docs/draw_fused_cells.py                      # class "car" of target scene 1 -> docs/fused_cells.png
    python docs/draw_fused_cells.py --class-name building --out /tmp/building.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import ssfdan_ext as sd
from ssfdan_ext.data import SyntheticScenes
from ssfdan_ext.data.classes import class_names, palette
from ssfdan_ext.geometry import layer_sizes
from ssfdan_ext.ops import sparse_ssd_rulebook

NUM_CLASSES = 19
STRIDES = (1, 2, 2, 2, 2)
TAPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # tap 3*ky + kx, as in the rulebook


def explicit_sets(lf: np.ndarray, lo: np.ndarray, c: int) -> tuple[list, list, list]:
    """A_l, N_l and E_l = A_l & N_l of class c for layers 1-5, as boolean grids (one image)."""
    sizes = layer_sizes(*lf.shape, STRIDES)
    active = [lf == c]
    for s, (oh, ow) in zip(STRIDES[1:], sizes[1:]):
        prev, (ph, pw) = active[-1], active[-1].shape
        cur = np.zeros((oh, ow), dtype=bool)
        for y in range(oh):
            for x in range(ow):
                # Differs from the constant when a tap reads a class-c value or the zero padding.
                cur[y, x] = any(not (0 <= s * y + dy < ph and 0 <= s * x + dx < pw) or prev[s * y + dy, s * x + dx]
                                for dy, dx in TAPS)
        active.append(cur)
    needed = [lo == c]
    for s, (ph, pw) in zip(reversed(STRIDES[1:]), reversed(sizes[:-1])):
        nxt, cur = needed[0], np.zeros((ph, pw), dtype=bool)
        for y, x in zip(*np.nonzero(nxt)):
            for dy, dx in TAPS:
                if 0 <= s * y + dy < ph and 0 <= s * x + dx < pw:
                    cur[s * y + dy, s * x + dx] = True
        needed.insert(0, cur)
    return active, needed, [a & n for a, n in zip(active, needed)]


def check_against_rulebook(rulebook, lf_masked: np.ndarray, lo: np.ndarray, explicit: list, c: int) -> None:
    """Every explicit cell of class c, the table row of each of its taps and each output row are the rulebook's."""
    C = NUM_CLASSES
    if not np.array_equal(lf_masked == c, explicit[0]):
        raise AssertionError("layer 1: E_1 differs from the rulebook's lf_masked")
    flat = lf_masked.reshape(-1)
    start = int((flat < c).sum())  # layer-1 rows are sorted by class, IGNORE (255) last
    rows = {tuple(p): start + k for k, p in enumerate(zip(*np.nonzero(explicit[0])))}
    num_rows = flat.size
    for layer in range(2, 6):
        s, taps, offsets = STRIDES[layer - 1], rulebook.taps[layer - 2], rulebook.offsets[layer - 2]
        cells = list(zip(*np.nonzero(explicit[layer - 1])))  # raster order, as the rulebook numbers pairs
        first, last = int(offsets[c]), int(offsets[c + 1])
        if last - first != len(cells):
            raise AssertionError(f"layer {layer}: {len(cells)} explicit cells, the rulebook has {last - first}")
        ph, pw = explicit[layer - 2].shape
        for k, (y, x) in enumerate(cells):
            want = [num_rows + C if not (0 <= s * y + dy < ph and 0 <= s * x + dx < pw)
                    else rows.get((s * y + dy, s * x + dx), num_rows + c) for dy, dx in TAPS]
            if taps[first + k].tolist() != want:
                raise AssertionError(f"layer {layer}, cell {(y, x)}: taps {taps[first + k].tolist()} != {want}")
        rows = {(int(y), int(x)): first + k for k, (y, x) in enumerate(cells)}
        num_rows = taps.shape[0]
    out = rulebook.out_index.view(lo.shape)
    for y, x in zip(*np.nonzero(lo == c)):
        if int(out[y, x]) != rows.get((int(y), int(x)), num_rows + c):
            raise AssertionError(f"output cell {(y, x)} reads the wrong row")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="target", choices=("source", "target"))
    parser.add_argument("--index", type=int, default=1, help="scene index")
    parser.add_argument("--class-name", default="car")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "fused_cells.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = class_names(NUM_CLASSES)
    c = names.index(args.class_name)
    _, label, _ = SyntheticScenes(args.domain, num_classes=NUM_CLASSES, size=(512, 1024), seed=0, length=8)[args.index]
    labels = label.unsqueeze(0)
    h, w = 64, 128  # DeepLab-v2 features at 1/8
    sizes = layer_sizes(h, w, STRIDES)
    lf = sd.mode_downsample(labels, (h, w), NUM_CLASSES)
    lo = sd.mode_downsample(labels, sizes[-1], NUM_CLASSES)
    rulebook = sparse_ssd_rulebook(lf, lo, NUM_CLASSES, STRIDES[1:])
    lf_np, lo_np = lf[0].numpy(), lo[0].numpy()
    active, needed, explicit = explicit_sets(lf_np, lo_np, c)
    check_against_rulebook(rulebook, rulebook.lf_masked[0].numpy(), lo_np, explicit, c)
    counts = rulebook.pair_counts()

    colours = palette(NUM_CLASSES) / 255.0
    image = np.ones((*label.shape, 3))
    valid = label.numpy() != sd.IGNORE
    image[valid] = colours[label.numpy()[valid]]
    image[valid & (label.numpy() != c)] = 0.55 + 0.45 * image[valid & (label.numpy() != c)]  # other classes faded

    # 0: untouched (class c's constant, not needed); 1: A only (differs, reaches no labelled output cell: skipped);
    # 2: N only (needed, equals the constant: read from the constant row); 3: E (computed).
    cmap = ListedColormap(["#f2f2f2", "#9ecae1", "#fdd49e", "#b2182b"])
    fig, axes = plt.subplots(2, 3, figsize=(13, 5.2), constrained_layout=True)
    axes = axes.ravel()
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title(f"label map 512x1024, class '{args.class_name}' in colour", fontsize=10)
    for layer in range(1, 6):
        state = active[layer - 1].astype(int) + 2 * needed[layer - 1].astype(int)
        ax = axes[layer]
        ax.imshow(state, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        gh, gw = sizes[layer - 1]
        cells_c = int(explicit[layer - 1].sum())
        ax.set_title(f"layer {layer} ({gh}x{gw}): {cells_c} explicit of class {args.class_name} "
                     f"({counts[layer - 1]} all classes)", fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    legend = [Patch(color="#b2182b", label="explicit (A ∩ N): computed"),
              Patch(color="#9ecae1", label="A only: differs from the constant, reaches no labelled output: skipped"),
              Patch(color="#fdd49e", label="N only: needed, equals the class constant: constant row"),
              Patch(color="#f2f2f2", label="neither")]
    fig.legend(handles=legend, loc="lower center", ncol=2, fontsize=9, bbox_to_anchor=(0.5, -0.1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"class {args.class_name}: explicit cells per layer "
          f"{[int(e.sum()) for e in explicit]}, all classes {counts}; wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
