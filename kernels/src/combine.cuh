#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The log-sum-exp combine of split sequences.
#include <cmath>
#include <type_traits>

#include "decode_layout.cuh"
#include "decode_trace.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

// ---------------------------------------------------------------------------------------------
// Combine: merge the partials of split sequences (Meta::part_o: fp32, or the 16-bit out type) by
// log-sum-exp (DESIGN.md section 3). grid (batch, ceil(rows * kQ / 8)): kQ warps a row, each over
// 512 / kQ columns. The weights come first, from the lse alone: lane s holds split s's lse (32
// splits a round), the warp reduces their max and sum, and a split's normalised weight is a
// shuffle from its lane, so the o loop is loads and FMAs only (run 36: rescaling per split and
// lane made the kernel issue-bound, 12 us at b 16 h_q 128). The first group's o loads are issued
// before the lse pass, so both round trips overlap; kGroup splits' loads are in flight together
// (kVec vectors of four a lane each). kQ = 1 suits many sequences of a few splits, kQ = 4 a few
// sequences of many (one sequence over 66 parts), kQ = 2 more such sequences than kQ = 4 fits
// in one wave (decode_sm90.cu). Launched with programmatic dependent launch.
// ---------------------------------------------------------------------------------------------
// The combine grid's x: a CTA column a sequence, or, with more sequences than the parts can split
// (each of the num_parts - 1 cuts between parts splits at most one), a column a cut (the schedule
// kernel writes which sequence each cut splits first: Meta::cut_info), so that sequences no cut
// splits cost no CTAs. Run 74: b 1024 h_q 128 launched 16384 CTAs for 65 split sequences, done
// ~20 us after the decode's last CTA; by cut (1040 CTAs) that row is 2% faster (run 75).
__host__ __device__ inline bool combine_by_cut(int batch, int num_parts) { return num_parts > 1 && batch >= num_parts; }

// Four partial values as loaded (fp32, or 16-bit Elem bits), and as floats. The loads only fill
// registers and the conversion comes at the use: a conversion right after each (conditional)
// load made every load wait for the previous one (run 36).
template <typename Part>
using PartVec = std::conditional_t<sizeof(Part) == 4, float4, uint2>;
template <typename Elem>
__device__ __forceinline__ float4 to_float4(const float4& v) { return v; }
template <typename Elem>
__device__ __forceinline__ float4 to_float4(const uint2& v) {
  using T = ElemTraits<Elem>;
  return make_float4(T::to_float(v.x & 0xFFFFu), T::to_float(v.x >> 16), T::to_float(v.y & 0xFFFFu),
                     T::to_float(v.y >> 16));
}

// The combine CTA (blockIdx.x = sequence i, rows of one row tile) waits until the decode CTAs
// have counted all ns splits of its row tile; the last CTA of the row tile past the wait resets
// both counters for the next call (whose decode starts after this grid is complete). A count
// that never comes (a bug) traps after 10 s instead of hanging the stream.
template <int kQ>
__device__ __forceinline__ void wait_for_splits(const Params& p, int i, int ns) {
  constexpr int kRowsPerCta = 8 / kQ;
  const int tile = blockIdx.y * kRowsPerCta / kBlockM;
  const int idx = split_count_word(i, (p.rows + kBlockM - 1) / kBlockM, tile);
  if (threadIdx.x == 0) {
    const int first = tile * kBlockM / kRowsPerCta;
    const int end = (min((tile + 1) * kBlockM, p.rows) + kRowsPerCta - 1) / kRowsPerCta;
    wait_split_count_and_reset(p.meta, idx, ns, end - first);  // the row tile's CTAs
  }
  __syncthreads();
}

// Part: float (fp32 out) or uint16_t (16-bit out), the partials' type (Meta::part_o).
template <typename Elem, int kQ, typename Part>
__global__ void __launch_bounds__(256) combine_kernel(const Params p) {
  constexpr int kVec = 4 / kQ;    // vectors of four values a lane
  // splits whose o loads are in flight together (divides 32); kQ 2: 4, which keeps it at 52
  // registers (4 CTAs an SM; 8 took 78)
  constexpr int kGroup = kQ == 2 ? 4 : 4 * kQ;
  using V = PartVec<Part>;
  const Meta& m = p.meta;
  int i = blockIdx.x;
  // With p.count_splits a CTA waits for this sequence's splits of its row tile only (their count,
  // Meta::split_ready), not for the whole decode grid: the splits that finish early are merged on
  // the SMs of the decode CTAs that are done, while the others still run. (The schedule it reads
  // was complete before the decode grid, and so this grid, started.) One CTA does wait for the
  // whole decode grid, so that this grid completes after it: what follows in the stream, a later
  // kernel's griddepcontrol.wait included, then finds the decode's writes complete too.
  if (!p.count_splits || (blockIdx.x == 0 && blockIdx.y == 0)) pdl_wait();
  int ns, split_base;
  if (combine_by_cut(p.batch, p.num_parts)) {  // the sequence whose first cut this is, if any
    const int4 c = m.cut_info[blockIdx.x];
    i = c.x;
    ns = c.y;
    split_base = c.z;
    if (i < 0) return;
  } else {
    ns = m.seq_nsplit[i];
    split_base = m.seq_split_base[i];
    if (ns <= 1) return;
  }
  if (p.count_splits) wait_for_splits<kQ>(p, i, ns);
  DMLA_TRACE_COMBINE(threadIdx.x == 0, false);
  const int w = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gr = w / kQ, q = w % kQ;
  if (gr >= p.rows) return;
  const size_t base = static_cast<size_t>(split_base);
  const float* lse_in = m.part_lse + base * p.rows + gr;  // split s at s * rows
  // vector k of this lane: columns q * 512 / kQ + 4 * (lane + 32 k); split s at s * split_stride
  const V* o_in = reinterpret_cast<const V*>(static_cast<const Part*>(m.part_o) + (base * p.rows + gr) * kDV +
                                             q * (kDV / kQ) + 4 * lane);
  const size_t split_stride = static_cast<size_t>(p.rows) * kDV / 4;
  V x[kGroup][kVec];
  auto load_group = [&](int s0) {
#pragma unroll
    for (int u = 0; u < kGroup; ++u)
      if (s0 + u < ns)
#pragma unroll
        for (int k = 0; k < kVec; ++k) x[u][k] = __ldcg(o_in + (s0 + u) * split_stride + 32 * k);
  };
  auto lse_of = [&](int s) { return s < ns ? __ldcg(lse_in + static_cast<size_t>(s) * p.rows) : -INFINITY; };
  load_group(0);

  // Max and sum of exp(lse - max) over the splits: lane holds splits lane + 32 r for r < kRounds
  // (loaded together: one round trip up to 128 splits); more splits (up to kMaxParts) are
  // reloaded round by round.
  constexpr int kRounds = 4;
  float l[kRounds];
#pragma unroll
  for (int r = 0; r < kRounds; ++r) l[r] = lse_of(32 * r + lane);
  auto lse_round = [&](int r) {  // r: a warp-uniform round
    float v = r >= kRounds ? lse_of(32 * r + lane) : l[0];
#pragma unroll
    for (int k = 1; k < kRounds; ++k) v = r == k ? l[k] : v;
    return v;
  };
  float mx = -INFINITY;
#pragma unroll
  for (int r = 0; r < kRounds; ++r) mx = fmaxf(mx, l[r]);
  for (int s0 = 32 * kRounds; s0 < ns; s0 += 32) mx = fmaxf(mx, lse_of(s0 + lane));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
  if (mx != -INFINITY) {  // else no split has a token
    for (int r = 0; 32 * r < ns; ++r) sum += __expf(lse_round(r) - mx);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  }
  const bool empty = mx == -INFINITY || !(sum > 0.f);
  const float inv = empty ? 0.f : 1.f / sum;

  float4 acc[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  float wl = 0.f;  // this lane's split's weight in the current round of 32
  for (int s0 = 0; s0 < ns; s0 += kGroup) {
    if (s0 > 0) load_group(s0);
    if (s0 % 32 == 0) {
      const float ls = lse_round(s0 / 32);
      wl = ls == -INFINITY ? 0.f : __expf(ls - mx) * inv;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const float wt = __shfl_sync(0xffffffffu, wl, s0 % 32 + u);
      if (s0 + u >= ns || !(wt > 0.f)) continue;  // weight zero: its o is never read (may be NaN)
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const float4 v = to_float4<Elem>(x[u][k]);
        acc[k].x += wt * v.x;
        acc[k].y += wt * v.y;
        acc[k].z += wt * v.z;
        acc[k].w += wt * v.w;
      }
    }
  }
  const float lse = empty ? -INFINITY : mx + __logf(sum);
  const SliceRowOffsets dst = out_row(p, i, gr);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const float4 a = acc[k];
    const int col = q * (kDV / kQ) + 4 * (lane + 32 * k);
    if (p.out_fp32) {
      *reinterpret_cast<float4*>(static_cast<float*>(p.out) + dst.o + col) = a;
    } else {
      uint2 v;
      v.x = ElemTraits<Elem>::pack(a.x, a.y);
      v.y = ElemTraits<Elem>::pack(a.z, a.w);
      *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p.out) + dst.o + col) = v;
    }
  }
  if (q == 0 && lane == 0) p.lse[dst.lse] = lse;
  DMLA_TRACE_COMBINE(lane == 0, true);
}

}  // namespace distmla::kernels::detail
