// Pieces of the confidence_select kernels shared by the CPU and CUDA builds. No torch headers: nvcc includes
// this file too.
//
// Confidence keys. A confidence is the float32 max softmax probability, so it lies in [1/C, 1] with C <= 255,
// i.e. strictly above 2^-8. Positive floats order like their bit patterns, so
//   key = bits(1.0f) - bits(conf)
// is a 26-bit integer (bits(1.0f) - bits(2^-8) = 8 binades * 2^23 = 2^26) that *decreases* as the confidence
// grows: the K-th largest confidence is the K-th smallest key, and equal confidences have equal keys. The
// radix select resolves the key in three digits of 11, 11 and 4 bits (histograms of 2048, 2048 and 16 bins).
#pragma once

#include <cmath>
#include <cstdint>

#include "mode_kernels.h"

namespace ssfdan_ext {

constexpr uint32_t kOneBits = 0x3F800000u;  // bits of 1.0f
constexpr int kKeyBits = 26;
constexpr uint32_t kKeyMax = (1u << kKeyBits) - 1;
// Digit d of a key covers bits [kDigitShift[d], kDigitShift[d] + kDigitBits[d]).
constexpr int kDigits = 3;
constexpr int kDigitBins = 2048;  // the largest histogram of the three
SSFDAN_HOST_DEVICE constexpr int digit_shift(int d) { return d == 0 ? 15 : (d == 1 ? 4 : 0); }
SSFDAN_HOST_DEVICE constexpr int digit_bins(int d) { return d == 2 ? 16 : 2048; }

SSFDAN_HOST_DEVICE inline uint32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return static_cast<uint32_t>(__float_as_uint(x));
#else
  union { float f; uint32_t u; } v{x};
  return v.u;
#endif
}

SSFDAN_HOST_DEVICE inline float bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  union { uint32_t u; float f; } v{u};
  return v.f;
#endif
}

SSFDAN_HOST_DEVICE inline uint32_t conf_key(float conf) {
  const uint32_t key = kOneBits - float_bits(conf);
  return key > kKeyMax ? kKeyMax : key;  // unreachable for C <= 255 (conf > 2^-8); keeps indices in range
}

SSFDAN_HOST_DEVICE inline float key_conf(uint32_t key) { return bits_float(kOneBits - key); }

SSFDAN_HOST_DEVICE inline int key_digit(uint32_t key, int d) {
  return static_cast<int>((key >> digit_shift(d)) & static_cast<uint32_t>(digit_bins(d) - 1));
}

// True when the digits before d of `key` equal those of `prefix` (the digits chosen so far).
SSFDAN_HOST_DEVICE inline bool key_matches(uint32_t key, uint32_t prefix, int d) {
  return d == 0 || (key >> digit_shift(d - 1)) == (prefix >> digit_shift(d - 1));
}

// K = ceil(rho * N) in float64, clamped to [0, N] (docs/semantics.md section 1.2).
SSFDAN_HOST_DEVICE inline int64_t keep_count(double rho, int64_t n) {
#ifndef __CUDA_ARCH__
  using std::ceil;
#endif
  const double k = ceil(rho * static_cast<double>(n));
  if (k <= 0.0) return 0;
  return k >= static_cast<double>(n) ? n : static_cast<int64_t>(k);
}

// The bin holding the k-th smallest entry (k >= 1, 1-based) of a histogram, and k's rank inside that bin.
// Returns the last bin when k exceeds the total (callers never ask for that).
SSFDAN_HOST_DEVICE inline int rank_bin(const int32_t* hist, int nbins, int64_t k, int64_t* k_in_bin) {
  int64_t below = 0;
  for (int i = 0; i < nbins; ++i) {
    if (below + hist[i] >= k) {
      *k_in_bin = k - below;
      return i;
    }
    below += hist[i];
  }
  *k_in_bin = k - below;
  return nbins - 1;
}

// Per-pixel label and confidence from the logits of one pixel (stride apart). The confidence is
// 1 / sum_c exp(x_c - max) accumulated in float64 and rounded once to float32, so every backend rounds the
// same float64 value (up to the last-bit differences of exp, which almost never survive that rounding);
// a float32 softmax would round differently per summation order and exp implementation and break exact
// thresholds. The label is the first index of the maximum logit (that of the largest probability).
// Returns false when a logit is NaN or Inf. The CUDA kernel calls this per pixel; the CPU kernel computes the
// same sums, in the same class order, for blocks of pixels (cpu/confidence_block.h) so that they vectorise.
template <typename T, typename ToFloat>
SSFDAN_HOST_DEVICE inline bool pixel_confidence(const T* x, int64_t stride, int C, ToFloat to_float,
                                                int* label, float* conf) {
#ifndef __CUDA_ARCH__
  using std::exp;
  using std::isfinite;
#endif
  float best = to_float(x[0]);
  int arg = 0;
  bool finite = isfinite(best);
  for (int c = 1; c < C; ++c) {
    const float v = to_float(x[c * stride]);
    finite = finite && isfinite(v);
    if (v > best) {
      best = v;
      arg = c;
    }
  }
  double sum = 0.0;
  const double m = static_cast<double>(best);
  for (int c = 0; c < C; ++c) sum += exp(static_cast<double>(to_float(x[c * stride])) - m);
  *label = arg;
  *conf = static_cast<float>(1.0 / sum);
  return finite;
}

}  // namespace ssfdan_ext
