// Shared by the MPI, NCCL and peer suites: the reference rows of a rank's output heads and the
// check, a device buffer, and the GPU suites' check of one distributed step.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "distmla/compare.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/error.h"
#include "distmla/dist/shard_data.h"
#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.h"
#include "distmla/reference.h"
#include "distmla/workload.h"

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

namespace distmla::dist::test_util {

// Compares out/lse of heads oh of the whole batch with the double reference of all heads.
inline CompareResult compare_heads(const dmlaDecodeShape_t& g, Range oh, const void* out, dmlaDataType_t out_dtype,
                                   const float* lse, const std::vector<double>& out_ref,
                                   const std::vector<double>& lse_ref) {
  dmlaDecodeShape_t sub = g;
  sub.h_q = oh.count;
  std::vector<double> o_sub, l_sub;
  for (int b = 0; b < g.batch; ++b)
    for (int t = 0; t < g.s_q; ++t)
      for (int h = 0; h < oh.count; ++h) {
        const size_t r = ((static_cast<size_t>(b) * g.s_q + t) * g.h_q + oh.begin + h) * DMLA_D_V;
        o_sub.insert(o_sub.end(), out_ref.begin() + r, out_ref.begin() + r + DMLA_D_V);
      }
  for (int b = 0; b < g.batch; ++b)
    for (int h = 0; h < oh.count; ++h)
      for (int t = 0; t < g.s_q; ++t) l_sub.push_back(lse_ref[(static_cast<size_t>(b) * g.h_q + oh.begin + h) * g.s_q + t]);
  return compare_with_reference(sub, out, out_dtype, lse, o_sub, l_sub);
}

// Device copy of a host vector (or count uninitialised elements); host() copies it back.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)); }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) {
    cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

// The GPU suites' batch: 6 sequences of h_q 16 over 64-token pages, lengths 0, 1, 63, 65, 200,
// 1000 (empty, shorter than a page, a page and one, several pages), with its double reference.
struct RefWorkload {
  Workload wl;
  std::vector<double> out_ref, lse_ref;
};
inline RefWorkload varlen_step_workload(int s_q, uint64_t seed) {
  WorkloadOptions wo;
  wo.batch = 6; wo.s_q = s_q; wo.h_q = 16; wo.page_size = 64; wo.seed = seed;
  wo.lengths = {0, 1, 63, 65, 200, 1000};
  RefWorkload r{make_workload(wo), {}, {}};
  reference_decode(r.wl.shape, r.wl.host_tensors(), &r.out_ref, &r.lse_ref);
  return r;
}

// One distributed step of rw.wl on the GPU, for the layout in `layout` (tp, cp, mode, sub_batches;
// the shape fields are filled here): the eager run, then the step captured in a CUDA graph that
// reuses the schedules the eager run left (a later layer) and replayed twice, each against the
// double reference with every output row NaN-poisoned first; with `exchange_alone` and CP > 1,
// also run_exchange alone on the partials the replay left. cp_backend, when given, is the
// backend the decoder's CP group must report (a peer one: an all-to-all pulls, pull_merge()).
inline void check_gpu_step(Communicator& comm, const RefWorkload& rw, DecoderConfig layout, bool exchange_alone,
                           cudaStream_t st, const char* cp_backend = nullptr) {
  const Workload& wl = rw.wl;
  const dmlaDecodeShape_t& g = wl.shape;
  ShardPlan plan(comm.size(), comm.rank(), layout.tp, layout.cp, g.h_q, g.s_q, true, g.page_size);
  RankShard s = shard_batch(plan, g, wl.host_tensors());
  DecoderConfig cfg = layout;
  cfg.batch = g.batch; cfg.s_q = g.s_q; cfg.h_q = g.h_q; cfg.page_size = g.page_size;
  cfg.num_blocks = s.num_blocks; cfg.max_blocks_per_seq = s.max_blocks_per_seq;
  DistDecoder dec(comm, cfg);
  ASSERT_EQ(dec.sub_batches(), layout.sub_batches);
  if (cp_backend != nullptr) EXPECT_EQ(std::string(dec.cp_group().backend_name()), cp_backend);
  // Over the peer transport an all-to-all merge pulls from the peers' windows.
  const bool peer = cp_backend != nullptr && std::string(cp_backend).rfind("peer+", 0) == 0;
  if (peer && layout.cp > 1) EXPECT_EQ(dec.pull_merge(), dec.mode() == MergeMode::kAllToAll);
  const Range oh = dec.out_heads();
  DevBuf<uint16_t> q(s.q), kv(s.kv), out(static_cast<size_t>(g.batch) * g.s_q * oh.count * DMLA_D_V);
  DevBuf<int32_t> bt(s.block_table), sl(s.seqlens), tbt(s.tail_block_table), tsl(s.tail_seqlens);
  DevBuf<float> lse(static_cast<size_t>(g.batch) * oh.count * g.s_q);
  DevBuf<char> ws(dec.workspace_bytes());
  DecoderInputs in;
  in.q = q.p; in.kv_pool = kv.p; in.block_table = bt.p; in.seqlens = sl.p; in.out = out.p;
  in.tail_block_table = tbt.p; in.tail_seqlens = tsl.p; in.lse = lse.p;
  const char* what[3] = {"eager", "graph", "run_exchange"};
  for (int pass = 0; pass < 3; ++pass) {
    if (pass == 2 && (!exchange_alone || layout.cp < 2)) break;
    CUDA_OK(cudaMemset(out.p, 0xFF, out.n * 2));  // NaN: every row must be written
    CUDA_OK(cudaMemset(lse.p, 0xFF, lse.n * 4));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    if (pass == 0) {
      ASSERT_EQ(dec.run(in, ws.p, dec.workspace_bytes(), st), dmlaSuccess) << last_error_message();
    } else if (pass == 1) {
      CUDA_OK(cudaStreamSynchronize(st));
      CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
      const dmlaResult_t rr = dec.run(in, ws.p, dec.workspace_bytes(), st, DMLA_RUN_REUSE_SCHEDULE);
      CUDA_OK(cudaStreamEndCapture(st, &graph));
      ASSERT_EQ(rr, dmlaSuccess) << last_error_message();
      CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
      CUDA_OK(cudaGraphLaunch(exec, st));
      CUDA_OK(cudaGraphLaunch(exec, st));
    } else {
      ASSERT_EQ(dec.run_exchange(in, ws.p, dec.workspace_bytes(), st), dmlaSuccess) << last_error_message();
    }
    const dmlaResult_t wr = comm.wait(st);
    if (exec) cudaGraphExecDestroy(exec);  // before the communicator it captured
    if (graph) cudaGraphDestroy(graph);
    ASSERT_EQ(wr, dmlaSuccess) << what[pass] << ": " << last_error_message();
    auto ho = out.host();
    auto hl = lse.host();
    CompareResult cr = compare_heads(g, oh, ho.data(), g.q_dtype, hl.data(), rw.out_ref, rw.lse_ref);
    EXPECT_TRUE(cr.ok()) << what[pass] << ": rel_err " << cr.rel_err << " lse " << cr.max_lse_err << " wrong "
                         << cr.wrong;
  }
  ASSERT_EQ(comm.barrier(), dmlaSuccess);
}

}  // namespace distmla::dist::test_util
