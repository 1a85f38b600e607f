// Hopper (sm_90a) MLA decode over a paged KV cache: GPU-side split schedule, split decode
// (TMA + wgmma), and the log-sum-exp combine (DESIGN.md section 3), behind kernels::decode().
//
// Work decomposition (FlashMLA-like):
//   * rows of a sequence = s_q * h_q query rows (row r = t * h_q + h), tiled by 64 (grid.y);
//   * KV in 64-token blocks; every sequence costs nblk + kSeqOverhead "units"; the units of the
//     whole batch are cut into num_parts equal contiguous ranges (grid.x = num_parts), so each
//     CTA (persistent, 1 per SM) gets the same amount of work whatever the length mix;
//   * a sequence cut over several parts is a split: its CTAs write fp32 partials (o, lse) into
//     the workspace and the combine kernel merges them; a sequence done by one CTA is written
//     directly to out/lse.
// The schedule is computed on the GPU from the device seqlens (schedule kernel), so a step
// needs no host sync and can be captured in a CUDA graph.
// Decode kernels (DISTMLA_DECODE_KERNEL selects; docs/PERFORMANCE.md has the measurements):
//   wgmma3 (default): 2 consumer warpgroups + 1 producer warpgroup (TMA, empty/full mbarriers),
//                     Q K^T split by tokens between the consumers, P through smem;
//   simple: CUDA cores, one warp per row (debug reference for schedule/combine).
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "distmla/kernels/decode.h"
#include "wgmma_ops.cuh"

namespace distmla::kernels {
namespace {

constexpr int kDQK = 576;
constexpr int kDV = 512;
constexpr int kBlockN = 64;                 // KV tokens per pipeline block
constexpr int kBlockM = 64;                 // query rows per CTA tile
constexpr int kChunks = kDQK / 64;          // 9 column chunks of 64 values (128 B)
constexpr int kChunkBytes = kBlockN * 128;  // one [64 rows][64 cols] 128B-swizzled tile
constexpr int kTileBytes = kChunks * kChunkBytes;  // 73728
constexpr int kStages = 2;
constexpr int kThreads = 256;               // two consumer warpgroups
constexpr int kSeqOverhead = 2;             // scheduling cost of a sequence, in blocks
constexpr int kMaxParts = 1024;

// ---------------------------------------------------------------------------------------------
// Workspace layout (all int32 first, then fp32 partials, each region 256-aligned).
// ---------------------------------------------------------------------------------------------
struct WsLayout {
  size_t hdr = 0;         // int[4]: units_per_part, total_units, total_splits, num_parts
  size_t seq_len = 0;     // int[b]  clamped length
  size_t seq_nblk = 0;    // int[b]  64-token blocks
  size_t seq_ustart = 0;  // int[b]  first unit
  size_t seq_first_part = 0;  // int[b]
  size_t seq_nsplit = 0;  // int[b]
  size_t seq_split_base = 0;  // int[b]
  size_t part_begin = 0;  // int[P]
  size_t part_end = 0;    // int[P]
  size_t part_o = 0;      // float[max_splits][rows][512]
  size_t part_lse = 0;    // float[max_splits][rows]
  size_t total = 0;
  int num_parts = 1;
  int max_splits = 0;
};

size_t align256(size_t x) { return (x + 255) & ~size_t(255); }

int num_row_tiles(const DecodeShape& s) { return (s.s_q * s.h_q + kBlockM - 1) / kBlockM; }

int num_parts_for(const DecodeShape& s) {
  int tiles = num_row_tiles(s);
  int sms = s.num_sms > 0 ? s.num_sms : 132;
  int p = std::max(1, sms / tiles);
  return std::min(p, kMaxParts);
}

WsLayout make_layout(const DecodeShape& s) {
  WsLayout w;
  size_t b = static_cast<size_t>(std::max(s.batch, 0));
  w.num_parts = num_parts_for(s);
  w.max_splits = static_cast<int>(b) + w.num_parts;
  size_t rows = static_cast<size_t>(s.s_q) * s.h_q;
  size_t off = 0;
  auto take = [&](size_t bytes) { size_t o = off; off = align256(off + bytes); return o; };
  w.hdr = take(4 * sizeof(int));
  w.seq_len = take(b * sizeof(int));
  w.seq_nblk = take(b * sizeof(int));
  w.seq_ustart = take(b * sizeof(int));
  w.seq_first_part = take(b * sizeof(int));
  w.seq_nsplit = take(b * sizeof(int));
  w.seq_split_base = take(b * sizeof(int));
  w.part_begin = take(w.num_parts * sizeof(int));
  w.part_end = take(w.num_parts * sizeof(int));
  w.part_o = take(static_cast<size_t>(w.max_splits) * rows * kDV * sizeof(float));
  w.part_lse = take(static_cast<size_t>(w.max_splits) * rows * sizeof(float));
  w.total = off;
  return w;
}

struct Meta {
  int* hdr;
  int* seq_len;
  int* seq_nblk;
  int* seq_ustart;
  int* seq_first_part;
  int* seq_nsplit;
  int* seq_split_base;
  int* part_begin;
  int* part_end;
  float* part_o;
  float* part_lse;
};

Meta make_meta(const WsLayout& w, void* ws) {
  char* base = static_cast<char*>(ws);
  Meta m;
  m.hdr = reinterpret_cast<int*>(base + w.hdr);
  m.seq_len = reinterpret_cast<int*>(base + w.seq_len);
  m.seq_nblk = reinterpret_cast<int*>(base + w.seq_nblk);
  m.seq_ustart = reinterpret_cast<int*>(base + w.seq_ustart);
  m.seq_first_part = reinterpret_cast<int*>(base + w.seq_first_part);
  m.seq_nsplit = reinterpret_cast<int*>(base + w.seq_nsplit);
  m.seq_split_base = reinterpret_cast<int*>(base + w.seq_split_base);
  m.part_begin = reinterpret_cast<int*>(base + w.part_begin);
  m.part_end = reinterpret_cast<int*>(base + w.part_end);
  m.part_o = reinterpret_cast<float*>(base + w.part_o);
  m.part_lse = reinterpret_cast<float*>(base + w.part_lse);
  return m;
}

// ---------------------------------------------------------------------------------------------
// PTX helpers
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\n"
      "WAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0,
                                            int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, "
      "%4}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Named barrier 1 over the 256 consumer threads (warp-specialised kernels).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait0() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ uint64_t make_desc(uint32_t saddr, uint32_t lbo, uint32_t sbo) {
  uint64_t d = 0;
  d |= static_cast<uint64_t>((saddr & 0x3FFFF) >> 4);
  d |= static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16;
  d |= static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32;
  d |= static_cast<uint64_t>(1) << 62;
  return d;
}

template <typename T>
struct ElemTraits;
template <>
struct ElemTraits<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void qk32(float (&d)[16], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n32k16_ss_bf16(d, da, db, sd);
  }
  static __device__ __forceinline__ void pv_ss(float (&d)[128], uint64_t da, uint64_t db) {
    detail::wgmma_m64n256k16_ss_bf16_tb(d, da, db, 1);
  }
  static __device__ __forceinline__ void qk64(float (&d)[32], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n64k16_ss_bf16(d, da, db, sd);
  }
  static __device__ __forceinline__ void pv_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t db) {
    detail::wgmma_m64n256k16_rs_bf16_tb(d, a, db, 1);
  }
  static __device__ __forceinline__ float to_float(uint16_t h) {
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
  }
};
template <>
struct ElemTraits<__half> {
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void qk32(float (&d)[16], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n32k16_ss_f16(d, da, db, sd);
  }
  static __device__ __forceinline__ void pv_ss(float (&d)[128], uint64_t da, uint64_t db) {
    detail::wgmma_m64n256k16_ss_f16_tb(d, da, db, 1);
  }
  static __device__ __forceinline__ void qk64(float (&d)[32], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n64k16_ss_f16(d, da, db, sd);
  }
  static __device__ __forceinline__ void pv_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t db) {
    detail::wgmma_m64n256k16_rs_f16_tb(d, a, db, 1);
  }
  static __device__ __forceinline__ float to_float(uint16_t h) {
    return __half2float(__ushort_as_half(h));
  }
};

struct Params {
  const void* q;
  const void* kv;
  const int32_t* block_table;
  void* out;
  float* lse;
  Meta meta;
  int batch, s_q, h_q, rows, page_size, num_blocks, max_blocks_per_seq;
  int causal, out_fp32, num_parts;
  float scale_log2;  // scale * log2(e)
};

// ---------------------------------------------------------------------------------------------
// Schedule kernel: one CTA of 1024 threads.
// ---------------------------------------------------------------------------------------------
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

// Producer cursor over the (sequence, block) items of a part.
struct Cursor {
  int seq, blk, end;
};

// Epilogue of the wgmma kernels: this warpgroup's 256 output columns of rows r0 and r0 + 8,
// normalised by inv; straight to out/lse when the sequence has one split, else to the partials.
template <typename Elem>
__device__ __forceinline__ void write_rows(const Params& p, const float (&o)[128], const float (&inv)[2],
                                           const float (&lse_r)[2], int i, int tile, int r0, int cq, int wg,
                                           int lane, bool direct, size_t slot) {
  const Meta& m = p.meta;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int gr = tile * kBlockM + r0 + 8 * h;
    if (gr >= p.rows) continue;
    if (direct) {
      const size_t orow = (static_cast<size_t>(i) * p.rows + gr) * kDV + wg * 256 + cq;
      if (p.out_fp32) {
        float* out = static_cast<float*>(p.out) + orow;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          *reinterpret_cast<float2*>(out + 8 * j) =
              make_float2(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
        }
      } else {
        uint32_t* out = reinterpret_cast<uint32_t*>(static_cast<uint16_t*>(p.out) + orow);
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          out[4 * j] = ElemTraits<Elem>::pack(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
        }
      }
      if (wg == 0 && (lane % 4) == 0) {
        const int t = gr / p.h_q, hh = gr % p.h_q;
        p.lse[(static_cast<size_t>(i) * p.h_q + hh) * p.s_q + t] = lse_r[h];
      }
    } else {
      float* out = m.part_o + (slot * p.rows + gr) * kDV + wg * 256 + cq;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        *reinterpret_cast<float2*>(out + 8 * j) =
            make_float2(o[4 * j + 2 * h] * inv[h], o[4 * j + 2 * h + 1] * inv[h]);
      }
      if (wg == 0 && (lane % 4) == 0) m.part_lse[slot * p.rows + gr] = lse_r[h];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Split decode, wgmma path (v3). Q K^T is split by tokens: consumer warpgroup w computes S for
// tokens [32w, 32w + 32) of the block (m64n32k16), the two exchange row maxima through smem,
// write their half of P (bf16, 128B-swizzled, K-major) to smem, and both run P V with A = P
// from smem, each into its 256 of the 512 output columns. A dedicated TMA producer warp (warp 8)
// waits on per-stage "empty" mbarriers (one arrival per consumer warp) and reads the block table
// ahead, so the consumers never stall on global loads and need no end-of-block barrier.
// ---------------------------------------------------------------------------------------------
constexpr int kPBytes = kBlockM * kBlockN * 2;  // 8 KB
constexpr int kSmemBytes = kTileBytes * (1 + kStages) + kPBytes + 64 /*barriers*/ + 512 /*max*/ +
                           512 /*sum*/ + 1024 /*align*/;
constexpr int kThreadsV3 = kThreads + 128;  // + a producer warpgroup (one active thread)

template <typename Elem>
__global__ void __launch_bounds__(kThreadsV3, 1)
    decode_wgmma3_kernel(const __grid_constant__ CUtensorMap kv_map, const Params p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  uint8_t* gbase = smem_raw + (base - raw);
  const uint32_t sQ = base;
  const uint32_t sKV0 = base + kTileBytes;
  const uint32_t sP = base + kTileBytes * (1 + kStages);
  const uint32_t bar0 = sP + kPBytes;
  uint8_t* gQ = gbase;
  uint8_t* gKV0 = gbase + kTileBytes;
  uint8_t* gP = gbase + kTileBytes * (1 + kStages);
  float* sMax = reinterpret_cast<float*>(gP + kPBytes + 64);  // [2][64]
  float* sSum = sMax + 2 * kBlockM;                            // [2][64]

  const int tid = threadIdx.x;
  const int wg = tid / 128;
  const int lane = tid % 32;
  const int warp_in_wg = (tid % 128) / 32;
  const int part = blockIdx.x;
  const int tile = blockIdx.y;

  const uint32_t empty0 = bar0 + 8 * kStages;  // consumer -> producer, one arrival per consumer warp
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) mbar_init(bar0 + 8 * s, 1);
    for (int s = 0; s < kStages; ++s) mbar_init(empty0 + 8 * s, kThreads / 32);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    fence_proxy_async();
  }
  __syncthreads();

  pdl_wait();
  pdl_launch_dependents();

  const Meta& m = p.meta;
  const int W = m.hdr[0];
  const int seq_begin = m.part_begin[part];
  const int seq_end = m.part_end[part];
  if (seq_begin >= seq_end) return;

  Cursor pc{seq_begin, 0, 0};
  auto producer_setup = [&](Cursor& c) {
    while (c.seq < seq_end) {
      int a, e;
      part_block_range(m, W, part, c.seq, a, e);
      if (a < e) { c.blk = a; c.end = e; return; }
      ++c.seq;
    }
  };
  uint32_t produced = 0;
  auto produce_one = [&]() {
    if (pc.seq >= seq_end) return;
    const int i = pc.seq;
    const int n = pc.blk;
    const int stage = produced % kStages;
    const uint32_t dst = sKV0 + stage * kTileBytes;
    const uint32_t bar = bar0 + 8 * stage;
    const int L = m.seq_len[i];
    const int R = p.page_size < kBlockN ? p.page_size : kBlockN;
    const int pieces = kBlockN / R;
    int npieces = 0;
    for (int k = 0; k < pieces; ++k) {
      if (n * kBlockN + k * R < L) ++npieces;
    }
    mbar_arrive_expect_tx(bar, static_cast<uint32_t>(npieces * kChunks * R * 128));
    for (int k = 0; k < npieces; ++k) {
      int tok0 = n * kBlockN + k * R;
      int lp = tok0 / p.page_size;
      if (lp >= p.max_blocks_per_seq) lp = p.max_blocks_per_seq - 1;
      int off = tok0 % p.page_size;
      int phys = p.block_table[static_cast<size_t>(i) * p.max_blocks_per_seq + lp];
      phys = phys < 0 ? 0 : (phys >= p.num_blocks ? p.num_blocks - 1 : phys);
      int row = phys * p.page_size + off;
#pragma unroll 1
      for (int c = 0; c < kChunks; ++c) {
        tma_load_2d(dst + c * kChunkBytes + k * R * 128, &kv_map, bar, c * 64, row);
      }
    }
    ++produced;
    if (++pc.blk >= pc.end) {
      ++pc.seq;
      producer_setup(pc);
    }
  };
  if (tid >= kThreads) {
    // producer warpgroup: gives registers back; one thread runs ahead of the consumers by
    // kStages blocks, off their critical path
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    if (tid == kThreads) {
      producer_setup(pc);
      while (pc.seq < seq_end) {
        if (produced >= kStages) mbar_wait(empty0 + 8 * (produced % kStages), ((produced / kStages) - 1) & 1);
        produce_one();
      }
    }
  } else {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");

  uint32_t consumed = 0;
  const float NEG_INF = -INFINITY;
  const int r0 = warp_in_wg * 16 + lane / 4;
  const int cq = 2 * (lane % 4);

  for (int i = seq_begin; i < seq_end; ++i) {
    int a, e;
    part_block_range(m, W, part, i, a, e);
    const int L = m.seq_len[i];
    const int nsplit = m.seq_nsplit[i];
    const int split_idx = part - m.seq_first_part[i];

    consumer_sync();  // previous wgmma reads of sQ / sP and reads of sSum are complete
    {
      // Q tile: loads in two batches of 9 in flight before their stores.
      const uint16_t* q = static_cast<const uint16_t*>(p.q);
      constexpr int kIters = kBlockM * kChunks * 8 / kThreads;  // 18
      constexpr int kBatch = kIters / 2;
#pragma unroll 1
      for (int b0 = 0; b0 < kIters; b0 += kBatch) {
        uint4 v[kBatch];
#pragma unroll
        for (int it = 0; it < kBatch; ++it) {
          const int idx = tid + (b0 + it) * kThreads;
          const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
          const int gr = tile * kBlockM + r;
          v[it] = make_uint4(0, 0, 0, 0);
          if (gr < p.rows)
            v[it] = __ldg(reinterpret_cast<const uint4*>(q + (static_cast<size_t>(i) * p.rows + gr) * kDQK +
                                                         c * 64 + u * 8));
        }
#pragma unroll
        for (int it = 0; it < kBatch; ++it) {
          const int idx = tid + (b0 + it) * kThreads;
          const int u = idx % 8, c = (idx / 8) % kChunks, r = idx / (8 * kChunks);
          *reinterpret_cast<uint4*>(gQ + c * kChunkBytes + r * 128 + ((u ^ (r & 7)) * 16)) = v[it];
        }
      }
      fence_proxy_async();
    }
    consumer_sync();

    int lim[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int gr = tile * kBlockM + r0 + 8 * h;
      int t = gr / p.h_q;
      if (t >= p.s_q) t = p.s_q - 1;
      lim[h] = p.causal ? (L - p.s_q + 1 + t) : L;
    }

    float o[128];
#pragma unroll
    for (int k = 0; k < 128; ++k) o[k] = 0.f;
    float mrow[2] = {NEG_INF, NEG_INF};
    float lrow[2] = {0.f, 0.f};  // this warpgroup's token half only

    for (int n = a; n < e; ++n) {
      const int stage = consumed % kStages;
      const uint32_t sK = sKV0 + stage * kTileBytes;
      mbar_wait(bar0 + 8 * stage, (consumed / kStages) & 1);
      const int valid = min(L - n * kBlockN, kBlockN);
      if (valid < kBlockN) {
        uint8_t* gK = gKV0 + stage * kTileBytes;
        int nrows = kBlockN - valid;
        for (int idx = tid; idx < nrows * kChunks * 8; idx += kThreads) {
          int u = idx % 8;
          int c = (idx / 8) % kChunks;
          int r = valid + idx / (8 * kChunks);
          *reinterpret_cast<uint4*>(gK + c * kChunkBytes + r * 128 + u * 16) = make_uint4(0, 0, 0, 0);
        }
        fence_proxy_async();
        consumer_sync();
      }

      // ---- S_w = Q K[32w .. 32w+32)^T (64 x 32, K = 576) ----
      float s[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) s[k] = 0.f;
      wgmma_fence();
#pragma unroll
      for (int c = 0; c < kChunks; ++c) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          uint64_t da = make_desc(sQ + c * kChunkBytes + kk * 32, 16, 1024);
          uint64_t db = make_desc(sK + c * kChunkBytes + wg * 32 * 128 + kk * 32, 16, 1024);
          ElemTraits<Elem>::qk32(s, da, db, 1);
        }
      }
      wgmma_commit();
      wgmma_wait0();
      reg_fence(s);

      // ---- mask, local row max, exchange ----
      float ml[2] = {NEG_INF, NEG_INF};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            int tok = n * kBlockN + 32 * wg + 8 * j + cq + x;
            float v = s[4 * j + 2 * h + x] * p.scale_log2;
            v = tok < lim[h] ? v : NEG_INF;
            s[4 * j + 2 * h + x] = v;
            ml[h] = fmaxf(ml[h], v);
          }
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 1));
        ml[h] = fmaxf(ml[h], __shfl_xor_sync(0xffffffffu, ml[h], 2));
        if ((lane & 3) == 0) sMax[wg * kBlockM + r0 + 8 * h] = ml[h];
      }
      consumer_sync();
      float corr[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float other = sMax[(1 - wg) * kBlockM + r0 + 8 * h];
        const float mx = fmaxf(mrow[h], fmaxf(ml[h], other));
        const float base_h = mx == NEG_INF ? 0.f : mx;
        corr[h] = exp2f(mrow[h] - base_h);
        mrow[h] = mx;
        lrow[h] *= corr[h];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
#pragma unroll
          for (int x = 0; x < 2; ++x) {
            float pv = exp2f(s[4 * j + 2 * h + x] - base_h);
            s[4 * j + 2 * h + x] = pv;
            lrow[h] += pv;
          }
        }
      }
      // P half -> smem ([64 rows][64 tokens] bf16, K-major, 128B swizzle)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = r0 + 8 * h;
          const int unit = 4 * wg + j;
          *reinterpret_cast<uint32_t*>(gP + r * 128 + ((unit ^ (r & 7)) * 16) + cq * 2) =
              ElemTraits<Elem>::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
        }
      }
      fence_proxy_async();
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        o[4 * j + 0] *= corr[0];
        o[4 * j + 1] *= corr[0];
        o[4 * j + 2] *= corr[1];
        o[4 * j + 3] *= corr[1];
      }
      consumer_sync();  // both halves of P are in smem

      // ---- O += P V (64 x 256 per warpgroup, K = 64 tokens), A = P from smem ----
      reg_fence(o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        uint64_t da = make_desc(sP + kk * 32, 16, 1024);
        uint64_t db = make_desc(sK + (4 * wg) * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024);
        ElemTraits<Elem>::pv_ss(o, da, db);
      }
      wgmma_commit();
      wgmma_wait0();
      reg_fence(o);

      // this warp is done with the stage: release it to the producer. No block-wide barrier is
      // needed for sP / sMax: the next writes of either happen after a barrier that both
      // warpgroups reach only after their reads (see docs/PERFORMANCE.md, v3).
      __syncwarp();
      if (lane == 0) mbar_arrive(empty0 + 8 * stage);
      ++consumed;
    }

    // ---- epilogue: row sums of both halves ----
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = lrow[h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      if ((lane & 3) == 0) sSum[wg * kBlockM + r0 + 8 * h] = l;
    }
    consumer_sync();
    float lse_r[2], inv[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float l = sSum[r0 + 8 * h] + sSum[kBlockM + r0 + 8 * h];
      if (l > 0.f && mrow[h] != NEG_INF) {
        inv[h] = 1.f / l;
        lse_r[h] = (mrow[h] + log2f(l)) * 0.69314718055994530942f;
      } else {
        inv[h] = 0.f;
        lse_r[h] = NEG_INF;
      }
    }
    write_rows<Elem>(p, o, inv, lse_r, i, tile, r0, cq, wg, lane, nsplit <= 1,
                     static_cast<size_t>(m.seq_split_base[i] + split_idx));
  }
  }  // consumers
}

#include "decode_seesaw.cuh"

// ---------------------------------------------------------------------------------------------
// Split decode, plain CUDA-core path (debug / fallback: DISTMLA_DECODE_KERNEL=simple).
// Same schedule and partial format; one warp per query row, KV read straight from global.
// ---------------------------------------------------------------------------------------------
template <typename Elem>
__global__ void __launch_bounds__(256) decode_simple_kernel(const Params p) {
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
    const size_t slot = static_cast<size_t>(m.seq_split_base[i] + part - m.seq_first_part[i]);
    for (int r = warp; r < kBlockM; r += 8) {
      const int gr = tile * kBlockM + r;
      if (gr >= p.rows) break;
      const int t = gr / p.h_q, hh = gr % p.h_q;
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
      if (nsplit <= 1) {
        const size_t orow = (static_cast<size_t>(i) * p.rows + gr) * kDV;
#pragma unroll
        for (int k = 0; k < 16; ++k) {
          if (p.out_fp32) {
            static_cast<float*>(p.out)[orow + lane + 32 * k] = acc[k] * inv;
          } else {
            uint32_t pk = ElemTraits<Elem>::pack(acc[k] * inv, 0.f);
            static_cast<uint16_t*>(p.out)[orow + lane + 32 * k] = static_cast<uint16_t>(pk & 0xFFFFu);
          }
        }
        if (lane == 0) p.lse[(static_cast<size_t>(i) * p.h_q + hh) * p.s_q + t] = lse;
      } else {
        float* out = m.part_o + (slot * p.rows + gr) * kDV;
#pragma unroll
        for (int k = 0; k < 16; ++k) out[lane + 32 * k] = acc[k] * inv;
        if (lane == 0) m.part_lse[slot * p.rows + gr] = lse;
      }
    }
  }
}

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
    for (int s = 0; s < ns; ++s) {
      float v = m.part_lse[(base + s) * p.rows + gr];
      if (v == -INFINITY) continue;
      float w = __expf(v - lse);
      const float4* src = reinterpret_cast<const float4*>(m.part_o + ((base + s) * p.rows + gr) * kDV);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        float4 x = src[lane + 32 * k];
        acc[k].x += w * x.x;
        acc[k].y += w * x.y;
        acc[k].z += w * x.z;
        acc[k].w += w * x.w;
      }
    }
  }
  const size_t orow = (static_cast<size_t>(i) * p.rows + gr) * kDV;
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
  if (lane == 0) {
    const int t = gr / p.h_q, hh = gr % p.h_q;
    p.lse[(static_cast<size_t>(i) * p.h_q + hh) * p.s_q + t] = lse;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*,
                                   CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                   CUtensorMapFloatOOBfill);

EncodeTiledFn get_encode_fn() {
  static EncodeTiledFn fn = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult qres{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &qres) ==
            cudaSuccess &&
        qres == cudaDriverEntryPointSuccess) {
      fn = reinterpret_cast<EncodeTiledFn>(ptr);
    } else {
      (void)cudaGetLastError();
    }
  });
  return fn;
}

// DISTMLA_DECODE_KERNEL = seesaw (default: blocks alternate between the consumer warpgroups,
// softmax of one overlaps the other's products) | wgmma3 (both warpgroups on each block, token-
// split Q K^T) | simple (CUDA cores, same schedule and combine). v1 (redundant Q K^T), v2 (v3
// without the producer warpgroup) and v4 (P V(n) + Q K^T(n+1) back to back) were measured and
// removed; see docs/PERFORMANCE.md for their numbers and commits.
enum class KernelKind { kSeesaw, kWgmma3, kSimple };
KernelKind kernel_kind() {
  static KernelKind k = [] {
    const char* e = std::getenv("DISTMLA_DECODE_KERNEL");
    if (e != nullptr && std::strcmp(e, "simple") == 0) return KernelKind::kSimple;
    if (e != nullptr && std::strcmp(e, "seesaw") == 0) return KernelKind::kSeesaw;
    return KernelKind::kWgmma3;
  }();
  return k;
}

template <typename Elem>
cudaError_t ensure_smem_attr() {
  // Per device: cudaFuncSetAttribute applies to the current device.
  static std::mutex mu;
  static bool done[64] = {};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mu);
  if (dev >= 0 && dev < 64 && done[dev]) return cudaSuccess;
  err = cudaFuncSetAttribute(decode_wgmma3_kernel<Elem>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSmemBytes);
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(decode_seesaw_kernel<Elem>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             kSeesawSmemBytes);
  if (err != cudaSuccess) return err;
  if (dev >= 0 && dev < 64) done[dev] = true;
  return cudaSuccess;
}

template <typename Kernel, typename... Args>
cudaError_t launch_pdl(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

template <typename Elem>
cudaError_t run_decode(const DecodeShape& s, const DecodeTensors& t, const WsLayout& w, const Meta& meta,
                       bool reuse_schedule, cudaStream_t stream) {
  const int rows = s.s_q * s.h_q;
  const int tiles = num_row_tiles(s);
  const int max_len = s.max_blocks_per_seq * s.page_size;
  cudaError_t err;
  const KernelKind kind = kernel_kind();
  if (!reuse_schedule) {
    schedule_kernel<<<1, kSchedThreads, 0, stream>>>(t.seqlens, meta, s.batch, max_len, w.num_parts);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  Params p{};
  p.q = t.q;
  p.kv = t.kv;
  p.block_table = t.block_table;
  p.out = t.out;
  p.lse = t.lse;
  p.meta = meta;
  p.batch = s.batch;
  p.s_q = s.s_q;
  p.h_q = s.h_q;
  p.rows = rows;
  p.page_size = s.page_size;
  p.num_blocks = s.num_blocks;
  p.max_blocks_per_seq = s.max_blocks_per_seq;
  p.causal = s.causal ? 1 : 0;
  p.out_fp32 = s.out_type == ElemType::kFP32 ? 1 : 0;
  p.num_parts = w.num_parts;
  p.scale_log2 = s.scale * 1.4426950408889634f;

  const dim3 grid(w.num_parts, tiles);
  if (kind == KernelKind::kSimple) {
    err = launch_pdl(decode_simple_kernel<Elem>, grid, dim3(256), 0, stream, p);
  } else {
    EncodeTiledFn encode = get_encode_fn();
    if (encode == nullptr) return cudaErrorNotSupported;
    err = ensure_smem_attr<Elem>();
    if (err != cudaSuccess) return err;
    CUtensorMap map;
    std::memset(&map, 0, sizeof(map));
    const int R = std::min(s.page_size, kBlockN);
    cuuint64_t gdim[2] = {static_cast<cuuint64_t>(kDQK),
                          static_cast<cuuint64_t>(s.num_blocks) * static_cast<cuuint64_t>(s.page_size)};
    cuuint64_t gstride[1] = {static_cast<cuuint64_t>(kDQK) * 2};
    cuuint32_t box[2] = {64, static_cast<cuuint32_t>(R)};
    cuuint32_t estride[2] = {1, 1};
    CUresult cr = encode(&map,
                         s.qkv_type == ElemType::kFP16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                       : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                         2, const_cast<void*>(t.kv), gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (cr != CUDA_SUCCESS) return cudaErrorInvalidValue;
    if (kind == KernelKind::kSeesaw)
      err = launch_pdl(decode_seesaw_kernel<Elem>, grid, dim3(kThreadsSeesaw),
                       static_cast<size_t>(kSeesawSmemBytes), stream, map, p);
    else
      err = launch_pdl(decode_wgmma3_kernel<Elem>, grid, dim3(kThreadsV3), static_cast<size_t>(kSmemBytes),
                       stream, map, p);
  }
  if (err != cudaSuccess) return err;
  const dim3 cgrid(s.batch, (rows + 7) / 8);
  return launch_pdl(combine_kernel<Elem>, cgrid, dim3(256), 0, stream, p);
}

}  // namespace

size_t decode_workspace_bytes(const DecodeShape& shape) { return make_layout(shape).total; }

bool device_supported(int device) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  if (major != 9 || minor != 0) return false;
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, decode_wgmma3_kernel<__nv_bfloat16>) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return get_encode_fn() != nullptr;
}

cudaError_t decode(const DecodeShape& shape, const DecodeTensors& t, void* workspace, size_t workspace_bytes,
                   bool reuse_schedule, cudaStream_t stream) {
  const DecodeShape& s = shape;
  if (s.batch < 0 || s.s_q < 1 || s.s_q > 4 || s.h_q < 1 || s.h_q > 128) return cudaErrorInvalidValue;
  if (s.page_size != 16 && s.page_size != 32 && s.page_size != 64 && s.page_size != 128) return cudaErrorInvalidValue;
  if (s.qkv_type != ElemType::kBF16 && s.qkv_type != ElemType::kFP16) return cudaErrorInvalidValue;
  if (s.out_type != s.qkv_type && s.out_type != ElemType::kFP32) return cudaErrorInvalidValue;
  if (s.batch == 0) return cudaSuccess;
  if (s.num_blocks < 1 || s.max_blocks_per_seq < 1 || !(s.scale > 0.f)) return cudaErrorInvalidValue;
  if (t.q == nullptr || t.kv == nullptr || t.block_table == nullptr || t.seqlens == nullptr || t.out == nullptr ||
      t.lse == nullptr || workspace == nullptr)
    return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(t.q) | reinterpret_cast<uintptr_t>(t.kv) |
       reinterpret_cast<uintptr_t>(workspace)) & 15u)
    return cudaErrorMisalignedAddress;
  const WsLayout w = make_layout(s);
  if (workspace_bytes < w.total) return cudaErrorInvalidValue;
  const Meta meta = make_meta(w, workspace);
  if (s.qkv_type == ElemType::kFP16) return run_decode<__half>(s, t, w, meta, reuse_schedule, stream);
  return run_decode<__nv_bfloat16>(s, t, w, meta, reuse_schedule, stream);
}

}  // namespace distmla::kernels
