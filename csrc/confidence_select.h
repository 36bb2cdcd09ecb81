// Shared by the CPU and CUDA registrations of confidence_select: argument checks that do not touch data.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

#include "mode_downsample.h"
#include "select_kernels.h"

namespace ssfdan_ext {

// (h, w) pairs of out_sizes, checked against the logits' (H, W).
inline std::vector<std::pair<int64_t, int64_t>> check_confidence_select_args(const at::Tensor& logits, double rho,
                                                                             c10::IntArrayRef out_sizes) {
  TORCH_CHECK_VALUE(logits.dim() == 4, "confidence_select: logits must be (B, C, H, W), got shape ",
                    logits.sizes());
  const auto dtype = logits.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
                   "confidence_select: logits must be float32, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(logits.size(1) >= 1 && logits.size(1) <= kMaxClasses,
                    "confidence_select: logits.shape[1] (number of classes) must be in [1, ", kMaxClasses,
                    "], got ", logits.size(1));
  TORCH_CHECK_VALUE(rho >= 0.0 && rho <= 1.0, "confidence_select: rho must be in [0, 1], got ", rho);
  // Both backends count the pixels of one image in int32 histograms (select digits, per-block totals): a larger
  // image would wrap those counts and select a wrong threshold silently.
  TORCH_CHECK_VALUE(logits.size(2) * logits.size(3) <= INT32_MAX,
                    "confidence_select: H * W must be at most 2^31 - 1 pixels per image, got ", logits.size(2), " * ",
                    logits.size(3));
  TORCH_CHECK_VALUE(out_sizes.size() % 2 == 0,
                    "confidence_select: out_sizes must hold (h, w) pairs, got ", out_sizes.size(), " values");
  std::vector<std::pair<int64_t, int64_t>> sizes;
  for (size_t i = 0; i < out_sizes.size(); i += 2) {
    const int64_t h = out_sizes[i], w = out_sizes[i + 1];
    TORCH_CHECK_VALUE(h >= 1 && w >= 1 && h <= logits.size(2) && w <= logits.size(3),
                      "confidence_select: out_sizes[", i / 2, "] = (", h, ", ", w,
                      ") must be positive and at most the logits' (H, W) = (", logits.size(2), ", ", logits.size(3),
                      ")");
    sizes.emplace_back(h, w);
  }
  return sizes;
}

using SelectionTuple = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                  std::vector<at::Tensor>>;

}  // namespace ssfdan_ext
