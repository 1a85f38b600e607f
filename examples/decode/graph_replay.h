// A call captured in a CUDA graph for timing by back-to-back replays, shared by distmla_decode's
// jobs (-G): the one-GPU call (single_job.cpp) and the distributed step (exchange_bench.cpp).
#pragma once

#include <cuda_runtime_api.h>

namespace distmla::examples {

// Rounds of back-to-back replays whose median -G reports.
constexpr int kGraphRounds = 5;

// -W: replays that keep the card busy for about warm_ms before the timed rounds, given a call's
// time (at least 1 when warm_ms > 0). Timed straight after the eager runs, the same call differs
// by up to 17% with the power state they left, and a longer call (one GPU vs a CP step) heats the
// card more in the same number of replays (docs/PERFORMANCE.md, run 42 and run D15).
inline int warm_replays(int warm_ms, double call_us) {
  if (warm_ms <= 0) return 0;
  const double n = warm_ms * 1e3 / (call_us > 1.0 ? call_us : 1.0);
  return n < 1 ? 1 : (n > 1e6 ? 1000000 : static_cast<int>(n + 0.5));
}

// One captured graph; the exec goes before anything it captured (e.g. an NCCL communicator).
struct Graph {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
  }
};

// Captures what body() launches on st into gr and instantiates it. If body throws, the capture
// is ended (the stream stays usable) and the exception goes on.
template <typename F>
cudaError_t capture_graph(Graph* gr, cudaStream_t st, F&& body) {
  cudaError_t e = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) return e;
  try {
    body();
  } catch (...) {
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(st, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  e = cudaStreamEndCapture(st, &gr->g);
  return e != cudaSuccess ? e : cudaGraphInstantiate(&gr->exec, gr->g, 0);
}

}  // namespace distmla::examples
