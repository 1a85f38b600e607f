#include "distmla/dist/shard_data.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "check.h"

namespace distmla::dist {

std::vector<uint16_t> slice_heads(const uint16_t* x, int batch, int s_q, int h, int d, int begin, int count) {
  std::vector<uint16_t> out(static_cast<size_t>(batch) * s_q * count * d);
  for (size_t row = 0; row < static_cast<size_t>(batch) * s_q; ++row)
    std::memcpy(out.data() + row * count * d, x + (row * h + begin) * d, sizeof(uint16_t) * count * d);
  return out;
}

RankShard shard_batch(const ShardPlan& plan, const dmlaDecodeShape_t& g, const dmlaDecodeTensors_t& host) {
  if (g.h_q != plan.h_q() || g.s_q != plan.s_q() || g.page_size != plan.page_size() ||
      (g.causal != 0) != plan.causal())
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "shard_batch: global shape (h_q " + std::to_string(g.h_q) +
                                                 ", s_q " + std::to_string(g.s_q) + ", page " +
                                                 std::to_string(g.page_size) + ") differs from the plan");
  const int b = g.batch, ps = g.page_size;
  const size_t page_elems = static_cast<size_t>(ps) * DMLA_D_QK;
  const int32_t* seqlens = static_cast<const int32_t*>(host.seqlens);
  RankShard s;
  int total_pages = 0;
  for (int i = 0; i < b; ++i) {
    const int p = plan.local_pages(seqlens[i]);
    total_pages += p;
    s.max_blocks_per_seq = std::max(s.max_blocks_per_seq, p);
  }
  s.num_blocks = std::max(1, total_pages);
  const uint16_t nan_bits = 0x7FC0;  // bf16/fp16 NaN pattern is fine for "never read"
  s.kv.assign(static_cast<size_t>(s.num_blocks) * page_elems, nan_bits);
  s.block_table.assign(static_cast<size_t>(b) * s.max_blocks_per_seq, -1);
  const uint16_t* kv = static_cast<const uint16_t*>(host.kv_pool);
  int next = 0;
  for (int i = 0; i < b; ++i) {
    const int64_t len = seqlens[i];
    const int pages = static_cast<int>((len + ps - 1) / ps);
    for (int p = plan.cp_rank(); p < pages; p += plan.cp()) {
      const int32_t phys = host.block_table[static_cast<size_t>(i) * g.max_blocks_per_seq + p];
      const int tokens = static_cast<int>(std::min<int64_t>(ps, len - static_cast<int64_t>(p) * ps));
      std::memcpy(s.kv.data() + next * page_elems, kv + static_cast<size_t>(phys) * page_elems,
                  sizeof(uint16_t) * tokens * DMLA_D_QK);
      s.block_table[static_cast<size_t>(i) * s.max_blocks_per_seq + p / plan.cp()] = next++;
    }
  }
  s.seqlens.resize(b);
  plan.local_seqlens(seqlens, b, s.seqlens.data());
  if (plan.split_tail()) {
    s.tail_seqlens.resize(static_cast<size_t>(b) * g.s_q);
    plan.tail_seqlens(seqlens, b, s.tail_seqlens.data());
    s.tail_block_table.resize(static_cast<size_t>(b) * g.s_q * ShardPlan::kTailPages);
    plan.tail_block_table(seqlens, s.block_table.data(), b, s.max_blocks_per_seq, s.tail_block_table.data());
  }
  const Range hr = plan.heads();
  s.q = slice_heads(static_cast<const uint16_t*>(host.q), b, g.s_q, g.h_q, DMLA_D_QK, hr.begin, hr.count);
  return s;
}

}  // namespace distmla::dist
