// Distributed decode plan: validate, resolve mode and sub-batches, size one workspace
// (the step itself: decoder_run.cpp).
#include "distmla/dist/decoder.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "check.h"
#include "decoder_impl.h"
#include "distmla/dist/host_combine.h"
#include "distmla/distmla.hpp"

namespace distmla::dist {

namespace {

// DISTMLA_PULL_MERGE=0 on any rank: exchange, then merge, as without windows (an A/B switch; the
// ranks agree, so that none waits in a window's collective set-up alone).
bool pull_wanted(Communicator& cp) {
  const char* e = std::getenv("DISTMLA_PULL_MERGE");
  const uint8_t mine = !(e != nullptr && std::string(e) == "0");
  uint8_t all = 0;
  throw_if_error(cp.agree(&mine, &all, 1));
  return all != 0;
}

constexpr size_t kAlign = 256;
inline size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
inline size_t elem_bytes(dmlaDataType_t t) { return t == dmlaFP32 ? 4 : 2; }
const char* dtype_name(dmlaDataType_t t) {
  return t == dmlaBF16 ? "bf16" : (t == dmlaFP16 ? "fp16" : (t == dmlaFP32 ? "fp32" : "?"));
}
[[noreturn]] void bad(const std::string& what) {
  DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "DistDecoder: " + what);
}

}  // namespace

static dmlaDecodeShape_t local_shape(const DecoderConfig& cfg, const ShardPlan& s, int rows) {
  dmlaDecodeShape_t ls;
  dmlaShapeInit(&ls);
  ls.batch = rows;
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
static dmlaDecodeShape_t tail_shape(const DecoderConfig& cfg, const ShardPlan& s, int rows) {
  dmlaDecodeShape_t ts = local_shape(cfg, s, rows);
  ts.batch = rows * cfg.s_q;
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

// Slices of the batch (DecoderConfig::sub_batches). Automatic is 1 (no overlap): on 2x H200 two
// slices made the CP=2 step 1.3x slower (docs/PERFORMANCE.md, run D4). The attention of two half
// batches took 430 us instead of 340: each half spreads over every SM with half the work, so
// the per-split costs double, and the persistent decode kernel leaves no SM to hide NCCL behind.
static int resolve_sub_batches(const DecoderConfig& cfg) {
  if (cfg.sub_batches < 0 || cfg.sub_batches > DistDecoder::kMaxSubBatches)
    bad("sub_batches = " + std::to_string(cfg.sub_batches) + " (must be 0 (automatic) .. " +
        std::to_string(DistDecoder::kMaxSubBatches) + ")");
  if (cfg.sub_batches > std::max(cfg.batch, 1))
    bad("sub_batches = " + std::to_string(cfg.sub_batches) + " > batch = " + std::to_string(cfg.batch));
  return cfg.sub_batches > 0 ? cfg.sub_batches : 1;
}

DistDecoder::DistDecoder(Communicator& world, const ShardGroups& groups, const DecoderConfig& cfg) {
  ShardPlan s = make_shard(world, cfg);
  const dmlaBackend_t be = resolve_backend(world, cfg.backend);
  impl_ = std::make_unique<Impl>(cfg, s);
  Impl& m = *impl_;
  m.backend = be;
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

  // Sub-batches: consecutive rows, the first batch % k one row longer.
  const int k = resolve_sub_batches(cfg);
  m.slices.resize(k);
  for (int i = 0, row = 0; i < k; ++i) {
    DecoderSlice& sl = m.slices[i];
    sl.row0 = row;
    sl.rows = cfg.batch / k + (i < cfg.batch % k ? 1 : 0);
    row += sl.rows;
    sl.local = std::make_unique<DecodePlan>(local_shape(cfg, s, sl.rows), be);
    if (s.split_tail()) sl.tail = std::make_unique<DecodePlan>(tail_shape(cfg, s, sl.rows), be);
  }
  const size_t pe = elem_bytes(cfg.partial_dtype);
  m.direct = cfg.cp == 1 && cfg.partial_dtype == cfg.out_dtype;
  m.sliced = m.mode == MergeMode::kAllToAll && !s.split_tail();
  // A slice's exchanged chunk: o [rows, s_q, heads, 512], then lse.
  auto chunk = [&](const DecoderSlice& sl, int heads, size_t* o_bytes) {
    const size_t rows = static_cast<size_t>(sl.rows) * cfg.s_q;
    *o_bytes = align_up(rows * heads * DMLA_D_V * pe);
    return align_up(*o_bytes + rows * heads * sizeof(float));
  };
  if (m.device && cfg.cp > 1 && m.mode == MergeMode::kAllToAll && pull_wanted(*m.cp_comm)) {
    size_t win = 0, o = 0;
    for (const DecoderSlice& sl : m.slices) win += chunk(sl, m.max_slice, &o) * cfg.cp;
    throw_if_error(m.cp_comm->reserve_window(win, &m.win));
  }
  size_t off = 0, off_win = 0;
  for (DecoderSlice& sl : m.slices) {
    sl.off_local = off;
    sl.local_ws = align_up(sl.local->workspace_bytes());
    off += sl.local_ws;
    if (sl.tail) {
      sl.off_tail = off;
      sl.tail_ws = align_up(sl.tail->workspace_bytes());
      off += sl.tail_ws;
    }
  }
  for (DecoderSlice& sl : m.slices) {
    const size_t rows = static_cast<size_t>(sl.rows) * cfg.s_q;
    if (s.split_tail()) {
      // Two parts (bulk, tail) of the same layout, merged before the exchange.
      sl.ab_o_bytes = align_up(rows * m.h_tp * DMLA_D_V * pe);
      sl.ab_part_bytes = align_up(sl.ab_o_bytes + rows * m.h_tp * sizeof(float));
      sl.off_ab = off;
      off += 2 * sl.ab_part_bytes;
    }
    if (m.mode == MergeMode::kAllGather) {
      sl.part_bytes = chunk(sl, m.h_tp, &sl.o_bytes);
      sl.off_send = off;
      off += m.direct ? 0 : sl.part_bytes;
      sl.off_recv = off;
      off += cfg.cp > 1 ? sl.part_bytes * cfg.cp : 0;
    } else {
      if (!m.sliced) {  // the merged bulk + tail, before the pack
        sl.stage_o_bytes = align_up(rows * m.h_tp * DMLA_D_V * pe);
        sl.off_stage = off;
        off += align_up(sl.stage_o_bytes + rows * m.h_tp * sizeof(float));
      }
      sl.part_bytes = chunk(sl, m.max_slice, &sl.o_bytes);
      if (m.pull()) {
        sl.off_win = off_win;
        off_win += sl.part_bytes * cfg.cp;
        continue;
      }
      sl.off_send = off;
      off += sl.part_bytes * cfg.cp;
      sl.off_recv = off;
      off += sl.part_bytes * cfg.cp;
    }
  }
  if (!m.device) {
    m.off_scratch = off;
    off += align_up(combine_host_scratch_bytes(std::max(cfg.cp, 2)));
  }
  m.total = off;
  if (m.device && cfg.cp > 1 && m.mode == MergeMode::kAllToAll && !m.pull()) {
    size_t most = 0;  // a peer communicator sets up its mailboxes now, before any capture
    for (const DecoderSlice& sl : m.slices) most = std::max(most, sl.part_bytes);
    throw_if_error(m.cp_comm->reserve(most));
  }

  // Overlap: the side stream outranks the decode so its few NCCL/combine blocks are scheduled
  // as soon as SMs free up instead of queueing behind the next slice's attention.
  m.overlap = m.device && k > 1 && !m.direct;
  if (m.overlap) {
    int least = 0, greatest = 0;
    DMLA_DIST_CUDA_THROW(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    DMLA_DIST_CUDA_THROW(cudaStreamCreateWithPriority(&m.side, cudaStreamNonBlocking, greatest));
    m.ready.resize(k);
    for (auto& e : m.ready) DMLA_DIST_CUDA_THROW(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    DMLA_DIST_CUDA_THROW(cudaEventCreateWithFlags(&m.joined, cudaEventDisableTiming));
  }
  if (m.device && cfg.record_timing)
    for (auto& e : m.ev) DMLA_DIST_CUDA_THROW(cudaEventCreate(&e));
}

DistDecoder::Impl::~Impl() {
  for (auto& e : ev)
    if (e) cudaEventDestroy(e);
  for (auto& e : ready)
    if (e) cudaEventDestroy(e);
  if (joined) cudaEventDestroy(joined);
  if (side) cudaStreamDestroy(side);
}

DistDecoder::~DistDecoder() = default;

const ShardPlan& DistDecoder::shard() const { return impl_->shard; }
MergeMode DistDecoder::mode() const { return impl_->mode; }
dmlaBackend_t DistDecoder::backend() const { return impl_->backend; }
size_t DistDecoder::workspace_bytes() const { return impl_->total; }
bool DistDecoder::pull_merge() const { return impl_->pull(); }
int DistDecoder::sub_batches() const { return static_cast<int>(impl_->slices.size()); }

size_t DistDecoder::exchange_bytes() const {
  if (impl_->cfg.cp == 1) return 0;
  size_t n = 0;
  for (const DecoderSlice& sl : impl_->slices) n += sl.part_bytes;
  return n;
}
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

}  // namespace distmla::dist
