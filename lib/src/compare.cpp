// Comparison against the double reference: relative L2 error over out, absolute error on lse,
// and a count of elements that are NaN/inf (unwritten: outputs are poisoned with NaN first).
#include "distmla/compare.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "distmla/bf16.h"

namespace distmla {

CompareResult compare_with_reference(const dmlaDecodeShape_t& shape, const void* out,
                                     dmlaDataType_t out_dtype, const float* lse,
                                     const std::vector<double>& out_ref,
                                     const std::vector<double>& lse_ref, double lse_tol) {
  CompareResult r;
  const size_t rows = static_cast<size_t>(std::max(shape.batch, 0)) * shape.s_q * shape.h_q;
  const size_t n_out = rows * DMLA_D_V;
  double diff2 = 0, ref2 = 0;
  for (size_t k = 0; k < n_out && k < out_ref.size(); ++k) {
    double v;
    if (out_dtype == dmlaFP32) {
      v = static_cast<const float*>(out)[k];
    } else {
      v = half_bits_to_float(static_cast<const uint16_t*>(out)[k], out_dtype);
    }
    const double ref = out_ref[k];
    ref2 += ref * ref;
    if (!std::isfinite(v)) {
      ++r.wrong;
      continue;
    }
    diff2 += (v - ref) * (v - ref);
  }
  if (ref2 > 0) {
    r.rel_err = std::sqrt(diff2 / ref2);
  } else {
    r.rel_err = diff2 > 0 ? std::numeric_limits<double>::infinity() : 0.0;
  }
  for (size_t k = 0; k < rows && k < lse_ref.size(); ++k) {
    const double ref = lse_ref[k];
    const double v = lse[k];
    if (std::isnan(v)) {
      ++r.wrong;
      continue;
    }
    if (!std::isfinite(ref)) {
      // A row with no token must report -inf exactly.
      if (!(std::isinf(v) && v < 0)) ++r.wrong;
      continue;
    }
    if (!std::isfinite(v)) {
      ++r.wrong;
      continue;
    }
    const double e = std::fabs(v - ref);
    if (e > r.max_lse_err) r.max_lse_err = e;
    if (e > lse_tol) ++r.wrong;
  }
  return r;
}

}  // namespace distmla
