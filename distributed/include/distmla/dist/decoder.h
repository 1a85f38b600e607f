// Distributed MLA decode step (plan/run). Plan (the constructor) validates, splits the CP and
// TP groups off the world communicator, plans the local single-device decode and sizes one
// workspace; run() only launches the local decode, the exchange and the cross-rank combine:
// nothing is allocated, and on the NCCL path a step can be captured in a CUDA graph.
//
// A step on each rank: attention of its TP heads over its KV pages (distmla plan/run, CUDA or
// CPU backend) -> (o, lse) partials in bf16 (or fp32) with fp32 lse; then across the CP group
//   - kAllGather: every rank gathers all CP partials and merges: out has the TP group's heads;
//   - kAllToAll:  partials are exchanged by head slice and merged: out has this rank's slice.
// A rank that holds no token of a row contributes lse = -inf, weight zero.
//
// Sub-batches (DecoderConfig::sub_batches): the batch is cut into k consecutive row slices;
// on a device, the exchange and combine of slice i run on an internal high-priority stream
// while slice i + 1's attention runs on the caller's stream, and the caller's stream waits for
// them at the end of run() (events; nothing is allocated in run()). Results are the same
// function for every k (each row is merged exactly as with k = 1).
//
// CUDA graphs: run() on a capturing stream records the whole step (local decode, pack, NCCL,
// combine, the internal stream's fork and join); replay it as often as wanted. Destroy every graph exec that captured a step before
// the DistDecoder and the communicators (their NCCL communicators are finalised on destruction,
// with the CommOptions deadline, and aborted if that deadline passes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "distmla/dist/communicator.h"
#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.h"

namespace distmla::dist {

struct DecoderConfig {
  int batch = 0;
  int s_q = 1;
  int h_q = 16;              // global query heads
  int page_size = 64;
  int num_blocks = 1;        // blocks in THIS rank's KV pool
  int max_blocks_per_seq = 1;  // columns of this rank's block table (local pages)
  dmlaDataType_t dtype = dmlaBF16;          // q and KV
  dmlaDataType_t out_dtype = dmlaBF16;      // dtype, or fp32
  dmlaDataType_t partial_dtype = dmlaBF16;  // what travels: bf16 (default) or fp32
  float scale = 0.f;         // 0: 1/sqrt(576)
  bool causal = true;
  int tp = 1;
  int cp = 1;
  MergeMode mode = MergeMode::kAuto;
  // Auto: CUDA for a device communicator, CPU for a host one (anything else is rejected).
  dmlaBackend_t backend = dmlaBackendAuto;
  bool record_timing = false;  // per-phase timing (not while capturing a graph)
  double mean_len_hint = 0;    // for kAuto's choice; 0: page_size * max_blocks_per_seq * cp / 2
  // Sub-batches whose exchange overlaps the next one's attention (1 .. min(batch, 8); 1: off).
  // 0: automatic, which is 1 (measured slower with 2: docs/PERFORMANCE.md, run D4).
  int sub_batches = 0;
};

// This rank's tensors, in the communicator's memory (device for NCCL, host for MPI).
struct DecoderInputs {
  const void* q = nullptr;            // [batch, s_q, heads().count, 576] this rank's TP heads
  const void* kv_pool = nullptr;      // [num_blocks, page_size, 576] this rank's pool
  const int32_t* block_table = nullptr;  // [batch, max_blocks_per_seq] this rank's pages
  const int32_t* seqlens = nullptr;      // [batch] ShardPlan::local_seqlens
  // Only when shard().split_tail() (CP > 1, s_q > 1, causal): ShardPlan::tail_block_table
  // [batch * s_q, kTailPages] and ShardPlan::tail_seqlens [batch * s_q].
  const int32_t* tail_block_table = nullptr;
  const int32_t* tail_seqlens = nullptr;
  void* out = nullptr;                // [batch, s_q, out_heads().count, 512] out_dtype
  float* lse = nullptr;               // [batch, out_heads().count, s_q]
};

// Device: event intervals of the exposed time (with sub-batches: until the last slice is
// packed, then the last slice's exchange, then its combine). Host: each phase summed.
struct StepTiming {
  double attention_us = 0;  // local decode (+ bulk/tail merge, head-slice pack)
  double exchange_us = 0;   // all-gather / all-to-all
  double merge_us = 0;      // cross-rank combine
};

// The CP and TP groups of a layout, split once off the world and shared by every decoder of
// that layout (splitting NCCL communicators is slow; decoders for other batch shapes reuse them).
struct ShardGroups {
  std::shared_ptr<Communicator> cp;  // ranks with the same tp_rank, ordered by cp_rank
  std::shared_ptr<Communicator> tp;  // ranks with the same cp_rank, ordered by tp_rank
};
// Collective over world. Throws distmla::Error when world.size() != tp * cp.
ShardGroups split_groups(Communicator& world, int tp, int cp);

class DistDecoder {
 public:
  static constexpr int kMaxSubBatches = 8;

  // Collective over world (splits the CP and TP groups). Throws distmla::Error naming the
  // argument and the value on bad configuration.
  DistDecoder(Communicator& world, const DecoderConfig& cfg);
  // Reuses groups from split_groups(world, cfg.tp, cfg.cp): not collective.
  DistDecoder(Communicator& world, const ShardGroups& groups, const DecoderConfig& cfg);
  ~DistDecoder();
  DistDecoder(const DistDecoder&) = delete;
  DistDecoder& operator=(const DistDecoder&) = delete;

  const ShardPlan& shard() const;
  MergeMode mode() const;              // resolved (never kAuto)
  dmlaBackend_t backend() const;       // resolved
  Range out_heads() const;             // global heads this rank's out holds
  size_t workspace_bytes() const;
  // All-to-all merge pulling the peers' chunks straight from their memory in the combine (a CP
  // group with device windows, Communicator::reserve_window): no exchange kernel, no copies.
  // DISTMLA_PULL_MERGE=0 in the environment at plan time turns it off (all ranks alike).
  bool pull_merge() const;
  int sub_batches() const;             // resolved (never 0)
  // Bytes one rank sends to each CP peer in a step (all-to-all chunk / all-gather part, summed
  // over the sub-batches); 0 with cp = 1. A bare collective of this size is the transfer floor.
  size_t exchange_bytes() const;
  Communicator& cp_group();
  Communicator& tp_group();

  // One step. Validates pointers and the workspace, then launches on stream (device) or
  // computes (host). Never synchronises the stream; allocates nothing. flags: 0 or
  // DMLA_RUN_REUSE_SCHEDULE, which skips the local split schedule and uses the one a previous
  // run() with the same seqlens left in this workspace (the next layer of the same step).
  dmlaResult_t run(const DecoderInputs& in, void* workspace, size_t workspace_bytes,
                   void* stream = nullptr, unsigned flags = 0);
  // Everything after the local attention, on the partials the last run() left in the workspace:
  // head-slice pack (all-to-all with split_tail), exchange and combine of every sub-batch, in
  // order on stream.
  // For benchmarks (time the communication alone, e.g. graph-replayed); only in.out and in.lse
  // are read. Graph-capturable; allocates nothing.
  dmlaResult_t run_exchange(const DecoderInputs& in, void* workspace, size_t workspace_bytes,
                            void* stream = nullptr);
  // Timing of the last run (record_timing; device: after the caller synchronised the stream).
  dmlaResult_t last_timing(StepTiming* t) const;

  struct Impl;  // opaque (distributed/src/decoder_impl.h)

 private:
  dmlaResult_t check_run_args(const DecoderInputs& in, const void* workspace, size_t workspace_bytes,
                              bool need_inputs) const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace distmla::dist
