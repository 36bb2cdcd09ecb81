// CUDA kernel of docs/semantics.md section 2 (mode downsampling). Kept free of torch headers so that nvcc compiles it
// in seconds; the tensor-facing side lives in mode_downsample_cuda.cpp.
#include <cuda_runtime.h>

#include <cstdint>

#include "../constants.h"
#include "launchers.h"
#include "mode_block.cuh"

namespace ssfdan_ext {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kIgnore = kIgnoreLabel;

__global__ void mode_downsample_kernel(const int64_t* __restrict__ in, int64_t* __restrict__ out,
                                       int* __restrict__ bad_flag, int64_t* __restrict__ bad_value,
                                       int64_t B, int64_t H, int64_t W, int64_t oh, int64_t ow, int C) {
  __shared__ int32_t hist[256];
  mode_cells_block(in, out, B, H, W, oh, ow, C, kIgnore, hist, [=](int64_t v) {
    if (v != kIgnore && atomicExch(bad_flag, 1) == 0) *bad_value = v;  // reported after the kernel
  });
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
