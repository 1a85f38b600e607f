#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// v10 "ddim": a 2-CTA cluster takes 128 query rows and splits the 576 dims between its CTAs.
//
// Why: v6 keeps a 64-row Q tile (72 KB) and two 72 KB KV stages, so no product can overlap the
// softmax chain without starving for KV (runs 12, 16, 24, 40, 44). Here CTA `half` of a pair holds
// only its share of every KV block: V columns [256 half, +256) (4 chunks) and the rope chunk, 40 KB
// a stage, and Q's matching 4 chunks for all 128 rows (64 KB). Three stages fit, and each
// warpgroup owns whole rows (warpgroup r: rows 64 r .. 64 r + 63 of the pair), so the two
// warpgroups of a CTA never wait for each other.
// The price: Q K^T over a CTA's dims is a partial sum S_c. exp(S_0 + S_1) = exp(S_0) exp(S_1), so
// each CTA exponentiates its own partial against a lazy per-row base of its own (E_c =
// 2^(S_c - b_c) <= 2^7), sends E_c as bf16 with its bases to its twin warpgroup in the peer CTA
// (st.async into the peer's smem, completing on its barrier), and both form the same P = E_0 E_1
// at base b_0 + b_1 (fp32 products commute, so the CTAs agree bit for bit); each adds P V into
// its 256 columns. bf16 factors keep fp32's range (a factor far below its base may still meet a
// large one) at half the bytes of an fp32 partial S: measured, the fp32 exchange cost 13%.
// Per block, FA3's order: Q K^T(n + 1) is issued before P(n) is formed, the exponentials of
// n + 1 run beside P V(n), and P V(n) takes P from registers.
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

namespace distmla::kernels::detail {

constexpr int kDdRows = 2 * kBlockM;                    // query rows of a cluster pair
constexpr int kDdRopeTile = kBlockN * 64;               // a block's 32 rope dims of this CTA (64-byte swizzle)
constexpr int kDdStageBytes = 4 * kChunkBytes + kDdRopeTile;  // 36 KB: 4 chunks of V, then the rope half
constexpr int kDdStages = 3;
constexpr int kDdQBytes = 2 * 4 * kChunkBytes;          // [warpgroup][4 chunks][64 rows][64 dims]
constexpr int kDdXBytes = 128 * 72;                     // a warpgroup's message: per thread 16 words of E, 2 bases
constexpr int kDdFinalBytes = 128 * 8;                  // its last one of a sequence: 2 floats a thread
constexpr int kDdRopeBytes = kBlockM * 64;              // a warpgroup's rows of Q's rope half
constexpr int kDdResBytes = 128 * 64;                   // a warpgroup's E - bf16(E): 16 bf16 pairs a thread
constexpr int kDdBarBytes = 128;
constexpr int kDdSmemBytes =
    kDdQBytes + kDdStages * kDdStageBytes + 2 * kDdXBytes + 2 * kDdRopeBytes + 2 * kDdResBytes + kDdBarBytes + 1024;
static_assert((2 * kDdStages + 2 + 4) * 8 <= kDdBarBytes, "the ddim kernel's mbarriers fit");

// The KV producer thread: the part's blocks in order into kDdStages stages, this CTA's share of
// each (V chunks 4 half .. 4 half + 3 and rope dims 512 + 32 half .. +32; one full barrier a
// stage), each stage once both warpgroups released it.
__device__ __forceinline__ void dd_kv_producer(const CUtensorMap& kv_map, const CUtensorMap& kv_rope_map, const Params& p,
                                               uint32_t sKV0, uint32_t full0, uint32_t empty0, int part, int seq_begin,
                                               int seq_end, int half) {
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
      mbar_arrive_expect_tx(full, static_cast<uint32_t>(np * R * (4 * 128 + 64)));
      for (int k = 0; k < np; ++k) {
        const int row = kv_piece_row(p, i, tok + k * R);
#pragma unroll 1
        for (int j = 0; j < 4; ++j) tma_load_2d(dst + j * kChunkBytes + k * R * 128, &kv_map, full, (4 * half + j) * 64, row);
        tma_load_2d(dst + 4 * kChunkBytes + k * R * 64, &kv_rope_map, full, 512 + 32 * half, row);
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
    decode_ddim_kernel(const __grid_constant__ CUtensorMap kv_map, const __grid_constant__ CUtensorMap kv_rope_map,
                       const __grid_constant__ CUtensorMap q_map, const __grid_constant__ CUtensorMap q_rope_map,
                       const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = sQ + kDdQBytes;
  const uint32_t sX = sKV0 + kDdStages * kDdStageBytes;  // [warpgroup] the twin's partial S
  const uint32_t sQr = sX + 2 * kDdXBytes;  // [warpgroup] Q's rope half
  const uint32_t sRes = sQr + 2 * kDdRopeBytes;  // [warpgroup] this CTA's E - bf16(E) of the block in hand
  const uint32_t full0 = sRes + 2 * kDdResBytes;
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
    if (tid == kThreads) dd_kv_producer(kv_map, kv_rope_map, p, sKV0, full0, empty0, part, seq_begin, seq_end, half);
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
        for (int idx = tid; idx < nrows * 36; idx += kThreads) {  // a row: 4 x 8 units of V, 4 of rope
          const int u = idx % 36, row = valid + idx / 36;
          uint8_t* at = u < 32 ? gK + (u / 8) * kChunkBytes + row * 128 + (u % 8) * 16 : gK + 4 * kChunkBytes + row * 64 + (u - 32) * 16;
          *reinterpret_cast<uint4*>(at) = make_uint4(0, 0, 0, 0);
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
        ElemTraits<Elem>::qk64(s, make_desc(sR + kk * 32, 16, 512, 2), make_desc(sK + 4 * kChunkBytes + kk * 32, 16, 512, 2), 1);
      }
      wgmma_commit();
    };
    // Exchange kb: this thread's factors (bf16 pairs in accumulator order) and row bases into the
    // twin's buffer, once the twin has read exchange kb - 1 (x_free). Layout: [4][128] uint4, then
    // [128] float2, so that each warp's stores and loads are contiguous.
    uint32_t sent = 0, got = 0;  // messages to / from the twin so far (parities of x_free / x_full)
    auto send = [&](const uint32_t (&ew)[16], const float (&b)[2]) {
      if (sent > 0) mbar_wait(x_free, (sent - 1) & 1);  // no data to acquire: CTA scope (no L1 invalidation)
      ++sent;
      const uint32_t to = mapa_peer(x_mine + t * 16, peer), bar = mapa_peer(x_full, peer);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        st_async_v4(to + j * 2048, bar, __uint_as_float(ew[4 * j]), __uint_as_float(ew[4 * j + 1]),
                    __uint_as_float(ew[4 * j + 2]), __uint_as_float(ew[4 * j + 3]));
      st_async_v2(mapa_peer(x_mine + 4 * 2048 + t * 8, peer), bar, b[0], b[1]);
    };
    // ... and the twin's, once they have landed (the buffer stays this side's until hand_back).
    auto receive = [&](uint32_t (&ew)[16], float (&b)[2]) {
      mbar_wait(x_full, got & 1);  // completed by the st.async bytes, like a TMA load
      ++got;
      const uint4* in = reinterpret_cast<const uint4*>(gbase + (x_mine - base));
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint4 v = in[j * 128 + t];
        ew[4 * j] = v.x;
        ew[4 * j + 1] = v.y;
        ew[4 * j + 2] = v.z;
        ew[4 * j + 3] = v.w;
      }
      const float2 bb = reinterpret_cast<const float2*>(gbase + (x_mine - base) + 4 * 2048)[t];
      b[0] = bb.x;
      b[1] = bb.y;
    };
    // The buffer is re-armed for the next message (next_bytes) and handed back to the twin.
    auto hand_back = [&](uint32_t next_bytes) {
      __syncwarp();
      if (t == 0) mbar_arrive_expect_tx(x_full, next_bytes);
      if (lane == 0) mbar_arrive_remote(mapa_peer(x_free, peer));
    };
    // A sequence's last message: this thread's two row corrections of the sums (see `step`).
    auto send_final = [&](const float (&c)[2]) {
      if (sent > 0) mbar_wait(x_free, (sent - 1) & 1);
      ++sent;
      st_async_v2(mapa_peer(x_mine + t * 8, peer), mapa_peer(x_full, peer), c[0], c[1]);
    };
    auto receive_final = [&](float (&c)[2]) {
      mbar_wait(x_full, got & 1);
      ++got;
      const float2 v = reinterpret_cast<const float2*>(gbase + (x_mine - base))[t];
      c[0] = v.x;
      c[1] = v.y;
      hand_back(kDdXBytes);
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
      float bm[2] = {NEG_INF, NEG_INF};  // this CTA's row bases (log2 units) for its partial S
      float bp[2] = {NEG_INF, NEG_INF};  // the twin's, as of the last exchange received
      float lrow[2] = {0.f, 0.f};        // this thread's share of the row sums of P (base bm + bp)
      float lcor[2] = {0.f, 0.f};        // ... and of sum (E - bf16(E)) E' over its own factors E
      float corr_m[2] = {1.f, 1.f};      // what moving bm for the block in hand does to O (applied with it)
      uint32_t em[16];                   // E of the block in hand (bf16 pairs, accumulator order)

      // E = 2^(S scale - bm) of block n's partial S (which it overwrites), masked past each row's
      // last token; bm moves (lazily, as in v6) only when a row's max passes it by 2^7, so E <= 2^7
      // and P = E E' <= 2^14, within fp16 too.
      auto factors = [&](float (&sv)[32], int n) {
        float ml[2] = {NEG_INF, NEG_INF};
        const int rel[2] = {lim[0] - (n * kBlockN + cq), lim[1] - (n * kBlockN + cq)};  // tokens of the row left
        if (__any_sync(0xffffffffu, min(rel[0], rel[1]) < kBlockN)) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
              for (int x = 0; x < 2; ++x) {
                const float v = 8 * j + x < rel[h] ? sv[4 * j + 2 * h + x] : NEG_INF;
                sv[4 * j + 2 * h + x] = v;
                ml[h] = fmaxf(ml[h], v);
              }
            }
          }
        } else {
#pragma unroll
          for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int h = 0; h < 2; ++h) ml[h] = fmaxf(ml[h], fmaxf(sv[4 * j + 2 * h], sv[4 * j + 2 * h + 1]));
          }
        }
        constexpr float kLazyLog2 = 7.f;
        float nb[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 1));
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 2));
          const float mx = ml[h] * p.scale_log2;  // scale > 0: the max of the scaled row
          corr_m[h] = 1.f;
          if (mx > bm[h] + kLazyLog2) {  // also the first finite max (bm -inf: corr 0)
            corr_m[h] = ex2_ftz(bm[h] - mx);
            bm[h] = mx;
          }
          nb[h] = bm[h] == NEG_INF ? 0.f : -bm[h];
        }
        // words 4 q .. 4 q + 3 (j = 2 q, 2 q + 1; h = 0, 1); E - bf16(E) (bf16: E to 2^-16) goes to
        // smem until the block's sums use it
        uint4* res = reinterpret_cast<uint4*>(gbase + (sRes - base) + wg * kDdResBytes);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          uint32_t rw[4];
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int j = 2 * q + u / 2, h = u % 2;
            const float e0 = ex2_ftz(fmaf(sv[4 * j + 2 * h], p.scale_log2, nb[h]));
            const float e1 = ex2_ftz(fmaf(sv[4 * j + 2 * h + 1], p.scale_log2, nb[h]));
            const uint32_t w = ElemTraits<__nv_bfloat16>::pack(e0, e1);
            const __nv_bfloat162 hb = *reinterpret_cast<const __nv_bfloat162*>(&w);
            em[4 * q + u] = w;
            rw[u] = ElemTraits<__nv_bfloat16>::pack(e0 - __low2float(hb), e1 - __high2float(hb));
          }
          res[q * 128 + t] = make_uint4(rw[0], rw[1], rw[2], rw[3]);
        }
      };

      // One block: the twin's factors of block n received, P(n) = E E' formed (O and the sums
      // rescaled first if either base moved) and P V(n) issued; with `more`, Q K^T(n + 1) runs
      // meanwhile, and its factors are computed beside P V(n) and sent.
      float sv[32];
      auto step = [&](int n, auto more_c) {
        constexpr bool more = decltype(more_c)::value;  // a constant: no branch joins with products in flight
        if constexpr (more) {
          prepare(k + 1, L, n + 1);
          qk_issue(sv, k + 1);
        }
        uint32_t ep[16];
        float bn[2];
        receive(ep, bn);
        float corr[2];
        bool moved = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          corr[h] = corr_m[h] * (bn[h] == bp[h] ? 1.f : ex2_ftz(bp[h] - bn[h]));
          moved |= corr[h] != 1.f;
          bp[h] = bn[h];
          lrow[h] *= corr[h];
          lcor[h] *= corr[h];
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
        uint32_t pa[4][4];  // P as P V's A fragments: k-step kk = tokens 16 kk .. 16 kk + 15 = words 4 kk ..
#pragma unroll
        for (int w = 0; w < 16; ++w) {
          const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162*>(&em[w]);
          const __nv_bfloat162 y = *reinterpret_cast<const __nv_bfloat162*>(&ep[w]);
          const float p0 = __low2float(x) * __low2float(y), p1 = __high2float(x) * __high2float(y);
          lrow[w % 2] += p0 + p1;
          pa[w / 4][w % 4] = ElemTraits<Elem>::pack(p0, p1);
        }
        const uint32_t sK = sKV0 + (k % kDdStages) * kDdStageBytes;
        reg_fence(o);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          ElemTraits<Elem>::pv_rs(o, pa[kk], make_desc(sK + kk * 16 * 128, kChunkBytes, 1024));
        wgmma_commit();
        // While P V runs: P was formed from the rounded factors; the sums also take E - bf16(E) of
        // each side times the other's factor (this side's here, the twin's in the last message), so
        // that l and lse keep fp32 accuracy. Then the twin's message is done with.
        {
          const uint4* res = reinterpret_cast<const uint4*>(gbase + (sRes - base) + wg * kDdResBytes);
          const uint4* in = reinterpret_cast<const uint4*>(gbase + (x_mine - base));
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            const uint4 rv = res[q * 128 + t], yv = in[q * 128 + t];
            const uint32_t r4[4] = {rv.x, rv.y, rv.z, rv.w}, y4[4] = {yv.x, yv.y, yv.z, yv.w};
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              const __nv_bfloat162 r = *reinterpret_cast<const __nv_bfloat162*>(&r4[u]);
              const __nv_bfloat162 y = *reinterpret_cast<const __nv_bfloat162*>(&y4[u]);
              lcor[u % 2] = fmaf(__low2float(r), __low2float(y), fmaf(__high2float(r), __high2float(y), lcor[u % 2]));
            }
          }
        }
        hand_back(more ? kDdXBytes : kDdFinalBytes);
        if constexpr (more) {
          wgmma_wait1();
          reg_fence(sv);
          if (n + 1 == e - 1) release_q();
          factors(sv, n + 1);
          send(em, bm);
        }
        wgmma_wait0();
        reg_fence(o);
        __syncwarp();
        if (lane == 0) mbar_arrive(empty0 + 8 * (k % kDdStages));
        ++k;
      };

      if (a < e) {
        prepare(k, L, a);
        qk_issue(sv, k);
        wgmma_wait0();
        reg_fence(sv);
        if (a == e - 1) release_q();
        factors(sv, a);
        send(em, bm);
        for (int n = a; n + 1 < e; ++n) step(n, std::true_type{});
        step(e - 1, std::false_type{});
      } else {
        release_q();
      }

      // epilogue: this warpgroup holds whole rows, so the row sums need only the quad; the twin's
      // correction arrives in a last message
      float cm[2], cp[2] = {0.f, 0.f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        cm[h] = lcor[h] + __shfl_xor_sync(0xffffffffu, lcor[h], 1);
        cm[h] += __shfl_xor_sync(0xffffffffu, cm[h], 2);
      }
      if (a < e) {
        send_final(cm);
        receive_final(cp);
      }
      float lse_r[2], inv[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float l = lrow[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        l += half == 0 ? cm[h] + cp[h] : cp[h] + cm[h];  // the same sum in both CTAs
        const float b = bm[h] + bp[h];
        if (l > 0.f && b != NEG_INF) {
          inv[h] = 1.f / l;
          lse_r[h] = (b + log2f(l)) * 0.69314718055994530942f;
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
