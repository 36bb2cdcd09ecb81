// CPU kernel of docs/semantics.md section 2 (mode downsampling): one histogram per output cell (a comparison per
// pixel for cells inside one region), parallel over rows.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <atomic>

#include "../mode_downsample.h"

namespace ssfdan_ext {
namespace {

// Whether every pixel of rows [r0, r1), columns [c0, c1) of a (H, W) map equals `value`.
bool uniform_bin(const int64_t* map, int64_t W, int64_t r0, int64_t r1, int64_t c0, int64_t c1, int64_t value) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t* row = map + r * W;
    int64_t differs = 0;
    for (int64_t c = c0; c < c1; ++c) differs |= row[c] ^ value;  // no early exit within a row: vectorised
    if (differs != 0) return false;
  }
  return true;
}

at::Tensor mode_downsample_cpu(const at::Tensor& labels_in, int64_t out_h, int64_t out_w,
                               int64_t num_classes) {
  check_mode_downsample_args(labels_in, out_h, out_w, num_classes);
  TORCH_CHECK(labels_in.device().is_cpu(), "mode_downsample: labels must be a CPU tensor here");
  const at::Tensor labels = labels_in.contiguous();
  const int64_t B = labels.size(0), H = labels.size(1), W = labels.size(2);
  at::Tensor out = at::empty({B, out_h, out_w}, labels.options());
  if (B == 0) return out;

  const int64_t* in = labels.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  // A bad label is recorded by the workers (one offending value, whichever thread stored last) and reported
  // after the parallel loop, so that every worker finishes its rows before the error is raised.
  std::atomic<int64_t> bad_value{kIgnoreLabel};
  std::atomic<bool> bad{false};

  at::parallel_for(0, B * out_h, 1, [&](int64_t begin, int64_t end) {
    std::array<int32_t, kMaxClasses> hist;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / out_h, i = row % out_h;
      const int64_t r0 = bin_start(i, H, out_h), r1 = bin_end(i, H, out_h);
      for (int64_t j = 0; j < out_w; ++j) {
        const int64_t c0 = bin_start(j, W, out_w), c1 = bin_end(j, W, out_w);
        int64_t& mode = dst[(b * out_h + i) * out_w + j];
        // Most bins of a segmentation map lie inside one region: a bin of one valid value is its mode, found with
        // a comparison per pixel instead of a histogram increment (which serialises on runs of one class).
        const int64_t first = in[(b * H + r0) * W + c0];
        if (uniform_bin(in + b * H * W, W, r0, r1, c0, c1, first) &&
            ((first >= 0 && first < num_classes) || first == kIgnoreLabel)) {
          mode = first;
          continue;
        }
        std::fill(hist.begin(), hist.begin() + num_classes, 0);
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t* src = in + (b * H + r) * W;
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t v = src[c];
            if (v >= 0 && v < num_classes) {
              ++hist[v];
            } else if (v != kIgnoreLabel) {
              bad_value.store(v);
              bad.store(true);
            }
          }
        }
        mode = histogram_mode(hist.data(), num_classes, kIgnoreLabel);
      }
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), "mode_downsample: labels must lie in [0, ", num_classes,
              ") or equal 255 (IGNORE), found ", bad_value.load());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) { m.impl("mode_downsample", &mode_downsample_cpu); }

}  // namespace ssfdan_ext
