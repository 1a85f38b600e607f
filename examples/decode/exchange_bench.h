// Graph-replayed timings of the distributed step (-G): the whole step, and the issue-4
// communication check: exchange + merge alone (DistDecoder::run_exchange) against a bare NCCL
// collective of the same bytes. Each is captured in a CUDA graph and replayed.
#pragma once

#include <cuda_runtime_api.h>

#include "distmla/dist/decoder.h"
#include "graph_replay.h"  // kGraphRounds, StepSpread

namespace distmla::examples {

struct ExchangeBench {
  double step_us = 0;            // median of the graph-replayed step (dec.run)
  double exchange_merge_us = 0;  // cp > 1: graph-replayed run_exchange (pack, NCCL, combine)
  double bare_us = 0;            // cp > 1: graph-replayed all-to-all / all-gather alone
  double bare_wrapped_us = 0;    // the same through the CP group's wrapped communicator (-P 1: NCCL)
  StepSpread step_spread;        // this rank's single step replays
};

// Collective over world (and dec's CP group). dec must be planned without record_timing. Each
// graph is launched `replays` times back to back and timed as one event interval / replays,
// nccl-tests style; the median of kGraphRounds such rounds is reported. The step's rounds follow
// its warm-up (`warm` replays, -W; the same count on every rank) without a pause, as the
// one-GPU call's (time_rounds); the exchange rounds each start after a host barrier on world and
// a small NCCL all-gather on stream (the ranks start together; host launch skew is not
// counted), interleaved over their graphs. flags (DMLA_RUN_REUSE_SCHEDULE or 0) go to the
// step's run(); an uncaptured first run computes what they reuse. The graph execs are destroyed
// before returning (before any communicator they captured).
ExchangeBench bench_graphs(dist::Communicator& world, dist::DistDecoder& dec, const dist::DecoderInputs& in,
                           void* ws, cudaStream_t stream, int replays, unsigned flags, int warm = 0);

}  // namespace distmla::examples
