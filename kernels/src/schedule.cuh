#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The schedule kernel: splits the batch's 64-token blocks into equal parts on the GPU.
#include <cub/block/block_scan.cuh>

#include "decode_layout.cuh"
#include "ptx.cuh"

namespace distmla::kernels::detail {

constexpr int kSchedThreads = 1024;

__global__ void __launch_bounds__(kSchedThreads) schedule_kernel(const int32_t* __restrict__ seqlens,
                                                                 Meta m, int batch, int max_len,
                                                                 int num_parts) {
  pdl_launch_dependents();
  using Scan = cub::BlockScan<int, kSchedThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_carry;
  __shared__ int s_w;
  const int tid = threadIdx.x;
  if (tid == 0) s_carry = 0;
  __syncthreads();
  // pass 1: lengths, blocks, unit starts
  for (int base = 0; base < batch; base += kSchedThreads) {
    int i = base + tid;
    int units = 0;
    if (i < batch) {
      int L = seqlens[i];
      L = L < 0 ? 0 : (L > max_len ? max_len : L);
      int nblk = (L + kBlockN - 1) / kBlockN;
      m.seq_len[i] = L;
      m.seq_nblk[i] = nblk;
      units = nblk + kSeqOverhead;
    }
    int excl, agg;
    Scan(tmp).ExclusiveSum(units, excl, agg);
    if (i < batch) m.seq_ustart[i] = s_carry + excl;
    __syncthreads();
    if (tid == 0) s_carry += agg;
    __syncthreads();
  }
  if (tid == 0) {
    int total = s_carry;
    int w = (total + num_parts - 1) / num_parts;
    s_w = w < 1 ? 1 : w;
    m.hdr[0] = s_w;
    m.hdr[1] = total;
    m.hdr[3] = num_parts;
    s_carry = 0;
  }
  __syncthreads();
  const int W = s_w;
  // pass 2: parts touching each sequence, split bases
  for (int base = 0; base < batch; base += kSchedThreads) {
    int i = base + tid;
    int ns = 0;
    if (i < batch) {
      int us = m.seq_ustart[i];
      int nb = max(m.seq_nblk[i], 1);
      int pf = us / W;
      int pl = (us + nb - 1) / W;
      m.seq_first_part[i] = pf;
      ns = pl - pf + 1;
      m.seq_nsplit[i] = ns;
    }
    int excl, agg;
    Scan(tmp).ExclusiveSum(ns, excl, agg);
    if (i < batch) m.seq_split_base[i] = s_carry + excl;
    __syncthreads();
    if (tid == 0) s_carry += agg;
    __syncthreads();
  }
  if (tid == 0) m.hdr[2] = s_carry;
  __syncthreads();  // global writes above visible to the block
  // pass 3: sequence range of each part (first i with last_part >= p, first i with first_part > p)
  for (int p = tid; p < num_parts; p += kSchedThreads) {
    int lo = 0, hi = batch;
    while (lo < hi) {
      int mid = (lo + hi) >> 1;
      int pl = m.seq_first_part[mid] + m.seq_nsplit[mid] - 1;
      if (pl >= p) hi = mid; else lo = mid + 1;
    }
    int begin = lo;
    lo = begin;
    hi = batch;
    while (lo < hi) {
      int mid = (lo + hi) >> 1;
      if (m.seq_first_part[mid] > p) hi = mid; else lo = mid + 1;
    }
    m.part_begin[p] = begin;
    m.part_end[p] = lo;
  }
}

// Block range [a, e) of sequence i handled by part p.
__device__ __forceinline__ void part_block_range(const Meta& m, int W, int p, int i, int& a, int& e) {
  int us = m.seq_ustart[i];
  int nb = m.seq_nblk[i];
  a = max(p * W - us, 0);
  e = min((p + 1) * W - us, nb);
  if (e < a) e = a;
}

}  // namespace distmla::kernels::detail
