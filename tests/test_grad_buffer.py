"""The weight-gradient buffers of the compiled layer kernels (csrc/aten/grad_buffer.h): a freed gradient's mapping
is cached and reused by the next backward, and what its last use wrote must not leak into the classes the next
backward does not write."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import subprocess_env

from ssfdan_ext import _C
from ssfdan_ext.ops import routed_conv1x1, sparse_conv3x3

C = 3


@pytest.fixture(autouse=True)
def _empty_cache():
    _C.release_grad_buffers()
    yield
    _C.release_grad_buffers()


def _routed_weight_grad(classes: list[int]) -> torch.Tensor:
    """Layer 1's weight gradient (C*64, 2048, 1, 1): 1.5 MB, large enough for a mapped buffer; labels use only
    ``classes``."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2048, 4, 5, generator=gen)
    labels = torch.tensor(classes)[torch.randint(0, len(classes), (1, 4, 5), generator=gen)]
    weight = torch.randn(C * 64, 2048, 1, 1, generator=gen, requires_grad=True)
    bias = torch.randn(C * 64, generator=gen)
    routed_conv1x1(features, labels, weight, bias, C, impl="aten").rows.square().sum().backward()
    return weight.grad


def _sparse_weight_grad(classes: list[int]) -> torch.Tensor:
    """A 3x3 layer's weight gradient (C*128, 128, 3, 3): 1.8 MB; pairs only for ``classes``."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(40, 128, generator=gen)
    per_class = [6 if c in classes else 0 for c in range(C)]
    taps = torch.randint(0, 40, (sum(per_class), 9), generator=gen)
    offsets = torch.tensor([0, *per_class]).cumsum(0)
    weight = torch.randn(C * 128, 128, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(C * 128, generator=gen)
    sparse_conv3x3(table, taps, offsets, weight, bias, impl="aten").square().sum().backward()
    return weight.grad


@pytest.mark.parametrize("weight_grad", [_routed_weight_grad, _sparse_weight_grad], ids=["routed", "sparse"])
def test_a_reused_buffer_holds_no_rows_of_its_last_use(weight_grad):
    fresh = weight_grad([2]).clone()  # from a new mapping: class 2's rows, the others never written
    first = weight_grad([0, 1])
    assert first.view(C, -1)[:2].abs().sum(1).gt(0).all()
    nbytes = first.numel() * first.element_size()
    del first  # freed: its mapping goes to the cache, rows of classes 0 and 1 written
    assert _C.cached_grad_buffer_bytes() >= nbytes
    reused = weight_grad([2])
    assert _C.cached_grad_buffer_bytes() == 0  # the same mapping came back out
    assert reused.view(C, -1)[:2].abs().sum() == 0
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)


def test_release_unmaps_the_cached_buffers():
    grad = _routed_weight_grad([0])
    nbytes = grad.numel() * grad.element_size()
    del grad
    assert _C.cached_grad_buffer_bytes() >= nbytes
    assert _C.release_grad_buffers() >= nbytes
    assert _C.cached_grad_buffer_bytes() == 0


def test_the_cache_can_be_turned_off():
    code = ("import torch, ssfdan_ext; from ssfdan_ext import _C; from ssfdan_ext.ops import routed_conv1x1\n"
            "w = torch.randn(192, 2048, 1, 1, requires_grad=True)\n"
            "routed_conv1x1(torch.randn(1, 2048, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64), w, "
            "torch.zeros(192), 3, impl='aten').rows.sum().backward()\n"
            "w.grad = None\nprint(_C.cached_grad_buffer_bytes())")
    for limit, cached in (("0", False), ("64", True)):
        proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(SSFDAN_GRAD_CACHE_MB=limit),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (int(proc.stdout.split()[-1]) > 0) == cached, (limit, proc.stdout)


def test_a_reused_zero_buffer_is_zero_where_the_kernel_does_not_write():
    """Layer 1's rows (B*h*w, m) are 0 at IGNORE cells, which the kernel never writes: a reused mapping that held
    rows there before must come back cleared (4096 x 64 float32 rows: 1 MB, a mapped buffer)."""
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(1, 8, 64, 64, generator=gen)
    weight, bias = torch.randn(C * 64, 8, 1, 1, generator=gen), torch.randn(C * 64, generator=gen)
    labelled = torch.randint(0, C, (1, 64, 64), generator=gen)
    rows = routed_conv1x1(features, labelled, weight, bias, C, impl="aten").rows
    assert rows.abs().sum(1).gt(0).all()  # every row written
    nbytes = rows.numel() * rows.element_size()
    del rows
    assert _C.cached_grad_buffer_bytes() >= nbytes
    ignored = labelled.clone()
    ignored[:, 8:] = 255
    result = routed_conv1x1(features, ignored, weight, bias, C, impl="aten")
    assert _C.cached_grad_buffer_bytes() == 0  # the cached mapping was reused
    kept = int((ignored != 255).sum())
    assert result.rows[kept:].abs().sum() == 0  # the IGNORE rows (sorted last)
