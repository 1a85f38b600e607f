// Host cross-rank combine and head-slice pack: the merge law, weight-zero parts (lse -inf)
// whose o may hold anything, all-empty rows, and the pack layout.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/dist/host_combine.h"

using namespace distmla;
using namespace distmla::dist;

namespace {
constexpr float kInf = std::numeric_limits<float>::infinity();
}

TEST(HostCombine, MergeLawAndEmptyParts) {
  // 3 parts of 1 row (b 1, s_q 1, heads 1), fp32.
  const int parts = 3;
  const size_t o_bytes = DMLA_D_V * 4, stride = o_bytes + 64;
  std::vector<uint8_t> buf(stride * parts);
  const float lses[3] = {1.0f, -kInf, 2.0f};
  for (int c = 0; c < parts; ++c) {
    float* o = reinterpret_cast<float*>(buf.data() + c * stride);
    for (int k = 0; k < DMLA_D_V; ++k) o[k] = c == 1 ? NAN : static_cast<float>(c + 1);  // part 1: garbage
    *reinterpret_cast<float*>(buf.data() + c * stride + o_bytes) = lses[c];
  }
  CombineLayout l;
  l.num_parts = parts; l.batch = 1; l.s_q = 1; l.heads = 1; l.part_heads = 1;
  l.part_stride = stride; l.lse_offset = o_bytes; l.part_dtype = dmlaFP32;
  std::vector<uint8_t> scratch(combine_host_scratch_bytes(parts));
  std::vector<float> out(DMLA_D_V);
  float lse = 0;
  combine_host(l, buf.data(), out.data(), dmlaFP32, &lse, scratch.data());
  const double w0 = std::exp(1.0), w2 = std::exp(2.0);
  EXPECT_NEAR(lse, std::log(w0 + w2), 1e-5);
  for (float v : out) EXPECT_NEAR(v, (1 * w0 + 3 * w2) / (w0 + w2), 1e-5);

  // Every part empty: out 0, lse -inf, never NaN.
  for (int c = 0; c < parts; ++c) *reinterpret_cast<float*>(buf.data() + c * stride + o_bytes) = -kInf;
  combine_host(l, buf.data(), out.data(), dmlaFP32, &lse, scratch.data());
  EXPECT_EQ(lse, -kInf);
  for (float v : out) EXPECT_EQ(v, 0.f);
}

TEST(HostCombine, PackHeadSlicesLayout) {
  // b 2, s_q 2, 5 heads into 2 chunks (3 + 2 heads), bf16, lse in [b, h, s_q].
  const int b = 2, s_q = 2, h = 5, chunks = 2, max_slice = 3;
  std::vector<uint16_t> o(static_cast<size_t>(b) * s_q * h * DMLA_D_V);
  std::vector<float> lse(static_cast<size_t>(b) * h * s_q);
  for (int i = 0; i < b; ++i)
    for (int t = 0; t < s_q; ++t)
      for (int k = 0; k < h; ++k) {
        const float tag = static_cast<float>(100 * i + 10 * t + k);
        for (int d = 0; d < DMLA_D_V; ++d) o[((i * s_q + t) * h + k) * DMLA_D_V + d] = float_to_bf16(tag);
        lse[(i * h + k) * s_q + t] = tag;
      }
  PackLayout p;
  p.batch = b; p.s_q = s_q; p.heads = h; p.num_chunks = chunks; p.max_slice = max_slice; p.dtype = dmlaBF16;
  p.lse_offset = static_cast<size_t>(b) * s_q * max_slice * DMLA_D_V * 2;
  p.chunk_stride = p.lse_offset + static_cast<size_t>(b) * s_q * max_slice * 4;
  std::vector<uint8_t> out(p.chunk_stride * chunks);
  pack_head_slices_host(p, o.data(), lse.data(), out.data());
  for (int c = 0; c < chunks; ++c) {
    const int begin = c == 0 ? 0 : 3, count = c == 0 ? 3 : 2;
    const uint16_t* co = reinterpret_cast<const uint16_t*>(out.data() + c * p.chunk_stride);
    const float* cl = reinterpret_cast<const float*>(out.data() + c * p.chunk_stride + p.lse_offset);
    for (int i = 0; i < b; ++i)
      for (int t = 0; t < s_q; ++t)
        for (int k = 0; k < count; ++k) {
          const float tag = static_cast<float>(100 * i + 10 * t + begin + k);
          EXPECT_EQ(bf16_to_float(co[((i * s_q + t) * max_slice + k) * DMLA_D_V + 7]), tag);
          EXPECT_EQ(cl[(i * s_q + t) * max_slice + k], tag);
        }
  }
}
