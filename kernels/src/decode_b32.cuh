#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// b32: v6's split of Q K^T by dims with 32-token KV blocks in four 36 KB stages (v6: two 72 KB
// stages of 64 tokens), so that Q K^T of block n + 1 can be issued before the softmax of block n
// (FA3's order) with two blocks still loading behind it. The smem for it comes from Q: 4 of its
// 9 chunks live in the consumers' registers (32 a thread, 8 k-steps of each warpgroup's 18), so
// the Q tile in smem is 40 KB. Per k-step of m64n32 the smem read is then about v6's per FLOP
// (the register k-steps read only K). The register chunks come through the KV pipeline: the KV
// producer loads them into a stage at each sequence's start and the consumers copy them out.
#include "decode_wgmma.cuh"

namespace distmla::kernels::detail {

namespace b32 {
constexpr int kTok = 32;                  // KV tokens a block
constexpr int kChunk = kTok * 128;        // [32 rows][64 dims], 128B swizzle: 4 KB
constexpr int kStage = kChunks * kChunk;  // 36 KB
constexpr int kStages = 4;
constexpr int kQSmemChunks = 5;           // Q chunks 0, 1, 4, 5, 6 (q_smem_chunk)
constexpr int kQRegChunks = 4;            // Q chunks 2, 3, 7, 8 (q_reg_chunk), through a stage
constexpr int kQChunk = kBlockM * 128;    // 8 KB
constexpr int kPBytes = kBlockM * 128;    // P [64 rows][32 tokens] in 128-byte rows (64-token layout)
constexpr int kXBytes = 2 * 4096;         // the partial-S exchange: 4 KB a warpgroup
constexpr int kBarBytes = 512;
static_assert((kStages * kChunks + kStages + 2) * 8 <= kBarBytes, "the kernel's mbarriers fit");
static_assert(kQRegChunks * kQChunk <= kStage, "Q's register chunks fit a stage");
constexpr int kSmemBytes = kQSmemChunks * kQChunk + kStages * kStage + kPBytes + kXBytes + kBarBytes +
                           512 /*max*/ + 512 /*sum*/ + 1024 /*align*/;

// Q smem slot s holds chunk q_smem_chunk(s); register slot s (in the stage) chunk q_reg_chunk(s).
// Warpgroup 0 multiplies dims 0-287 (chunks 0-3 and half of 4), warpgroup 1 dims 288-575.
__device__ __forceinline__ int q_smem_chunk(int s) { return s < 2 ? s : s + 2; }
__device__ __forceinline__ int q_reg_chunk(int s) { return s < 2 ? s + 2 : s + 5; }

// The KV producer (one thread): for each sequence of the part, Q's register chunks of this row
// tile into a stage, then the sequence's 32-token blocks of the part's range below the length,
// each stage once its consumers released it. A stage has a full barrier a chunk (stage_full_bars
// with kChunks); the Q stage completes barrier 0 by its bytes and the others by an arrival.
__device__ __forceinline__ void kv_producer_b32(const CUtensorMap& kv_map, const CUtensorMap& q_map, const Params& p,
                                                uint32_t sKV0, uint32_t bar0, uint32_t empty0, int part, int tile,
                                                int seq_begin, int seq_end) {
  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int R = p.page_size < kTok ? p.page_size : kTok;
  const int pieces = kTok / R;
  uint32_t produced = 0;
  auto acquire = [&]() {
    if (produced >= kStages) mbar_wait(empty0 + 8 * (produced % kStages), ((produced / kStages) - 1) & 1);
    return static_cast<int>(produced % kStages);
  };
  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    {
      const int stage = acquire();
      const uint32_t dst = sKV0 + stage * kStage, full = stage_full_bars(bar0, stage);
      mbar_arrive_expect_tx(full, static_cast<uint32_t>(kQRegChunks * kQChunk));
#pragma unroll 1
      for (int s = 0; s < kQRegChunks; ++s)
        tma_load_3d(dst + s * kQChunk, &q_map, full, q_reg_chunk(s) * 64, tile * kBlockM, i);
      for (int c = 1; c < kChunks; ++c) mbar_arrive(full + 8 * c);
      ++produced;
    }
    const int hb_end = e > a ? min(2 * e, (L + kTok - 1) / kTok) : 0;
    for (int hb = 2 * a; hb < hb_end; ++hb) {
      const int stage = acquire();
      const uint32_t dst = sKV0 + stage * kStage, full = stage_full_bars(bar0, stage);
      const int tok = hb * kTok;
      const int np = min(pieces, (L - tok + R - 1) / R);
      for (int c = 0; c < kChunks; ++c) mbar_arrive_expect_tx(full + 8 * c, static_cast<uint32_t>(np * R * 128));
      for (int k = 0; k < np; ++k) {
        const int row = kv_piece_row(p, i, tok + k * R);
#pragma unroll 1
        for (int j = 0; j < kChunks; ++j) {
          const int c = kv_chunk_order(j);
          tma_load_2d(dst + c * kChunk + k * R * 128, &kv_map, full + 8 * c, c * 64, row);
        }
      }
      ++produced;
    }
  }
}

// The Q producer (one thread of another warp): Q's smem chunks of each sequence's row tile onto
// q_full, each sequence's once the consumers released the previous one (q_empty).
__device__ __forceinline__ void q_producer_b32(const CUtensorMap& q_map, uint32_t sQ, uint32_t q_full,
                                               uint32_t q_empty, int tile, int seq_begin, int seq_end) {
  for (int i = seq_begin, n = 0; i < seq_end; ++i, ++n) {
    if (n > 0) mbar_wait(q_empty, (n - 1) & 1);
    mbar_arrive_expect_tx(q_full, static_cast<uint32_t>(kQSmemChunks * kQChunk));
#pragma unroll 1
    for (int s = 0; s < kQSmemChunks; ++s)
      tma_load_3d(sQ + s * kQChunk, &q_map, q_full, q_smem_chunk(s) * 64, tile * kBlockM, i);
  }
}

// v, as far as the compiler knows unknown (so not hoisted).
__device__ __forceinline__ uint32_t opaque(uint32_t v) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(v));
  return v;
}

// Issues (does not wait for) this warpgroup's partial S of the 32 tokens in stage sK: 10 k-steps
// with Q from smem, then 8 with Q from registers (qa, qb: chunks 2 and 3, or 7 and 8). The code
// is the same for both warpgroups (addresses differ): with a branch per warpgroup, the join with
// the group in flight would serialise every wgmma (ptxas C7520).
template <typename Elem>
__device__ __forceinline__ void qk_issue(float (&acc)[16], const uint32_t (&qa)[4][4], const uint32_t (&qb)[4][4],
                                         uint32_t sQ, uint32_t sK, uint32_t full, uint32_t par, int wg) {
  // the chunks this warpgroup reads: 0-4 or 4-8
#pragma unroll 1
  for (int c = 0; c < 5; ++c) mbar_wait(full + 8 * (4 * wg + c), par);
  // The smem k-steps, in the same order in both warpgroups so that each address is a per-warpgroup
  // base plus a constant: Q slots 0-1 (warpgroup 1: 3-4) with K chunks 0-1 (5-6), then half of
  // Q slot 2 with half of K chunk 4 (k-steps 0-1, warpgroup 1: 2-3). The bases pass through
  // opaque() so that ptxas does not keep ten loop-invariant descriptors alive (spills).
  const uint32_t q1 = opaque(sQ + wg * 3 * kQChunk), q2 = opaque(sQ + 2 * kQChunk + wg * 64);
  const uint32_t k1 = sK + wg * 5 * kChunk, k2 = sK + 4 * kChunk + wg * 64;
  wgmma_fence();
#pragma unroll
  for (int g = 0; g < 10; ++g) {
    const uint32_t qa_ = g < 8 ? q1 + (g / 4) * kQChunk + (g % 4) * 32 : q2 + (g - 8) * 32;
    const uint32_t ka_ = g < 8 ? k1 + (g / 4) * kChunk + (g % 4) * 32 : k2 + (g - 8) * 32;
    ElemTraits<Elem>::qk32(acc, make_desc(qa_, 16, 1024), make_desc(ka_, 16, 1024), g > 0);
  }
  // the register k-steps: K chunks 2-3 (warpgroup 1: 7-8)
#pragma unroll
  for (int g = 0; g < 8; ++g) {
    ElemTraits<Elem>::qk32_rs(acc, g < 4 ? qa[g] : qb[g - 4],
                              make_desc(k1 + 2 * kChunk + (g / 4) * kChunk + (g % 4) * 32, 16, 1024));
  }
  wgmma_commit();
}


// The partial S of both warpgroups summed: warpgroup w keeps tokens 16 w .. 16 w + 15 of the
// block (accumulator groups 2w, 2w + 1), sends its partial of the other two groups through smem
// (float4 a thread and group: conflict-free) and adds the other's. s[4 j + 2 h + x] is then row
// r0 + 8 h, token 16 w + 8 j + cq + x. Selects with constant indices keep acc in registers.
__device__ __forceinline__ void exchange_s(float (&s)[8], const float (&acc)[16], uint8_t* gX, int wg, int t) {
  float4* out = reinterpret_cast<float4*>(gX + wg * 4096);
  const float4* in = reinterpret_cast<const float4*>(gX + (1 - wg) * 4096);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    float v[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = wg == 0 ? acc[4 * (2 + j) + k] : acc[4 * j + k];
    out[j * 128 + t] = make_float4(v[0], v[1], v[2], v[3]);
  }
  consumer_sync();
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const float4 w = in[j * 128 + t];
    const float wv[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) s[4 * j + k] = (wg == 0 ? acc[4 * j + k] : acc[4 * (2 + j) + k]) + wv[k];
  }
}

// Online softmax of one block (v6's, on 16 tokens a warpgroup): mask, row maxima of both
// warpgroups through smem, lazy rescaling of O, P into smem ([64 rows][32 tokens] in the
// 128-byte swizzled rows of a 64-token P tile). Ends with a consumer barrier: P is complete.
template <typename Elem>
__device__ __forceinline__ void softmax_to_p(float (&s)[8], float (&o)[128], float (&mrow)[2], float (&lrow)[2],
                                             const int (&lim)[2], int tok0, float scale_log2, float* sMax,
                                             uint8_t* gP, int r0, int cq, int wg) {
  const float NEG_INF = -INFINITY;
  float ml[2] = {NEG_INF, NEG_INF};
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const float v = tok0 + 8 * j + x < lim[h] ? s[4 * j + 2 * h + x] * scale_log2 : NEG_INF;
        s[4 * j + 2 * h + x] = v;
        ml[h] = fmaxf(ml[h], v);
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 1));
    ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 2));
    if (cq == 0) sMax[wg * kBlockM + r0 + 8 * h] = ml[h];
  }
  consumer_sync();
  // Lazy rescaling as in v6: the base moves only when the block's max exceeds it by more than
  // 2^8, and both warpgroups see the same max, so they take the same base.
  constexpr float kLazyLog2 = 8.f;
  float corr[2];
  bool moved = false;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float mx = fmaxf(ml[h], sMax[(1 - wg) * kBlockM + r0 + 8 * h]);
    corr[h] = 1.f;
    if (mx > mrow[h] + kLazyLog2) {  // also the first finite max (mrow -inf: corr 0)
      corr[h] = exp2f(mrow[h] - mx);
      mrow[h] = mx;
      moved = true;
    }
    const float base_h = mrow[h] == NEG_INF ? 0.f : mrow[h];
    lrow[h] *= corr[h];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const float pv = exp2f(s[4 * j + 2 * h + x] - base_h);
        s[4 * j + 2 * h + x] = pv;
        lrow[h] += pv;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < 2; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + 8 * h;
      const int unit = 2 * wg + j;
      *reinterpret_cast<uint32_t*>(gP + r * 128 + ((unit ^ (r & 7)) * 16) + cq * 2) =
          ElemTraits<Elem>::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
    }
  }
  fence_proxy_async();  // P (and a zeroed tail) before the wgmma reads them
  if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      o[4 * j + 0] *= corr[0];
      o[4 * j + 1] *= corr[0];
      o[4 * j + 2] *= corr[1];
      o[4 * j + 3] *= corr[1];
    }
  }
  consumer_sync();
}

// O += P V over the block in stage sK: this warpgroup's 256 columns, A = P from smem, B = V read
// MN-major from the stage's chunks 4 wg .. 4 wg + 3. Issued, not waited for.
template <typename Elem>
__device__ __forceinline__ void pv_issue(float (&o)[128], uint32_t sP, uint32_t sK, int wg) {
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    ElemTraits<Elem>::pv_ss(o, make_desc(sP + kk * 32, 16, 1024),
                            make_desc(sK + 4 * wg * kChunk + kk * 16 * 128, kChunk, 1024));
  }
  wgmma_commit();
}

// The rows of a sequence's last block past its length hold stale data (or, never loaded, any
// bits): zeroed in V's chunks, so that 0 * NaN cannot reach O (their P is 0; Q K^T masks them).
__device__ __forceinline__ void zero_tail(uint8_t* gK, int valid, int tid) {
  const int n = (kTok - valid) * 8 * 8;
  for (int idx = tid; idx < n; idx += kThreads) {
    const int u = idx % 8, c = (idx / 8) % 8, r = valid + idx / 64;
    *reinterpret_cast<uint4*>(gK + c * kChunk + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
  }
}

// The b32 decode kernel: v6's warp roles (two consumer warpgroups, a producer warpgroup whose warp 8
// loads KV and Q's register chunks, warp 9 Q's smem chunks) and v6's math per block, in FA3's
// order: Q K^T(n + 1) is issued before softmax(n), P V(n) before the exchange of S(n + 1), so the
// tensor cores work while the consumers run the softmax and the exchanges.
template <typename Elem, bool kOverlap>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_kernel(const __grid_constant__ CUtensorMap kv_map, const __grid_constant__ CUtensorMap q_map,
                      const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = sQ + kQSmemChunks * kQChunk;
  const uint32_t sP = sKV0 + kStages * kStage;
  const uint32_t sX = sP + kPBytes;
  const uint32_t bar0 = sX + kXBytes;
  uint8_t* gKV0 = gbase + (sKV0 - base);
  uint8_t* gP = gbase + (sP - base);
  uint8_t* gX = gbase + (sX - base);
  float* sMax = reinterpret_cast<float*>(gbase + (bar0 - base) + kBarBytes);  // [2][64]
  float* sSum = sMax + 2 * kBlockM;                                            // [2][64]

  const int tid = threadIdx.x;
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int lane = tid % 32;
  const int warp_in_wg = (tid % 128) / 32;
  const int part = blockIdx.x;
  const int tile = blockIdx.y;
  const uint32_t empty0 = stage_full_bars(bar0, kStages);  // one arrival per consumer warp
  const uint32_t q_full = empty0 + 8 * kStages, q_empty = q_full + 8;
  if (tid == 0) {
    for (int s = 0; s < kStages * kChunks; ++s) mbar_init(bar0 + 8 * s, 1);
    for (int s = 0; s < kStages; ++s) mbar_init(empty0 + 8 * s, kThreads / 32);
    mbar_init(q_full, 1);
    mbar_init(q_empty, kThreads / 32);
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
    if (tid == kThreads) kv_producer_b32(kv_map, q_map, p, sKV0, bar0, empty0, part, tile, seq_begin, seq_end);
    if (tid == kThreads + 32) q_producer_b32(q_map, sQ, q_full, q_empty, tile, seq_begin, seq_end);
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  uint32_t consumed = 0, nseq = 0;  // stages consumed; sequences
  // this warp is done with a stage / with the sequence's Q smem chunks (it only read them, by
  // wgmma or generic loads: no proxy fence before the TMA rewrites them)
  auto release = [&](uint32_t bar) {
    __syncwarp();
    if (lane == 0) mbar_arrive(bar);
  };
  const float NEG_INF = -INFINITY;
  const int r0 = warp_in_wg * 16 + lane / 4;
  const int cq = 2 * (lane % 4);
  const int t = tid % 128;

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    mbar_wait(q_full, nseq & 1);
    // Q's register chunks (this warpgroup's two) out of their stage
    uint32_t qa[4][4], qb[4][4];
    {
      const int st = consumed % kStages;
      mbar_wait(stage_full_bars(bar0, st), (consumed / kStages) & 1);
      const uint8_t* g = gKV0 + st * kStage + 2 * wg * kQChunk;
      q_frags_from_smem(qa, g, r0, cq);
      q_frags_from_smem(qb, g + kQChunk, r0, cq);
      release(empty0 + 8 * st);
      ++consumed;
    }
    consumer_sync();  // the previous sequence's reads of sSum are done

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int gr = tile * kBlockM + r0 + 8 * h;
      int tq = gr / p.h_q;
      if (tq >= p.s_q) tq = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + tq) : L;
    }
    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float mrow[2] = {NEG_INF, NEG_INF};
    float lrow[2] = {0.f, 0.f};  // this warpgroup's tokens only

    const int hb0 = 2 * a;
    const int nb = e > a ? min(2 * e, (L + kTok - 1) / kTok) - hb0 : 0;
    if (nb > 0) {
      float acc[16], s[8];
      auto stage_addr = [&](uint32_t c) { return sKV0 + (c % kStages) * kStage; };
      auto full_bars = [&](uint32_t c) { return stage_full_bars(bar0, c % kStages); };
      auto parity = [&](uint32_t c) { return (c / kStages) & 1; };
      qk_issue<Elem>(acc, qa, qb, sQ, stage_addr(consumed), full_bars(consumed), parity(consumed), wg);
      wgmma_wait0();
      reg_fence(acc);
      exchange_s(s, acc, gX, wg, t);
      for (int k = 0; k < nb - 1; ++k) {
        if constexpr (kOverlap) {
          qk_issue<Elem>(acc, qa, qb, sQ, stage_addr(consumed + 1), full_bars(consumed + 1), parity(consumed + 1), wg);
        }
        softmax_to_p<Elem>(s, o, mrow, lrow, lim, (hb0 + k) * kTok + 16 * wg + cq, p.scale_log2, sMax, gP, r0, cq, wg);
        reg_fence(o);
        pv_issue<Elem>(o, sP, stage_addr(consumed), wg);
        if constexpr (kOverlap) {
          wgmma_wait1();
        } else {
          wgmma_wait0();
          reg_fence(o);
          release(empty0 + 8 * (consumed % kStages));
          ++consumed;
          qk_issue<Elem>(acc, qa, qb, sQ, stage_addr(consumed), full_bars(consumed), parity(consumed), wg);
          wgmma_wait0();
        }
        reg_fence(acc);
        exchange_s(s, acc, gX, wg, t);
        if constexpr (kOverlap) {
          wgmma_wait0();
          reg_fence(o);
          release(empty0 + 8 * (consumed % kStages));
          ++consumed;
        }
      }
      release(q_empty);  // every Q K^T of the sequence is done
      const int hb = hb0 + nb - 1;
      const int valid = min(L - hb * kTok, kTok);
      if (valid < kTok) zero_tail(gKV0 + (consumed % kStages) * kStage, valid, tid);
      softmax_to_p<Elem>(s, o, mrow, lrow, lim, hb * kTok + 16 * wg + cq, p.scale_log2, sMax, gP, r0, cq, wg);
      reg_fence(o);
      pv_issue<Elem>(o, sP, stage_addr(consumed), wg);
      wgmma_wait0();
      reg_fence(o);
      release(empty0 + 8 * (consumed % kStages));
      ++consumed;
    } else {
      release(q_empty);
    }

    // ---- epilogue: row sums of both warpgroups, then out / lse or the split's partial ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lrow[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    consumer_sync();
    float lse_r[2], inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sSum[r0 + 8 * h] + sSum[kBlockM + r0 + 8 * h];
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
    write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, direct, slot);
    ++nseq;
  }
}

}  // namespace b32
}  // namespace distmla::kernels::detail
