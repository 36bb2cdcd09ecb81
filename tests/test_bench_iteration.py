"""benchmarks/bench_iteration.py: the training-iteration benchmark writes its rows, and its profile attributes the
discriminator's backward to the discriminator only."""
from __future__ import annotations

import csv

import pytest
import torch
from conftest import load_script

from ssfdan_ext import SeparatedDiscriminator
from ssfdan_ext.testing import street_labels


def _module():
    return load_script("benchmarks/bench_iteration.py")


@pytest.mark.slow
def test_cpu_preset_writes_every_row_and_column(tmp_path, capsys):
    bench = _module()
    rows = ["none", "global", "ssd-fused"]
    bench.main(["--preset", "cpu", "--device", "cpu", "--rows", *rows, "--amp", "off", "bf16", "--repeats", "1",
                "--warmup", "0", "--profiled", "1", "--out", str(tmp_path)])
    with open(tmp_path / "bench_iteration_cpu_cpu.csv") as f:
        table = list(csv.DictReader(f))
    for plot in ("bench_iteration_cpu_cpu.png", "bench_iteration_cpu_cpu_share.png"):
        assert (tmp_path / plot).exists(), plot
    assert [(r["amp"], r["row"]) for r in table] == [(a, r) for a in ("off", "bf16") for r in rows]
    for column in ("preset", "device", "amp", "row", "ms_per_iter", "x_none", "disc_share", "disc_share_opt",
                   "disc_passes", "peak_mb", "labels", "target_classes", "repeats", "warmup", "profiled", "threads",
                   "load_avg", "tf32", "torch"):
        assert column in table[0], column
    for r in table:
        assert float(r["ms_per_iter"]) > 0 and float(r["peak_mb"]) >= 0
        share, with_opt = float(r["disc_share"]), float(r["disc_share_opt"])
        if r["row"] == "none":
            assert share == with_opt == 0 and r["disc_passes"] == "0" and float(r["x_none"]) == 1
        else:
            # The generator's pass on the target, then the discriminator's on the source and the target: the SS-D's
            # step runs both domains in one forward (same sizes here), the global discriminator's in two.
            passes = "2" if r["row"].startswith("ssd") else "3"
            assert r["disc_passes"] == passes and 0 < share < with_opt < 1
        assert int(r["target_classes"]) > 2  # the predictions are laid out like street scenes
    assert "ms_per_iter" in capsys.readouterr().out


def test_ranges_hold_the_discriminator_nodes_only():
    bench = _module()
    torch.manual_seed(0)
    segmenter = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    disc = SeparatedDiscriminator(3, 4, (5, 4, 3, 2), backend="reference")
    image, labels = torch.randn(1, 3, 8, 8), street_labels(1, 8, 8, num_classes=3)

    def graph(output):
        nodes, stack = set(), [output.logits.grad_fn]
        while stack:
            node = stack.pop()
            if node is not None and "AccumulateGrad" not in node.name():
                key = (node.name(), node._sequence_nr())
                if key not in nodes:
                    nodes.add(key)
                    stack.extend(fn for fn, _ in node.next_functions)
        return nodes

    ranges = bench.DiscriminatorRanges([disc])
    features = segmenter(image)
    attached = graph(disc(features, labels))  # the generator's pass: its graph continues into the segmenter
    assert len(ranges.nodes) > 0 and ranges.passes == 1
    segmenter_nodes = graph(type("Out", (), {"logits": features})())
    assert not ranges.nodes & segmenter_nodes and ranges.nodes == attached - segmenter_nodes
    ranges.remove()
    disc(features.detach(), labels)
    assert ranges.passes == 1  # hooks removed
