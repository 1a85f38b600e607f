#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// v8 "small": the decode for at most 32 query rows a sequence (h_q * s_q <= 32), transposed.
//
// Why: wgmma's M is 64, so v6 computes 64-row tiles of which h_q 16 uses a quarter: half of v6's
// tensor work (and power) at h_q 16 and 32 is padding. Here the 64 tokens of a KV block are M
// and the (up to) 32 query rows are N:
//   S^T [64 tokens x 32 rows] = K Q^T    (m64n32k16: A = K, B = Q, both K-major from smem)
//   O^T [512 x 32 rows]      += V^T P^T  (m64n32k16: A = V read MN-major, B = P K-major)
// Q K^T is split by dims between the two consumer warpgroups (partial S^T exchanged through
// smem, as in v6); both then hold the whole S^T and run the same softmax (a row of the output is
// a column of S^T: maxima and sums reduce over lanes and warps); warpgroup w writes half of P
// and computes the d columns 256 w .. 256 w + 255 of O^T. The KV pipeline (producer thread,
// stages, barriers) is v6's; the Q tile is 32 rows, which frees smem for the exchange.
#include <cuda.h>

#include <cmath>

#include "decode_layout.cuh"
#include "decode_wgmma.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

constexpr int kSmallRows = 32;                             // N: query rows of the tile
constexpr int kSmallQChunk = kSmallRows * 128;             // one [32 rows][64 dims] swizzled chunk
constexpr int kSmallQBytes = kChunks * kSmallQChunk;       // 36 KB
constexpr int kSmallXBytes = kBlockN * kSmallRows * 4;     // one warpgroup's partial S^T, fp32
constexpr int kSmallPBytes = kSmallRows * kBlockN * 2;     // P [32 rows][64 tokens] bf16
constexpr int kSmallSmemBytes = kSmallQBytes + kTileBytes * kStages + 2 * kSmallXBytes + kSmallPBytes +
                                2 * 4 * kSmallRows * 4 /*cross-warp*/ + 64 /*barriers*/ + 1024 /*align*/;

// Per-warpgroup named barriers (ids 2 and 3).
__device__ __forceinline__ void small_wg_sync(int wg) {
  if (wg == 0)
    asm volatile("bar.sync 2, 128;\n" ::: "memory");
  else
    asm volatile("bar.sync 3, 128;\n" ::: "memory");
}

template <typename Elem>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_small_kernel(const __grid_constant__ CUtensorMap kv_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = base + kSmallQBytes;
  const uint32_t sX = sKV0 + kTileBytes * kStages;  // [2 warpgroups][4 groups][128 threads] float4
  const uint32_t sP = sX + 2 * kSmallXBytes;
  uint8_t* gKV0 = gbase + kSmallQBytes;
  float4* gX = reinterpret_cast<float4*>(gbase + (sX - base));
  uint8_t* gP = gbase + (sP - base);
  float* sRed = reinterpret_cast<float*>(gP + kSmallPBytes);  // [2 warpgroups][4 warps][32 columns]
  const uint32_t bar0 = sP + kSmallPBytes + 2 * 4 * kSmallRows * 4;
  const uint32_t empty0 = bar0 + 8 * kStages;

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform to ptxas (C7520)
  const int lane = tid % 32;
  const int warp = (tid % 128) / 32;
  const int part = blockIdx.x;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(bar0 + 8 * s, 1);
    for (int s = 0; s < kStages; ++s) mbar_init(empty0 + 8 * s, kThreads / 32);
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

  if (tid >= kThreads) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid == kThreads) kv_producer(kv_map, p, sKV0, bar0, empty0, part, seq_begin, seq_end);
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  const float NEG_INF = -INFINITY;
  const int t = tid % 128;
  const int tok_l = 16 * warp + lane / 4;  // this thread's tokens tok_l and tok_l + 8 of a block
  const int cq = 2 * (lane % 4);           // its query rows 8 j + cq + x, j 0..3, x 0..1
  uint32_t consumed = 0;

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const int nsplit = m.seq_nsplit[i];
    const int split_idx = part - m.seq_first_part[i];

    consumer_sync();  // the previous sequence's reads of sQ are complete
    {
      // Q [32 rows][576] -> 9 chunks of [32 rows][128 B], swizzled; rows past p.rows zero
      const uint16_t* q = static_cast<const uint16_t*>(p.q);
      constexpr int kIters = kSmallRows * kChunks * 8 / kThreads;  // 9
      uint4 v[kIters];
#pragma unroll
      for (int it = 0; it < kIters; ++it) {
        const int idx = tid + it * kThreads;
        const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
        v[it] = make_uint4(0, 0, 0, 0);
        if (r < p.rows)
          v[it] = __ldg(reinterpret_cast<const uint4*>(q + (static_cast<size_t>(i) * p.rows + r) * kDQK + c * 64 + u * 8));
      }
#pragma unroll
      for (int it = 0; it < kIters; ++it) {
        const int idx = tid + it * kThreads;
        const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
        *reinterpret_cast<uint4*>(gbase + c * kSmallQChunk + r * 128 + ((u ^ (r & 7)) * 16)) = v[it];
      }
      fence_proxy_async();
    }
    consumer_sync();

    // per query row (column of S^T): the exponent base and the partial row sum; the causal
    // limit of row r is lim_of(r) (the smallest is that of row 0)
    auto lim_of = [&](int r) {
      int tq = r / p.h_q;
      if (tq >= p.s_q) tq = p.s_q - 1;
      return p.causal ? (L - p.s_q + 1 + tq) : L;
    };
    const int lim_min = lim_of(0);
    float base_c[4][2], lsum[4][2];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        base_c[j][x] = NEG_INF;
        lsum[j][x] = 0.f;
      }

    float o[4][16];  // O^T of d tile 4 wg + mt: o[mt][4 j + 2 h + x] = (d 16 warp + lane/4 + 8 h, row 8 j + cq + x)
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int k = 0; k < 16; ++k) o[mt][k] = 0.f;

    for (int n = a; n < e; ++n) {
      const int stage = consumed % kStages;
      const uint32_t sK = sKV0 + stage * kTileBytes;
      mbar_wait(bar0 + 8 * stage, (consumed / kStages) & 1);
      const int valid = min(L - n * kBlockN, kBlockN);
      if (valid < kBlockN) {
        // V rows past the length may hold NaN (unused pages): P is 0 there, V must be finite
        uint8_t* gK = gKV0 + stage * kTileBytes;
        for (int idx = tid; idx < (kBlockN - valid) * kChunks * 8; idx += kThreads) {
          const int u = idx % 8, c = (idx / 8) % kChunks, r = valid + idx / (8 * kChunks);
          *reinterpret_cast<uint4*>(gK + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
        consumer_sync();
      }

      // ---- S^T partial over this warpgroup's 18 k-steps (no branch on the warpgroup: the k-step
      // offset is data); the first product overwrites s ----
      float s[16];
      wgmma_fence();
#pragma unroll
      for (int g = 0; g < 18; ++g) {
        const int gg = g + 18 * wg, c = gg / 4, kk = gg % 4;
        ElemTraits<Elem>::qk32(s, make_desc(sK + c * kChunkBytes + kk * 32, 16, 1024),
                               make_desc(sQ + c * kSmallQChunk + kk * 32, 16, 1024), g > 0);
      }
      wgmma_commit();
      wgmma_wait0();
      reg_fence(s);
      // ---- exchange: both warpgroups end with the whole S^T (same thread, same elements) ----
#pragma unroll
      for (int j = 0; j < 4; ++j) gX[(wg * 4 + j) * 128 + t] = make_float4(s[4 * j], s[4 * j + 1], s[4 * j + 2], s[4 * j + 3]);
      consumer_sync();
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 v = gX[((1 - wg) * 4 + j) * 128 + t];
        s[4 * j] += v.x;
        s[4 * j + 1] += v.y;
        s[4 * j + 2] += v.z;
        s[4 * j + 3] += v.w;
      }

      // ---- mask; column maxima over the block's 64 tokens (lanes, then warps) ----
      const int tok0 = n * kBlockN + tok_l;
      if (n * kBlockN + kBlockN > lim_min) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int x = 0; x < 2; ++x)
              if (tok0 + 8 * h >= lim_of(8 * j + cq + x)) s[4 * j + 2 * h + x] = NEG_INF;
      }
      float mx[4][2];
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          float v = fmaxf(s[4 * j + x], s[4 * j + 2 + x]);
          v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
          v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 8));
          v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 16));
          mx[j][x] = v;
        }
      float* red = sRed + wg * 4 * kSmallRows;
      if (lane < 4) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int x = 0; x < 2; ++x) red[warp * kSmallRows + 8 * j + cq + x] = mx[j][x];
      }
      small_wg_sync(wg);
      // ---- lazy bases (as v6), P = 2^(S scale - base), partial row sums ----
      float corr[4][2];
      bool moved = false;
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const int c = 8 * j + cq + x;
          const float v = fmaxf(fmaxf(red[c], red[kSmallRows + c]), fmaxf(red[2 * kSmallRows + c], red[3 * kSmallRows + c])) *
                          p.scale_log2;
          corr[j][x] = 1.f;
          if (v > base_c[j][x] + 8.f) {
            corr[j][x] = exp2f(base_c[j][x] - v);
            base_c[j][x] = v;
            moved = true;
          }
          const float bh = base_c[j][x] == NEG_INF ? 0.f : base_c[j][x];
          lsum[j][x] *= corr[j][x];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float pv = exp2f(fmaf(s[4 * j + 2 * h + x], p.scale_log2, -bh));
            s[4 * j + 2 * h + x] = pv;
            lsum[j][x] += pv;
          }
        }
      // P [row][token] (K-major B of P V, 128B swizzle): warpgroup w writes rows 16 w .. 16 w + 15
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * wg + jj;
#pragma unroll
        for (int x = 0; x < 2; ++x) {
          const int r = 8 * j + cq + x;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int tk = tok_l + 8 * h;
            const uint32_t off = r * 128 + ((((tk >> 3) ^ (r & 7)) << 4) | ((tk & 7) * 2));
            *reinterpret_cast<uint16_t*>(gP + off) =
                static_cast<uint16_t>(ElemTraits<Elem>::pack(s[4 * j + 2 * h + x], 0.f) & 0xffffu);
          }
        }
      }
      fence_proxy_async();
      if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int x = 0; x < 2; ++x) o[mt][4 * j + 2 * h + x] *= corr[j][x];
      }
      consumer_sync();  // P is in smem (both halves); the cross-warp maxima have been read

      // ---- O^T += V^T P^T over this warpgroup's 4 d tiles ----
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) reg_fence(o[mt]);
      wgmma_fence();
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          ElemTraits<Elem>::pvt(o[mt], make_desc(sK + (4 * wg + mt) * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024),
                                make_desc(sP + kk * 32, 16, 1024), 1);
        }
      }
      wgmma_commit();
      wgmma_wait0();
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) reg_fence(o[mt]);
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * stage);
      ++consumed;
    }

    // ---- epilogue: row sums over lanes and warps (both warpgroups hold the same), write ----
    float* red = sRed + wg * 4 * kSmallRows;
    small_wg_sync(wg);  // the last block's reads of red are complete
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        float v = lsum[j][x];
        v += __shfl_xor_sync(0xffffffffu, v, 4);
        v += __shfl_xor_sync(0xffffffffu, v, 8);
        v += __shfl_xor_sync(0xffffffffu, v, 16);
        if (lane < 4) red[warp * kSmallRows + 8 * j + cq + x] = v;
      }
    small_wg_sync(wg);
    const bool direct = nsplit <= 1;
    const size_t slot = static_cast<size_t>(m.seq_split_base[i] + split_idx);
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const int r = 8 * j + cq + x;
        if (r >= p.rows) continue;
        const float l = red[r] + red[kSmallRows + r] + red[2 * kSmallRows + r] + red[3 * kSmallRows + r];
        const float bc = base_c[j][x];
        const bool empty = !(l > 0.f) || bc == NEG_INF;
        const float inv = empty ? 0.f : 1.f / l;
        const float lse = empty ? NEG_INF : (bc + log2f(l)) * 0.69314718055994530942f;
        const SliceRowOffsets dst = out_row(p, i, r);
        const bool lse_writer = wg == 0 && warp == 0 && lane < 4;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int d = 256 * wg + 64 * mt + tok_l + 8 * h;
            const float v = o[mt][4 * j + 2 * h + x] * inv;
            if (!direct) {
              m.part_o[(slot * p.rows + r) * kDV + d] = v;
            } else if (p.out_fp32) {
              static_cast<float*>(p.out)[dst.o + d] = v;
            } else {
              static_cast<uint16_t*>(p.out)[dst.o + d] = static_cast<uint16_t>(ElemTraits<Elem>::pack(v, 0.f) & 0xffffu);
            }
          }
        if (lse_writer) {
          if (direct)
            p.lse[dst.lse] = lse;
          else
            m.part_lse[slot * p.rows + r] = lse;
        }
      }
  }
  }  // consumers
}

}  // namespace distmla::kernels::detail
