// DESIGN.md section 3: the merge law, max-subtracted so no exp() overflows.
#include "distmla/merge.h"

#include <cmath>
#include <limits>

namespace distmla {

namespace {
template <typename T>
double merge_impl(int n, const T* lse, const T* const* o, int d, double* out) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  double m = neg_inf;
  for (int c = 0; c < n; ++c) {
    double l = static_cast<double>(lse[c]);
    if (l > m) m = l;
  }
  for (int k = 0; k < d; ++k) out[k] = 0.0;
  // All chunks empty (or none): the row saw no token.
  if (!(m > neg_inf)) return neg_inf;
  double sum = 0.0;
  for (int c = 0; c < n; ++c) {
    double l = static_cast<double>(lse[c]);
    if (!(l > neg_inf)) continue;  // empty chunk: weight 0, its o is never read
    double w = std::exp(l - m);
    sum += w;
    const T* oc = o[c];
    for (int k = 0; k < d; ++k) out[k] += w * static_cast<double>(oc[k]);
  }
  // sum >= 1 because the max chunk has weight exactly 1.
  double inv = 1.0 / sum;
  for (int k = 0; k < d; ++k) out[k] *= inv;
  return m + std::log(sum);
}
}  // namespace

double merge_partials(int n, const double* lse, const double* const* o, int d, double* out) {
  return merge_impl(n, lse, o, d, out);
}

double merge_partials(int n, const float* lse, const float* const* o, int d, double* out) {
  return merge_impl(n, lse, o, d, out);
}

}  // namespace distmla
