// The threaded CPU reference against the independent brute force (tests/unit/brute_force.h).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <tuple>

#include "brute_force.h"
#include "distmla/reference.h"
#include "distmla/workload.h"

namespace {

using distmla::test::brute_row;

// Compares every row of the reference with the brute force.
void expect_matches_brute(const distmla::Workload& w, int threads = 0) {
  std::vector<double> out, lse;
  const auto x = w.host_tensors();
  distmla::reference_decode(w.shape, x, &out, &lse, threads);
  const auto& s = w.shape;
  ASSERT_EQ(out.size(), static_cast<size_t>(s.batch) * s.s_q * s.h_q * 512);
  ASSERT_EQ(lse.size(), static_cast<size_t>(s.batch) * s.h_q * s.s_q);
  for (int i = 0; i < s.batch; ++i) {
    for (int t = 0; t < s.s_q; ++t) {
      for (int h = 0; h < s.h_q; ++h) {
        const auto r = brute_row(s, x, i, t, h);
        const double got_lse = lse[(static_cast<size_t>(i) * s.h_q + h) * s.s_q + t];
        if (std::isinf(r.lse)) {
          ASSERT_TRUE(std::isinf(got_lse) && got_lse < 0) << "row " << i << "," << t << "," << h;
        } else {
          ASSERT_NEAR(got_lse, r.lse, 1e-12) << "row " << i << "," << t << "," << h;
        }
        const double* o = out.data() + ((static_cast<size_t>(i) * s.s_q + t) * s.h_q + h) * 512;
        for (int k = 0; k < 512; ++k) {
          ASSERT_FALSE(std::isnan(o[k]));
          ASSERT_NEAR(o[k], r.out[k], 1e-12) << "row " << i << "," << t << "," << h << " k " << k;
        }
      }
    }
  }
}

// (s_q, h_q, page_size, causal)
class ReferenceVsBrute : public ::testing::TestWithParam<std::tuple<int, int, int, bool>> {};

TEST_P(ReferenceVsBrute, AllRowsMatch) {
  const auto [s_q, h_q, page, causal] = GetParam();
  distmla::WorkloadOptions o;
  o.batch = 6;
  o.s_q = s_q;
  o.h_q = h_q;
  o.page_size = page;
  o.causal = causal;
  // Zero length, shorter than s_q, one token, exact page multiples and ragged tails.
  o.lengths = {0, 1, s_q > 1 ? s_q - 1 : 2, page, 2 * page + 5, 3 * page - 1};
  o.seed = 100 + s_q * 7 + h_q + page;
  expect_matches_brute(distmla::make_workload(o));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ReferenceVsBrute,
    ::testing::Values(std::make_tuple(1, 1, 16, true), std::make_tuple(1, 3, 32, true),
                      std::make_tuple(1, 16, 64, true), std::make_tuple(1, 3, 128, true),
                      std::make_tuple(2, 3, 16, true), std::make_tuple(3, 1, 64, true),
                      std::make_tuple(4, 16, 32, true), std::make_tuple(4, 3, 128, true),
                      std::make_tuple(4, 3, 16, false), std::make_tuple(2, 1, 64, false)));

TEST(Reference, ManyHeads) {
  distmla::WorkloadOptions o;
  o.batch = 2;
  o.h_q = 128;
  o.s_q = 2;
  o.lengths = {70, 0};
  expect_matches_brute(distmla::make_workload(o));
}

TEST(Reference, CustomScaleAndFp16) {
  distmla::WorkloadOptions o;
  o.batch = 3;
  o.h_q = 5;
  o.s_q = 3;
  o.page_size = 32;
  o.lengths = {40, 3, 100};
  o.scale = 0.37f;
  o.dtype = dmlaFP16;
  const auto w = distmla::make_workload(o);
  expect_matches_brute(w);
  // The scale really changes the result.
  auto w2 = w;
  w2.shape.scale = 0.f;
  std::vector<double> out1, lse1, out2, lse2;
  distmla::reference_decode(w.shape, w.host_tensors(), &out1, &lse1);
  distmla::reference_decode(w2.shape, w2.host_tensors(), &out2, &lse2);
  EXPECT_GT(std::fabs(lse1[0] - lse2[0]), 1e-3);
}

TEST(Reference, ResolvedScale) {
  dmlaDecodeShape_t s;
  dmlaShapeInit(&s);
  EXPECT_DOUBLE_EQ(distmla::resolved_scale(s), 1.0 / 24.0);
  s.scale = 0.125f;
  EXPECT_DOUBLE_EQ(distmla::resolved_scale(s), 0.125);
}

TEST(Reference, ZeroLengthRowsAreZeroAndMinusInf) {
  distmla::WorkloadOptions o;
  o.batch = 2;
  o.h_q = 3;
  o.s_q = 4;
  o.lengths = {0, 2};  // sequence 1: rows t=0,1 see no token (L - s_q + t < 0)
  const auto w = distmla::make_workload(o);
  std::vector<double> out, lse;
  distmla::reference_decode(w.shape, w.host_tensors(), &out, &lse);
  const double ninf = -std::numeric_limits<double>::infinity();
  for (int h = 0; h < 3; ++h) {
    for (int t = 0; t < 4; ++t) EXPECT_EQ(lse[(0 * 3 + h) * 4 + t], ninf);
    EXPECT_EQ(lse[(1 * 3 + h) * 4 + 0], ninf);
    EXPECT_EQ(lse[(1 * 3 + h) * 4 + 1], ninf);
    EXPECT_TRUE(std::isfinite(lse[(1 * 3 + h) * 4 + 2]));
  }
  for (size_t k = 0; k < 4 * 3 * 512; ++k) EXPECT_EQ(out[k], 0.0);
  // Row (1, t=2) sees exactly token 0: its output is that token's V.
  EXPECT_NEAR(lse[(1 * 3 + 0) * 4 + 2], 0.0 + distmla::test::brute_row(w.shape, w.host_tensors(), 1, 2, 0).lse, 1e-12);
}

TEST(Reference, NeverReadsUnusedBlockTableEntries) {
  distmla::WorkloadOptions o;
  o.batch = 3;
  o.h_q = 2;
  o.lengths = {10, 64, 0};
  auto w = distmla::make_workload(o);
  std::vector<double> out1, lse1;
  distmla::reference_decode(w.shape, w.host_tensors(), &out1, &lse1);
  // Entries past each sequence's pages point far outside the pool: reading them would crash
  // or poison; the result must be identical.
  for (int i = 0; i < 3; ++i) {
    const int used = (w.seqlens[i] + 63) / 64;
    for (int j = used; j < w.shape.max_blocks_per_seq; ++j) {
      w.block_table[static_cast<size_t>(i) * w.shape.max_blocks_per_seq + j] = 1 << 30;
    }
  }
  std::vector<double> out2, lse2;
  distmla::reference_decode(w.shape, w.host_tensors(), &out2, &lse2);
  EXPECT_EQ(out1, out2);
  EXPECT_EQ(lse1, lse2);
}

TEST(Reference, ThreadCountDoesNotChangeTheResult) {
  distmla::WorkloadOptions o;
  o.batch = 5;
  o.h_q = 7;
  o.s_q = 2;
  o.mean_len = 150;
  o.varlen = true;
  const auto w = distmla::make_workload(o);
  std::vector<double> out1, lse1, out4, lse4;
  distmla::reference_decode(w.shape, w.host_tensors(), &out1, &lse1, 1);
  distmla::reference_decode(w.shape, w.host_tensors(), &out4, &lse4, 4);
  EXPECT_EQ(out1, out4);  // bitwise: every row is computed the same way on any thread
  EXPECT_EQ(lse1, lse4);
  expect_matches_brute(w, 3);
}

TEST(Reference, SoftmaxIsNotDegenerate) {
  // With the workload's value range the weights are spread: lse - max score is well above 0.
  distmla::WorkloadOptions o;
  o.batch = 1;
  o.h_q = 1;
  o.lengths = {512};
  const auto w = distmla::make_workload(o);
  const auto r = brute_row(w.shape, w.host_tensors(), 0, 0, 0);
  const auto top = brute_row(w.shape, w.host_tensors(), 0, 0, 0, 0, 1);
  EXPECT_GT(r.lse - top.lse, 3.0);  // many tokens carry weight
}

}  // namespace

namespace {

TEST(Reference, MixesOneTokenAndHundredKTokenSequences) {
  distmla::WorkloadOptions o;
  o.batch = 3;
  o.h_q = 2;
  o.s_q = 2;
  o.page_size = 128;
  o.lengths = {1, 100000, 2};
  expect_matches_brute(distmla::make_workload(o));
}

TEST(Reference, FastEnoughForTheMainJob) {
  // b=32, S=4096, h_q=16 (4.6 GFLOP in double) must stay in seconds on 2 cores; this catches a
  // regression by an order of magnitude, not noise.
  distmla::WorkloadOptions o;
  o.batch = 32;
  o.h_q = 16;
  o.mean_len = 4096;
  const auto w = distmla::make_workload(o);
  std::vector<double> out, lse;
  const auto a = std::chrono::steady_clock::now();
  distmla::reference_decode(w.shape, w.host_tensors(), &out, &lse);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
  EXPECT_LT(s, 30.0);  // ~0.5 s alone on 2 cores; room for a loaded shared machine
  for (double v : lse) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
