// How one decode batch is spread over world = TP x CP ranks (DESIGN.md section 4).
//
// - rank = tp_rank * CP + cp_rank: the ranks of a CP group (which exchange partials every step)
//   are neighbours. Query heads are split over the TP ranks (uneven allowed: the first
//   h_q % TP ranks get one more); in all-to-all mode a TP group's heads are split again into
//   CP slices the same way.
// - Logical page p of every sequence lives on CP rank p % CP, as that rank's local page p / CP.
//   A CP rank's local tokens are its pages in order; all but its last page are full, so global
//   token g is its local token (g / page / CP) * page + g % page.
// - Causal masking with s_q > 1 depends on GLOBAL positions: query t sees global tokens
//   0 .. L - s_q + t. On a CP rank the visible part is a prefix of its local tokens, but its
//   length v(t) does not follow the single-device rule "L_local - s_q + t" (a rank that holds
//   none of the last s_q - 1 tokens must see all its tokens for every t; when the tail
//   straddles a page boundary two ranks each hold part of it). So with CP > 1, s_q > 1 and
//   causal, a rank splits its problem in two exact, non-causal parts:
//     bulk: batch rows, all s_q queries, the whole local pages below v(0) (every query sees
//           them), read once for all queries;
//     tail: batch * s_q rows of s_q = 1, row (i, t) sees local tokens bulk .. v(t) - 1, through
//           a block table shifted by bulk / page pages (at most kTailPages pages a row);
//   and merges the two (o, lse) pairs with the merge law before the cross-rank exchange.
//   Exact for every length, and the extra KV read is at most two pages a row.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "distmla/distmla.h"

namespace distmla::dist {

enum class MergeMode { kAllGather = 0, kAllToAll = 1, kAuto = 2 };
const char* merge_mode_name(MergeMode m);
// "allgather", "alltoall" or "auto"; false on anything else.
bool parse_merge_mode(const std::string& s, MergeMode* m);

struct Range {
  int begin = 0;
  int count = 0;
};
// Part `index` of n items split into `parts` (the first n % parts parts get one more).
Range split_range(int n, int parts, int index);

// Global tokens with index < visible that live on CP rank cp_rank (page round-robin).
int64_t tokens_on_rank(int64_t visible, int page_size, int cp, int cp_rank);
// CP rank that owns global token pos.
inline int owner_cp_rank(int64_t pos, int page_size, int cp) {
  return static_cast<int>((pos / page_size) % cp);
}
// Local token index of global token pos on its owner rank.
inline int64_t local_token_index(int64_t pos, int page_size, int cp) {
  return (pos / page_size / cp) * page_size + pos % page_size;
}

class ShardPlan {
 public:
  // Throws distmla::Error(dmlaErrorInvalidArgument) naming the argument and the value on bad
  // input (world != tp * cp, rank out of range, h_q < tp, cp > kMaxCp, bad s_q / page_size).
  ShardPlan(int world, int rank, int tp, int cp, int h_q, int s_q, bool causal, int page_size);

  static constexpr int kMaxCp = 256;

  int world() const { return world_; }
  int rank() const { return rank_; }
  int tp() const { return tp_; }
  int cp() const { return cp_; }
  int tp_rank() const { return tp_rank_; }
  int cp_rank() const { return cp_rank_; }
  int h_q() const { return h_q_; }
  int s_q() const { return s_q_; }
  int page_size() const { return page_size_; }
  bool causal() const { return causal_; }

  // This rank's TP head group (global head indices).
  Range heads() const { return split_range(h_q_, tp_, tp_rank_); }
  // Head slice c of the TP group (relative to heads().begin) in all-to-all mode.
  Range slice(int c) const { return split_range(heads().count, cp_, c); }
  Range my_slice() const { return slice(cp_rank_); }
  int max_slice() const { return (heads().count + cp_ - 1) / cp_; }

  // True when the local problem is split into bulk + tail (CP > 1, s_q > 1, causal).
  bool split_tail() const { return cp_ > 1 && s_q_ > 1 && causal_; }
  static constexpr int kTailPages = 2;  // (page - 1) + (s_q - 1) < 2 pages for s_q <= 4
  // Causal flag of the (bulk) local problem.
  bool local_causal() const { return split_tail() ? false : causal_; }

  // Pages this rank holds of a sequence of global length len.
  int local_pages(int64_t len) const;
  // Local tokens this rank holds of a sequence of global length len.
  int64_t local_tokens(int64_t len) const { return tokens_on_rank(len, page_size_, cp_, cp_rank_); }
  // Local tokens query t of a sequence of global length len may see on this rank.
  int64_t visible_tokens(int64_t len, int t) const;

  // Seqlens [batch] of the local problem: the local tokens, or (split_tail) the bulk.
  void local_seqlens(const int32_t* global_seqlens, int batch, int32_t* out) const;
  // split_tail only: seqlens [batch * s_q] and block table [batch * s_q, kTailPages] (unused
  // entries -1) of the tail problem, from the global seqlens and this rank's table [batch, mbps].
  void tail_seqlens(const int32_t* global_seqlens, int batch, int32_t* out) const;
  void tail_block_table(const int32_t* global_seqlens, const int32_t* rank_table, int batch, int mbps,
                        int32_t* out) const;

 private:
  int world_, rank_, tp_, cp_, tp_rank_, cp_rank_, h_q_, s_q_, page_size_;
  bool causal_;
};

// What a layout costs a GPU for b sequences of mean length mean_len (DESIGN.md section 7 terms).
struct CostEstimate {
  double kv_bytes_per_gpu = 0;        // KV pages a GPU holds (its share, whole pages)
  double kv_read_bytes_per_gpu = 0;   // KV bytes a GPU reads per step (+ tail pages with MTP)
  double allgather_bytes_per_gpu = 0;  // partial bytes a GPU receives per step, all-gather
  double alltoall_bytes_per_gpu = 0;   // same for all-to-all by head slices
  MergeMode recommended = MergeMode::kAllGather;
  std::string reason;
};
// partial_bytes: bytes of one partial value (2 for bf16, 4 for fp32).
CostEstimate estimate_cost(int batch, double mean_len, int s_q, int h_q, int tp, int cp,
                           int page_size, bool causal, int partial_bytes = 2);

}  // namespace distmla::dist
