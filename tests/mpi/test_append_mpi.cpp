// Distributed append under MPI: every token is written only by the CP rank that owns its page;
// a sequence that any rank cannot take is appended nowhere (block managers and pools unchanged).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <vector>

#include "distmla/block_manager.h"
#include "distmla/dist/append.h"
#include "distmla/dist/mpi_communicator.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

constexpr uint16_t kNaN = 0x7FC0;

std::vector<uint16_t> latents_for(const std::vector<int>& lens, const std::vector<int>& news, int salt) {
  std::vector<uint16_t> v;
  for (size_t i = 0; i < lens.size(); ++i)
    for (int k = 0; k < news[i]; ++k)
      for (int d = 0; d < DMLA_D_QK; ++d) v.push_back(static_cast<uint16_t>((salt * 7919 + i * 131 + (lens[i] + k) * 17 + d) & 0x3FFF));
  return v;
}

}  // namespace

TEST(AppendMpi, OwnerWritesAndAllOrNothing) {
  auto comm = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{20000});
  const int world = comm->size(), rank = comm->rank();
  const int ps = 16;
  ShardPlan plan(world, rank, 1, world, 4, 1, true, ps);
  // The last rank has a tiny pool: 2 blocks.
  const int nblocks = rank == world - 1 ? 2 : 64;
  BlockManager bm(nblocks, ps);
  std::vector<uint16_t> pool(static_cast<size_t>(nblocks) * ps * DMLA_D_QK, kNaN);

  // Step 1: seq 1 gets 3 pages (one on each of the first ranks), seq 2 just 5 tokens.
  AppendRequest r1;
  r1.seq_ids = {1, 2};
  r1.global_lens = {0, 0};
  r1.new_tokens = {3 * ps - 2, 5};
  auto lat1 = latents_for(r1.global_lens, r1.new_tokens, 1);
  r1.latents = lat1.data();
  std::vector<uint8_t> appended;
  ASSERT_EQ(append_tokens(*comm, plan, bm, r1, pool.data(), false, &appended), dmlaSuccess) << last_error_message();
  EXPECT_EQ(appended, (std::vector<uint8_t>{1, 1}));
  EXPECT_EQ(bm.seqlen(1), plan.local_tokens(3 * ps - 2));
  EXPECT_EQ(bm.seqlen(2), plan.local_tokens(5));

  // Step 2: seq 3 needs many pages on every rank: the last rank cannot take it, so nobody does;
  // seq 1 grows by 4 tokens everywhere.
  const int free_before = bm.num_free_blocks();
  std::vector<uint16_t> pool_before = pool;
  AppendRequest r2;
  r2.seq_ids = {3, 1};
  r2.global_lens = {0, 3 * ps - 2};
  r2.new_tokens = {world * ps * 4, 4};
  auto lat2 = latents_for(r2.global_lens, r2.new_tokens, 2);
  r2.latents = lat2.data();
  EXPECT_EQ(append_tokens(*comm, plan, bm, r2, pool.data(), false, &appended), dmlaErrorOutOfBlocks);
  EXPECT_EQ(appended, (std::vector<uint8_t>{0, 1}));
  EXPECT_FALSE(bm.contains(3));
  EXPECT_EQ(bm.seqlen(1), plan.local_tokens(3 * ps + 2));

  // Every token of seq 1 sits on its owner with its latent; nothing of seq 3 was written.
  size_t written_here = 0;
  auto check_seq = [&](const std::vector<uint16_t>& lat, size_t row0, int len0, int count) {
    for (int k = 0; k < count; ++k) {
      const int64_t g = len0 + k;
      if (owner_cp_rank(g, ps, world) != rank) continue;
      int32_t block;
      int off;
      ASSERT_TRUE(bm.locate(1, static_cast<int>(local_token_index(g, ps, world)), &block, &off));
      EXPECT_EQ(std::memcmp(pool.data() + (static_cast<size_t>(block) * ps + off) * DMLA_D_QK,
                            lat.data() + (row0 + k) * DMLA_D_QK, DMLA_D_QK * 2),
                0)
          << "token " << g;
      ++written_here;
    }
  };
  check_seq(lat1, 0, 0, 3 * ps - 2);
  check_seq(lat2, static_cast<size_t>(world * ps * 4), 3 * ps - 2, 4);
  EXPECT_EQ(static_cast<int64_t>(written_here), plan.local_tokens(3 * ps + 2));
  size_t changed = 0;
  for (size_t i = 0; i < pool.size(); i += DMLA_D_QK) changed += pool[i] != pool_before[i];
  EXPECT_EQ(changed, static_cast<size_t>(plan.local_tokens(3 * ps + 2) - plan.local_tokens(3 * ps - 2)));
  EXPECT_LE(bm.num_free_blocks(), free_before);

  // Inconsistent request on one rank (claims a length it does not hold): refused everywhere.
  AppendRequest r3;
  r3.seq_ids = {2};
  r3.global_lens = {rank == 0 ? 99 : 5};
  r3.new_tokens = {1};
  auto lat3 = latents_for(r3.global_lens, r3.new_tokens, 3);
  r3.latents = lat3.data();
  EXPECT_EQ(append_tokens(*comm, plan, bm, r3, pool.data(), false, &appended), dmlaErrorInvalidArgument);
  EXPECT_EQ(bm.seqlen(2), plan.local_tokens(5));
}
