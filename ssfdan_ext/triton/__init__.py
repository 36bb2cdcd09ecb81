"""Triton kernels (GPU, or CPU tensors under TRITON_INTERPRET=1). Imported lazily by the ops that use them, so a
CPU-only installation without Triton still imports ssfdan_ext."""
