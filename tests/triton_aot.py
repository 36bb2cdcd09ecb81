"""Compile the library's Triton kernels ahead of time for an sm_90 (Hopper) GPU, without a GPU.

Run in its own interpreter with TRITON_INTERPRET=0 (tests/test_routed_conv1x1.py and tests/test_sparse_ssd_triton.py
do), naming the kernel module: ``routed_conv1x1`` (the default) or ``sparse_ssd``. Triton's front end and its
bundled ptxas turn each kernel specialisation the library launches into a cubin, so type errors and unsupported
constructs fail here instead of on the first GPU run. Prints one line per compiled kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import sys

from ssfdan_ext.triton import routed_conv1x1 as kernels
from ssfdan_ext.triton import sparse_ssd

TARGET = GPUTarget("cuda", 90, 32)
BLOCKS = {"BLOCK_M": kernels.BLOCK_ROWS, "BLOCK_N": kernels.BLOCK_COLS, "BLOCK_K": kernels.BLOCK_K}


def _compile(fn, signature: dict, constexprs: dict) -> int:
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
    return len(compiled.asm["cubin"])


def main_routed_conv1x1() -> None:
    for dtype in ("fp32", "fp16", "bf16"):
        gemm = {"a_ptr": f"*{dtype}", "order_ptr": "*i64", "row_class_ptr": "*i64", "w_ptr": f"*{dtype}",
                "b_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "N": "i32", "K": "i32", "COLS": "i32", "n": "i32",
                "HW": "i32", "C": "i32", "w_stride_col": "i32", "w_stride_k": "i32"}
        for gather in (True, False):  # forward, input gradient
            size = _compile(kernels._routed_gemm_kernel, gemm,
                            {"GATHER_A": gather, "HAS_BIAS": gather, "ACC": tl.float32, **BLOCKS})
            print(f"_routed_gemm_kernel {dtype} gather={gather}: {size} bytes")
        grad_weight = {"g_ptr": f"*{dtype}", "order_ptr": "*i64", "offsets_ptr": "*i64", "x_ptr": f"*{dtype}",
                       "gw_ptr": f"*{dtype}", "gb_ptr": f"*{dtype}", "n": "i32", "m": "i32", "HW": "i32"}
        size = _compile(kernels._routed_grad_weight_kernel, grad_weight, {"ACC": tl.float32, **BLOCKS})
        print(f"_routed_grad_weight_kernel {dtype}: {size} bytes")


def main_sparse_ssd() -> None:
    blocks = {"BLOCK_M": sparse_ssd.BLOCK_ROWS, "BLOCK_N": sparse_ssd.BLOCK_COLS, "BLOCK_K": sparse_ssd.BLOCK_K}
    for dtype in ("fp32", "fp16", "bf16"):
        # Bias and the input-gradient accumulator are float32 for every input dtype.
        fwd = {"table_ptr": f"*{dtype}", "taps_ptr": "*i64", "row_class_ptr": "*i64", "wt_ptr": f"*{dtype}",
               "b_ptr": "*fp32", "out_ptr": f"*{dtype}", "P": "i32", "MI": "i32", "MO": "i32", "C": "i32"}
        grad_table = {"g_ptr": f"*{dtype}", "taps_ptr": "*i64", "row_class_ptr": "*i64", "wt_ptr": f"*{dtype}",
                      "gt_ptr": "*fp32", "P": "i32", "T": "i32", "MI": "i32", "MO": "i32", "C": "i32"}
        grad_weight = {"g_ptr": f"*{dtype}", "taps_ptr": "*i64", "offsets_ptr": "*i64", "table_ptr": f"*{dtype}",
                       "gw_ptr": f"*{dtype}", "gb_ptr": f"*{dtype}", "MI": "i32", "MO": "i32"}
        launches = [(sparse_ssd._sparse_conv_fwd_kernel, fwd, {}),
                    (sparse_ssd._sparse_conv_grad_table_kernel, grad_table, {}),
                    *((sparse_ssd._sparse_conv_grad_weight_kernel, grad_weight,
                       {"HAS_WEIGHT": has_weight, "HAS_BIAS": has_bias})
                      for has_weight, has_bias in ((True, True), (True, False), (False, True)))]
        for fn, sig, flags in launches:
            size = _compile(fn, sig, {**flags, "ACC": tl.float32, **blocks})
            print(f"{fn.__name__} {dtype} {flags}: {size} bytes")
        if dtype == "bf16":
            # m_out = 1 (the last layer) is launched as a constant: Triton specialises integers equal to 1.
            for fn, sig, flags in launches[:3]:
                sig = {k: v for k, v in sig.items() if k != "MO"}
                size = _compile(fn, sig, {**flags, "ACC": tl.float32, "MO": 1, **blocks})
                print(f"{fn.__name__} {dtype} {flags} MO=1: {size} bytes")


if __name__ == "__main__":
    {"routed_conv1x1": main_routed_conv1x1, "sparse_ssd": main_sparse_ssd}[sys.argv[1] if len(sys.argv) > 1
                                                                             else "routed_conv1x1"]()
