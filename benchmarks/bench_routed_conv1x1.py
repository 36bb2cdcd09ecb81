"""routed_conv1x1 (semantic separation + the first SS-D layer as a top-1 routed GEMM) against the dense way and the
naive per-class loop.

    python benchmarks/bench_routed_conv1x1.py --preset cpu                      # this machine's CPU
    python benchmarks/bench_routed_conv1x1.py --preset paper --device cuda

Providers: ``routed`` (ssfdan_ext.ops.routed_conv1x1, one product per class cell), ``grouped`` (the fastest dense
alternative a user would write: the separated tensor ``where(labels == c, features, 0)`` of every class stacked to
(B, C*n, h, w), then one grouped 1x1 convolution, C products per cell) and ``reference`` (ssfdan_ext.reference's
per-class loop). Labels: street label maps mode-downsampled to the feature size. Modes: ``fwd``, and ``fwd+bwd``
(the gradients of features, weight and bias for a fixed upstream gradient).

Before timing, each worker checks its provider against the reference on the benchmark inputs (the class cells'
rows, and in fwd+bwd the gradients) and fails otherwise. Each (preset, provider, mode) runs in its own interpreter
so that its peak memory is its own. Prints the executed FLOPs (2*N*n*m for the N class cells) and the dense FLOPs
(2*B*h*w*C*n*m), the GFLOP/s each provider reaches on the FLOPs it executes (x3 in fwd+bwd: the backward's two
products), and the speed-ups over the reference and the grouped convolution. Writes CSV (and a PNG plot when
matplotlib is installed) to benchmarks/results/.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    LayerPreset, add_flop_rate, answer_worker, check_against_reference, checked_row, op_parser,
    parse_benchmark_args, run_layer_benchmark, timed_step, with_gradients,
)

import ssfdan_ext  # noqa: E402
from ssfdan_ext import IGNORE, reference  # noqa: E402
from ssfdan_ext.ops import routed_conv1x1  # noqa: E402
from ssfdan_ext.testing import street_labels  # noqa: E402

PROVIDERS = ("reference", "grouped", "routed")
MODES = ("fwd", "fwd+bwd")


Preset = LayerPreset  # in_channels: n, out_channels: m (per class)

PRESETS = {
    "tiny": Preset(19, 64, 32, (17, 33), (128, 256)),
    # the paper's widths (DeepLab-v2 features, SS-D layer 1) on 128x256 crops, the size this CPU can run
    "cpu": Preset(19, 2048, 1024, (17, 33), (128, 256)),
    # the paper's widths and 512x1024 crops, for a GPU
    "paper": Preset(19, 2048, 1024, (65, 129), (512, 1024)),
}


def make_case(preset: Preset, device: torch.device, grad: bool = False, seed: int = 0):
    """(features, lf, weight, bias): the same inputs for every provider; the floating ones require grad if ``grad``."""
    gen = torch.Generator().manual_seed(seed)
    C, n, m, B, (h, w) = preset.num_classes, preset.in_channels, preset.out_channels, preset.batch, preset.feature_size
    features = torch.randn(B, n, h, w, generator=gen)
    weight = torch.randn(C * m, n, 1, 1, generator=gen) / n ** 0.5
    bias = torch.randn(C * m, generator=gen)
    features, weight, bias = (t.to(device).requires_grad_(grad) for t in (features, weight, bias))
    return features, feature_labels(preset, device, seed), weight, bias


def feature_labels(preset: Preset, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Street labels mode-downsampled to the feature size: (B, h, w)."""
    labels = street_labels(preset.batch, *preset.label_size, num_classes=preset.num_classes, seed=seed)
    return ssfdan_ext.mode_downsample(labels.to(device), preset.feature_size, preset.num_classes)


def separated(features: torch.Tensor, lf: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The separated input of every class, stacked: (B, n, h, w) -> (B, C*n, h, w), one ``where`` for all classes."""
    B, n, h, w = features.shape
    own = lf.unsqueeze(1) == torch.arange(num_classes, device=lf.device).view(1, -1, 1, 1)
    return torch.where(own.unsqueeze(2), features.unsqueeze(1), 0.0).reshape(B, num_classes * n, h, w)


def runner(provider: str, preset: Preset, features, lf, weight, bias):
    """The provider's forward: rows (B*h*w, m) sorted by class (routed, reference) or the dense (B, C*m, h, w)."""
    C = preset.num_classes
    if provider == "routed":
        return lambda: routed_conv1x1(features, lf, weight, bias, C).rows
    if provider == "reference":
        return lambda: reference.routed_conv1x1(features, lf, weight, bias, C)[0]
    return lambda: F.conv2d(separated(features, lf, C), weight, bias, groups=C)


def class_rows(dense: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The grouped output at the class cells, in the routed rows' order: (B, C*m, h, w) -> (offsets[C], m)."""
    B, Cm, h, w = dense.shape
    C = offsets.numel() - 1
    classes = torch.repeat_interleave(torch.arange(C, device=offsets.device), offsets.diff())
    cells = order[:classes.numel()]
    return dense.view(B, C, Cm // C, h * w)[cells // (h * w), classes, :, cells % (h * w)]


def verify(provider: str, mode: str, preset: Preset, case, device: torch.device) -> float:
    """Check the provider against the reference on the class cells' rows (and their gradients in fwd+bwd)."""
    if provider == "reference":
        return 0.0
    features, lf, weight, bias = case
    inputs = {"features": features, "weight": weight, "bias": bias}
    rows, order, offsets = reference.routed_conv1x1(features, lf, weight, bias, preset.num_classes)
    cut = int(offsets[-1])
    expected = with_gradients(rows[:cut], inputs, mode)
    if provider == "routed":
        got = routed_conv1x1(features, lf, weight, bias, preset.num_classes)
        actual = {**with_gradients(got.rows[:cut], inputs, mode), "order": got.order, "offsets": got.offsets,
                  "ignore rows": got.rows[cut:]}
        expected.update({"order": order, "offsets": offsets, "ignore rows": rows[cut:]})
    else:
        actual = with_gradients(class_rows(runner(provider, preset, *case)(), order, offsets), inputs, mode)
    return check_against_reference(provider, actual, expected, device)


def forward_gflop(preset: Preset, lf: torch.Tensor) -> dict[str, float]:
    """Forward GFLOPs (2 per multiply-add): those of the N class cells, and the dense ones (every cell, C times)."""
    C, n, m = preset.num_classes, preset.in_channels, preset.out_channels
    cells = int((lf != IGNORE).sum())
    return {"cells": cells, "executed": 2 * cells * n * m / 1e9, "dense": 2 * lf.numel() * C * n * m / 1e9}


def preset_flops(preset: Preset) -> tuple[str, float, float]:
    gflop = forward_gflop(preset, feature_labels(preset, torch.device("cpu")))
    what = f"N = {gflop['cells']} class cells (executed 2*N*n*m, dense 2*B*h*w*C*n*m)"
    return what, gflop["executed"], gflop["dense"]


def measure(provider: str, mode: str, preset_name: str, device: torch.device, repeats: int, warmup: int) -> dict:
    preset = PRESETS[preset_name]
    features, lf, weight, bias = case = make_case(preset, device, grad=mode != "fwd")
    err = verify(provider, mode, preset, case, device)  # before timing; raises on a mismatch
    gflop = forward_gflop(preset, lf)
    shape = {"shape": "x".join(map(str, features.shape)), "classes": preset.num_classes, "n": preset.in_channels,
             "m": preset.out_channels, "class_cells": gflop["cells"]}
    row = checked_row(provider, mode, preset_name, device, err, shape,
                      timed_step(runner(provider, preset, *case), [features, weight, bias], mode), repeats, warmup)
    return add_flop_rate(row, gflop["dense" if provider == "grouped" else "executed"], gflop["dense"])


def main(argv: list[str] | None = None) -> list[dict]:
    args, device = parse_benchmark_args(op_parser(__doc__, PROVIDERS, MODES, repeats=7, presets=PRESETS), argv)
    if args.worker:
        return answer_worker(args, device, measure)
    return run_layer_benchmark(Path(__file__), args, device, "routed_conv1x1", "routed_conv1x1", "grouped", PRESETS,
                               preset_flops)


if __name__ == "__main__":
    main()
