// The split/merge law of DESIGN.md section 3 (one function, used at every level on the CPU):
//   lse = log(sum_c exp(lse_c)),  out = sum_c exp(lse_c - lse) * o_c
// computed max-subtracted; chunks with lse_c = -inf drop out; all -inf gives out 0, lse -inf.
#pragma once

namespace distmla {

// Merges n partials of one row of width d. lse[c] is chunk c's lse, o[c] points to its d
// values. Writes the merged row to out (may alias none of the inputs) and returns the merged lse.
double merge_partials(int n, const double* lse, const double* const* o, int d, double* out);
// Same with fp32 partials (accumulates in double).
double merge_partials(int n, const float* lse, const float* const* o, int d, double* out);

}  // namespace distmla
