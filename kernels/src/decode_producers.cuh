#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The wgmma kernels' producer warps: the KV blocks and the Q tiles by TMA onto their mbarriers.
#include <cuda.h>

#include "decode_epilogue.cuh"
#include "decode_layout.cuh"
#include "decode_trace.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

// First KV-cache row of the R tokens from tok0 of sequence i, through the block table (entries
// clamped so that a bad one cannot fault).
__device__ __forceinline__ int kv_piece_row(const Params& p, int i, int tok0) {
  int lp = tok0 / p.page_size;
  if (lp >= p.max_blocks_per_seq) lp = p.max_blocks_per_seq - 1;
  int phys = p.block_table[static_cast<size_t>(i) * p.max_blocks_per_seq + lp];
  phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
  return phys * p.page_size + tok0 % p.page_size;
}

// Stage s's full barriers, one a chunk: chunk c's is stage_full_bars(bar0, s) + 8 c.
__device__ __forceinline__ uint32_t stage_full_bars(uint32_t bar0, int stage) { return bar0 + 8 * kChunks * stage; }


// v6's Q K^T reads chunks 0-4 in warpgroup 0 and 4-8 in warpgroup 1, so the loads alternate
// between the two halves: each warpgroup's first product waits for one chunk, not for the block.
__device__ __forceinline__ int kv_chunk_order(int j) { return j == 8 ? 8 : (j % 2 == 0 ? j / 2 : 4 + j / 2); }

// The TMA producer (one thread): loads the 64-token blocks of the part's sequences, in order,
// into kStages stages, each once its consumers released it (empty barrier empty0 + 8 s). Each
// chunk of a stage has its own full barrier (stage_full_bars, expect-tx), so that v6's
// consumers start each product as soon as its chunk has landed instead of waiting for the whole
// 72 KB block (with two stages the load of block n + 2 starts only when block n is done; run 31).
// Only pages that hold a token below the length are read (pages of 16 or 32 tokens are several
// boxes a block); rows past the length keep stale data.
// With p.kv_multicast the CTA and its cluster peer (the part's other row tile: the same blocks in
// the same order) each load every other chunk into both CTAs, so L2 sends each block once instead
// of twice. Each arms its own chunk barriers for the whole block. A stage is refilled once it is
// free in both CTAs: here (empty, o_free) and in the peer, whose readers say so on this CTA's
// stage_peer_free barrier themselves (its 8 consumer warps, or its store warp for a stage that
// held a staged O tile), without a hop through the peer's producer. Every block's arrival is
// awaited, the last kStages ones by a drain before this thread exits, so no CTA exits with an
// arrival on its way to it, and each CTA's consumers wait for every byte written into it.
template <bool kDSplit, bool kMulticast>
__device__ __forceinline__ void kv_producer(const CUtensorMap& kv_map, const Params& p, uint32_t sKV0, uint32_t bar0,
                                            uint32_t empty0, uint32_t o_free0, int part, int seq_begin,
                                            int seq_end) {
  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
  const int pieces = kBlockN / R;
  // (one instantiation each way: this thread has 40 registers, and either path alone fits)
  uint32_t produced = 0;
  uint32_t held = 0, freed = 0;  // bit s: stage s holds a staged O tile / parity of its o_free waits
  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const bool staged = staged_epilogue<kDSplit>(p, a, e);
    for (int n = a; n < e; ++n) {
      // The block's pieces (R tokens of a page) below the length. Their block-table entries are
      // read before the waits for the stage, so that the load's latency is not added to the
      // refill's once the stage is free.
      const int tok = n * kBlockN;
      const int np = min(pieces, (L - tok + R - 1) / R);
      int rows[kBlockN / 16];
#pragma unroll
      for (int k = 0; k < kBlockN / 16; ++k) rows[k] = k < np ? kv_piece_row(p, i, tok + k * R) : 0;
      const int stage = produced % kStages;
      if (produced >= kStages) mbar_wait(empty0 + 8 * stage, ((produced / kStages) - 1) & 1);
      if (held >> stage & 1) {
        mbar_wait(o_free0 + 8 * stage, freed >> stage & 1);
        freed ^= 1u << stage;
        held &= ~(1u << stage);
      }
      if (staged && n == e - 1) held |= 1u << stage;
      if (kMulticast && produced >= kStages)
        mbar_wait_cluster(stage_peer_free(o_free0, stage), ((produced / kStages) - 1) & 1);
      DMLA_TRACE(produced < 48, kTrIssue + produced);
      const uint32_t dst = sKV0 + stage * kTileBytes, full = stage_full_bars(bar0, stage);
      // A barrier a chunk, chunks in the order the warpgroups' Q K^T reads them (kv_chunk_order).
      for (int c = 0; c < kChunks; ++c)
        mbar_arrive_expect_tx(full + 8 * c, static_cast<uint32_t>(np * R * 128));
#pragma unroll
      for (int k = 0; k < kBlockN / 16; ++k) {
        if (k >= np) break;
        const int row = rows[k];
#pragma unroll 1
        for (int j = 0; j < kChunks; ++j) {
          const int c = kv_chunk_order(j);
          const uint32_t to = dst + c * kChunkBytes + k * R * 128;
          if constexpr (kMulticast) {
            // the even positions of the chunk order from rank 0, the odd ones from rank 1
            if ((j & 1) == static_cast<int>(cluster_ctarank())) tma_load_2d_multicast(to, &kv_map, full + 8 * c, c * 64, row, 3);
          } else {
            // With one row tile each KV block has one reader, and L2 may evict it first: 2-5%
            // faster with up to 32 rows (short rows most). Measured, not derived (run 46): at 64
            // rows it cost 1%, and 1.5-4.5% with two or more tiles (the later ones read from L2).
            tma_load_2d(to, &kv_map, full + 8 * c, c * 64, row, gridDim.y == 1 && p.rows <= 32);
          }
        }
      }
      ++produced;
    }
  }
  if constexpr (kMulticast) {
    // the peer's releases of the last blocks, which no refill awaited
    for (uint32_t b = produced > kStages ? produced - kStages : 0; b < produced; ++b)
      mbar_wait_cluster(stage_peer_free(o_free0, b % kStages), (b / kStages) & 1);
  }
}

// The Q producer (one thread of another warp): the Q tile of each sequence of the part by TMA
// (9 chunks of [64 rows][64 dims], 128B-swizzled; rows past p.rows are out of the tensor map's
// bounds and arrive as zeros) onto q_full, each as soon as the consumers released the previous
// one after their last Q K^T (q_empty), so the load overlaps that sequence's last softmax, P V and
// epilogue instead of starting the next sequence (run 27: 2.6-5.7 us a sequence when loaded there).
__device__ __forceinline__ void q_producer(const CUtensorMap& q_map, uint32_t sQ, uint32_t q_full, uint32_t q_empty,
                                           int tile, int seq_begin, int seq_end) {
  for (int i = seq_begin, n = 0; i < seq_end; ++i, ++n) {
    if (n > 0) mbar_wait(q_empty, (n - 1) & 1);
    mbar_arrive_expect_tx(q_full, static_cast<uint32_t>(kTileBytes));
#pragma unroll 1
    for (int c = 0; c < kChunks; ++c) tma_load_3d(sQ + c * kChunkBytes, &q_map, q_full, c * 64, tile * kBlockM, i);
  }
}

}  // namespace distmla::kernels::detail
