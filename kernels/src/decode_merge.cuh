#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The merge of a split sequence's partials inside the decode kernel (dsplit, 16-bit out), which
// spares the step the combine kernel and its kernel boundary (run 82: 1.5 us a call at h_q 128
// even when nothing is split). Compiled in only with -DDISTMLA_MERGE_IN_DECODE=ON (who merges:
// merges_in_registers, merges_split in schedule.cuh). Run 86 merged every split by row shares
// after the kernel's last sequence: 1.9 us faster where nothing is split, 0.5-6% slower where
// sequences are split in two; run 87 merges a two-piece sequence in registers instead.
#include <cmath>

#include "decode_epilogue.cuh"
#include "decode_layout.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

// ---- Two pieces (merges_in_registers) ----
// The Q producer thread of the first part of two-piece sequence i (its last), once it has loaded
// that Q tile: once every consumer thread is done with the tile (merge_free) and the other
// piece's partial (split `slot`) is counted, loads that partial's valid rows of row tile
// `tile` into the Q tile at the staged-O pitch (bulk copies) and their lse into the rows' padding
// (cp.async), all on q_full's next phase. The other piece is the first sequence of the next part,
// so it is usually written long before this part ends. (One thread: spread over the warp, the
// same copies made ptxas spill the consumers' registers.)
__device__ __forceinline__ void load_other_piece(const Params& p, int i, int slot, int tile, uint32_t sQ,
                                                 uint32_t q_full, uint32_t merge_free) {
  const Meta& m = p.meta;
  mbar_wait(merge_free, 0);  // its only phase
  wait_split_count_and_reset(m, split_count_word(i, gridDim.y, tile), 1, 1);  // its only reader
  fence_proxy_async_global();  // the acquire, before the async proxy reads the partial
  const int valid = min(kBlockM, p.rows - tile * kBlockM);
  const size_t row0 = static_cast<size_t>(slot) * p.rows + static_cast<size_t>(tile) * kBlockM;
  for (int r = 0; r < valid; ++r) cp_async_4(sQ + r * kORowBytes + kDV * 2, m.part_lse + row0 + r);
  cp_async_arrive(q_full);
  mbar_arrive_expect_tx(q_full, static_cast<uint32_t>(valid * kDV * 2));
  const uint16_t* part_o = static_cast<const uint16_t*>(m.part_o);
  for (int r = 0; r < valid; ++r) bulk_load(sQ + r * kORowBytes, part_o + (row0 + r) * kDV, kDV * 2, q_full);
}

// The consumers of that part, before their staged epilogue of sequence i: the weights of the
// two pieces (DESIGN.md section 3) for this thread's rows r0, r0 + 8, from this piece's lse_r and
// the other's (in its rows' padding in sbuf, load_other_piece; q_full's phase `parity`). inv
// becomes this piece's scale, wb the other's, and lse_r the merged lse: stage_rows_16bit<Elem,
// true> then stages the merged rows.
__device__ __forceinline__ void merge_weights(float (&inv)[2], float (&lse_r)[2], float (&wb)[2], uint32_t sbuf,
                                              uint32_t bar, uint32_t parity, int r0) {
  mbar_wait(bar, parity);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float la = lse_r[h], lb = ld_shared_f32(sbuf + (r0 + 8 * h) * kORowBytes + kDV * 2);
    const float mx = fmaxf(la, lb);
    wb[h] = 0.f;
    if (mx == -INFINITY) {  // no token in either piece: lse -inf, zeros
      inv[h] = 0.f;
    } else {
      const float ea = __expf(la - mx), eb = __expf(lb - mx), is = 1.f / (ea + eb);
      inv[h] *= ea * is;
      wb[h] = eb * is;
      lse_r[h] = mx + __logf(ea + eb);
    }
  }
}

// ---- More pieces (merges_split): row shares after the part's last sequence ----
// The merge buffers: the Q tile and the KV stage that holds no staged O tile are free once the
// part's last sequence is done (no further Q, no further block); kMergeRows rows of 1 KB.
constexpr int kMergeRows = 2 * kTileBytes / (kDV * 2);  // 144
// The host merges in the decode only when num_parts (an upper bound of ns) keeps a participant's
// ns * ceil(64 / (ns - 1)) rows within kMergeRows (decode_sm90.cu).
__host__ __device__ constexpr bool merge_fits(int num_parts) { return num_parts <= kMergeRows; }
constexpr bool merge_rows_fit() {
  for (int ns = 2; ns <= kMergeRows; ++ns)
    if (ns * ((kBlockM + ns - 2) / (ns - 1)) > kMergeRows) return false;
  return true;
}
static_assert(merge_rows_fit(), "every participant's rows of every split fit the two merge buffers");

// Step 3 of merge_split_rows for loaded row j (global row gr of sequence i): its splits'
// log-sum-exp weights (DESIGN.md section 3), normalised, into sW[kMergeRows + s * nr + j] (from
// the lse at sW[s * nr + j]; 0 for a split without tokens), and its lse to p.lse. kWarp: the 32
// lanes of a warp share the row, lane taking splits lane, lane + 32, ..; else one thread.
template <bool kWarp>
__device__ __forceinline__ void merge_row_weights(const Params& p, int i, int gr, float* sW, int nr, int ns, int j,
                                                  int lane) {
  const int s0 = kWarp ? lane : 0, ds = kWarp ? 32 : 1;
  float mx = -INFINITY;
#pragma unroll 1
  for (int s = s0; s < ns; s += ds) mx = fmaxf(mx, sW[s * nr + j]);
  if (kWarp) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  }
  float sum = 0.f;
  if (mx != -INFINITY)
#pragma unroll 1
    for (int s = s0; s < ns; s += ds) sum += __expf(sW[s * nr + j] - mx);
  if (kWarp) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  const bool empty = mx == -INFINITY || !(sum > 0.f);
  const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll 1
  for (int s = s0; s < ns; s += ds) {
    const float l = sW[s * nr + j];
    sW[kMergeRows + s * nr + j] = empty || l == -INFINITY ? 0.f : __expf(l - mx) * inv;
  }
  if (!kWarp || lane == 0) p.lse[out_row(p, i, gr).lse] = empty ? -INFINITY : mx + __logf(sum);
}

// The consumers (256 threads, tid) of a participant (see above) after their last sequence i's
// staged epilogue: wait for the ns partials of row tile `tile`, load the participant's rows of
// each into smem (bulk copies on mbarrier `bar`, phase `parity`), then per row the log-sum-exp
// weights (DESIGN.md section 3) and the merged row to out / lse. buf0, buf1: the two merge
// buffers; sW: 2 * kMergeRows floats of smem (the lse, then the weights, of each loaded row).
static_assert(2 * kMergeRows * sizeof(float) <= kBlockM * kBlockN * 2, "sW fits the P tile");
template <typename Elem>
__device__ __forceinline__ void merge_split_rows(const Params& p, int i, int tile, int ns, int split_base, int k,
                                                 uint8_t* buf0, uint8_t* buf1, uint32_t bar, uint32_t parity,
                                                 float* sW, int tid) {
  const Meta& m = p.meta;
  const int word = split_count_word(i, gridDim.y, tile);
  // 1. All ns partials written; the last participant past this wait resets both counts.
  if (tid == 0) wait_split_count_and_reset(m, word, ns, ns - 1);  // participants 0 .. ns - 2
  consumer_sync();
  // 2. This participant's share of the tile's valid rows.
  const int valid = min(kBlockM, p.rows - tile * kBlockM);
  const int r_lo = valid * k / (ns - 1), nr = valid * (k + 1) / (ns - 1) - r_lo;  // rows merged here
  if (nr == 0) return;
  // Loaded row x = s * nr + j (split s, row r_lo + j) goes to buffer row x (buf0, then buf1).
  auto buf_row = [&](int x) {
    return x < kMergeRows / 2 ? buf0 + x * kDV * 2 : buf1 + (x - kMergeRows / 2) * kDV * 2;
  };
  const int loads = ns * nr;
  const size_t row0 = static_cast<size_t>(tile) * kBlockM + r_lo;
  const uint16_t* part_o = static_cast<const uint16_t*>(m.part_o);
  if (tid < 32) {
    if (tid == 0) mbar_arrive_expect_tx(bar, static_cast<uint32_t>(loads * kDV * 2));
    fence_proxy_async_global();  // the acquire above, before the async proxy reads the partials
    __syncwarp();
#pragma unroll 1
    for (int x = tid; x < loads; x += 32) {
      const int s = x / nr, j = x % nr;
      const uint16_t* src = part_o + ((static_cast<size_t>(split_base) + s) * p.rows + row0 + j) * kDV;
      bulk_load(smem_u32(buf_row(x)), src, kDV * 2, bar);
    }
  }
  // the lse of every loaded row, while the copies fly
#pragma unroll 1
  for (int x = tid; x < loads; x += kThreads) {
    const int s = x / nr, j = x % nr;
    sW[x] = __ldcg(m.part_lse + (static_cast<size_t>(split_base) + s) * p.rows + row0 + j);
  }
  consumer_sync();
  // 3. Weights of each row's splits (normalised) and its lse, written to lse: a thread a row for
  // a few splits, a warp a row (lanes over the splits) for more.
  // (The loops stay rolled where they may: this code runs once a kernel, and its size costs the
  // block loop; run 80a.)
  constexpr int kFew = 8;
  if (ns <= kFew) {
#pragma unroll 1
    for (int j = tid; j < nr; j += kThreads) merge_row_weights<false>(p, i, static_cast<int>(row0) + j, sW, nr, ns, j, 0);
  } else {
#pragma unroll 1
    for (int j = tid / 32; j < nr; j += kThreads / 32)
      merge_row_weights<true>(p, i, static_cast<int>(row0) + j, sW, nr, ns, j, tid % 32);
  }
  consumer_sync();
  mbar_wait(bar, parity);
  // 4. The rows: 64 groups of 8 values a row, a thread a group, weights from smem; four splits'
  // loads in flight at a time (a weight of zero selects 0: its values may be NaN).
  using T = ElemTraits<Elem>;
#pragma unroll 1
  for (int x = tid; x < nr * (kDV / 8); x += kThreads) {
    const int j = x / (kDV / 8), g = x % (kDV / 8);
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll 4
    for (int s = 0; s < ns; ++s) {
      const float w = sW[kMergeRows + s * nr + j];
      const uint4 v = *reinterpret_cast<const uint4*>(buf_row(s * nr + j) + g * 16);
      const uint32_t u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float a = T::to_float(u[q] & 0xFFFFu), b = T::to_float(u[q] >> 16);
        acc[2 * q] += w > 0.f ? w * a : 0.f;
        acc[2 * q + 1] += w > 0.f ? w * b : 0.f;
      }
    }
    uint4 o;
    o.x = T::pack(acc[0], acc[1]);
    o.y = T::pack(acc[2], acc[3]);
    o.z = T::pack(acc[4], acc[5]);
    o.w = T::pack(acc[6], acc[7]);
    const SliceRowOffsets d = out_row(p, i, static_cast<int>(row0) + j);
    *reinterpret_cast<uint4*>(static_cast<uint16_t*>(p.out) + d.o + g * 8) = o;
  }
}

}  // namespace distmla::kernels::detail
