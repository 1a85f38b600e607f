// Distributed decode step, per sub-batch: local decode (+ bulk/tail merge; all-to-all: written
// in head slices, or packed after the merge) -> exchange over the CP group -> cross-rank
// combine. With several sub-batches on a device the exchange + combine of slice i run on the
// side stream while slice i + 1's attention runs on the caller's stream (fork/join through
// events, so graph capture works).
#include <cuda_runtime_api.h>

#include <chrono>
#include <string>

#include "check.h"
#include "decoder_impl.h"
#include "distmla/dist/host_combine.h"
#include "distmla/kernels/cross_rank_combine.h"

namespace distmla::dist {

namespace {

constexpr size_t kAlign = 256;
inline size_t elem_bytes(dmlaDataType_t t) { return t == dmlaFP32 ? 4 : 2; }
inline kernels::ElemType to_elem(dmlaDataType_t t) {
  return t == dmlaBF16 ? kernels::ElemType::kBF16
                       : (t == dmlaFP16 ? kernels::ElemType::kFP16 : kernels::ElemType::kFP32);
}
using Impl = DistDecoder::Impl;

// Where slice sl's local partial lives: all-gather sends it as is (or, direct, it is out);
// all-to-all writes it straight into the send chunks (sliced) or stages it for the pack.
struct Partial {
  char* o;
  float* lse;
};
// The send chunks: in the workspace, or in the CP group's window for the pull merge.
char* send_chunks(const Impl& m, const DecoderSlice& sl, char* ws) {
  return m.pull() ? m.win.at[m.cp_comm->rank()] + sl.off_win : ws + sl.off_send;
}
Partial partial_of(const Impl& m, const DecoderSlice& sl, char* ws, void* out, float* lse) {
  if (m.sliced) {
    char* s = send_chunks(m, sl, ws);
    return {s, reinterpret_cast<float*>(s + sl.o_bytes)};
  }
  if (m.mode == MergeMode::kAllToAll)
    return {ws + sl.off_stage, reinterpret_cast<float*>(ws + sl.off_stage + sl.stage_o_bytes)};
  if (m.direct) return {static_cast<char*>(out), lse};
  return {ws + sl.off_send, reinterpret_cast<float*>(ws + sl.off_send + sl.o_bytes)};
}

// This slice's rows of the caller's out / lse ([batch, s_q, heads, 512] / [batch, heads, s_q]).
void out_rows(const Impl& m, const DecoderSlice& sl, const DecoderInputs& in, int heads, void** out, float** lse) {
  const size_t r = static_cast<size_t>(sl.row0) * m.cfg.s_q * heads;
  *out = in.out ? static_cast<char*>(in.out) + r * DMLA_D_V * elem_bytes(m.cfg.out_dtype) : nullptr;
  *lse = in.lse ? in.lse + r : nullptr;
}

// 1. Local attention of slice sl (its rows of q, tables, seqlens) into its partial.
dmlaResult_t attend(Impl& m, const DecoderSlice& sl, const DecoderInputs& in, char* ws, unsigned flags,
                    cudaStream_t st) {
  const DecoderConfig& cfg = m.cfg;
  const size_t r0 = sl.row0, sq = cfg.s_q;
  dmlaDecodeTensors_t lt{};
  lt.q = static_cast<const char*>(in.q) + r0 * sq * m.h_tp * DMLA_D_QK * elem_bytes(cfg.dtype);
  lt.kv_pool = in.kv_pool;
  lt.block_table = in.block_table + r0 * cfg.max_blocks_per_seq;
  lt.seqlens = in.seqlens + r0;
  void* out;
  float* lse;
  out_rows(m, sl, in, m.h_tp, &out, &lse);
  const Partial p = partial_of(m, sl, ws, out, lse);
  const bool split = m.shard.split_tail();
  char* ab = ws + sl.off_ab;
  lt.out = split ? ab : p.o;
  lt.lse = split ? reinterpret_cast<float*>(ab + sl.ab_o_bytes) : p.lse;
  try {
    if (m.sliced) {
      // Chunk c of the send buffer = head slice c: o [rows, s_q, max_slice, 512], then its lse.
      dmlaHeadSlices_t hs;
      hs.num_slices = cfg.cp;
      hs.max_slice = m.max_slice;
      hs.out_slice_stride = sl.part_bytes;
      hs.lse_slice_stride = sl.part_bytes;
      sl.local->run_sliced(lt, hs, ws + sl.off_local, sl.local_ws, st, flags);
      return dmlaSuccess;
    }
    sl.local->run(lt, ws + sl.off_local, sl.local_ws, st, flags);
    if (split) {
      dmlaDecodeTensors_t tt = lt;
      tt.block_table = in.tail_block_table + r0 * sq * ShardPlan::kTailPages;
      tt.seqlens = in.tail_seqlens + r0 * sq;
      tt.out = ab + sl.ab_part_bytes;
      tt.lse = reinterpret_cast<float*>(ab + sl.ab_part_bytes + sl.ab_o_bytes);
      sl.tail->run(tt, ws + sl.off_tail, sl.tail_ws, st, flags);
    }
  } catch (const Error& e) {
    return set_error(e.code(), std::string("DistDecoder::run: local decode: ") + e.what());
  }
  if (!split) return dmlaSuccess;
  // Bulk (lse [b, h, s_q]) + tail (lse [b, s_q, h]) -> this rank's partial, merge law.
  if (m.device) {
    kernels::CrossRankCombineArgs a;
    a.num_parts = 2; a.batch = sl.rows; a.s_q = cfg.s_q; a.heads = m.h_tp; a.part_heads = m.h_tp;
    a.parts = ab; a.part_stride = sl.ab_part_bytes; a.lse_offset = sl.ab_o_bytes;
    a.part_type = to_elem(cfg.partial_dtype); a.bsh_from = 1; a.out = p.o;
    a.out_type = to_elem(cfg.partial_dtype); a.lse_out = p.lse;
    DMLA_DIST_CUDA_RET(kernels::cross_rank_combine(a, st));
  } else {
    CombineLayout l;
    l.num_parts = 2; l.batch = sl.rows; l.s_q = cfg.s_q; l.heads = m.h_tp; l.part_heads = m.h_tp;
    l.part_stride = sl.ab_part_bytes; l.lse_offset = sl.ab_o_bytes; l.part_dtype = cfg.partial_dtype;
    l.bsh_from = 1;
    combine_host(l, ab, p.o, cfg.partial_dtype, p.lse, ws + m.off_scratch);
  }
  return dmlaSuccess;
}

// All-to-all: split the staged partial into the CP send chunks by head slice.
dmlaResult_t pack(Impl& m, const DecoderSlice& sl, char* ws, cudaStream_t st) {
  if (m.mode != MergeMode::kAllToAll || m.sliced) return dmlaSuccess;
  const DecoderConfig& cfg = m.cfg;
  const Partial p = partial_of(m, sl, ws, nullptr, nullptr);
  const bool lse_bsh_local = false;  // the local partial's lse is [b, h, s_q]
  if (m.device) {
    kernels::PackHeadSlicesArgs a;
    a.batch = sl.rows; a.s_q = cfg.s_q; a.heads = m.h_tp; a.num_chunks = cfg.cp;
    a.max_slice = m.max_slice; a.type = to_elem(cfg.partial_dtype); a.src_lse_bsh = lse_bsh_local;
    a.o = p.o; a.lse = p.lse; a.chunks = send_chunks(m, sl, ws); a.chunk_stride = sl.part_bytes;
    a.lse_offset = sl.o_bytes;
    DMLA_DIST_CUDA_RET(kernels::pack_head_slices(a, st));
  } else {
    PackLayout a;
    a.batch = sl.rows; a.s_q = cfg.s_q; a.heads = m.h_tp; a.num_chunks = cfg.cp;
    a.max_slice = m.max_slice; a.dtype = cfg.partial_dtype; a.src_lse_bsh = lse_bsh_local;
    a.chunk_stride = sl.part_bytes; a.lse_offset = sl.o_bytes;
    pack_head_slices_host(a, p.o, p.lse, ws + sl.off_send);
  }
  return dmlaSuccess;
}

// 2. Exchange over the CP group (the pull merge's combine reads the peers' chunks itself).
dmlaResult_t exchange(Impl& m, const DecoderSlice& sl, char* ws, cudaStream_t st) {
  if (m.cfg.cp == 1 || m.pull()) return dmlaSuccess;
  return m.mode == MergeMode::kAllGather
             ? m.cp_comm->all_gather(ws + sl.off_send, ws + sl.off_recv, sl.part_bytes, st)
             : m.cp_comm->all_to_all(ws + sl.off_send, ws + sl.off_recv, sl.part_bytes, st);
}

// 3. Cross-rank combine of slice sl into its rows of out / lse.
dmlaResult_t combine(Impl& m, const DecoderSlice& sl, const DecoderInputs& in, char* ws, cudaStream_t st) {
  const DecoderConfig& cfg = m.cfg;
  const bool ag = m.mode == MergeMode::kAllGather;
  // Received lse: [b, h, s_q] from a decode (all-gather, sliced), [b, s_q, h] from the pack.
  const bool lse_bsh = !ag && !m.sliced;
  const int heads = ag ? m.h_tp : m.shard.my_slice().count;
  const char* parts = ws + (cfg.cp > 1 ? sl.off_recv : sl.off_send);
  void* out;
  float* lse;
  out_rows(m, sl, in, heads, &out, &lse);
  if (m.device) {
    kernels::CrossRankCombineArgs a;
    a.num_parts = cfg.cp; a.batch = sl.rows; a.s_q = cfg.s_q; a.heads = heads;
    a.part_heads = ag ? m.h_tp : m.max_slice; a.head_offset = 0; a.parts = parts;
    a.part_stride = sl.part_bytes; a.lse_offset = sl.o_bytes; a.part_type = to_elem(cfg.partial_dtype);
    a.bsh_from = lse_bsh ? 0 : (1 << 30); a.out = out; a.out_type = to_elem(cfg.out_dtype);
    a.lse_out = lse;
    if (m.pull()) {  // chunk `me` of every rank's window
      a.pull = m.win.sync;
      a.parts = nullptr;
      a.part_stride = 0;
      for (int c = 0; c < cfg.cp; ++c) a.part_at[c] = m.win.at[c] + sl.off_win + m.cp_comm->rank() * sl.part_bytes;
    }
    DMLA_DIST_CUDA_RET(kernels::cross_rank_combine(a, st));
  } else {
    CombineLayout l;
    l.num_parts = cfg.cp; l.batch = sl.rows; l.s_q = cfg.s_q; l.heads = heads;
    l.part_heads = ag ? m.h_tp : m.max_slice; l.head_offset = 0; l.part_stride = sl.part_bytes;
    l.lse_offset = sl.o_bytes; l.part_dtype = cfg.partial_dtype; l.bsh_from = lse_bsh ? 0 : (1 << 30);
    combine_host(l, parts, out, cfg.out_dtype, lse, ws + m.off_scratch);
  }
  return dmlaSuccess;
}

#define DMLA_RUN_OK(expr)                          \
  do {                                             \
    if (dmlaResult_t r_ = (expr); r_ != dmlaSuccess) return r_; \
  } while (0)

}  // namespace

dmlaResult_t DistDecoder::check_run_args(const DecoderInputs& in, const void* workspace, size_t ws_bytes,
                                         bool need_inputs) const {
  const Impl& m = *impl_;
  // out/lse may be null on a rank whose head slice is empty (all-to-all, fewer heads than ranks).
  const bool has_out = out_heads().count > 0;
  const char* missing = !need_inputs ? nullptr
                      : !in.q ? "q" : !in.kv_pool ? "kv_pool" : !in.block_table ? "block_table"
                      : !in.seqlens ? "seqlens" : nullptr;
  if (!missing) missing = (has_out && !in.out) ? "out" : (has_out && !in.lse) ? "lse" : nullptr;
  if (missing) return set_error(dmlaErrorNullPointer, std::string("DistDecoder::run: ") + missing + " is null");
  if (need_inputs && m.shard.split_tail() && (!in.tail_block_table || !in.tail_seqlens))
    return set_error(dmlaErrorNullPointer, "DistDecoder::run: tail_block_table or tail_seqlens is null "
                                           "(needed with cp > 1, s_q > 1, causal)");
  if (ws_bytes < m.total)
    return set_error(dmlaErrorWorkspace, "DistDecoder::run: workspace_bytes = " + std::to_string(ws_bytes) +
                                             " < " + std::to_string(m.total));
  if (m.total > 0 && (!workspace || reinterpret_cast<uintptr_t>(workspace) % kAlign != 0))
    return set_error(dmlaErrorWorkspace, "DistDecoder::run: workspace is null or not 256-byte aligned");
  return dmlaSuccess;
}

dmlaResult_t DistDecoder::run(const DecoderInputs& in, void* workspace, size_t ws_bytes, void* stream,
                              unsigned flags) {
  Impl& m = *impl_;
  if (flags & ~DMLA_RUN_REUSE_SCHEDULE)
    return set_error(dmlaErrorInvalidArgument, "DistDecoder::run: flags = " + std::to_string(flags) +
                                                   " has bits other than DMLA_RUN_REUSE_SCHEDULE");
  if (m.cfg.batch == 0) return dmlaSuccess;
  DMLA_RUN_OK(check_run_args(in, workspace, ws_bytes, true));
  char* ws = static_cast<char*>(workspace);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  // Exchange + combine go to the side stream when overlapping (slice i's wait on ready[i]
  // orders them after its pack and, in a capture, joins the side stream to the graph).
  cudaStream_t xs = m.overlap ? m.side : st;
  const bool timing = m.cfg.record_timing;
  using clk = std::chrono::steady_clock;
  clk::time_point t1 = clk::now();
  double host_us[3] = {};
  auto mark = [&](int i, cudaStream_t s) -> dmlaResult_t {
    if (timing && m.device) DMLA_DIST_CUDA_RET(cudaEventRecord(m.ev[i], s));
    return dmlaSuccess;
  };
  // Host timing sums each phase over the slices; device timing (events) is the exposed time:
  // until the last slice is packed, then its exchange, then its combine.
  auto lap = [&](int phase) {
    if (!timing || m.device) return;
    const clk::time_point now = clk::now();
    host_us[phase] += std::chrono::duration<double, std::micro>(now - t1).count();
    t1 = now;
  };
  DMLA_RUN_OK(mark(0, st));
  const int k = static_cast<int>(m.slices.size());
  for (int i = 0; i < k; ++i) {
    const DecoderSlice& sl = m.slices[i];
    const bool last = i == k - 1;
    DMLA_RUN_OK(attend(m, sl, in, ws, flags, st));
    if (!m.direct) DMLA_RUN_OK(pack(m, sl, ws, st));
    lap(0);
    if (last) DMLA_RUN_OK(mark(1, st));
    if (m.direct) continue;
    if (m.overlap) {
      DMLA_DIST_CUDA_RET(cudaEventRecord(m.ready[i], st));
      DMLA_DIST_CUDA_RET(cudaStreamWaitEvent(m.side, m.ready[i], 0));
    }
    DMLA_RUN_OK(exchange(m, sl, ws, xs));
    lap(1);
    if (last) DMLA_RUN_OK(mark(2, xs));
    DMLA_RUN_OK(combine(m, sl, in, ws, xs));
    lap(2);
    if (last) DMLA_RUN_OK(mark(3, xs));
  }
  if (m.direct) {
    DMLA_RUN_OK(mark(2, st));
    DMLA_RUN_OK(mark(3, st));
  }
  if (m.overlap) {
    DMLA_DIST_CUDA_RET(cudaEventRecord(m.joined, m.side));
    DMLA_DIST_CUDA_RET(cudaStreamWaitEvent(st, m.joined, 0));
  }
  if (timing && !m.device) m.host_timing = {host_us[0], host_us[1], host_us[2]};
  return dmlaSuccess;
}

dmlaResult_t DistDecoder::run_exchange(const DecoderInputs& in, void* workspace, size_t ws_bytes, void* stream) {
  Impl& m = *impl_;
  if (m.cfg.batch == 0 || m.direct) return dmlaSuccess;
  DMLA_RUN_OK(check_run_args(in, workspace, ws_bytes, false));
  char* ws = static_cast<char*>(workspace);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  for (const DecoderSlice& sl : m.slices) {
    DMLA_RUN_OK(pack(m, sl, ws, st));
    DMLA_RUN_OK(exchange(m, sl, ws, st));
    DMLA_RUN_OK(combine(m, sl, in, ws, st));
  }
  return dmlaSuccess;
}

}  // namespace distmla::dist
