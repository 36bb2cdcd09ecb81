// Weight-gradient buffers whose untouched rows are zero without being written.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ssfdan_ext {

// (buffer, zeroed): a tensor for a weight gradient that a kernel writes class by class. On the CPU (Linux) it is an
// anonymous mapping, which the kernel hands out zero-filled on first touch: the rows of classes without cells are
// never written, so they cost neither a memset nor, until read, any memory (at the paper's widths most classes'
// rows, hundreds of MB, which a fresh at::zeros would fault in and clear page by page). Elsewhere an uninitialised
// tensor (zeroed = false): the caller zeroes the rows it does not write.
inline std::pair<at::Tensor, bool> weight_grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
#if defined(__linux__)
  constexpr int64_t kMinBytes = int64_t{1} << 20;  // smaller buffers: the allocator's memory is as good
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (options.device().is_cpu() && bytes >= kMinBytes) {
    const size_t length = static_cast<size_t>(bytes);
    void* data = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (data != MAP_FAILED) {
      return {at::from_blob(data, sizes, [length](void* p) { munmap(p, length); }, options), true};
    }
  }
#endif
  return {at::empty(sizes, options), false};
}

}  // namespace ssfdan_ext
