"""The naive definitions of the fused backend's ops in ssfdan_ext.reference equal the compiled ops."""
from __future__ import annotations

import pytest
import torch

from ssfdan_ext import IGNORE, mode_downsample, reference
from ssfdan_ext.geometry import output_size
from ssfdan_ext.ops import routed_conv1x1, sparse_conv3x3, sparse_ssd_rulebook
from ssfdan_ext.testing import street_labels


def _maps(C, h, w, strides, seed):
    labels = street_labels(2, 4 * h, 4 * w, num_classes=C, seed=seed)
    labels[1, :5] = IGNORE
    return mode_downsample(labels, (h, w), C), mode_downsample(labels, output_size(h, w, strides), C)


@pytest.mark.parametrize("C,h,w,strides", [(5, 9, 13, (1, 2, 2, 2, 2)), (3, 6, 5, (1, 1, 2, 1, 2)), (19, 2, 3,
                                                                                                 (1, 2, 2, 2, 2))])
def test_rulebook_reference(C, h, w, strides):
    lf, lo = _maps(C, h, w, strides, seed=h)
    got = sparse_ssd_rulebook(lf, lo, C, strides[1:])
    want = reference.sparse_ssd_rulebook(lf, lo, C, strides[1:])
    assert torch.equal(got.lf_masked, want[0]) and torch.equal(got.out_index, want[3])
    for a, b, c, d in zip(got.taps, want[1], got.offsets, want[2]):
        assert torch.equal(a, b) and torch.equal(c, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_routed_and_sparse_layer_references(dtype):
    torch.manual_seed(0)
    C, n, m, mo, h, w = 4, 5, 3, 2, 6, 7
    lf, lo = _maps(C, h, w, (1, 2, 2, 2, 2), seed=1)
    features = torch.randn(2, n, h, w, dtype=dtype)
    weight, bias = torch.randn(C * m, n, 1, 1, dtype=dtype), torch.randn(C * m, dtype=dtype)
    got = routed_conv1x1(features, lf, weight, bias, C)
    rows, order, offsets = reference.routed_conv1x1(features, lf, weight, bias, C)
    assert torch.equal(got.order, order) and torch.equal(got.offsets, offsets)
    torch.testing.assert_close(got.rows, rows)
    rb = sparse_ssd_rulebook(lf, lo, C, (2, 2, 2, 2))
    table = torch.cat([rows, torch.randn(C, m, dtype=dtype), torch.zeros(1, m, dtype=dtype)])
    w3, b3 = torch.randn(C * mo, m, 3, 3, dtype=dtype), torch.randn(C * mo, dtype=dtype)
    torch.testing.assert_close(sparse_conv3x3(table, rb.taps[0], rb.offsets[0], w3, b3),
                               reference.sparse_conv3x3(table, rb.taps[0], rb.offsets[0], w3, b3))
