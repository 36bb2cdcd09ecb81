"""How the routed and sparse layer ops are registered, and what their backward ops share.

Each layer op and its backward op is a ``torch.library.triton_op`` (:func:`layer_op`): torch.compile traces into
it, so the Triton kernels it launches (through ``wrap_triton``, in :func:`ssfdan_ext.triton.configs.launch`) or
the ATen kernel it calls appear in the compiled graph, where Inductor compiles the Triton kernels with the rest.
A backward op returns only the gradients its output mask asks for (a registered op cannot return None), in the
order (input, weight, bias).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._ext import triton_kernels_interpreted, use_triton


def layer_op(name: str, fn: Callable, fake: Callable):
    """Register ``ssfdan_ext::<name>`` running ``fn``, whose first argument is a tensor and last ``impl``.

    A ``triton_op``: its fake is ``fn`` itself run on fake tensors, and torch.compile decomposes it into what
    ``fn`` calls. Interpreted Triton kernels (``TRITON_INTERPRET=1``) compute on host memory in Python and cannot
    be traced: when ``fn`` would run them it runs inside ``ssfdan_ext::<name>_interpreted`` instead, an opaque
    custom op whose output shapes come from ``fake``.
    """
    opaque = torch.library.custom_op(f"ssfdan_ext::{name}_interpreted", fn, mutates_args=())
    opaque.register_fake(fake)

    @functools.wraps(fn)
    def body(*args):
        if use_triton(args[0], args[-1]) and triton_kernels_interpreted():
            return opaque(*args)
        return fn(*args)

    return torch.library.triton_op(f"ssfdan_ext::{name}", body, mutates_args=())


def requested(grads: Sequence[Tensor | None]) -> list[Tensor]:
    """The computed gradients, leaving out those not asked for."""
    return [g for g in grads if g is not None]


def fake_grads(output_mask: Sequence[bool], like: Tensor, input_shape, weight_shape) -> list[Tensor]:
    """Empty tensors shaped like the gradients of (input, weight, bias) that ``output_mask`` asks for."""
    shapes = (input_shape, weight_shape, (weight_shape[0],))
    return [like.new_empty(shape) for shape, wanted in zip(shapes, output_mask) if wanted]


def spread(grads: Sequence[Tensor], output_mask: Sequence[bool]) -> tuple[Tensor | None, ...]:
    """(input, weight, bias) gradients with None where ``output_mask`` asked for none."""
    it = iter(grads)
    return tuple(next(it) if wanted else None for wanted in output_mask)


def once_differentiable(grad_op, name: str) -> None:
    """Give the backward op ``grad_op`` of ``name`` an autograd formula that refuses a double backward with a
    clear error (its kernels are not differentiable; a silent zero would be wrong)."""

    def refuse(ctx, *grads):
        raise RuntimeError(f"{name} can be differentiated once: its backward kernels are not differentiable "
                           f"(trying to differentiate twice)")

    grad_op.register_autograd(refuse, setup_context=lambda ctx, inputs, output: None)


def define_grad_op(name: str, backward: Callable[..., Sequence[Tensor | None]]):
    """Register ``ssfdan_ext::<name>_grad``, the backward op of ``name``:
    ``(grad, x, weight, index, output_mask, impl) -> requested((grad_x, grad_weight, grad_bias))`` where
    ``backward(grad, x, weight, *index, output_mask, impl)`` computes them (``index``: the op's integer tensors,
    e.g. order and offsets). A :func:`layer_op`; a double backward through it raises."""

    def grad(grad: Tensor, x: Tensor, weight: Tensor, index: list[Tensor], output_mask: list[bool],
             impl: str) -> list[Tensor]:
        return requested(backward(grad.contiguous(), x, weight, *index, list(output_mask), impl))

    def fake(grad, x, weight, index, output_mask, impl):
        return fake_grads(output_mask, x, x.shape, weight.shape)

    grad_op = layer_op(f"{name}_grad", grad, fake)
    once_differentiable(grad_op, name)
    return grad_op


def register_layer_autograd(op, grad_op, *, x: int, weight: int, bias: int,
                            index: Callable[[tuple, object], list[Tensor]]) -> None:
    """The autograd formula of a layer op whose last argument is ``impl``: the gradients of its arguments number
    ``x``, ``weight`` and ``bias`` come from ``grad_op`` (:func:`define_grad_op`), the others get none.
    ``index(inputs, output)`` gives the integer tensors the backward needs; outputs after the first (integer
    tensors too) are not differentiable."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[x], inputs[weight], *index(inputs, output))
        ctx.impl, ctx.num_inputs = inputs[-1], len(inputs)
        if isinstance(output, tuple):
            ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad, *_grads_of_index_outputs):
        saved_x, saved_weight, *saved_index = ctx.saved_tensors
        positions = (x, weight, bias)
        mask = [ctx.needs_input_grad[i] for i in positions]
        grads = spread(grad_op(grad, saved_x, saved_weight, saved_index, mask, ctx.impl), mask)
        out = [None] * ctx.num_inputs
        for i, g in zip(positions, grads):
            out[i] = g
        return tuple(out)

    op.register_autograd(backward, setup_context=setup_context)
