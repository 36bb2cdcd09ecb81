// Tensor side of the CUDA confidence_select kernels (compiled by the host compiler, registered for CUDA).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../confidence_select.h"
#include "launchers.h"

namespace ssfdan_ext {
namespace {

SelectionTuple confidence_select_cuda(const at::Tensor& logits_in, double rho, c10::IntArrayRef out_sizes) {
  const auto sizes = check_confidence_select_args(logits_in, rho, out_sizes);
  TORCH_CHECK(logits_in.is_cuda(), "confidence_select: logits must be a CUDA tensor here");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), C = logits.size(1), H = logits.size(2), W = logits.size(3), N = H * W;
  TORCH_CHECK_VALUE(B <= 65535, "confidence_select: at most 65535 images per call on CUDA (the grid's y "
                    "dimension), got B = ", B);
  const auto opts = logits.options();
  at::Tensor labels = at::empty({B, H, W}, opts.dtype(at::kLong));
  at::Tensor confidence = at::empty({B, H, W}, opts.dtype(at::kFloat));
  at::Tensor counts = at::zeros({B, C}, opts.dtype(at::kLong));
  at::Tensor sums = at::zeros({B, C}, opts.dtype(at::kDouble));
  at::Tensor conf_sums = at::zeros({B, C}, opts.dtype(at::kFloat));
  at::Tensor tau = at::zeros({B, C}, opts.dtype(at::kFloat));
  at::Tensor thr = at::empty({B, C}, opts.dtype(at::kFloat));
  std::vector<at::Tensor> downsampled;
  for (const auto& [h, w] : sizes) downsampled.push_back(at::empty({B, h, w}, opts.dtype(at::kLong)));
  if (B == 0 || N == 0) {
    thr.fill_(std::numeric_limits<float>::infinity());
    for (auto& d : downsampled) d.fill_(kIgnoreLabel);
    return {labels, confidence, counts, conf_sums, tau, thr, downsampled};
  }

  at::Tensor lab8 = at::empty({B, H, W}, opts.dtype(at::kByte));
  at::Tensor keys = at::empty({B, N}, opts.dtype(at::kInt));
  at::Tensor hist = at::empty({B * C * kDigitBins}, opts.dtype(at::kInt));
  at::Tensor state = at::empty({B * C * 2}, opts.dtype(at::kLong));
  at::Tensor bad = at::zeros({1}, opts.dtype(at::kInt));
  const auto dtype = logits.scalar_type() == at::kFloat  ? LogitsDtype::kFloat32
                     : logits.scalar_type() == at::kHalf ? LogitsDtype::kFloat16
                                                         : LogitsDtype::kBFloat16;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_confidence_select(
      logits.data_ptr(), dtype, B, static_cast<int>(C), H, W, rho, lab8.data_ptr<uint8_t>(),
      reinterpret_cast<uint32_t*>(keys.data_ptr<int32_t>()), hist.data_ptr<int32_t>(), state.data_ptr<int64_t>(),
      bad.data_ptr<int>(), labels.data_ptr<int64_t>(), confidence.data_ptr<float>(), counts.data_ptr<int64_t>(),
      sums.data_ptr<double>(), conf_sums.data_ptr<float>(), tau.data_ptr<float>(), thr.data_ptr<float>(), stream));
  for (size_t s = 0; s < sizes.size(); ++s) {
    C10_CUDA_CHECK(launch_mode_downsample_u8(lab8.data_ptr<uint8_t>(), downsampled[s].data_ptr<int64_t>(), B, H, W,
                                             sizes[s].first, sizes[s].second, static_cast<int>(C), stream));
  }
  // The one host sync: the NaN/Inf flag, read after every kernel of the op is queued.
  TORCH_CHECK_VALUE(bad.item<int>() == 0, "confidence_select: logits contains NaN or Inf values");
  return {labels, confidence, counts, conf_sums, tau, thr, downsampled};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) { m.impl("confidence_select", &confidence_select_cuda); }

}  // namespace ssfdan_ext
