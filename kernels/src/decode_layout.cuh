#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// Sizes, the workspace layout with its scheduling metadata, and the kernels' parameters.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "distmla/kernels/decode.h"

namespace distmla::kernels::detail {

constexpr int kDQK = 576;
constexpr int kDV = 512;
constexpr int kBlockN = 64;                 // KV tokens per pipeline block
constexpr int kBlockM = 64;                 // query rows per CTA tile
constexpr int kChunks = kDQK / 64;          // 9 column chunks of 64 values (128 B)
constexpr int kChunkBytes = kBlockN * 128;  // one [64 rows][64 cols] 128B-swizzled tile
constexpr int kTileBytes = kChunks * kChunkBytes;  // 73728
constexpr int kStages = 2;
constexpr int kThreads = 256;               // two consumer warpgroups
constexpr int kSeqOverhead = 2;             // scheduling cost of a sequence, in blocks
constexpr int kMaxParts = 1024;

// ---------------------------------------------------------------------------------------------
// Workspace layout (all int32 first, then the split partials, each region 256-aligned).
// ---------------------------------------------------------------------------------------------
struct WsLayout {
  size_t hdr = 0;         // int[4]: units_per_part, total_units, total_splits, num_parts
  size_t seq_len = 0;     // int[b]  clamped length
  size_t seq_nblk = 0;    // int[b]  64-token blocks
  size_t seq_ustart = 0;  // int[b]  first unit
  size_t seq_first_part = 0;  // int[b]
  size_t seq_nsplit = 0;  // int[b]
  size_t seq_split_base = 0;  // int[b]
  size_t part_begin = 0;  // int[P]
  size_t part_end = 0;    // int[P]
  size_t cut_info = 0;    // int4[P]: {sequence, splits, split base} that the cut after part x
                          // splits first, sequence -1 if none (combine_by_cut)
  size_t part_o = 0;      // [max_splits][rows][512], the out type (Meta::part_o); sized for fp32
  size_t part_lse = 0;    // float[max_splits][rows]
  // int[b][row tiles] each: the splits of a sequence's row tile whose partials are written (zeroed
  // by the schedule kernel, counted by the decode CTAs, reset by the combine), and the combine
  // CTAs of the row tile past their wait for them (combine.cuh).
  size_t split_ready = 0;
  size_t combine_done = 0;
  size_t total = 0;
  int num_parts = 1;
  int max_splits = 0;
};

inline size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

inline int num_row_tiles(const DecodeShape& s) { return (s.s_q * s.h_q + kBlockM - 1) / kBlockM; }

inline int num_parts_for(const DecodeShape& s) {
  int tiles = num_row_tiles(s);
  int sms = s.num_sms > 0 ? s.num_sms : 132;
  int p = std::max(1, sms / tiles);
  return std::min(p, kMaxParts);
}

inline WsLayout make_layout(const DecodeShape& s) {
  WsLayout w;
  size_t b = static_cast<size_t>(std::max(s.batch, 0));
  w.num_parts = num_parts_for(s);
  w.max_splits = static_cast<int>(b) + w.num_parts;
  size_t rows = static_cast<size_t>(s.s_q) * s.h_q;
  size_t off = 0;
  auto take = [&](size_t bytes) { size_t o = off; off = align256(off + bytes); return o; };
  w.hdr = take(4 * sizeof(int));
  w.seq_len = take(b * sizeof(int));
  w.seq_nblk = take(b * sizeof(int));
  w.seq_ustart = take(b * sizeof(int));
  w.seq_first_part = take(b * sizeof(int));
  w.seq_nsplit = take(b * sizeof(int));
  w.seq_split_base = take(b * sizeof(int));
  w.part_begin = take(w.num_parts * sizeof(int));
  w.part_end = take(w.num_parts * sizeof(int));
  w.cut_info = take(w.num_parts * 4 * sizeof(int));
  w.part_o = take(static_cast<size_t>(w.max_splits) * rows * kDV * sizeof(float));
  w.part_lse = take(static_cast<size_t>(w.max_splits) * rows * sizeof(float));
  w.split_ready = take(b * num_row_tiles(s) * sizeof(int));
  w.combine_done = take(b * num_row_tiles(s) * sizeof(int));
  w.total = off;
  return w;
}

struct Meta {
  int* hdr;
  int* seq_len;
  int* seq_nblk;
  int* seq_ustart;
  int* seq_first_part;
  int* seq_nsplit;
  int* seq_split_base;
  int* part_begin;
  int* part_end;
  int4* cut_info;
  // Split partials in the output's type: fp32 for fp32 out, else its 16-bit type (as partials
  // cross ranks); 16-bit halves the bytes they add to a memory-bound step (run 36).
  void* part_o;
  float* part_lse;
  int* split_ready;   // WsLayout::split_ready
  int* combine_done;  // WsLayout::combine_done
};

inline Meta make_meta(const WsLayout& w, void* ws) {
  char* base = static_cast<char*>(ws);
  Meta m;
  m.hdr = reinterpret_cast<int*>(base + w.hdr);
  m.seq_len = reinterpret_cast<int*>(base + w.seq_len);
  m.seq_nblk = reinterpret_cast<int*>(base + w.seq_nblk);
  m.seq_ustart = reinterpret_cast<int*>(base + w.seq_ustart);
  m.seq_first_part = reinterpret_cast<int*>(base + w.seq_first_part);
  m.seq_nsplit = reinterpret_cast<int*>(base + w.seq_nsplit);
  m.seq_split_base = reinterpret_cast<int*>(base + w.seq_split_base);
  m.part_begin = reinterpret_cast<int*>(base + w.part_begin);
  m.part_end = reinterpret_cast<int*>(base + w.part_end);
  m.cut_info = reinterpret_cast<int4*>(base + w.cut_info);
  m.part_o = base + w.part_o;
  m.part_lse = reinterpret_cast<float*>(base + w.part_lse);
  m.split_ready = reinterpret_cast<int*>(base + w.split_ready);
  m.combine_done = reinterpret_cast<int*>(base + w.combine_done);
  return m;
}

struct Params {
  const void* q;
  const void* kv;
  const int32_t* block_table;
  void* out;
  float* lse;
  Meta meta;
  int batch, s_q, h_q, rows, page_size, num_blocks, max_blocks_per_seq;
  int causal, out_fp32, num_parts;
  float scale_log2;  // scale * log2(e)
  // 1: the CTAs of row tiles 2k and 2k + 1 of a part form a cluster and each loads half of every
  // KV block into both (TMA multicast): half the L2-to-SM traffic (decode_producers.cuh).
  int kv_multicast;
  // 1: the decode kernel counts each split's partials into Meta::split_ready once they are
  // written, and the combine waits for those counts instead of the whole decode grid (the wgmma
  // kernels; the simple one does not count).
  int count_splits;
#if DISTMLA_MERGE_IN_DECODE
  // 1: the CTAs whose piece of a split sequence ends their part merge its partials themselves
  // (decode_merge.cuh) and no combine kernel runs (dsplit with 16-bit out; a build option).
  int merge_splits;
#endif
  // Output head slices (kernels::OutSlices; one slice of h_q heads is the plain layout).
  int num_slices, max_slice, slice_base, slice_rem;  // base = h_q / num_slices, rem = h_q % num_slices
  size_t out_slice_stride, lse_slice_stride;        // elements
};

// Element offsets in out and lse of row gr (= t * h_q + head) of sequence i.
__device__ __forceinline__ SliceRowOffsets out_row(const Params& p, int i, int gr) {
  return slice_row_offsets(i, gr / p.h_q, gr % p.h_q, p.s_q, p.num_slices, p.max_slice, p.slice_base, p.slice_rem,
                           p.out_slice_stride, p.lse_slice_stride);
}

// Where row gr of sequence i is written: out / lse when the sequence has one split (direct),
// else its split's partial row (slot: the split's index in Meta::part_o / part_lse). o is an
// element offset in base, whose type is the out type.
struct RowDst {
  void* base;
  size_t o;
  float* lse;
};
__device__ __forceinline__ RowDst row_dst(const Params& p, int i, int gr, bool direct, size_t slot) {
  if (direct) {
    const SliceRowOffsets d = out_row(p, i, gr);
    return {p.out, d.o, p.lse + d.lse};
  }
  const size_t row = slot * p.rows + gr;
  return {p.meta.part_o, row * kDV, p.meta.part_lse + row};
}

}  // namespace distmla::kernels::detail
