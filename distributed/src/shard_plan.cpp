#include "distmla/dist/shard_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "check.h"

namespace distmla::dist {

const char* merge_mode_name(MergeMode m) {
  switch (m) {
    case MergeMode::kAllGather: return "allgather";
    case MergeMode::kAllToAll: return "alltoall";
    case MergeMode::kAuto: return "auto";
  }
  return "?";
}

bool parse_merge_mode(const std::string& s, MergeMode* m) {
  if (s == "allgather") *m = MergeMode::kAllGather;
  else if (s == "alltoall") *m = MergeMode::kAllToAll;
  else if (s == "auto") *m = MergeMode::kAuto;
  else return false;
  return true;
}

Range split_range(int n, int parts, int index) {
  Range r;
  if (parts <= 0 || index < 0 || index >= parts || n <= 0) return r;
  const int base = n / parts, rem = n % parts;
  r.count = base + (index < rem ? 1 : 0);
  r.begin = index * base + std::min(index, rem);
  return r;
}

int64_t tokens_on_rank(int64_t visible, int page_size, int cp, int cp_rank) {
  if (visible <= 0) return 0;
  const int64_t round = static_cast<int64_t>(page_size) * cp;
  const int64_t full = visible / round, rem = visible % round;
  return full * page_size +
         std::clamp<int64_t>(rem - static_cast<int64_t>(cp_rank) * page_size, 0, page_size);
}

namespace {
[[noreturn]] void bad(const std::string& what) { DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "ShardPlan: " + what); }
}  // namespace

ShardPlan::ShardPlan(int world, int rank, int tp, int cp, int h_q, int s_q, bool causal, int page_size)
    : world_(world), rank_(rank), tp_(tp), cp_(cp), h_q_(h_q), s_q_(s_q), page_size_(page_size),
      causal_(causal) {
  if (tp < 1) bad("tp = " + std::to_string(tp) + " (must be >= 1)");
  if (cp < 1 || cp > kMaxCp) bad("cp = " + std::to_string(cp) + " (must be 1.." + std::to_string(kMaxCp) + ")");
  if (world != tp * cp)
    bad("world = " + std::to_string(world) + " != tp * cp = " + std::to_string(tp) + " * " + std::to_string(cp));
  if (rank < 0 || rank >= world) bad("rank = " + std::to_string(rank) + " (world " + std::to_string(world) + ")");
  if (h_q < 1 || h_q > DMLA_MAX_HEADS) bad("h_q = " + std::to_string(h_q) + " (must be 1..128)");
  if (h_q < tp) bad("h_q = " + std::to_string(h_q) + " < tp = " + std::to_string(tp) + " (a TP rank would have no head)");
  if (s_q < 1 || s_q > DMLA_MAX_SQ) bad("s_q = " + std::to_string(s_q) + " (must be 1..4)");
  if (page_size != 16 && page_size != 32 && page_size != 64 && page_size != 128)
    bad("page_size = " + std::to_string(page_size) + " (must be 16, 32, 64 or 128)");
  tp_rank_ = rank / cp;
  cp_rank_ = rank % cp;
}

int ShardPlan::local_pages(int64_t len) const {
  if (len <= 0) return 0;
  const int64_t pages = (len + page_size_ - 1) / page_size_;
  return static_cast<int>(pages / cp_ + (cp_rank_ < pages % cp_ ? 1 : 0));
}

int64_t ShardPlan::visible_tokens(int64_t len, int t) const {
  const int64_t global_visible = causal_ ? std::max<int64_t>(0, len - s_q_ + t + 1) : len;
  return tokens_on_rank(global_visible, page_size_, cp_, cp_rank_);
}

void ShardPlan::local_seqlens(const int32_t* global_seqlens, int batch, int32_t* out) const {
  for (int i = 0; i < batch; ++i) {
    if (!split_tail()) {
      out[i] = static_cast<int32_t>(local_tokens(global_seqlens[i]));
    } else {
      // Whole pages below what query 0 sees: visible to every query.
      out[i] = static_cast<int32_t>(visible_tokens(global_seqlens[i], 0) / page_size_ * page_size_);
    }
  }
}

void ShardPlan::tail_seqlens(const int32_t* global_seqlens, int batch, int32_t* out) const {
  for (int i = 0; i < batch; ++i) {
    const int64_t bulk = visible_tokens(global_seqlens[i], 0) / page_size_ * page_size_;
    for (int t = 0; t < s_q_; ++t)
      out[i * s_q_ + t] = static_cast<int32_t>(visible_tokens(global_seqlens[i], t) - bulk);
  }
}

void ShardPlan::tail_block_table(const int32_t* global_seqlens, const int32_t* rank_table, int batch, int mbps,
                                 int32_t* out) const {
  for (int i = 0; i < batch; ++i) {
    const int64_t first = visible_tokens(global_seqlens[i], 0) / page_size_;
    const int pages = local_pages(global_seqlens[i]);
    for (int t = 0; t < s_q_; ++t)
      for (int k = 0; k < kTailPages; ++k) {
        const int64_t p = first + k;
        out[(static_cast<size_t>(i) * s_q_ + t) * kTailPages + k] =
            p < pages && p < mbps ? rank_table[static_cast<size_t>(i) * mbps + p] : -1;
      }
  }
}

CostEstimate estimate_cost(int batch, double mean_len, int s_q, int h_q, int tp, int cp,
                           int page_size, bool causal, int partial_bytes) {
  CostEstimate c;
  const double token_bytes = DMLA_D_QK * 2.0;
  const double pages = std::ceil(mean_len / page_size);
  const double rank_pages = std::ceil(pages / cp);
  c.kv_bytes_per_gpu = batch * rank_pages * page_size * token_bytes;
  const bool split = cp > 1 && s_q > 1 && causal;
  // The tail part re-reads at most kTailPages pages a query row.
  c.kv_read_bytes_per_gpu =
      batch * ((mean_len / cp) + (split ? s_q * ShardPlan::kTailPages * page_size / 2.0 : 0)) * token_bytes;
  const int h_tp = (h_q + tp - 1) / tp;
  const int slice = (h_tp + cp - 1) / cp;
  const double row = DMLA_D_V * static_cast<double>(partial_bytes) + 4.0;  // o + fp32 lse
  c.allgather_bytes_per_gpu = (cp - 1) * static_cast<double>(batch) * s_q * h_tp * row;
  c.alltoall_bytes_per_gpu = (cp - 1) * static_cast<double>(batch) * s_q * slice * row;
  if (cp == 1) {
    c.recommended = MergeMode::kAllGather;
    c.reason = "cp = 1: nothing to exchange";
  } else if (h_tp < cp) {
    c.recommended = MergeMode::kAllGather;
    c.reason = "fewer heads per TP group than CP ranks: head slices would leave ranks idle";
  } else if (c.allgather_bytes_per_gpu < 256.0 * 1024) {
    c.recommended = MergeMode::kAllGather;
    c.reason = "small exchange (< 256 KiB a GPU): latency-bound, and all-gather leaves every "
               "rank with all its TP heads";
  } else {
    c.recommended = MergeMode::kAllToAll;
    c.reason = "all-to-all moves 1/cp of the all-gather bytes and merges 1/cp of the rows";
  }
  return c;
}

}  // namespace distmla::dist
