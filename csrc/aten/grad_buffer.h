// Weight-gradient buffers that the layer kernels write class by class, without a full-size zero fill, and zero
// buffers for their other large outputs and gradients.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace ssfdan_ext {

// A tensor of `sizes` for a weight gradient whose elements split into C = written.size() equal class blocks
// (class c owns the flat range [c * numel / C, (c + 1) * numel / C)). The caller overwrites every element of each
// class with written[c] = true; the blocks of the other classes are returned zero.
//
// On the CPU (Linux) a large buffer is an anonymous mapping. A fresh one is zero without being written: the
// blocks of absent classes (at the paper's widths most of the weights, hundreds of MB) cost neither a memset nor,
// until read, memory. When the gradient is freed (e.g. zero_grad(set_to_none=True)) its mapping goes back to a
// cache, up to SSFDAN_GRAD_CACHE_MB (default 2048; 0 turns the cache off), and the next buffer of the same size
// reuses it: its pages are already in memory, which spares the page faults that otherwise made a first write
// about 2.5x slower than writing resident memory (a 19 MB class block of layer 2 at the paper's widths). Only the
// blocks a previous use wrote and this one does not are cleared. The default holds two sets of weight gradients at
// the paper's widths (2 x 630 MB): a loop that backpropagates the two domains one after the other with
// zero_grad(set_to_none=True) has both alive at once, and with room for one set its step took 1.3 s against
// 0.21 s (benchmarks/bench_domain_loss.py, docs/troubleshooting.md). Elsewhere an at::empty tensor whose absent
// blocks are cleared.
at::Tensor weight_grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& options,
                              const std::vector<bool>& written);

// A zero tensor of `sizes` (like at::zeros) that the caller writes in part, e.g. a gradient summed into by
// scatters. Drawn from the same cache on the CPU: a reused mapping is cleared with one memset of resident pages,
// cheaper than faulting a fresh allocation in page by page.
at::Tensor zeroed_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// Unmaps every cached buffer and returns the bytes released.
int64_t release_grad_buffers();

// Bytes held by the cache now.
int64_t cached_grad_buffer_bytes();

}  // namespace ssfdan_ext
