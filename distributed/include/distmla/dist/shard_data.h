// Host helpers that cut one rank's share out of a whole (single-device) batch: its KV pages,
// block tables, local seqlens and query heads. The launcher, the benchmark and the tests use
// them to compare a distributed step with the single-device reference on the same inputs; a
// serving stack builds its shards directly (BlockManager per rank + append.h).
#pragma once

#include <cstdint>
#include <vector>

#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.h"

namespace distmla::dist {

struct RankShard {
  int num_blocks = 0;          // blocks of the local pool (at least 1)
  int max_blocks_per_seq = 1;  // local pages a sequence may hold (at least 1)
  std::vector<uint16_t> kv;    // [num_blocks, page_size, 576]; unused tails stay NaN
  std::vector<int32_t> block_table;       // [batch, max_blocks_per_seq], unused -1
  std::vector<int32_t> seqlens;           // [batch] ShardPlan::local_seqlens
  std::vector<int32_t> tail_block_table;  // split_tail: [batch * s_q, kTailPages]
  std::vector<int32_t> tail_seqlens;      // split_tail: [batch * s_q]
  std::vector<uint16_t> q;                // [batch, s_q, heads().count, 576]
};

// global: the whole batch's shape and host tensors (q, kv_pool, block_table, seqlens).
// Throws distmla::Error on shape mismatch with plan.
RankShard shard_batch(const ShardPlan& plan, const dmlaDecodeShape_t& global,
                      const dmlaDecodeTensors_t& host);

// Rows of a [batch, s_q, h, D] tensor restricted to heads [begin, begin + count).
std::vector<uint16_t> slice_heads(const uint16_t* x, int batch, int s_q, int h, int d, int begin, int count);

}  // namespace distmla::dist
