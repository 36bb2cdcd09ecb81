// The per-cell mode of docs/semantics.md section 2 on the GPU, shared by mode_downsample (int64 labels, validated) and
// confidence_select (its uint8 map of kept labels). Device code only; no torch headers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../mode_kernels.h"

namespace ssfdan_ext {

// One block per output cell, grid-striding over cells: a shared-memory histogram over the bin, then the
// lowest-index argmax. Bins at the discriminator's output resolution hold thousands of pixels, so one thread per
// cell would serialise; a block keeps the read coalesced along a bin row. `on_other(v)` sees every value outside
// [0, C) (IGNORE included). Every thread of the block must call this (it synchronises).
template <typename T, typename OnOther>
__device__ void mode_cells_block(const T* __restrict__ in, int64_t* __restrict__ out, int64_t B, int64_t H,
                                 int64_t W, int64_t oh, int64_t ow, int C, int64_t ignore, int32_t* hist,
                                 OnOther on_other) {
  const int64_t cells = B * oh * ow;
  for (int64_t cell = blockIdx.x; cell < cells; cell += gridDim.x) {
    const int64_t j = cell % ow, i = (cell / ow) % oh, b = cell / (ow * oh);
    for (int k = threadIdx.x; k < C; k += blockDim.x) hist[k] = 0;
    __syncthreads();
    const int64_t r0 = bin_start(i, H, oh), r1 = bin_end(i, H, oh);
    const int64_t c0 = bin_start(j, W, ow), c1 = bin_end(j, W, ow);
    const int64_t bw = c1 - c0, n = (r1 - r0) * bw;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const int64_t v = static_cast<int64_t>(in[(b * H + r0 + t / bw) * W + c0 + t % bw]);
      if (v >= 0 && v < C) {
        atomicAdd(&hist[v], 1);
      } else {
        on_other(v);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) out[cell] = histogram_mode(hist, C, ignore);
    __syncthreads();
  }
}

}  // namespace ssfdan_ext
