// CUDA kernels of confidence_select (docs/semantics.md sections 1, 2 and 4). Kept free of torch headers so that nvcc
// compiles it in seconds; the tensor-facing side lives in confidence_select_cuda.cpp.
//
// Launch sequence, all on one stream, no host round trip:
//   confidence_kernel   logits -> (label byte, key) per pixel + digit-0 histograms per (image, class)
//   select_kernel       per (image, class): K from the class size, the digit-0 bin holding the K-th key
//   refine_kernel       digit-1 histograms of the keys inside the chosen bins; select_kernel; then digit 2
//   keep_kernel         labels, confidence, counts, float64 sums, and the byte map of kept labels
//   finish_kernel       conf_sums, tau
//   mode_u8_kernel      one per requested size: per-bin mode of the byte map
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../constants.h"
#include "../select_kernels.h"
#include "launchers.h"
#include "mode_block.cuh"

namespace ssfdan_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kSelectThreads = 64;
constexpr int kIgnore = static_cast<int>(kIgnoreLabel);

struct HalfToFloat {
  __device__ float operator()(__half v) const { return __half2float(v); }
};
struct BFloat16ToFloat {
  __device__ float operator()(__nv_bfloat16 v) const { return __bfloat162float(v); }
};
struct FloatToFloat {
  __device__ float operator()(float v) const { return v; }
};

// One atomicAdd per distinct slot of a warp: confident pixels of one class crowd into a few histogram bins,
// and aggregating the warp first divides the contention on those addresses by up to 32.
__device__ inline void add_aggregated(int32_t* hist, int64_t slot, bool active) {
  const unsigned long long key = active ? static_cast<unsigned long long>(slot) : ~0ull;
  const unsigned peers = __match_any_sync(0xffffffffu, key);
  const int leader = __ffs(peers) - 1;
  if (active && static_cast<int>(threadIdx.x % 32) == leader) atomicAdd(hist + slot, __popc(peers));
}

// Grid (x blocks, B): every block walks image blockIdx.y in steps of gridDim.x * blockDim.x pixels. The loop
// bound depends on the block only, so whole warps stay converged for __match_any_sync.
template <typename T, typename ToFloat>
__global__ void confidence_kernel(const T* __restrict__ logits, uint8_t* __restrict__ lab8, uint32_t* __restrict__ keys,
                                  int32_t* __restrict__ hist, int* __restrict__ bad_flag, int C, int64_t N) {
  const int64_t b = blockIdx.y;
  const T* x = logits + b * C * N;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < N;
       start += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = start + threadIdx.x;
    const bool active = p < N;
    int label = 0;
    uint32_t key = 0;
    if (active) {
      float conf;
      if (!pixel_confidence(x + p, N, C, ToFloat{}, &label, &conf)) atomicExch(bad_flag, 1);
      key = conf_key(conf);
      lab8[b * N + p] = static_cast<uint8_t>(label);
      keys[b * N + p] = key;
    }
    add_aggregated(hist, (b * C + label) * kDigitBins + key_digit(key, 0), active);
  }
}

// state[2 * bc] = the rank still sought inside the chosen bins (0: the class keeps nothing),
// state[2 * bc + 1] = the key digits chosen so far. One block per (image, class).
__global__ void select_kernel(const int32_t* __restrict__ hist, int64_t* __restrict__ state, float* __restrict__ thr,
                              int d, double rho) {
  const int64_t bc = blockIdx.x;
  const int32_t* h = hist + bc * kDigitBins;
  const int bins = digit_bins(d), per = (bins + kSelectThreads - 1) / kSelectThreads;
  __shared__ int32_t part[kSelectThreads];
  int32_t s = 0;
  for (int i = threadIdx.x * per; i < bins && i < (threadIdx.x + 1) * per; ++i) s += h[i];
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x != 0) return;
  int64_t k;
  uint32_t prefix = 0;
  if (d == 0) {
    int64_t total = 0;
    for (int i = 0; i < kSelectThreads; ++i) total += part[i];
    k = keep_count(rho, total);
    if (k == 0) {
      state[2 * bc] = 0;
      thr[bc] = __int_as_float(0x7f800000);  // +inf: no pixel of this class is kept
      return;
    }
  } else {
    k = state[2 * bc];
    if (k == 0) return;
    prefix = static_cast<uint32_t>(state[2 * bc + 1]);
  }
  const int chunk = rank_bin(part, kSelectThreads, k, &k);
  const int first = chunk * per;
  const int last = first + per < bins ? first + per : bins;
  const int bin = first + rank_bin(h + first, last - first, k, &k);
  prefix |= static_cast<uint32_t>(bin) << digit_shift(d);
  state[2 * bc] = k;
  state[2 * bc + 1] = prefix;
  if (d == kDigits - 1) thr[bc] = key_conf(prefix);
}

__global__ void refine_kernel(const uint8_t* __restrict__ lab8, const uint32_t* __restrict__ keys,
                              const int64_t* __restrict__ state, int32_t* __restrict__ hist, int d, int C, int64_t N) {
  const int64_t b = blockIdx.y;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < N;
       start += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = start + threadIdx.x;
    bool active = p < N;
    int64_t slot = 0;
    if (active) {
      const int64_t bc = b * C + lab8[b * N + p];
      const uint32_t key = keys[b * N + p];
      active = state[2 * bc] > 0 && key_matches(key, static_cast<uint32_t>(state[2 * bc + 1]), d);
      slot = bc * kDigitBins + key_digit(key, d);
    }
    add_aggregated(hist, slot, active);
  }
}

__global__ void keep_kernel(uint8_t* __restrict__ lab8, const uint32_t* __restrict__ keys,
                            const int64_t* __restrict__ state, int64_t* __restrict__ labels,
                            float* __restrict__ confidence, int64_t* __restrict__ counts, double* __restrict__ sums,
                            int C, int64_t N) {
  const int64_t b = blockIdx.y;
  // Class totals: the lanes of a warp that keep the same class are summed by one of them, then added to
  // per-block totals in shared memory, then one global atomic per class and block.
  __shared__ int32_t block_counts[256];
  __shared__ double block_sums[256];
  __shared__ float lane_conf[kThreads];
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    block_counts[c] = 0;
    block_sums[c] = 0.0;
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp_base = threadIdx.x - lane;
  for (int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x; start < N;
       start += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = start + threadIdx.x;
    int c = 0;
    bool kept = false;
    float conf = 0.0f;
    if (p < N) {
      const int64_t i = b * N + p;
      c = lab8[i];
      const int64_t bc = b * C + c;
      const uint32_t key = keys[i];
      kept = state[2 * bc] > 0 && key <= static_cast<uint32_t>(state[2 * bc + 1]);
      conf = kept ? key_conf(key) : 0.0f;
      labels[i] = kept ? c : kIgnore;
      confidence[i] = conf;
      if (!kept) lab8[i] = kIgnore;  // the byte map now holds the kept labels
    }
    lane_conf[threadIdx.x] = conf;
    const unsigned peers = __match_any_sync(0xffffffffu, kept ? c : -1);
    __syncwarp();
    if (kept && lane == __ffs(peers) - 1) {
      double sum = 0.0;
      for (unsigned m = peers; m != 0; m &= m - 1) sum += lane_conf[warp_base + __ffs(m) - 1];
      atomicAdd(block_counts + c, __popc(peers));
      atomicAdd(block_sums + c, sum);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    if (block_counts[c] > 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + b * C + c),
                static_cast<unsigned long long>(block_counts[c]));
      atomicAdd(sums + b * C + c, block_sums[c]);
    }
  }
}

__global__ void finish_kernel(const int64_t* __restrict__ counts, const double* __restrict__ sums,
                              float* __restrict__ conf_sums, float* __restrict__ tau, int64_t BC) {
  const int64_t bc = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (bc >= BC) return;
  conf_sums[bc] = static_cast<float>(sums[bc]);
  // Eq. 9 in float64 from the float64 sum, as the reference.
  tau[bc] = counts[bc] > 0 ? static_cast<float>(sqrt(static_cast<double>(counts[bc]) / sums[bc])) : 0.0f;
}

// The mode of the kept labels (255 where not kept) per output cell.
__global__ void mode_u8_kernel(const uint8_t* __restrict__ in, int64_t* __restrict__ out, int64_t B, int64_t H,
                               int64_t W, int64_t oh, int64_t ow, int C) {
  __shared__ int32_t hist[256];
  mode_cells_block(in, out, B, H, W, oh, ow, C, kIgnore, hist, [](int64_t) {});  // only 255 lies outside [0, C)
}

unsigned pixel_blocks(int64_t N) {
  const int64_t blocks = (N + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

}  // namespace

cudaError_t launch_confidence_select(const void* logits, LogitsDtype dtype, int64_t B, int C, int64_t H, int64_t W,
                                     double rho, uint8_t* lab8, uint32_t* keys, int32_t* hist, int64_t* state,
                                     int* bad_flag, int64_t* labels, float* confidence, int64_t* counts,
                                     double* sums, float* conf_sums, float* tau, float* thr, cudaStream_t stream) {
  const int64_t N = H * W, BC = B * C;
  if (B == 0 || N == 0) return cudaSuccess;
  const dim3 grid(pixel_blocks(N), static_cast<unsigned>(B));
  const size_t hist_bytes = static_cast<size_t>(BC) * kDigitBins * sizeof(int32_t);
  cudaError_t err = cudaMemsetAsync(hist, 0, hist_bytes, stream);
  if (err != cudaSuccess) return err;
  switch (dtype) {
    case LogitsDtype::kFloat32:
      confidence_kernel<float, FloatToFloat><<<grid, kThreads, 0, stream>>>(
          static_cast<const float*>(logits), lab8, keys, hist, bad_flag, C, N);
      break;
    case LogitsDtype::kFloat16:
      confidence_kernel<__half, HalfToFloat><<<grid, kThreads, 0, stream>>>(
          static_cast<const __half*>(logits), lab8, keys, hist, bad_flag, C, N);
      break;
    case LogitsDtype::kBFloat16:
      confidence_kernel<__nv_bfloat16, BFloat16ToFloat><<<grid, kThreads, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(logits), lab8, keys, hist, bad_flag, C, N);
      break;
  }
  select_kernel<<<static_cast<unsigned>(BC), kSelectThreads, 0, stream>>>(hist, state, thr, 0, rho);
  for (int d = 1; d < kDigits; ++d) {
    if ((err = cudaMemsetAsync(hist, 0, hist_bytes, stream)) != cudaSuccess) return err;
    refine_kernel<<<grid, kThreads, 0, stream>>>(lab8, keys, state, hist, d, C, N);
    select_kernel<<<static_cast<unsigned>(BC), kSelectThreads, 0, stream>>>(hist, state, thr, d, rho);
  }
  keep_kernel<<<grid, kThreads, 0, stream>>>(lab8, keys, state, labels, confidence, counts, sums, C, N);
  finish_kernel<<<static_cast<unsigned>((BC + kThreads - 1) / kThreads), kThreads, 0, stream>>>(counts, sums,
                                                                                               conf_sums, tau, BC);
  return cudaGetLastError();
}

cudaError_t launch_mode_downsample_u8(const uint8_t* in, int64_t* out, int64_t B, int64_t H, int64_t W, int64_t oh,
                                      int64_t ow, int C, cudaStream_t stream) {
  const int64_t cells = B * oh * ow;
  if (cells == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(cells < (1LL << 30) ? cells : (1LL << 30));
  mode_u8_kernel<<<blocks, 128, 0, stream>>>(in, out, B, H, W, oh, ow, C);
  return cudaGetLastError();
}

}  // namespace ssfdan_ext
