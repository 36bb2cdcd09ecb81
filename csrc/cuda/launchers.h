// Plain-pointer entry points of the CUDA kernels. The .cu files include only this header and the CUDA runtime,
// so nvcc never parses the torch headers; the *_cuda.cpp files wrap them for tensors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ssfdan_ext {

// labels (B, H, W) int64 -> out (B, oh, ow) int64. *bad_flag is set to 1 (and *bad_value to one offending
// label) when a label lies outside [0, C) and is not 255.
cudaError_t launch_mode_downsample(const int64_t* in, int64_t* out, int* bad_flag, int64_t* bad_value,
                                   int64_t B, int64_t H, int64_t W, int64_t oh, int64_t ow, int C,
                                   cudaStream_t stream);

}  // namespace ssfdan_ext
