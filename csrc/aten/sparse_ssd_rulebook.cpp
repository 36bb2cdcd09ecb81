// Exact sparse evaluation of SS-D layers 2-5 (docs/semantics.md section 3), written with ATen.
//
// Class c's activation after layer l equals a per-class constant k_l^c (its response to an all-zero input far
// from the border) everywhere except on E_l^c = A_l^c ∩ N_l^c:
//   A_l^c (forward-active): class-c cells at layer 1; then cells whose 3x3 footprint touches A_{l-1}^c or the
//         zero padding (a max-pool of A_{l-1}^c padded with ones);
//   N_l^c (backward-needed): output cells labelled c at layer 5; then the cells inside the footprint of some
//         cell of N_{l+1}^c (the transposed max-pool).
// The rulebook lists, per layer, the explicit (class, image, cell) pairs sorted by class and, for each pair,
// the value-table rows of its nine taps. A layer's value table is [explicit rows | C constant rows | 1 zero row]:
// a tap reads its class's explicit row if there is one, its class's constant row otherwise (the cell is not
// active, so its value is the constant) and the zero row in the padding. The same device-generic code runs on
// the CPU and on CUDA tensors; the only host reads are one pair count per layer (to size the outputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "../mode_downsample.h"

namespace ssfdan_ext {
namespace {

using at::Tensor;

// Any over the 3x3 windows of stride s of a padded boolean mask (B, C, H+2, W+2) -> (B, C, out_h, out_w): a
// max-pool written as three shifted strided slices per axis (boolean ors are cheaper than a float max-pool).
Tensor window_any(const Tensor& padded, int64_t s, int64_t out_h, int64_t out_w) {
  const auto shifted = [&](const Tensor& t, int64_t dim, int64_t out) {
    const auto slice = [&](int64_t k) { return t.slice(dim, k, k + s * (out - 1) + 1, s); };
    return slice(0).logical_or(slice(1)).logical_or_(slice(2));
  };
  return shifted(shifted(padded, 2, out_h), 3, out_w);
}

// Forward-active cells of a 3x3 layer of stride s: the footprint touches an active cell or the zero padding.
Tensor active_outputs(const Tensor& active, int64_t s, int64_t out_h, int64_t out_w) {
  return window_any(at::constant_pad_nd(active, {1, 1, 1, 1}, 1), s, out_h, out_w);
}

// Needed inputs of a 3x3 layer of stride s with padding 1: p is needed when p = s*q + t - 1 for a needed output
// cell q and a tap t in {0, 1, 2} (per axis). Placing N_l at the positions 1 + s*q of an empty canvas turns this
// into a 3x3 window of stride 1.
Tensor needed_inputs(const Tensor& needed, int64_t s, int64_t in_h, int64_t in_w) {
  const int64_t B = needed.size(0), C = needed.size(1), h = needed.size(2), w = needed.size(3);
  Tensor canvas = at::zeros({B, C, in_h + 2, in_w + 2}, needed.options());
  canvas.slice(2, 1, 1 + s * (h - 1) + 1, s).slice(3, 1, 1 + s * (w - 1) + 1, s).copy_(needed);
  return window_any(canvas, 1, in_h, in_w);
}

void check_rulebook_args(const Tensor& lf, const Tensor& lo, int64_t C, at::IntArrayRef strides) {
  TORCH_CHECK_VALUE(C >= 1 && C <= kMaxClasses, "sparse_ssd_rulebook: num_classes must be in [1, ", kMaxClasses,
                    "], got ", C);
  TORCH_CHECK_VALUE(strides.size() == 4, "sparse_ssd_rulebook: strides must give layers 2-5 (4 ints), got ",
                    strides);
  for (const int64_t s : strides) {
    TORCH_CHECK_VALUE(s == 1 || s == 2, "sparse_ssd_rulebook: strides must be 1 or 2, got ", strides);
  }
  TORCH_CHECK_VALUE(lf.dim() == 3 && lo.dim() == 3 && lf.size(0) == lo.size(0) && lf.numel() > 0 &&
                        lo.numel() > 0,
                    "sparse_ssd_rulebook: label maps must be non-empty (B, h, w) and (B, h', w'), got ", lf.sizes(),
                    " and ", lo.sizes());
  TORCH_CHECK_TYPE(lf.scalar_type() == at::kLong && lo.scalar_type() == at::kLong,
                   "sparse_ssd_rulebook: label maps must be int64, got ", lf.scalar_type(), " and ",
                   lo.scalar_type());
  TORCH_CHECK_VALUE(lf.device() == lo.device(), "sparse_ssd_rulebook: label maps must be on one device, got ",
                    lf.device(), " and ", lo.device());
}

// lf_masked: the feature-resolution labels with every cell outside E_1 set to IGNORE (the routed layer 1 then
// computes exactly E_1); taps[l]: (P, 9) value-table rows of layer l+2's pairs; offsets[l]: (C+1,) first pair of
// each class; out_index: (B*h'*w',) row of each output cell in the last table (its class's explicit row or
// constant row, the zero row for IGNORE cells).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, Tensor> sparse_ssd_rulebook(
    const Tensor& lf_in, const Tensor& lo_in, int64_t C, at::IntArrayRef strides) {
  check_rulebook_args(lf_in, lo_in, C, strides);
  const Tensor lf = lf_in.contiguous(), lo = lo_in.contiguous();
  const int64_t B = lf.size(0);
  std::array<int64_t, 5> hs{lf.size(1)}, ws{lf.size(2)};
  for (int l = 1; l < 5; ++l) {
    hs[l] = (hs[l - 1] - 1) / strides[l - 1] + 1;
    ws[l] = (ws[l - 1] - 1) / strides[l - 1] + 1;
  }
  TORCH_CHECK_VALUE(lo.size(1) == hs[4] && lo.size(2) == ws[4], "sparse_ssd_rulebook: output labels must be (",
                    B, ", ", hs[4], ", ", ws[4], ") for features of size (", hs[0], ", ", ws[0], "), got ",
                    lo.sizes());
  const auto iopts = lf.options();
  const Tensor classes = at::arange(C, iopts).view({1, C, 1, 1});

  // Boolean masks (B, C, h_l, w_l).
  std::array<Tensor, 5> active, needed;
  active[0] = lf.unsqueeze(1).eq(classes);
  for (int l = 1; l < 5; ++l) active[l] = active_outputs(active[l - 1], strides[l - 1], hs[l], ws[l]);
  needed[4] = lo.unsqueeze(1).eq(classes);
  for (int l = 4; l > 0; --l) needed[l - 1] = needed_inputs(needed[l], strides[l - 1], hs[l - 1], ws[l - 1]);

  // Layer 1: the routed GEMM's rows, cells sorted by class (stable, IGNORE last) exactly as routed_conv1x1 sorts
  // them, so row r of its output is the cell order[r]. Cells outside E_1 become IGNORE.
  const Tensor explicit1 = active[0].logical_and(needed[0]);  // (B, C, h, w)
  const Tensor lf_masked = at::where(explicit1.any(1), lf, at::full({}, kIgnoreLabel, iopts));
  const Tensor keys = at::where(lf_masked.eq(kIgnoreLabel), at::full({}, C, iopts), lf_masked).reshape({-1});
  const int64_t cells = keys.numel();
  const Tensor order = std::get<1>(at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  Tensor row_of_cell = at::empty({cells}, iopts);
  row_of_cell.index_put_({order}, at::arange(cells, iopts));
  // prev: (C, B, h, w) explicit row of each (class, cell) of the previous layer, -1 where not explicit.
  Tensor prev = at::where(explicit1.permute({1, 0, 2, 3}), row_of_cell.view({1, B, hs[0], ws[0]}),
                          at::full({}, -1, iopts)).contiguous();
  int64_t rows = cells;

  const Tensor dy = at::arange(9, iopts).div(3, "floor").sub(1).view({1, 9});
  const Tensor dx = at::arange(9, iopts).remainder(3).sub(1).view({1, 9});
  std::vector<Tensor> taps, offsets;
  for (int l = 1; l < 5; ++l) {
    const int64_t s = strides[l - 1], h = hs[l], w = ws[l], ph = hs[l - 1], pw = ws[l - 1];
    const Tensor explicit_l = active[l].logical_and(needed[l]).permute({1, 0, 2, 3}).contiguous();  // (C,B,h,w)
    const Tensor idx = explicit_l.view({-1}).nonzero().view({-1});  // class-major: sorted by class, then raster
    const int64_t P = idx.numel();
    const Tensor pair_class = idx.div(B * h * w, "floor");
    const Tensor rest = idx.remainder(B * h * w);
    const Tensor b = rest.div(h * w, "floor"), cell = rest.remainder(h * w);
    const Tensor py = cell.div(w, "floor").mul(s).unsqueeze(1).add(dy);
    const Tensor px = cell.remainder(w).mul(s).unsqueeze(1).add(dx);
    const Tensor inside = py.ge(0).logical_and(py.lt(ph)).logical_and(px.ge(0)).logical_and(px.lt(pw));
    const Tensor flat = pair_class.mul(B).add(b).unsqueeze(1).mul(ph).add(py.clamp(0, ph - 1)).mul(pw).add(
        px.clamp(0, pw - 1));
    const Tensor row = prev.view({-1}).index_select(0, flat.view({-1})).view({P, 9});
    const Tensor constant = pair_class.unsqueeze(1).add(rows);
    taps.push_back(at::where(inside, at::where(row.ge(0), row, constant), at::full({}, rows + C, iopts)));
    offsets.push_back(at::searchsorted(pair_class, at::arange(C + 1, iopts)));
    prev = at::full({C, B, h, w}, -1, iopts);
    prev.view({-1}).index_put_({idx}, at::arange(P, iopts));
    rows = P;
  }

  const Tensor flat_lo = lo.reshape({-1});
  const Tensor labelled = flat_lo.ge(0).logical_and(flat_lo.lt(C));
  const Tensor cls = at::where(labelled, flat_lo, at::zeros({}, iopts));
  const int64_t hw = hs[4] * ws[4];
  const Tensor pos = at::arange(B * hw, iopts);
  const Tensor row = prev.view({-1}).index_select(0, cls.mul(B * hw).add(pos));
  const Tensor out_index = at::where(labelled, at::where(row.ge(0), row, cls.add(rows)),
                                     at::full({}, rows + C, iopts));
  return {lf_masked, taps, offsets, out_index};
}

}  // namespace

// Device-generic ATen: its only host reads are the per-layer pair counts (see ssfdan_ext/ops/sparse_ssd_rulebook.py).
TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) { m.impl("sparse_ssd_rulebook", &sparse_ssd_rulebook); }
TORCH_LIBRARY_IMPL(ssfdan_ext, CUDA, m) { m.impl("sparse_ssd_rulebook", &sparse_ssd_rulebook); }

}  // namespace ssfdan_ext
