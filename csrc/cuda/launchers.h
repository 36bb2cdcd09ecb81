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

enum class LogitsDtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// confidence_select on contiguous logits (B, C, H, W). Scratch: lab8 and keys (B*H*W each), hist (B*C*2048),
// state (2*B*C); counts (B*C) and sums (B*C, float64) must be zero on entry. *bad_flag becomes 1 when a logit
// is NaN or Inf. On return lab8 holds the kept labels (255 where dropped), the input of
// launch_mode_downsample_u8.
cudaError_t launch_confidence_select(const void* logits, LogitsDtype dtype, int64_t B, int C, int64_t H, int64_t W,
                                     double rho, uint8_t* lab8, uint32_t* keys, int32_t* hist, int64_t* state,
                                     int* bad_flag, int64_t* labels, float* confidence, int64_t* counts,
                                     double* sums, float* conf_sums, float* tau, float* thr, cudaStream_t stream);

// Per-bin mode of a byte label map (B, H, W) whose values are classes in [0, C) or 255 -> out (B, oh, ow).
cudaError_t launch_mode_downsample_u8(const uint8_t* in, int64_t* out, int64_t B, int64_t H, int64_t W, int64_t oh,
                                      int64_t ow, int C, cudaStream_t stream);

}  // namespace ssfdan_ext
