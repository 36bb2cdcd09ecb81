// CPU kernel of SPEC sections 1, 2 and 4 in one op: per-pixel softmax confidence, per-(image, class) radix
// select of the K-th largest confidence, the kept labels and their statistics, and mode-downsampled maps.
//
// Passes (each parallel over images x pixel chunks, or over (image, class) pairs):
//   1. logits -> (label byte, confidence key) per pixel, per-chunk class counts; the only read of the logits.
//   2. scatter the keys into class-contiguous segments (a counting sort by label, stable per chunk).
//   3. per (image, class): three histogram digits of the keys find the K-th smallest key exactly.
//   4. keep = key <= threshold key: labels, confidence, per-chunk counts and float64 sums, a byte label map.
//   5. per requested size: the per-bin mode of the byte label map.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <limits>
#include <memory>
#include <type_traits>

#include "../confidence_select.h"
#include "confidence_block.h"

namespace ssfdan_ext {
namespace {

constexpr int64_t kChunk = 16384;  // pixels per task: large enough to amortise, small enough to balance 2048x4096

bool cpu_has_avx2_fma() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool block_confidence_best(const float* x, int64_t stride, int C, int n, int32_t* label, float* conf) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2_fma()) return block_confidence_avx2(x, stride, C, n, label, conf);
#endif
  return block_confidence(x, stride, C, n, label, conf);
}

template <typename T>
void confidence_pass(const T* x, uint8_t* lab8, uint32_t* keys, int32_t* chunk_counts, int64_t B, int64_t C,
                     int64_t N, int64_t nchunks, std::atomic<bool>& bad) {
  at::parallel_for(0, B * nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> converted(std::is_same_v<T, float> ? 0 : C * kBlock);
    int32_t label[kBlock];
    float conf[kBlock];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunks, p0 = (t % nchunks) * kChunk, p1 = std::min(N, p0 + kChunk);
      int32_t* counts = chunk_counts + t * C;
      std::fill(counts, counts + C, 0);
      const T* xb = x + b * C * N;
      bool finite = true;
      for (int64_t q = p0; q < p1; q += kBlock) {
        const int n = static_cast<int>(std::min<int64_t>(kBlock, p1 - q));
        if constexpr (std::is_same_v<T, float>) {
          finite &= block_confidence_best(xb + q, N, static_cast<int>(C), n, label, conf);
        } else {
          for (int64_t c = 0; c < C; ++c) {
            for (int p = 0; p < n; ++p) converted[c * kBlock + p] = static_cast<float>(xb[c * N + q + p]);
          }
          finite &= block_confidence_best(converted.data(), kBlock, static_cast<int>(C), n, label, conf);
        }
        for (int p = 0; p < n; ++p) {
          lab8[b * N + q + p] = static_cast<uint8_t>(label[p]);
          keys[b * N + q + p] = conf_key(conf[p]);
          ++counts[label[p]];
        }
      }
      if (!finite) bad.store(true);
    }
  });
}

// The K-th smallest key of one class segment (K >= 1), digit by digit.
uint32_t select_key(const uint32_t* seg, int64_t n, int64_t k, int32_t* hist) {
  uint32_t prefix = 0;
  for (int d = 0; d < kDigits; ++d) {
    const int bins = digit_bins(d);
    std::fill(hist, hist + bins, 0);
    for (int64_t i = 0; i < n; ++i) {
      if (key_matches(seg[i], prefix, d)) ++hist[key_digit(seg[i], d)];
    }
    const int bin = rank_bin(hist, bins, k, &k);
    prefix |= static_cast<uint32_t>(bin) << digit_shift(d);
  }
  return prefix;
}

SelectionTuple confidence_select_cpu(const at::Tensor& logits_in, double rho, c10::IntArrayRef out_sizes) {
  const auto sizes = check_confidence_select_args(logits_in, rho, out_sizes);
  TORCH_CHECK(logits_in.device().is_cpu(), "confidence_select: logits must be a CPU tensor here");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), C = logits.size(1), H = logits.size(2), W = logits.size(3), N = H * W;
  const auto f32 = logits.options().dtype(at::kFloat);
  const auto i64 = logits.options().dtype(at::kLong);
  at::Tensor labels = at::empty({B, H, W}, i64);
  at::Tensor confidence = at::empty({B, H, W}, f32);
  at::Tensor counts = at::empty({B, C}, i64);
  at::Tensor conf_sums = at::empty({B, C}, f32);
  at::Tensor tau = at::empty({B, C}, f32);
  at::Tensor thr = at::empty({B, C}, f32);
  std::vector<at::Tensor> downsampled;
  for (const auto& [h, w] : sizes) downsampled.push_back(at::empty({B, h, w}, i64));
  if (B == 0 || N == 0) {
    counts.zero_();
    conf_sums.zero_();
    tau.zero_();
    thr.fill_(std::numeric_limits<float>::infinity());
    for (auto& d : downsampled) d.fill_(kIgnoreLabel);
    return {labels, confidence, counts, conf_sums, tau, thr, downsampled};
  }

  const int64_t nchunks = (N + kChunk - 1) / kChunk, tasks = B * nchunks;
  // Scratch without value-initialisation (every element is written before it is read).
  const std::unique_ptr<uint8_t[]> lab8(new uint8_t[B * N]);
  const std::unique_ptr<uint32_t[]> keys(new uint32_t[B * N]), sorted(new uint32_t[B * N]);
  std::vector<int32_t> chunk_counts(tasks * C);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "confidence_select_cpu", [&] {
    confidence_pass(logits.data_ptr<scalar_t>(), lab8.get(), keys.get(), chunk_counts.data(), B, C, N, nchunks,
                    bad);
  });
  TORCH_CHECK_VALUE(!bad.load(), "confidence_select: logits contains NaN or Inf values");

  // Counting-sort offsets: class segments in label order per image, chunks in pixel order inside a segment.
  std::vector<int64_t> seg_start(B * C), seg_size(B * C, 0), chunk_offsets(tasks * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < nchunks; ++k) {
      for (int64_t c = 0; c < C; ++c) seg_size[b * C + c] += chunk_counts[(b * nchunks + k) * C + c];
    }
    int64_t start = b * N;
    for (int64_t c = 0; c < C; ++c) {
      seg_start[b * C + c] = start;
      int64_t offset = start;
      for (int64_t k = 0; k < nchunks; ++k) {
        chunk_offsets[(b * nchunks + k) * C + c] = offset;
        offset += chunk_counts[(b * nchunks + k) * C + c];
      }
      start += seg_size[b * C + c];
    }
  }
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunks, p0 = b * N + (t % nchunks) * kChunk, p1 = std::min(b * N + N, p0 + kChunk);
      int64_t* offsets = chunk_offsets.data() + t * C;
      for (int64_t p = p0; p < p1; ++p) sorted[offsets[lab8[p]]++] = keys[p];
    }
  });

  // Threshold key per (image, class); -1 keeps nothing (K = 0), since every key is >= 0.
  std::vector<int64_t> thr_key(B * C);
  float* thr_ptr = thr.data_ptr<float>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> hist(kDigitBins);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t k = keep_count(rho, seg_size[bc]);
      if (k == 0) {
        thr_key[bc] = -1;
        thr_ptr[bc] = std::numeric_limits<float>::infinity();
        continue;
      }
      const uint32_t key = select_key(sorted.get() + seg_start[bc], seg_size[bc], k, hist.data());
      thr_key[bc] = key;
      thr_ptr[bc] = key_conf(key);
    }
  });

  std::vector<int64_t> part_counts(tasks * C);
  std::vector<double> part_sums(tasks * C);
  int64_t* labels_ptr = labels.data_ptr<int64_t>();
  float* conf_ptr = confidence.data_ptr<float>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / nchunks, p0 = b * N + (t % nchunks) * kChunk, p1 = std::min(b * N + N, p0 + kChunk);
      int64_t* cnt = part_counts.data() + t * C;
      double* sum = part_sums.data() + t * C;
      std::fill(cnt, cnt + C, 0);
      std::fill(sum, sum + C, 0.0);
      const int64_t* tk = thr_key.data() + b * C;
      for (int64_t p = p0; p < p1; ++p) {
        const int c = lab8[p];
        const uint32_t key = keys[p];
        if (static_cast<int64_t>(key) <= tk[c]) {
          const float conf = key_conf(key);
          labels_ptr[p] = c;
          conf_ptr[p] = conf;
          ++cnt[c];
          sum[c] += conf;
        } else {
          labels_ptr[p] = kIgnoreLabel;
          conf_ptr[p] = 0.0f;
          lab8[p] = static_cast<uint8_t>(kIgnoreLabel);  // the byte map now holds the kept labels
        }
      }
    }
  });

  int64_t* counts_ptr = counts.data_ptr<int64_t>();
  float* sums_ptr = conf_sums.data_ptr<float>();
  float* tau_ptr = tau.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      int64_t n = 0;
      double s = 0.0;
      for (int64_t k = 0; k < nchunks; ++k) {
        n += part_counts[(b * nchunks + k) * C + c];
        s += part_sums[(b * nchunks + k) * C + c];
      }
      counts_ptr[b * C + c] = n;
      sums_ptr[b * C + c] = static_cast<float>(s);
      // Eq. 9 in float64, as the reference computes it from the float64 sum.
      tau_ptr[b * C + c] = n > 0 ? static_cast<float>(std::sqrt(static_cast<double>(n) / s)) : 0.0f;
    }
  }

  for (size_t s = 0; s < sizes.size(); ++s) {
    const auto [oh, ow] = sizes[s];
    int64_t* dst = downsampled[s].data_ptr<int64_t>();
    at::parallel_for(0, B * oh, 1, [&](int64_t begin, int64_t end) {
      std::array<int32_t, kMaxClasses> hist;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / oh, i = row % oh;
        for (int64_t j = 0; j < ow; ++j) {
          dst[row * ow + j] = bin_mode(lab8.get() + b * N, H, W, i, j, oh, ow, hist.data(), C, kIgnoreLabel);
        }
      }
    });
  }
  return {labels, confidence, counts, conf_sums, tau, thr, downsampled};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) { m.impl("confidence_select", &confidence_select_cpu); }

}  // namespace ssfdan_ext
