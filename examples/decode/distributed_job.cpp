// Distributed job: every rank builds the same random workload (same seed), takes its shard
// (its TP heads, its CP pages), runs the distributed step (warm-up + timed iterations), checks
// its output heads against the double reference, and rank 0 prints one nccl-tests-style row.
//   mpirun -np N distmla_decode -t TP -x CP -m allgather|alltoall|auto ...
//   N processes: distmla_decode --rank R --world N --store host:port ... (rank 0 hosts the store)
// GPUs present: NCCL over device buffers, CUDA backend. No GPU: the host path (MPI or store
// communicator, CPU backend).
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "distmla/compare.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/mpi_communicator.h"
#include "distmla/dist/nccl_communicator.h"
#include "distmla/dist/peer_communicator.h"
#include "distmla/dist/shard_data.h"
#include "distmla/dist/store_communicator.h"
#include "distmla/dist/store_watch.h"
#include "distmla/dist/tcp_store.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"
#include "exchange_bench.h"
#include "job_options.h"
#include "median.h"
#include "node_ranks.h"

namespace distmla::examples {

namespace {

using namespace distmla::dist;

#define DJ_CUDA(call)                                                                                      \
  do {                                                                                                     \
    const cudaError_t e_ = (call);                                                                         \
    if (e_ != cudaSuccess)                                                                                 \
      throw Error(dmlaErrorCuda, std::string(#call) + ": " + cudaGetErrorString(e_) + " (" + __FILE__ + ":" + \
                                     std::to_string(__LINE__) + ")");                                      \
  } while (0)

void check_dist(dmlaResult_t r, const char* what) {
  if (r != dmlaSuccess) throw Error(r, std::string(what) + ": " + last_error_message());
}

struct DevMem {
  void* p = nullptr;
  explicit DevMem(size_t bytes) { DJ_CUDA(cudaMalloc(&p, std::max<size_t>(bytes, 256))); }
  ~DevMem() { cudaFree(p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
};

template <typename T>
std::unique_ptr<DevMem> upload(const std::vector<T>& h) {
  auto d = std::make_unique<DevMem>(h.size() * sizeof(T));
  DJ_CUDA(cudaMemcpy(d->p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// Gathers one vector of doubles a rank on every rank (host or device communicator).
std::vector<double> gather(Communicator& comm, const std::vector<double>& mine) {
  const size_t bytes = mine.size() * sizeof(double);
  std::vector<double> all(mine.size() * comm.size());
  if (comm.memory() == MemSpace::kHost) {
    check_dist(comm.all_gather(mine.data(), all.data(), bytes, nullptr), "gather");
    return all;
  }
  DevMem s(bytes), r(bytes * comm.size());
  DJ_CUDA(cudaMemcpy(s.p, mine.data(), bytes, cudaMemcpyHostToDevice));
  check_dist(comm.all_gather(s.p, r.p, bytes, nullptr), "gather");
  check_dist(comm.wait(nullptr), "gather wait");
  DJ_CUDA(cudaMemcpy(all.data(), r.p, all.size() * sizeof(double), cudaMemcpyDeviceToHost));
  return all;
}


struct Launch {
  bool mpi = false;
  int rank = 0, world = 1;
  std::unique_ptr<TcpStoreServer> server;  // rank 0 of a store launch hosts the store
  std::unique_ptr<TcpStoreClient> store;
  std::unique_ptr<StoreWatch> watch;  // a store launch's failure detection (CommOptions::cancel)
};

// The end of a store launch. A rank that failed (failure: its message) first aborts the store, so
// that the other ranks' store calls fail at once with its reason instead of waiting out their
// deadlines (a bad launch is refused by every rank within a second, not after a minute), and
// their watches cancel their NCCL and peer waits. Then every rank counts itself out (the store
// counts a rank that died), and rank 0, which hosts the store, leaves only after all the others
// have (10 s at most).
void leave_store(Launch& L, const char* failure) {
  if (!L.store) return;
  if (L.watch) L.watch->finish();
  if (failure) L.store->abort("rank " + std::to_string(L.rank) + ": " + failure, 10000);  // rank 0 may start late
  int64_t n = 0;
  if (!L.server) {
    L.store->add("exited", 1, &n, 2000);
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (n < L.world - 1 && std::chrono::steady_clock::now() < deadline) {
    if (L.store->add("exited", 0, &n, 2000) != dmlaSuccess) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// A store launch's rank: rank 0 hosts the store; every rank has a client on it. Throws on a bad
// address or a store that cannot listen.
void open_store(Launch& L, const JobOptions& opt) {
  L.rank = opt.rank;
  L.world = opt.world;
  std::string host, err;
  int port = 0;
  if (!parse_host_port(opt.store, &host, &port, &err)) throw Error(dmlaErrorInvalidArgument, err);
  if (L.rank == 0) L.server = std::make_unique<TcpStoreServer>(host, port);
  L.store = std::make_unique<TcpStoreClient>(host, port, "distmla_decode");
}

int run(const JobOptions& opt, Launch& L) {
  if (!opt.store.empty()) {
    if (opt.rank < 0 || opt.world < 1)
      throw Error(dmlaErrorInvalidArgument, "--store " + opt.store + " needs --rank and --world");
    open_store(L, opt);
    L.watch = std::make_unique<StoreWatch>(*L.store, L.rank, "exited");
  } else {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) MPI_Init(nullptr, nullptr);
    L.mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &L.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &L.world);
  }
  int tp = opt.tp, cp = opt.cp;
  if (tp * cp == 1 && L.world > 1) cp = L.world;  // default layout: all ranks shard the KV
  if (tp * cp != L.world)
    throw Error(dmlaErrorInvalidArgument, "-t " + std::to_string(tp) + " -x " + std::to_string(cp) +
                                              ": tp * cp must equal the world size " + std::to_string(L.world));
  MergeMode mode;
  if (!parse_merge_mode(opt.merge, &mode)) throw Error(dmlaErrorInvalidArgument, "-m " + opt.merge);

  // Device or host path.
  int ndev = 0;
  const bool gpus = opt.backend != dmlaBackendCpu && cudaGetDeviceCount(&ndev) == cudaSuccess && ndev > 0;
  if (opt.backend == dmlaBackendCuda && !gpus) throw Error(dmlaErrorBackend, "--backend cuda: no GPU");
  if (opt.peer == 1 && !gpus)
    throw Error(dmlaErrorInvalidArgument, "-P 1: the peer exchange needs GPUs (this run is on the CPU path)");
  // NCCL takes one GPU a rank (two ranks on one GPU fail its init with "invalid usage"): refused
  // here with the counts, for either bootstrap.
  const NodeRanks node = L.mpi ? node_ranks_mpi(MPI_COMM_WORLD) : node_ranks_store(*L.store, L.rank, L.world, 60000);
  if (gpus && node.local_size > ndev)
    throw Error(dmlaErrorInvalidArgument, std::string(L.mpi ? "-np" : "--world") + ": " + std::to_string(node.local_size) +
                                              " ranks on host " + node.host + " but " + std::to_string(ndev) +
                                              " GPUs; NCCL needs one GPU a rank (start at most " + std::to_string(ndev) +
                                              " a host, or --backend cpu)");
  const int device = gpus ? node.local_rank : -1;
  CommOptions copt;
  copt.timeout_ms = 120000;
  if (L.watch) copt.cancel = L.watch->cancel();  // a rank that fails or dies ends the others' waits
  std::unique_ptr<Communicator> comm;
  if (gpus) {
    DJ_CUDA(cudaSetDevice(device));
    comm = L.mpi ? make_nccl_communicator_mpi(MPI_COMM_WORLD, device, copt)
                 : make_nccl_communicator_store(*L.store, "nccl_id", L.rank, L.world, device, copt);
    // CP all-to-all over CUDA IPC (-P; docs/PERFORMANCE.md D13, D14, X2: 8-11 us faster a step
    // than NCCL); the peer communicator falls back to NCCL on its own, all ranks agreeing.
    if (opt.peer == 1 || (opt.peer < 0 && cp > 1))
      comm = make_peer_communicator(std::move(comm), device, copt);
  } else {
    comm = L.mpi ? make_mpi_communicator(MPI_COMM_WORLD, copt) : make_store_communicator(*L.store, L.rank, L.world, copt);
  }

  // Same workload on every rank.
  Workload w = make_workload(workload_options(opt));
  const dmlaDecodeShape_t& g = w.shape;
  ShardPlan plan(L.world, L.rank, tp, cp, g.h_q, g.s_q, g.causal != 0, g.page_size);
  RankShard s = shard_batch(plan, g, w.host_tensors());

  DecoderConfig cfg;
  cfg.batch = g.batch; cfg.s_q = g.s_q; cfg.h_q = g.h_q; cfg.page_size = g.page_size;
  cfg.num_blocks = s.num_blocks; cfg.max_blocks_per_seq = s.max_blocks_per_seq;
  cfg.dtype = g.q_dtype; cfg.out_dtype = g.out_dtype; cfg.scale = g.scale; cfg.causal = g.causal != 0;
  cfg.tp = tp; cfg.cp = cp; cfg.mode = mode; cfg.record_timing = true; cfg.mean_len_hint = w.mean_len();
  cfg.sub_batches = opt.sub_batches;
  ShardGroups groups = split_groups(*comm, tp, cp);  // shared with the -G decoder
  auto decp = std::make_unique<DistDecoder>(*comm, groups, cfg);
  DistDecoder& dec = *decp;
  const Range oh = dec.out_heads();
  const size_t out_elems = static_cast<size_t>(g.batch) * g.s_q * oh.count * DMLA_D_V;
  const size_t lse_elems = static_cast<size_t>(g.batch) * oh.count * g.s_q;
  const size_t out_bytes = out_elems * (cfg.out_dtype == dmlaFP32 ? 4 : 2);
  std::vector<uint16_t> out(out_bytes / 2);
  std::vector<float> lse(lse_elems);
  std::vector<double> step_us, attn_us, xchg_us, merge_us;
  // -r 1: the timed steps reuse the schedule the warm-up left (every layer after the first).
  const unsigned flags = opt.reuse_schedule ? DMLA_RUN_REUSE_SCHEDULE : 0u;
  ExchangeBench xb;  // -G: graph-replayed step, exchange + merge, bare collective (GPUs)

  if (gpus) {
    auto q = upload(s.q), kv = upload(s.kv), bt = upload(s.block_table), sl = upload(s.seqlens);
    auto tbt = upload(s.tail_block_table), tsl = upload(s.tail_seqlens);
    DevMem dout(out_bytes), dlse(lse_elems * 4), ws(dec.workspace_bytes());
    cudaStream_t st;
    DJ_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    DJ_CUDA(cudaEventCreate(&e0));
    DJ_CUDA(cudaEventCreate(&e1));
    DecoderInputs in;
    in.q = q->p; in.kv_pool = kv->p; in.block_table = static_cast<const int32_t*>(bt->p);
    in.seqlens = static_cast<const int32_t*>(sl->p); in.out = dout.p; in.lse = static_cast<float*>(dlse.p);
    in.tail_block_table = static_cast<const int32_t*>(tbt->p); in.tail_seqlens = static_cast<const int32_t*>(tsl->p);
    for (int i = 0; i < opt.warmup; ++i) check_dist(dec.run(in, ws.p, dec.workspace_bytes(), st), "run");
    DJ_CUDA(cudaMemsetAsync(dout.p, 0xff, out_bytes, st));  // NaN poison
    DJ_CUDA(cudaMemsetAsync(dlse.p, 0xff, lse_elems * 4, st));
    check_dist(comm->wait(st), "wait");
    for (int i = 0; i < opt.iters; ++i) {
      check_dist(comm->barrier(), "barrier");  // ranks start each timed step together
      DJ_CUDA(cudaEventRecord(e0, st));
      check_dist(dec.run(in, ws.p, dec.workspace_bytes(), st, flags), "run");
      DJ_CUDA(cudaEventRecord(e1, st));
      check_dist(comm->wait(st), "wait");
      float ms = 0;
      DJ_CUDA(cudaEventElapsedTime(&ms, e0, e1));
      StepTiming t;
      check_dist(dec.last_timing(&t), "timing");
      step_us.push_back(ms * 1e3);
      attn_us.push_back(t.attention_us);
      xchg_us.push_back(t.exchange_us);
      merge_us.push_back(t.merge_us);
    }
    DJ_CUDA(cudaMemcpy(out.data(), dout.p, out_bytes, cudaMemcpyDeviceToHost));
    DJ_CUDA(cudaMemcpy(lse.data(), dlse.p, lse_elems * 4, cudaMemcpyDeviceToHost));
    if (opt.graph_iters > 0) {
      // A decoder without timing events (they would be captured) on its own workspace.
      DecoderConfig gcfg = cfg;
      gcfg.record_timing = false;
      DistDecoder gdec(*comm, groups, gcfg);
      DevMem gws(gdec.workspace_bytes());
      // -W: every rank replays the same number of steps (collectives inside), from the slowest
      // rank's eager median.
      double slowest = 0;
      for (double v : gather(*comm, {median(step_us)})) slowest = std::max(slowest, v);
      xb = bench_graphs(*comm, gdec, in, gws.p, st, opt.graph_iters, flags, warm_replays(opt.warm_ms, slowest));
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(st);
  } else {
    std::vector<uint8_t> ws_raw(dec.workspace_bytes() + 256);
    void* ws = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws_raw.data()) + 255) / 256 * 256);
    DecoderInputs in;
    in.q = s.q.data(); in.kv_pool = s.kv.data(); in.block_table = s.block_table.data();
    in.seqlens = s.seqlens.data(); in.out = out.data(); in.lse = lse.data();
    in.tail_block_table = s.tail_block_table.data(); in.tail_seqlens = s.tail_seqlens.data();
    for (int i = 0; i < opt.warmup; ++i) check_dist(dec.run(in, ws, dec.workspace_bytes(), nullptr), "run");
    std::memset(out.data(), 0xff, out_bytes);
    std::fill(lse.begin(), lse.end(), NAN);
    for (int i = 0; i < opt.iters; ++i) {
      check_dist(comm->barrier(), "barrier");
      const auto a = std::chrono::steady_clock::now();
      check_dist(dec.run(in, ws, dec.workspace_bytes(), nullptr, flags), "run");
      step_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - a).count());
      StepTiming t;
      check_dist(dec.last_timing(&t), "timing");
      attn_us.push_back(t.attention_us);
      xchg_us.push_back(t.exchange_us);
      merge_us.push_back(t.merge_us);
    }
  }

  double wrong = 0, rel = 0;
  if (opt.check && oh.count > 0) {
    std::vector<double> out_ref, lse_ref;
    reference_decode(g, w.host_tensors(), &out_ref, &lse_ref);
    dmlaDecodeShape_t sub = g;
    sub.h_q = oh.count;
    std::vector<double> o_sub, l_sub;
    for (int b = 0; b < g.batch; ++b)
      for (int t = 0; t < g.s_q; ++t) {
        const size_t r = ((static_cast<size_t>(b) * g.s_q + t) * g.h_q + oh.begin) * DMLA_D_V;
        o_sub.insert(o_sub.end(), out_ref.begin() + r, out_ref.begin() + r + static_cast<size_t>(oh.count) * DMLA_D_V);
      }
    for (int b = 0; b < g.batch; ++b)
      for (int h = 0; h < oh.count; ++h)
        for (int t = 0; t < g.s_q; ++t) l_sub.push_back(lse_ref[(static_cast<size_t>(b) * g.h_q + oh.begin + h) * g.s_q + t]);
    CompareResult cr = compare_with_reference(sub, out.data(), cfg.out_dtype, lse.data(), o_sub, l_sub);
    wrong = static_cast<double>(cr.wrong) + (cr.rel_err < 1e-2 ? 0 : 1);
    rel = cr.rel_err;
  }
  const double kv_bytes = static_cast<double>(s.num_blocks) * g.page_size * DMLA_D_QK * 2;
  std::vector<double> mine = {median(step_us), median(xchg_us), median(merge_us), wrong, rel, kv_bytes,
                              median(attn_us), xb.exchange_merge_us, xb.bare_us, xb.step_us, xb.bare_wrapped_us};
  const int kSpreadAt = static_cast<int>(mine.size()), kVals = kSpreadAt + kSpreadValues;
  mine.resize(kVals);
  spread_to_values(xb.step_spread, &mine[kSpreadAt]);
  const std::vector<double> all = gather(*comm, mine);
  int failed = 0;
  if (L.rank == 0) {
    double step = 0, xchg = 0, mrg = 0, nwrong = 0, maxrel = 0, kvmax = 0, attn = 0, xm = 0, bare = 0, gstep = 0,
           bare_w = 0;
    for (int r = 0; r < L.world; ++r) {
      const double* v = &all[kVals * r];
      step = std::max(step, v[0]);
      xchg = std::max(xchg, v[1]);
      mrg = std::max(mrg, v[2]);
      nwrong += v[3];
      maxrel = std::max(maxrel, v[4]);
      kvmax = std::max(kvmax, v[5]);
      attn = std::max(attn, v[6]);
      xm = std::max(xm, v[7]);
      bare = std::max(bare, v[8]);
      gstep = std::max(gstep, v[9]);
      bare_w = std::max(bare_w, v[10]);
    }
    // Per GPU: its heads over its share of the KV (DESIGN.md section 7 formulas on the shard).
    const double S = w.mean_len(), h_tp = static_cast<double>(g.h_q) / tp;
    const double flop = g.batch * g.s_q * h_tp * (S / cp) * 2.0 * (DMLA_D_QK + DMLA_D_V);
    const double bytes = g.batch * ((S / cp) * DMLA_D_QK * 2.0 + g.s_q * h_tp * (DMLA_D_QK + DMLA_D_V) * 2.0);
    std::string devname = "CPU reference";
    if (gpus) {
      cudaDeviceProp prop{};
      cudaGetDeviceProperties(&prop, device);
      devname = prop.name;
    }
    const std::string cpx = std::string(dec.cp_group().backend_name()) +
                            (dec.pull_merge() ? ", pull merge: the merge reads the peers' chunks, exchange 0" : "");
    std::printf("# distmla_decode distributed: %d ranks (%s; CP exchange: %s; %s backend, %s), page %d, varlen %d, "
                "causal %d, seed %llu, %d warm-up + %d timed steps (median, slowest rank); exchange and merge inside "
                "the step time; attn/exchange/merge us: exposed time of each phase (k sub-batches: the last one's)%s\n",
                L.world, comm->backend_name(), cpx.c_str(), gpus ? "cuda" : "cpu", devname.c_str(),
                g.page_size,
                opt.varlen ? 1 : 0, opt.causal ? 1 : 0, static_cast<unsigned long long>(opt.seed), opt.warmup,
                opt.iters, opt.reuse_schedule ? "; -r 1: split schedule reused (a layer after the first)" : "");
    const bool xbench = xm > 0;
    if (gstep > 0)
      std::printf("# -G %d: 'graph step us' = the step, 'x+m graph us' = exchange + merge alone (pack, "
                  "exchange, combine), 'bare us' = the CP group's %s of the same %zu B a peer (%s), 'NCCL bare' = "
                  "the same through the NCCL communicator it wraps (-P 1), 'ratio' = x+m / the NCCL bare (the "
                  "issue-4 yardstick); each captured in a CUDA graph and launched %d times back to back, time / "
                  "%d, median of %d such rounds; the step's rounds follow its %d ms of replays without a pause, as "
                  "the one-GPU call's; the others each after the ranks align (nccl-tests style)\n",
                  opt.graph_iters, dec.mode() == MergeMode::kAllToAll ? "all-to-all" : "all-gather",
                  dec.exchange_bytes(), dec.cp_group().backend_name(), opt.graph_iters, opt.graph_iters,
                  kGraphRounds, opt.warm_ms);
    std::printf("%7s %9s %5s %4s %9s %4s %2s %10s %9s %11s %9s %9s %9s %12s %8s %10s %13s %12s %9s %9s %6s\n",
                "TPxCP", "merge", "b", "s_q", "mean S", "h_q", "k", "step us", "attn us", "exchange us", "merge us",
                "TFLOP/s", "GB/s", "KV B/GPU", "#wrong", "rel err", "graph step us", "x+m graph us", "bare us",
                "NCCL bare", "ratio");
    char layout[32];
    std::snprintf(layout, sizeof layout, "%dx%d", tp, cp);
    char rel_text[32] = "-";  // unchecked rows have no error to show
    if (opt.check) std::snprintf(rel_text, sizeof rel_text, "%.3e", maxrel);
    char gstep_text[32] = "-", xm_text[32] = "-", bare_text[32] = "-", bare_w_text[32] = "-", ratio_text[32] = "-";
    if (gstep > 0) std::snprintf(gstep_text, sizeof gstep_text, "%.1f", gstep);
    if (xbench) {
      // the NCCL bare: the wrapped communicator's when the CP group wraps one (-P 1), else its own
      const double nccl_bare = bare_w > 0 ? bare_w : bare;
      std::snprintf(xm_text, sizeof xm_text, "%.1f", xm);
      std::snprintf(bare_text, sizeof bare_text, "%.1f", bare);
      if (bare_w > 0) std::snprintf(bare_w_text, sizeof bare_w_text, "%.1f", bare_w);
      std::snprintf(ratio_text, sizeof ratio_text, "%.2f", nccl_bare > 0 ? xm / nccl_bare : 0);
    }
    std::printf("%7s %9s %5d %4d %9.1f %4d %2d %10.1f %9.1f %11.1f %9.1f %9.3f %9.1f %12.4g %8s %10s %13s %12s %9s %9s "
                "%6s\n",
                layout, merge_mode_name(dec.mode()), g.batch, g.s_q, S, g.h_q, dec.sub_batches(), step, attn, xchg,
                mrg, step > 0 ? flop / (step * 1e-6) / 1e12 : 0, step > 0 ? bytes / (step * 1e-6) / 1e9 : 0, kvmax,
                opt.check ? std::to_string(static_cast<long long>(nwrong)).c_str() : "-", rel_text, gstep_text, xm_text,
                bare_text, bare_w_text, ratio_text);
    for (int r = 0; r < L.world && gstep > 0; ++r) {
      print_spread(("graph step, rank " + std::to_string(r)).c_str(), spread_from_values(&all[kVals * r + kSpreadAt]));
    }
    std::fflush(stdout);
    failed = opt.check && nwrong > 0;
  }
  const std::vector<double> verdict = gather(*comm, {static_cast<double>(failed)});
  check_dist(comm->barrier(), "final barrier");
  decp.reset();
  groups = {};
  comm.reset();  // communicators before MPI_Finalize; the store server (rank 0) goes last
  if (L.mpi) MPI_Finalize();
  leave_store(L, nullptr);
  return verdict[0] > 0 ? 1 : 0;
}

}  // namespace

void abort_store_launch(const JobOptions& launch, const std::string& why) {
  Launch L;
  try {
    open_store(L, launch);
  } catch (const std::exception&) {
    return;
  }
  leave_store(L, why.c_str());
}

int run_distributed_job(const JobOptions& opt) {
  Launch L;
  std::string failure;
  try {
    return run(opt, L);
  } catch (const Error& e) {
    failure = std::string(e.what()) + " (" + dmlaGetErrorString(e.code()) + ")";
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (L.watch && L.watch->cancelled() && failure.find(L.watch->reason()) == std::string::npos)
    failure += "; the job had ended: " + L.watch->reason();  // why this rank's wait was cancelled
  std::fprintf(stderr, "distmla_decode: %s\n", failure.c_str());
  // The other ranks may wait in a collective for this one: end the job rather than let them
  // run into their deadlines (the store's abort, or MPI_Abort).
  leave_store(L, failure.c_str());
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}

}  // namespace distmla::examples
