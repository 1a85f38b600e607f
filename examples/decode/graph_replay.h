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

// Per-replay microseconds of each of kGraphRounds rounds of `replays` back-to-back launches of
// exec, after `warm` launches, all enqueued at once with an event between rounds: no host sync
// between rounds, so the card never idles between them (at the power cap a few idle
// milliseconds before a round cost it up to 4 ms, run D23). wait(): the caller's wait for st
// (a communicator's deadline wait), returning false on failure.
template <typename Wait>
cudaError_t time_rounds(cudaGraphExec_t exec, cudaStream_t st, int warm, int replays, Wait&& wait,
                        double (&us)[kGraphRounds]) {
  cudaEvent_t ev[kGraphRounds + 1] = {};
  cudaError_t e = cudaSuccess;
  for (int r = 0; r <= kGraphRounds && e == cudaSuccess; ++r) e = cudaEventCreate(&ev[r]);
  for (int i = 0; i < warm && e == cudaSuccess; ++i) e = cudaGraphLaunch(exec, st);
  for (int r = 0; r < kGraphRounds && e == cudaSuccess; ++r) {
    if (r == 0) e = cudaEventRecord(ev[0], st);
    for (int i = 0; i < replays && e == cudaSuccess; ++i) e = cudaGraphLaunch(exec, st);
    if (e == cudaSuccess) e = cudaEventRecord(ev[r + 1], st);
  }
  if (e == cudaSuccess && !wait()) e = cudaErrorUnknown;
  for (int r = 0; r < kGraphRounds && e == cudaSuccess; ++r) {
    float ms = 0;
    e = cudaEventElapsedTime(&ms, ev[r], ev[r + 1]);
    us[r] = 1000.0 * ms / replays;
  }
  for (cudaEvent_t x : ev)
    if (x) cudaEventDestroy(x);
  return e;
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
