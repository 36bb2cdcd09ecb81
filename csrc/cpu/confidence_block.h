// Vectorisable per-pixel softmax confidence for a block of pixels (CPU only). Same arithmetic as
// pixel_confidence in select_kernels.h (classes summed in ascending order, float64, one rounding to float32),
// but laid out so that the compiler vectorises across pixels, with an exp the compiler can vectorise too
// (std::exp is a library call, one pixel at a time). Included by confidence_select.cpp (baseline ISA) and by
// confidence_block_avx2.cpp (compiled for AVX2 + FMA, used when the CPU has them): everything here has internal
// linkage so that the linker never merges the two compilations.
#pragma once

#include <cstdint>

namespace ssfdan_ext {
namespace {

constexpr int kBlock = 128;  // pixels per block: C rows of kBlock floats stay in L1/L2 for C <= 255

// exp(t) for t <= 0 in float64 to about 1 ulp: t = k ln2 + r with |r| <= ln2/2 (Cody-Waite), a degree-13
// Taylor polynomial for exp(r) (truncation < 1e-17 relative), and 2^k applied as two exact power-of-two
// factors so that results down to the smallest subnormal stay right. Below -745.2 the result is 0.
__attribute__((always_inline)) inline double exp_nonpositive(double t) {
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 6.93147180369123816490e-01,
                   kLn2Lo = 1.90821492927058770002e-10, kShifter = 6755399441055744.0;  // 1.5 * 2^52
  const double tc = t < -746.0 ? -746.0 : t;
  const double kd = tc * kLog2e + kShifter;  // round to nearest integer, held in the low mantissa bits
  const int64_t kbits = __builtin_bit_cast(int64_t, kd);
  const double k = kd - kShifter;
  const double r = (tc - k * kLn2Hi) - k * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t ki = kbits - 0x4338000000000000LL;  // k as an integer, in [-1077, 0]
  const int64_t k1 = -static_cast<int64_t>(static_cast<uint64_t>(-ki) >> 1), k2 = ki - k1;  // logical shift: AVX2 has it
  const double e = p * __builtin_bit_cast(double, (k1 + 1023) << 52) * __builtin_bit_cast(double, (k2 + 1023) << 52);
  return e * static_cast<double>(t >= -745.2);  // arithmetic, not a branch: keeps the loop vectorisable
}

// For n <= kBlock pixels whose class rows start at x[c * stride]: label, float32 confidence, and whether
// every logit is finite.
inline bool block_confidence(const float* x, int64_t stride, int C, int n, int32_t* label, float* conf) {
  float m[kBlock];
  double s[kBlock];
  int32_t arg[kBlock];
  float bad = 0.0f;
  for (int p = 0; p < n; ++p) {
    m[p] = x[p];
    arg[p] = 0;
    bad += x[p] - x[p];  // NaN for a NaN or an infinity
  }
  for (int c = 1; c < C; ++c) {
    const float* row = x + c * stride;
    for (int p = 0; p < n; ++p) {
      const float v = row[p];
      bad += v - v;
      const bool better = v > m[p];  // strict: ties keep the lowest class index
      m[p] = better ? v : m[p];
      arg[p] = better ? c : arg[p];
    }
  }
  for (int p = 0; p < n; ++p) s[p] = 0.0;
  for (int c = 0; c < C; ++c) {
    const float* row = x + c * stride;
    for (int p = 0; p < n; ++p) s[p] += exp_nonpositive(static_cast<double>(row[p]) - static_cast<double>(m[p]));
  }
  for (int p = 0; p < n; ++p) {
    conf[p] = static_cast<float>(1.0 / s[p]);
    label[p] = arg[p];
  }
  return bad == 0.0f;
}

}  // namespace

// The same function compiled for AVX2 + FMA (confidence_block_avx2.cpp); only call it when the CPU has both.
bool block_confidence_avx2(const float* x, int64_t stride, int C, int n, int32_t* label, float* conf);

}  // namespace ssfdan_ext
