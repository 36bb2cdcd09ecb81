// The orientation setting of the per-class products (class_gemm.h).
#include "class_gemm.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace ssfdan_ext {

ClassProduct class_product_setting() {
  static const std::string value = [] {
    const char* env = std::getenv("SSFDAN_CLASS_GEMM");
    return std::string(env ? env : "");
  }();
  if (value.empty() || value == "auto") return ClassProduct::kAuto;
  if (value == "direct") return ClassProduct::kDirect;
  TORCH_CHECK_VALUE(value == "transposed", "SSFDAN_CLASS_GEMM must be auto, direct or transposed, got '", value,
                    "'");
  return ClassProduct::kTransposed;
}

bool cpu_has_avx512() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

std::string class_gemm_policy() {
  switch (class_product_setting()) {
    case ClassProduct::kDirect:
      return "direct";
    case ClassProduct::kTransposed:
      return "transposed";
    case ClassProduct::kAuto:
      break;
  }
  return cpu_has_avx512() ? "auto: direct (this CPU has AVX-512)"
                          : "auto: transposed for under 128 rows against at least 2^20 weight elements, and for "
                            "layer 1's input gradient (no AVX-512)";
}

}  // namespace ssfdan_ext
