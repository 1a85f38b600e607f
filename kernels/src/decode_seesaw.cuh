#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// v7 "seesaw": the 64-token blocks of a sequence alternate between the two consumer warpgroups.
//
// Why: in v3/v6 both warpgroups work on the same block, so each block needs three warpgroup
// exchanges (S halves, row maxima, P) and the tensor core idles while both run the softmax in
// lockstep (docs/PERFORMANCE.md, run 15: 45% idle). Here warpgroup w owns the blocks t with
// t % 2 == w (KV buffer w): it computes the whole S of its block (m64n64 products over 576
// dims, the rope chunk with Q from registers), its softmax and P, and both warpgroups then add
// both blocks' P V into their 256 output columns. One rendezvous per pair of blocks.
//
// Exponent bases without an exchange of maxima: each warpgroup picks its block's base lazily
// from the common base B (B unless the block's max exceeds B by more than kLazyLog2) and
// publishes it with P; after the pair's barrier each side knows both bases and brings its
// accumulators to B' = max of the two by exact power-of-two rescales (rare: B moves only a few
// times in a sequence). The other block's P is added at that block's base (a temporary rebase
// of O, capped at 2^64 so that O cannot overflow; a block capped away weighs < 2^-56 anyway).
//
// Pipeline: one producer thread per buffer loads each block's 9 column chunks with TMA, one mbarrier per
// chunk, in the order the buffer frees up: chunk 8 (rope; read by the owner's Q K^T only), then
// the half the owner's P V reads, then the half the other warpgroup's P V reads (last, at the
// end of the pair). Q K^T walks the chunks in that order. Each half has an "empty" mbarrier
// that both warpgroups arrive at (a warpgroup that does not read a half arrives after its Q K^T).
// P of warpgroup 0 lives in sP, P of warpgroup 1 in Q's rope-chunk slot (Q's rope is in
// registers); an mbarrier per P buffer tells its owner that the other warpgroup's P V read it.
#include <cuda.h>

#include <cmath>

#include "decode_layout.cuh"
#include "decode_wgmma.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

constexpr int kSeesawBars = 26;  // full[2][9], half[2][2], rope[2], pfree[2]
constexpr int kSeesawSmemBytes = kTileBytes * (1 + kStages) + kPBytes + kSeesawBars * 8 +
                                 2 * 2 * kBlockM * 4 /*bases*/ + 2 * kBlockM * 4 /*sums*/ + 1024 /*align*/;
static_assert(kSeesawSmemBytes <= 227 * 1024, "seesaw smem plan");

// Chunk loaded / multiplied at position pos (0..8) of a block in buffer b: the rope chunk, then
// the half that warpgroup b's own P V reads (chunks 4b..4b+3), then the other half.
__device__ __forceinline__ int seesaw_chunk(int b, int pos) {
  return pos == 0 ? 8 : ((((pos - 1) >> 2) ^ b) << 2) + ((pos - 1) & 3);
}

// mbarrier wait whose loop condition is warp-uniform: between wgmma groups, a plain try_wait
// loop is a divergent path to ptxas, which then serialises every wgmma of the kernel (C7520).
__device__ __forceinline__ void mbar_wait_uniform(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!__all_sync(0xffffffffu, done));
}

__device__ __forceinline__ void pair_sync() { asm volatile("bar.sync 2, 256;\n" ::: "memory"); }
__device__ __forceinline__ void wg_sync(int wg) {
  if (wg == 0)
    asm volatile("bar.sync 3, 128;\n" ::: "memory");
  else
    asm volatile("bar.sync 4, 128;\n" ::: "memory");
}

// 2^(a - b) for bases that may be -inf: 1 when equal (both -inf included).
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

// O (+)= P V for this warpgroup's 256 columns; P [64 rows][64 tokens] bf16 in smem (K-major,
// 128B swizzle), V = the buffer's chunks 4 wg .. 4 wg + 3 read MN-major. One commit group.
template <typename Elem>
__device__ __forceinline__ void seesaw_pv(float (&o)[128], uint32_t sP, uint32_t sBuf, int wg) {
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    ElemTraits<Elem>::pv_ss(o, make_desc(sP + kk * 32, 16, 1024),
                            make_desc(sBuf + (4 * wg) * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024));
  }
  wgmma_commit();
}

template <typename Elem>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_seesaw_kernel(const __grid_constant__ CUtensorMap kv_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;                       // chunks 0-7; chunk 8's slot is P of warpgroup 1
  const uint32_t sBuf0 = base + kTileBytes;       // buffer b at sBuf0 + b * kTileBytes
  const uint32_t sP0 = base + kTileBytes * 3;     // P of warpgroup 0
  const uint32_t bars = sP0 + kPBytes;
  const uint32_t full0 = bars;                    // full[b][c] = full0 + 8 (9 b + c)
  const uint32_t half0 = bars + 8 * 18;           // half[b][h] = half0 + 8 (2 b + h), 8 warps
  const uint32_t rope0 = bars + 8 * 22;           // rope[b], the owner's 4 warps
  const uint32_t pfree0 = bars + 8 * 24;          // pfree[w], the other warpgroup's 4 warps
  float* sBase = reinterpret_cast<float*>(gbase + (kTileBytes * 3 + kPBytes + kSeesawBars * 8));  // [2][2][64]
  float* sSum = sBase + 4 * kBlockM;                                                               // [2][64]

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform to ptxas (C7520)
  const int lane = tid % 32;
  const int part = blockIdx.x;
  const int tile = blockIdx.y;

  if (tid == 0) {
    for (int k = 0; k < 18; ++k) mbar_init(full0 + 8 * k, 1);
    for (int k = 0; k < 4; ++k) mbar_init(half0 + 8 * k, kThreads / 32);
    for (int k = 0; k < 2; ++k) mbar_init(rope0 + 8 * k, 4);
    for (int k = 0; k < 2; ++k) mbar_init(pfree0 + 8 * k, 4);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();

  pdl_wait();
  pdl_launch_dependents();

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];
  if (seq_begin >= seq_end) return;

  if (wg == 2) {
    // ---- producers: block t of a sequence's range goes to buffer t & 1, loaded by the first
    // thread of warp 8 + (t & 1). One thread per buffer, so that a buffer's early releases
    // (rope chunk, first half) are not queued behind the other buffer's late ones.
    // (no early return anywhere: compute-sanitizer racecheck does not follow named barriers
    // correctly once warps of the CTA have exited)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    const int b = tid / 32 - kThreads / 32;
    if (lane == 0 && b < 2) {
    uint32_t use = 0;  // loads into buffer b so far
    const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
    const int pieces = kBlockN / R;
    for (int i = seq_begin; i < seq_end; ++i) {
      int a, e;
      part_block_range(m, W, part, i, a, e);
      const int L = m.seq_len[i];
      const int32_t* bt = p.block_table + static_cast<size_t>(i) * p.max_blocks_per_seq;
      for (int n = a + b; n < e; n += 2) {
        const uint32_t dst = sBuf0 + b * kTileBytes;
        int rows[4];  // pool rows of the pages that hold a token below the length (page 16: 4)
        int npieces = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int tok0 = n * kBlockN + k * R;
          rows[k] = 0;
          if (k < pieces && tok0 < L) {
            int lp = tok0 / p.page_size;
            if (lp >= p.max_blocks_per_seq) lp = p.max_blocks_per_seq - 1;
            int phys = __ldg(bt + lp);
            phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
            rows[k] = phys * p.page_size + tok0 % p.page_size;
            npieces = k + 1;
          }
        }
        const uint32_t bytes = static_cast<uint32_t>(npieces * R * 128);
        const uint32_t parity = (use - 1) & 1;
#pragma unroll 1
        for (int pos = 0; pos < kChunks; ++pos) {
          const int c = seesaw_chunk(b, pos);
          if (use > 0) mbar_wait(c == 8 ? rope0 + 8 * b : half0 + 8 * (2 * b + c / 4), parity);
          const uint32_t full = full0 + 8 * (9 * b + c);
          mbar_arrive_expect_tx(full, bytes);
#pragma unroll
          for (int k = 0; k < 4; ++k)
            if (k < npieces) tma_load_2d(dst + c * kChunkBytes + k * R * 128, &kv_map, full, c * 64, rows[k]);
        }
        ++use;
      }
    }
    }  // producer thread
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  // ---- consumers: warpgroup wg owns buffer wg ----
  constexpr float kLazyLog2 = 8.f;
  const float NEG_INF = -INFINITY;
  const int r0 = ((tid % 128) / 32) * 16 + lane / 4;  // rows r0 and r0 + 8 of the tile
  const int cq = 2 * (lane % 4);
  const uint32_t sOwn = sBuf0 + wg * kTileBytes, sOther = sBuf0 + (1 - wg) * kTileBytes;
  const uint32_t sPown = wg == 0 ? sP0 : sQ + 8 * kChunkBytes;
  const uint32_t sPother = wg == 0 ? sQ + 8 * kChunkBytes : sP0;
  uint8_t* gPown = gbase + (sPown - base);
  uint8_t* gOwn = gbase + (sOwn - base);
  uint32_t own_use = 0, pwrites = 0, pairs = 0;

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const int nblk = e - a;

    consumer_sync();  // the previous sequence's reads of sQ and sSum are complete
    load_q_smem<kChunks - 1>(p, gbase, i, tile, tid);
    uint32_t qr[4][4];
    load_q_rope(p, qr, i, tile, r0, cq, true);
    consumer_sync();

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int t = (tile * kBlockM + r0 + 8 * h) / p.h_q;
      if (t >= p.s_q) t = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + t) : L;
    }

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float B[2] = {NEG_INF, NEG_INF};  // common exponent base of o and lrun (log2 units)
    float lrun[2] = {0.f, 0.f};       // row sums of this warpgroup's own blocks, at base B

    for (int t0 = 0; t0 < nblk; t0 += 2) {
      const bool own = t0 + wg < nblk;
      const bool other = t0 + 1 - wg < nblk;
      float bo[2] = {B[0], B[1]};  // base of this warpgroup's block (and of o after its P V)
      float lblk[2] = {0.f, 0.f};
      if (own) {
        const int n = a + t0 + wg;
        const uint32_t par = own_use & 1;
        // ---- S = Q K^T of the own block, chunks in load order ----
        float s[32];
#pragma unroll
        for (int pos = 0; pos < kChunks; ++pos) {
          const int c = seesaw_chunk(wg, pos);
          mbar_wait_uniform(full0 + 8 * (9 * wg + c), par);
          wgmma_fence();  // (ptxas would inject it: registers of s are in use across the wait)
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const uint64_t db = make_desc(sOwn + c * kChunkBytes + kk * 32, 16, 1024);
            if (pos == 0)  // the rope chunk: Q from registers
              ElemTraits<Elem>::qk64_rs(s, qr[kk], db, pos + kk > 0);
            else
              ElemTraits<Elem>::qk64(s, make_desc(sQ + c * kChunkBytes + kk * 32, 16, 1024), db, pos + kk > 0);
          }
        }
        wgmma_commit();
        wgmma_wait0();
        reg_fence(s);
        __syncwarp();
        if (lane == 0) {
          mbar_arrive(rope0 + 8 * wg);                // the rope chunk: only this Q K^T reads it
          mbar_arrive(half0 + 8 * (2 * wg + 1 - wg));  // the other warpgroup's half of this buffer
        }

        // ---- mask, row max, lazy base ----
        const int tok0 = n * kBlockN;
        if (!__all_sync(0xffffffffu, tok0 + kBlockN <= min(lim[0], lim[1]))) {
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
          mx[h] *= p.scale_log2;
          if (mx[h] > B[h] + kLazyLog2) bo[h] = mx[h];  // also the first finite max (B = -inf)
        }
        // ---- P = 2^(S scale - bo), row sums ----
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float bh = bo[h] == NEG_INF ? 0.f : bo[h];
#pragma unroll
          for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const float v = exp2f(fmaf(s[4 * j + 2 * h + x], p.scale_log2, -bh));
              s[4 * j + 2 * h + x] = v;
              lblk[h] += v;
            }
        }
        // the other warpgroup's P V of this buffer's previous P is complete
        if (pwrites > 0) mbar_wait(pfree0 + 8 * wg, (pwrites - 1) & 1);
        ++pwrites;
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
            *reinterpret_cast<uint32_t*>(gPown + r * 128 + ((j ^ (r & 7)) * 16) + cq * 2) =
                ElemTraits<Elem>::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
          }
        // V rows past the length may hold NaN (unused pages): P is 0 there, V must be finite
        const int valid = min(L - tok0, kBlockN);
        if (valid < kBlockN) {
          for (int idx = tid % 128; idx < (kBlockN - valid) * 8 * 8; idx += 128) {
            const int u = idx % 8, c = (idx / 8) % 8, r = valid + idx / 64;
            *reinterpret_cast<uint4*>(gOwn + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
          }
        }
        fence_proxy_async();
        wg_sync(wg);  // this warpgroup's P (and zeroed rows) are visible to its wgmma

        // ---- o to the block's base, then o += P V (own block, own half) ----
        const float f0[2] = {rebase(B[0], bo[0]), rebase(B[1], bo[1])};
        if (__any_sync(0xffffffffu, f0[0] != 1.f || f0[1] != 1.f)) {
          scale_rows(o, f0);
          lrun[0] *= f0[0];
          lrun[1] *= f0[1];
        }
        reg_fence(o);
        wgmma_fence();
        seesaw_pv<Elem>(o, sPown, sOwn, wg);
        ++own_use;
      }
      // ---- the pair's rendezvous: both P, both bases ----
      float* myBase = sBase + ((pairs & 1) * 2 + wg) * kBlockM;
      float* otherBase = sBase + ((pairs & 1) * 2 + 1 - wg) * kBlockM;
      ++pairs;
      if ((lane & 3) == 0) {
        myBase[r0] = bo[0];
        myBase[r0 + 8] = bo[1];
      }
      pair_sync();
      wgmma_wait0();
      reg_fence(o);
      float bn[2] = {bo[0], bo[1]};
      if (other) {
        // o is at base bo; the other block's P at base bt. Add it at bt, then settle at
        // bn = max(bo, bt). The temporary rebase is capped (see the header comment).
        float f1[2], f2[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float bt = otherBase[r0 + 8 * h];
          bn[h] = fmaxf(bo[h], bt);
          if (bt == NEG_INF || bo[h] == NEG_INF || bt == bo[h]) {
            f1[h] = 1.f;  // P of the other block is all 0, or o is still 0, or no rebase
            f2[h] = 1.f;
          } else {
            const float d = fminf(bo[h] - bt, 64.f);
            f1[h] = exp2f(d);
            f2[h] = d > 0.f ? exp2f(-d) : 1.f;
          }
        }
        if (__any_sync(0xffffffffu, f1[0] != 1.f || f1[1] != 1.f)) scale_rows(o, f1);
        reg_fence(o);
        wgmma_fence();
        seesaw_pv<Elem>(o, sPother, sOther, wg);
        wgmma_wait0();
        reg_fence(o);
        if (__any_sync(0xffffffffu, f2[0] != 1.f || f2[1] != 1.f)) scale_rows(o, f2);
        __syncwarp();
        if (lane == 0) {
          mbar_arrive(half0 + 8 * (2 * (1 - wg) + wg));      // my half of the other buffer: read
          mbar_arrive(half0 + 8 * (2 * (1 - wg) + 1 - wg));  // its other half: never read by me
          mbar_arrive(pfree0 + 8 * (1 - wg));                // the other warpgroup's P: read
        }
      }
      if (own) {
        __syncwarp();
        if (lane == 0) mbar_arrive(half0 + 8 * (2 * wg + wg));  // my half of my buffer: read
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        lrun[h] = (lrun[h] + lblk[h]) * rebase(bo[h], bn[h]);
        B[h] = bn[h];
      }
    }

    // ---- epilogue: row sums of both warpgroups (same base B) ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lrun[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    consumer_sync();
    float lse_r[2], inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sSum[r0 + 8 * h] + sSum[kBlockM + r0 + 8 * h];
      if (l > 0.f && B[h] != NEG_INF) {
        inv[h] = 1.f / l;
        lse_r[h] = (B[h] + log2f(l)) * 0.69314718055994530942f;
      } else {
        inv[h] = 0.f;
        lse_r[h] = NEG_INF;
      }
    }
    write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, m.seq_nsplit[i] <= 1,
                     static_cast<size_t>(m.seq_split_base[i] + part - m.seq_first_part[i]));
  }
  }  // consumers
}

}  // namespace distmla::kernels::detail
