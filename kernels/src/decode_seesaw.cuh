#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// v9 "seesaw": the two consumer warpgroups take alternate 64-token blocks and run out of phase,
// so that one warpgroup's softmax overlaps the other's products (v6 runs both in lockstep and
// the tensor core waits for the softmax: docs/PERFORMANCE.md, run 15).
//
// A pair of blocks (n0 in buffer B0, n1 in B1) per iteration; warpgroup 0 owns n0, warpgroup 1
// owns n1, and each keeps its 256 of the 512 output columns. With S0 = Q K(n0)^T already in
// warpgroup 0's registers and S1 in warpgroup 1's:
//   wg0: softmax(S0) at base m0; P0 and m0 to smem -> O0 += P0 V0[0:256] (P0 from registers)
//   wg1: O1 to base m0, O1 += P0 V0[256:512] (P0 from smem); behind it softmax(S1) at base
//        m1 >= m0; P1 and m1 to smem -> O1 to base m1 -> O1 += P1 V1[256:512] -> S1'
//   wg0: O0 to base m1 -> O0 += P1 V1[0:256] -> S0' = Q K(n0 + 2)^T
// (the rebases are rare: bases move lazily, only when a block's max exceeds the base by more
// than kLazyLog2). Each 64-column tile of a buffer is reloaded by the warpgroup whose product read
// it last, as soon as that product has finished (tile 8, read by Q K^T only, at the start of the
// pair), and S' walks the tiles in the order they were freed. No producer warp: thread 0 of a
// warpgroup issues the TMA. P1 lives in Q's rope-chunk slot (Q's rope chunk is in registers).
// Pairs whose next pair is complete take the pipelined path; the last one or two pairs of a
// range take a path that waits for each product (no wgmma group is in flight across a branch
// join: ptxas would serialise every wgmma of the kernel, C7520).
#include <cuda.h>

#include <cmath>

#include "decode_layout.cuh"
#include "decode_wgmma.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

constexpr int kSeesawThreads = 256;
constexpr int kSeesawBars = 2 * kChunks;  // full[b][c]: tile c of buffer b loaded
constexpr int kSeesawSmemBytes = kTileBytes * (1 + kStages) + kPBytes + kSeesawBars * 8 +
                                 2 * kBlockM * 4 /*bases*/ + 2 * kBlockM * 4 /*sums*/ + 2 * 8 * 4 /*rows*/ +
                                 1024 /*align*/;
static_assert(kSeesawSmemBytes <= 227 * 1024, "seesaw smem plan");

// Named barriers (0 is __syncthreads, 1 consumer_sync): one warpgroup arrives, the other waits.
enum : int { kBarM0 = 2, kBarM1 = 3, kBarP0Free = 4, kBarWg = 6 /* + wg: 128 threads */ };
__device__ __forceinline__ void nbar_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void nbar_sync(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void wg_sync(int wg) { asm volatile("bar.sync %0, 128;\n" ::"r"(kBarWg + wg) : "memory"); }

// Pool row of page piece k (of 64 / page_size) of block n, or -1 where it holds no token below L.
__device__ __forceinline__ int piece_row(const Params& p, int i, int n, int L, int k) {
  const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
  const int tok0 = n * kBlockN + k * R;
  if (k * R >= kBlockN || tok0 >= L) return -1;
  const int lp = min(tok0 / p.page_size, p.max_blocks_per_seq - 1);
  int phys = __ldg(p.block_table + static_cast<size_t>(i) * p.max_blocks_per_seq + lp);
  phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
  return phys * p.page_size + tok0 % p.page_size;
}

// TMA of tiles [C0, C1) of a block into buffer sBuf, tile c on mbarrier full + 8 c (one thread);
// rows: the block's piece_row()s. Not unrolled: the kernel is large enough to miss in the
// instruction cache (run 24).
template <int C0, int C1>
__device__ __forceinline__ void load_tiles(const CUtensorMap& map, const int* rows, int R, uint32_t sBuf,
                                           uint32_t full) {
  int n = 0;
  while (n < 4 && rows[n] >= 0) ++n;
  const uint32_t bytes = static_cast<uint32_t>(n * R * 128);
#pragma unroll 1
  for (int c = C0; c < C1; ++c) {
    mbar_arrive_expect_tx(full + 8 * c, bytes);
#pragma unroll 1
    for (int k = 0; k < n; ++k) tma_load_2d(sBuf + c * kChunkBytes + k * R * 128, &map, full + 8 * c, c * 64, rows[k]);
  }
}

// Lanes 0-7 of a warp: the piece rows of blocks n and n + 1 into rows[0..8) (-1 past e), read
// later by the warp's lane 0 (kept in smem, not in registers across the pair). With prefetch,
// lanes 8-15 fetch the pages of blocks n + 2 and n + 3 into L2, so that the TMA loads of the
// next pair, issued only as their tiles free up, do not wait for HBM (run 24).
__device__ __forceinline__ void stage_rows(int* rows, const Params& p, int i, int n, int e, int L, int lane,
                                           bool prefetch) {
  const int blk = n + lane / 4;
  if (lane < 8) rows[lane] = blk < e ? piece_row(p, i, blk, L, lane % 4) : -1;
  if (prefetch && lane >= 8 && lane < 16 && blk < e) {
    const int row = piece_row(p, i, blk, L, lane % 4);
    if (row >= 0) {
      const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
      const char* src = static_cast<const char*>(p.kv) + static_cast<size_t>(row) * (kDQK * 2);
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(R * kDQK * 2) : "memory");
    }
  }
  __syncwarp();
}

// s (+)= Q K^T over tiles [C0, C1), each after its TMA barrier; kFirst: the first product
// overwrites s. Tile 8 (rope) takes Q from registers. One commit group.
template <typename Elem, int C0, int C1, bool kFirst>
__device__ __forceinline__ void qk_tiles(float (&s)[32], const uint32_t (&qr)[4][4], uint32_t sQ, uint32_t sK,
                                         uint32_t full, uint32_t parity) {
#pragma unroll
  for (int c = C0; c < C1; ++c) {
    mbar_wait_uniform(full + 8 * c, parity);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint64_t db = make_desc(sK + c * kChunkBytes + kk * 32, 16, 1024);
      if (c == 8)
        ElemTraits<Elem>::qk64_rs(s, qr[kk], db, (kFirst && c == C0 && kk == 0) ? 0 : 1);
      else
        ElemTraits<Elem>::qk64(s, make_desc(sQ + c * kChunkBytes + kk * 32, 16, 1024), db,
                               (kFirst && c == C0 && kk == 0) ? 0 : 1);
    }
  }
  wgmma_commit();
}

// O += P V over the 256 columns of half h, P from registers (A fragments) or from smem.
template <typename Elem>
__device__ __forceinline__ void pv_regs(float (&o)[128], const uint32_t (&pa)[4][4], uint32_t sBuf, int h) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    ElemTraits<Elem>::pv_rs(o, pa[kk], make_desc(sBuf + 4 * h * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024));
  wgmma_commit();
}
template <typename Elem>
__device__ __forceinline__ void pv_smem(float (&o)[128], uint32_t sP, uint32_t sBuf, int h) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    ElemTraits<Elem>::pv_ss(o, make_desc(sP + kk * 32, 16, 1024),
                            make_desc(sBuf + 4 * h * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024));
  wgmma_commit();
}

// Rows [valid, 64) of V half h of a buffer to zero (unused pages may hold NaN, and P = 0 does
// not cancel it), then visible to this warpgroup's products.
__device__ __forceinline__ void zero_v_tail(uint8_t* gBuf, int h, int valid, int t, int wg) {
  for (int idx = t; idx < (kBlockN - valid) * 32; idx += 128) {
    const int u = idx % 8, c = 4 * h + (idx / 8) % 4, r = valid + idx / 32;
    *reinterpret_cast<uint4*>(gBuf + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
  }
  fence_proxy_async();
  wg_sync(wg);
}

// 2^(a - b) for bases that may be -inf (b >= a): 1 when equal.
__device__ __forceinline__ float rebase(float a, float b) { return a == b ? 1.f : exp2f(a - b); }

template <int N>
__device__ __forceinline__ void scale_rows(float (&o)[N], const float (&f)[2]) {
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
    o[4 * j + 0] *= f[0];
    o[4 * j + 1] *= f[0];
    o[4 * j + 2] *= f[1];
    o[4 * j + 3] *= f[1];
  }
}

// Softmax of one block's S (rows r0, r0 + 8; element 4 j + 2 h + x is token 8 j + cq + x):
// masks tokens at or past lim, picks the base lazily from ref (log2 units), returns P packed as
// the A fragments of P V (k-step kk: {r0, 16kk + cq}, {r0 + 8, ..}, {r0, 16kk + 8 + cq}, {r0 + 8, ..})
// and adds the row sums to lsum.
template <typename Elem>
__device__ __forceinline__ void block_softmax(float (&s)[32], uint32_t (&pa)[4][4], float (&m)[2],
                                              float (&lsum)[2], const float (&ref)[2], const int (&lim)[2],
                                              int tok0, int cq, float scale_log2) {
  constexpr float kLazyLog2 = 8.f;
  const float NEG_INF = -INFINITY;
  if (__any_sync(0xffffffffu, tok0 + kBlockN > min(lim[0], lim[1]))) {
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int x = 0; x < 2; ++x)
          if (tok0 + 8 * j + cq + x >= lim[h]) s[4 * j + 2 * h + x] = NEG_INF;
  }
  float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
  for (int k = 0; k < 32; ++k) mx[(k >> 1) & 1] = fmaxf(mx[(k >> 1) & 1], s[k]);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
    mx[h] *= scale_log2;
    m[h] = mx[h] > ref[h] + kLazyLog2 ? mx[h] : ref[h];  // also the first finite max (ref -inf)
    const float base = m[h] == NEG_INF ? 0.f : m[h];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const float v = exp2f(fmaf(s[4 * j + 2 * h + x], scale_log2, -base));
        s[4 * j + 2 * h + x] = v;
        lsum[h] += v;
      }
  }
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int q = 0; q < 4; ++q) pa[kk][q] = ElemTraits<Elem>::pack(s[8 * kk + 2 * q], s[8 * kk + 2 * q + 1]);
}

// P (A fragments) to smem [64 rows][64 tokens], K-major, 128B swizzle; conflict-free.
__device__ __forceinline__ void store_p(uint8_t* gP, const uint32_t (&pa)[4][4], int r0, int cq) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int r = r0 + 8 * (q & 1), unit = 2 * kk + (q >> 1);
      *reinterpret_cast<uint32_t*>(gP + r * 128 + ((unit ^ (r & 7)) * 16) + cq * 2) = pa[kk][q];
    }
}

template <typename Elem>
__device__ __forceinline__ float unpack_lo(uint32_t v) {
  return ElemTraits<Elem>::to_float(static_cast<uint16_t>(v & 0xffffu));
}
template <typename Elem>
__device__ __forceinline__ float unpack_hi(uint32_t v) {
  return ElemTraits<Elem>::to_float(static_cast<uint16_t>(v >> 16));
}

template <typename Elem>
__global__ void __launch_bounds__(kSeesawThreads, 1)
    decode_seesaw_kernel(const __grid_constant__ CUtensorMap kv_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;  // chunks 0-7; chunk 8's slot is P1
  const uint32_t sB0 = base + kTileBytes, sB1 = base + 2 * kTileBytes;
  const uint32_t sP0 = base + 3 * kTileBytes, sP1 = sQ + 8 * kChunkBytes;
  const uint32_t full0 = sP0 + kPBytes, full1 = full0 + 8 * kChunks;  // full[b] + 8 c
  uint8_t* gB0 = gbase + kTileBytes;
  uint8_t* gB1 = gbase + 2 * kTileBytes;
  float* sM0 = reinterpret_cast<float*>(gbase + 3 * kTileBytes + kPBytes + kSeesawBars * 8);  // wg0's base
  float* sM1 = sM0 + kBlockM;                                                                   // wg1's base
  float* sSum = sM1 + kBlockM;                                                                  // [2][64]
  int* sRows = reinterpret_cast<int*>(sSum + 2 * kBlockM);                                      // [2][8]

  const int tid = threadIdx.x;
  if (tid == 0) {
    for (int k = 0; k < kSeesawBars; ++k) mbar_init(full0 + 8 * k, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();

  pdl_wait();
  pdl_launch_dependents();

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int part = blockIdx.x;
  const int tile = blockIdx.y;
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];
  if (seq_begin >= seq_end) return;

  // provably warp-uniform, so that ptxas keeps the wgmma of each branch asynchronous (C7520)
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int t = tid % 128;
  const int lane = tid % 32;
  const int r0 = (t / 32) * 16 + lane / 4;
  const int cq = 2 * (lane % 4);
  const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
  const float NEG_INF = -INFINITY;
  uint32_t uses = 0;  // blocks this warpgroup has multiplied from its buffer (tile barrier phases)

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];

    consumer_sync();  // the previous sequence's reads of sQ, sP, the buffers and sSum are done
    if (tid < 32) stage_rows(sRows, p, i, a, e, L, lane, p.l2_prefetch != 0);
    if (tid == 0 && a < e) {
      load_tiles<0, kChunks>(kv_map, sRows, R, sB0, full0);
      if (a + 1 < e) load_tiles<0, kChunks>(kv_map, sRows + 4, R, sB1, full1);
    }
    load_q_smem<kChunks - 1>(p, gbase, i, tile, tid);
    uint32_t qr[4][4];
    load_q_rope(p, qr, i, tile, r0, cq, true);
    consumer_sync();

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int tq = (tile * kBlockM + r0 + 8 * h) / p.h_q;
      if (tq >= p.s_q) tq = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + tq) : L;
    }

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float mb[2] = {NEG_INF, NEG_INF};  // base of o and lsum (log2 units)
    float lsum[2] = {0.f, 0.f};        // row sums of this warpgroup's blocks (partial: its quad)
    float s[32];
    uint32_t pa[4][4];

    if (wg == 0) {
      if (a < e) {
        qk_tiles<Elem, 0, kChunks, true>(s, qr, sQ, sB0, full0, uses & 1);
        wgmma_wait0();
        reg_fence(s);
        ++uses;
      }
      for (int n0 = a; n0 < e; n0 += 2) {
        const bool has1 = n0 + 1 < e, next0 = n0 + 2 < e, steady = n0 + 3 < e;
        int* nb = sRows;  // piece rows of blocks n0 + 2 and n0 + 3 (nb + 4)
        if (t < 32) stage_rows(nb, p, i, n0 + 2, e, L, lane, p.l2_prefetch != 0);
        if (next0 && t == 0) load_tiles<8, 9>(kv_map, nb, R, sB0, full0);  // only S0 read it
        // ---- softmax of n0 at base m0; P0 and m0 to warpgroup 1 ----
        float m0[2], ls[2] = {0.f, 0.f};
        block_softmax<Elem>(s, pa, m0, ls, mb, lim, n0 * kBlockN, cq, p.scale_log2);
        if (n0 > a) nbar_sync(kBarP0Free);  // warpgroup 1's P V with the previous P0 is done
        store_p(gbase + (sP0 - base), pa, r0, cq);
        if ((lane & 3) == 0) {
          sM0[r0] = m0[0];
          sM0[r0 + 8] = m0[1];
        }
        fence_proxy_async();
        nbar_arrive(kBarM0);
        {
          const float f[2] = {rebase(mb[0], m0[0]), rebase(mb[1], m0[1])};
          if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f)) scale_rows(o, f);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            lsum[h] = lsum[h] * f[h] + ls[h];
            mb[h] = m0[h];
          }
        }
        if (!has1 && L - n0 * kBlockN < kBlockN) zero_v_tail(gB0, 0, L - n0 * kBlockN, t, 0);
        // ---- O += P0 V0 (left half); B0's left tiles are then free for block n0 + 2 ----
        reg_fence(o);
        wgmma_fence();
        pv_regs<Elem>(o, pa, sB0, 0);
        wgmma_wait0();
        reg_fence(o);
        if (next0 && t == 0) load_tiles<0, 4>(kv_map, nb, R, sB0, full0);
        if (!has1) continue;
        // ---- O to warpgroup 1's base m1 (rare), O += P1 V1 (left half) ----
        nbar_sync(kBarM1);
        {
          const float m1[2] = {sM1[r0], sM1[r0 + 8]};
          const float f[2] = {rebase(m0[0], m1[0]), rebase(m0[1], m1[1])};
          if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f)) scale_rows(o, f);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            lsum[h] *= f[h];
            mb[h] = m1[h];
          }
        }
        if (steady) {
          // S0' over B0's left tiles behind P V; B1's left tiles then free for n0 + 3; S0' over
          // the right tiles (reloaded by warpgroup 1)
          reg_fence(o);
          wgmma_fence();
          pv_smem<Elem>(o, sP1, sB1, 0);
          qk_tiles<Elem, 8, 9, true>(s, qr, sQ, sB0, full0, uses & 1);
          qk_tiles<Elem, 0, 4, false>(s, qr, sQ, sB0, full0, uses & 1);
          wgmma_wait1();
          reg_fence(o);
          if (t == 0) load_tiles<0, 4>(kv_map, nb + 4, R, sB1, full1);
          qk_tiles<Elem, 4, 8, false>(s, qr, sQ, sB0, full0, uses & 1);
          wgmma_wait0();
          reg_fence(s);
          ++uses;
        } else {
          if (L - (n0 + 1) * kBlockN < kBlockN) zero_v_tail(gB1, 0, L - (n0 + 1) * kBlockN, t, 0);
          reg_fence(o);
          wgmma_fence();
          pv_smem<Elem>(o, sP1, sB1, 0);
          wgmma_wait0();
          reg_fence(o);
          if (next0) {
            qk_tiles<Elem, 0, kChunks, true>(s, qr, sQ, sB0, full0, uses & 1);
            wgmma_wait0();
            reg_fence(s);
            ++uses;
          }
        }
      }
    } else {
      if (a + 1 < e) {
        qk_tiles<Elem, 4, kChunks, true>(s, qr, sQ, sB1, full1, uses & 1);
        qk_tiles<Elem, 0, 4, false>(s, qr, sQ, sB1, full1, uses & 1);
        wgmma_wait0();
        reg_fence(s);
        ++uses;
      }
      for (int n0 = a; n0 < e; n0 += 2) {
        const bool has1 = n0 + 1 < e, next0 = n0 + 2 < e, steady = n0 + 3 < e;
        int* nb = sRows + 8;  // piece rows of blocks n0 + 2 and n0 + 3 (nb + 4)
        if (t < 32) stage_rows(nb, p, i, n0 + 2, e, L, lane, false);
        if (steady && t == 0) load_tiles<8, 9>(kv_map, nb + 4, R, sB1, full1);  // only S1 read it
        // ---- O to base m0, O += P0 V0 (right half) ----
        nbar_sync(kBarM0);
        const float m0[2] = {sM0[r0], sM0[r0 + 8]};
        {
          const float f[2] = {rebase(mb[0], m0[0]), rebase(mb[1], m0[1])};
          if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f)) scale_rows(o, f);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            lsum[h] *= f[h];
            mb[h] = m0[h];
          }
        }
        if (has1) {
          reg_fence(o);
          wgmma_fence();
          pv_smem<Elem>(o, sP0, sB0, 1);
          // ---- behind it: softmax of n1 at base m1 >= m0; P1 and m1 to warpgroup 0 ----
          float m1[2], ls[2] = {0.f, 0.f};
          block_softmax<Elem>(s, pa, m1, ls, m0, lim, (n0 + 1) * kBlockN, cq, p.scale_log2);
          store_p(gbase + (sP1 - base), pa, r0, cq);
          if ((lane & 3) == 0) {
            sM1[r0] = m1[0];
            sM1[r0 + 8] = m1[1];
          }
          fence_proxy_async();
          nbar_arrive(kBarM1);
          wgmma_wait0();
          reg_fence(o);
          if (next0) {  // P0 and B0's right tiles are free
            nbar_arrive(kBarP0Free);
            if (t == 0) load_tiles<4, 8>(kv_map, nb, R, sB0, full0);
          }
          // ---- O to base m1 (rare), O += P1 V1 (right half) ----
          {
            const float f[2] = {rebase(m0[0], m1[0]), rebase(m0[1], m1[1])};
            if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f)) scale_rows(o, f);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              lsum[h] = lsum[h] * f[h] + ls[h];
              mb[h] = m1[h];
            }
          }
          if (!steady && L - (n0 + 1) * kBlockN < kBlockN) zero_v_tail(gB1, 1, L - (n0 + 1) * kBlockN, t, 1);
          reg_fence(o);
          wgmma_fence();
          pv_regs<Elem>(o, pa, sB1, 1);
          wgmma_wait0();
          reg_fence(o);
          if (steady) {  // B1's right tiles are free: load n0 + 3 and start S1' with them
            if (t == 0) load_tiles<4, 8>(kv_map, nb + 4, R, sB1, full1);
            qk_tiles<Elem, 8, 9, true>(s, qr, sQ, sB1, full1, uses & 1);
            qk_tiles<Elem, 0, 8, false>(s, qr, sQ, sB1, full1, uses & 1);
            wgmma_wait0();
            reg_fence(s);
            ++uses;
          }
        } else {
          if (L - n0 * kBlockN < kBlockN) zero_v_tail(gB0, 1, L - n0 * kBlockN, t, 1);
          reg_fence(o);
          wgmma_fence();
          pv_smem<Elem>(o, sP0, sB0, 1);
          wgmma_wait0();
          reg_fence(o);
        }
      }
    }

    // ---- epilogue: row sums of both warpgroups (both at the final base mb) ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lsum[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    consumer_sync();
    float lse_r[2], inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sSum[r0 + 8 * h] + sSum[kBlockM + r0 + 8 * h];
      if (l > 0.f && mb[h] != NEG_INF) {
        inv[h] = 1.f / l;
        lse_r[h] = (mb[h] + log2f(l)) * 0.69314718055994530942f;
      } else {
        inv[h] = 0.f;
        lse_r[h] = NEG_INF;
      }
    }
    write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, m.seq_nsplit[i] <= 1,
                     static_cast<size_t>(m.seq_split_base[i] + part - m.seq_first_part[i]));
  }
}

}  // namespace distmla::kernels::detail
