#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The wgmma kernels' epilogue: rows from registers (write_rows), or staged in the smem stage of
// the sequence's last KV block and copied out by the store warp (stage_rows_16bit, o_store_warp).
#include "decode_layout.cuh"
#include "decode_trace.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

// Epilogue of the wgmma kernels: this warpgroup's 256 output columns of rows r0 and r0 + 8,
// normalised by inv; straight to out/lse when the sequence has one split, else to the partials.
template <typename Elem>
__device__ __forceinline__ void write_rows(const Params& p, const float (&o)[128], const float (&inv)[2],
                                           const float (&lse_r)[2], int i, int tile, int r0, int cq, int wg,
                                           int lane, bool direct, size_t slot) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int gr = tile * kBlockM + r0 + 8 * h;
    if (gr >= p.rows) continue;
    const RowDst d = row_dst(p, i, gr, direct, slot);
    const size_t orow = d.o + wg * 256 + cq;  // this thread's first column
    if (p.out_fp32) {
      float* out = static_cast<float*>(d.base) + orow;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<float2*>(out + 8 * j) = make_float2(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      }
    } else {
      uint32_t* out = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(d.base) + orow);
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        out[4 * j] = ElemTraits<Elem>::pack(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      }
    }
    if (wg == 0 && (lane % 4) == 0) *d.lse = lse_r[h];
  }
}

// Epilogue for 16-bit out (a sequence's rows of out, or a split's rows of the partials), through
// the smem stage of its last KV block: every consumer thread puts its normalised rows there with
// stmatrix (rows of kORowBytes, 16 bytes of padding so that the 8 rows a stmatrix matrix writes
// hit distinct banks; a row's lse goes into its padding) and its warp arrives on the stage's
// o_full barrier; the store warp (o_store_warp) copies the rows out and writes the lse.
// Runs 27-28: written from registers, the stores held the consumers 2-4.5 us a 64-row tile, and
// with the bulk copies issued and awaited by the consumers themselves 3.3 us.
// v6 only (v3's consumers spill with it).
template <bool kDSplit>
__device__ __forceinline__ bool staged_epilogue(const Params& p, int a, int e) {
  return kDSplit && !p.out_fp32 && e > a;
}
constexpr int kORowBytes = kDV * 2 + 16;
constexpr int kOFullArrivals = 4 * 8 + 4;  // stage_rows_16bit's arrivals on o_full
static_assert(kBlockM * kORowBytes <= kTileBytes, "the staged O tile must fit a KV stage");
// kMerge (a two-piece sequence merged in the decode, decode_merge.cuh), when s_other is set: each
// value is o inv plus the other piece's value times wb[h], its rows at s_other in the staged
// layout (ldmatrix, the stmatrix in reverse). (Branched a 16-byte group: the same in a second
// rolled pass over the staged values, or in a branch around the whole loop, made ptxas spill;
// run 87.)
template <typename Elem, bool kMerge = false>
__device__ __forceinline__ void stage_rows_16bit(const Params& p, const float (&o)[128], const float (&inv)[2],
                                                 const float (&lse_r)[2], int tile, int r0, int wg, int warp_in_wg,
                                                 int lane, uint32_t s_stage, uint32_t o_full_bar,
                                                 uint32_t s_other = 0, const float (&wb)[2] = {0.f, 0.f}) {
  // stmatrix v covers groups j = 2v, 2v + 1: matrix k is (group 2v + k / 2, row half k % 2), and
  // this lane gives row lane % 8 of matrix lane / 8. A warp with no valid row skips it.
  if (tile * kBlockM + warp_in_wg * 16 < p.rows) {
    const int mk = lane / 8;
    const uint32_t row_addr =
        s_stage + (warp_in_wg * 16 + 8 * (mk % 2) + lane % 8) * kORowBytes + (wg * 256 + 8 * (mk / 2)) * 2;
#pragma unroll
    for (int v = 0; v < 16; ++v) {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int j = 2 * v + k / 2, h = k % 2;
        w[k] = ElemTraits<Elem>::pack(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      }
      if (kMerge && s_other != 0) {
        using T = ElemTraits<Elem>;
        uint32_t x[4];
        ldmatrix_x4(row_addr - s_stage + s_other + v * 32, x);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int j = 2 * v + k / 2, h = k % 2;
          w[k] = T::pack(fmaf(T::to_float(x[k] & 0xFFFFu), wb[h], o[4 * j + 2 * h] * inv[h]),
                         fmaf(T::to_float(x[k] >> 16), wb[h], o[4 * j + 2 * h + 1] * inv[h]));
        }
      }
      stmatrix_x4(row_addr + v * 32, w[0], w[1], w[2], w[3]);
    }
  }
  DMLA_TRACE(threadIdx.x == 0, kTrEpiStm);
  // The rows' lse into their padding (warpgroup 0, a lane of four): the store warp, which works
  // out where each row goes, writes it (run 56: a table of row offsets handed over in smem cost
  // the consumers 0.5-0.7 us a tile; computing the lse's own destination here cost ~0.45 us).
  if (wg == 0 && lane % 4 == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) st_shared_f32(s_stage + (r0 + 8 * h) * kORowBytes + kDV * 2, lse_r[h]);
  }
  DMLA_TRACE(threadIdx.x == 0, kTrEpiRows);
  fence_proxy_async();  // the generic stmatrix writes, before the bulk copies read them
  __syncwarp();
  // A warp's stmatrix rows reach the store warp through lane 0's arrive (after __syncwarp); each
  // lane that stored an lse arrives itself too, which is what racecheck follows (run 61): lanes
  // 0, 4, .., 28 of warpgroup 0's warps and lane 0 of warpgroup 1's, kOFullArrivals in all.
  if (wg == 0 ? lane % 4 == 0 : lane == 0) mbar_arrive(o_full_bar);
  DMLA_TRACE(threadIdx.x == 0, kTrEpiArrive);
}

// The store warp (warp 10, in the producer warpgroup): for each sequence of the part whose
// epilogue is staged, waits for the consumers' O tile in the stage of its last block (o_full),
// copies the tile's valid rows to out or to the split's partials with bulk copies (two rows a
// lane) and their lse from the rows' padding, and frees the stage for the producer once the copies
// have read it (o_free, an arrival a lane); a split is then counted for the combine once its rows
// are written. Before exiting it waits for its copies' writes.
template <bool kDSplit>
__device__ __forceinline__ void o_store_warp(const Params& p, uint32_t sKV0, uint32_t o_full0, uint32_t o_free0,
                                             int part, int seq_begin, int seq_end, int lane) {
  const Meta& m = p.meta;
  const int W = m.hdr[0];
  uint32_t blocks = 0, parity = 0;  // blocks of the part so far; bit s: parity of stage s's next o_full
  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    blocks += e - a;
    if (!staged_epilogue<kDSplit>(p, a, e)) continue;
#if DISTMLA_MERGE_IN_DECODE
    // (a two-piece sequence merged in this part's registers goes straight to out)
    const bool direct = m.seq_nsplit[i] <= 1 || part_merges_in_registers(p, i, part);
#else
    const bool direct = m.seq_nsplit[i] <= 1;
#endif
    const size_t slot = direct ? 0 : part_split_slot(m, i, part);
    const int s = (blocks - 1) % kStages;
    mbar_wait(o_full0 + 8 * s, parity >> s & 1);
    DMLA_TRACE(lane == 0 && i == seq_begin, kTrStoreFull);
    parity ^= 1u << s;
    const uint32_t tile_base = sKV0 + s * kTileBytes;
#pragma unroll
    for (int r = lane; r < kBlockM; r += 32) {
      const int gr = blockIdx.y * kBlockM + r;  // row tile blockIdx.y
      if (gr < p.rows) {
        const RowDst d = row_dst(p, i, gr, direct, slot);
        bulk_store(static_cast<uint16_t*>(d.base) + d.o, tile_base + r * kORowBytes, kDV * 2);
        *d.lse = ld_shared_f32(tile_base + r * kORowBytes + kDV * 2);
      }
    }
    bulk_commit();
    bulk_wait_read();
    DMLA_TRACE(lane == 0 && i == seq_begin, kTrStoreRead);
    fence_proxy_async();           // its lse reads, before the refill's TMA writes
    mbar_arrive(o_free0 + 8 * s);  // every lane, once its own copies have read the stage
    if (!direct) {  // a split: counted for the combine once its rows and lse are written
      bulk_wait();
      fence_proxy_async_global();
      __threadfence();
      __syncwarp();
      if (lane == 0) atomicAdd(&m.split_ready[split_count_word(i, gridDim.y, blockIdx.y)], 1);
    }
  }
  bulk_wait();
  DMLA_TRACE_NS(lane == 0, kTrStoreNs);
}

}  // namespace distmla::kernels::detail
