// Every operator schema of the library, declared once. Backends register their kernels with
// TORCH_LIBRARY_IMPL(ssfdan_ext, <Key>, m) at the bottom of csrc/cpu/<op>.cpp and csrc/cuda/<op>_cuda.cpp.
#include <torch/library.h>

TORCH_LIBRARY(ssfdan_ext, m) {
  // SPEC section 2: per-bin mode of a label map, IGNORE (255) pixels not counted, ties to the lowest class.
  m.def("mode_downsample(Tensor labels, int out_h, int out_w, int num_classes) -> Tensor");
  // SPEC sections 1, 2 and 4 in one op: pseudo labels, their statistics, the (B, C) thresholds (+inf where
  // nothing is kept) and one mode-downsampled kept-label map per (h, w) pair of out_sizes (flattened).
  m.def("confidence_select(Tensor logits, float rho, int[] out_sizes) -> (Tensor labels, Tensor confidence, "
        "Tensor counts, Tensor conf_sums, Tensor tau, Tensor thr, Tensor[] downsampled)");
}
