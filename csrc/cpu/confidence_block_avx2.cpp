// block_confidence compiled for AVX2 + FMA: four float64 exps per instruction instead of two (about 3x faster
// than the baseline build on the CPU preset). confidence_select.cpp calls it only when the CPU reports both.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#include "confidence_block.h"

namespace ssfdan_ext {

bool block_confidence_avx2(const float* x, int64_t stride, int C, int n, int32_t* label, float* conf) {
  return block_confidence(x, stride, C, n, label, conf);
}

}  // namespace ssfdan_ext
#endif
