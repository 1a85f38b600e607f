#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// v10 "ddim": a 2-CTA cluster takes 128 query rows and splits the 576 dims between its CTAs.
//
// Why: v6 keeps a 64-row Q tile (72 KB) and two 72 KB KV stages, so no product can overlap the
// softmax chain without starving for KV (runs 12, 16, 24, 40, 44). Here CTA `half` of a pair holds
// only its share of every KV block: V columns [256 half, +256) (4 chunks) and the rope chunk, 40 KB
// a stage, and Q's matching 4 chunks for all 128 rows (64 KB). Three stages fit, and each
// warpgroup owns whole rows (warpgroup r: rows 64 r .. 64 r + 63 of the pair), so the two
// warpgroups of a CTA never wait for each other. The price: Q K^T over a CTA's dims is a partial
// sum, which each warpgroup sends to its twin in the peer CTA (st.async into the peer's smem,
// completing on its barrier) and adds the twin's; both CTAs then run the same softmax (fp32 adds
// commute, so they agree bit for bit) and each adds P V into its 256 columns.
// Per block, FA3's order: Q K^T(n + 1) is issued before the softmax of n, whose exchange was sent
// a block earlier, so the tensor pipe works through the chain; P V(n) takes P from registers.
// Dims per CTA: its 4 V chunks plus half of the rope chunk (2 of its 4 k-steps), 288 of 576, so
// both CTAs do the same work; Q's rope half is a [128 rows][32 dims] tile with a 64-byte swizzle.
#include <cuda.h>

#include <cmath>
#include <type_traits>

#include "decode_epilogue.cuh"
#include "decode_layout.cuh"
#include "decode_producers.cuh"
#include "decode_wgmma.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

#ifndef DDIM_EXP
#define DDIM_EXP 0
#endif

namespace distmla::kernels::detail {

constexpr int kDdRows = 2 * kBlockM;                    // query rows of a cluster pair
constexpr int kDdChunks = 5;                            // a CTA's KV chunks: 4 of V, then rope
constexpr int kDdStageBytes = kDdChunks * kChunkBytes;  // 40 KB
constexpr int kDdStages = 3;
constexpr int kDdQBytes = 2 * 4 * kChunkBytes;          // [warpgroup][4 chunks][64 rows][64 dims]
constexpr int kDdXBytes = kBlockM * kBlockN * 4;        // one warpgroup's partial S (fp32)
constexpr int kDdRopeBytes = kBlockM * 64;              // a warpgroup's rows of Q's rope half
constexpr int kDdBarBytes = 128;
constexpr int kDdSmemBytes =
    kDdQBytes + kDdStages * kDdStageBytes + 2 * kDdXBytes + 2 * kDdRopeBytes + kDdBarBytes + 1024;
static_assert((2 * kDdStages + 2 + 4) * 8 <= kDdBarBytes, "the ddim kernel's mbarriers fit");

// KV global chunk of local chunk j of CTA `half`.
__device__ __forceinline__ int dd_chunk(int j, int half) { return j < 4 ? 4 * half + j : 8; }

// The KV producer thread: the part's blocks in order into kDdStages stages, this CTA's 5 chunks of
// each (one full barrier a stage), each stage once both warpgroups released it.
__device__ __forceinline__ void dd_kv_producer(const CUtensorMap& kv_map, const Params& p, uint32_t sKV0, uint32_t full0,
                                               uint32_t empty0, int part, int seq_begin, int seq_end, int half) {
  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
  const int pieces = kBlockN / R;
  uint32_t produced = 0;
  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    for (int n = a; n < e; ++n, ++produced) {
      const int stage = produced % kDdStages;
      if (produced >= kDdStages) mbar_wait(empty0 + 8 * stage, ((produced / kDdStages) - 1) & 1);
      const uint32_t dst = sKV0 + stage * kDdStageBytes, full = full0 + 8 * stage;
      const int tok = n * kBlockN;
      const int np = min(pieces, (L - tok + R - 1) / R);
      mbar_arrive_expect_tx(full, static_cast<uint32_t>(np * R * 128 * kDdChunks));
      for (int k = 0; k < np; ++k) {
        const int row = kv_piece_row(p, i, tok + k * R);
#pragma unroll 1
        for (int j = 0; j < kDdChunks; ++j)
          tma_load_2d(dst + j * kChunkBytes + k * R * 128, &kv_map, full, dd_chunk(j, half) * 64, row);
      }
    }
  }
}

// The Q producer thread: each sequence's 128 rows x this CTA's 4 chunks (8 boxes of 64 x 64) and
// its rope half (2 boxes of 64 rows x 32 dims, 64-byte swizzle, into sQr).
__device__ __forceinline__ void dd_q_producer(const CUtensorMap& q_map, const CUtensorMap& q_rope_map, uint32_t sQ,
                                              uint32_t sQr, uint32_t q_full, uint32_t q_empty, int pair, int half,
                                              int seq_begin, int seq_end) {
  for (int i = seq_begin, n = 0; i < seq_end; ++i, ++n) {
    if (n > 0) mbar_wait(q_empty, (n - 1) & 1);
    mbar_arrive_expect_tx(q_full, static_cast<uint32_t>(kDdQBytes + 2 * kDdRopeBytes));
#pragma unroll 1
    for (int b = 0; b < 8; ++b)
      tma_load_3d(sQ + b * kChunkBytes, &q_map, q_full, (4 * half + b % 4) * 64, pair * kDdRows + kBlockM * (b / 4), i);
    for (int r = 0; r < 2; ++r)
      tma_load_3d(sQr + r * kDdRopeBytes, &q_rope_map, q_full, 512 + 32 * half, pair * kDdRows + kBlockM * r, i);
  }
}

template <typename Elem>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_ddim_kernel(const __grid_constant__ CUtensorMap kv_map, const __grid_constant__ CUtensorMap q_map,
                       const __grid_constant__ CUtensorMap q_rope_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = sQ + kDdQBytes;
  const uint32_t sX = sKV0 + kDdStages * kDdStageBytes;  // [warpgroup] the twin's partial S
  const uint32_t sQr = sX + 2 * kDdXBytes;  // [warpgroup] Q's rope half
  const uint32_t full0 = sQr + 2 * kDdRopeBytes;
  const uint32_t empty0 = full0 + 8 * kDdStages;
  const uint32_t q_full = empty0 + 8 * kDdStages, q_empty = q_full + 8;
  const uint32_t x_full0 = q_empty + 8;  // [warpgroup] the twin's partial S has landed here
  const uint32_t x_free0 = x_full0 + 16; // [warpgroup] the twin has read what this one sent

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int lane = tid % 32;
  const int part = blockIdx.x;
  const int pair = blockIdx.y / 2;
  const uint32_t half = cluster_ctarank();
  const uint32_t peer = half ^ 1u;

  if (tid == 0) {
    for (int s = 0; s < kDdStages; ++s) {
      mbar_init(full0 + 8 * s, 1);
      mbar_init(empty0 + 8 * s, kThreads / 32);
    }
    mbar_init(q_full, 1);
    mbar_init(q_empty, kThreads / 32);
    for (int r = 0; r < 2; ++r) {
      mbar_init(x_full0 + 8 * r, 1);
      mbar_init(x_free0 + 8 * r, 4);  // the twin warpgroup's warps
      mbar_arrive_expect_tx(x_full0 + 8 * r, kDdXBytes);  // arms the first exchange
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();
  cluster_sync();  // the peer's barriers exist before anything is sent to it

  pdl_wait();
  pdl_launch_dependents();

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];

  if (tid >= kThreads) {
    // 24 + 2 x 240 registers a thread-slot triple: the pool of 168 x 384 (the consumers hold
    // O, two S tiles and the rope fragments of Q)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (tid == kThreads) dd_kv_producer(kv_map, p, sKV0, full0, empty0, part, seq_begin, seq_end, half);
    if (tid == kThreads + 32)
      dd_q_producer(q_map, q_rope_map, sQ, sQr, q_full, q_empty, pair, half, seq_begin, seq_end);
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
    const int t = tid % 128;
    const int r0 = (t / 32) * 16 + lane / 4;
    const int cq = 2 * (lane % 4);
    const uint32_t sQw = sQ + wg * 4 * kChunkBytes;
    const uint32_t x_mine = sX + wg * kDdXBytes;  // the twin writes here; the same offset in the peer is ours to write
    const uint32_t x_full = x_full0 + 8 * wg, x_free = x_free0 + 8 * wg;
    const float NEG_INF = -INFINITY;
    const int tile = 2 * pair + wg;  // this warpgroup's 64-row tile of the sequence's rows
    uint32_t k = 0;                  // blocks of the part so far (stage ring and exchange phases)
    uint32_t nseq = 0;

    auto release_q = [&] {
      __syncwarp();
      if (lane == 0) mbar_arrive(q_empty);
    };
    // Block k's stage has landed; a block that ends early has its rows past the length zeroed
    // (stale rows may hold NaN, which P = 0 would still spread through P V). Both warpgroups.
    auto prepare = [&](uint32_t kb, int L, int n) {
      const int stage = kb % kDdStages;
      mbar_wait(full0 + 8 * stage, (kb / kDdStages) & 1);
      const int valid = min(L - n * kBlockN, kBlockN);
      if (valid < kBlockN) {
        uint8_t* gK = gbase + kDdQBytes + stage * kDdStageBytes;
        const int nrows = kBlockN - valid;
        for (int idx = tid; idx < nrows * kDdChunks * 8; idx += kThreads) {
          const int u = idx % 8, c = (idx / 8) % kDdChunks, row = valid + idx / (8 * kDdChunks);
          *reinterpret_cast<uint4*>(gK + c * kChunkBytes + row * 128 + u * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
        consumer_sync();
      }
    };
    // S = Q K^T of block kb over this CTA's dims (issued, committed, not awaited).
    auto qk_issue = [&](float (&s)[32], uint32_t kb) {
      const uint32_t sK = sKV0 + (kb % kDdStages) * kDdStageBytes;
      uint32_t sA = sQw, sR = sQr + wg * kDdRopeBytes;
      asm volatile("" : "+r"(sA), "+r"(sR));  // else the 18 invariant Q descriptors are hoisted into 36 registers
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          ElemTraits<Elem>::qk64(s, make_desc(sA + j * kChunkBytes + kk * 32, 16, 1024),
                                 make_desc(sK + j * kChunkBytes + kk * 32, 16, 1024), (j | kk) != 0);
        }
      }
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        ElemTraits<Elem>::qk64(s, make_desc(sR + kk * 32, 16, 512, 2),
                               make_desc(sK + 4 * kChunkBytes + (2 * half + kk) * 32, 16, 1024), 1);
      }
      wgmma_commit();
    };
    // Exchange kb: this partial S into the twin's buffer (once the twin has read exchange kb - 1)...
    auto send = [&](const float (&s)[32], uint32_t kb) {
      if (DDIM_EXP == 1) return;
      if (DDIM_EXP == 3) {  // timing bound: plain remote stores, no synchronisation
        const uint32_t to = mapa_peer(x_mine + t * 16, peer);
#pragma unroll
        for (int j = 0; j < 8; ++j)
          asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(to + j * 2048), "f"(s[4 * j]),
                       "f"(s[4 * j + 1]), "f"(s[4 * j + 2]), "f"(s[4 * j + 3])
                       : "memory");
        return;
      }
      if (kb > 0) mbar_wait(x_free, (kb - 1) & 1);  // no data to acquire: CTA scope (no L1 invalidation)
      const uint32_t to = mapa_peer(x_mine + t * 16, peer), bar = mapa_peer(x_full, peer);
#pragma unroll
      for (int j = 0; j < 8; ++j) st_async_v4(to + j * 128 * 16, bar, s[4 * j], s[4 * j + 1], s[4 * j + 2], s[4 * j + 3]);
    };
    // ... and the twin's partial added to this one's; then the buffer is re-armed and handed back.
    auto receive = [&](float (&s)[32], uint32_t kb) {
      if (DDIM_EXP != 1 && DDIM_EXP != 3) mbar_wait(x_full, kb & 1);  // completed by the st.async bytes, like a TMA load
      const float4* in = reinterpret_cast<const float4*>(gbase + (x_mine - base));
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float4 v = in[j * 128 + t];
        s[4 * j] += v.x;
        s[4 * j + 1] += v.y;
        s[4 * j + 2] += v.z;
        s[4 * j + 3] += v.w;
      }
      __syncwarp();
      if (DDIM_EXP != 1 && DDIM_EXP != 3 && t == 0) mbar_arrive_expect_tx(x_full, kDdXBytes);  // the next exchange's phase
      if (DDIM_EXP != 1 && DDIM_EXP != 3 && lane == 0) mbar_arrive_remote(mapa_peer(x_free, peer));
    };

    for (int i = seq_begin; i < seq_end; ++i, ++nseq) {
      int a, e;
      part_block_range(m, W, part, i, a, e);
      const int L = m.seq_len[i];
      int lim[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int tq = (tile * kBlockM + r0 + 8 * h) / p.h_q;
        if (tq >= p.s_q) tq = p.s_q - 1;
        lim[h] = p.causal ? (L - p.s_q + 1 + tq) : L;
      }
      mbar_wait(q_full, nseq & 1);

      float o[128];
#pragma unroll
      for (int c = 0; c < 128; ++c) o[c] = 0.f;
      float mrow[2] = {NEG_INF, NEG_INF};
      float lrow[2] = {0.f, 0.f};

      // One block: S(n) complete (twin's partial added), softmax into P (registers), P V(n)
      // issued; with `more`, Q K^T(n + 1) runs meanwhile and its partial goes to the twin.
      auto step = [&](float (&sc)[32], float (&sn)[32], int n, auto more_c) {
        constexpr bool more = decltype(more_c)::value;  // a constant: no branch joins with products in flight
        if constexpr (more) {
          prepare(k + 1, L, n + 1);
          qk_issue(sn, k + 1);
        }
        receive(sc, k);
        if (DDIM_EXP == 2) goto pack_p;  // timing bound: no softmax (wrong results)
        {
        // Row maxima of the raw S (scale > 0, so they scale after); the mask only in blocks that
        // reach past a row's last token.
        float ml[2] = {NEG_INF, NEG_INF};
        const int rel[2] = {lim[0] - (n * kBlockN + cq), lim[1] - (n * kBlockN + cq)};  // tokens of the row left
        if (__any_sync(0xffffffffu, min(rel[0], rel[1]) < kBlockN)) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
              for (int x = 0; x < 2; ++x) {
                const float v = 8 * j + x < rel[h] ? sc[4 * j + 2 * h + x] : NEG_INF;
                sc[4 * j + 2 * h + x] = v;
                ml[h] = fmaxf(ml[h], v);
              }
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) ml[h] = fmaxf(ml[h], fmaxf(sc[4 * j + 2 * h], sc[4 * j + 2 * h + 1]));
          }
        }
        // Lazy rescaling as in v6 (the base moves only when the max passes it by 2^8).
        constexpr float kLazyLog2 = 8.f;
        float corr[2];
        bool moved = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 1));
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 2));
          const float mx = ml[h] * p.scale_log2;
          corr[h] = 1.f;
          if (mx > mrow[h] + kLazyLog2) {  // also the first finite max (mrow -inf: corr 0)
            corr[h] = ex2_ftz(mrow[h] - mx);
            mrow[h] = mx;
            moved = true;
          }
          const float nbase = mrow[h] == NEG_INF ? 0.f : -mrow[h];
          lrow[h] *= corr[h];
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const float pv = ex2_ftz(fmaf(sc[4 * j + 2 * h + x], p.scale_log2, nbase));
              sc[4 * j + 2 * h + x] = pv;
              lrow[h] += pv;
            }
          }
        }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            o[4 * j + 0] *= corr[0];
            o[4 * j + 1] *= corr[0];
            o[4 * j + 2] *= corr[1];
            o[4 * j + 3] *= corr[1];
          }
        }
        }
      pack_p:
        uint32_t pa[4][4];  // P as P V's A fragments: k-step kk = tokens 16 kk .. 16 kk + 15
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
          for (int q4 = 0; q4 < 4; ++q4) pa[kk][q4] = ElemTraits<Elem>::pack(sc[8 * kk + 2 * q4], sc[8 * kk + 2 * q4 + 1]);
        }
        const uint32_t sK = sKV0 + (k % kDdStages) * kDdStageBytes;
        reg_fence(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          ElemTraits<Elem>::pv_rs(o, pa[kk], make_desc(sK + kk * 16 * 128, kChunkBytes, 1024));
        wgmma_commit();
        if constexpr (more) {
          wgmma_wait1();
          reg_fence(sn);
          if (n + 1 == e - 1) release_q();
          send(sn, k + 1);
        }
        wgmma_wait0();
        reg_fence(o);
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * (k % kDdStages));
        ++k;
      };

      if (a < e) {
        float s0[32], s1[32];
        prepare(k, L, a);
        qk_issue(s0, k);
        wgmma_wait0();
        reg_fence(s0);
        if (a == e - 1) release_q();
        send(s0, k);
        // two blocks an iteration, so that the S buffers swap roles without indexing registers
        using More = std::true_type;
        using Last = std::false_type;
        for (int n = a;; n += 2) {
          if (n + 1 == e) {
            step(s0, s1, n, Last{});
            break;
          }
          step(s0, s1, n, More{});
          if (n + 2 == e) {
            step(s1, s0, n + 1, Last{});
            break;
          }
          step(s1, s0, n + 1, More{});
        }
      } else {
        release_q();
      }

      // epilogue: this warpgroup holds whole rows, so the row sums need only the quad
      float lse_r[2], inv[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float l = lrow[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        if (l > 0.f && mrow[h] != NEG_INF) {
          inv[h] = 1.f / l;
          lse_r[h] = (mrow[h] + log2f(l)) * 0.69314718055994530942f;
        } else {
          inv[h] = 0.f;
          lse_r[h] = NEG_INF;
        }
      }
      const bool direct = m.seq_nsplit[i] <= 1;
      const size_t slot = static_cast<size_t>(m.seq_split_base[i] + part - m.seq_first_part[i]);
      write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, static_cast<int>(half), half == 0, lane, direct, slot);
    }
  }
  // Neither CTA leaves while the other may still send to it or arrive on its barriers.
  cluster_sync();
}

}  // namespace distmla::kernels::detail
