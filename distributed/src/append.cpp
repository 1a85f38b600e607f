// Two-phase distributed append: check locally, agree per sequence, commit the agreed ones.
#include "distmla/dist/append.h"

#include <cuda_runtime_api.h>

#include <cstring>
#include <string>
#include <unordered_set>

#include "check.h"

namespace distmla::dist {

dmlaResult_t append_tokens(Communicator& group, const ShardPlan& plan, BlockManager& blocks, const AppendRequest& req,
                           uint16_t* kv_pool, bool kv_on_device, std::vector<uint8_t>* appended) {
  const size_t n = req.seq_ids.size();
  // Arguments every rank sees the same way: rejected before any communication.
  if (!appended) return set_error(dmlaErrorNullPointer, "append_tokens: appended is null");
  if (req.global_lens.size() != n || req.new_tokens.size() != n)
    return set_error(dmlaErrorInvalidArgument, "append_tokens: seq_ids has " + std::to_string(n) +
                                                   " entries, global_lens " + std::to_string(req.global_lens.size()) +
                                                   ", new_tokens " + std::to_string(req.new_tokens.size()));
  if (blocks.page_size() != plan.page_size())
    return set_error(dmlaErrorInvalidArgument, "append_tokens: BlockManager page_size = " +
                                                   std::to_string(blocks.page_size()) + " but the plan's is " +
                                                   std::to_string(plan.page_size()));
  int64_t total = 0;
  std::unordered_set<int64_t> seen;
  for (size_t i = 0; i < n; ++i) {
    if (!seen.insert(req.seq_ids[i]).second)
      return set_error(dmlaErrorInvalidArgument, "append_tokens: seq_ids[" + std::to_string(i) + "] = " +
                                                     std::to_string(req.seq_ids[i]) + " appears twice");
    if (req.new_tokens[i] < 0 || req.global_lens[i] < 0)
      return set_error(dmlaErrorNegativeValue, "append_tokens: sequence " + std::to_string(req.seq_ids[i]) +
                                                   ": global_lens = " + std::to_string(req.global_lens[i]) +
                                                   ", new_tokens = " + std::to_string(req.new_tokens[i]));
    total += req.new_tokens[i];
  }
  if (total > 0 && (!req.latents || !kv_pool))
    return set_error(dmlaErrorNullPointer, "append_tokens: latents or kv_pool is null");

  // Phase 1: this rank's view. The last flag says whether its BlockManager agrees with the
  // request (an inconsistent rank makes every rank refuse the whole call).
  std::vector<uint8_t> ok(n + 1, 1);
  std::vector<int> local_new(n);
  std::string inconsistent;
  int64_t reserved = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t before = plan.local_tokens(req.global_lens[i]);
    local_new[i] = static_cast<int>(plan.local_tokens(static_cast<int64_t>(req.global_lens[i]) + req.new_tokens[i]) - before);
    const int have = blocks.contains(req.seq_ids[i]) ? blocks.seqlen(req.seq_ids[i]) : 0;
    if (have != before || (!blocks.contains(req.seq_ids[i]) && req.global_lens[i] > 0)) {
      ok[n] = 0;
      if (inconsistent.empty())
        inconsistent = "sequence " + std::to_string(req.seq_ids[i]) + " holds " + std::to_string(have) +
                       " local tokens, global length " + std::to_string(req.global_lens[i]) + " means " +
                       std::to_string(before) + " on CP rank " + std::to_string(plan.cp_rank());
      continue;
    }
    const int need = blocks.blocks_needed(req.seq_ids[i], local_new[i]);
    if (need < 0 || reserved + need > blocks.num_free_blocks()) {
      ok[i] = 0;  // refused here, so refused everywhere
      continue;
    }
    reserved += need;
  }

  // Phase 2: agree (AND over ranks) per sequence.
  std::vector<uint8_t> all(n + 1);
  if (auto r = group.agree(ok.data(), all.data(), static_cast<int>(n + 1)); r != dmlaSuccess) return r;
  if (!all[n])
    return set_error(dmlaErrorInvalidArgument, "append_tokens: block managers disagree with the request on some rank" +
                                                   (inconsistent.empty() ? std::string() : ": " + inconsistent));

  // Phase 3: commit the agreed sequences (cannot fail: phase 1 reserved their blocks).
  std::vector<int64_t> grow_ids;
  std::vector<int> grow_n;
  for (size_t i = 0; i < n; ++i) {
    if (!all[i]) continue;
    if (!blocks.contains(req.seq_ids[i])) {
      if (blocks.add_sequence(req.seq_ids[i], local_new[i]) != dmlaSuccess)
        return set_error(dmlaErrorInternal, "append_tokens: add_sequence failed after the check");
    } else {
      grow_ids.push_back(req.seq_ids[i]);
      grow_n.push_back(local_new[i]);
    }
  }
  if (!grow_ids.empty() && blocks.extend_batch(grow_ids, grow_n) != dmlaSuccess)
    return set_error(dmlaErrorInternal, "append_tokens: extend_batch failed after the check");

  // Latents: only the owner of a token's page writes it.
  const size_t row = DMLA_D_QK;
  const uint16_t* src = req.latents;
  bool refused = false;
  appended->assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    (*appended)[i] = all[i];
    refused = refused || !all[i];
    for (int k = 0; k < req.new_tokens[i]; ++k, src += row) {
      if (!all[i]) continue;
      const int64_t g = static_cast<int64_t>(req.global_lens[i]) + k;
      if (owner_cp_rank(g, plan.page_size(), plan.cp()) != plan.cp_rank()) continue;
      int32_t block = 0;
      int offset = 0;
      if (!blocks.locate(req.seq_ids[i], static_cast<int>(local_token_index(g, plan.page_size(), plan.cp())), &block,
                         &offset))
        return set_error(dmlaErrorInternal, "append_tokens: token " + std::to_string(g) + " of sequence " +
                                                std::to_string(req.seq_ids[i]) + " has no slot after the commit");
      uint16_t* dst = kv_pool + (static_cast<size_t>(block) * plan.page_size() + offset) * row;
      if (kv_on_device)
        DMLA_DIST_CUDA_RET(cudaMemcpy(dst, src, row * sizeof(uint16_t), cudaMemcpyHostToDevice));
      else
        std::memcpy(dst, src, row * sizeof(uint16_t));
    }
  }
  if (refused) return set_error(dmlaErrorOutOfBlocks, "append_tokens: some sequences did not fit on some rank");
  return dmlaSuccess;
}

}  // namespace distmla::dist
