// The orientation setting of the per-class products (class_gemm.h).
#include "class_gemm.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace ssfdan_ext {

namespace {

// The setting, parsed once; a value that is none of the three is kept to be reported at every read.
struct Setting {
  std::string value;
  bool valid;
  ClassProduct product;
};

const Setting& setting() {
  static const Setting parsed = [] {
    const char* env = std::getenv("SSFDAN_CLASS_GEMM");
    const std::string value = env ? env : "";
    if (value.empty() || value == "auto") return Setting{value, true, ClassProduct::kAuto};
    if (value == "direct") return Setting{value, true, ClassProduct::kDirect};
    if (value == "transposed") return Setting{value, true, ClassProduct::kTransposed};
    return Setting{value, false, ClassProduct::kAuto};
  }();
  return parsed;
}

}  // namespace

ClassProduct class_product_setting() {
  const Setting& s = setting();
  TORCH_CHECK_VALUE(s.valid, "SSFDAN_CLASS_GEMM must be auto, direct or transposed, got '", s.value, "'");
  return s.product;
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
  const ClassProduct product = class_product_setting();
  if (product == ClassProduct::kDirect) return "direct";
  if (product == ClassProduct::kTransposed) return "transposed";
  return cpu_has_avx512() ? "auto: direct (this CPU has AVX-512)"
                          : "auto: transposed for under 128 rows against at least 2^20 weight elements, and for "
                            "layer 1's input gradient (no AVX-512)";
}

}  // namespace ssfdan_ext
