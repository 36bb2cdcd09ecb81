// The Python module ssfdan_ext._C. Importing it runs the TORCH_LIBRARY registrations of the other sources;
// the module itself reports how it was built, manages the cache of weight-gradient buffers and reports how the
// CPU kernels orient their per-class products.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#ifdef SSFDAN_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef SSFDAN_TORCH_VERSION
#define SSFDAN_TORCH_VERSION "unknown"
#endif
#ifndef SSFDAN_CUDA_ARCHS
#define SSFDAN_CUDA_ARCHS ""
#endif

// The host compiler of this build (clang defines __GNUC__ too, so it is tested first).
#define SSFDAN_STR_(x) #x
#define SSFDAN_STR(x) SSFDAN_STR_(x)
#if defined(__clang__)
#define SSFDAN_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define SSFDAN_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define SSFDAN_COMPILER "msvc " SSFDAN_STR(_MSC_VER)
#else
#define SSFDAN_COMPILER "unknown"
#endif

namespace py = pybind11;

namespace ssfdan_ext {  // csrc/aten/grad_buffer.h and class_gemm.h, declared here without pulling ATen into this file
int64_t release_grad_buffers();
int64_t cached_grad_buffer_bytes();
std::string class_gemm_policy();
}  // namespace ssfdan_ext

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled kernels of ssfdan_ext (operators live under torch.ops.ssfdan_ext).";
  m.def("build_info", []() {
    py::dict info;
    info["cpu"] = true;
#ifdef SSFDAN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
#else
    info["cuda"] = false;
    info["cuda_version"] = py::none();
#endif
    info["cuda_archs"] = std::string(SSFDAN_CUDA_ARCHS);
    info["torch_version"] = std::string(SSFDAN_TORCH_VERSION);
    info["compiler"] = std::string(SSFDAN_COMPILER);
    return info;
  });
  m.def("release_grad_buffers", &ssfdan_ext::release_grad_buffers,
        "Unmap the cached weight-gradient buffers (csrc/aten/grad_buffer.h); returns the bytes released.");
  m.def("cached_grad_buffer_bytes", &ssfdan_ext::cached_grad_buffer_bytes,
        "Bytes of weight-gradient buffers held in the cache for reuse.");
  m.def("class_gemm_policy", &ssfdan_ext::class_gemm_policy,
        "How the CPU kernels orient the per-class products (SSFDAN_CLASS_GEMM; csrc/aten/class_gemm.h).");
}
