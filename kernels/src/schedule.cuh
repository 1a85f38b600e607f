#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The schedule kernel: splits the batch's 64-token blocks into equal parts on the GPU.
#include <cub/block/block_scan.cuh>

#include "decode_layout.cuh"
#include "ptx.cuh"

namespace distmla::kernels::detail {

constexpr int kSchedThreads = 1024;
constexpr int kMaxPartCandidates = 8;  // part counts tried below num_parts
constexpr int kSplitCost = kSeqOverhead;  // a split's cost to its parts, in blocks
constexpr int kSchedSmemSeqs = 2048;      // batches up to this size search in smem

__global__ void __launch_bounds__(kSchedThreads) schedule_kernel(const int32_t* __restrict__ seqlens,
                                                                 Meta m, int batch, int max_len,
                                                                 int num_parts, int max_candidates) {
  pdl_launch_dependents();
  using Scan = cub::BlockScan<int, kSchedThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_carry;
  __shared__ int s_w;
  __shared__ int s_parts;
  __shared__ int s_splits[kMaxPartCandidates];
  __shared__ int s_ustart[kSchedSmemSeqs];
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
  // Number of parts: num_parts, or slightly fewer when that lets every cut fall between two
  // sequences. A cut inside a sequence costs a split (fp32 partials out and back through the
  // combine); the busiest part decides the kernel's time. Cost of P' parts: W' = ceil(total /
  // P') units per part, plus kSplitCost when some cut splits a sequence. For 128 sequences of
  // 18 units over 66 parts: 66 parts cost 35 + 2, 64 parts cost 36 with no split at all.
  const int total = s_carry;
  // P' = num_parts - k, k < ncand; a single candidate (the caller's choice where splits are
  // cheap, i.e. one row tile) skips the search and its ~2 us.
  const int ncand = min(min(num_parts, max_candidates), kMaxPartCandidates);
  if (tid < kMaxPartCandidates) s_splits[tid] = 0;
  // unit starts staged in smem (when they fit) for the binary searches below
  const bool staged = ncand > 1 && batch <= kSchedSmemSeqs;
  if (staged)
    for (int i = tid; i < batch; i += kSchedThreads) s_ustart[i] = m.seq_ustart[i];
  __syncthreads();
  const int* ustart = staged ? s_ustart : m.seq_ustart;
  for (int idx = tid; ncand > 1 && idx < ncand * num_parts; idx += kSchedThreads) {  // (k, cut q)
    const int k = idx / num_parts, q = idx % num_parts;
    const int pc = num_parts - k;
    const int wc = max((total + pc - 1) / pc, 1);
    const int x = q * wc;
    if (q == 0 || q >= pc || x >= total) continue;
    int lo = 0, hi = batch - 1;  // last sequence starting at or before x
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (ustart[mid] <= x) lo = mid; else hi = mid - 1;
    }
    const int us = ustart[lo];
    if (x > us && x < us + max(m.seq_nblk[lo], 1)) atomicAdd(&s_splits[k], 1);
  }
  __syncthreads();
  if (tid == 0) {
    int best = num_parts, best_cost = 0x7fffffff;
    for (int k = 0; k < ncand; ++k) {
      const int pc = num_parts - k;
      const int wc = max((total + pc - 1) / pc, 1);
      const int cost = wc + (s_splits[k] > 0 ? kSplitCost : 0);
      if (cost < best_cost) { best_cost = cost; best = pc; }  // ties keep more parts
    }
    s_parts = best;
    s_w = max((total + best - 1) / best, 1);
    m.hdr[0] = s_w;
    m.hdr[1] = total;
    m.hdr[3] = best;
    s_carry = 0;
  }
  __syncthreads();
  const int W = s_w;
  const int parts = s_parts;
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
    if (p >= parts) {  // grid.x stays num_parts: the CTAs past the chosen parts exit at once
      m.part_begin[p] = 0;
      m.part_end[p] = 0;
      continue;
    }
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
