// The median of per-iteration timings, shared by distmla_decode's jobs.
#pragma once

#include <algorithm>
#include <vector>

namespace distmla::examples {

// 0 for no samples; the mean of the two middle samples for an even count.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace distmla::examples
