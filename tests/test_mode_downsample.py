"""The compiled mode_downsample (CPU and CUDA) against the reference."""
from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

import ssfdan_ext
from ssfdan_ext import IGNORE, reference
from ssfdan_ext.testing import street_labels

SHAPES = [  # (B, H, W, h, w)
    (1, 8, 8, 8, 8),  # identity
    (2, 16, 32, 4, 8),  # divisible
    (1, 37, 53, 5, 7),  # non-divisible, overlapping bins
    (3, 13, 11, 13, 1),
    (1, 9, 17, 1, 1),  # one bin
    (2, 64, 96, 63, 95),  # almost identity
]


def _random_labels(B, H, W, C, seed, ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (B, H, W), generator=gen)
    labels[torch.rand(B, H, W, generator=gen) < ignore_frac] = IGNORE
    return labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_classes", [1, 3, 19, 255])
def test_matches_reference(device, shape, num_classes):
    B, H, W, h, w = shape
    labels = _random_labels(B, H, W, num_classes, seed=B * H * W + num_classes)
    expected = reference.mode_downsample(labels, (h, w), num_classes)
    actual = ssfdan_ext.mode_downsample(labels.to(device), (h, w), num_classes)
    assert actual.device.type == device and actual.dtype == torch.int64
    torch.testing.assert_close(actual.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_lowest_class(device):
    # Two classes per 2x2 bin with two pixels each, in both orders: the lower class id wins.
    labels = torch.tensor([[[3, 1, 2, 2],
                            [1, 3, 0, 2]],
                           [[4, 4, 0, 0],
                            [2, 2, 255, 255]]])
    out = ssfdan_ext.mode_downsample(labels.to(device), (1, 2), 5).cpu()
    assert out.tolist() == [[[1, 2]], [[2, 0]]]
    torch.testing.assert_close(out, reference.mode_downsample(labels, (1, 2), 5), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_street_layout_and_all_ignore(device):
    labels = street_labels(2, 96, 160, num_classes=19, seed=3)
    labels[1] = IGNORE
    for size in [(12, 20), (5, 9), (96, 160)]:
        expected = reference.mode_downsample(labels, size, 19)
        actual = ssfdan_ext.mode_downsample(labels.to(device), size, 19).cpu()
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        assert (actual[1] == IGNORE).all()


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_empty_batch(device):
    base = _random_labels(2, 40, 30, 4, seed=7)
    labels = base.transpose(1, 2)  # (2, 30, 40), non-contiguous
    assert not labels.is_contiguous()
    expected = reference.mode_downsample(labels.contiguous(), (7, 9), 4)
    torch.testing.assert_close(ssfdan_ext.mode_downsample(labels.to(device), (7, 9), 4).cpu(), expected,
                               rtol=0, atol=0)
    empty = torch.zeros(0, 8, 8, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="every dimension non-zero"):  # an empty batch is an error everywhere
        ssfdan_ext.mode_downsample(empty, (2, 2), 3)
    assert torch.ops.ssfdan_ext.mode_downsample(empty, 2, 2, 3).shape == (0, 2, 2)  # the raw kernel copes


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [-1, 3, 254, 256])
def test_rejects_labels_out_of_range(device, bad):
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    labels[0, 3, 2] = bad
    with pytest.raises(ValueError, match=f"labels must lie in \\[0, 3\\) or equal 255.*found {bad}"):
        ssfdan_ext.mode_downsample(labels.to(device), (2, 2), 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        reference.mode_downsample(labels, (2, 2), 3)


@pytest.mark.parametrize("device", DEVICES)
def test_bins_of_one_value(device):
    """Bins that hold one value (most bins of a segmentation map; the CPU kernel settles them without a histogram):
    a class is its own mode, an IGNORE bin stays IGNORE, and a bin of one out-of-range value is still an error."""
    labels = torch.full((2, 24, 40), IGNORE, dtype=torch.int64)
    labels[0, :, :20] = 4  # left half one class, right half IGNORE
    labels[1, :12] = 0
    labels[1, 12:, 7] = 2  # one column of another class in the lower bins
    for size in [(3, 5), (6, 10), (5, 7), (24, 40)]:  # divisible and overlapping bins
        expected = reference.mode_downsample(labels, size, 5)
        actual = ssfdan_ext.mode_downsample(labels.to(device), size, 5).cpu()
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert (expected[0, :, :1] == 4).all() and (expected[0, :, -1:] == IGNORE).all()
    for bad in (5, -3, 254):
        with pytest.raises(ValueError, match=f"found {bad}"):
            ssfdan_ext.mode_downsample(torch.full((1, 8, 8), bad).to(device), (2, 2), 5)
        one_bin = labels[:1].clone()
        one_bin[0, :8, :8] = bad  # one uniform bin of a bad value among valid ones
        with pytest.raises(ValueError, match=f"found {bad}"):
            ssfdan_ext.mode_downsample(one_bin.to(device), (3, 5), 5)


@pytest.mark.parametrize("fn", [ssfdan_ext.mode_downsample, reference.mode_downsample])
def test_rejects_bad_arguments(fn):
    labels = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must be int64, got torch.int32"):
        fn(labels.int(), (2, 2), 3)
    with pytest.raises(ValueError, match=r"labels must be \(B, H, W\)"):
        fn(labels[0], (2, 2), 3)
    with pytest.raises(ValueError, match="must not exceed the label size"):
        fn(labels, (5, 2), 3)
    with pytest.raises(ValueError, match="size must be positive"):
        fn(labels, (0, 2), 3)
    with pytest.raises(TypeError, match="pair of ints"):
        fn(labels, 2, 3)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, 255\]"):
        fn(labels, (2, 2), 0)
    with pytest.raises(ValueError, match=r"num_classes must be in \[1, 255\]"):
        fn(labels, (2, 2), 256)


def test_cpp_checks_guard_direct_calls():
    op = torch.ops.ssfdan_ext.mode_downsample
    with pytest.raises(ValueError, match="must not exceed"):
        op(torch.zeros(1, 2, 2, dtype=torch.int64), 3, 1, 2)
    with pytest.raises(TypeError, match="int64"):
        op(torch.zeros(1, 2, 2, dtype=torch.int32), 1, 1, 2)


def sample_inputs(device="cpu"):
    """(labels, out_h, out_w, num_classes) cases of the op: random labels with IGNORE, a street scene, one class."""
    return [(_random_labels(2, 12, 10, 5, seed=1).to(device), 5, 3, 5),
            (street_labels(1, 64, 128, num_classes=19).to(device), 9, 17, 19),
            (_random_labels(1, 7, 9, 1, seed=2).to(device), 7, 2, 1)]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_reference_on_sample_inputs(device):
    for labels, out_h, out_w, C in sample_inputs(device):
        torch.library.opcheck(torch.ops.ssfdan_ext.mode_downsample.default, (labels, out_h, out_w, C))
        expected = reference.mode_downsample(labels.cpu(), (out_h, out_w), C)
        assert torch.equal(ssfdan_ext.mode_downsample(labels, (out_h, out_w), C).cpu(), expected)
