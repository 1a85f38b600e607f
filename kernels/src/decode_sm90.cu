// Hopper (sm_90a) MLA decode over a paged KV cache: GPU-side split schedule, split decode
// (TMA + wgmma), and the log-sum-exp combine (DESIGN.md section 3), behind kernels::decode().
//
// Work decomposition (FlashMLA-like):
//   * rows of a sequence = s_q * h_q query rows (row r = t * h_q + h), tiled by 64 (grid.y);
//   * KV in 64-token blocks; every sequence costs nblk + kSeqOverhead "units"; the units of the
//     whole batch are cut into num_parts equal contiguous ranges (grid.x = num_parts), so each
//     CTA (persistent, 1 per SM) gets the same amount of work whatever the length mix; the
//     schedule uses a few parts less when that lets every cut fall between sequences;
//   * a sequence cut over several parts is a split: its CTAs write partials (o in the out type,
//     lse fp32) into the workspace and the combine kernel merges them (or, in a build with
//     -DDISTMLA_MERGE_IN_DECODE=ON and with dsplit and 16-bit out, the decode CTAs whose piece
//     ends their part: decode_merge.cuh; a sequence split in two is merged in the first piece's
//     registers and never leaves it as a partial); a sequence done by one CTA is written
//     directly to out/lse.
// The schedule is computed on the GPU from the device seqlens (schedule kernel), so a step
// needs no host sync and can be captured in a CUDA graph.
// Decode kernels (DISTMLA_DECODE_KERNEL selects; docs/PERFORMANCE.md has the measurements):
//   dsplit (default, v6): 2 consumer warpgroups + 1 producer warpgroup (KV and Q by TMA, each a
//                     step ahead on full/empty mbarriers; 16-bit out and partials staged in
//                     smem and copied out by a store warp), Q K^T split by the 576 dims
//                     between the consumers (m64n64 products, partial S through smem), P
//                     through smem; with an even number of row tiles, tiles 2k and 2k + 1 of
//                     a part form a 2-CTA cluster and share each KV block by TMA multicast;
//   tsplit (v3): the same with Q K^T split by tokens (m64n32 products), out from registers;
//   simple: CUDA cores, one warp per row (debug reference for schedule/combine).
//
// Files: decode_layout.cuh (sizes, workspace, Params), ptx.cuh (PTX wrappers; its clock in
// globaltimer.cuh, shared with the cross-GPU kernels), schedule.cuh,
// decode_wgmma.cuh (v6 / v3: Q K^T and the kernel), decode_producers.cuh (the TMA producer warps),
// decode_epilogue.cuh (out from registers or staged through smem and the store warp),
// decode_merge.cuh (split sequences merged in the decode; a build option), decode_simple.cuh,
// combine.cuh; this file holds the host side.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "combine.cuh"
#include "decode_layout.cuh"
#include "decode_simple.cuh"
#include "decode_wgmma.cuh"
#include "distmla/kernels/decode.h"
#include "schedule.cuh"

namespace distmla::kernels {
namespace {
using namespace detail;

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

// DISTMLA_DECODE_KERNEL = dsplit (default) | tsplit | simple (CUDA cores, same schedule and
// combine). Measured and removed, none faster (docs/PERFORMANCE.md has their numbers and
// commits): v1 (redundant Q K^T), v2 (v3 without the producer warpgroup), v4 (P V(n) + Q K^T(n+1)
// back to back), v5, v7 and v9 "seesaw" (blocks alternating between the warpgroups; v7 in 7fc89c7,
// v9 after FlashMLA's schedule in dfcd493),
// v8 "small" (transposed products for <= 32 query rows; fab1846), b32 (32-token blocks in four
// stages with Q K^T(n + 1) before softmax(n); ea4124f, run 40), v3 in a 2-CTA cluster with TMA
// multicast and whole-stage barriers (run 8; v6's per-chunk version is kept: run 49), a plain
// cluster launch of a part's row tiles (run 14), and v10 "ddim" (a 2-CTA cluster splitting the
// 576 dims for 128 rows: three 36-40 KB stages and FA3's order, but partial S or exponential
// factors crossing to the peer CTA every block; branch exp/ddim, dfe8909 / ed72363 / 38c1184;
// run 53).
enum class KernelKind { kDSplit, kTSplit, kSimple };
KernelKind kernel_kind() {
  static KernelKind k = [] {
    const char* e = std::getenv("DISTMLA_DECODE_KERNEL");
    if (e != nullptr && std::strcmp(e, "simple") == 0) return KernelKind::kSimple;
    if (e != nullptr && std::strcmp(e, "tsplit") == 0) return KernelKind::kTSplit;
    return KernelKind::kDSplit;
  }();
  return k;
}

// Dynamic shared memory (unused) for a combine grid of ctas CTAs: launched programmatically, its
// CTAs are placed as the decode's CTAs exit, on the first SMs free and as many as fit (4 by
// registers), so a grid smaller than the SMs ran on a quarter of them (run 36: one sequence over
// 66 parts, 13.8 us against 5.9 launched alone). Enough smem that at most ceil(ctas / SMs) fit
// beside each other (each also has 1 KB reserved) spreads it over the SMs as they free up.
int combine_spread_smem(int ctas, int num_sms, int smem_per_sm) {
  const int sms = std::max(num_sms, 1);
  const int cap = (ctas + sms - 1) / sms;
  if (cap >= 4) return 0;
  return smem_per_sm / (cap + 1) + 1024;
}

// Clusters of y CTAs along the grid's y (a part's row tiles).
cudaLaunchAttribute cluster_y_attr(int y) {
  cudaLaunchAttribute a{};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = 1;
  a.val.clusterDim.y = y;
  a.val.clusterDim.z = 1;
  return a;
}

// What a launch needs to know of the current device, found once per device and Elem.
struct DeviceFacts {
  int smem_per_sm = 0;   // shared memory a multiprocessor
  int pair_clusters = 0; // 2-CTA clusters of the decode kernels resident at once (0: none / unknown)
};

// Once per device and Elem (cudaFuncSetAttribute applies to the current device): the kernels'
// dynamic smem limits, and the facts above. The cluster count does not depend on the grid; a
// failed query leaves it 0, which only turns the KV multicast off (use_kv_multicast).
template <typename Elem>
cudaError_t device_setup(DeviceFacts* facts) {
  static std::mutex mu;
  static DeviceFacts known[64];  // smem_per_sm 0: not set up yet
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mu);
  const bool cached = dev >= 0 && dev < 64;
  if (cached && known[dev].smem_per_sm > 0) {
    *facts = known[dev];
    return cudaSuccess;
  }
  DeviceFacts f;
  err = cudaDeviceGetAttribute(&f.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev);
  if (err != cudaSuccess) return err;
  f.pair_clusters = 1 << 30;
  for (auto kernel : {decode_wgmma3_kernel<Elem, false>, decode_wgmma3_kernel<Elem, true>}) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
    if (err != cudaSuccess) return err;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(1, 2);
    cfg.blockDim = dim3(kThreadsV3);
    cfg.dynamicSmemBytes = kSmemBytes;
    cudaLaunchAttribute attr = cluster_y_attr(2);
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int n = 0;
    if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky: the multicast stays off, the launch goes on
      n = 0;
    }
    f.pair_clusters = std::min(f.pair_clusters, std::max(n, 0));
  }
  const int combine_max = combine_spread_smem(1, 1, f.smem_per_sm);
  for (auto kernel : {combine_kernel<Elem, 1, float>, combine_kernel<Elem, 1, uint16_t>,
                      combine_kernel<Elem, 2, float>, combine_kernel<Elem, 2, uint16_t>,
                      combine_kernel<Elem, 4, float>, combine_kernel<Elem, 4, uint16_t>}) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, combine_max);
    if (err != cudaSuccess) return err;
  }
  if (cached) known[dev] = f;
  *facts = f;
  return cudaSuccess;
}

#if DISTMLA_DECODE_TRACE
// Trace builds (decode_trace.cuh): the last launch's table into $DISTMLA_TRACE_FILE, after each
// launch (DISTMLA_TRACE_SYNC=1: synchronises, so not inside a capture) or once at exit.
void write_trace(const char* path) {
  static unsigned long long h[kTraceCtas * kTraceSlots];
  if (cudaMemcpyFromSymbol(h, g_decode_trace, sizeof(h)) != cudaSuccess) return;
  if (FILE* f = std::fopen(path, "wb")) {
    std::fwrite(h, sizeof(h[0]), kTraceCtas * kTraceSlots, f);
    std::fclose(f);
  }
}
void trace_after_launch(cudaStream_t stream) {
  static const char* path = std::getenv("DISTMLA_TRACE_FILE");
  if (path == nullptr) return;
  if (std::getenv("DISTMLA_TRACE_SYNC") != nullptr) {
    if (cudaStreamSynchronize(stream) == cudaSuccess) write_trace(path);
    return;
  }
  static std::once_flag once;
  std::call_once(once, [] {
    std::atexit([] {
      if (cudaDeviceSynchronize() == cudaSuccess) write_trace(std::getenv("DISTMLA_TRACE_FILE"));
    });
  });
}
#endif

// A launch that may start before its predecessor ends (the kernel waits in griddepcontrol.wait),
// in clusters of cluster_y CTAs along y when cluster_y > 1.
template <typename Kernel, typename... Args>
cudaError_t launch_pdl_clusters(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, int cluster_y,
                                Args... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  attr[1] = cluster_y_attr(cluster_y);
  cfg.attrs = attr;
  cfg.numAttrs = cluster_y > 1 ? 2 : 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}
template <typename Kernel, typename... Args>
cudaError_t launch_pdl(Kernel kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  return launch_pdl_clusters(kernel, grid, block, smem, stream, 1, args...);
}

// KV multicast in 2-CTA clusters (Params::kv_multicast) for an even number of row tiles: 2-5%
// faster at h_q 128 (run 49), by the clock that half the L2 traffic buys. Only if the device holds
// every cluster of the grid at once (a second wave would double the time). DISTMLA_KV_MULTICAST=0
// turns it off.
bool use_kv_multicast(const DeviceFacts& facts, dim3 grid) {
  static const bool on = [] {
    const char* e = std::getenv("DISTMLA_KV_MULTICAST");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on && grid.y % 2 == 0 && static_cast<long long>(facts.pair_clusters) * 2 >= 1LL * grid.x * grid.y;
}

// The split combine with kQ warps a row: grid (batch or num_parts - 1 (combine_by_cut),
// ceil(rows * kQ / 8)) of 8-warp CTAs; the partials are fp32 for fp32 out, else 16-bit (Meta::part_o).
dim3 combine_grid(const Params& p, int kQ) {
  return dim3(combine_by_cut(p.batch, p.num_parts) ? p.num_parts - 1 : p.batch, (p.rows * kQ + 7) / 8);
}
template <typename Elem, int kQ>
cudaError_t launch_combine(int num_sms, int smem_per_sm, cudaStream_t stream, const Params& p) {
  const dim3 grid = combine_grid(p, kQ);
  const size_t smem = combine_spread_smem(static_cast<int>(grid.x * grid.y), num_sms, smem_per_sm);
  if (p.out_fp32) return launch_pdl(combine_kernel<Elem, kQ, float>, grid, dim3(256), smem, stream, p);
  return launch_pdl(combine_kernel<Elem, kQ, uint16_t>, grid, dim3(256), smem, stream, p);
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
    schedule_kernel<<<1, kSchedThreads, 0, stream>>>(t.seqlens, meta, s.batch, max_len, w.num_parts, tiles);
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
  p.num_slices = t.slices.num_slices;
  p.max_slice = t.slices.max_slice > 0 ? t.slices.max_slice : s.h_q;
  p.slice_base = s.h_q / p.num_slices;
  p.slice_rem = s.h_q % p.num_slices;
  p.out_slice_stride = t.slices.out_slice_stride;
  p.lse_slice_stride = t.slices.lse_slice_stride;

  DeviceFacts facts;
  err = device_setup<Elem>(&facts);
  if (err != cudaSuccess) return err;
  const dim3 grid(w.num_parts, tiles);
  p.count_splits = kind == KernelKind::kSimple ? 0 : 1;
  if (kind == KernelKind::kSimple) {
    err = launch_pdl(decode_simple_kernel<Elem>, grid, dim3(256), 0, stream, p);
  } else {
    EncodeTiledFn encode = get_encode_fn();
    if (encode == nullptr) return cudaErrorNotSupported;
    CUtensorMap map;
    std::memset(&map, 0, sizeof(map));
    const int R = std::min(s.page_size, kBlockN);
    cuuint64_t gdim[2] = {static_cast<cuuint64_t>(kDQK),
                          static_cast<cuuint64_t>(s.num_blocks) * static_cast<cuuint64_t>(s.page_size)};
    cuuint64_t gstride[1] = {static_cast<cuuint64_t>(kDQK) * 2};
    cuuint32_t box[2] = {64, static_cast<cuuint32_t>(R)};
    cuuint32_t estride[2] = {1, 1};
    const CUtensorMapDataType dtype =
        s.qkv_type == ElemType::kFP16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    // L2 promotion of 128 B, the size of one chunk row of a box: 256 B was 1-4% slower on the
    // memory-bound rows and no faster at h_q 128 (run 46).
    CUresult cr = encode(&map, dtype, 2, const_cast<void*>(t.kv), gdim, gstride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                         CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                         CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (cr != CUDA_SUCCESS) return cudaErrorInvalidValue;
    // Q as [batch][rows][576]: a sequence's row tile is one 64 x 64 box a chunk; its rows past
    // `rows` are out of bounds and arrive as zeros.
    CUtensorMap q_map;
    std::memset(&q_map, 0, sizeof(q_map));
    cuuint64_t qdim[3] = {static_cast<cuuint64_t>(kDQK), static_cast<cuuint64_t>(rows),
                          static_cast<cuuint64_t>(s.batch)};
    cuuint64_t qstride[2] = {static_cast<cuuint64_t>(kDQK) * 2, static_cast<cuuint64_t>(rows) * kDQK * 2};
    cuuint32_t qbox[3] = {64, static_cast<cuuint32_t>(kBlockM), 1};
    cuuint32_t qestride[3] = {1, 1, 1};
    cr = encode(&q_map, dtype, 3, const_cast<void*>(t.q), qdim, qstride, qbox, qestride, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (cr != CUDA_SUCCESS) return cudaErrorInvalidValue;
    auto kernel = kind == KernelKind::kTSplit ? decode_wgmma3_kernel<Elem, false> : decode_wgmma3_kernel<Elem, true>;
    p.kv_multicast = use_kv_multicast(facts, grid) ? 1 : 0;
#if DISTMLA_MERGE_IN_DECODE
    p.merge_splits = kind == KernelKind::kDSplit && !p.out_fp32 && merge_fits(w.num_parts) ? 1 : 0;
#endif
    err = launch_pdl_clusters(kernel, grid, dim3(kThreadsV3), static_cast<size_t>(kSmemBytes), stream,
                              p.kv_multicast ? 2 : 1, map, q_map, p);
#if DISTMLA_DECODE_TRACE
    if (err == cudaSuccess) trace_after_launch(stream);
#endif
  }
  if (err != cudaSuccess) return err;
#if DISTMLA_MERGE_IN_DECODE
  if (p.merge_splits) return cudaSuccess;  // merged in the decode: no combine
#endif
  // About num_parts / batch splits a sequence: with 4 or more, 4 warps a row (docs/PERFORMANCE.md,
  // run 23: one sequence over 66 parts 8% faster; many short splits are faster with 1), or 2
  // when 4 would not fit the SMs in one wave of 4 CTAs each (its 64 registers a thread; run 52:
  // b 16 h_q 128 ran 1024 CTAs of the combine in two waves, 9 us).
  const int per_sm = facts.smem_per_sm;
  if (w.num_parts < 4 * s.batch) return launch_combine<Elem, 1>(s.num_sms, per_sm, stream, p);
  const dim3 g4 = combine_grid(p, 4);
  const long long ctas4 = static_cast<long long>(g4.x) * g4.y;
  return ctas4 <= 4LL * std::max(s.num_sms, 1) ? launch_combine<Elem, 4>(s.num_sms, per_sm, stream, p)
                                                : launch_combine<Elem, 2>(s.num_sms, per_sm, stream, p);
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
  if (cudaFuncGetAttributes(&attr, decode_wgmma3_kernel<__nv_bfloat16, true>) != cudaSuccess) {
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
  if ((reinterpret_cast<uintptr_t>(t.q) | reinterpret_cast<uintptr_t>(t.kv) | reinterpret_cast<uintptr_t>(t.out) |
       reinterpret_cast<uintptr_t>(workspace)) & 15u)
    return cudaErrorMisalignedAddress;
  const OutSlices& o = t.slices;
  if (o.num_slices < 1 || o.max_slice < 0 ||
      (o.num_slices > 1 && o.max_slice < (s.h_q + o.num_slices - 1) / o.num_slices))
    return cudaErrorInvalidValue;
  if (o.out_slice_stride * (s.out_type == ElemType::kFP32 ? 4 : 2) % 16 != 0) return cudaErrorMisalignedAddress;
  const WsLayout w = make_layout(s);
  if (workspace_bytes < w.total) return cudaErrorInvalidValue;
  const Meta meta = make_meta(w, workspace);
  if (s.qkv_type == ElemType::kFP16) return run_decode<__half>(s, t, w, meta, reuse_schedule, stream);
  return run_decode<__nv_bfloat16>(s, t, w, meta, reuse_schedule, stream);
}

}  // namespace distmla::kernels
