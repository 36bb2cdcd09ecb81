"""One whole SSF-DAN training iteration (docs/semantics.md section 5) as ssfdan-train runs it, and the discriminator's
share.

    python benchmarks/bench_iteration.py --preset cpu                       # small segmenter, this CPU
    python benchmarks/bench_iteration.py --preset cpu-paperwidth --rows none global ssd-fused --repeats 3
    python benchmarks/bench_iteration.py --preset paper --device cuda --amp off bf16

Each row builds the driver's own ``Trainer`` (``ssfdan_ext/train/loop.py``) from the embedded synthetic
configuration with the preset's overrides and times ``Trainer.step``: the source forward and segmentation loss,
the target forward, ``confidence_select`` on both predictions, the generator's adversarial pass and backward, the
discriminator's source and target passes and backward, and both optimiser steps. The data loaders are replaced by
one generated batch per domain (the synthetic scenes at the preset's sizes, already on the device), so data
loading is not timed. Iterations run with rho at its upper bound (0.8), the steady state of the progressive
schedule. The networks are untrained, so two stand-ins keep their values like a trained run's (the work timed is
the same): frozen batch-norm statistics measured on the source batch (ImageNet weights' role), and by default
(``--labels street``) a constant added to the segmenter's logits that makes its predictions the scenes' label
layouts (an untrained segmenter predicts one or two classes, and the discriminators' work depends on the layout).

Columns: ``ms_per_iter`` (median over ``--repeats`` after ``--warmup``), ``x_none`` (relative to
``adaptation=none`` in the same run and precision), ``disc_share`` (the discriminator's passes, forward and
backward, as a fraction of the iteration; ``disc_passes`` counts them: the generator's and the discriminator
step's, two for the SS-D when the domains' features share a size, three otherwise) and ``disc_share_opt`` (the same plus its Adam step), both from one
``torch.profiler`` trace of an extra iteration: the passes are ``record_function`` ranges opened by module hooks,
their backward the autograd nodes they created (matched by sequence number), the optimiser step PyTorch's own
``Optimizer.step#Adam.step`` range (median over ``--profiled`` iterations). On the CPU the times are the ranges'
wall times and the fraction is of the profiled iteration; on a GPU they are kernel times and the fraction is of
all the iteration's kernel time. ``load_avg`` is the machine's 1-minute load when the row finished (timings on a
shared machine move with it).
``peak_mb``: CUDA ``max_memory_allocated`` above the level before the first iteration, or on the CPU the growth
of the process's peak RSS (one interpreter per row). float32 runs keep PyTorch's default TF32 settings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    RESULTS, PeakMemory, plot_bars, print_table, run_worker, synchronize, write_csv,
)

from torch import Tensor  # noqa: E402

from ssfdan_ext import IGNORE, mode_downsample  # noqa: E402
from ssfdan_ext.train.config import load_config  # noqa: E402
from ssfdan_ext.train.loop import Trainer  # noqa: E402

ROWS = ("none", "global", "ssd-reference", "ssd-grouped", "ssd-fused")
AMPS = ("off", "bf16")
_PAPER_DISC = {"disc_channels": [1024, 512, 256, 128], "disc_strides": [1, 2, 2, 2, 2]}
# lr: the untrained ResNet would diverge within a few steps at the paper's 2.5e-4 (the timed work is the same).
_DEEPLAB = {"model": "deeplabv2_resnet101", "model_kwargs": {}, "num_classes": 19, "batch_size": 1,
            "lr": 1e-7, "head_lr_mult": 10.0, "threads": 0, **_PAPER_DISC}
PRESETS = {
    # configs/synthetic.yaml as it is: the small segmenter, 32x64 scenes, batch 4, 13 classes, SS-D 64-32-32-16
    "cpu": {},
    # the paper's networks (DeepLab-v2 ResNet-101, n = 2048; SS-D 1024-512-256-128) on small crops
    "cpu-paperwidth": {**_DEEPLAB, "source_size": [128, 256], "target_size": [128, 256]},
    # the paper's GTA5 -> Cityscapes sizes (the GPU run)
    "paper": {**_DEEPLAB, "source_size": [720, 1280], "target_size": [512, 1024]},
}
ITERATIONS = 1000  # the schedule's length; steps run at it >= 800, where rho = rho_upper = 0.8


def build_trainer(preset: str, row: str, amp: str, device: str, threads: int, out_dir: str,
                  labels: str = "street") -> Trainer:
    """The driver's Trainer for one row, its loaders replaced by one fixed batch per domain on the device.

    ``labels="street"`` adds to the segmenter's logits a constant that makes its argmax the scene's label map (one
    elementwise add per forward): an untrained segmenter predicts one or two classes almost everywhere, while the
    discriminators' work (the fused backend's above all) depends on how a trained one's predictions are laid out.
    ``labels="model"`` keeps the untrained segmenter's own predictions.
    """
    adaptation, _, backend = row.partition("-")
    overrides = {**PRESETS[preset], "adaptation": adaptation, "disc_backend": backend or "auto", "amp": amp,
                 "device": device, "out_dir": out_dir, "iterations": ITERATIONS, "val_every": 0,
                 "checkpoint_every": 0, "tensorboard": False, "progress": False, "num_workers": 0, "val_length": 1}
    if threads:
        overrides["threads"] = threads
    cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    cfg.synthetic_length = cfg.batch_size  # render one batch per domain
    trainer = Trainer(cfg)

    def batch(dataset):
        items = [dataset[i] for i in range(cfg.batch_size)]
        return (torch.stack([item[0] for item in items]).to(trainer.device),
                torch.stack([item[1] for item in items]).to(trainer.device), [item[2] for item in items])

    batches = [batch(trainer.source)] + ([batch(trainer.target)] if trainer.target_iter is not None else [])
    _calibrate_frozen_statistics(trainer.model, batches[0][0])
    trainer.source_iter = itertools.repeat(batches[0])
    if trainer.target_iter is not None:
        trainer.target_iter = itertools.repeat(batches[1])
    if labels == "street":
        priors = {id(images): _prior(trainer.model, images, targets, cfg.num_classes)
                  for images, targets, _ in batches}

        def add_prior(module, args, output):
            prior = priors.get(id(args[0]))
            return output if prior is None else (output[0] + prior.to(output[0].dtype), *output[1:])

        trainer.model.register_forward_hook(add_prior)
    return trainer


@torch.no_grad()
def _calibrate_frozen_statistics(model: torch.nn.Module, images: Tensor) -> None:
    """Set each frozen batch norm's statistics to those of its input on ``images``, layer after layer.

    Without ImageNet weights a ResNet's frozen batch norms are identities and its activations grow through the
    residual blocks until the first SGD step overflows; statistics measured on the data keep every activation
    normalised, as pretrained weights do. The computation timed is the same.
    """
    def measure(module, args):
        x = args[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3), unbiased=False))

    frozen = [m for m in model.modules() if hasattr(m, "running_var")
              and not isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]  # trained batch norms renormalise
    handles = [m.register_forward_pre_hook(measure) for m in frozen]
    try:
        if frozen:
            model(images)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _prior(model: torch.nn.Module, images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """A logit offset larger than the model's logit spread on the classes of ``labels`` (0 on IGNORE cells)."""
    logits = model(images)[0].float()
    spread = float((logits.amax(1) - logits.amin(1)).max()) + 1.0
    cells = mode_downsample(labels, tuple(logits.shape[-2:]), num_classes)
    one_hot = torch.zeros_like(logits).scatter_(1, cells.clamp(max=num_classes - 1).unsqueeze(1), 1.0)
    return 2 * spread * one_hot * (cells != IGNORE).unsqueeze(1)


class DiscriminatorRanges:
    """Module hooks that put each discriminator pass in a ``record_function`` range and collect the autograd nodes
    the pass created (the graph from its logits back to, not into, its input features)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.nodes: set[tuple[str, int]] = set()
        self.passes = 0
        self._open: list = []
        self._handles = [h for m in modules for h in (m.register_forward_pre_hook(self._pre),
                                                      m.register_forward_hook(self._post))]

    def _pre(self, module, args) -> None:
        self._floor = max((a.grad_fn._sequence_nr() for a in args if isinstance(a, torch.Tensor)
                           and a.grad_fn is not None), default=-1)
        self._open.append(record_function("disc.forward").__enter__())

    def _post(self, module, args, output) -> None:
        self._open.pop().__exit__(None, None, None)
        self.passes += 1
        logits = output.logits if hasattr(output, "logits") else output  # the soft discriminator's is a tensor
        stack = [logits.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or "AccumulateGrad" in node.name() or node._sequence_nr() <= self._floor:
                continue
            key = (node.name(), node._sequence_nr())
            if key not in self.nodes:
                self.nodes.add(key)
                stack.extend(fn for fn, _ in node.next_functions)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def discriminator_share(trainer: Trainer, it: int) -> tuple[float, float, int]:
    """(passes share, passes + optimiser share, passes seen) of the profiled iteration ``it``."""
    modules = [m for m in (trainer.discs.ssd, trainer.discs.soft, trainer.discs.glob) if m is not None]
    if not modules:
        return 0.0, 0.0, 0
    cuda = trainer.device.type == "cuda"
    ranges = DiscriminatorRanges(modules)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=activities) as prof:
            with record_function("bench.iteration"):
                trainer.step(it)
            synchronize(trainer.device)
    finally:
        ranges.remove()
    events = prof.events()
    time_of = (lambda e: e.device_time_total) if cuda else (lambda e: e.cpu_time_total)
    prefix = "autograd::engine::evaluate_function: "
    forward = sum(time_of(e) for e in events if e.name == "disc.forward")
    backward = sum(time_of(e) for e in events if e.name.startswith(prefix)
                   and (e.name[len(prefix):], e.sequence_nr) in ranges.nodes)
    optimiser = sum(time_of(e) for e in events if e.name == "Optimizer.step#Adam.step")
    if cuda:  # every kernel is attributed to exactly one op: their sum is the GPU's busy time
        total = sum(k.duration for e in events for k in e.kernels)
    else:
        total = sum(e.cpu_time_total for e in events if e.name == "bench.iteration")
    return (forward + backward) / total, (forward + backward + optimiser) / total, ranges.passes


def measure(preset: str, row: str, amp: str, device: torch.device, repeats: int, warmup: int,
            threads: int, labels: str = "street", profiled: int = 3) -> dict:
    # PyTorch's defaults, recorded: TF32 rounds float32 convolutions (cuDNN) and matmuls on Ampere and newer GPUs.
    tf32 = (f"cudnn={int(torch.backends.cudnn.allow_tf32)},"
            f"matmul={int(torch.backends.cuda.matmul.allow_tf32)}")
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = build_trainer(preset, row, amp, device.type, threads, out_dir, labels)
        try:
            it = int(0.8 * ITERATIONS)
            times = []
            with PeakMemory(device) as peak:
                for i in range(warmup + repeats):
                    synchronize(device)
                    start = time.perf_counter()
                    trainer.step(it + i)
                    synchronize(device)
                    if i >= warmup:
                        times.append((time.perf_counter() - start) * 1e3)
            # The median share over a few profiled iterations (a shared machine's noise moves single ones).
            shares = [discriminator_share(trainer, it + warmup + repeats + i) for i in range(max(1, profiled))]
            share, share_opt = (statistics.median(p[k] for p in shares) for k in range(2))
            passes = shares[0][2]
            classes = _target_classes(trainer)
            threads = torch.get_num_threads()
        finally:
            trainer.close()
    return {"preset": preset, "device": device.type, "amp": amp, "row": row,
            "ms_per_iter": round(statistics.median(times), 2),
            "disc_share": round(share, 4), "disc_share_opt": round(share_opt, 4), "disc_passes": passes,
            "peak_mb": round(peak.mb, 1), "labels": labels, "target_classes": classes, "repeats": repeats,
            "warmup": warmup, "profiled": max(1, profiled), "threads": threads,
            "load_avg": round(os.getloadavg()[0], 2), "tf32": tf32, "torch": torch.__version__}


@torch.no_grad()
def _target_classes(trainer: Trainer) -> int:
    """Classes present in the target prediction (what the class-wise discriminator separates)."""
    images = next(trainer.target_iter if trainer.target_iter is not None else trainer.source_iter)[0]
    trainer.model.eval()
    labels = trainer.model(images)[0].argmax(1)
    trainer.model.train()
    return int(torch.unique(labels).numel())


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the preset's setting)")
    parser.add_argument("--profiled", type=int, default=3, help="profiled iterations (the median share is reported)")
    parser.add_argument("--labels", choices=("street", "model"), default="street",
                        help="street: predictions laid out like the scene's labels (a trained segmenter); model: "
                        "the untrained segmenter's own")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=None,
                        help="default: every row (cpu-paperwidth: none, global, ssd-fused)")
    parser.add_argument("--amp", nargs="+", choices=AMPS, default=list(AMPS),
                        help="off: float32 (PyTorch's default TF32 settings); bf16: bfloat16 autocast")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows_wanted = args.rows or (["none", "global", "ssd-fused"] if args.preset == "cpu-paperwidth" else list(ROWS))
    if args.worker:
        row = measure(args.preset, rows_wanted[0], args.amp[0], device, args.repeats, args.warmup, args.threads,
                      args.labels, args.profiled)
        print(json.dumps(row))
        return [row]
    print(f"training iteration benchmark, preset {args.preset} {PRESETS[args.preset] or '(configs/synthetic.yaml)'}"
          f", device {device}, median of {args.repeats} (after {args.warmup} warm-up)", flush=True)
    rows = []
    common = ["--preset", args.preset, "--device", args.device, "--repeats", str(args.repeats), "--warmup",
              str(args.warmup), "--threads", str(args.threads), "--labels", args.labels, "--profiled",
              str(args.profiled)]
    for amp in args.amp:
        for name in rows_wanted:
            row = run_worker(Path(__file__), [*common, "--rows", name, "--amp", amp])
            print(f"  {amp:>4} {name:>13}: {row['ms_per_iter']:10.2f} ms/iter, discriminator "
                  f"{100 * row['disc_share']:5.1f}% ({100 * row['disc_share_opt']:5.1f}% with Adam), peak "
                  f"{row['peak_mb']:8.1f} MB", flush=True)
            rows.append(row)
    for row in rows:
        base = next((r for r in rows if r["row"] == "none" and r["amp"] == row["amp"]), None)
        row["x_none"] = round(row["ms_per_iter"] / base["ms_per_iter"], 2) if base else ""
    print()
    print_table(rows, ["amp", "row", "ms_per_iter", "x_none", "disc_share", "disc_share_opt", "peak_mb",
                       "target_classes"])
    stem = f"bench_iteration_{args.preset}_{device.type}" + ("" if args.labels == "street" else "_model_labels")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / f"{stem}.csv")
    title = f"training iteration, {args.preset} ({device.type})"
    plotted = plot_bars(rows, args.out / f"{stem}.png", title, group="row", series="amp", value="ms_per_iter")
    plot_bars(rows, args.out / f"{stem}_share.png", f"discriminator + Adam share, {args.preset} ({device.type})",
              group="row", series="amp", value="disc_share_opt")
    print(f"\nwrote {args.out / (stem + '.csv')}" + (f", {stem}.png and {stem}_share.png" if plotted else
                                                    " (no matplotlib: no plot)"))
    return rows


if __name__ == "__main__":
    main()
