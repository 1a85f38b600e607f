// Independent brute-force MLA decode in double, written from DESIGN.md section 1 without
// sharing code with lib/src/reference.cpp: one row at a time, token by token through the block
// table. Optionally restricted to a token range [lo, hi) (used by the merge tests).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/distmla.h"

namespace distmla::test {

struct BruteRow {
  std::vector<double> out;  // 512
  double lse;
};

inline double bf_value(const uint16_t* p, dmlaDataType_t dt) {
  return static_cast<double>(half_bits_to_float(*p, dt));
}

// Row (i, t, h) over the tokens it may see that also lie in [lo, hi).
inline BruteRow brute_row(const dmlaDecodeShape_t& s, const dmlaDecodeTensors_t& x, int i, int t,
                          int h, int lo = 0, int hi = std::numeric_limits<int>::max()) {
  const int L = x.seqlens[i];
  const double scale = s.scale == 0.f ? 1.0 / std::sqrt(576.0) : static_cast<double>(s.scale);
  const auto* q = static_cast<const uint16_t*>(x.q) + ((static_cast<size_t>(i) * s.s_q + t) * s.h_q + h) * 576;
  const auto* pool = static_cast<const uint16_t*>(x.kv_pool);
  std::vector<int> tokens;
  for (int j = 0; j < L; ++j) {
    const bool visible = !s.causal || j <= L - s.s_q + t;
    if (visible && j >= lo && j < hi) tokens.push_back(j);
  }
  BruteRow r;
  r.out.assign(512, 0.0);
  if (tokens.empty()) {
    r.lse = -std::numeric_limits<double>::infinity();
    return r;
  }
  std::vector<double> score;
  for (int j : tokens) {
    const int32_t blk = x.block_table[static_cast<size_t>(i) * s.max_blocks_per_seq + j / s.page_size];
    const uint16_t* k = pool + (static_cast<size_t>(blk) * s.page_size + j % s.page_size) * 576;
    double d = 0;
    for (int c = 0; c < 576; ++c) d += bf_value(q + c, s.q_dtype) * bf_value(k + c, s.kv_dtype);
    score.push_back(scale * d);
  }
  double m = score[0];
  for (double v : score) m = v > m ? v : m;
  double z = 0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    const int j = tokens[n];
    const int32_t blk = x.block_table[static_cast<size_t>(i) * s.max_blocks_per_seq + j / s.page_size];
    const uint16_t* k = pool + (static_cast<size_t>(blk) * s.page_size + j % s.page_size) * 576;
    const double w = std::exp(score[n] - m);
    z += w;
    for (int c = 0; c < 512; ++c) r.out[c] += w * bf_value(k + c, s.kv_dtype);
  }
  for (double& v : r.out) v /= z;
  r.lse = m + std::log(z);
  return r;
}

}  // namespace distmla::test
