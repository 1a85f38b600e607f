// Internal: the state of a planned DistDecoder (decoder.cpp plans it, decoder_run.cpp runs it).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

#include "distmla/dist/decoder.h"
#include "distmla/distmla.hpp"

namespace distmla::dist {

// One sub-batch: batch rows [row0, row0 + rows) with its own partial, send and receive buffers
// (its exchange may still run while the next sub-batch's attention writes its own buffers).
// Each has its own decode workspaces too, so that the schedule a run leaves there can be reused
// (DMLA_RUN_REUSE_SCHEDULE) by the next layer.
struct DecoderSlice {
  int row0 = 0, rows = 0;
  std::unique_ptr<DecodePlan> local;  // this rank's pages (the bulk when split_tail)
  std::unique_ptr<DecodePlan> tail;   // split_tail: the s_q - 1 newest tokens, exact per query
  // Workspace layout (offsets in bytes, 256-aligned).
  size_t off_local = 0, local_ws = 0, off_tail = 0, tail_ws = 0;  // decode workspaces
  size_t off_ab = 0, ab_o_bytes = 0, ab_part_bytes = 0;  // split_tail: bulk + tail parts
  size_t off_stage = 0, stage_o_bytes = 0;  // all-to-all + split_tail: merged output before the pack
  size_t off_send = 0, off_recv = 0;
  size_t off_win = 0;     // pull merge: its send chunks in the CP group's window
  size_t o_bytes = 0;     // o block of one exchanged part/chunk
  size_t part_bytes = 0;  // one exchanged part (all-gather) or chunk (all-to-all)
};

struct DistDecoder::Impl {
  DecoderConfig cfg;
  ShardPlan shard;
  MergeMode mode = MergeMode::kAllGather;
  dmlaBackend_t backend = dmlaBackendCpu;
  bool device = false;
  std::shared_ptr<Communicator> cp_comm, tp_comm;
  std::vector<DecoderSlice> slices;
  size_t off_scratch = 0, total = 0;  // host combine scratch; workspace size
  int h_tp = 0, max_slice = 0;
  bool direct = false;   // cp == 1 with out in the partial layout: decode straight into out
  bool sliced = false;   // all-to-all, no split_tail: the local decode writes the send chunks
                         // in head slices (dmlaRunSliced), so there is no pack
  DeviceWindow win;      // all-to-all where the CP group has one: the send chunks live in the
                         // window and the combine reads the peers' (no exchange, no receive buffers)
  bool pull() const { return win.sync.world > 1; }
  bool overlap = false;  // device, several slices: exchange + merge on `side`, event-ordered
  cudaStream_t side = nullptr;
  std::vector<cudaEvent_t> ready;  // slice i's partials are packed (recorded on the caller's stream)
  cudaEvent_t joined = nullptr;    // the side stream's work of a step is done
  cudaEvent_t ev[4] = {};          // record_timing
  StepTiming host_timing;

  Impl(const DecoderConfig& c, const ShardPlan& s) : cfg(c), shard(s) {}
  ~Impl();
};

}  // namespace distmla::dist
