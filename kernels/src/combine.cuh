#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The log-sum-exp combine of split sequences.
#include <cmath>

#include "decode_layout.cuh"
#include "ptx.cuh"

namespace distmla::kernels::detail {

// ---------------------------------------------------------------------------------------------
// Combine: merge the fp32 partials of split sequences by log-sum-exp (DESIGN.md section 3).
// grid (batch, ceil(rows * kQ / 8)): kQ warps a row, each over 512 / kQ columns, with 16 float4
// loads of a lane in flight (kVec columns x kGroup splits). kQ = 1 suits many sequences of a few
// splits; kQ = 4 a few sequences of many splits (one sequence over 66 parts: 5 round trips
// instead of 17). Launched with programmatic dependent launch.
// ---------------------------------------------------------------------------------------------
template <typename Elem, int kQ>
__global__ void __launch_bounds__(256) combine_kernel(const Params p) {
  constexpr int kVec = 4 / kQ;       // float4 a lane
  constexpr int kGroup = 4 * kQ;     // splits whose loads are in flight together
  pdl_wait();
  const Meta& m = p.meta;
  const int i = blockIdx.x;
  const int ns = m.seq_nsplit[i];
  if (ns <= 1) return;
  const int w = blockIdx.y * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gr = w / kQ, q = w % kQ;
  if (gr >= p.rows) return;
  const size_t base = static_cast<size_t>(m.seq_split_base[i]);
  // lane's columns: col(k) = q * 512 / kQ + 4 * (lane + 32 k), k < kVec
  const float4* src0 = reinterpret_cast<const float4*>(m.part_o + (base * p.rows + gr) * kDV + q * (kDV / kQ)) + lane;
  const size_t split_stride = static_cast<size_t>(p.rows) * kDV / 4;  // float4s between splits
  // Online log-sum-exp over groups of kGroup splits. A group's lse and o loads are issued
  // together (the o loads do not wait for the weights), so up to kGroup splits cost one memory
  // round trip: the kernel is latency-bound at these sizes.
  float mx = -INFINITY, sum = 0.f;  // running max of the lse and sum of exp(lse - mx)
  float4 acc[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s0 = 0; s0 < ns; s0 += kGroup) {
    float l[kGroup];
    float4 x[kGroup][kVec];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int s = s0 + u;
      l[u] = s < ns ? __ldcg(m.part_lse + (base + s) * p.rows + gr) : -INFINITY;
      if (s < ns)
#pragma unroll
        for (int k = 0; k < kVec; ++k) x[u][k] = __ldcg(src0 + s * split_stride + 32 * k);
    }
    float gm = mx;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) gm = fmaxf(gm, l[u]);
    if (gm == -INFINITY) continue;  // no tokens so far
    const float c = __expf(mx - gm);  // 0 while mx is still -inf
    sum *= c;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      acc[k].x *= c; acc[k].y *= c; acc[k].z *= c; acc[k].w *= c;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (l[u] == -INFINITY) continue;  // weight zero: its o is never used (may be anything)
      const float wt = __expf(l[u] - gm);
      sum += wt;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        acc[k].x += wt * x[u][k].x;
        acc[k].y += wt * x[u][k].y;
        acc[k].z += wt * x[u][k].z;
        acc[k].w += wt * x[u][k].w;
      }
    }
    mx = gm;
  }
  const bool empty = mx == -INFINITY || !(sum > 0.f);
  const float lse = empty ? -INFINITY : mx + __logf(sum);
  const float inv = empty ? 0.f : 1.f / sum;
  const SliceRowOffsets dst = out_row(p, i, gr);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const float4 a = make_float4(acc[k].x * inv, acc[k].y * inv, acc[k].z * inv, acc[k].w * inv);
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
}

}  // namespace distmla::kernels::detail
