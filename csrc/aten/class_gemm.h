// The per-class products of the layer kernels.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace ssfdan_ext {

// How the CPU kernels orient a class's products: SSFDAN_CLASS_GEMM = auto (the default: the rule of
// transposed_class_product), direct or transposed (every CPU product so, whatever its shape: for tests and
// tuning). Read once; any other value raises a ValueError at the first product.
enum class ClassProduct { kAuto, kDirect, kTransposed };
ClassProduct class_product_setting();

// Whether this CPU has AVX-512 (x86 with GCC or clang; false elsewhere).
bool cpu_has_avx512();

// The setting and what `auto` resolves to on this CPU, for ssfdan_ext._C.class_gemm_policy().
std::string class_gemm_policy();

// Whether one class's product of the rows of `x` against its weight `w` is computed transposed (w @ x^T instead of
// x @ w^T, w^T @ g^T instead of g @ w). Under `auto` that pays on the CPU for few rows against a large weight (under
// 128 rows, at least 2^20 weight elements: the paper's widths) on a CPU without AVX-512, where MKL ran the
// transposed products 10-20% faster (forward) and up to 1.6x faster (input gradient) for 16-96 rows of layers 1-3
// (an AMD EPYC, AVX2). With AVX-512 (a Xeon with AVX-512 and AMX) the direct products were the faster ones at
// these shapes: the paper-width forward + backward took 67-70 ms with them against 71-80 ms transposed. At 128 rows
// and more, and for small weights, the direct products were faster on both.
inline bool transposed_class_product(const at::Tensor& x, const at::Tensor& w) {
  if (!x.is_cpu()) return false;
  switch (class_product_setting()) {
    case ClassProduct::kDirect:
      return false;
    case ClassProduct::kTransposed:
      return true;
    case ClassProduct::kAuto:
      break;
  }
  return x.size(0) < 128 && w.numel() >= (int64_t{1} << 20) && !cpu_has_avx512();
}

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
