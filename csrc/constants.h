// Constants every kernel shares, in a header without torch includes so that the lean .cu files can use it too.
#pragma once

#include <cstdint>

namespace ssfdan_ext {

// The label of a pixel without a class (ssfdan_ext.IGNORE).
constexpr int64_t kIgnoreLabel = 255;
// Class ids share the label value space with IGNORE, so at most 255 classes are addressable.
constexpr int64_t kMaxClasses = 255;

}  // namespace ssfdan_ext
