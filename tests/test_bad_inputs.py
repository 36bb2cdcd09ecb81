"""Bad inputs get a clear Python exception naming the argument, never a crash or a misleading message later.

Zero sizes: every dimension of every public op, in process (a SIGFPE in a kernel would kill the test run) and for
the raw compiled ops (callers may skip the Python checks). Empty batches are a ValueError everywhere.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ssfdan_ext as sd
from ssfdan_ext import ops
from ssfdan_ext.nn import GlobalDiscriminator
from ssfdan_ext.types import DiscriminatorOutput

C = 3


def _labels(*shape: int) -> torch.Tensor:
    return torch.randint(0, C, shape)


def _routed_args(B=1, n=4, h=2, w=2, m=2):
    return (torch.randn(B, n, h, w), _labels(B, h, w), torch.randn(C * m, n, 1, 1), torch.randn(C * m), C)


def _conv_args(T=5, mi=4, mo=2, P=2):
    taps = torch.randint(0, max(T, 1), (P, 9))
    offsets = torch.tensor([0, P] + [P] * (C - 1))
    return torch.randn(T, mi), taps, offsets, torch.randn(C * mo, mi, 3, 3), torch.randn(C * mo)


ZERO_SIZE_CASES = {
    "confidence_select B=0": lambda: sd.confidence_select(torch.randn(0, C, 4, 4), 0.5),
    "confidence_select H=0": lambda: sd.confidence_select(torch.randn(1, C, 0, 4), 0.5),
    "confidence_select W=0": lambda: sd.confidence_select(torch.randn(1, C, 4, 0), 0.5),
    "mode_downsample B=0": lambda: sd.mode_downsample(_labels(0, 4, 4), (2, 2), C),
    "mode_downsample H=0": lambda: sd.mode_downsample(_labels(1, 0, 4), (1, 1), C),
    "mode_downsample W=0": lambda: sd.mode_downsample(_labels(1, 4, 0), (1, 1), C),
    "mode_downsample size 0": lambda: sd.mode_downsample(_labels(1, 4, 4), (0, 2), C),
    "routed_conv1x1 B=0": lambda: ops.routed_conv1x1(*_routed_args(B=0)),
    "routed_conv1x1 n=0": lambda: ops.routed_conv1x1(*_routed_args(n=0)),
    "routed_conv1x1 h=0": lambda: ops.routed_conv1x1(*_routed_args(h=0)),
    "routed_conv1x1 w=0": lambda: ops.routed_conv1x1(*_routed_args(w=0)),
    "routed_conv1x1 m=0": lambda: ops.routed_conv1x1(*_routed_args(m=0)),
    "routed_layer1_dense B=0": lambda: ops.routed_layer1_dense(*_routed_args(B=0)),
    "routed_layer1_dense n=0": lambda: ops.routed_layer1_dense(*_routed_args(n=0)),
    "routed_layer1_dense h=0": lambda: ops.routed_layer1_dense(*_routed_args(h=0)),
    "routed_layer1_dense w=0": lambda: ops.routed_layer1_dense(*_routed_args(w=0)),
    "routed_layer1_dense m=0": lambda: ops.routed_layer1_dense(*_routed_args(m=0)),
    "sparse_conv3x3 T=0": lambda: ops.sparse_conv3x3(*_conv_args(T=0, P=0)),
    "sparse_conv3x3 m_in=0": lambda: ops.sparse_conv3x3(*_conv_args(mi=0)),
    "sparse_conv3x3 m_out=0": lambda: ops.sparse_conv3x3(*_conv_args(mo=0)),
    "sparse_ssd_rulebook B=0": lambda: ops.sparse_ssd_rulebook(_labels(0, 8, 8), _labels(0, 1, 1), C, (2, 2, 2, 2)),
    "sparse_ssd_rulebook h=0": lambda: ops.sparse_ssd_rulebook(_labels(1, 0, 8), _labels(1, 1, 1), C, (2, 2, 2, 2)),
    "sparse_ssd_rulebook lo empty": lambda: ops.sparse_ssd_rulebook(_labels(1, 8, 8), _labels(1, 0, 1), C,
                                                                   (2, 2, 2, 2)),
    "SeparatedDiscriminator B=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4))(
        torch.randn(0, 4, 4, 4), _labels(0, 8, 8)),
    "SeparatedDiscriminator h=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4))(
        torch.randn(1, 4, 0, 4), _labels(1, 8, 8)),
    "SeparatedDiscriminator w=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4))(
        torch.randn(1, 4, 4, 0), _labels(1, 8, 8)),
    "SeparatedDiscriminator n=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4))(
        torch.randn(1, 0, 4, 4), _labels(1, 8, 8)),
    "SeparatedDiscriminator labels H=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4))(
        torch.randn(1, 4, 4, 4), _labels(1, 0, 8)),
    "SeparatedDiscriminator.plan B=0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4)).plan(
        _labels(0, 8, 8), (4, 4)),
    "SeparatedDiscriminator.plan size 0": lambda: sd.SeparatedDiscriminator(C, 4, (4, 4, 4, 4)).plan(
        _labels(1, 8, 8), (0, 4)),
    "GlobalDiscriminator B=0": lambda: GlobalDiscriminator(4, (4, 4, 4, 4))(torch.randn(0, 4, 4, 4)),
    "adversarial_loss h'=0": lambda: sd.adversarial_loss(DiscriminatorOutput(torch.randn(1, 1, 0, 2),
                                                                             _labels(1, 0, 2))),
    "domain_loss B=0": lambda: sd.domain_loss(DiscriminatorOutput(torch.randn(0, 1, 2, 2), _labels(0, 2, 2)), 1),
    "adversarial_loss B=0": lambda: sd.adversarial_loss(DiscriminatorOutput(torch.randn(0, 1, 2, 2),
                                                                            _labels(0, 2, 2))),
    "discriminator_loss B=0": lambda: sd.discriminator_loss(
        DiscriminatorOutput(torch.randn(0, 1, 2, 2), _labels(0, 2, 2)),
        DiscriminatorOutput(torch.randn(0, 1, 2, 2), _labels(0, 2, 2))),
}


@pytest.mark.parametrize("case", sorted(ZERO_SIZE_CASES))
def test_zero_sizes_raise_value_error(case):
    with pytest.raises(ValueError):
        ZERO_SIZE_CASES[case]()


def test_sparse_conv3x3_without_pairs_is_valid():
    out = ops.sparse_conv3x3(*_conv_args(P=0))
    assert out.shape == (0, 2)


@pytest.mark.skipif(not sd.build_info()["compiled"], reason="the raw compiled ops")
@pytest.mark.parametrize("case", ["routed n=0", "routed m=0", "sparse m_in=0", "sparse T=0", "rulebook empty"])
def test_raw_compiled_ops_check_zero_sizes(case):
    raw = torch.ops.ssfdan_ext
    with pytest.raises(ValueError):
        if case == "routed n=0":
            raw.routed_conv1x1_forward(*_routed_args(n=0))
        elif case == "routed m=0":
            raw.routed_conv1x1_forward(*_routed_args(m=0))
        elif case == "sparse m_in=0":
            raw.sparse_conv3x3_forward(*_conv_args(mi=0))
        elif case == "sparse T=0":
            raw.sparse_conv3x3_forward(*_conv_args(T=0, P=0))
        else:
            raw.sparse_ssd_rulebook(_labels(1, 0, 8), _labels(1, 1, 1), C, [2, 2, 2, 2])


# --- constructor and scalar arguments ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error", [
    ({"strides": (1, 2.0, 2, 2, 2)}, TypeError),
    ({"strides": None}, TypeError),
    ({"strides": (1, 3, 2, 2, 2)}, ValueError),
    ({"channels": 7}, TypeError),
    ({"channels": (4, 4, 4)}, ValueError),
    ({"channels": (4, 4, 4, 0)}, ValueError),
    ({"negative_slope": "abc"}, TypeError),
    ({"negative_slope": math.nan}, ValueError),
    ({"negative_slope": math.inf}, ValueError),
    ({"in_channels": 4.0}, TypeError),
])
def test_discriminator_constructor_errors(kwargs, error):
    args = {"in_channels": 4, "channels": (4, 4, 4, 4), **kwargs}
    with pytest.raises(error):
        sd.SeparatedDiscriminator(C, **args)
    with pytest.raises(error):
        GlobalDiscriminator(**args)


def test_numpy_scalars_are_accepted():
    logits = torch.randn(1, C, 8, 8)
    sel = sd.confidence_select(logits, np.float32(0.5), out_sizes=((np.int64(4), np.int64(4)),))
    assert torch.equal(sel.labels, sd.confidence_select(logits, 0.5).labels)
    assert sd.mode_downsample(sel.labels, (np.int64(2), np.int32(2)), np.int64(C)).shape == (1, 2, 2)
    disc = sd.SeparatedDiscriminator(np.int64(C), np.int64(4), [np.int64(4)] * 4, [np.int64(1)] + [2] * 4,
                                     negative_slope=np.float64(0.1))
    assert disc.in_channels == 4 and type(disc.in_channels) is int and disc.negative_slope == 0.1
    assert sd.rho_schedule(np.int64(5), np.int64(10), np.float32(0.8)) == 0.5


@pytest.mark.parametrize("args, error", [
    ((math.nan, 100), ValueError),
    ((5, math.inf), ValueError),
    (("5", 100), TypeError),
    ((5, "100"), TypeError),
    ((-1, 100), ValueError),
    ((5, 0), ValueError),
    ((5, 100, math.nan), ValueError),
])
def test_rho_schedule_errors(args, error):
    with pytest.raises(error):
        sd.rho_schedule(*args)


def test_rho_schedule_starts_at_zero():
    assert sd.rho_schedule(0, 250_000) == 0.0
    assert sd.rho_schedule(200_000, 250_000) == 0.8


def test_routed_conv1x1_without_bias_names_it():
    features, labels, weight, _, _ = _routed_args()
    with pytest.raises(TypeError, match="bias"):
        ops.routed_conv1x1(features, labels, weight, None, C)


@pytest.mark.parametrize("strides, error", [((2, 2, 2), ValueError), ((2, 2.0, 2, 2), TypeError),
                                            (None, TypeError), ((2, 3, 2, 2), ValueError)])
def test_rulebook_strides(strides, error):
    with pytest.raises(error):
        ops.sparse_ssd_rulebook(_labels(1, 8, 8), _labels(1, 1, 1), C, strides)
