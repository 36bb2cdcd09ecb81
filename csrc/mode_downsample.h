// Shared by the CPU and CUDA registrations of mode_downsample: argument checks that do not touch data.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "constants.h"
#include "mode_kernels.h"

namespace ssfdan_ext {

inline void check_mode_downsample_args(const at::Tensor& labels, int64_t out_h, int64_t out_w,
                                       int64_t num_classes) {
  TORCH_CHECK_VALUE(labels.dim() == 3, "mode_downsample: labels must be (B, H, W), got ", labels.dim(),
              " dimensions with shape ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "mode_downsample: labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= kMaxClasses,
              "mode_downsample: num_classes must be in [1, ", kMaxClasses, "], got ", num_classes);
  TORCH_CHECK_VALUE(out_h >= 1 && out_w >= 1, "mode_downsample: output size must be positive, got (", out_h,
              ", ", out_w, ")");
  TORCH_CHECK_VALUE(out_h <= labels.size(1) && out_w <= labels.size(2),
              "mode_downsample: output size (", out_h, ", ", out_w, ") must not exceed the label size (",
              labels.size(1), ", ", labels.size(2), ")");
}

}  // namespace ssfdan_ext
