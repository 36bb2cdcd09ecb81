// CUDA kernel of SPEC section 2 (mode downsampling). Kept free of torch headers so that nvcc compiles it in
// seconds; the tensor-facing side lives in mode_downsample_cuda.cpp.
#include <cuda_runtime.h>

#include <cstdint>

#include "../mode_kernels.h"
#include "launchers.h"

namespace ssfdan_ext {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kIgnore = 255;

// One block per output cell: a shared-memory histogram over the bin, then the lowest-index argmax.
// Bins at the discriminator's output resolution hold thousands of pixels, so one thread per cell would
// serialise; a block keeps the read coalesced along a bin row.
__global__ void mode_downsample_kernel(const int64_t* __restrict__ in, int64_t* __restrict__ out,
                                       int* __restrict__ bad_flag, int64_t* __restrict__ bad_value,
                                       int64_t B, int64_t H, int64_t W, int64_t oh, int64_t ow, int C) {
  __shared__ int32_t hist[256];
  const int64_t cells = B * oh * ow;
  for (int64_t cell = blockIdx.x; cell < cells; cell += gridDim.x) {
    const int64_t j = cell % ow;
    const int64_t i = (cell / ow) % oh;
    const int64_t b = cell / (ow * oh);
    for (int k = threadIdx.x; k < C; k += blockDim.x) hist[k] = 0;
    __syncthreads();
    const int64_t r0 = bin_start(i, H, oh), r1 = bin_end(i, H, oh);
    const int64_t c0 = bin_start(j, W, ow), c1 = bin_end(j, W, ow);
    const int64_t bw = c1 - c0, n = (r1 - r0) * bw;
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      const int64_t r = r0 + t / bw, c = c0 + t % bw;
      const int64_t v = in[(b * H + r) * W + c];
      if (v >= 0 && v < C) {
        atomicAdd(&hist[v], 1);
      } else if (v != kIgnore) {
        if (atomicExch(bad_flag, 1) == 0) *bad_value = v;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) out[cell] = histogram_mode(hist, C, kIgnore);
    __syncthreads();
  }
}

}  // namespace

cudaError_t launch_mode_downsample(const int64_t* in, int64_t* out, int* bad_flag, int64_t* bad_value,
                                   int64_t B, int64_t H, int64_t W, int64_t oh, int64_t ow, int C,
                                   cudaStream_t stream) {
  const int64_t cells = B * oh * ow;
  if (cells == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(cells < (1LL << 30) ? cells : (1LL << 30));
  mode_downsample_kernel<<<blocks, kThreads, 0, stream>>>(in, out, bad_flag, bad_value, B, H, W, oh, ow, C);
  return cudaGetLastError();
}

}  // namespace ssfdan_ext
