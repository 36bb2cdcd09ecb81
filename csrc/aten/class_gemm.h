// The per-class products of the layer kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace ssfdan_ext {

// How the CPU kernels orient a class's products: SSFDAN_CLASS_GEMM = auto (the default: the rule of
// transposed_class_product), direct or transposed (every CPU product so, whatever its shape: for tests and
// tuning). Read once; any other value raises a ValueError at every CPU product and every class_gemm_policy() call
// (CUDA tensors never read it).
enum class ClassProduct { kAuto, kDirect, kTransposed };
ClassProduct class_product_setting();

// Whether this CPU has AVX-512 (x86 with GCC or clang; false elsewhere).
bool cpu_has_avx512();

// Whether a CPU product is computed transposed: as SSFDAN_CLASS_GEMM forces it, or `auto_transposed` under auto.
inline bool class_product_oriented(bool auto_transposed) {
  switch (class_product_setting()) {
    case ClassProduct::kDirect:
      return false;
    case ClassProduct::kTransposed:
      return true;
    case ClassProduct::kAuto:
      break;
  }
  return auto_transposed;
}

// The setting and what `auto` resolves to on this CPU, for ssfdan_ext._C.class_gemm_policy().
std::string class_gemm_policy();

// Whether one class's product of the rows of `x` against its weight `w` is computed transposed (w @ x^T instead of
// x @ w^T, w^T @ g^T instead of g @ w). Under `auto` that pays on the CPU for few rows against a large weight (under
// 128 rows, at least 2^20 weight elements: the paper's widths) on a CPU without AVX-512, where MKL ran the
// transposed products 10-20% faster (forward) and 20-70% faster (input gradient) for 16-96 rows of layers 1-3
// (an AMD EPYC, AVX2). With AVX-512 (a Xeon with AVX-512 and AMX) the direct products were the faster ones at
// these shapes: in interleaved runs the paper-width forward + backward took 70 ms with every product direct
// against 80 ms with every product transposed. So too on an AMD EPYC with AVX-512 (family 25): direct faster in
// each of 6 interleaved pairs of runs, medians 105 against 114 ms. At 128 rows and more, and for small weights,
// the direct products were faster on every CPU measured. Only these three CPUs were measured.
inline bool transposed_class_product(const at::Tensor& x, const at::Tensor& w) {
  return x.is_cpu() &&
         class_product_oriented(x.size(0) < 128 && w.numel() >= (int64_t{1} << 20) && !cpu_has_avx512());
}

// Whether layer 1's input gradient on the CPU is computed transposed, w^T @ g^T: the (n, rows) columns it is
// scattered from, with no transposing copy. Always so, as before the direct products existed, unless they are
// chosen for this CPU (auto with AVX-512, where the direct product and its copy took 3-5 ms less per paper-width
// forward + backward) or forced.
inline bool transposed_layer1_input_grad() { return class_product_oriented(!cpu_has_avx512()); }

// dst (rows, m_out) = bias + x (rows, k) @ w (m_out, k)^T, one class's rows against its weight; transposed (its
// result then copied into dst) where transposed_class_product says so.
inline void addmm_class_rows(at::Tensor& dst, const at::Tensor& bias, const at::Tensor& x, const at::Tensor& w) {
  if (transposed_class_product(x, w)) {
    dst.copy_(at::addmm(bias.unsqueeze(1), w, x.t()).t());
  } else {
    at::addmm_out(dst, bias, x, w.t());
  }
}

// The input gradient of one class's rows, (rows, k) = g (rows, m_out) @ w (m_out, k), contiguous; computed as
// (w^T @ g^T)^T where transposed_class_product says so.
inline at::Tensor mm_class_input_grad(const at::Tensor& g, const at::Tensor& w) {
  if (transposed_class_product(g, w)) {
    return at::mm(w.t(), g.t()).t().contiguous();
  }
  return at::mm(g, w);
}

}  // namespace ssfdan_ext
