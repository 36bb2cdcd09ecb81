"""sparse_conv3x3 (one SS-D 3x3 layer on its explicit pairs) against the pair-by-pair reference and the dense grouped
convolution of the same layer.

    python benchmarks/bench_sparse_conv3x3.py --preset cpu                      # this machine's CPU
    python benchmarks/bench_sparse_conv3x3.py --preset paper --device cuda

The layer is the SS-D's layer 2 on a real rulebook: street labels mode-downsampled to the feature size and to the
SS-D output size, ``rb = sparse_ssd_rulebook(lf, lo, C, (2, 2, 2, 2))``, the pairs ``rb.taps[0]`` /
``rb.offsets[0]``, and a random value table of the N = B*h*w layer-1 rows, C constant rows and the zero row.
Providers: ``sparse`` (ssfdan_ext.ops.sparse_conv3x3), ``reference`` (ssfdan_ext.reference.sparse_conv3x3, pair by
pair) and ``dense`` (``F.conv2d`` with stride 2, padding 1 and groups=C on the same layer's dense input
(B, C*m_in, h, w): each class's table row at its explicit cells and its constant row elsewhere, built untimed).
Modes: ``fwd``, and ``fwd+bwd`` (the gradients of the input, weight and bias for a fixed upstream gradient).

Before timing, each worker checks its provider against the reference on the benchmark inputs (the pairs' outputs:
the dense output at each pair's cell; in fwd+bwd also the gradients) and fails otherwise. Each (preset, provider,
mode) runs in its own interpreter so that its peak memory is its own. Prints the pairs P, the sparse FLOPs
(2*P*9*m_in*m_out) and the dense FLOPs (every cell of every class), the GFLOP/s each provider reaches on the FLOPs
it executes (x3 in fwd+bwd) and the speed-ups over the reference and the dense convolution. Writes CSV (and a PNG
plot when matplotlib is installed) to benchmarks/results/.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    LayerPreset, add_flop_rate, answer_worker, check_against_reference, checked_row, op_parser,
    parse_benchmark_args, run_layer_benchmark, timed_step, with_gradients,
)

from ssfdan_ext import mode_downsample, reference  # noqa: E402
from ssfdan_ext.geometry import layer_sizes, output_size  # noqa: E402
from ssfdan_ext.ops import Rulebook, sparse_conv3x3, sparse_ssd_rulebook  # noqa: E402
from ssfdan_ext.testing import street_labels  # noqa: E402

PROVIDERS = ("reference", "dense", "sparse")
MODES = ("fwd", "fwd+bwd")
STRIDES = (1, 2, 2, 2, 2)  # the SS-D's; layer 2 (the one timed) has stride 2


Preset = LayerPreset  # in_channels: m_in, out_channels: m_out (per class)

PRESETS = {
    "tiny": Preset(19, 32, 16, (17, 33), (128, 256)),
    # the paper's layer-2 widths on 128x256 crops (features 17x33), the size this CPU can run
    "cpu": Preset(19, 1024, 512, (17, 33), (128, 256)),
    # the paper's widths and 512x1024 crops, for a GPU
    "paper": Preset(19, 1024, 512, (65, 129), (512, 1024)),
}


@dataclass
class Case:
    table: torch.Tensor  # (N + C + 1, m_in), the last row zero
    taps: torch.Tensor  # (P, 9)
    offsets: torch.Tensor  # (C + 1,)
    weight: torch.Tensor  # (C*m_out, m_in, 3, 3)
    bias: torch.Tensor  # (C*m_out,)
    rows: torch.Tensor  # (B, C, h, w): the table row each class reads at each cell (the dense layout's source)


def layer_rulebook(preset: Preset, device: torch.device, seed: int = 0) -> Rulebook:
    """The SS-D rulebook of street labels mode-downsampled to the feature size and to the SS-D output size."""
    C, (h, w) = preset.num_classes, preset.feature_size
    labels = street_labels(preset.batch, *preset.label_size, num_classes=C, seed=seed).to(device)
    return sparse_ssd_rulebook(mode_downsample(labels, (h, w), C),
                               mode_downsample(labels, output_size(h, w, STRIDES), C), C, STRIDES[1:])


def make_case(preset: Preset, device: torch.device, grad: bool = False, seed: int = 0) -> Case:
    """Layer 2 of the SS-D on a real rulebook; the floating inputs require grad if ``grad``."""
    C, B, (h, w) = preset.num_classes, preset.batch, preset.feature_size
    rb = layer_rulebook(preset, device, seed)
    N = rb.lf_masked.numel()
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(N + C + 1, preset.in_channels, generator=gen)
    table[-1] = 0
    weight = torch.randn(C * preset.out_channels, preset.in_channels, 3, 3, generator=gen)
    weight /= (9 * preset.in_channels) ** 0.5
    bias = torch.randn(C * preset.out_channels, generator=gen)
    table, weight, bias = (t.to(device).requires_grad_(grad) for t in (table, weight, bias))
    # Layer 1's rows are the cells sorted by class (stable, IGNORE last): class c reads row r of its own cell
    # order[r], and its constant row N + c at every other cell.
    order = torch.sort(rb.lf_masked.reshape(-1).clamp(max=C), stable=True).indices
    row_of_cell = torch.empty_like(order)
    row_of_cell[order] = torch.arange(N, device=device)
    classes = torch.arange(C, device=device).view(1, C, 1, 1)
    rows = torch.where(rb.lf_masked.unsqueeze(1) == classes, row_of_cell.view(B, 1, h, w), N + classes)
    return Case(table, rb.taps[0], rb.offsets[0], weight, bias, rows)


def dense_input(case: Case) -> torch.Tensor:
    """The layer's dense input (B, C*m_in, h, w): class c's channels hold its table row at every cell."""
    B, C, h, w = case.rows.shape
    return case.table[case.rows].permute(0, 1, 4, 2, 3).reshape(B, C * case.table.shape[1], h, w)


def dense_conv(x: torch.Tensor, case: Case) -> torch.Tensor:
    return F.conv2d(x, case.weight, case.bias, stride=2, padding=1, groups=case.rows.shape[1])


def runner(provider: str, case: Case, x: torch.Tensor | None = None):
    """The provider's forward: (P, m_out) pair outputs, or the dense (B, C*m_out, h', w') output of input ``x``."""
    if provider == "sparse":
        return lambda: sparse_conv3x3(case.table, case.taps, case.offsets, case.weight, case.bias)
    if provider == "reference":
        return lambda: reference.sparse_conv3x3(case.table, case.taps, case.offsets, case.weight, case.bias)
    return lambda: dense_conv(x, case)


def step(provider: str, mode: str, case: Case):
    """What a mode times for the provider (see ``timed_step``); the dense input is built here, untimed, as a tensor
    of its own, as the previous dense layer would leave it."""
    if provider == "dense":
        x = dense_input(case).detach().requires_grad_(mode != "fwd")
        return timed_step(runner(provider, case, x), [x, case.weight, case.bias], mode)
    return timed_step(runner(provider, case), [case.table, case.weight, case.bias], mode)


def pair_cells(case: Case) -> torch.Tensor:
    """For each pair, a flat index ``(b*C + c)*h'*w' + q`` of the dense output whose nine taps read the same table
    rows (its own cell, or one that computes the same value); raises where a pair has no such cell."""
    B, C, h, w = case.rows.shape
    oh, ow = layer_sizes(h, w, STRIDES)[1]
    padded = F.pad(case.rows, (1, 1, 1, 1), value=case.table.shape[0] - 1)  # the padding reads the zero row
    taps = [padded[..., dy:dy + 2 * oh - 1:2, dx:dx + 2 * ow - 1:2] for dy in range(3) for dx in range(3)]
    cells = torch.stack(taps, -1).reshape(-1, 9)  # tap 3*ky + kx of each (b, c, y', x'), as the rulebook's
    where = {tuple(t): i for i, t in enumerate(cells.tolist())}
    try:
        return torch.tensor([where[tuple(t)] for t in case.taps.tolist()], device=case.taps.device)
    except KeyError as missing:
        raise RuntimeError(f"dense: no output cell reads the taps {missing} of a pair") from None


def verify(provider: str, mode: str, case: Case, device: torch.device) -> float:
    """Check the provider against the reference on the pairs' outputs (and the gradients in fwd+bwd)."""
    inputs = {"table": case.table, "weight": case.weight, "bias": case.bias}
    if provider == "reference":
        return 0.0
    expected = with_gradients(runner("reference", case)(), inputs, mode)
    if provider == "sparse":
        actual = with_gradients(runner(provider, case)(), inputs, mode)
    else:  # the dense output (from the table, so that the table's gradient flows) at the pairs' cells
        B, C, m = case.rows.shape[0], case.rows.shape[1], case.bias.numel() // case.rows.shape[1]
        out = dense_conv(dense_input(case), case)
        at_pairs = out.view(B, C, m, -1).permute(0, 1, 3, 2).reshape(-1, m)[pair_cells(case)]
        actual = with_gradients(at_pairs, inputs, mode)
    for values in (expected, actual):  # the zero row is a constant: no gradient on any backend of the library
        if "grad table" in values:
            values["grad table"] = values["grad table"][:-1]
    return check_against_reference(provider, actual, expected, device)


def forward_gflop(preset: Preset, pairs: int) -> dict[str, float]:
    """Forward GFLOPs (2 per multiply-add) on the P pairs and on every output cell of every class."""
    oh, ow = layer_sizes(*preset.feature_size, STRIDES)[1]
    per_cell = 2 * 9 * preset.in_channels * preset.out_channels
    dense_cells = preset.batch * preset.num_classes * oh * ow
    return {"pairs": pairs, "sparse": pairs * per_cell / 1e9, "dense": dense_cells * per_cell / 1e9}


def preset_flops(preset: Preset) -> tuple[str, float, float]:
    gflop = forward_gflop(preset, layer_rulebook(preset, torch.device("cpu")).taps[0].shape[0])
    return f"P = {gflop['pairs']} pairs (executed 2*P*9*m_in*m_out)", gflop["sparse"], gflop["dense"]


def measure(provider: str, mode: str, preset_name: str, device: torch.device, repeats: int, warmup: int) -> dict:
    preset = PRESETS[preset_name]
    case = make_case(preset, device, grad=mode != "fwd")
    err = verify(provider, mode, case, device)  # before timing; raises on a mismatch
    gflop = forward_gflop(preset, case.taps.shape[0])
    B, C, h, w = case.rows.shape
    layer = {"shape": f"{B}x{C}*{preset.in_channels}x{h}x{w}", "classes": C, "m_in": preset.in_channels,
             "m_out": preset.out_channels, "pairs": gflop["pairs"]}
    row = checked_row(provider, mode, preset_name, device, err, layer, step(provider, mode, case), repeats, warmup)
    return add_flop_rate(row, gflop["dense" if provider == "dense" else "sparse"], gflop["dense"])


def main(argv: list[str] | None = None) -> list[dict]:
    args, device = parse_benchmark_args(op_parser(__doc__, PROVIDERS, MODES, repeats=7, presets=PRESETS), argv)
    if args.worker:
        return answer_worker(args, device, measure)
    return run_layer_benchmark(Path(__file__), args, device, "sparse_conv3x3", "sparse_conv3x3, SS-D layer 2", "dense",
                               PRESETS, preset_flops, ["pairs"])


if __name__ == "__main__":
    main()
