#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The CUDA-core split-decode kernel (debug / fallback).
#include <cmath>

#include "decode_layout.cuh"
#include "ptx.cuh"
#include "schedule.cuh"

namespace distmla::kernels::detail {

template <typename Elem>
__global__ void __launch_bounds__(256, 1) decode_simple_kernel(const Params p) {
  pdl_wait();
  pdl_launch_dependents();
  const Meta& m = p.meta;
  const int part = blockIdx.x, tile = blockIdx.y;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int W = m.hdr[0];
  const uint16_t* q = static_cast<const uint16_t*>(p.q);
  const uint16_t* kv = static_cast<const uint16_t*>(p.kv);
  for (int i = m.part_begin[part]; i < m.part_end[part]; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const int nsplit = m.seq_nsplit[i];
    const size_t slot = static_cast<size_t>(part_split_slot(m, i, part));
    for (int r = warp; r < kBlockM; r += 8) {
      const int gr = tile * kBlockM + r;
      if (gr >= p.rows) break;
      const int t = gr / p.h_q;
      const int lim = p.causal ? (L - p.s_q + 1 + t) : L;
      float qv[18];
#pragma unroll
      for (int k = 0; k < 18; ++k)
        qv[k] = ElemTraits<Elem>::to_float(q[(static_cast<size_t>(i) * p.rows + gr) * kDQK + lane + 32 * k]);
      float acc[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) acc[k] = 0.f;
      float mx = -INFINITY, l = 0.f;
      const int tend = min(e * kBlockN, lim);
      for (int tok = a * kBlockN; tok < tend; ++tok) {
        int lp = min(tok / p.page_size, p.max_blocks_per_seq - 1);
        int phys = p.block_table[static_cast<size_t>(i) * p.max_blocks_per_seq + lp];
        phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
        const uint16_t* row = kv + (static_cast<size_t>(phys) * p.page_size + tok % p.page_size) * kDQK;
        float dot = 0.f;
#pragma unroll
        for (int k = 0; k < 18; ++k) dot += qv[k] * ElemTraits<Elem>::to_float(row[lane + 32 * k]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        float sc = dot * p.scale_log2;
        float mn = fmaxf(mx, sc);
        float corr = exp2f(mx - mn);
        float pr = exp2f(sc - mn);
        l = l * corr + pr;
#pragma unroll
        for (int k = 0; k < 16; ++k) acc[k] = acc[k] * corr + pr * ElemTraits<Elem>::to_float(row[lane + 32 * k]);
        mx = mn;
      }
      float inv = l > 0.f ? 1.f / l : 0.f;
      float lse = l > 0.f ? (mx + log2f(l)) * 0.69314718055994530942f : -INFINITY;
      const RowDst d = row_dst(p, i, gr, nsplit <= 1, slot);
      if (lane == 0) *d.lse = lse;
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        if (p.out_fp32) {
          static_cast<float*>(d.base)[d.o + lane + 32 * k] = acc[k] * inv;
        } else {
          static_cast<uint16_t*>(d.base)[d.o + lane + 32 * k] = ElemTraits<Elem>::to_bits(acc[k] * inv);
        }
      }
    }
  }
}

}  // namespace distmla::kernels::detail
