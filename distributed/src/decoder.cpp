// Distributed decode step: local decode -> (pack) -> exchange over the CP group -> combine.
#include "distmla/dist/decoder.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

#include "check.h"
#include "distmla/dist/host_combine.h"
#include "distmla/distmla.hpp"
#include "distmla/kernels/cross_rank_combine.h"

namespace distmla::dist {

namespace {

constexpr size_t kAlign = 256;
inline size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
inline size_t elem_bytes(dmlaDataType_t t) { return t == dmlaFP32 ? 4 : 2; }
inline kernels::ElemType to_elem(dmlaDataType_t t) {
  return t == dmlaBF16 ? kernels::ElemType::kBF16
                       : (t == dmlaFP16 ? kernels::ElemType::kFP16 : kernels::ElemType::kFP32);
}
const char* dtype_name(dmlaDataType_t t) {
  return t == dmlaBF16 ? "bf16" : (t == dmlaFP16 ? "fp16" : (t == dmlaFP32 ? "fp32" : "?"));
}
[[noreturn]] void bad(const std::string& what) {
  DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "DistDecoder: " + what);
}

}  // namespace

struct DistDecoder::Impl {
  DecoderConfig cfg;
  ShardPlan shard;
  MergeMode mode = MergeMode::kAllGather;
  dmlaBackend_t backend = dmlaBackendCpu;
  bool device = false;
  std::shared_ptr<Communicator> cp_comm, tp_comm;
  DecodePlan local;               // this rank's pages (the bulk when split_tail)
  std::unique_ptr<DecodePlan> tail;  // split_tail: the s_q - 1 newest tokens, exact per query
  size_t local_ws = 0, tail_ws = 0;
  size_t off_tail_ws = 0, off_ab = 0, ab_o_bytes = 0, ab_part_bytes = 0;
  // Workspace layout (offsets in bytes, 256-aligned).
  size_t off_stage = 0, off_send = 0, off_recv = 0, off_scratch = 0, total = 0;
  size_t o_bytes = 0;       // o block of one exchanged part/chunk
  size_t part_bytes = 0;    // one exchanged part (all-gather) or chunk (all-to-all)
  size_t stage_o_bytes = 0;  // all-to-all: local decode output before the pack
  int h_tp = 0, max_slice = 0;
  bool direct = false;      // cp == 1 with out in the partial layout: decode straight into out
  cudaEvent_t ev[4] = {};
  StepTiming host_timing;

  Impl(const DecoderConfig& c, const ShardPlan& s, dmlaDecodeShape_t ls, dmlaBackend_t be)
      : cfg(c), shard(s), backend(be), local(ls, be) {}
};

static dmlaDecodeShape_t local_shape(const DecoderConfig& cfg, const ShardPlan& s) {
  dmlaDecodeShape_t ls;
  dmlaShapeInit(&ls);
  ls.batch = cfg.batch;
  ls.s_q = cfg.s_q;
  ls.h_q = s.heads().count;
  ls.page_size = cfg.page_size;
  ls.num_blocks = cfg.num_blocks;
  ls.max_blocks_per_seq = cfg.max_blocks_per_seq;
  ls.q_dtype = cfg.dtype;
  ls.kv_dtype = cfg.dtype;
  ls.out_dtype = cfg.partial_dtype;
  ls.scale = cfg.scale;
  ls.causal = s.local_causal() ? 1 : 0;
  ls.check_inputs = 0;
  return ls;
}

// The tail problem of split_tail: batch * s_q rows of one query, non-causal, kTailPages pages.
static dmlaDecodeShape_t tail_shape(const DecoderConfig& cfg, const ShardPlan& s) {
  dmlaDecodeShape_t ts = local_shape(cfg, s);
  ts.batch = cfg.batch * cfg.s_q;
  ts.s_q = 1;
  ts.max_blocks_per_seq = ShardPlan::kTailPages;
  ts.causal = 0;
  return ts;
}

static ShardPlan make_shard(Communicator& world, const DecoderConfig& cfg) {
  if (cfg.batch < 0) bad("batch = " + std::to_string(cfg.batch) + " (must be >= 0)");
  if (cfg.dtype != dmlaBF16 && cfg.dtype != dmlaFP16)
    bad(std::string("dtype = ") + dtype_name(cfg.dtype) + " (must be bf16 or fp16)");
  if (cfg.out_dtype != cfg.dtype && cfg.out_dtype != dmlaFP32)
    bad(std::string("out_dtype = ") + dtype_name(cfg.out_dtype) + " (must be dtype or fp32)");
  if (cfg.partial_dtype != cfg.dtype && cfg.partial_dtype != dmlaFP32)
    bad(std::string("partial_dtype = ") + dtype_name(cfg.partial_dtype) + " (must be dtype or fp32)");
  if (cfg.mode != MergeMode::kAllGather && cfg.mode != MergeMode::kAllToAll && cfg.mode != MergeMode::kAuto)
    bad("mode = " + std::to_string(static_cast<int>(cfg.mode)));
  return ShardPlan(world.size(), world.rank(), cfg.tp, cfg.cp, cfg.h_q, cfg.s_q, cfg.causal, cfg.page_size);
}

static dmlaBackend_t resolve_backend(Communicator& world, dmlaBackend_t b) {
  const bool dev = world.memory() == MemSpace::kDevice;
  if (b == dmlaBackendAuto) return dev ? dmlaBackendCuda : dmlaBackendCpu;
  if (dev && b != dmlaBackendCuda)
    bad(std::string("backend = ") + std::to_string(b) + " with the device communicator '" +
        world.backend_name() + "' (needs cuda)");
  if (!dev && b != dmlaBackendCpu)
    bad(std::string("backend = ") + std::to_string(b) + " with the host communicator '" +
        world.backend_name() + "' (needs cpu)");
  return b;
}

ShardGroups split_groups(Communicator& world, int tp, int cp) {
  if (tp < 1 || cp < 1 || world.size() != tp * cp)
    bad("split_groups: world = " + std::to_string(world.size()) + " != tp * cp = " + std::to_string(tp) + " * " +
        std::to_string(cp));
  const int tp_rank = world.rank() / cp, cp_rank = world.rank() % cp;
  ShardGroups g;
  g.cp = world.split(tp_rank, cp_rank);
  g.tp = world.split(cp_rank, tp_rank);
  return g;
}

DistDecoder::DistDecoder(Communicator& world, const DecoderConfig& cfg)
    : DistDecoder(world, split_groups(world, std::max(1, cfg.tp), std::max(1, cfg.cp)), cfg) {}

DistDecoder::DistDecoder(Communicator& world, const ShardGroups& groups, const DecoderConfig& cfg) {
  ShardPlan s = make_shard(world, cfg);
  const dmlaBackend_t be = resolve_backend(world, cfg.backend);
  impl_ = std::make_unique<Impl>(cfg, s, local_shape(cfg, s), be);
  Impl& m = *impl_;
  m.device = be == dmlaBackendCuda;
  m.h_tp = s.heads().count;
  m.max_slice = s.max_slice();

  m.cp_comm = groups.cp;
  m.tp_comm = groups.tp;
  if (!m.cp_comm || !m.tp_comm) bad("groups: a null CP or TP group");
  if (m.cp_comm->memory() != world.memory() || m.tp_comm->size() != cfg.tp)
    bad("groups: not split from this world for tp " + std::to_string(cfg.tp));
  if (m.cp_comm->size() != cfg.cp || m.cp_comm->rank() != s.cp_rank())
    DMLA_DIST_FAIL(dmlaErrorInternal, "DistDecoder: CP group has size " + std::to_string(m.cp_comm->size()) +
                                          ", expected " + std::to_string(cfg.cp));

  if (cfg.cp == 1) {
    m.mode = MergeMode::kAllGather;  // nothing to exchange; both modes are the same
  } else if (cfg.mode == MergeMode::kAuto) {
    const double mean = cfg.mean_len_hint > 0 ? cfg.mean_len_hint
                                              : 0.5 * cfg.page_size * cfg.max_blocks_per_seq * cfg.cp;
    m.mode = estimate_cost(cfg.batch, mean, cfg.s_q, cfg.h_q, cfg.tp, cfg.cp, cfg.page_size, cfg.causal,
                           static_cast<int>(elem_bytes(cfg.partial_dtype)))
                 .recommended;
  } else {
    m.mode = cfg.mode;
  }

  m.local_ws = align_up(m.local.workspace_bytes());
  const size_t rows = static_cast<size_t>(cfg.batch) * cfg.s_q;
  const size_t pe = elem_bytes(cfg.partial_dtype);
  m.direct = cfg.cp == 1 && cfg.partial_dtype == cfg.out_dtype;
  size_t off = m.local_ws;
  if (s.split_tail()) {
    m.tail = std::make_unique<DecodePlan>(tail_shape(cfg, s), be);
    m.tail_ws = align_up(m.tail->workspace_bytes());
    m.off_tail_ws = off;
    off += m.tail_ws;
    // Two parts (bulk, tail) of the same layout, merged before the exchange.
    m.ab_o_bytes = align_up(rows * m.h_tp * DMLA_D_V * pe);
    m.ab_part_bytes = align_up(m.ab_o_bytes + rows * m.h_tp * sizeof(float));
    m.off_ab = off;
    off += 2 * m.ab_part_bytes;
  }
  if (m.mode == MergeMode::kAllGather) {
    m.o_bytes = align_up(rows * m.h_tp * DMLA_D_V * pe);
    m.part_bytes = align_up(m.o_bytes + rows * m.h_tp * sizeof(float));
    m.off_send = off;
    off += m.direct ? 0 : m.part_bytes;
    m.off_recv = off;
    off += cfg.cp > 1 ? m.part_bytes * cfg.cp : 0;
  } else {
    m.stage_o_bytes = align_up(rows * m.h_tp * DMLA_D_V * pe);
    m.off_stage = off;
    off += align_up(m.stage_o_bytes + rows * m.h_tp * sizeof(float));
    m.o_bytes = align_up(rows * m.max_slice * DMLA_D_V * pe);
    m.part_bytes = align_up(m.o_bytes + rows * m.max_slice * sizeof(float));
    m.off_send = off;
    off += m.part_bytes * cfg.cp;
    m.off_recv = off;
    off += m.part_bytes * cfg.cp;
  }
  if (!m.device) {
    m.off_scratch = off;
    off += align_up(combine_host_scratch_bytes(std::max(cfg.cp, 2)));
  }
  m.total = off;

  if (m.device && cfg.record_timing)
    for (auto& e : m.ev) DMLA_DIST_CUDA_THROW(cudaEventCreate(&e));
}

DistDecoder::~DistDecoder() {
  if (!impl_) return;
  for (auto& e : impl_->ev)
    if (e) cudaEventDestroy(e);
}

const ShardPlan& DistDecoder::shard() const { return impl_->shard; }
MergeMode DistDecoder::mode() const { return impl_->mode; }
dmlaBackend_t DistDecoder::backend() const { return impl_->backend; }
size_t DistDecoder::workspace_bytes() const { return impl_->total; }
Communicator& DistDecoder::cp_group() { return *impl_->cp_comm; }
Communicator& DistDecoder::tp_group() { return *impl_->tp_comm; }

Range DistDecoder::out_heads() const {
  const ShardPlan& s = impl_->shard;
  if (impl_->mode == MergeMode::kAllGather) return s.heads();
  Range r = s.my_slice();
  r.begin += s.heads().begin;
  return r;
}

dmlaResult_t DistDecoder::last_timing(StepTiming* t) const {
  if (!t) return set_error(dmlaErrorNullPointer, "last_timing: t is null");
  if (!impl_->cfg.record_timing)
    return set_error(dmlaErrorInvalidArgument, "last_timing: record_timing = false at plan time");
  if (!impl_->device) {
    *t = impl_->host_timing;
    return dmlaSuccess;
  }
  float ms[3] = {};
  for (int i = 0; i < 3; ++i) DMLA_DIST_CUDA_RET(cudaEventElapsedTime(&ms[i], impl_->ev[i], impl_->ev[i + 1]));
  t->attention_us = ms[0] * 1e3;
  t->exchange_us = ms[1] * 1e3;
  t->merge_us = ms[2] * 1e3;
  return dmlaSuccess;
}

dmlaResult_t DistDecoder::run(const DecoderInputs& in, void* workspace, size_t ws_bytes, void* stream) {
  Impl& m = *impl_;
  const DecoderConfig& cfg = m.cfg;
  if (cfg.batch == 0) return dmlaSuccess;
  // out/lse may be null on a rank whose head slice is empty (all-to-all, fewer heads than ranks).
  const bool has_out = out_heads().count > 0;
  const char* missing = !in.q ? "q" : !in.kv_pool ? "kv_pool" : !in.block_table ? "block_table"
                      : !in.seqlens ? "seqlens" : (has_out && !in.out) ? "out" : (has_out && !in.lse) ? "lse"
                      : nullptr;
  if (missing) return set_error(dmlaErrorNullPointer, std::string("DistDecoder::run: ") + missing + " is null");
  if (ws_bytes < m.total)
    return set_error(dmlaErrorWorkspace, "DistDecoder::run: workspace_bytes = " + std::to_string(ws_bytes) +
                                             " < " + std::to_string(m.total));
  if (m.total > 0 && (!workspace || reinterpret_cast<uintptr_t>(workspace) % kAlign != 0))
    return set_error(dmlaErrorWorkspace, "DistDecoder::run: workspace is null or not 256-byte aligned");

  char* ws = static_cast<char*>(workspace);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const bool timing = cfg.record_timing;
  using clk = std::chrono::steady_clock;
  auto mark = [&](int i, clk::time_point* tp) -> dmlaResult_t {
    if (!timing) return dmlaSuccess;
    if (m.device) DMLA_DIST_CUDA_RET(cudaEventRecord(m.ev[i], st));
    else *tp = clk::now();
    return dmlaSuccess;
  };
  clk::time_point tp[4];
  if (auto r = mark(0, &tp[0]); r != dmlaSuccess) return r;

  // 1. Local attention of this rank's heads over its pages.
  dmlaDecodeTensors_t lt{};
  lt.q = in.q;
  lt.kv_pool = in.kv_pool;
  lt.block_table = in.block_table;
  lt.seqlens = in.seqlens;
  char* part_o;
  float* part_lse;
  if (m.mode == MergeMode::kAllGather) {
    part_o = m.direct ? static_cast<char*>(in.out) : ws + m.off_send;
    part_lse = m.direct ? in.lse : reinterpret_cast<float*>(ws + m.off_send + m.o_bytes);
  } else {
    part_o = ws + m.off_stage;
    part_lse = reinterpret_cast<float*>(ws + m.off_stage + m.stage_o_bytes);
  }
  const bool split = m.shard.split_tail();
  if (split && (!in.tail_block_table || !in.tail_seqlens))
    return set_error(dmlaErrorNullPointer, "DistDecoder::run: tail_block_table or tail_seqlens is null "
                                           "(needed with cp > 1, s_q > 1, causal)");
  char* ab = ws + m.off_ab;
  lt.out = split ? ab : part_o;
  lt.lse = split ? reinterpret_cast<float*>(ab + m.ab_o_bytes) : part_lse;
  try {
    m.local.run(lt, ws, m.local_ws, stream);
    if (split) {
      dmlaDecodeTensors_t tt = lt;
      tt.block_table = in.tail_block_table;
      tt.seqlens = in.tail_seqlens;
      tt.out = ab + m.ab_part_bytes;
      tt.lse = reinterpret_cast<float*>(ab + m.ab_part_bytes + m.ab_o_bytes);
      m.tail->run(tt, ws + m.off_tail_ws, m.tail_ws, stream);
    }
  } catch (const Error& e) {
    return set_error(e.code(), std::string("DistDecoder::run: local decode: ") + e.what());
  }
  if (split) {
    // Bulk (lse [b, h, s_q]) + tail (lse [b, s_q, h]) -> this rank's partial, merge law.
    if (m.device) {
      kernels::CrossRankCombineArgs a;
      a.num_parts = 2; a.batch = cfg.batch; a.s_q = cfg.s_q; a.heads = m.h_tp; a.part_heads = m.h_tp;
      a.parts = ab; a.part_stride = m.ab_part_bytes; a.lse_offset = m.ab_o_bytes;
      a.part_type = to_elem(cfg.partial_dtype); a.bsh_from = 1; a.out = part_o;
      a.out_type = to_elem(cfg.partial_dtype); a.lse_out = part_lse;
      DMLA_DIST_CUDA_RET(kernels::cross_rank_combine(a, st));
    } else {
      CombineLayout l;
      l.num_parts = 2; l.batch = cfg.batch; l.s_q = cfg.s_q; l.heads = m.h_tp; l.part_heads = m.h_tp;
      l.part_stride = m.ab_part_bytes; l.lse_offset = m.ab_o_bytes; l.part_dtype = cfg.partial_dtype;
      l.bsh_from = 1;
      combine_host(l, ab, part_o, cfg.partial_dtype, part_lse, ws + m.off_scratch);
    }
  }
  if (m.direct) {
    if (timing) for (int i = 1; i < 4; ++i) if (auto r = mark(i, &tp[i]); r != dmlaSuccess) return r;
    if (timing && !m.device) m.host_timing = {std::chrono::duration<double, std::micro>(tp[1] - tp[0]).count(), 0, 0};
    return dmlaSuccess;
  }
  const bool lse_bsh_local = false;  // the local partial's lse is [b, h, s_q]
  if (m.mode == MergeMode::kAllToAll) {
    if (m.device) {
      kernels::PackHeadSlicesArgs p;
      p.batch = cfg.batch; p.s_q = cfg.s_q; p.heads = m.h_tp; p.num_chunks = cfg.cp;
      p.max_slice = m.max_slice; p.type = to_elem(cfg.partial_dtype); p.src_lse_bsh = lse_bsh_local;
      p.o = part_o; p.lse = part_lse; p.chunks = ws + m.off_send; p.chunk_stride = m.part_bytes;
      p.lse_offset = m.o_bytes;
      DMLA_DIST_CUDA_RET(kernels::pack_head_slices(p, st));
    } else {
      PackLayout p;
      p.batch = cfg.batch; p.s_q = cfg.s_q; p.heads = m.h_tp; p.num_chunks = cfg.cp;
      p.max_slice = m.max_slice; p.dtype = cfg.partial_dtype; p.src_lse_bsh = lse_bsh_local;
      p.chunk_stride = m.part_bytes; p.lse_offset = m.o_bytes;
      pack_head_slices_host(p, part_o, part_lse, ws + m.off_send);
    }
  }
  if (auto r = mark(1, &tp[1]); r != dmlaSuccess) return r;

  // 2. Exchange over the CP group.
  const char* parts = ws + m.off_send;
  if (cfg.cp > 1) {
    dmlaResult_t r = m.mode == MergeMode::kAllGather
                         ? m.cp_comm->all_gather(ws + m.off_send, ws + m.off_recv, m.part_bytes, stream)
                         : m.cp_comm->all_to_all(ws + m.off_send, ws + m.off_recv, m.part_bytes, stream);
    if (r != dmlaSuccess) return r;
    parts = ws + m.off_recv;
  }
  if (auto r = mark(2, &tp[2]); r != dmlaSuccess) return r;

  // 3. Cross-rank combine into out / lse.
  const bool ag = m.mode == MergeMode::kAllGather;
  const int heads = ag ? m.h_tp : m.shard.my_slice().count;
  if (m.device) {
    kernels::CrossRankCombineArgs a;
    a.num_parts = cfg.cp; a.batch = cfg.batch; a.s_q = cfg.s_q; a.heads = heads;
    a.part_heads = ag ? m.h_tp : m.max_slice; a.head_offset = 0; a.parts = parts;
    a.part_stride = m.part_bytes; a.lse_offset = m.o_bytes; a.part_type = to_elem(cfg.partial_dtype);
    a.bsh_from = ag ? (1 << 30) : 0; a.out = in.out; a.out_type = to_elem(cfg.out_dtype);
    a.lse_out = in.lse;
    DMLA_DIST_CUDA_RET(kernels::cross_rank_combine(a, st));
  } else {
    CombineLayout l;
    l.num_parts = cfg.cp; l.batch = cfg.batch; l.s_q = cfg.s_q; l.heads = heads;
    l.part_heads = ag ? m.h_tp : m.max_slice; l.head_offset = 0; l.part_stride = m.part_bytes;
    l.lse_offset = m.o_bytes; l.part_dtype = cfg.partial_dtype; l.bsh_from = ag ? (1 << 30) : 0;
    combine_host(l, parts, in.out, cfg.out_dtype, in.lse, ws + m.off_scratch);
  }
  if (auto r = mark(3, &tp[3]); r != dmlaSuccess) return r;
  if (timing && !m.device) {
    auto us = [&](int a, int b) { return std::chrono::duration<double, std::micro>(tp[b] - tp[a]).count(); };
    m.host_timing = {us(0, 1), us(1, 2), us(2, 3)};
  }
  return dmlaSuccess;
}

}  // namespace distmla::dist
