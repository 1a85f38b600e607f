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
  float mx = -INFINITY;
  for (int s = lane; s < ns; s += 32) mx = fmaxf(mx, m.part_lse[(base + s) * p.rows + gr]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
  if (mx != -INFINITY) {
    for (int s = lane; s < ns; s += 32) {
      float v = m.part_lse[(base + s) * p.rows + gr];
      sum += v == -INFINITY ? 0.f : __expf(v - mx);
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float lse = (mx == -INFINITY || !(sum > 0.f)) ? -INFINITY : mx + __logf(sum);
  float4 acc[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  if (lse != -INFINITY) {
    // kUnroll splits' loads in flight before their FMAs: a 2-4 way split is one memory round
    // trip instead of one per split (the kernel is latency-bound at these sizes).
    constexpr int kUnroll = 4;
    const float4* src0 = reinterpret_cast<const float4*>(m.part_o + (base * p.rows + gr) * kDV) + lane;
    const size_t split_stride = static_cast<size_t>(p.rows) * kDV / 4;  // float4s between splits
    for (int s0 = 0; s0 < ns; s0 += kUnroll) {
      float w[kUnroll];
      float4 x[kUnroll][4];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int s = s0 + u;
        const float v = s < ns ? m.part_lse[(base + s) * p.rows + gr] : -INFINITY;
        w[u] = v == -INFINITY ? 0.f : __expf(v - lse);  // weight zero: its o is never read
        if (w[u] != 0.f)
#pragma unroll
          for (int k = 0; k < 4; ++k) x[u][k] = __ldg(src0 + s * split_stride + 32 * k);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (w[u] == 0.f) continue;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          acc[k].x += w[u] * x[u][k].x;
          acc[k].y += w[u] * x[u][k].y;
          acc[k].z += w[u] * x[u][k].z;
          acc[k].w += w[u] * x[u][k].w;
        }
      }
    }
  }
  const OutRow dst = out_row(p, i, gr);
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
