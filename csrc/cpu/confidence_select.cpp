// CPU kernel of docs/semantics.md sections 1, 2 and 4 in one op: per-pixel softmax confidence, per-(image, class) radix
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
#include <utility>

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

// The per-pixel scratch of one call: byte labels and confidence keys in pixel order, the keys again sorted into
// class segments, and the tasks' (image, pixel chunk) class counts. Every element is written before it is read, so
// nothing is value-initialised.
struct Scratch {
  int64_t B, C, N, nchunks;
  std::unique_ptr<uint8_t[]> lab8;
  std::unique_ptr<uint32_t[]> keys, sorted;
  std::vector<int32_t> chunk_counts;
  std::vector<int64_t> seg_start, seg_size;  // (B*C): where each (image, class) segment of `sorted` lies

  Scratch(int64_t B_, int64_t C_, int64_t N_)
      : B(B_), C(C_), N(N_), nchunks((N_ + kChunk - 1) / kChunk), lab8(new uint8_t[B_ * N_]),
        keys(new uint32_t[B_ * N_]), sorted(new uint32_t[B_ * N_]), chunk_counts(B_ * nchunks * C_),
        seg_start(B_ * C_), seg_size(B_ * C_, 0) {}

  int64_t tasks() const { return B * nchunks; }
  // Flat pixel range [p0, p1) of task t.
  std::pair<int64_t, int64_t> pixels(int64_t t) const {
    const int64_t b = t / nchunks, p0 = b * N + (t % nchunks) * kChunk;
    return {p0, std::min(b * N + N, p0 + kChunk)};
  }
};

// Pass 2: counting-sort offsets (class segments in label order per image, chunks in pixel order inside a segment),
// then each task scatters its keys into its slots.
void sort_by_class(Scratch& s) {
  const int64_t B = s.B, C = s.C, nchunks = s.nchunks;
  std::vector<int64_t> chunk_offsets(s.tasks() * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = 0; k < nchunks; ++k) {
      for (int64_t c = 0; c < C; ++c) s.seg_size[b * C + c] += s.chunk_counts[(b * nchunks + k) * C + c];
    }
    int64_t start = b * s.N;
    for (int64_t c = 0; c < C; ++c) {
      s.seg_start[b * C + c] = start;
      int64_t offset = start;
      for (int64_t k = 0; k < nchunks; ++k) {
        chunk_offsets[(b * nchunks + k) * C + c] = offset;
        offset += s.chunk_counts[(b * nchunks + k) * C + c];
      }
      start += s.seg_size[b * C + c];
    }
  }
  at::parallel_for(0, s.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto [p0, p1] = s.pixels(t);
      int64_t* offsets = chunk_offsets.data() + t * C;
      for (int64_t p = p0; p < p1; ++p) s.sorted[offsets[s.lab8[p]]++] = s.keys[p];
    }
  });
}

// Pass 3: the threshold key per (image, class), -1 to keep nothing (K = 0: every key is >= 0), and its confidence
// in thr (inf for K = 0).
std::vector<int64_t> threshold_keys(const Scratch& s, double rho, float* thr) {
  std::vector<int64_t> thr_key(s.B * s.C);
  at::parallel_for(0, s.B * s.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> hist(kDigitBins);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t k = keep_count(rho, s.seg_size[bc]);
      if (k == 0) {
        thr_key[bc] = -1;
        thr[bc] = std::numeric_limits<float>::infinity();
        continue;
      }
      const uint32_t key = select_key(s.sorted.get() + s.seg_start[bc], s.seg_size[bc], k, hist.data());
      thr_key[bc] = key;
      thr[bc] = key_conf(key);
    }
  });
  return thr_key;
}

// Pass 4: keep = key <= the class's threshold key. Writes the labels and confidence, turns the byte map into the
// kept labels, and gives per-(image, class) counts, float64 confidence sums and tau (eq. 9 in float64, as the
// reference computes it from the float64 sum).
void keep_pass(Scratch& s, const std::vector<int64_t>& thr_key, int64_t* labels, float* confidence,
               int64_t* counts, float* sums, float* tau) {
  const int64_t C = s.C, nchunks = s.nchunks;
  std::vector<int64_t> part_counts(s.tasks() * C);
  std::vector<double> part_sums(s.tasks() * C);
  at::parallel_for(0, s.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto [p0, p1] = s.pixels(t);
      int64_t* cnt = part_counts.data() + t * C;
      double* sum = part_sums.data() + t * C;
      std::fill(cnt, cnt + C, 0);
      std::fill(sum, sum + C, 0.0);
      const int64_t* tk = thr_key.data() + (t / nchunks) * C;
      for (int64_t p = p0; p < p1; ++p) {
        const int c = s.lab8[p];
        const uint32_t key = s.keys[p];
        if (static_cast<int64_t>(key) <= tk[c]) {
          const float conf = key_conf(key);
          labels[p] = c;
          confidence[p] = conf;
          ++cnt[c];
          sum[c] += conf;
        } else {
          labels[p] = kIgnoreLabel;
          confidence[p] = 0.0f;
          s.lab8[p] = static_cast<uint8_t>(kIgnoreLabel);  // the byte map now holds the kept labels
        }
      }
    }
  });
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      int64_t n = 0;
      double sum = 0.0;
      for (int64_t k = 0; k < nchunks; ++k) {
        n += part_counts[(b * nchunks + k) * C + c];
        sum += part_sums[(b * nchunks + k) * C + c];
      }
      counts[b * C + c] = n;
      sums[b * C + c] = static_cast<float>(sum);
      tau[b * C + c] = n > 0 ? static_cast<float>(std::sqrt(static_cast<double>(n) / sum)) : 0.0f;
    }
  }
}

// Pass 5: the per-bin mode of the kept byte labels at one output size.
void downsample_kept(const Scratch& s, int64_t H, int64_t W, at::Tensor& out) {
  const int64_t oh = out.size(1), ow = out.size(2);
  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, s.B * oh, 1, [&](int64_t begin, int64_t end) {
    std::array<int32_t, kMaxClasses> hist;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / oh, i = row % oh;
      for (int64_t j = 0; j < ow; ++j) {
        dst[row * ow + j] = bin_mode(s.lab8.get() + b * s.N, H, W, i, j, oh, ow, hist.data(), s.C, kIgnoreLabel);
      }
    }
  });
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

  Scratch s(B, C, N);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "confidence_select_cpu", [&] {
    confidence_pass(logits.data_ptr<scalar_t>(), s.lab8.get(), s.keys.get(), s.chunk_counts.data(), B, C, N,
                    s.nchunks, bad);
  });
  TORCH_CHECK_VALUE(!bad.load(), "confidence_select: logits contains NaN or Inf values");
  sort_by_class(s);
  const std::vector<int64_t> thr_key = threshold_keys(s, rho, thr.data_ptr<float>());
  keep_pass(s, thr_key, labels.data_ptr<int64_t>(), confidence.data_ptr<float>(), counts.data_ptr<int64_t>(),
            conf_sums.data_ptr<float>(), tau.data_ptr<float>());
  for (auto& out : downsampled) downsample_kept(s, H, W, out);
  return {labels, confidence, counts, conf_sums, tau, thr, downsampled};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssfdan_ext, CPU, m) { m.impl("confidence_select", &confidence_select_cpu); }

}  // namespace ssfdan_ext
