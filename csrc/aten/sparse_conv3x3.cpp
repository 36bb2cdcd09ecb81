// One SS-D 3x3 layer on the explicit (class, cell) pairs of a rulebook (csrc/aten/sparse_ssd_rulebook.cpp),
// written with ATen: out[p] = b_c + sum_t W_c[t] table[taps[p, t]] for the pairs of class c, one GEMM per chunk
// of a class's pairs over the gathered taps. The same device-generic code serves the CPU and, for dtypes the
// Triton kernels do not take (float64), CUDA tensors.
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

using at::Tensor;
void check_conv_args(const char* op, const Tensor& table, const Tensor& taps, const Tensor& offsets,
                     const Tensor& weight) {
  // Zero widths are rejected before any chunk size divides by them; zero pairs (P = 0) are valid.
  TORCH_CHECK_VALUE(table.dim() == 2 && table.numel() > 0, op,
                    ": table must be (T, m_in) with T, m_in >= 1, got shape ", table.sizes());
  TORCH_CHECK_VALUE(taps.dim() == 2 && taps.size(1) == 9 && taps.scalar_type() == at::kLong, op,
                    ": taps must be (P, 9) int64, got shape ", taps.sizes(), " and dtype ", taps.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.size(0) >= 2 && offsets.scalar_type() == at::kLong, op,
                    ": offsets must be (C+1,) int64, got shape ", offsets.sizes());
  const int64_t C = offsets.size(0) - 1;
  TORCH_CHECK_VALUE(weight.dim() == 4 && weight.size(0) % C == 0 && weight.size(0) > 0 &&
                        weight.size(1) == table.size(1) && weight.size(2) == 3 && weight.size(3) == 3,
                    op, ": weight must be (C*m_out, m_in, 3, 3) with C = ", C, " and m_in = ", table.size(1),
                    ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == table.scalar_type(), op, ": weight dtype ", weight.scalar_type(),
                   " differs from the table dtype ", table.scalar_type());
}

// Half and bfloat16 are computed in float32: the backward's segment sums add thousands of tap gradients into
// each constant row, which 8 mantissa bits cannot hold.
at::ScalarType compute_type(const Tensor& t) {
  const auto st = t.scalar_type();
  return st == at::kHalf || st == at::kBFloat16 ? at::kFloat : st;
}

// Pairs per GEMM. On the CPU the gathered (rows, 9*m_in) operand is bounded to about 4 MB, to stay in cache. On
// CUDA a launch costs more than a cache miss: a class's pairs form one GEMM (as in the routed layer 1), split only
// where the gathered operand would pass 256 MB (float64 at the paper's widths: ~3,600 pairs of layer 2).
int64_t chunk_rows(const Tensor& table) {
  const int64_t row_bytes = 9 * std::max<int64_t>(table.size(1), 1) * table.element_size();
  const int64_t budget = table.is_cpu() ? (int64_t{1} << 22) : (int64_t{1} << 28);
  return std::max<int64_t>(64, budget / row_bytes);
}

// x[r, i*9 + t] = table[taps[r, t], i]: a pair's nine tap rows laid out like the weight's (m_out, m_in*3*3)
// rows, so each class's GEMM reads the canonical weight in place.
Tensor gather_taps(const Tensor& table, const Tensor& taps) {
  const int64_t count = taps.size(0), mi = table.size(1);
  if (!table.is_cpu()) {
    return table.index_select(0, taps.reshape({-1})).view({count, 9, mi}).transpose(1, 2).reshape({count, mi * 9});
  }
  Tensor out = at::empty({count, mi * 9}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "sparse_ssd_gather", [&] {
    const scalar_t* src = table.const_data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    const int64_t* rows = taps.const_data_ptr<int64_t>();
    at::parallel_for(0, count, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        // Nine read streams and one sequential write: the output is written in order, each tap row read in order.
        std::array<const scalar_t*, 9> row;
        for (int64_t t = 0; t < 9; ++t) row[t] = src + rows[r * 9 + t] * mi;
        scalar_t* d = dst + r * mi * 9;
        for (int64_t i = 0; i < mi; ++i, d += 9) {
          for (int64_t t = 0; t < 9; ++t) d[t] = row[t][i];
        }
      }
    });
  });
  return out;
}

// table[taps[r, t], i] += x[r, i*9 + t]: the segment sum of the backward. Many pairs hit the same row (the
// constant and zero rows above all), so threads split the channels, never the pairs: no element has two writers.
void scatter_add_taps(Tensor& table, const Tensor& taps, const Tensor& x) {
  const int64_t count = taps.size(0), mi = table.size(1);
  if (!table.is_cpu()) {
    table.index_add_(0, taps.reshape({-1}), x.view({count, mi, 9}).transpose(1, 2).reshape({count * 9, mi}));
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "sparse_ssd_scatter_add", [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    scalar_t* dst = table.data_ptr<scalar_t>();
    const int64_t* rows = taps.const_data_ptr<int64_t>();
    const int64_t block = std::max<int64_t>(8, (mi + at::get_num_threads() - 1) / at::get_num_threads());
    at::parallel_for(0, (mi + block - 1) / block, 1, [&](int64_t begin, int64_t end) {
      const int64_t i0 = begin * block, i1 = std::min(mi, end * block);
      for (int64_t r = 0; r < count; ++r) {
        const scalar_t* s = src + r * mi * 9;
        const int64_t* tap = rows + r * 9;
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t t = 0; t < 9; ++t) dst[tap[t] * mi + i] += s[i * 9 + t];
        }
      }
    });
  });
}

// body(c, r0, n, first) for each chunk of at most `chunk` pairs of each class, `first` on a class's first chunk;
// classes without pairs get no call.
template <typename F>
void for_each_chunk(const Tensor& host_offsets, int64_t chunk, F&& body) {
  const int64_t* off = host_offsets.data_ptr<int64_t>();
  for (int64_t c = 0; c + 1 < host_offsets.numel(); ++c) {
    for (int64_t r0 = off[c]; r0 < off[c + 1]; r0 += chunk) {
      body(c, r0, std::min(chunk, off[c + 1] - r0), r0 == off[c]);
    }
  }
}

Tensor sparse_conv3x3_forward(const Tensor& table_in, const Tensor& taps_in, const Tensor& offsets,
                              const Tensor& weight, const Tensor& bias) {
  check_conv_args("sparse_conv3x3_forward", table_in, taps_in, offsets, weight);
  const Tensor taps = taps_in.contiguous();
  const int64_t C = offsets.size(0) - 1, mo = weight.size(0) / C, mi = weight.size(1), P = taps.size(0);
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == C * mo, "sparse_conv3x3_forward: bias must be (", C * mo,
                    ",), got shape ", bias.sizes());
  const auto st = compute_type(table_in);
  const Tensor table = table_in.to(st).contiguous(), b = bias.to(st);
  const Tensor wt = weight.to(st).reshape({C, mo, mi * 9});
  Tensor out = at::empty({P, mo}, table.options());
  for_each_chunk(offsets.cpu(), chunk_rows(table), [&](int64_t c, int64_t r0, int64_t n, bool) {
    Tensor dst = out.narrow(0, r0, n);
    addmm_class_rows(dst, b.narrow(0, c * mo, mo), gather_taps(table, taps.narrow(0, r0, n)), wt[c]);
  });
  return out.to(table_in.scalar_type());
}

std::tuple<Tensor, Tensor, Tensor> sparse_conv3x3_backward(const Tensor& grad_out_in, const Tensor& table_in,
                                                           const Tensor& taps_in, const Tensor& offsets,
                                                           const Tensor& weight, std::array<bool, 3> mask) {
  check_conv_args("sparse_conv3x3_backward", table_in, taps_in, offsets, weight);
  const Tensor taps = taps_in.contiguous();
  const int64_t C = offsets.size(0) - 1, mo = weight.size(0) / C, mi = weight.size(1), P = taps.size(0);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 2 && grad_out_in.size(0) == P && grad_out_in.size(1) == mo,
                    "sparse_conv3x3_backward: grad_out must be (P, m_out) = (", P, ", ", mo, "), got shape ",
                    grad_out_in.sizes());
  const auto st = compute_type(table_in);
  const Tensor table = table_in.to(st).contiguous(), grad_out = grad_out_in.to(st).contiguous();
  const Tensor wt = weight.to(st).reshape({C, mo, mi * 9});
  Tensor grad_table, grad_weight, grad_bias;
  if (mask[0]) grad_table = zeroed_buffer(table.sizes(), table.options());
  // The weight gradient is written once: a class's first chunk overwrites its rows, later chunks add to them, and
  // the rows of classes without pairs are zeroed (no full-size zero fill before the GEMMs).
  const Tensor host_offsets = offsets.cpu();
  if (mask[1]) {
    const int64_t* off = host_offsets.data_ptr<int64_t>();
    std::vector<bool> written(C);
    for (int64_t c = 0; c < C; ++c) written[c] = off[c] != off[c + 1];
    grad_weight = weight_grad_buffer({C, mo, mi * 9}, table.options(), written);
  }
  if (mask[2]) grad_bias = at::zeros({C * mo}, table.options());
  for_each_chunk(host_offsets, chunk_rows(table), [&](int64_t c, int64_t r0, int64_t n, bool first) {
    const Tensor g = grad_out.narrow(0, r0, n);
    const Tensor chunk_taps = taps.narrow(0, r0, n);
    if (mask[0]) scatter_add_taps(grad_table, chunk_taps, mm_class_input_grad(g, wt[c]));
    if (mask[1]) {
      Tensor dst = grad_weight[c];
      const Tensor x = gather_taps(table, chunk_taps);
      if (first) {
        at::mm_out(dst, g.t(), x);
      } else {
        dst.addmm_(g.t(), x);
      }
    }
    if (mask[2]) grad_bias.narrow(0, c * mo, mo).add_(g.sum(0));
  });
  const auto out_type = table_in.scalar_type();
  const auto cast = [&](const Tensor& t) { return t.defined() ? t.to(out_type) : t; };
  if (mask[1]) grad_weight = grad_weight.view(weight.sizes());
  return {cast(grad_table), cast(grad_weight), cast(grad_bias)};
}

}  // namespace

// CUDA tensors take this code only where the Triton kernels do not serve them; see
// ssfdan_ext/ops/sparse_conv3x3.py.
TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) {
  m.impl("sparse_conv3x3_forward", &sparse_conv3x3_forward);
  m.impl("sparse_conv3x3_backward", &sparse_conv3x3_backward);
}

// The same kernels: the op's Python side sends CUDA tensors here only for what Triton does not serve.
TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) {
  m.impl("sparse_conv3x3_forward", &sparse_conv3x3_forward);
  m.impl("sparse_conv3x3_backward", &sparse_conv3x3_backward);
}

}  // namespace ssfdan_ext
