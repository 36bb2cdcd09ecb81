// Every operator schema of the library, declared once. Backends register their kernels with
// TORCH_LIBRARY_IMPL(ssfdan_ext, <Key>, m) at the bottom of csrc/cpu/<op>.cpp and csrc/cuda/<op>_cuda.cpp.
#include <torch/library.h>

TORCH_LIBRARY(ssfdan_ext, m) {
  // docs/semantics.md section 2: per-bin mode of a label map, IGNORE (255) pixels not counted, ties to the lowest
  // class.
  m.def("mode_downsample(Tensor labels, int out_h, int out_w, int num_classes) -> Tensor");
  // docs/semantics.md section 3, separation + layer 1: cells sorted by class (IGNORE last) -> (rows (B*h*w, m) holding
  // W1_c F(p) + b1_c for class cells and 0 for IGNORE cells, order (B*h*w,) cell index of each row,
  // offsets (C+1,) first row of each class; offsets[C] = number of class cells).
  m.def("routed_conv1x1_forward(Tensor features, Tensor labels, Tensor weight, Tensor bias, int num_classes)"
        " -> (Tensor, Tensor, Tensor)");
  // Gradients of the rows' features, weight and bias (class cells only; output_mask skips unneeded ones).
  m.def("routed_conv1x1_backward(Tensor grad_rows, Tensor features, Tensor weight, Tensor order, Tensor offsets,"
        " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // docs/semantics.md sections 1, 2 and 4 in one op: pseudo labels, their statistics, the (B, C) thresholds (+inf where
  // nothing is kept) and one mode-downsampled kept-label map per (h, w) pair of out_sizes (flattened).
  m.def("confidence_select(Tensor logits, float rho, int[] out_sizes) -> (Tensor labels, Tensor confidence, "
        "Tensor counts, Tensor conf_sums, Tensor tau, Tensor thr, Tensor[] downsampled)");
  // docs/semantics.md section 3, layers 2-5 evaluated exactly on the explicit (class, cell) pairs E_l = A_l ∩ N_l
  // (csrc/cpu/sparse_ssd.cpp): lf_masked (B, h, w) = labels with cells outside E_1 set to IGNORE; per layer 2-5
  // taps (P, 9) value-table rows of each pair's taps and offsets (C+1,) first pair of each class; out_index
  // (B*h'*w',) row of each output cell in the last table. Tables are [explicit rows | C constants | zero row].
  m.def("sparse_ssd_rulebook(Tensor lf, Tensor lo, int num_classes, int[] strides) -> (Tensor lf_masked, "
        "Tensor[] taps, Tensor[] offsets, Tensor out_index)");
  // One 3x3 layer on the explicit pairs: out[p] = b_c + sum_t W_c[t] table[taps[p, t]] for the pairs of class c.
  m.def("sparse_conv3x3_forward(Tensor table, Tensor taps, Tensor offsets, Tensor weight, Tensor bias) -> Tensor");
  m.def("sparse_conv3x3_backward(Tensor grad_out, Tensor table, Tensor taps, Tensor offsets, Tensor weight,"
        " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
