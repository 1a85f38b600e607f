// The merge law (DESIGN.md section 3): chunks of a row's tokens, computed by the brute force,
// merge back to the unsplit row within 1e-12.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "brute_force.h"
#include "distmla/merge.h"
#include "distmla/workload.h"

namespace {

using distmla::test::brute_row;

TEST(Merge, RandomSplitsMergeToTheWholeRow) {
  distmla::WorkloadOptions o;
  o.batch = 3;
  o.h_q = 2;
  o.s_q = 2;
  o.page_size = 16;
  o.lengths = {1, 77, 200};
  o.seed = 7;
  auto w = distmla::make_workload(o);
  auto x = w.host_tensors();
  std::mt19937 rng(3);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int i = 0; i < o.batch; ++i) {
    for (int t = 0; t < o.s_q; ++t) {
      for (int h = 0; h < o.h_q; ++h) {
        auto whole = brute_row(w.shape, x, i, t, h);
        for (int trial = 0; trial < 5; ++trial) {
          // Random cut points (repeats allowed: they make empty chunks), and chunks entirely
          // past the visible tokens (also empty).
          const int L = w.seqlens[i];
          int nc = 1 + static_cast<int>(rng() % 6);
          std::vector<int> cuts = {0, L + 50};
          for (int c = 0; c < nc - 1; ++c) cuts.push_back(static_cast<int>(rng() % (L + 51)));
          std::sort(cuts.begin(), cuts.end());
          std::vector<double> lse;
          std::vector<std::vector<double>> o_c;
          for (size_t c = 0; c + 1 < cuts.size(); ++c) {
            auto part = brute_row(w.shape, x, i, t, h, cuts[c], cuts[c + 1]);
            // An empty chunk's o must never be read: make it NaN.
            if (std::isinf(part.lse)) part.out.assign(512, nan);
            lse.push_back(part.lse);
            o_c.push_back(part.out);
          }
          std::vector<const double*> ptrs;
          for (auto& v : o_c) ptrs.push_back(v.data());
          std::vector<double> merged(512);
          const double l = distmla::merge_partials(static_cast<int>(lse.size()), lse.data(), ptrs.data(),
                                                   512, merged.data());
          if (std::isinf(whole.lse)) {  // the row sees no token (L < s_q): every chunk is empty
            ASSERT_TRUE(std::isinf(l) && l < 0);
          } else {
            ASSERT_NEAR(l, whole.lse, 1e-12) << i << " " << t << " " << h;
          }
          for (int k = 0; k < 512; ++k) ASSERT_NEAR(merged[k], whole.out[k], 1e-12);
        }
      }
    }
  }
}

TEST(Merge, AllEmptyGivesZeroAndMinusInf) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> a(4, nan), b(4, nan);
  const double* o[2] = {a.data(), b.data()};
  double lse[2] = {ninf, ninf};
  std::vector<double> out(4, 5.0);
  EXPECT_EQ(distmla::merge_partials(2, lse, o, 4, out.data()), ninf);
  for (double v : out) EXPECT_EQ(v, 0.0);
  // Zero chunks behaves the same.
  out.assign(4, 5.0);
  EXPECT_EQ(distmla::merge_partials(0, lse, o, 4, out.data()), ninf);
  for (double v : out) EXPECT_EQ(v, 0.0);
}

TEST(Merge, LargeLseDoesNotOverflowAndWeightsAreRight) {
  // exp(1000) overflows a double: the max-subtracted form must not.
  std::vector<double> a = {1, 2}, b = {3, 6};
  const double* o[2] = {a.data(), b.data()};
  double lse[2] = {1000.0, 1000.0 + std::log(3.0)};
  std::vector<double> out(2);
  const double l = distmla::merge_partials(2, lse, o, 2, out.data());
  EXPECT_NEAR(l, 1000.0 + std::log(4.0), 1e-12);
  EXPECT_NEAR(out[0], 0.25 * 1 + 0.75 * 3, 1e-12);
  EXPECT_NEAR(out[1], 0.25 * 2 + 0.75 * 6, 1e-12);
}

TEST(Merge, FloatPartials) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> a = {1.f, -1.f}, b = {2.f, 4.f}, c = {NAN, NAN};
  const float* o[3] = {a.data(), c.data(), b.data()};
  float lse[3] = {0.f, ninf, 0.f};
  std::vector<double> out(2);
  const double l = distmla::merge_partials(3, lse, o, 2, out.data());
  EXPECT_NEAR(l, std::log(2.0), 1e-12);
  EXPECT_NEAR(out[0], 1.5, 1e-12);
  EXPECT_NEAR(out[1], 1.5, 1e-12);
}

}  // namespace
