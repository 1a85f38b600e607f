#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The wgmma split-decode kernel (v6 = v3 with Q K^T split by dims; v3 by tokens): its Q K^T
// helpers and the kernel; the producer warps and the epilogue are in their own headers.
#include <cuda.h>

#include <cmath>

#include "decode_epilogue.cuh"
#include "decode_layout.cuh"
#if DISTMLA_MERGE_IN_DECODE
#include "decode_merge.cuh"
#endif
#include "decode_producers.cuh"
#include "decode_trace.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

// v6: a 64-dim chunk of Q (warpgroup 0: chunk 0; warpgroup 1: the rope chunk 8, which then
// serves as warpgroup 0's S exchange slot) of rows r0 and r0 + 8 as wgmma A fragments, from the Q
// tile in smem: k-step kk, registers {row, col}, {row + 8, col}, {row, col + 8}, {row + 8, col + 8}
// with col = 16 kk + cq. A product with A from registers reads half the smem bytes (run 77).
__device__ __forceinline__ void q_chunk_from_smem(uint32_t (&qr)[4][4], const uint8_t* chunk, int r0, int cq) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    const uint8_t* row = chunk + r * 128 + cq * 2;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      qr[kk][h] = *reinterpret_cast<const uint32_t*>(row + (((2 * kk) ^ (r & 7)) * 16));
      qr[kk][2 + h] = *reinterpret_cast<const uint32_t*>(row + (((2 * kk + 1) ^ (r & 7)) * 16));
    }
  }
}

// acc (+)= Q K^T over k-steps [G0, G1) of 16 dims, both operands from smem (m64n64; dQ, dK: the
// Q tile's and the stage's descriptors, K-major); the first step overwrites acc unless kAccumulate
// (products before it have started the sum). Each KV chunk's first product waits for the chunk's
// barrier (full + 8 c).
template <typename Elem, int G0, int G1, bool kAccumulate = false>
__device__ __forceinline__ void qk64_steps(float (&acc)[32], uint32_t dQ, uint32_t dK, uint32_t full, uint32_t par) {
#pragma unroll
  for (int g = G0; g < G1; ++g) {
    const int c = g / 4, kk = g % 4;
    if (g == G0 || kk == 0) mbar_wait(full + 8 * c, par);
    ElemTraits<Elem>::qk64(acc, desc_at(dQ, c * kChunkBytes + kk * 32), desc_at(dK, c * kChunkBytes + kk * 32),
                           kAccumulate || g > G0);
  }
}

// acc (+)= Q K^T over Q's chunk c (4 k-steps) with A from registers (qr: q_chunk_from_smem) and B
// the stage's chunk c, once the chunk's barrier says it has landed; the first step overwrites acc
// unless kAccumulate.
template <typename Elem, int c, bool kAccumulate>
__device__ __forceinline__ void qk64_chunk_rs(float (&acc)[32], const uint32_t (&qr)[4][4], uint32_t dK, uint32_t full,
                                              uint32_t par) {
  mbar_wait(full + 8 * c, par);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    ElemTraits<Elem>::qk64_rs(acc, qr[kk], desc_at(dK, c * kChunkBytes + kk * 32), kAccumulate || kk > 0);
}

// v6's S exchange: a warpgroup's partial S of the other's 32 tokens (acc[kFrom ..], a float4 per
// thread and token group: conflict-free) out to smem.
template <int kFrom>
__device__ __forceinline__ void put_partial(const float (&acc)[32], uint8_t* slot, int t) {
  float4* out = reinterpret_cast<float4*>(slot);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    out[j * 128 + t] = make_float4(acc[kFrom + 4 * j], acc[kFrom + 4 * j + 1], acc[kFrom + 4 * j + 2], acc[kFrom + 4 * j + 3]);
}
// v6 Q K^T (see decode_wgmma3_kernel): s = this warpgroup's 32 tokens of S = Q K^T, summed over
// both warpgroups' halves of the 576 dims. x_q: Q's rope chunk in smem (warpgroup 0's exchange
// slot), x_kv: the stage's rope chunk (warpgroup 1's); t = thread in the warpgroup; full, par:
// the stage's chunk barriers and their phase parity.
template <typename Elem>
__device__ __forceinline__ void qk_dsplit(float (&s)[16], const uint32_t (&qr)[4][4], uint32_t dQ, uint32_t dK,
                                          uint32_t full, uint32_t par, uint8_t* x_q, uint8_t* x_kv, int wg, int t) {
  float acc[32];  // the first product of each branch overwrites it (scale-d 0)
  // 18 k-steps each: warpgroup 0 chunk 0 with A from registers (qr), then chunks 1-3 and half of
  // 4; warpgroup 1 the other half of 4, chunks 5-7, then the rope chunk with A from registers.
  // Each branch waits for its own products (a branch join with groups in flight serialises every
  // wgmma: ptxas C7520).
  if (wg == 0) {
    wgmma_fence();
    qk64_chunk_rs<Elem, 0, false>(acc, qr, dK, full, par);
    qk64_steps<Elem, 4, 18, true>(acc, dQ, dK, full, par);
    wgmma_commit();
    wgmma_wait0();
  } else {
    wgmma_fence();
    qk64_steps<Elem, 18, 32>(acc, dQ, dK, full, par);
    qk64_chunk_rs<Elem, 8, true>(acc, qr, dK, full, par);
    wgmma_commit();
    wgmma_wait0();
  }
  reg_fence(acc);
  // acc[4j + 2h + x] is (row r0 + 8h, token 8j + cq + x): groups j 0-3 are warpgroup 0's tokens,
  // 4-7 warpgroup 1's. The stores take a branch a warpgroup instead of a select an element (16
  // instructions fewer in the chain; the adds kept as selects: as a branch they spilled, run 54);
  // constant indices keep acc in registers.
  if (wg == 0) {
    put_partial<16>(acc, x_q, t);
  } else {
    put_partial<0>(acc, x_kv, t);
  }
  // Both halves are written. (Warpgroup 1's proxy fence for its stores into the stage, needed
  // before the TMA refills it, comes at the stage release, off this critical path.)
  consumer_sync();
  const float4* in = reinterpret_cast<const float4*>(wg == 0 ? x_kv : x_q);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float4 o = in[j * 128 + t];
    const float w[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) s[4 * j + k] = (wg == 0 ? acc[4 * j + k] : acc[16 + 4 * j + k]) + w[k];
  }
}

// P = 2^(S scale - base) of this warpgroup's 32 tokens (s: S of rows r0 and r0 + 8, a base a
// row; -inf before the row has one, for which a finite S gives inf and a masked one NaN: the
// caller's vote catches both), its row sums (ls), and P in bf16 out to its half of the P tile
// ([64 rows][64 tokens], K-major, 128B swizzle), fenced for the P V that reads it.
template <typename Elem>
__device__ __forceinline__ void exp_and_stage_p(const float (&s)[16], float (&ls)[2], const float (&base)[2], float scale_log2,
                                                uint8_t* gP, int r0, int cq, int wg) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float nb = -base[h];
    const int r = r0 + 8 * h;
    ls[h] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float p0 = ex2_ftz(fmaf(s[4 * j + 2 * h], scale_log2, nb));
      const float p1 = ex2_ftz(fmaf(s[4 * j + 2 * h + 1], scale_log2, nb));
      ls[h] += p0 + p1;
      const int unit = 4 * wg + j;
      *reinterpret_cast<uint32_t*>(gP + r * 128 + ((unit ^ (r & 7)) * 16) + cq * 2) = ElemTraits<Elem>::pack(p0, p1);
    }
  }
  fence_proxy_async();
}

// ---------------------------------------------------------------------------------------------
// Split decode, wgmma path (v3). Q K^T is split by tokens: consumer warpgroup w computes S for
// tokens [32w, 32w + 32) of the block (m64n32k16), the two exchange row maxima through smem,
// write their half of P (bf16, 128B-swizzled, K-major) to smem, and both run P V with A = P
// from smem, each into its 256 of the 512 output columns. The producer warpgroup does all global
// traffic but the small stores: warp 8 loads the KV blocks by TMA, waiting on per-stage "empty"
// mbarriers (one arrival per consumer warp) and reading the block table ahead; warp 9 loads each
// sequence's Q tile by TMA as soon as the previous one's last Q K^T is done; warp 10 (v6) copies
// the staged O tiles out (o_store_warp). So the consumers never wait on global memory but for
// the TMA loads themselves, and need no end-of-block barrier.
// ---------------------------------------------------------------------------------------------
constexpr int kPBytes = kBlockM * kBlockN * 2;  // 8 KB
constexpr int kBarrierBytes = 256;  // the mbarriers below, 8 bytes each
static_assert((kStages * kChunks + kStages + 2 + 3 * kStages + 1) * 8 <= kBarrierBytes, "the kernel's mbarriers fit");
constexpr int kSmemBytes = kTileBytes * (1 + kStages) + kPBytes + kBarrierBytes + 512 /*max*/ +
                           512 /*sum*/ + 1024 /*align*/;
// desc_at's precondition: every operand address (the CTA's window, at most 1 KB reserved before
// the dynamic smem) fits the descriptor's 14-bit field of address >> 4.
static_assert(1024 + kSmemBytes <= (1 << 18), "smem operand addresses fit a wgmma descriptor");
constexpr int kThreadsV3 = kThreads + 128;  // + a producer warpgroup (one active thread)

// kDSplit (v6) changes Q K^T only: it is split by the 576 dims instead of the tokens, so that
// each warpgroup issues m64n64 products (v3's m64n32 read 1.5x the smem bytes per FLOP).
// Warpgroup 0 takes dims 0-287, warpgroup 1 dims 288-575; each holds one 64-dim chunk of Q in
// registers (warpgroup 0 its first, warpgroup 1 the rope chunk). Each writes the partial S of the
// other's 32 tokens to smem (float4 per thread and token group: conflict-free) and adds the
// other's after a barrier; from there on it is v3. The exchange needs 16 KB that the smem plan
// does not have, so it reuses what this split frees: Q's rope chunk in smem (warpgroup 0 writes
// there) and the stage's rope chunk, which only warpgroup 1's products read (warpgroup 1 writes
// there).
template <typename Elem, bool kDSplit>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_wgmma3_kernel(const __grid_constant__ CUtensorMap kv_map, const __grid_constant__ CUtensorMap q_map,
                         const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = base + kTileBytes;
  const uint32_t sP = base + kTileBytes * (1 + kStages);
  const uint32_t bar0 = sP + kPBytes;
  uint8_t* gQ = gbase;
  uint8_t* gKV0 = gbase + kTileBytes;
  uint8_t* gP = gbase + kTileBytes * (1 + kStages);
  float* sMax = reinterpret_cast<float*>(gP + kPBytes + kBarrierBytes);  // [2][64]
  float* sSum = sMax + 2 * kBlockM;                            // [2][64]

  const int tid = threadIdx.x;
  // provably warp-uniform, so that ptxas keeps the wgmma of each branch asynchronous (C7520)
  const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);
  const int lane = tid % 32;
  const int warp_in_wg = (tid % 128) / 32;
  const int part = blockIdx.x;
  const int tile = blockIdx.y;

  // bar0: a full barrier per chunk and stage (stage_full_bars)
  const uint32_t empty0 = stage_full_bars(bar0, kStages);  // consumer -> producer, one arrival per consumer warp
  const uint32_t q_full = empty0 + 8 * kStages, q_empty = q_full + 8;  // the Q tile's, likewise
  // per stage: the consumers' staged O tile is in it / has left it (stage_rows_16bit, o_store_warp)
  const uint32_t o_full0 = q_empty + 8, o_free0 = o_full0 + 8 * kStages;
  // (merge build) every consumer thread is done with the Q tile of a sequence merged in registers
  // (load_other_piece): the merge's bulk copies into the tile wait for each reader, not a warp's
  // lane 0, so that racecheck sees every read ordered before them. After the stage_peer_free ones.
  [[maybe_unused]] const uint32_t q_merge_free = o_free0 + 8 * 2 * kStages;
  DMLA_TRACE_NS(tid == 0, kTrEntryNs);
  DMLA_TRACE_COMBINE_RESET(tid == 0 && blockIdx.x == 0 && blockIdx.y == 0);
  DMLA_TRACE(tid == 0, kTrEntry);
  for (int j = 0; j < 8; ++j) DMLA_TRACE_VALUE(tid == 0, kTrSeq + 8 * j + kSeqLastWarp, 0);
  if (tid == 0) {
    for (int s = 0; s < kStages * kChunks; ++s) mbar_init(bar0 + 8 * s, 1);
    for (int s = 0; s < kStages; ++s) mbar_init(empty0 + 8 * s, kThreads / 32);
    mbar_init(q_full, 1);
    mbar_init(q_empty, kThreads / 32);
    for (int s = 0; s < kStages; ++s) mbar_init(o_full0 + 8 * s, kOFullArrivals);
    for (int s = 0; s < kStages; ++s) mbar_init(o_free0 + 8 * s, 32);
    for (int s = 0; s < kStages; ++s) mbar_init(stage_peer_free(o_free0, s), 1);  // KV multicast
#if DISTMLA_MERGE_IN_DECODE
    mbar_init(q_merge_free, kThreads);
#endif
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();
  // KV multicast: the peer's barriers exist before either CTA arrives on them or writes into it.
  if (p.kv_multicast) cluster_sync();

  pdl_wait();
  pdl_launch_dependents();
  DMLA_TRACE(tid == 0, kTrPdl);
  DMLA_TRACE_NS(tid == 0, kTrPdlNs);

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];
  if (seq_begin >= seq_end) return;

  if (tid >= kThreads) {
    // producer warpgroup: gives registers back; the KV thread runs ahead of the consumers by
    // kStages blocks, the Q thread by one sequence, off their critical path. 56: the store warp
    // works out each row's place in out (out_row); 128 x 56 + 256 x 224 fits the 64K registers.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
    if (tid == kThreads) {
      if (p.kv_multicast) kv_producer<kDSplit, true>(kv_map, p, sKV0, bar0, empty0, o_free0, part, seq_begin, seq_end);
      else kv_producer<kDSplit, false>(kv_map, p, sKV0, bar0, empty0, o_free0, part, seq_begin, seq_end);
    }
    if (tid == kThreads + 32) q_producer(q_map, sQ, q_full, q_empty, tile, seq_begin, seq_end);
    if (kDSplit && tid / 32 == kThreads / 32 + 2)
      o_store_warp<kDSplit>(p, sKV0, o_full0, o_free0, part, seq_begin, seq_end, lane);
#if DISTMLA_MERGE_IN_DECODE
    if (kDSplit && tid == kThreads + 32) {  // the Q producer, after its last Q tile
      const int i = seq_end - 1;
      if (part_merges_in_registers(p, i, part))
        load_other_piece(p, i, m.seq_split_base[i] + 1, tile, sQ, q_full, q_merge_free);
    }
#endif
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");

  uint32_t consumed = 0, nseq = 0;
  // This warp is done with the Q tile (its last Q K^T of the sequence has completed; v6: warpgroup
  // 0's exchange stores into chunk 8 are fenced against the TMA refill).
  auto release_q = [&] {
    fence_proxy_async();
    __syncwarp();
    if (lane == 0) mbar_arrive(q_empty);
  };
  const float NEG_INF = -INFINITY;
  // wgmma descriptors (low words) of the Q tile and the P tile (K-major), moved per product by desc_at
  const uint32_t dQ = desc_lo(sQ, 16), dP = desc_lo(sP, 16);
  const int r0 = warp_in_wg * 16 + lane / 4;
  const int cq = 2 * (lane % 4);

  // The schedule's entries of a sequence are read one sequence ahead, and its split's at its
  // start: global loads whose latency would otherwise sit between two sequences' blocks and at
  // the head of the epilogue.
  int nx_us = m.seq_ustart[seq_begin], nx_nb = m.seq_nblk[seq_begin], nx_L = m.seq_len[seq_begin];
  for (int i = seq_begin; i < seq_end; ++i) {
    const int L = nx_L;
    int a, e;
    part_block_range(nx_us, nx_nb, W, part, a, e);
    if (i + 1 < seq_end) {
      nx_us = m.seq_ustart[i + 1];
      nx_nb = m.seq_nblk[i + 1];
      nx_L = m.seq_len[i + 1];
    }
    [[maybe_unused]] const int ns = m.seq_nsplit[i];  // (the merge build's epilogue reads it too)
    const bool direct = ns <= 1;
    const int split_slot = part_split_slot(m, i, part);

    [[maybe_unused]] const bool tr = tid == 0 && nseq < 8;  // trace builds (decode_trace.cuh)
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqStart);
    mbar_wait(q_full, nseq & 1);
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqQReady);
    uint32_t qr[4][4];
    if (kDSplit) q_chunk_from_smem(qr, gQ + (wg == 0 ? 0 : 8) * kChunkBytes, r0, cq);
    // Before any write of this sequence: the previous one's reads of sP / sSum are complete, and
    // (v6) chunk 8 is read before warpgroup 0's first exchange store into it.
    consumer_sync();
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqSynced);

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int gr = tile * kBlockM + r0 + 8 * h;
      int t = gr / p.h_q;
      if (t >= p.s_q) t = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + t) : L;
    }

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float mrow[2] = {NEG_INF, NEG_INF};
    float lrow[2] = {0.f, 0.f};  // this warpgroup's token half only

    for (int n = a; n < e; ++n) {
      const int stage = consumed % kStages;
      const uint32_t sK = sKV0 + stage * kTileBytes;
      // the stage as Q K^T's K (K-major) and as this warpgroup's 256 columns of V (MN-major)
      const uint32_t dK = desc_lo(sK, 16), dV = desc_lo(sK + 4 * wg * kChunkBytes, kChunkBytes);
      const uint32_t full = stage_full_bars(bar0, stage), par = (consumed / kStages) & 1;
      const int valid = min(L - n * kBlockN, kBlockN);
      // v6 waits for each chunk right before its first product (qk_dsplit); v3, and a block
      // whose stale rows are zeroed first, wait for the whole block here.
      if (!kDSplit || valid < kBlockN) {
        for (int c = 0; c < kChunks; ++c) mbar_wait(full + 8 * c, par);
      }
      DMLA_TRACE(tid == 0 && consumed < 64, kTrBlkWait + consumed);
      if (valid < kBlockN) {
        uint8_t* gK = gKV0 + stage * kTileBytes;
        int nrows = kBlockN - valid;
        for (int idx = tid; idx < nrows * kChunks * 8; idx += kThreads) {
          int u = idx % 8;
          int c = (idx / 8) % kChunks;
          int r = valid + idx / (8 * kChunks);
          *reinterpret_cast<uint4*>(gK + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
        consumer_sync();
      }

      float s[16];
      if constexpr (kDSplit) {
        qk_dsplit<Elem>(s, qr, dQ, dK, full, par, gbase + 8 * kChunkBytes,
                        gKV0 + stage * kTileBytes + 8 * kChunkBytes, wg, tid % 128);
      } else {
        // ---- S_w = Q K[32w .. 32w+32)^T (64 x 32, K = 576) ----
#pragma unroll
        for (int k = 0; k < 16; ++k) s[k] = 0.f;
        wgmma_fence();
#pragma unroll
        for (int c = 0; c < kChunks; ++c) {
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const uint64_t da = desc_at(dQ, c * kChunkBytes + kk * 32);
            const uint64_t db = desc_at(dK, c * kChunkBytes + wg * 32 * 128 + kk * 32);
            ElemTraits<Elem>::qk32(s, da, db, 1);
          }
        }
        wgmma_commit();
        wgmma_wait0();
        reg_fence(s);
      }
      if (n == e - 1) release_q();
#if DISTMLA_MERGE_IN_DECODE
      // (a == 0: this part holds the first piece, see the epilogue)
      if (n == e - 1 && merges_in_registers(p, ns, a == 0 ? 0 : 1)) mbar_arrive(q_merge_free);
#endif

      // ---- mask, P at the running base, a vote; the maxima only when the vote asks ----
      // The base of a row's exponents (mrow, log2 domain) need not be its maximum, only shared by
      // both warpgroups and high enough that no P overflows. So each thread computes its P at the
      // base it has and the P barrier votes: only if some thread's row sum of the block exceeds
      // 2^8 (a score above the base by 5 or more; also inf / NaN: a sequence's first block,
      // whose base is -inf) do both warpgroups exchange the row maxima, move the base to the
      // maximum and compute P again (the exact path). Random scores never take it after the
      // first block. The mask only in a block that reaches past a row's last token; the scale
      // goes into the exponent's FMA. Each instruction cut from this chain shows (runs 54, 55).
      const int rel[2] = {lim[0] - (n * kBlockN + 32 * wg + cq), lim[1] - (n * kBlockN + 32 * wg + cq)};
      if (__any_sync(0xffffffffu, min(rel[0], rel[1]) < 32)) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              if (8 * j + x >= rel[h]) s[4 * j + 2 * h + x] = NEG_INF;
            }
          }
        }
      }
      float ls[2];
      exp_and_stage_p<Elem>(s, ls, mrow, p.scale_log2, gP, r0, cq, wg);
      if (!consumer_sync_any(!(ls[0] <= 256.f && ls[1] <= 256.f))) {
        lrow[0] += ls[0];
        lrow[1] += ls[1];
      } else {
        // the exact path: the row maxima of the raw S (scale > 0: scaled after), exchanged
        float ml[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int h = 0; h < 2; ++h) ml[h] = fmaxf(ml[h], fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 1));
          ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 2)) * p.scale_log2;
          if ((lane & 3) == 0) sMax[wg * kBlockM + r0 + 8 * h] = ml[h];
        }
        consumer_sync();
        // Both warpgroups see the same maxima, so they move the same bases.
        float corr[2];
        bool moved = false;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const float mx = fmaxf(ml[h], sMax[(1 - wg) * kBlockM + r0 + 8 * h]);
          corr[h] = 1.f;
          if (mx > mrow[h]) {  // also the first finite max (mrow -inf: corr 0)
            corr[h] = ex2_ftz(mrow[h] - mx);
            mrow[h] = mx;
            moved = true;
          }
        }
        // a row with no finite score yet keeps base -inf and takes its P (zeros) at base 0
        const float base[2] = {mrow[0] == NEG_INF ? 0.f : mrow[0], mrow[1] == NEG_INF ? 0.f : mrow[1]};
        exp_and_stage_p<Elem>(s, ls, base, p.scale_log2, gP, r0, cq, wg);
#pragma unroll
        for (int h = 0; h < 2; ++h) lrow[h] = lrow[h] * corr[h] + ls[h];
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
          for (int j = 0; j < 32; ++j) {
            o[4 * j + 0] *= corr[0];
            o[4 * j + 1] *= corr[0];
            o[4 * j + 2] *= corr[1];
            o[4 * j + 3] *= corr[1];
          }
        }
        consumer_sync();  // both halves of P are in smem
      }

      // ---- O += P V (64 x 256 per warpgroup, K = 64 tokens), A = P from smem ----
      reg_fence(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        ElemTraits<Elem>::pv_ss(o, desc_at(dP, kk * 32), desc_at(dV, kk * 16 * 128));
      }
      wgmma_commit();
      wgmma_wait0();
      reg_fence(o);

      // this warp is done with the stage: release it to the producer. No block-wide barrier is
      // needed for sP / sMax: the next writes of either happen after a barrier that both
      // warpgroups reach only after their reads (see docs/PERFORMANCE.md, v3).
      // v6: warpgroup 1 wrote its S exchange into the stage's rope chunk with generic stores;
      // the proxy fence orders them before the TMA writes of the refill (off the critical path
      // here, unlike right after the stores).
      DMLA_TRACE(tid == 0 && consumed < 64, kTrBlkDone + consumed);
      if (kDSplit && wg == 1) fence_proxy_async();
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * stage);
      ++consumed;
    }

    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqLoopEnd);
    if (a == e) release_q();  // no block of this sequence in this part

    // ---- epilogue: row sums of both halves ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lrow[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqSums);
    consumer_sync();
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqEpiSync);
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
    const size_t slot = static_cast<size_t>(split_slot);
    if (staged_epilogue<kDSplit>(p, a, e)) {
      const int last = (consumed - 1) % kStages;
#if DISTMLA_MERGE_IN_DECODE
      // A two-piece sequence whose first piece is this part's (a == 0; then it is the part's last
      // sequence, and its epilogue staged: the piece has a block, and merging needs 16-bit out):
      // the other piece's rows, on q_full's phase after this sequence's Q tile, merged in.
      float wb[2] = {0.f, 0.f};
      const bool merge = merges_in_registers(p, ns, a == 0 ? 0 : 1);
      if (merge) merge_weights(inv, lse_r, wb, sQ, q_full, (nseq + 1) & 1, r0);
      stage_rows_16bit<Elem, true>(p, o, inv, lse_r, tile, r0, wg, warp_in_wg, lane, sKV0 + last * kTileBytes,
                                   o_full0 + 8 * last, merge ? sQ : 0u, wb);
#else
      stage_rows_16bit<Elem>(p, o, inv, lse_r, tile, r0, wg, warp_in_wg, lane, sKV0 + last * kTileBytes,
                             o_full0 + 8 * last);
#endif
    } else {
      write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, direct, slot);
      if (!direct) {  // a split: counted for the combine once every thread's rows are written
        __threadfence();
        consumer_sync();
        if (tid == 0) atomicAdd(&m.split_ready[split_count_word(i, gridDim.y, tile)], 1);
      }
    }
    DMLA_TRACE(tr, kTrSeq + 8 * nseq + kSeqEnd);
    DMLA_TRACE_MAX(lane == 0 && nseq < 8, kTrSeq + 8 * nseq + kSeqLastWarp);
    ++nseq;
  }
  // (Build option DISTMLA_MERGE_IN_DECODE) The part's last sequence, if it is split in three or
  // more and its piece here ends the part: merge this CTA's share of its rows. The Q tile, the
  // stage without the staged O tile and the P tile are free now; q_full, armed once a sequence so
  // far, takes the merge's copies. (Its schedule entries are read again here rather than carried
  // through the block loop's registers.)
#if DISTMLA_MERGE_IN_DECODE
  if (kDSplit && p.merge_splits) {
    const int i = seq_end - 1, ns = m.seq_nsplit[i], k = part - m.seq_first_part[i];
    if (merges_split(p, ns, k)) {
      const int other = consumed % kStages;
      merge_split_rows<Elem>(p, i, tile, ns, m.seq_split_base[i], k, gQ, gKV0 + other * kTileBytes, q_full, nseq & 1,
                             reinterpret_cast<float*>(gP), tid);
    }
  }
#endif
  DMLA_TRACE(tid == 0, kTrExit);
  DMLA_TRACE_NS(tid == 0, kTrExitNs);
  DMLA_TRACE_VALUE(tid == 0, kTrSeqs, nseq);
  DMLA_TRACE_VALUE(tid == 0, kTrBlocks, consumed);
  }  // consumers
}

}  // namespace distmla::kernels::detail
