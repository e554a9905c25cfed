// Symmetric int8 codes of one float32 row (quantize_int8_rowwise and ivf_search's query codes;
// spec: quantize_int8_rowwise_reference). The same float32 operations as the reference (max |x|,
// / 127, x / s, round half to even, clamp), so codes and scales are bit-identical.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace silverrec {
namespace {  // included by ivf_ops.cpp only: one translation unit

// The codes of one row into out [D]; returns its scale. `what` and n name the row in the error.
float quantize_row(const float* row, int64_t D, int8_t* out, int64_t n, const char* what) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t d = 0; d < D; ++d) {
    finite &= std::isfinite(row[d]);
    amax = std::max(amax, std::fabs(row[d]));
  }
  if (!finite) {
    int64_t d = 0;
    while (std::isfinite(row[d])) ++d;
    TORCH_CHECK(false, what, " contains NaN/inf (first at row ", n, ", column ", d, ": ", row[d], ")");
  }
  const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float y = std::nearbyint(row[d] / s);
    out[d] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, y)));
  }
  return s;
}

}  // namespace
}  // namespace silverrec
