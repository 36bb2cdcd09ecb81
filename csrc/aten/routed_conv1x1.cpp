// Semantic separation + the first (1x1) SS-D layer as a top-1 routed GEMM, written with ATen
// (docs/semantics.md section 3).
//
// Separating the features by class and applying class c's 1x1 convolution gives W1_c F(p) + b1_c at the cells
// labelled c and the bias b1_c everywhere else, so only one (class, cell) product per cell is needed: cells are
// sorted by class (stable, IGNORE last) and each class's rows go through one GEMM with that class's weight.
// The same device-generic code serves the CPU and, for dtypes the Triton kernels do not take, CUDA tensors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "../mode_downsample.h"
#include "class_gemm.h"
#include "grad_buffer.h"

namespace ssfdan_ext {
namespace {

void check_routed_args(const at::Tensor& features, const at::Tensor& labels, const at::Tensor& weight,
                       int64_t num_classes) {
  TORCH_CHECK_VALUE(num_classes >= 1 && num_classes <= kMaxClasses, "routed_conv1x1: num_classes must be in [1, ",
                    kMaxClasses, "], got ", num_classes);
  TORCH_CHECK_VALUE(features.dim() == 4, "routed_conv1x1: features must be (B, n, h, w), got shape ",
                    features.sizes());
  // Zero sizes are rejected before any chunk size divides by them.
  TORCH_CHECK_VALUE(features.numel() > 0, "routed_conv1x1: features must be (B, n, h, w) with every dimension ",
                    "non-zero, got shape ", features.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(features.scalar_type()),
                   "routed_conv1x1: features must be floating point, got ", features.scalar_type());
  TORCH_CHECK_VALUE(labels.dim() == 3 && labels.size(0) == features.size(0) && labels.size(1) == features.size(2) &&
                        labels.size(2) == features.size(3),
                    "routed_conv1x1: labels must be (B, h, w) = (", features.size(0), ", ", features.size(2), ", ",
                    features.size(3), ") to match the features, got shape ", labels.sizes());
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "routed_conv1x1: labels must be int64, got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1 &&
                        weight.size(1) == features.size(1) && weight.size(0) % num_classes == 0 &&
                        weight.size(0) > 0,
                    "routed_conv1x1: weight must be (C*m, n, 1, 1) with C = ", num_classes, ", n = ",
                    features.size(1), " and m >= 1, got shape ", weight.sizes());
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

// Offset of channel 0 of each cell (b, p) in the NCHW tensor; channel k is k*h*w further.
std::vector<int64_t> cell_bases(const at::Tensor& cells, int64_t n, int64_t hw) {
  const at::Tensor idx = cells.contiguous();
  const int64_t* cell = idx.const_data_ptr<int64_t>();
  std::vector<int64_t> base(idx.numel());
  for (size_t r = 0; r < base.size(); ++r) base[r] = cell[r] / hw * n * hw + cell[r] % hw;
  return base;
}

// Cells per GEMM on the CPU: bounds the gathered (n, cells) operand and its gradient to about 2 MB each.
int64_t cells_per_chunk(int64_t n, int64_t elem) {
  return std::max<int64_t>(256, (int64_t{1} << 21) / (std::max<int64_t>(n, 1) * elem));  // n = 0: no division by 0
}

// Copies between the NCHW planes of a (B, n, h, w) tensor and the columns of an (n, count) operand, column r being
// the cell of cells[r]: kToColumns reads the planes (the forward's gather), otherwise it writes them (the backward's
// scatter; every cell appears once, so no two writes meet). Threads split the channels and read or write each
// plane in order: a transposed copy of the whole feature map costs several times more.
template <bool kToColumns>
void copy_columns(const at::Tensor& planes, const at::Tensor& columns, const at::Tensor& cells) {
  const int64_t n = planes.size(1), hw = planes.size(2) * planes.size(3), count = cells.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, planes.scalar_type(), "routed_columns", [&] {
    scalar_t* plane_data = static_cast<scalar_t*>(planes.data_ptr());
    scalar_t* column_data = static_cast<scalar_t*>(columns.data_ptr());
    const std::vector<int64_t> base = cell_bases(cells, n, hw);
    at::parallel_for(0, n, 8, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* plane = plane_data + k * hw;
        scalar_t* column = column_data + k * count;
        for (int64_t r = 0; r < count; ++r) {
          if constexpr (kToColumns) {
            column[r] = plane[base[r]];
          } else {
            plane[base[r]] = column[r];
          }
        }
      }
    });
  });
}

at::Tensor gather_columns(const at::Tensor& features, const at::Tensor& cells) {
  at::Tensor out = at::empty({features.size(1), cells.numel()}, features.options());
  copy_columns<true>(features, out, cells);
  return out;
}

void scatter_columns(at::Tensor& grad, const at::Tensor& columns, const at::Tensor& cells) {
  copy_columns<false>(grad, columns.contiguous(), cells);
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
  at::Tensor out = zeroed_buffer({N, m}, features.options());
  const bool cpu = features.is_cpu();
  const at::Tensor src = cpu ? features.contiguous() : cell_rows(features);
  const at::Tensor w = weight.reshape({C * m, n});
  const at::Tensor host_offsets = offsets.cpu();
  const int64_t* off = host_offsets.data_ptr<int64_t>();
  const int64_t chunk = cpu ? cells_per_chunk(n, features.element_size()) : N;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t start = off[c]; start < off[c + 1]; start += chunk) {
      const int64_t count = std::min(chunk, off[c + 1] - start);
      at::Tensor dst = out.narrow(0, start, count);
      const at::Tensor cells = order.narrow(0, start, count);
      const at::Tensor x = cpu ? gather_columns(src, cells).t() : src.index_select(0, cells);
      addmm_class_rows(dst, bias.narrow(0, c * m, m), x, w.narrow(0, c * m, m));
    }
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

  const bool cpu = features.is_cpu();
  at::Tensor grad_rows, grad_weight, grad_bias, src, grad_features;
  if (output_mask[0]) {  // IGNORE cells get no gradient
    if (cpu) grad_features = zeroed_buffer(features.sizes(), features.options());
    else grad_rows = zeroed_buffer({N, n}, features.options());
  }
  if (output_mask[1]) {  // written once: a class's first chunk overwrites its rows, classes without cells get 0
    std::vector<bool> written(C);
    for (int64_t c = 0; c < C; ++c) written[c] = off[c] != off[c + 1];
    grad_weight = weight_grad_buffer({C * m, n}, features.options(), written);
    src = cpu ? features.contiguous() : cell_rows(features);
  }
  if (output_mask[2]) grad_bias = at::zeros({C * m}, features.options());
  const int64_t chunk = cpu ? cells_per_chunk(n, features.element_size()) : N;
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t start = off[c]; start < off[c + 1]; start += chunk) {
      const int64_t count = std::min(chunk, off[c + 1] - start);
      const at::Tensor g = grad_out.narrow(0, start, count);
      const at::Tensor idx = order.narrow(0, start, count);
      if (output_mask[0] && cpu) {  // the input gradient's columns, (n, count); class_gemm.h orients the product
        const at::Tensor wc = w.narrow(0, c * m, m);
        scatter_columns(grad_features, transposed_layer1_input_grad() ? at::mm(wc.t(), g.t()) : at::mm(g, wc).t(),
                        idx);
      }
      if (output_mask[0] && !cpu) grad_rows.index_copy_(0, idx, at::mm(g, w.narrow(0, c * m, m)));
      if (output_mask[1]) {
        at::Tensor dst = grad_weight.narrow(0, c * m, m);
        const at::Tensor x = cpu ? gather_columns(src, idx).t() : src.index_select(0, idx);
        if (start == off[c]) {
          at::mm_out(dst, g.t(), x);
        } else {
          dst.addmm_(g.t(), x);
        }
      }
      if (output_mask[2]) grad_bias.narrow(0, c * m, m).add_(g.sum(0));
    }
  }
  if (output_mask[0] && !cpu) grad_features = grad_rows.view({B, h, w_, n}).permute({0, 3, 1, 2}).contiguous();
  if (output_mask[1]) grad_weight = grad_weight.view(weight.sizes());
  return {grad_features, grad_weight, grad_bias};
}

}  // namespace

// The code is device-generic ATen: CPU tensors always take it, CUDA tensors only when the Triton kernels cannot
// serve them (float64, or no Triton installed); see ssfdan_ext/ops/routed_conv1x1.py.
static void register_routed(torch::Library& m) {
  m.impl("routed_conv1x1_forward", &routed_conv1x1_forward);
  m.impl("routed_conv1x1_backward", &routed_conv1x1_backward);
}

TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) { register_routed(m); }
TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) { register_routed(m); }

}  // namespace ssfdan_ext
