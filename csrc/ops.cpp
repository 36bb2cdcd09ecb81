// Every operator schema of the library, declared once. Backends register their kernels with
// TORCH_LIBRARY_IMPL(ssfdan_ext, <Key>, m) at the bottom of csrc/cpu/<op>.cpp and csrc/cuda/<op>_cuda.cpp.
#include <torch/library.h>

TORCH_LIBRARY(ssfdan_ext, m) {
  // SPEC section 2: per-bin mode of a label map, IGNORE (255) pixels not counted, ties to the lowest class.
  m.def("mode_downsample(Tensor labels, int out_h, int out_w, int num_classes) -> Tensor");
}
