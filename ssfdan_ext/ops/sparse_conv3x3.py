"""sparse_conv3x3: one SS-D 3x3 layer evaluated on the explicit (class, cell) pairs of a rulebook.

CUDA tensors run the Triton kernels of :mod:`ssfdan_ext.triton.sparse_conv3x3`; CPU tensors run the ATen code
compiled into ``ssfdan_ext._C`` (``csrc/aten/sparse_conv3x3.cpp``). Registered as the ``triton_op``
``ssfdan_ext::sparse_conv3x3`` (backward ``ssfdan_ext::sparse_conv3x3_grad``): torch.compile and opcheck see it,
and Inductor compiles its Triton kernels with the rest of the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_floating, check_nonempty, check_same_device, check_tensor
from .._ext import check_impl, has_compiled_ops, use_triton
from ._grads import define_grad_op, fake_grads, layer_op, register_layer_autograd, spread


def _kernels():
    from ..triton import sparse_conv3x3 as kernels  # lazy: a CPU-only install need not import Triton

    return kernels


def _sparse(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor, impl: str) -> Tensor:
    if use_triton(table, impl):
        return _kernels().sparse_conv3x3_forward(table, taps, offsets, weight, bias)
    return torch.ops.ssfdan_ext.sparse_conv3x3_forward(table, taps, offsets, weight, bias)


def _fake_out(table, taps, offsets, weight, bias, impl=None):
    """The output's shape (P, m_out) (the registered op and its ATen kernel)."""
    return table.new_empty((taps.shape[0], weight.shape[0] // (offsets.shape[0] - 1)))


# The registered op behind sparse_conv3x3 (arguments unchecked).
sparse_conv3x3_op = layer_op("sparse_conv3x3", _sparse, _fake_out)


def _backward(grad_out: Tensor, table: Tensor, weight: Tensor, taps: Tensor, offsets: Tensor, mask: list[bool],
              impl: str):
    if use_triton(table, impl):
        return _kernels().sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, mask)
    grads = torch.ops.ssfdan_ext.sparse_conv3x3_backward(grad_out, table, taps, offsets, weight, mask)
    if grads[0] is not None:
        grads[0][-1].zero_()  # the zero row: no gradient on any backend (see sparse_conv3x3)
    return grads


# The backward: (grad_out, table, weight, [taps, offsets], output_mask, impl) -> the requested gradients of
# (table, weight, bias).
sparse_conv3x3_grad_op = define_grad_op("sparse_conv3x3", _backward)


register_layer_autograd(sparse_conv3x3_op, sparse_conv3x3_grad_op, x=0, weight=3, bias=4,
                        index=lambda inputs, output: [inputs[1], inputs[2]])  # taps, offsets


def sparse_conv3x3(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor,
                   impl: str = "auto") -> Tensor:
    """One SS-D 3x3 layer on explicit pairs: ``out[p] = b_c + sum_t W_c[t] table[taps[p, t]]`` for class c's pairs.

    Differentiable once in ``table``, ``weight`` and ``bias``. ``impl``: ``"auto"`` (Triton for CUDA float32/
    float16/bfloat16, the compiled ATen code otherwise), ``"aten"`` or ``"triton"`` (CPU tensors only under
    ``TRITON_INTERPRET=1``). The table's last row is the zero row of the SS-D value table, a constant: its
    gradient is 0 on every backend (the Triton kernels skip it, which spares the atomics every tile would add).

    Shapes:
        table (T, m_in), taps (P, 9) int64 rows of ``table``, offsets (C+1,) int64 pairs of each class,
        weight (C*m_out, m_in, 3, 3) canonical layout, bias (C*m_out,) -> (P, m_out).
    """
    check_impl(impl, table, "table")
    _check_conv(table, taps, offsets, weight, bias)
    return sparse_conv3x3_op(table, taps, offsets, weight, bias, impl)


def _check_conv(table: Tensor, taps: Tensor, offsets: Tensor, weight: Tensor, bias: Tensor) -> None:
    check_tensor(table, "table", 2, "(T, m_in)")
    check_floating(table, "table")
    check_tensor(taps, "taps", 2, "(P, 9)")
    check_tensor(offsets, "offsets", 1, "(C+1,)")
    check_tensor(weight, "weight", 4, "(C*m_out, m_in, 3, 3)")
    check_tensor(bias, "bias", 1, "(C*m_out,)")
    # Pairs may be absent (P = 0); the table and the layer widths may not.
    check_nonempty(table, "table", "(T, m_in)")
    if weight.shape[0] == 0:
        raise ValueError(f"weight must be (C*m_out, m_in, 3, 3) with m_out >= 1, got shape {tuple(weight.shape)}")
    check_same_device(table=table, taps=taps, offsets=offsets, weight=weight, bias=bias)
    if taps.dtype != torch.int64 or offsets.dtype != torch.int64:
        raise TypeError(f"taps and offsets must be int64, got {taps.dtype} and {offsets.dtype}")
    # The kernels read table[taps] unchecked: every row index and the class ranges must be valid first.
    if taps.numel() and (int(taps.min()) < 0 or int(taps.max()) >= table.shape[0]):
        raise ValueError(f"taps must index rows of table in [0, {table.shape[0]}), got values in "
                         f"[{int(taps.min())}, {int(taps.max())}]")
    if offsets.numel() < 2 or int(offsets[0]) != 0 or int(offsets[-1]) != taps.shape[0] or bool(
            (offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must be (C+1,) non-decreasing from 0 to the number of pairs {taps.shape[0]}, "
                         f"got {offsets.tolist() if offsets.numel() <= 8 else tuple(offsets.shape)}")


if has_compiled_ops():

    torch.library.register_fake("ssfdan_ext::sparse_conv3x3_forward", _fake_out)

    @torch.library.register_fake("ssfdan_ext::sparse_conv3x3_backward")
    def _(grad_out, table, taps, offsets, weight, output_mask):
        return spread(fake_grads(output_mask, table, table.shape, weight.shape), output_mask)
