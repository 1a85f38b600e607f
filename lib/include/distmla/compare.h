// Compares a backend's output with the double reference (DESIGN.md section 8 thresholds).
#pragma once

#include <cstdint>
#include <vector>

#include "distmla/distmla.h"

namespace distmla {

struct CompareResult {
  double rel_err = 0;      // ||out - ref|| / ||ref|| over all rows (0 if ref is all zero and out too)
  double max_lse_err = 0;  // max |lse - lse_ref| over rows with finite lse_ref
  int64_t wrong = 0;       // elements that are NaN/unwritten, rows with wrong -inf/finite lse,
                           // or lse off by more than lse_tol
  bool ok(double rel_tol = 1e-2) const { return wrong == 0 && rel_err < rel_tol; }
};

// out: [batch, s_q, h_q, 512] of out_dtype (bf16/fp16 bits or fp32), lse [batch, h_q, s_q].
CompareResult compare_with_reference(const dmlaDecodeShape_t& shape, const void* out,
                                     dmlaDataType_t out_dtype, const float* lse,
                                     const std::vector<double>& out_ref,
                                     const std::vector<double>& lse_ref, double lse_tol = 1e-3);

}  // namespace distmla
