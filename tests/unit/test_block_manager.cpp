// Block manager: bookkeeping, block tables, and all-or-nothing failures.
#include <gtest/gtest.h>

#include <set>
#include <stdexcept>
#include <string>

#include "distmla/block_manager.h"

namespace {

using distmla::BlockManager;

// Everything observable about a manager, to prove a failed call changed nothing.
struct Snapshot {
  int free_blocks;
  std::vector<std::pair<int, std::vector<int32_t>>> seqs;
  bool operator==(const Snapshot& o) const { return free_blocks == o.free_blocks && seqs == o.seqs; }
};

Snapshot snap(const BlockManager& m, const std::vector<int64_t>& ids) {
  Snapshot s{m.num_free_blocks(), {}};
  for (int64_t id : ids) {
    const auto* p = m.pages(id);
    s.seqs.push_back({m.seqlen(id), p ? *p : std::vector<int32_t>{}});
  }
  return s;
}

TEST(BlockManager, RejectsBadSizes) {
  EXPECT_THROW(BlockManager(0, 64), std::invalid_argument);
  EXPECT_THROW(BlockManager(4, 0), std::invalid_argument);
}

TEST(BlockManager, AddExtendFree) {
  BlockManager m(10, 16);
  EXPECT_EQ(m.blocks_needed(1, 33), 3);
  ASSERT_EQ(m.add_sequence(1, 33), dmlaSuccess);
  EXPECT_EQ(m.seqlen(1), 33);
  EXPECT_EQ(m.pages(1)->size(), 3u);
  EXPECT_EQ(m.num_free_blocks(), 7);
  EXPECT_EQ(m.blocks_needed(1, 15), 0);  // 48 tokens still fit 3 pages
  EXPECT_EQ(m.blocks_needed(1, 16), 1);
  ASSERT_EQ(m.extend(1, 15), dmlaSuccess);
  EXPECT_EQ(m.num_free_blocks(), 7);
  ASSERT_EQ(m.extend(1, 1), dmlaSuccess);
  EXPECT_EQ(m.seqlen(1), 49);
  EXPECT_EQ(m.pages(1)->size(), 4u);
  ASSERT_EQ(m.add_sequence(2, 0), dmlaSuccess);  // empty sequence: no block
  EXPECT_EQ(m.num_free_blocks(), 6);
  // Distinct blocks.
  std::set<int32_t> used(m.pages(1)->begin(), m.pages(1)->end());
  EXPECT_EQ(used.size(), 4u);
  int32_t blk;
  int off;
  ASSERT_TRUE(m.locate(1, 35, &blk, &off));
  EXPECT_EQ(blk, (*m.pages(1))[2]);
  EXPECT_EQ(off, 3);
  EXPECT_FALSE(m.locate(1, 49, &blk, &off));
  EXPECT_FALSE(m.locate(1, -1, &blk, &off));
  EXPECT_FALSE(m.locate(7, 0, &blk, &off));
  ASSERT_EQ(m.free_sequence(1), dmlaSuccess);
  EXPECT_EQ(m.num_free_blocks(), 10);
  EXPECT_FALSE(m.contains(1));
  EXPECT_EQ(m.seqlen(1), -1);
  EXPECT_EQ(m.pages(1), nullptr);
  EXPECT_EQ(m.free_sequence(1), dmlaErrorNotFound);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("seq_id = 1"), std::string::npos);
}

TEST(BlockManager, AddFailuresChangeNothing) {
  BlockManager m(4, 64);
  ASSERT_EQ(m.add_sequence(5, 100), dmlaSuccess);  // 2 blocks
  const auto before = snap(m, {5, 6});
  EXPECT_EQ(m.add_sequence(6, 64 * 2 + 1), dmlaErrorOutOfBlocks);  // needs 3, 2 free
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("needs 3 blocks, 2 free"), std::string::npos);
  EXPECT_EQ(m.add_sequence(5, 1), dmlaErrorInvalidArgument);  // exists
  EXPECT_EQ(m.add_sequence(6, -1), dmlaErrorNegativeValue);
  EXPECT_FALSE(m.contains(6));
  EXPECT_TRUE(snap(m, {5, 6}) == before);
}

TEST(BlockManager, ExtendOutOfBlocksChangesNothing) {
  BlockManager m(5, 16);
  ASSERT_EQ(m.add_sequence(1, 16), dmlaSuccess);
  ASSERT_EQ(m.add_sequence(2, 10), dmlaSuccess);
  const auto before = snap(m, {1, 2});
  EXPECT_EQ(m.extend(1, 16 * 3 + 1), dmlaErrorOutOfBlocks);  // needs 4, 3 free
  EXPECT_TRUE(snap(m, {1, 2}) == before);
  EXPECT_EQ(m.extend(3, 1), dmlaErrorNotFound);
  EXPECT_EQ(m.extend(1, -4), dmlaErrorNegativeValue);
  EXPECT_TRUE(snap(m, {1, 2}) == before);
}

TEST(BlockManager, ExtendBatchIsAllOrNothing) {
  BlockManager m(6, 16);
  ASSERT_EQ(m.add_sequence(1, 16), dmlaSuccess);  // full page: next token needs a block
  ASSERT_EQ(m.add_sequence(2, 16), dmlaSuccess);
  ASSERT_EQ(m.add_sequence(3, 5), dmlaSuccess);   // room left in its page
  const auto before = snap(m, {1, 2, 3});
  ASSERT_EQ(m.num_free_blocks(), 3);
  // Sequences 1 and 2 would fit (2 blocks) but 3 asks for 2 more: 4 > 3, nobody grows.
  EXPECT_EQ(m.extend_batch({1, 2, 3}, {1, 1, 12 + 16}), dmlaErrorOutOfBlocks);
  EXPECT_TRUE(snap(m, {1, 2, 3}) == before);
  // An unknown id or a negative count late in the list also changes nothing.
  EXPECT_EQ(m.extend_batch({1, 2, 9}, {1, 1, 1}), dmlaErrorNotFound);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("seq_ids[2] = 9"), std::string::npos);
  EXPECT_EQ(m.extend_batch({1, 2, 3}, {1, 1, -1}), dmlaErrorNegativeValue);
  EXPECT_EQ(m.extend_batch({1, 2}, {1}), dmlaErrorInvalidArgument);
  // A repeated id counts twice: 1 grows by 16 + 1 = 2 blocks, 2 by 1 block: 3 <= 3 ok ...
  EXPECT_TRUE(snap(m, {1, 2, 3}) == before);
  ASSERT_EQ(m.extend_batch({1, 2, 1, 3}, {16, 1, 1, 1}), dmlaSuccess);
  EXPECT_EQ(m.seqlen(1), 33);
  EXPECT_EQ(m.seqlen(2), 17);
  EXPECT_EQ(m.seqlen(3), 6);
  EXPECT_EQ(m.num_free_blocks(), 0);
  // ... and now a single token that needs a block fails cleanly.
  EXPECT_EQ(m.extend_batch({3, 2}, {1, 15}), dmlaSuccess);  // both fit their pages
  const auto full = snap(m, {1, 2, 3});
  EXPECT_EQ(m.extend_batch({3, 2}, {1, 1}), dmlaErrorOutOfBlocks);  // 3 fits, 2 needs a block
  EXPECT_TRUE(snap(m, {1, 2, 3}) == full);
}

TEST(BlockManager, WriteBlockTable) {
  BlockManager m(8, 32);
  ASSERT_EQ(m.add_sequence(10, 70), dmlaSuccess);  // 3 pages
  ASSERT_EQ(m.add_sequence(20, 0), dmlaSuccess);
  std::vector<int32_t> bt(2 * 4, 555), lens(2, 555);
  ASSERT_EQ(m.write_block_table({20, 10}, 4, bt.data(), lens.data()), dmlaSuccess);
  EXPECT_EQ(lens[0], 0);
  EXPECT_EQ(lens[1], 70);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(bt[j], -1);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(bt[4 + j], (*m.pages(10))[j]);
  EXPECT_EQ(bt[7], -1);
  // Too narrow, or an unknown id: nothing written.
  std::vector<int32_t> bt2(2 * 2, 555), lens2(2, 555);
  EXPECT_EQ(m.write_block_table({20, 10}, 2, bt2.data(), lens2.data()), dmlaErrorSeqlenOutOfRange);
  EXPECT_EQ(m.write_block_table({20, 99}, 2, bt2.data(), lens2.data()), dmlaErrorNotFound);
  for (int32_t v : bt2) EXPECT_EQ(v, 555);
  for (int32_t v : lens2) EXPECT_EQ(v, 555);
}

TEST(BlockManager, FreedBlocksAreReused) {
  BlockManager m(3, 16);
  ASSERT_EQ(m.add_sequence(1, 48), dmlaSuccess);
  EXPECT_EQ(m.add_sequence(2, 1), dmlaErrorOutOfBlocks);
  ASSERT_EQ(m.free_sequence(1), dmlaSuccess);
  ASSERT_EQ(m.add_sequence(2, 48), dmlaSuccess);
  std::set<int32_t> s(m.pages(2)->begin(), m.pages(2)->end());
  EXPECT_EQ(s, (std::set<int32_t>{0, 1, 2}));
}

}  // namespace
