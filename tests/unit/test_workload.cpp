// Workload generator (NaN poison, shuffled blocks, lengths), FLOP/byte formulas, comparison.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include "distmla/bf16.h"
#include "distmla/compare.h"
#include "distmla/reference.h"
#include "distmla/workload.h"

namespace {

TEST(Workload, LayoutPoisonAndShuffle) {
  distmla::WorkloadOptions o;
  o.batch = 4;
  o.h_q = 2;
  o.s_q = 2;
  o.page_size = 16;
  o.lengths = {0, 5, 16, 40};
  o.spare_blocks = 3;
  const auto w = distmla::make_workload(o);
  const auto& s = w.shape;
  EXPECT_EQ(s.batch, 4);
  EXPECT_EQ(s.max_blocks_per_seq, 3);
  EXPECT_EQ(s.num_blocks, 0 + 1 + 1 + 3 + 3);
  EXPECT_EQ(w.q.size(), 4u * 2 * 2 * 576);
  EXPECT_EQ(w.kv.size(), static_cast<size_t>(s.num_blocks) * 16 * 576);
  EXPECT_DOUBLE_EQ(w.mean_len(), 61.0 / 4);
  std::set<int32_t> used;
  std::vector<int> token_rows(static_cast<size_t>(s.num_blocks) * 16, 0);
  for (int i = 0; i < 4; ++i) {
    const int pages = (w.seqlens[i] + 15) / 16;
    for (int j = 0; j < 3; ++j) {
      const int32_t b = w.block_table[static_cast<size_t>(i) * 3 + j];
      if (j >= pages) {
        EXPECT_EQ(b, -1);
        continue;
      }
      ASSERT_GE(b, 0);
      ASSERT_LT(b, s.num_blocks);
      EXPECT_TRUE(used.insert(b).second) << "block used twice";
    }
    for (int tok = 0; tok < w.seqlens[i]; ++tok) {
      token_rows[static_cast<size_t>(w.block_table[static_cast<size_t>(i) * 3 + tok / 16]) * 16 + tok % 16] = 1;
    }
  }
  // Every row that holds a token is finite and in [-1, 1]; every other row is NaN.
  for (size_t r = 0; r < token_rows.size(); ++r) {
    for (int k = 0; k < 576; ++k) {
      const float v = distmla::bf16_to_float(w.kv[r * 576 + k]);
      if (token_rows[r]) {
        ASSERT_TRUE(std::isfinite(v));
        ASSERT_LE(std::fabs(v), 1.0f);
      } else {
        ASSERT_TRUE(std::isnan(v)) << "row " << r;
      }
    }
  }
  // Logical order differs from physical order somewhere.
  bool shuffled = false;
  for (int j = 0; j < 3; ++j) shuffled |= w.block_table[3 * 3 + j] != w.block_table[3 * 3] + j;
  shuffled |= w.block_table[1 * 3] != 0;
  EXPECT_TRUE(shuffled);
  const auto t = w.host_tensors();
  EXPECT_EQ(t.q, w.q.data());
  EXPECT_EQ(t.out, nullptr);
  EXPECT_EQ(t.lse, nullptr);
}

TEST(Workload, VarlenZeroFracAndDeterminism) {
  distmla::WorkloadOptions o;
  o.batch = 200;
  o.mean_len = 100;
  o.varlen = true;
  o.s_q = 3;
  o.zero_len_frac = 0.2;
  const auto a = distmla::make_workload(o);
  const auto b = distmla::make_workload(o);
  EXPECT_EQ(a.seqlens, b.seqlens);
  EXPECT_EQ(a.kv, b.kv);
  int zeros = 0;
  std::set<int> distinct;
  for (int l : a.seqlens) {
    if (l == 0) {
      ++zeros;
      continue;
    }
    EXPECT_GE(l, 50);
    EXPECT_LE(l, 150);
    distinct.insert(l);
  }
  EXPECT_GT(zeros, 15);
  EXPECT_LT(zeros, 80);
  EXPECT_GT(distinct.size(), 30u);
  o.seed = 2;
  EXPECT_NE(distmla::make_workload(o).seqlens, a.seqlens);
  o.varlen = false;
  o.zero_len_frac = 0;
  for (int l : distmla::make_workload(o).seqlens) EXPECT_EQ(l, 100);
}

TEST(Workload, RejectsBadOptions) {
  distmla::WorkloadOptions o;
  o.batch = 2;
  o.lengths = {1, 2, 3};
  EXPECT_THROW(distmla::make_workload(o), std::invalid_argument);
  o.lengths = {1, -2};
  EXPECT_THROW(distmla::make_workload(o), std::invalid_argument);
}

TEST(Workload, FlopsAndBytesFormulas) {
  dmlaDecodeShape_t s;
  dmlaShapeInit(&s);
  s.batch = 128;
  s.s_q = 1;
  s.h_q = 16;
  // DESIGN.md section 7 (FlashMLA's formulas).
  const double f = distmla::decode_flops(s, 8192);
  const double by = distmla::decode_bytes(s, 8192);
  EXPECT_DOUBLE_EQ(f, 128.0 * 1 * 16 * 8192 * 2 * 1088);
  EXPECT_DOUBLE_EQ(by, 128.0 * (8192 * 576 * 2 + 1 * 16 * 1088 * 2));
  EXPECT_NEAR(f / 469e-6 / 1e12, 77.9, 0.1);  // the table's 82 is at its varlen mean (~5% above)
  EXPECT_NEAR(by / 469e-6 / 1e9, 2585, 1);
  s.s_q = 2;
  s.h_q = 128;
  EXPECT_DOUBLE_EQ(distmla::decode_flops(s, 1000), 128.0 * 2 * 128 * 1000 * 2 * 1088);
}

TEST(Compare, DetectsWrongValues) {
  distmla::WorkloadOptions o;
  o.batch = 2;
  o.h_q = 2;
  o.lengths = {0, 30};
  const auto w = distmla::make_workload(o);
  std::vector<double> ref, lse_ref;
  distmla::reference_decode(w.shape, w.host_tensors(), &ref, &lse_ref);
  std::vector<float> out(ref.begin(), ref.end());
  std::vector<float> lse(lse_ref.begin(), lse_ref.end());
  auto c = distmla::compare_with_reference(w.shape, out.data(), dmlaFP32, lse.data(), ref, lse_ref);
  EXPECT_EQ(c.wrong, 0);
  EXPECT_LT(c.rel_err, 1e-7);
  EXPECT_TRUE(c.ok());
  // One unwritten (NaN) element.
  out[2 * 512 + 7] = NAN;
  c = distmla::compare_with_reference(w.shape, out.data(), dmlaFP32, lse.data(), ref, lse_ref);
  EXPECT_EQ(c.wrong, 1);
  EXPECT_FALSE(c.ok());
  out[2 * 512 + 7] = static_cast<float>(ref[2 * 512 + 7]);
  // A finite lse where -inf is due, and an lse off by 0.01.
  lse[0] = 0.f;
  lse[3] += 0.01f;
  c = distmla::compare_with_reference(w.shape, out.data(), dmlaFP32, lse.data(), ref, lse_ref);
  EXPECT_EQ(c.wrong, 2);
  EXPECT_NEAR(c.max_lse_err, 0.01, 1e-4);
  // A large relative error without NaN.
  lse.assign(lse_ref.begin(), lse_ref.end());
  for (size_t k = 2 * 512; k < 3 * 512; ++k) out[k] *= 1.5f;
  c = distmla::compare_with_reference(w.shape, out.data(), dmlaFP32, lse.data(), ref, lse_ref);
  EXPECT_EQ(c.wrong, 0);
  EXPECT_GT(c.rel_err, 0.1);
  EXPECT_FALSE(c.ok());
  // Nonzero output where the reference is all zero.
  distmla::WorkloadOptions z;
  z.batch = 1;
  z.h_q = 1;
  z.lengths = {0};
  const auto wz = distmla::make_workload(z);
  std::vector<double> rz, lz;
  distmla::reference_decode(wz.shape, wz.host_tensors(), &rz, &lz);
  std::vector<uint16_t> oz(512, 0);
  float lsez = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(distmla::compare_with_reference(wz.shape, oz.data(), dmlaBF16, &lsez, rz, lz).rel_err, 0.0);
  oz[3] = distmla::float_to_bf16(1.f);
  EXPECT_TRUE(std::isinf(distmla::compare_with_reference(wz.shape, oz.data(), dmlaBF16, &lsez, rz, lz).rel_err));
}

}  // namespace
