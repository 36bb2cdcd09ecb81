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

namespace ssfdan_ext {

// Mode of bin (i, j) when one (H, W) label map is downsampled to (oh, ow): counts the pixels with a value in
// [0, C) into hist (C entries, cleared here) and returns histogram_mode. Other values count as unlabelled, so
// callers validate their maps first (confidence_select's kept-label map holds only classes and 255).
template <typename T>
SSFDAN_HOST_DEVICE inline int64_t bin_mode(const T* map, int64_t H, int64_t W, int64_t i, int64_t j, int64_t oh,
                                           int64_t ow, int32_t* hist, int64_t C, int64_t none) {
  for (int64_t k = 0; k < C; ++k) hist[k] = 0;
  const int64_t r0 = bin_start(i, H, oh), r1 = bin_end(i, H, oh);
  const int64_t c0 = bin_start(j, W, ow), c1 = bin_end(j, W, ow);
  for (int64_t r = r0; r < r1; ++r) {
    const T* row = map + r * W;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t v = static_cast<int64_t>(row[c]);
      if (v >= 0 && v < C) ++hist[v];
    }
  }
  return histogram_mode(hist, C, none);
}

}  // namespace ssfdan_ext
