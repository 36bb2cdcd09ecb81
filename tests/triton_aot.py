"""Compile the routed layer-1 Triton kernels ahead of time for an sm_90 (Hopper) GPU, without a GPU.

Run in its own interpreter with TRITON_INTERPRET=0 (tests/test_routed_conv1x1.py does): Triton's front end and
its bundled ptxas turn each kernel specialisation the library launches into a cubin, so type errors and
unsupported constructs fail here instead of on the first GPU run. Prints one line per compiled kernel.
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ssfdan_ext.triton import routed_conv1x1 as kernels

TARGET = GPUTarget("cuda", 90, 32)
BLOCKS = {"BLOCK_M": kernels.BLOCK_ROWS, "BLOCK_N": kernels.BLOCK_COLS, "BLOCK_K": kernels.BLOCK_K}


def _compile(fn, signature: dict, constexprs: dict) -> int:
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
    return len(compiled.asm["cubin"])


def main() -> None:
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


if __name__ == "__main__":
    main()
