#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// The schedule kernel: splits the batch's 64-token blocks into equal parts on the GPU.
#include <cub/block/block_scan.cuh>

#include "decode_layout.cuh"
#include "globaltimer.cuh"
#include "ptx.cuh"

namespace distmla::kernels::detail {

constexpr int kSchedThreads = 1024;
constexpr int kMaxPartCandidates = 8;  // part counts tried below num_parts
constexpr int kSplitCost = kSeqOverhead;  // a split's cost to its parts, in blocks

// floor(x / d) for x >= 0, d >= 1: below 2^24 through the fp32 reciprocal with a one-step
// fix-up (an integer division is a ~20-instruction dependent sequence).
__device__ __forceinline__ int floor_div(int x, int d) {
  if (x >= (1 << 24)) return x / d;
  int q = __float2int_rz(__int2float_rn(x) * __frcp_rn(__int2float_rn(d)));
  if (q * d > x) --q;
  else if ((q + 1) * d <= x) ++q;
  return q;
}

__global__ void __launch_bounds__(kSchedThreads) schedule_kernel(const int32_t* __restrict__ seqlens,
                                                                 Meta m, int batch, int max_len,
                                                                 int num_parts, int num_tiles) {
  pdl_launch_dependents();
  for (int k = threadIdx.x; k < batch * num_tiles; k += kSchedThreads) {  // this call's split counts
    m.split_ready[k] = 0;
    m.combine_done[k] = 0;
  }
  using Scan = cub::BlockScan<int, kSchedThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int s_carry;
  __shared__ int s_w;
  __shared__ int s_parts;
  __shared__ int s_splits[kMaxPartCandidates];
  __shared__ int s_wc[kMaxPartCandidates];
  __shared__ int s_begin[kMaxParts], s_end[kMaxParts];  // each part's sequence range
  const int tid = threadIdx.x;
  if (tid == 0) s_carry = 0;
  for (int p = tid; p < num_parts; p += kSchedThreads) {
    s_begin[p] = 0x7fffffff;
    s_end[p] = 0;
    m.cut_info[p] = make_int4(-1, 0, 0, 0);  // a cut splits no sequence until pass 2 says so
  }
  __syncthreads();
  // pass 1: lengths, blocks, unit starts (those of sequence tid also kept in registers)
  int my_us = 0, my_nb = 0;
  for (int base = 0; base < batch; base += kSchedThreads) {
    int i = base + tid;
    int units = 0, nblk = 0;
    if (i < batch) {
      int L = seqlens[i];
      L = L < 0 ? 0 : (L > max_len ? max_len : L);
      nblk = (L + kBlockN - 1) / kBlockN;
      m.seq_len[i] = L;
      m.seq_nblk[i] = nblk;
      units = nblk + kSeqOverhead;
    }
    int excl, agg;
    Scan(tmp).ExclusiveSum(units, excl, agg);
    if (base == 0) {
      my_us = s_carry + excl;
      my_nb = nblk;
    }
    if (i < batch) m.seq_ustart[i] = s_carry + excl;
    __syncthreads();
    if (tid == 0) s_carry += agg;
    __syncthreads();
  }
  // Number of parts: num_parts, or slightly fewer when that lets every cut fall between two
  // sequences. A cut inside a sequence costs a split (partials out and back through the
  // combine); the busiest part decides the kernel's time. Cost of P' parts: W' = ceil(total /
  // P') units per part, plus kSplitCost when some cut splits a sequence. For 128 sequences of
  // 18 units over 66 parts: 66 parts cost 35 + 2, 64 parts cost 36 with no split at all; for 128
  // sequences of 34 units over 132 parts (one row tile): 33 + 2 against 34 on 128 parts.
  const int total = s_carry;
  // P' = num_parts - k, k < ncand. A cut x splits sequence i when us_i < x < us_i + nblk_i
  // (a cut among its overhead units splits no blocks), so sequence i is split by P' parts when a
  // multiple of W' lies in [us_i + 1, us_i + nblk_i - 1]: one floor_div a sequence and candidate.
  // The search costs ~1.2 us of the kernel's ~5 (run 25).
  const int ncand = min(num_parts, kMaxPartCandidates);
  if (tid < ncand) {
    const int pc = num_parts - tid;
    s_wc[tid] = max((total + pc - 1) / pc, 1);
    s_splits[tid] = 0;
  }
  __syncthreads();
  for (int i = tid; ncand > 1 && i < batch; i += kSchedThreads) {
    const int us = i == tid ? my_us : m.seq_ustart[i], nb = i == tid ? my_nb : m.seq_nblk[i];
    if (nb < 2) continue;
    for (int k = 0; k < ncand; ++k) {
      // split iff the first multiple of wc above us is below us + nb (exact: floor_div)
      const int wc = s_wc[k];
      if ((floor_div(us, wc) + 1) * wc < us + nb) s_splits[k] = 1;  // benign race: only "> 0" matters
    }
  }
  __syncthreads();
  if (tid == 0) {
    int best = num_parts, best_cost = 0x7fffffff;
    for (int k = 0; k < ncand; ++k) {
      const int cost = s_wc[k] + (s_splits[k] > 0 ? kSplitCost : 0);
      if (cost < best_cost) { best_cost = cost; best = num_parts - k; }  // ties keep more parts
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
    int ns = 0, pf = 0;
    if (i < batch) {
      int us = base == 0 ? my_us : m.seq_ustart[i];
      int nb = max(base == 0 ? my_nb : m.seq_nblk[i], 1);
      pf = us / W;
      int pl = (us + nb - 1) / W;
      m.seq_first_part[i] = pf;
      ns = pl - pf + 1;
      m.seq_nsplit[i] = ns;
      for (int q = pf; q <= pl; ++q) {  // sequence i is in the ranges of parts pf..pl
        atomicMin(&s_begin[q], i);
        atomicMax(&s_end[q], i + 1);
      }
    }
    int excl, agg;
    Scan(tmp).ExclusiveSum(ns, excl, agg);
    if (i < batch) m.seq_split_base[i] = s_carry + excl;
    if (i < batch && ns > 1) m.cut_info[pf] = make_int4(i, ns, s_carry + excl, 0);
    __syncthreads();
    if (tid == 0) s_carry += agg;
    __syncthreads();
  }
  if (tid == 0) m.hdr[2] = s_carry;
  __syncthreads();
  // pass 3: sequence range of each part, scattered by pass 2 (run 25: a binary search over the
  // global arrays per part was ~3 us of dependent loads). A part that no sequence reaches (none
  // past the chosen parts; grid.x stays num_parts, those CTAs exit at once) gets [0, 0).
  for (int p = tid; p < num_parts; p += kSchedThreads) {
    const bool any = p < parts && s_begin[p] < s_end[p];
    m.part_begin[p] = any ? s_begin[p] : 0;
    m.part_end[p] = any ? s_end[p] : 0;
  }
}

// Block range [a, e) of sequence i handled by part p.
__device__ __forceinline__ void part_block_range(int us, int nb, int W, int p, int& a, int& e) {
  a = max(p * W - us, 0);
  e = min((p + 1) * W - us, nb);
  if (e < a) e = a;
}
__device__ __forceinline__ void part_block_range(const Meta& m, int W, int p, int i, int& a, int& e) {
  part_block_range(m.seq_ustart[i], m.seq_nblk[i], W, p, a, e);
}

// Part p's split of sequence i: its index among the partials (Meta::part_o, part_lse).
__device__ __forceinline__ int part_split_slot(const Meta& m, int i, int p) {
  return m.seq_split_base[i] + p - m.seq_first_part[i];
}
// The word of Meta::split_ready (and combine_done) that counts sequence i's row tile `tile`.
__device__ __forceinline__ int split_count_word(int i, int tiles, int tile) { return i * tiles + tile; }

// The trap of a count that never comes (a bug), out of line: inlined into the decode's merge,
// the trap made ptxas spill 3 KB of the consumers' registers.
static __device__ __noinline__ void split_count_trap() { __trap(); }
// This thread waits until the count of split partials *count (a word of Meta::split_ready: each
// piece's writer adds 1 once its partial is written) reaches target; past a 10 s deadline it
// traps instead of hanging the stream.
__device__ __forceinline__ void wait_split_count(const int* count, int target) {
  const unsigned long long deadline = globaltimer_ns() + 10000000000ull;
  while (ld_acquire_gpu(count) < target) {
    __nanosleep(256);
    if (globaltimer_ns() > deadline) split_count_trap();
  }
}
// The same wait by one of `readers` threads (one a CTA) that read those partials, on word `word`
// of Meta::split_ready; the last reader past the wait resets it and its Meta::combine_done count
// for the next call.
__device__ __forceinline__ void wait_split_count_and_reset(const Meta& m, int word, int target, int readers) {
  wait_split_count(m.split_ready + word, target);
  if (atomicAdd(m.combine_done + word, 1) == readers - 1) {
    m.split_ready[word] = 0;
    m.combine_done[word] = 0;
  }
}

#if DISTMLA_MERGE_IN_DECODE
// (Build option) Who merges a split sequence's partials inside the decode (decode_merge.cuh). A
// sequence split over ns parts pf .. pf + ns - 1 has one piece a part; every piece but the last
// ends its part, and the last starts its part (so it is done early). Participant k = part - pf.
// Two pieces: the first part's CTA merges the other piece's partial into its registers before
// its epilogue and writes the sequence's rows directly; its own partial never leaves it.
__device__ __forceinline__ bool merges_in_registers(const Params& p, int ns, int k) {
  return p.merge_splits && ns == 2 && k == 0;
}
// The same for sequence i in `part`, from the schedule's entries (the producer and store warps).
__device__ __forceinline__ bool part_merges_in_registers(const Params& p, int i, int part) {
  return merges_in_registers(p, p.meta.seq_nsplit[i], part - p.meta.seq_first_part[i]);
}
// More: the CTAs of parts pf .. pf + ns - 2 (which finish together at the end of the kernel) each
// merge a share of the rows from all ns partials after their last sequence.
__device__ __forceinline__ bool merges_split(const Params& p, int ns, int k) {
  return p.merge_splits && ns > 2 && k < ns - 1;
}
#endif

}  // namespace distmla::kernels::detail
