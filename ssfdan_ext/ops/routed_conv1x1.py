"""routed_conv1x1: semantic separation + the first SS-D layer (docs/semantics.md section 3, steps 2-3) as a top-1 routed
GEMM.

The first SS-D layer is 1x1, and the separated input of class c is zero outside class c's cells, so class c's
pre-activation is ``W1_c F(p) + b1_c`` at its own cells and the constant ``b1_c`` at every other cell. Each cell
therefore needs one product, with its own class's weight: a Mixture-of-Experts style top-1 routing with classes
as experts and cells as tokens. CUDA tensors run the Triton kernels of :mod:`ssfdan_ext.triton.routed_conv1x1`;
CPU tensors run the ATen implementation compiled into ``ssfdan_ext._C`` (one GEMM per non-empty class).
Registered as the ``triton_op`` ``ssfdan_ext::routed_conv1x1`` (backward ``ssfdan_ext::routed_conv1x1_grad``):
torch.compile traces into it, and Inductor compiles its Triton kernels with the rest of the graph.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_batch, check_floating, check_labels, check_nonempty, check_num_classes, check_same_device
from .._checks import check_tensor
from .._buckets import row_classes
from .._ext import check_impl, has_compiled_ops, require_compiled, use_triton
from ._grads import define_grad_op, fake_grads, layer_op, register_layer_autograd, spread

class RoutedRows(NamedTuple):
    """Layer-1 pre-activations of the class cells, sorted by class.

    Shapes (N = B*h*w cells, m = layer-1 width per class):
        rows: (N, m); row r holds ``W1_c F(cell) + b1_c`` for the cell ``order[r]`` of class c; the rows
            ``[offsets[C], N)`` belong to IGNORE cells and hold 0.
        order: (N,) int64, the flat cell index ``b*h*w + y*w + x`` of each row (raster order inside a class).
        offsets: (C+1,) int64; class c owns rows ``[offsets[c], offsets[c+1])``.
    """

    rows: Tensor
    order: Tensor
    offsets: Tensor


def _kernels():
    from ..triton import routed_conv1x1 as kernels  # lazy: a CPU-only install need not import Triton

    return kernels


def _forward(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int, impl: str):
    if use_triton(features, impl):
        return _kernels().routed_conv1x1_forward(features, labels, weight, bias, num_classes)
    require_compiled("routed_conv1x1")
    return torch.ops.ssfdan_ext.routed_conv1x1_forward(features, labels, weight, bias, num_classes)


def _backward(grad_rows: Tensor, features: Tensor, weight: Tensor, order: Tensor, offsets: Tensor,
              mask: list[bool], impl: str):
    if use_triton(features, impl):
        return _kernels().routed_conv1x1_backward(grad_rows, features, weight, order, offsets, mask)
    return torch.ops.ssfdan_ext.routed_conv1x1_backward(grad_rows, features, weight, order, offsets, mask)


def _routed(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int,
            impl: str) -> tuple[Tensor, Tensor, Tensor]:
    rows, order, offsets = _forward(features, labels, weight, bias, num_classes, impl)
    return rows, order, offsets


def _fake_rows(features, labels, weight, bias, num_classes, impl=None):
    """The outputs' shapes: rows (N, m), order (N,), offsets (C+1,) (the registered op and its ATen kernel)."""
    N = labels.numel()
    return (features.new_empty((N, weight.shape[0] // num_classes)), labels.new_empty((N,)),
            labels.new_empty((num_classes + 1,)))


# The registered op behind routed_conv1x1 (arguments unchecked): rows, order, offsets.
routed_conv1x1_op = layer_op("routed_conv1x1", _routed, _fake_rows)


# The backward: (grad_rows, features, weight, [order, offsets], output_mask, impl) -> the requested gradients of
# (features, weight, bias).
routed_conv1x1_grad_op = define_grad_op("routed_conv1x1", _backward)


register_layer_autograd(routed_conv1x1_op, routed_conv1x1_grad_op, x=0, weight=2, bias=3,
                        index=lambda inputs, output: [output[1], output[2]])  # order, offsets


def _check(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int, impl: str) -> int:
    check_tensor(features, "features", 4, "(B, n, h, w)")
    check_floating(features, "features")
    check_tensor(weight, "weight", 4, "(C*m, n, 1, 1)")
    check_tensor(bias, "bias", 1, "(C*m,)")
    num_classes = check_num_classes(num_classes)
    check_labels(labels, "labels", num_classes)
    check_batch(features, "features", labels, "labels")
    check_nonempty(features, "features", "(B, n, h, w)")
    check_same_device(features=features, labels=labels, weight=weight, bias=bias)
    if labels.shape[1:] != features.shape[2:]:
        raise ValueError(f"labels must be (B, h, w) at the feature resolution {tuple(features.shape[2:])}, got "
                         f"shape {tuple(labels.shape)}")
    n = features.shape[1]
    if weight.shape[1:] != (n, 1, 1) or weight.shape[0] % num_classes or weight.shape[0] == 0:
        raise ValueError(f"weight must be (C*m, n, 1, 1) with C = {num_classes}, n = {n} and m >= 1, got shape "
                         f"{tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},), got shape {tuple(bias.shape)}")
    if weight.dtype != features.dtype or bias.dtype != features.dtype:
        raise TypeError(f"weight ({weight.dtype}) and bias ({bias.dtype}) must have the features dtype "
                        f"{features.dtype}")
    check_impl(impl, features, "features")
    return num_classes


def routed_conv1x1(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int,
                   impl: str = "auto") -> RoutedRows:
    """Separate ``features`` by class and apply each class's 1x1 convolution, computing only the class cells.

    Equivalent to the first layer of every class stack of :class:`~ssfdan_ext.SeparatedDiscriminator` applied to
    its separated input: class c's output is ``rows[r]`` at the cell ``order[r]`` of each of its rows and
    ``bias[c*m:(c+1)*m]`` at every other cell. Differentiable once in ``features``, ``weight`` and ``bias`` (a
    double backward raises); IGNORE cells get no feature gradient, and the bias gradient sums the class rows only.

    Args:
        impl: ``"auto"`` (Triton on CUDA for float32/float16/bfloat16, the compiled ATen kernel otherwise),
            ``"aten"`` or ``"triton"`` (also on CPU tensors under ``TRITON_INTERPRET=1``).

    Shapes:
        features: (B, n, h, w) floating point.
        labels: (B, h, w) int64, the feature-resolution classes in [0, C) or 255 (IGNORE).
        weight: (C*m, n, 1, 1), canonical layout (class c owns rows [c*m, (c+1)*m)); bias: (C*m,).
        returns: :class:`RoutedRows` with rows (B*h*w, m), order (B*h*w,) and offsets (C+1,).
    """
    num_classes = _check(features, labels, weight, bias, num_classes, impl)
    return RoutedRows(*routed_conv1x1_op(features, labels, weight, bias, num_classes, impl))


def _row_targets(order: Tensor, offsets: Tensor, hw: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(image, class, cell) of each sorted row in the dense layout, IGNORE rows sent to the last class, and the
    IGNORE mask; computed on the device from the bucket offsets."""
    C = offsets.numel() - 1
    row_class = row_classes(offsets, order.numel())
    return order // hw, row_class.clamp(max=C - 1), order % hw, row_class == C


def routed_layer1_dense(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor, num_classes: int,
                        impl: str = "auto") -> Tensor:
    """The first SS-D layer's pre-activation in the grouped layout, computed by the routed GEMM.

    Equals ``conv2d(separated, weight, bias, groups=C)`` on the separated input (B, C*n, h, w) without ever
    building it (C times fewer FLOPs, and no C*n-channel tensor).

    Shapes:
        features (B, n, h, w), labels (B, h, w), weight (C*m, n, 1, 1), bias (C*m,) -> (B, C*m, h, w).
    """
    num_classes = _check(features, labels, weight, bias, num_classes, impl)
    rows, order, offsets = routed_conv1x1_op(features, labels, weight, bias, num_classes, impl)
    B, _, h, w = features.shape
    C, m = num_classes, rows.shape[1]
    cell_b, cell_class, cell_p, ignored = _row_targets(order, offsets, h * w)
    # Every cell holds its class's bias, then the class cells get their rows (which contain the bias: the bias
    # gradient sums the dense gradient over all cells). An IGNORE cell's row lands on the last class, whose value
    # there is its bias (the cell is not of that class): no host read of offsets[C] is needed to drop those rows.
    dense = bias.view(1, C, m, 1).expand(B, C, m, h * w).clone()
    dense[cell_b, cell_class, :, cell_p] = torch.where(ignored.unsqueeze(1), bias[(C - 1) * m:], rows)
    return dense.view(B, C * m, h, w)


if has_compiled_ops():
    # The compiled ATen kernels behind the registered ops: their fakes, for torch.compile and opcheck.

    torch.library.register_fake("ssfdan_ext::routed_conv1x1_forward", _fake_rows)

    @torch.library.register_fake("ssfdan_ext::routed_conv1x1_backward")
    def _(grad_rows, features, weight, order, offsets, output_mask):
        return spread(fake_grads(output_mask, features, features.shape, weight.shape), output_mask)
