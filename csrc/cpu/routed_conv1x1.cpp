// Semantic separation + the first (1x1) SS-D layer as a top-1 routed GEMM, written with ATen (SPEC section 3).
//
// Separating the features by class and applying class c's 1x1 convolution gives W1_c F(p) + b1_c at the cells
// labelled c and the bias b1_c everywhere else, so only one (class, cell) product per cell is needed: cells are
// sorted by class (stable, IGNORE last) and each class's rows go through one GEMM with that class's weight.
// The same device-generic code serves the CPU and, for dtypes the Triton kernels do not take, CUDA tensors.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

#include "../mode_downsample.h"

namespace ssfdan_ext {
namespace {

void check_routed_args(const at::Tensor& features, const at::Tensor& labels, const at::Tensor& weight,
                       int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= kMaxClasses, "routed_conv1x1: num_classes must be in [1, ",
                    kMaxClasses, "], got ", num_classes);
  TORCH_CHECK_VALUE(features.dim() == 4, "routed_conv1x1: features must be (B, n, h, w), got shape ",
                    features.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()),
                   "routed_conv1x1: features must be floating point, got ", features.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 3 && labels.size(0) == features.size(0) && labels.size(1) == features.size(2) &&
                        labels.size(2) == features.size(3),
                    "routed_conv1x1: labels must be (B, h, w) = (", features.size(0), ", ", features.size(2), ", ",
                    features.size(3), ") to match the features, got shape ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "routed_conv1x1: labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 &&
                        weight.size(1) == features.size(1) && weight.size(0) % num_classes == 0,
                    "routed_conv1x1: weight must be (C*m, n, 1, 1) with C = ", num_classes, " and n = ",
                    features.size(1), ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == features.scalar_type(), "routed_conv1x1: weight dtype ",
                   weight.scalar_type(), " differs from the features dtype ", features.scalar_type());
  TORCH_CHECK_VALUE(weight.device() == features.device() && labels.device() == features.device(),
                    "routed_conv1x1: features, labels and weight must be on one device, got ", features.device(),
                    ", ", labels.device(), " and ", weight.device());
}

// The (B*h*w, n) cell-major copy of the features: one contiguous row per cell, so a class's rows are a gather.
at::Tensor cell_rows(const at::Tensor& features) {
  const int64_t n = features.size(1);
  return features.permute({0, 2, 3, 1}).reshape({-1, n}).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> routed_conv1x1_forward(const at::Tensor& features,
                                                                     const at::Tensor& labels,
                                                                     const at::Tensor& weight,
                                                                     const at::Tensor& bias, int64_t num_classes) {
  check_routed_args(features, labels, weight, num_classes);
  const int64_t C = num_classes, m = weight.size(0) / C, n = features.size(1);
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == C * m, "routed_conv1x1: bias must be (C*m,) = (", C * m,
                    ",), got shape ", bias.sizes());
  TORCH_CHECK_TYPE(bias.scalar_type() == features.scalar_type(), "routed_conv1x1: bias dtype ", bias.scalar_type(),
                   " differs from the features dtype ", features.scalar_type());
  const at::Tensor flat = labels.reshape({-1});
  const bool bad = ((flat < 0) | ((flat >= C) & (flat != kIgnoreLabel))).any().item<bool>();
  TORCH_CHECK_VALUE(!bad, "routed_conv1x1: labels must lie in [0, ", C, ") or equal 255 (IGNORE)");

  // IGNORE sorts after every class; a stable sort keeps each class's cells in raster order (coalesced gathers).
  const at::Tensor keys = at::where(flat == kIgnoreLabel, at::full({}, C, flat.options()), flat);
  at::Tensor sorted_keys, order;
  std::tie(sorted_keys, order) = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor offsets = at::searchsorted(sorted_keys, at::arange(C + 1, flat.options()));

  const int64_t N = flat.numel();
  at::Tensor out = at::zeros({N, m}, features.options());
  const at::Tensor rows = cell_rows(features);
  const at::Tensor w = weight.reshape({C * m, n});
  const at::Tensor host_offsets = offsets.cpu();
  const int64_t* off = host_offsets.data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c) {
    const int64_t start = off[c], count = off[c + 1] - off[c];
    if (count == 0) continue;
    at::Tensor dst = out.narrow(0, start, count);
    at::addmm_out(dst, bias.narrow(0, c * m, m), rows.index_select(0, order.narrow(0, start, count)),
                  w.narrow(0, c * m, m).t());
  }
  return {out, order, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> routed_conv1x1_backward(
    const at::Tensor& grad_out_in, const at::Tensor& features, const at::Tensor& weight, const at::Tensor& order,
    const at::Tensor& offsets, std::array<bool, 3> output_mask) {
  const int64_t B = features.size(0), n = features.size(1), h = features.size(2), w_ = features.size(3);
  const int64_t C = offsets.numel() - 1;
  TORCH_CHECK_VALUE(C >= 1 && weight.size(0) % C == 0, "routed_conv1x1_backward: offsets must be (C+1,) for a "
                    "weight of C*m rows, got ", offsets.sizes(), " and ", weight.sizes());
  const int64_t m = weight.size(0) / C, N = B * h * w_;
  TORCH_CHECK_VALUE(grad_out_in.dim() == 2 && grad_out_in.size(0) == N && grad_out_in.size(1) == m,
                    "routed_conv1x1_backward: grad_out must be (B*h*w, m) = (", N, ", ", m, "), got shape ",
                    grad_out_in.sizes());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor w = weight.reshape({C * m, n});
  const at::Tensor host_offsets = offsets.cpu();
  const int64_t* off = host_offsets.data_ptr<int64_t>();

  at::Tensor grad_rows, grad_weight, grad_bias, rows;
  if (output_mask[0]) grad_rows = at::zeros({N, n}, features.options());  // IGNORE cells get no gradient
  if (output_mask[1]) {
    grad_weight = at::zeros({C * m, n}, features.options());
    rows = cell_rows(features);
  }
  if (output_mask[2]) grad_bias = at::zeros({C * m}, features.options());
  for (int64_t c = 0; c < C; ++c) {
    const int64_t start = off[c], count = off[c + 1] - off[c];
    if (count == 0) continue;
    const at::Tensor g = grad_out.narrow(0, start, count);
    const at::Tensor idx = order.narrow(0, start, count);
    if (output_mask[0]) grad_rows.index_copy_(0, idx, at::mm(g, w.narrow(0, c * m, m)));
    if (output_mask[1]) {
      at::Tensor dst = grad_weight.narrow(0, c * m, m);
      at::mm_out(dst, g.t(), rows.index_select(0, idx));
    }
    if (output_mask[2]) grad_bias.narrow(0, c * m, m).copy_(g.sum(0));
  }
  at::Tensor grad_features;
  if (output_mask[0]) grad_features = grad_rows.view({B, h, w_, n}).permute({0, 3, 1, 2}).contiguous();
  if (output_mask[1]) grad_weight = grad_weight.view(weight.sizes());
  return {grad_features, grad_weight, grad_bias};
}

}  // namespace

// The code is device-generic ATen: CPU tensors always take it, CUDA tensors only when the Triton kernels cannot
// serve them (float64, or no Triton installed); see ssfdan_ext/ops/routed_conv1x1.py.
TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) {
  m.impl("routed_conv1x1_forward", &routed_conv1x1_forward);
  m.impl("routed_conv1x1_backward", &routed_conv1x1_backward);
}

TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) {
  m.impl("routed_conv1x1_forward", &routed_conv1x1_forward);
  m.impl("routed_conv1x1_backward", &routed_conv1x1_backward);
}

}  // namespace ssfdan_ext
