"""sparse_ssd_rulebook: the compiled rulebook builder against the reference's, built set by set.

    python benchmarks/bench_sparse_ssd_rulebook.py --preset cpu                      # this machine's CPU
    python benchmarks/bench_sparse_ssd_rulebook.py --preset paper --device cuda
    python benchmarks/bench_sparse_ssd_rulebook.py --preset cpu --layouts checkerboard   # the worst case only

The rulebook of the SS-D's strides (layers 2-5: 2, 2, 2, 2) for label maps mode-downsampled to the feature size
and to the SS-D output size, from street scenes (``ssfdan_ext.testing.street_labels``) and from a checkerboard of
8x8-pixel squares (``checkerboard_labels``: every feature cell's neighbours differ, the most pairs). The
downsampling is not timed. Before timing, each worker checks that its provider's rulebook equals the reference's
(every tensor, exactly) and fails otherwise. Each (preset, layout, provider) runs in its own interpreter so that its
peak memory is its own. Reports median times, the speed-up over the reference and the explicit pairs of layers
1-5 (``Rulebook.pair_counts()``). Writes CSV (and a PNG plot when matplotlib is installed) to benchmarks/results/.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    add_speedup, answer_worker, check_against_reference, checked_row, op_parser, parse_benchmark_args, report,
    results_stem, run_cases, run_header,
)

from ssfdan_ext import mode_downsample, reference  # noqa: E402
from ssfdan_ext.geometry import output_size  # noqa: E402
from ssfdan_ext.ops import Rulebook, sparse_ssd_rulebook  # noqa: E402
from ssfdan_ext.testing import checkerboard_labels, street_labels  # noqa: E402

PROVIDERS = ("reference", "compiled")
MODES = ("build",)
LAYOUTS = ("street", "checkerboard")
STRIDES = (1, 2, 2, 2, 2)  # the SS-D's; the rulebook takes those of layers 2-5


@dataclass(frozen=True)
class Preset:
    num_classes: int
    feature_size: tuple[int, int]
    label_size: tuple[int, int]
    batch: int = 1


PRESETS = {
    "tiny": Preset(19, (17, 33), (128, 256)),  # 128x256 crops
    "cpu": Preset(19, (65, 129), (512, 1024)),  # the paper's 512x1024 crops
    "paper": Preset(19, (65, 129), (512, 1024)),  # the same maps, for a GPU
}


def label_maps(preset: Preset, layout: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lf, lo): the layout's labels mode-downsampled to the feature size and to the SS-D output size."""
    C, (h, w) = preset.num_classes, preset.feature_size
    make = street_labels if layout == "street" else checkerboard_labels
    labels = make(preset.batch, *preset.label_size, num_classes=C).to(device)
    return mode_downsample(labels, (h, w), C), mode_downsample(labels, output_size(h, w, STRIDES), C)


def runner(provider: str, preset: Preset, lf: torch.Tensor, lo: torch.Tensor):
    """The provider's build, as a :class:`Rulebook`."""
    if provider == "reference":
        return lambda: Rulebook(*reference.sparse_ssd_rulebook(lf, lo, preset.num_classes, STRIDES[1:]))
    return lambda: sparse_ssd_rulebook(lf, lo, preset.num_classes, STRIDES[1:])


def fields_of(rb: Rulebook) -> dict[str, torch.Tensor]:
    """Every tensor of a rulebook, by name."""
    named = {"lf_masked": rb.lf_masked, "out_index": rb.out_index}
    for layer, (taps, offsets) in enumerate(zip(rb.taps, rb.offsets), start=2):
        named.update({f"taps of layer {layer}": taps, f"offsets of layer {layer}": offsets})
    return named


def measure(provider: str, mode: str, preset_name: str, layout: str, device: torch.device, repeats: int,
            warmup: int) -> dict:
    preset = PRESETS[preset_name]
    lf, lo = label_maps(preset, layout, device)
    run = runner(provider, preset, lf, lo)
    rb = run()
    err = 0.0 if provider == "reference" else check_against_reference(  # before timing; raises on a mismatch
        provider, fields_of(rb), fields_of(runner("reference", preset, lf, lo)()), device)
    maps = {"layout": layout, "lf": "x".join(map(str, lf.shape)), "lo": "x".join(map(str, lo.shape))}
    maps.update((f"pairs_l{layer}", count) for layer, count in enumerate(rb.pair_counts(), start=1))
    return checked_row(provider, mode, preset_name, device, err, maps, run, repeats, warmup)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = op_parser(__doc__, PROVIDERS, MODES, repeats=7, presets=PRESETS)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    args, device = parse_benchmark_args(parser, argv)
    if args.worker:
        return answer_worker(args, device, measure, args.layouts[0])

    print(f"{run_header('sparse_ssd_rulebook benchmark', args, device)}; layouts {args.layouts}; "
          f"{ {name: asdict(PRESETS[name]) for name in args.preset} }", flush=True)
    cases = [(f"{name} {layout}", ["--preset", name, "--layouts", layout])
             for name in args.preset for layout in args.layouts]
    rows = run_cases(Path(__file__), args, cases,
                     lambda r: ", pairs per layer " + " ".join(str(r[f"pairs_l{i}"]) for i in range(1, 6)))
    speedup = add_speedup(rows, "reference")
    stem = results_stem("sparse_ssd_rulebook", args, device)
    report(rows, ["preset", "layout", "provider", "median_ms", speedup, *(f"pairs_l{i}" for i in range(1, 6)),
                  "peak_mb"], args.out, stem, f"sparse_ssd_rulebook ({device.type})")
    return rows


if __name__ == "__main__":
    main()
