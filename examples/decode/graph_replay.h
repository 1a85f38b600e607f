// A call captured in a CUDA graph for timing by back-to-back replays, shared by distmla_decode's
// jobs (-G): the one-GPU call (single_job.cpp) and the distributed step (exchange_bench.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <vector>

#include "median.h"

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

// The single replays of time_rounds. At the power cap the clock dips for ~0.25 s about once a
// second (docs/PERFORMANCE.md, run D26): the mean over a window of ~1 s or more counts the dips
// as a serving loop meets them; a median of short rounds depends on where they fall.
struct StepSpread {
  int n = 0;                  // replays timed one by one
  double mean_us = 0;         // over all of them: the throughput figure, dips of the clock included
  double median_us = 0, p90_us = 0, max_us = 0;
  int slow = 0;               // replays over 1.5x the median
  double slow_excess_us = 0;  // their time over the median, summed
};

// A StepSpread as kSpreadValues doubles (to gather it from every rank) and back.
constexpr int kSpreadValues = 7;
inline void spread_to_values(const StepSpread& s, double* v) {
  const double x[kSpreadValues] = {static_cast<double>(s.n), s.mean_us, s.median_us, s.p90_us, s.max_us,
                                   static_cast<double>(s.slow), s.slow_excess_us};
  std::copy(x, x + kSpreadValues, v);
}
inline StepSpread spread_from_values(const double* v) {
  StepSpread s;
  s.n = static_cast<int>(v[0]);
  s.mean_us = v[1]; s.median_us = v[2]; s.p90_us = v[3]; s.max_us = v[4];
  s.slow = static_cast<int>(v[5]); s.slow_excess_us = v[6];
  return s;
}

// "# <who>: N single replays: mean, median, p90, max us; k over 1.5x the median, E us over it in all".
inline void print_spread(const char* who, const StepSpread& s) {
  std::printf("# %s: %d single replays: mean %.1f, median %.1f, p90 %.1f, max %.1f us; %d over 1.5x the median, "
              "%.0f us over it in all\n",
              who, s.n, s.mean_us, s.median_us, s.p90_us, s.max_us, s.slow, s.slow_excess_us);
}

// Per-replay microseconds of each of kGraphRounds rounds of `replays` back-to-back launches of
// exec, after `warm` launches, all enqueued at once with an event after every replay: no host
// sync between rounds, so the card never idles between them. spread (optional) gets the single
// replays'. wait(): the caller's wait for st (a communicator's deadline wait), false on failure.
template <typename Wait>
cudaError_t time_rounds(cudaGraphExec_t exec, cudaStream_t st, int warm, int replays, Wait&& wait,
                        double (&us)[kGraphRounds], StepSpread* spread = nullptr) {
  if (replays < 1 || warm < 0) return cudaErrorInvalidValue;
  const int n = kGraphRounds * replays;
  std::vector<cudaEvent_t> ev(n + 1, nullptr);
  cudaError_t e = cudaSuccess;
  for (int i = 0; i <= n && e == cudaSuccess; ++i) e = cudaEventCreate(&ev[i]);
  for (int i = 0; i < warm && e == cudaSuccess; ++i) e = cudaGraphLaunch(exec, st);
  if (e == cudaSuccess) e = cudaEventRecord(ev[0], st);
  for (int i = 0; i < n && e == cudaSuccess; ++i) {
    e = cudaGraphLaunch(exec, st);
    if (e == cudaSuccess) e = cudaEventRecord(ev[i + 1], st);
  }
  if (e == cudaSuccess && !wait()) e = cudaErrorUnknown;
  std::vector<double> one(n);
  for (int i = 0; i < n && e == cudaSuccess; ++i) {
    float ms = 0;
    e = cudaEventElapsedTime(&ms, ev[i], ev[i + 1]);
    one[i] = 1000.0 * ms;
  }
  for (cudaEvent_t x : ev)
    if (x) cudaEventDestroy(x);
  if (e != cudaSuccess) return e;
  for (int r = 0; r < kGraphRounds; ++r) {
    double sum = 0;
    for (int i = r * replays; i < (r + 1) * replays; ++i) sum += one[i];
    us[r] = sum / replays;
  }
  if (spread) {
    std::vector<double> v = one;
    std::sort(v.begin(), v.end());
    *spread = StepSpread{};
    spread->n = n;
    spread->mean_us = std::accumulate(one.begin(), one.end(), 0.0) / n;
    spread->median_us = median(one);
    spread->p90_us = v[(n * 9) / 10];
    spread->max_us = v[n - 1];
    for (double t : one)
      if (t > 1.5 * spread->median_us) {
        ++spread->slow;
        spread->slow_excess_us += t - spread->median_us;
      }
  }
  return cudaSuccess;
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
