"""sparse_ssd_rulebook: the compiled rulebook against the set-by-set reference, its errors, and the registered op
(opcheck, with the data-dependent pair counts as unbacked sizes)."""
from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, downsampled_maps, label_layout

from ssfdan_ext import reference
from ssfdan_ext.ops import sparse_ssd_rulebook


@pytest.mark.parametrize("device", DEVICES)

@pytest.mark.parametrize("kind,C", [("random", 4), ("street", 19), ("checkerboard", 5), ("all_ignore", 3)])

@pytest.mark.parametrize("strides", [(1, 2, 2, 2, 2), (1, 1, 1, 1, 1), (1, 2, 1, 1, 2)])

@pytest.mark.parametrize("h,w", [(9, 13), (2, 3)])
def test_rulebook_matches_the_explicit_sets(device, kind, C, strides, h, w):
    labels = label_layout(kind, 2, 4 * h, 4 * w, C, seed=h)
    lf, lo = downsampled_maps(labels, C, h, w, strides)
    rb = sparse_ssd_rulebook(lf.to(device), lo.to(device), C, strides[1:])
    lf_masked, taps, offsets, out_index = reference.sparse_ssd_rulebook(lf, lo, C, strides[1:])  # set by set
    assert torch.equal(rb.lf_masked.cpu(), lf_masked)
    for layer in range(4):
        assert torch.equal(rb.taps[layer].cpu(), taps[layer]), f"taps of layer {layer + 2}"
        assert torch.equal(rb.offsets[layer].cpu(), offsets[layer]), f"offsets of layer {layer + 2}"
    assert torch.equal(rb.out_index.cpu(), out_index)

@pytest.mark.parametrize("kwargs,match", [
    ({"strides": [2, 2, 2]}, r"strides must be 4 ints \(layers 2-5\)"),
    ({"strides": [2, 3, 2, 2]}, "each 1 or 2"),
    ({"num_classes": 0}, r"num_classes must be in \[1, 255\]"),
    ({"lo": torch.zeros(1, 3, 3, dtype=torch.long)}, r"output labels must be \(1, 1, 1\)"),
    ({"lf": torch.zeros(1, 8, 8)}, "lf must be int64"),
    ({"lo": torch.full((1, 1, 1), 3)}, r"lo must lie in \[0, 3\)"),
])
def test_rulebook_errors(kwargs, match):
    args = {"lf": torch.zeros(1, 8, 8, dtype=torch.long), "lo": torch.zeros(1, 1, 1, dtype=torch.long),
            "num_classes": 3, "strides": [2, 2, 2, 2], **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        sparse_ssd_rulebook(args["lf"], args["lo"], args["num_classes"], args["strides"])


def sample_inputs(device="cpu"):
    """(lf, lo, num_classes, strides) cases for the op: random blocks, a street scene, nothing labelled."""
    cases = []
    for kind, C, h, w, strides in [("random", 3, 6, 5, (1, 2, 1, 2, 1)), ("street", 19, 9, 13, (1, 2, 2, 2, 2)),
                                   ("all_ignore", 2, 4, 4, (1, 1, 1, 1, 1))]:
        lf, lo = downsampled_maps(label_layout(kind, 2, 4 * h, 4 * w, C, seed=h), C, h, w, strides)
        cases.append((lf.to(device), lo.to(device), C, list(strides[1:])))
    return cases


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for args in sample_inputs(device):
        torch.library.opcheck(torch.ops.ssfdan_ext.sparse_ssd_rulebook, args)


def test_sample_inputs_match_the_reference():
    for lf, lo, C, strides in sample_inputs():
        rb = sparse_ssd_rulebook(lf, lo, C, strides)
        expected = reference.sparse_ssd_rulebook(lf, lo, C, strides)
        assert torch.equal(rb.lf_masked, expected[0]) and torch.equal(rb.out_index, expected[3])
        assert all(torch.equal(a, b) for a, b in zip(rb.taps, expected[1]))


@pytest.mark.parametrize("kind,C,strides,h,w,B", [("random", 4, (1, 2, 2, 2, 2), 9, 13, (1, 2)),
                                                  ("street", 19, (1, 2, 1, 1, 2), 9, 13, (2, 1)),
                                                  ("checkerboard", 5, (1, 1, 1, 1, 1), 6, 7, (1, 1)),
                                                  ("all_ignore", 3, (1, 2, 2, 2, 2), 5, 5, (1, 1))])
def test_concatenated_rulebooks_equal_the_rulebook_of_the_concatenated_maps(kind, C, strides, h, w, B):
    from ssfdan_ext.ops.sparse_ssd_rulebook import concat_rulebooks

    maps = [downsampled_maps(label_layout(k, b, 4 * h, 4 * w, C, seed=s), C, h, w, strides)
            for k, b, s in ((kind, B[0], 1), ("random" if kind != "all_ignore" else kind, B[1], 2))]
    a, b = (sparse_ssd_rulebook(lf, lo, C, strides[1:]) for lf, lo in maps)
    joint = sparse_ssd_rulebook(torch.cat([maps[0][0], maps[1][0]]), torch.cat([maps[0][1], maps[1][1]]), C,
                                strides[1:])
    got = concat_rulebooks(a, b, C)
    assert torch.equal(got.lf_masked, joint.lf_masked) and torch.equal(got.out_index, joint.out_index)
    for layer in range(4):
        assert torch.equal(got.taps[layer], joint.taps[layer]), f"taps of layer {layer + 2}"
        assert torch.equal(got.offsets[layer], joint.offsets[layer]), f"offsets of layer {layer + 2}"
