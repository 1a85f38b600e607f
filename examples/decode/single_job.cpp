// Single-device job: random workload -> plan -> warm-up + timed runs -> check against the
// double CPU reference -> one table row. CUDA timing uses events on a stream; CPU uses
// steady_clock. Outputs are poisoned with NaN before the timed runs so that an element the
// backend never wrote is counted as wrong.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/compare.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"
#include "graph_replay.h"
#include "job_options.h"
#include "median.h"

namespace distmla::examples {

namespace {

#define JOB_CUDA(call)                                                                  \
  do {                                                                                  \
    const cudaError_t e_ = (call);                                                      \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "distmla_decode: %s failed: %s (%s:%d)\n", #call,           \
                   cudaGetErrorString(e_), __FILE__, __LINE__);                         \
      return false;                                                                     \
    }                                                                                   \
  } while (0)

struct DeviceBuffer {
  void* p = nullptr;
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (p) cudaFree(p);
  }
};

struct RunResult {
  std::vector<double> times_us;
  double graph_us = 0;  // -G: the call replayed from a CUDA graph, back to back (0: not timed)
  StepSpread spread;    // -G: its single replays
  std::string device;
};


// CPU backend: host tensors are used as they are.
bool run_cpu(const JobOptions& opt, const DecodePlan& plan, dmlaDecodeTensors_t t, size_t out_bytes,
             size_t lse_count, RunResult* res) {
  for (int i = 0; i < opt.warmup; ++i) plan.run(t, nullptr, 0);
  std::memset(t.out, 0xff, out_bytes);  // all-ones is NaN in bf16, fp16 and fp32
  std::fill(t.lse, t.lse + lse_count, std::numeric_limits<float>::quiet_NaN());
  for (int i = 0; i < opt.iters; ++i) {
    const auto a = std::chrono::steady_clock::now();
    plan.run(t, nullptr, 0);
    const auto b = std::chrono::steady_clock::now();
    res->times_us.push_back(std::chrono::duration<double, std::micro>(b - a).count());
  }
  res->device = "CPU reference";
  return true;
}

// CUDA backend: copy in, time every run with events, copy the outputs back into t.out/t.lse.
bool run_cuda(const JobOptions& opt, const DecodePlan& plan, const Workload& w, dmlaDecodeTensors_t host,
              size_t out_bytes, size_t lse_count, RunResult* res) {
  int dev = 0;
  JOB_CUDA(cudaGetDevice(&dev));
  cudaDeviceProp prop{};
  JOB_CUDA(cudaGetDeviceProperties(&prop, dev));
  res->device = prop.name;

  DeviceBuffer q, kv, bt, lens, out, lse, ws;
  const size_t ws_bytes = plan.workspace_bytes();
  JOB_CUDA(cudaMalloc(&q.p, w.q.size() * sizeof(uint16_t)));
  JOB_CUDA(cudaMalloc(&kv.p, w.kv.size() * sizeof(uint16_t)));
  JOB_CUDA(cudaMalloc(&bt.p, w.block_table.size() * sizeof(int32_t)));
  JOB_CUDA(cudaMalloc(&lens.p, std::max<size_t>(1, w.seqlens.size()) * sizeof(int32_t)));
  JOB_CUDA(cudaMalloc(&out.p, std::max<size_t>(1, out_bytes)));
  JOB_CUDA(cudaMalloc(&lse.p, std::max<size_t>(1, lse_count) * sizeof(float)));
  if (ws_bytes) JOB_CUDA(cudaMalloc(&ws.p, ws_bytes));
  JOB_CUDA(cudaMemcpy(q.p, w.q.data(), w.q.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  JOB_CUDA(cudaMemcpy(kv.p, w.kv.data(), w.kv.size() * sizeof(uint16_t), cudaMemcpyHostToDevice));
  JOB_CUDA(cudaMemcpy(bt.p, w.block_table.data(), w.block_table.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  JOB_CUDA(cudaMemcpy(lens.p, w.seqlens.data(), w.seqlens.size() * sizeof(int32_t), cudaMemcpyHostToDevice));

  dmlaDecodeTensors_t t{};
  t.q = q.p;
  t.kv_pool = kv.p;
  t.block_table = static_cast<const int32_t*>(bt.p);
  t.seqlens = static_cast<const int32_t*>(lens.p);
  t.out = out.p;
  t.lse = static_cast<float*>(lse.p);

  cudaStream_t stream = nullptr;
  JOB_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t ev[2] = {nullptr, nullptr};
  bool ok = [&]() {
    JOB_CUDA(cudaEventCreate(&ev[0]));
    JOB_CUDA(cudaEventCreate(&ev[1]));
    for (int i = 0; i < opt.warmup; ++i) plan.run(t, ws.p, ws_bytes, stream);
    JOB_CUDA(cudaMemsetAsync(out.p, 0xff, out_bytes, stream));  // NaN poison
    JOB_CUDA(cudaMemsetAsync(lse.p, 0xff, lse_count * sizeof(float), stream));
    for (int i = 0; i < opt.iters; ++i) {
      JOB_CUDA(cudaEventRecord(ev[0], stream));
      plan.run(t, ws.p, ws_bytes, stream, opt.reuse_schedule ? DMLA_RUN_REUSE_SCHEDULE : 0u);
      JOB_CUDA(cudaEventRecord(ev[1], stream));
      JOB_CUDA(cudaEventSynchronize(ev[1]));
      float ms = 0;
      JOB_CUDA(cudaEventElapsedTime(&ms, ev[0], ev[1]));
      res->times_us.push_back(1000.0 * ms);
    }
    JOB_CUDA(cudaMemcpyAsync(host.out, out.p, out_bytes, cudaMemcpyDeviceToHost, stream));
    JOB_CUDA(cudaMemcpyAsync(host.lse, lse.p, lse_count * sizeof(float), cudaMemcpyDeviceToHost, stream));
    JOB_CUDA(cudaStreamSynchronize(stream));
    return true;
  }();
  // -G: the same call captured in a graph and replayed back to back, one event interval per
  // round, the rounds without a pause (time_rounds: what the distributed job's step is timed by).
  Graph graph;
  if (ok && opt.graph_iters > 0) {
    ok = [&]() {
      const unsigned flags = opt.reuse_schedule ? DMLA_RUN_REUSE_SCHEDULE : 0u;
      JOB_CUDA(capture_graph(&graph, stream, [&] { plan.run(t, ws.p, ws_bytes, stream, flags); }));
      const int warm = 3 + warm_replays(opt.warm_ms, median(res->times_us));
      double rounds[kGraphRounds];
      JOB_CUDA(time_rounds(graph.exec, stream, warm, opt.graph_iters,
                           [&] { return cudaStreamSynchronize(stream) == cudaSuccess; }, rounds, &res->spread));
      res->graph_us = median(std::vector<double>(rounds, rounds + kGraphRounds));
      return true;
    }();
  }
  for (cudaEvent_t e : ev) {
    if (e) cudaEventDestroy(e);
  }
  cudaStreamDestroy(stream);
  return ok;
}

#undef JOB_CUDA

const char* backend_name(dmlaBackend_t b) {
  return b == dmlaBackendCuda ? "cuda" : b == dmlaBackendCpu ? "cpu" : "auto";
}

}  // namespace

int run_single_device_job(const JobOptions& opt) {
  Workload w;
  try {
    w = make_workload(workload_options(opt));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distmla_decode: %s\n", e.what());
    return 1;
  }
  const dmlaDecodeShape_t& shape = w.shape;
  const size_t rows = static_cast<size_t>(shape.batch) * shape.s_q * shape.h_q;
  const size_t out_bytes = rows * DMLA_D_V * dtype_size(shape.out_dtype);
  std::vector<uint16_t> out(out_bytes / sizeof(uint16_t));  // raw storage for any out dtype
  std::vector<float> lse(rows);

  RunResult res;
  dmlaBackend_t backend = dmlaBackendCpu;
  try {
    DecodePlan plan(shape, opt.backend);
    backend = plan.backend();
    dmlaDecodeTensors_t host = w.host_tensors();
    host.out = out.data();
    host.lse = lse.data();
    const bool ok = backend == dmlaBackendCuda
                        ? run_cuda(opt, plan, w, host, out_bytes, rows, &res)
                        : run_cpu(opt, plan, host, out_bytes, rows, &res);
    if (!ok) return 1;
  } catch (const Error& e) {
    std::fprintf(stderr, "distmla_decode: %s (%s)\n", e.what(), dmlaGetErrorString(e.code()));
    return 1;
  }

  CompareResult cmp;
  if (opt.check) {
    std::vector<double> out_ref, lse_ref;
    reference_decode(shape, w.host_tensors(), &out_ref, &lse_ref);
    cmp = compare_with_reference(shape, out.data(), shape.out_dtype, lse.data(), out_ref, lse_ref);
  }

  const double mean_s = w.mean_len();
  const double t_us = median(res.times_us);
  const double tflops = t_us > 0 ? decode_flops(shape, mean_s) / (t_us * 1e-6) / 1e12 : 0.0;
  const double gbs = t_us > 0 ? decode_bytes(shape, mean_s) / (t_us * 1e-6) / 1e9 : 0.0;

  std::printf("# distmla_decode: single device, page %d, %s, varlen %d, causal %d, seed %llu, "
              "%d warm-up + %d timed iterations (median); the split combine is inside the time%s\n",
              shape.page_size, "bf16", opt.varlen ? 1 : 0, opt.causal ? 1 : 0,
              static_cast<unsigned long long>(opt.seed), opt.warmup, opt.iters,
              opt.reuse_schedule ? "; -r 1: the split schedule is reused (as by every layer after the first)" : "");
  if (res.graph_us > 0) {
    std::printf("# graph us: the same call captured in a CUDA graph, replayed %d times back to back, per call "
                "(median of %d rounds, after %d ms of replays; the figure the distributed job's graph step "
                "compares with)\n",
                opt.graph_iters, kGraphRounds, opt.warm_ms);
    print_spread("graph us", res.spread);
  }
  std::printf("%6s %4s %9s %4s %5s %8s %-28s %12s %9s %9s %10s %7s %10s\n", "b", "s_q", "mean S", "h_q",
              "page", "backend", "device", "time us", "TFLOP/s", "GB/s", "rel err", "#wrong", "graph us");
  char err_col[32] = "-", wrong_col[32] = "-";
  if (opt.check) {
    std::snprintf(err_col, sizeof err_col, "%.3e", cmp.rel_err);
    std::snprintf(wrong_col, sizeof wrong_col, "%lld", static_cast<long long>(cmp.wrong));
  }
  char graph_col[32] = "-";
  if (res.graph_us > 0) std::snprintf(graph_col, sizeof graph_col, "%.1f", res.graph_us);
  std::printf("%6d %4d %9.1f %4d %5d %8s %-28s %12.1f %9.3f %9.1f %10s %7s %10s\n", shape.batch, shape.s_q,
              mean_s, shape.h_q, shape.page_size, backend_name(backend), res.device.c_str(), t_us, tflops,
              gbs, err_col, wrong_col, graph_col);
  if (opt.check) {
    std::printf("# max |lse - lse_ref| = %.3e\n", cmp.max_lse_err);
    if (!cmp.ok()) {
      std::printf("# FAILED: %lld wrong elements, rel err %.3e (tolerance 1e-2)\n",
                  static_cast<long long>(cmp.wrong), cmp.rel_err);
      return 1;
    }
  }
  return 0;
}

}  // namespace distmla::examples
