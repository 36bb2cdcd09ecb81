"""Trace the routed and sparse layer ops, forward and backward, as torch.compile's AOTAutograd does, on fake CUDA
tensors (no GPU is needed), and print as JSON what each traced graph calls: ``triton:<kernel>`` for each Triton
launch recorded in it, and the name of each ``ssfdan_ext`` op left in it.

Run in its own interpreter with TRITON_INTERPRET=0 (tests/test_compile.py does): interpreted kernels cannot be
traced. Without a GPU, Triton cannot analyse which arguments a kernel writes and says so in a warning (it then
assumes all of them); on a GPU it can. The JSON is the last line of the output.
"""
from __future__ import annotations

import json

import torch
from torch._functorch.aot_autograd import aot_function, make_boxed_compiler
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode

from ssfdan_ext.ops.routed_conv1x1 import routed_conv1x1_grad_op, routed_conv1x1_op
from ssfdan_ext.ops.sparse_conv3x3 import sparse_conv3x3_grad_op, sparse_conv3x3_op

C, N_IN, M = 3, 8, 8
ALL = [True, True, True]


def calls(graph: torch.fx.GraphModule) -> list[str]:
    out = []
    for node in graph.graph.nodes:
        target = str(node.target)
        if "triton_kernel_wrapper" in target:
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            out.append("triton:" + getattr(kernel, "fn", kernel).__name__)
        elif "ssfdan_ext" in target:
            out.append(target)
    return out


def trace(fn, *inputs) -> list[str]:
    """What the functional graph AOTAutograd hands to the compiler calls."""
    graphs = []

    def compiler(graph, _example_inputs):
        graphs.append(calls(graph))
        return graph

    aot_function(fn, fw_compiler=make_boxed_compiler(compiler))(*inputs)
    return graphs[0]


def main() -> None:
    report = {}
    with FakeTensorMode():
        cuda = {"device": "cuda"}
        index = {"dtype": torch.int64, "device": "cuda"}
        features, labels = torch.empty(2, N_IN, 9, 9, **cuda), torch.zeros(2, 9, 9, **index)
        weight, bias = torch.empty(C * M, N_IN, 1, 1, **cuda), torch.empty(C * M, **cuda)
        report["routed_conv1x1"] = trace(lambda *a: routed_conv1x1_op(*a, C, "auto"), features, labels, weight, bias)
        rows, order, offsets = torch.empty(162, M, **cuda), torch.zeros(162, **index), torch.zeros(C + 1, **index)
        report["routed_conv1x1_grad"] = trace(
            lambda g, x, w, o, off: routed_conv1x1_grad_op(g, x, w, [o, off], ALL, "auto"),
            rows, features, weight, order, offsets)
        table, taps = torch.empty(50, M, **cuda), torch.zeros(20, 9, **index)
        weight3, bias3 = torch.empty(C * 4, M, 3, 3, **cuda), torch.empty(C * 4, **cuda)
        report["sparse_conv3x3"] = trace(lambda *a: sparse_conv3x3_op(*a, "auto"), table, taps, offsets, weight3,
                                         bias3)
        report["sparse_conv3x3_grad"] = trace(
            lambda g, t, w, tp, off: sparse_conv3x3_grad_op(g, t, w, [tp, off], ALL, "auto"),
            torch.empty(20, 4, **cuda), table, weight3, taps, offsets)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
