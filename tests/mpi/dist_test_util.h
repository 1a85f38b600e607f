// Shared by the MPI and NCCL suites: the reference rows of a rank's output heads and the check.
#pragma once

#include <gtest/gtest.h>

#include <vector>

#include "distmla/compare.h"
#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.h"

namespace distmla::dist::test_util {

// Compares out/lse of heads oh of the whole batch with the double reference of all heads.
inline CompareResult compare_heads(const dmlaDecodeShape_t& g, Range oh, const void* out, dmlaDataType_t out_dtype,
                                   const float* lse, const std::vector<double>& out_ref,
                                   const std::vector<double>& lse_ref) {
  dmlaDecodeShape_t sub = g;
  sub.h_q = oh.count;
  std::vector<double> o_sub, l_sub;
  for (int b = 0; b < g.batch; ++b)
    for (int t = 0; t < g.s_q; ++t)
      for (int h = 0; h < oh.count; ++h) {
        const size_t r = ((static_cast<size_t>(b) * g.s_q + t) * g.h_q + oh.begin + h) * DMLA_D_V;
        o_sub.insert(o_sub.end(), out_ref.begin() + r, out_ref.begin() + r + DMLA_D_V);
      }
  for (int b = 0; b < g.batch; ++b)
    for (int h = 0; h < oh.count; ++h)
      for (int t = 0; t < g.s_q; ++t) l_sub.push_back(lse_ref[(static_cast<size_t>(b) * g.h_q + oh.begin + h) * g.s_q + t]);
  return compare_with_reference(sub, out, out_dtype, lse, o_sub, l_sub);
}

}  // namespace distmla::dist::test_util
