// Shard plan math: head splits, page round-robin, exact causal visible counts, cost model.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.hpp"

using namespace distmla::dist;

TEST(ShardPlan, SplitRangeUneven) {
  EXPECT_EQ(split_range(7, 2, 0).begin, 0);
  EXPECT_EQ(split_range(7, 2, 0).count, 4);
  EXPECT_EQ(split_range(7, 2, 1).begin, 4);
  EXPECT_EQ(split_range(7, 2, 1).count, 3);
  EXPECT_EQ(split_range(2, 4, 3).count, 0);
  int total = 0;
  for (int i = 0; i < 5; ++i) total += split_range(128, 5, i).count;
  EXPECT_EQ(total, 128);
}

TEST(ShardPlan, RankLayoutAndHeads) {
  ShardPlan p(4, 3, 2, 2, 7, 1, true, 64);
  EXPECT_EQ(p.tp_rank(), 1);
  EXPECT_EQ(p.cp_rank(), 1);
  EXPECT_EQ(p.heads().begin, 4);
  EXPECT_EQ(p.heads().count, 3);
  EXPECT_EQ(p.slice(0).count, 2);
  EXPECT_EQ(p.my_slice().begin, 2);
  EXPECT_EQ(p.my_slice().count, 1);
  EXPECT_EQ(p.max_slice(), 2);
}

TEST(ShardPlan, RejectsBadInputNamingTheValue) {
  try {
    ShardPlan p(4, 0, 3, 1, 8, 1, true, 64);
    FAIL();
  } catch (const distmla::Error& e) {
    EXPECT_NE(std::string(e.what()).find("world = 4"), std::string::npos) << e.what();
    EXPECT_EQ(e.code(), dmlaErrorInvalidArgument);
  }
  EXPECT_THROW(ShardPlan(2, 2, 1, 2, 8, 1, true, 64), distmla::Error);   // rank
  EXPECT_THROW(ShardPlan(4, 0, 4, 1, 3, 1, true, 64), distmla::Error);   // h_q < tp
  EXPECT_THROW(ShardPlan(2, 0, 1, 2, 8, 5, true, 64), distmla::Error);   // s_q
  EXPECT_THROW(ShardPlan(2, 0, 1, 2, 8, 1, true, 48), distmla::Error);   // page size
}

TEST(ShardPlan, TokensOnRankMatchesBruteForce) {
  for (int ps : {16, 64})
    for (int cp : {1, 2, 3, 4})
      for (int len = 0; len < 6 * ps * cp; len += 7) {
        int64_t sum = 0;
        for (int r = 0; r < cp; ++r) {
          int64_t brute = 0;
          for (int g = 0; g < len; ++g) brute += owner_cp_rank(g, ps, cp) == r;
          EXPECT_EQ(tokens_on_rank(len, ps, cp, r), brute);
          sum += brute;
        }
        EXPECT_EQ(sum, len);
      }
}

TEST(ShardPlan, LocalTokenIndexIsPacked) {
  // A rank's tokens, in global order, are its local tokens 0, 1, 2, ...
  const int ps = 16, cp = 3;
  for (int r = 0; r < cp; ++r) {
    int64_t next = 0;
    for (int g = 0; g < 20 * ps; ++g)
      if (owner_cp_rank(g, ps, cp) == r) EXPECT_EQ(local_token_index(g, ps, cp), next++);
  }
}

TEST(ShardPlan, VisibleCountsAreExact) {
  // Brute force: query t of a sequence of length L sees global tokens 0..L-s_q+t; the rank's
  // visible count is the number of those it owns (they are its first local tokens).
  const int ps = 16;
  for (int cp : {2, 3, 4})
    for (int s_q = 2; s_q <= 4; ++s_q)
      for (int r = 0; r < cp; ++r) {
        ShardPlan p(cp, r, 1, cp, 4, s_q, true, ps);
        ASSERT_TRUE(p.split_tail());
        for (int L = 0; L < 5 * ps * cp; ++L)
          for (int t = 0; t < s_q; ++t) {
            int brute = 0;
            for (int g = 0; g <= L - s_q + t; ++g) brute += owner_cp_rank(g, ps, cp) == r;
            ASSERT_EQ(p.visible_tokens(L, t), brute) << "L " << L << " t " << t << " r " << r;
          }
      }
}

TEST(ShardPlan, BulkPlusTailCoverExactlyTheVisibleTokens) {
  // bulk (whole pages, every query) + tail row (i, t) == visible tokens of query t, and the tail
  // block table starts at the first page after the bulk and needs at most kTailPages pages.
  const int ps = 16;
  for (int cp : {2, 3})
    for (int s_q = 2; s_q <= 4; ++s_q)
      for (int r = 0; r < cp; ++r) {
        ShardPlan p(cp, r, 1, cp, 4, s_q, true, ps);
        std::vector<int32_t> lens;
        for (int L = 0; L < 4 * ps * cp; ++L) lens.push_back(L);
        const int b = static_cast<int>(lens.size()), mbps = 8;
        std::vector<int32_t> table(static_cast<size_t>(b) * mbps);
        for (size_t k = 0; k < table.size(); ++k) table[k] = static_cast<int32_t>(1000 + k);
        std::vector<int32_t> bulk(b), tail(static_cast<size_t>(b) * s_q),
            tail_table(static_cast<size_t>(b) * s_q * ShardPlan::kTailPages);
        p.local_seqlens(lens.data(), b, bulk.data());
        p.tail_seqlens(lens.data(), b, tail.data());
        p.tail_block_table(lens.data(), table.data(), b, mbps, tail_table.data());
        for (int i = 0; i < b; ++i) {
          EXPECT_EQ(bulk[i] % ps, 0);
          for (int t = 0; t < s_q; ++t) {
            const int32_t n = tail[i * s_q + t];
            EXPECT_GE(n, 0);
            EXPECT_LE(n, ShardPlan::kTailPages * ps);
            EXPECT_EQ(bulk[i] + n, p.visible_tokens(lens[i], t));
            const int32_t* row = &tail_table[(static_cast<size_t>(i) * s_q + t) * ShardPlan::kTailPages];
            for (int k = 0; k * ps < n; ++k) EXPECT_EQ(row[k], table[static_cast<size_t>(i) * mbps + bulk[i] / ps + k]);
          }
        }
      }
}

TEST(ShardPlan, LocalCausalRuleIsNotExactWithCp) {
  // Why the step is split: with cp 2, page 16, L = 17, s_q = 2, rank 0 holds tokens 0..15 and
  // both queries see all of them, but "L_local - s_q + t" would hide one for t = 0.
  ShardPlan p(2, 0, 1, 2, 4, 2, true, 16);
  EXPECT_EQ(p.visible_tokens(17, 0), 16);
  EXPECT_EQ(p.visible_tokens(17, 1), 16);
  EXPECT_NE(p.local_tokens(17) - 2 + 0 + 1, p.visible_tokens(17, 0));
}

TEST(ShardPlan, NoSplitWithoutCpOrCausal) {
  EXPECT_FALSE(ShardPlan(2, 0, 2, 1, 4, 3, true, 64).split_tail());
  EXPECT_FALSE(ShardPlan(2, 0, 1, 2, 4, 3, false, 64).split_tail());
  EXPECT_FALSE(ShardPlan(2, 0, 1, 2, 4, 1, true, 64).split_tail());
  ShardPlan p(2, 1, 1, 2, 4, 2, true, 64);
  EXPECT_EQ(p.local_pages(129), 1);  // pages 0,1,2: rank 1 holds page 1
  EXPECT_EQ(p.local_pages(64), 0);
}

TEST(ShardPlan, CostModel) {
  CostEstimate c = estimate_cost(128, 8192, 1, 128, 1, 4, 64, true, 2);
  EXPECT_DOUBLE_EQ(c.kv_bytes_per_gpu, 128.0 * 32 * 64 * 1152);
  EXPECT_DOUBLE_EQ(c.alltoall_bytes_per_gpu * 4, c.allgather_bytes_per_gpu);
  EXPECT_EQ(c.recommended, MergeMode::kAllToAll);
  EXPECT_EQ(estimate_cost(1, 8192, 1, 16, 1, 2, 64, true).recommended, MergeMode::kAllGather);
  EXPECT_EQ(estimate_cost(128, 8192, 1, 2, 1, 4, 64, true).recommended, MergeMode::kAllGather);
  EXPECT_EQ(estimate_cost(128, 8192, 1, 128, 1, 1, 64, true).allgather_bytes_per_gpu, 0);
  MergeMode m;
  EXPECT_TRUE(parse_merge_mode("alltoall", &m));
  EXPECT_EQ(m, MergeMode::kAllToAll);
  EXPECT_FALSE(parse_merge_mode("ring", &m));
}
