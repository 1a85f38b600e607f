// distmla_bench: times the whole decode call (GPU schedule + split decode + combine) with CUDA
// events, median of >= 30 runs after warm-up, rotating among several KV pools so that the data
// is several times the L2 size. Also the per-call time of calls replayed from a CUDA graph.
// FLOP and bytes: DESIGN.md section 7 (decode_flops / decode_bytes).
//
//   distmla_bench                      every row of DESIGN.md section 7 (+ two extra rows)
//   distmla_bench -b 128 -s 8192 -H 64 -q 1 -p 64 -n 30 -w 5 -c 0 -V 1 -g 0
//   distmla_bench -i 2000 / -W 1000    every row from an idle card / after 1 s of its own load
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "distmla/compare.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"

namespace {

#define CUDA_OK(x)                                                                       \
  do {                                                                                   \
    cudaError_t e_ = (x);                                                                \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

struct Row {
  int b, s_q, S, h;
  bool varlen;
  bool graph;
};

struct Opts {
  int b = -1, S = 1024, h = 16, s_q = 1, page = 64, iters = 30, warmup = 5, check = 0, varlen = 0, graph = -1;
  int causal = 1;
  int reuse = 0;  // -r 1: timed calls reuse the schedule (DMLA_RUN_REUSE_SCHEDULE) left by the warm-up
  // The card's state when a row is timed (run 42: the same row differs by up to 17% between the
  // two): -i ms of idle before each row (from boost clocks), -W ms of back-to-back calls before
  // the timed ones (at the 700 W cap, as in a busy server).
  int idle_ms = 0, warm_ms = 0;
};

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void fill_bf16(uint16_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ull ^ seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float f = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;  // [-1, 1)
    uint32_t u = __float_as_uint(f);
    p[i] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int check_row(const Row& r, int page, int causal, double* rel) {
  distmla::WorkloadOptions o;
  o.batch = r.b;
  o.s_q = r.s_q;
  o.h_q = r.h;
  o.page_size = page;
  o.mean_len = r.S;
  o.varlen = r.varlen;
  o.causal = causal != 0;
  o.seed = 7;
  distmla::Workload w = distmla::make_workload(o);
  distmla::DecodePlan plan(w.shape, dmlaBackendCuda);
  void *q, *kv, *bt, *sl, *out, *lse, *ws;
  const size_t rows = size_t(r.b) * r.s_q * r.h;
  CUDA_OK(cudaMalloc(&q, w.q.size() * 2));
  CUDA_OK(cudaMalloc(&kv, w.kv.size() * 2));
  CUDA_OK(cudaMalloc(&bt, w.block_table.size() * 4));
  CUDA_OK(cudaMalloc(&sl, w.seqlens.size() * 4));
  CUDA_OK(cudaMalloc(&out, rows * 512 * 2));
  CUDA_OK(cudaMalloc(&lse, rows * 4));
  CUDA_OK(cudaMalloc(&ws, std::max<size_t>(plan.workspace_bytes(), 256)));
  CUDA_OK(cudaMemcpy(q, w.q.data(), w.q.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(kv, w.kv.data(), w.kv.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(bt, w.block_table.data(), w.block_table.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(sl, w.seqlens.data(), w.seqlens.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(out, 0xFF, rows * 512 * 2));
  CUDA_OK(cudaMemset(lse, 0xFF, rows * 4));
  dmlaDecodeTensors_t t{q, kv, static_cast<int32_t*>(bt), static_cast<int32_t*>(sl), out, static_cast<float*>(lse)};
  plan.run(t, ws, plan.workspace_bytes(), nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> ho(rows * 512);
  std::vector<float> hl(rows);
  CUDA_OK(cudaMemcpy(ho.data(), out, rows * 512 * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(hl.data(), lse, rows * 4, cudaMemcpyDeviceToHost));
  std::vector<double> ref, lref;
  distmla::reference_decode(w.shape, w.host_tensors(), &ref, &lref, 0);
  auto c = distmla::compare_with_reference(w.shape, ho.data(), w.shape.out_dtype, hl.data(), ref, lref);
  for (void* p : {q, kv, bt, sl, out, lse, ws}) cudaFree(p);
  *rel = c.rel_err;
  return static_cast<int>(c.wrong) + (c.rel_err < 1e-2 ? 0 : 1);
}

void run_row(const Row& r, const Opts& o, const cudaDeviceProp& prop) {
  const int page = o.page;
  uint64_t rs = 12345 + r.b * 31 + r.S;
  std::vector<int32_t> lens(r.b);
  for (int i = 0; i < r.b; ++i) {
    int L = r.S;
    if (r.varlen) L = r.S / 2 + static_cast<int>(splitmix(rs) % static_cast<uint64_t>(r.S + 1));
    lens[i] = std::max(L, r.s_q);
  }
  double mean = 0;
  int max_pages = 1;
  size_t total_pages = 0;
  for (int L : lens) {
    mean += L;
    int np = (L + page - 1) / page;
    max_pages = std::max(max_pages, np);
    total_pages += np;
  }
  mean /= r.b;
  const int num_blocks = static_cast<int>(total_pages) + 1;
  std::vector<int32_t> perm(num_blocks);
  for (int i = 0; i < num_blocks; ++i) perm[i] = i;
  for (int i = num_blocks - 1; i > 0; --i) std::swap(perm[i], perm[splitmix(rs) % (i + 1)]);
  std::vector<int32_t> table(size_t(r.b) * max_pages, -1);
  size_t next = 0;
  for (int i = 0; i < r.b; ++i)
    for (int pgi = 0; pgi < (lens[i] + page - 1) / page; ++pgi) table[size_t(i) * max_pages + pgi] = perm[next++];

  dmlaDecodeShape_t shape;
  dmlaShapeInit(&shape);
  shape.batch = r.b;
  shape.s_q = r.s_q;
  shape.h_q = r.h;
  shape.page_size = page;
  shape.num_blocks = num_blocks;
  shape.max_blocks_per_seq = max_pages;
  shape.causal = o.causal;
  distmla::DecodePlan plan(shape, dmlaBackendCuda);

  const size_t kv_elems = size_t(num_blocks) * page * 576;
  const size_t kv_bytes = kv_elems * 2;
  size_t free_b = 0, total_b = 0;
  CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
  const size_t rows = size_t(r.b) * r.s_q * r.h;
  size_t fixed = plan.workspace_bytes() + rows * (576 + 512) * 2 + rows * 4 + table.size() * 4 + 4096;
  int nrot = static_cast<int>(std::min<size_t>(8, (4 * size_t(prop.l2CacheSize) + kv_bytes - 1) / kv_bytes));
  nrot = std::max(nrot, 1);
  while (nrot > 1 && nrot * kv_bytes + fixed > free_b * 8 / 10) --nrot;
  std::vector<void*> pools(nrot);
  for (int k = 0; k < nrot; ++k) {
    CUDA_OK(cudaMalloc(&pools[k], kv_bytes));
    fill_bf16<<<1024, 256>>>(static_cast<uint16_t*>(pools[k]), kv_elems, 1000 + k);
  }
  void *q, *bt, *sl, *out, *lse, *ws;
  CUDA_OK(cudaMalloc(&q, rows * 576 * 2));
  fill_bf16<<<256, 256>>>(static_cast<uint16_t*>(q), rows * 576, 77);
  CUDA_OK(cudaMalloc(&bt, table.size() * 4));
  CUDA_OK(cudaMalloc(&sl, lens.size() * 4));
  CUDA_OK(cudaMalloc(&out, rows * 512 * 2));
  CUDA_OK(cudaMalloc(&lse, rows * 4));
  CUDA_OK(cudaMalloc(&ws, std::max<size_t>(plan.workspace_bytes(), 256)));
  CUDA_OK(cudaMemcpy(bt, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(sl, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaDeviceSynchronize());

  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  auto tensors = [&](int k) {
    dmlaDecodeTensors_t t{q, pools[k % nrot], static_cast<int32_t*>(bt), static_cast<int32_t*>(sl), out,
                          static_cast<float*>(lse)};
    return t;
  };
  for (int i = 0; i < o.warmup; ++i) plan.run(tensors(i), ws, plan.workspace_bytes(), st);
  CUDA_OK(cudaStreamSynchronize(st));
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(o.warm_ms)) {
    for (int i = 0; i < 8; ++i) plan.run(tensors(i), ws, plan.workspace_bytes(), st);
    CUDA_OK(cudaStreamSynchronize(st));
  }
  std::vector<cudaEvent_t> ev(2 * o.iters);
  for (auto& e : ev) CUDA_OK(cudaEventCreate(&e));
  const unsigned run_flags = o.reuse ? DMLA_RUN_REUSE_SCHEDULE : 0u;
  for (int i = 0; i < o.iters; ++i) {
    CUDA_OK(cudaEventRecord(ev[2 * i], st));
    plan.run(tensors(i), ws, plan.workspace_bytes(), st, run_flags);
    CUDA_OK(cudaEventRecord(ev[2 * i + 1], st));
  }
  CUDA_OK(cudaStreamSynchronize(st));
  CUDA_OK(cudaGetLastError());
  std::vector<float> ms(o.iters);
  for (int i = 0; i < o.iters; ++i) CUDA_OK(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
  const double us = median(ms) * 1e3;

  // Per call replayed from a graph of K calls; flags as in plan.run.
  const int K = std::max(20, nrot);
  auto graph_us = [&](unsigned flags) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < K; ++i) plan.run(tensors(i), ws, plan.workspace_bytes(), st, flags);
    CUDA_OK(cudaStreamEndCapture(st, &g));
    CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 3; ++i) CUDA_OK(cudaGraphLaunch(ge, st));
    const int reps = 10;
    std::vector<float> gms(reps);
    for (int i = 0; i < reps; ++i) {
      CUDA_OK(cudaEventRecord(ev[0], st));
      CUDA_OK(cudaGraphLaunch(ge, st));
      CUDA_OK(cudaEventRecord(ev[1], st));
      CUDA_OK(cudaEventSynchronize(ev[1]));
      CUDA_OK(cudaEventElapsedTime(&gms[i], ev[0], ev[1]));
    }
    CUDA_OK(cudaGraphExecDestroy(ge));
    CUDA_OK(cudaGraphDestroy(g));
    return median(gms) * 1e3 / K;
  };
  double gus = -1, gus_reuse = -1;
  const bool do_graph = o.graph == 1 || (o.graph == -1 && r.graph);
  if (do_graph) {
    gus = graph_us(run_flags);
    // the layers of a step after the first reuse its schedule (FlashMLA's benchmark likewise
    // computes its metadata once, outside the timed calls)
    gus_reuse = o.reuse ? gus : graph_us(DMLA_RUN_REUSE_SCHEDULE);
  }
  for (auto& e : ev) cudaEventDestroy(e);
  cudaStreamDestroy(st);
  for (void* p : pools) cudaFree(p);
  for (void* p : {q, bt, sl, out, lse, ws}) cudaFree(p);

  const double flops = distmla::decode_flops(shape, mean);
  const double bytes = distmla::decode_bytes(shape, mean);
  const double t_s = (gus > 0 ? gus : us) * 1e-6;
  std::string wrong = "-";
  if (o.check) {
    double rel = 0;
    int nw = check_row(r, page, o.causal, &rel);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%d (rel %.1e)", nw, rel);
    wrong = buf;
  }
  char gbuf[32] = "-", rbuf[32] = "-";
  if (gus > 0) std::snprintf(gbuf, sizeof gbuf, "%.1f", gus);
  if (gus_reuse > 0) std::snprintf(rbuf, sizeof rbuf, "%.1f", gus_reuse);
  std::printf("%5d %4d %8.0f %4d %6s %10.1f %10s %10s %8.1f %8.0f %5d  %s  %s\n", r.b, r.s_q, mean, r.h,
              r.varlen ? "yes" : "no", us, gbuf, rbuf, flops / t_s * 1e-12, bytes / t_s * 1e-9, nrot, prop.name,
              wrong.c_str());
  std::fflush(stdout);
}

bool parse(int argc, char** argv, Opts* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](int* dst) {
      if (i + 1 >= argc) return false;
      *dst = std::atoi(argv[++i]);
      return true;
    };
    bool ok = true;
    if (a == "-b") ok = val(&o->b);
    else if (a == "-s") ok = val(&o->S);
    else if (a == "-H") ok = val(&o->h);
    else if (a == "-q") ok = val(&o->s_q);
    else if (a == "-p") ok = val(&o->page);
    else if (a == "-n") ok = val(&o->iters);
    else if (a == "-w") ok = val(&o->warmup);
    else if (a == "-c") ok = val(&o->check);
    else if (a == "-V") ok = val(&o->varlen);
    else if (a == "-g") ok = val(&o->graph);
    else if (a == "--causal") ok = val(&o->causal);
    else if (a == "-r") ok = val(&o->reuse);
    else if (a == "-i") ok = val(&o->idle_ms);
    else if (a == "-W") ok = val(&o->warm_ms);
    else {
      std::printf(
          "usage: %s [-b batch -s mean_len -H h_q -q s_q -p page -n iters -w warmup -c check -V varlen "
          "-g graph(0/1) --causal 0/1 -r reuse_schedule(0/1) -i idle_ms_before_each_row -W warm_ms]\n  without -b: "
          "every row of DESIGN.md section 7\n",
          argv[0]);
      return false;
    }
    if (!ok) return false;
  }
  o->iters = std::max(o->iters, 1);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Opts o;
  if (!parse(argc, argv, &o)) return 2;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    std::printf("distmla_bench: no GPU (cudaGetDeviceCount failed or found none): nothing to time\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# distmla_bench on %s (%d SMs, L2 %d MB), page %d, causal %d, reuse_schedule %d, median of %d runs after %d warm-up;\n"
              "# us = whole call (schedule + decode + combine) timed with events, graph_us = per call replayed "
              "from a CUDA graph; graph_r1_us = the same with the schedule reused (the later layers of a step);\n"
              "# TFLOP/s and GB/s from graph_us when present\n",
              prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, o.page, o.causal, o.reuse, o.iters,
              o.warmup);
  std::printf("%5s %4s %8s %4s %6s %10s %10s %10s %8s %8s %5s  %s  %s\n", "b", "s_q", "mean_S", "h_q", "varlen",
              "us", "graph_us", "graph_r1_us", "TFLOP/s", "GB/s", "pools", "card", "#wrong");
  std::vector<Row> rows;
  if (o.b > 0) {
    rows.push_back({o.b, o.s_q, o.S, o.h, o.varlen != 0, o.graph == 1});
  } else {
    rows = {{128, 1, 8192, 16, true, false},  {64, 1, 32768, 16, false, false}, {128, 1, 8192, 64, true, false},
            {128, 1, 8192, 128, true, false}, {128, 1, 16384, 128, true, false}, {128, 2, 8192, 128, true, false},
            {16, 1, 65536, 128, false, false}, {1, 1, 131072, 128, false, false}, {32, 1, 4096, 128, false, false},
            {128, 1, 1024, 16, false, true},  {128, 1, 1024, 128, false, true},  {128, 1, 2048, 16, false, true},
            {32, 1, 1024, 16, false, true},   {128, 2, 1024, 16, false, true},   {128, 1, 32768, 128, false, false},
            {128, 1, 8192, 32, false, false}};
  }
  for (const Row& r : rows) {
    std::this_thread::sleep_for(std::chrono::milliseconds(o.idle_ms));
    try {
      run_row(r, o, prop);
    } catch (const std::exception& e) {
      std::printf("row b=%d S=%d h=%d failed: %s\n", r.b, r.S, r.h, e.what());
    }
  }
  return 0;
}
