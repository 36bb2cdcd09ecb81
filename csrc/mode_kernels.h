// Pieces of the mode-downsampling kernel shared by the CPU and CUDA builds. No torch headers: nvcc includes
// this file too.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define SSFDAN_HOST_DEVICE __host__ __device__
#else
#define SSFDAN_HOST_DEVICE
#endif

namespace ssfdan_ext {

// Bin [start, end) of output index i when n inputs are pooled into m outputs (the adaptive-pooling bins).
SSFDAN_HOST_DEVICE inline int64_t bin_start(int64_t i, int64_t n, int64_t m) { return (i * n) / m; }
SSFDAN_HOST_DEVICE inline int64_t bin_end(int64_t i, int64_t n, int64_t m) { return ((i + 1) * n + m - 1) / m; }

// The most frequent class of a histogram, the lowest class index on ties, `none` when every count is 0.
SSFDAN_HOST_DEVICE inline int64_t histogram_mode(const int32_t* hist, int64_t num_classes, int64_t none) {
  int64_t best = none;
  int32_t best_count = 0;
  for (int64_t k = 0; k < num_classes; ++k) {
    if (hist[k] > best_count) {  // strict: ties keep the lowest class index
      best_count = hist[k];
      best = k;
    }
  }
  return best;
}

}  // namespace ssfdan_ext
