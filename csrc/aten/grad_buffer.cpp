// The weight-gradient buffers of grad_buffer.h and their cache of mappings.
#include "grad_buffer.h"

#include <cstdlib>
#include <memory>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ssfdan_ext {
namespace {

void clear_blocks(const at::Tensor& flat, const std::vector<bool>& clear) {
  const int64_t C = static_cast<int64_t>(clear.size()), block = flat.numel() / C;
  for (int64_t c = 0; c < C; ++c) {
    if (clear[c]) flat.narrow(0, c * block, block).zero_();
  }
}

#if defined(__linux__)
struct Mapping {
  void* data = nullptr;
  size_t length = 0;
  std::vector<bool> dirty;  // class blocks written by the last use (the others are zero)
  ~Mapping() {
    if (data != nullptr) munmap(data, length);
  }
};

struct Cache {
  std::mutex mutex;
  std::vector<std::unique_ptr<Mapping>> free;
  int64_t bytes = 0;
};

Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: buffers may be freed after static destruction
  return *instance;
}

int64_t cache_limit() {
  static const int64_t limit = [] {
    const char* env = std::getenv("SSFDAN_GRAD_CACHE_MB");
    return (env != nullptr && *env != '\0' ? std::atoll(env) : 2048) << 20;
  }();
  return limit;
}

std::unique_ptr<Mapping> take(size_t length) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto it = c.free.begin(); it != c.free.end(); ++it) {
    if ((*it)->length == length) {
      std::unique_ptr<Mapping> m = std::move(*it);
      c.free.erase(it);
      c.bytes -= static_cast<int64_t>(length);
      return m;
    }
  }
  return nullptr;
}

void give_back(std::unique_ptr<Mapping> m) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (c.bytes + static_cast<int64_t>(m->length) > cache_limit()) return;  // unmapped by m's destructor
  c.bytes += static_cast<int64_t>(m->length);
  c.free.push_back(std::move(m));
}
#endif

// A buffer whose class blocks with written[c] the caller overwrites and the others are returned zero; afterwards
// the blocks with dirty_after[c] count as written.
at::Tensor buffer(at::IntArrayRef sizes, const at::TensorOptions& options, const std::vector<bool>& written,
                  const std::vector<bool>& dirty_after) {
  std::vector<bool> absent(written.size());
  for (size_t c = 0; c < written.size(); ++c) absent[c] = !written[c];
#if defined(__linux__)
  constexpr int64_t kMinBytes = int64_t{1} << 20;  // smaller buffers: the allocator's memory is as good
  const int64_t numel = c10::multiply_integers(sizes);
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  if (options.device().is_cpu() && bytes >= kMinBytes) {
    const size_t length = static_cast<size_t>(bytes);
    std::unique_ptr<Mapping> m = take(length);
    std::vector<bool> clear(written.size(), false);
    if (m != nullptr && m->dirty.size() == written.size()) {
      for (size_t c = 0; c < written.size(); ++c) clear[c] = m->dirty[c] && !written[c];
    } else if (m != nullptr) {
      clear = absent;  // split into other blocks before: clear every block the caller does not write
    } else {
      void* data = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (data != MAP_FAILED) {
        m = std::make_unique<Mapping>();
        m->data = data;
        m->length = length;
      }
    }
    if (m != nullptr) {
      m->dirty = dirty_after;
      void* data = m->data;
      // std::function needs a copyable deleter: the mapping travels in a shared_ptr and goes back to the cache.
      auto owner = std::make_shared<std::unique_ptr<Mapping>>(std::move(m));
      at::Tensor out = at::from_blob(data, sizes, [owner](void*) { give_back(std::move(*owner)); }, options);
      clear_blocks(out.view({-1}), clear);
      return out;
    }
  }
#endif
  at::Tensor out = at::empty(sizes, options);
  clear_blocks(out.view({-1}), absent);
  return out;
}

}  // namespace

at::Tensor weight_grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& options,
                              const std::vector<bool>& written) {
  return buffer(sizes, options, written, written);
}

at::Tensor zeroed_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return buffer(sizes, options, {false}, {true});
}

int64_t release_grad_buffers() {
#if defined(__linux__)
  Cache& c = cache();
  std::vector<std::unique_ptr<Mapping>> dropped;
  int64_t released = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    dropped.swap(c.free);
    released = c.bytes;
    c.bytes = 0;
  }
  return released;  // `dropped` unmaps them here, outside the lock
#else
  return 0;
#endif
}

int64_t cached_grad_buffer_bytes() {
#if defined(__linux__)
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return c.bytes;
#else
  return 0;
#endif
}

}  // namespace ssfdan_ext
