// Appending new tokens' latents to a KV cache sharded by page over CP ranks. Every rank of the
// group calls it with the same arguments (the latents are computed on every rank, so no data
// moves); each token is written only by the CP rank that owns its page. Two-phase: each rank
// checks that its BlockManager can take its share of every sequence, the ranks agree per
// sequence through the communicator, then each commits the agreed sequences. A sequence that
// any rank cannot take is appended nowhere; nothing is half-written.
#pragma once

#include <cstdint>
#include <vector>

#include "distmla/block_manager.h"
#include "distmla/dist/communicator.h"
#include "distmla/dist/shard_plan.h"

namespace distmla::dist {

struct AppendRequest {
  std::vector<int64_t> seq_ids;    // sequences (known or new to the BlockManager)
  std::vector<int> global_lens;    // global tokens before the append
  std::vector<int> new_tokens;     // tokens to append to each
  // Latents of the new tokens, [sum(new_tokens), 576] 16-bit values, sequence-major.
  const uint16_t* latents = nullptr;
};

// group: every rank that holds a copy of this rank's pages or of its peers' (the world, or the
// CP group). kv_pool: this rank's pool [num_blocks, page_size, 576] in host memory
// (kv_on_device: device memory, written with cudaMemcpy). appended[i] = 1 if sequence i grew.
// Returns dmlaErrorOutOfBlocks if any sequence was refused (the others were appended),
// dmlaErrorInvalidArgument before any change on bad input, dmlaErrorComm/Timeout on
// communicator failure (nothing changed).
dmlaResult_t append_tokens(Communicator& group, const ShardPlan& plan, BlockManager& blocks,
                           const AppendRequest& req, uint16_t* kv_pool, bool kv_on_device,
                           std::vector<uint8_t>* appended);

}  // namespace distmla::dist
