#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The log-sum-exp combine of split sequences.
#include <cmath>

#include "decode_layout.cuh"
#include "ptx.cuh"

namespace distmla::kernels::detail {

// ---------------------------------------------------------------------------------------------
// Combine: merge the fp32 partials of split sequences by log-sum-exp (DESIGN.md section 3).
// grid (batch, ceil(rows / 8)), one warp per row; launched with programmatic dependent launch.
// ---------------------------------------------------------------------------------------------
template <typename Elem>
__global__ void __launch_bounds__(256) combine_kernel(const Params p) {
  pdl_wait();
  const Meta& m = p.meta;
  const int i = blockIdx.x;
  const int ns = m.seq_nsplit[i];
  if (ns <= 1) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int gr = blockIdx.y * 8 + warp;
  if (gr >= p.rows) return;
  const size_t base = static_cast<size_t>(m.seq_split_base[i]);
  const float4* src0 = reinterpret_cast<const float4*>(m.part_o + (base * p.rows + gr) * kDV) + lane;
  const size_t split_stride = static_cast<size_t>(p.rows) * kDV / 4;  // float4s between splits
  // Online log-sum-exp over groups of kGroup splits. A group's lse and o loads are issued
  // together (the o loads do not wait for the weights), so the usual 2-4 way split costs one
  // memory round trip: the kernel is latency-bound at these sizes.
  constexpr int kGroup = 4;
  float mx = -INFINITY, sum = 0.f;  // running max of the lse and sum of exp(lse - mx)
  float4 acc[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s0 = 0; s0 < ns; s0 += kGroup) {
    float l[kGroup];
    float4 x[kGroup][4];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      const int s = s0 + u;
      l[u] = s < ns ? __ldcg(m.part_lse + (base + s) * p.rows + gr) : -INFINITY;
      if (s < ns)
#pragma unroll
        for (int k = 0; k < 4; ++k) x[u][k] = __ldcg(src0 + s * split_stride + 32 * k);
    }
    float gm = mx;
#pragma unroll
    for (int u = 0; u < kGroup; ++u) gm = fmaxf(gm, l[u]);
    if (gm == -INFINITY) continue;  // no tokens so far
    const float c = __expf(mx - gm);  // 0 while mx is still -inf
    sum *= c;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      acc[k].x *= c; acc[k].y *= c; acc[k].z *= c; acc[k].w *= c;
    }
#pragma unroll
    for (int u = 0; u < kGroup; ++u) {
      if (l[u] == -INFINITY) continue;  // weight zero: its o is never used (may be anything)
      const float w = __expf(l[u] - gm);
      sum += w;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        acc[k].x += w * x[u][k].x;
        acc[k].y += w * x[u][k].y;
        acc[k].z += w * x[u][k].z;
        acc[k].w += w * x[u][k].w;
      }
    }
    mx = gm;
  }
  const bool empty = mx == -INFINITY || !(sum > 0.f);
  const float lse = empty ? -INFINITY : mx + __logf(sum);
  const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    acc[k].x *= inv; acc[k].y *= inv; acc[k].z *= inv; acc[k].w *= inv;
  }
  const SliceRowOffsets dst = out_row(p, i, gr);
  const size_t orow = dst.o;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int col = 4 * (lane + 32 * k);
    if (p.out_fp32) {
      *reinterpret_cast<float4*>(static_cast<float*>(p.out) + orow + col) = acc[k];
    } else {
      uint2 v;
      v.x = ElemTraits<Elem>::pack(acc[k].x, acc[k].y);
      v.y = ElemTraits<Elem>::pack(acc[k].z, acc[k].w);
      *reinterpret_cast<uint2*>(static_cast<uint16_t*>(p.out) + orow + col) = v;
    }
  }
  if (lane == 0) p.lse[dst.lse] = lse;
}

}  // namespace distmla::kernels::detail
