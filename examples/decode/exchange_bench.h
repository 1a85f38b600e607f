// Graph-replayed timings of the distributed step (-G): the whole step, and the issue-4
// communication check: exchange + merge alone (DistDecoder::run_exchange) against a bare NCCL
// collective of the same bytes. Each is captured in a CUDA graph and replayed.
#pragma once

#include <cuda_runtime_api.h>

#include "distmla/dist/decoder.h"

namespace distmla::examples {

struct ExchangeBench {
  double step_us = 0;            // median of the graph-replayed step (dec.run)
  double exchange_merge_us = 0;  // cp > 1: graph-replayed run_exchange (pack, NCCL, combine)
  double bare_us = 0;            // cp > 1: graph-replayed all-to-all / all-gather alone
};

// Collective over world (and dec's CP group). dec must be planned without record_timing. Each
// replay starts after a host barrier on world and a small NCCL all-gather on stream, so the
// ranks' timed graphs start together (host launch skew is not counted). The graph execs are
// destroyed before returning (before any communicator they captured).
ExchangeBench bench_graphs(dist::Communicator& world, dist::DistDecoder& dec, const dist::DecoderInputs& in,
                           void* ws, cudaStream_t stream, int replays);

}  // namespace distmla::examples
