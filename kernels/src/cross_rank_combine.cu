// Cross-rank combine and the head-slice pack for all-to-all: one warp per 512-wide row, four
// rows a block, 16-byte loads and stores (each lane holds 16 values of the row: two 8-element
// vectors of a 16-bit type or four 4-element vectors of fp32). Small and latency-bound: at
// 0.5-2 MiB a step, the number of dependent memory round trips is what costs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "distmla/kernels/cross_rank_combine.h"
#include "peer_sync.cuh"

namespace distmla::kernels {

namespace {

using namespace detail;

constexpr int kDv = 512;
constexpr int kRowsPerBlock = 4;
constexpr int kThreads = 32 * kRowsPerBlock;
constexpr int kPerLane = kDv / 32;  // 16 values of a row per lane

// Element v of vector j of a lane sits at column (j * 32 + lane) * kElems + v: every warp-wide
// vector access covers 32 * 16 contiguous bytes.
template <ElemType T>
struct Vec {
  static constexpr int kElems = T == ElemType::kFP32 ? 4 : 8;  // elements in 16 bytes
  static constexpr int kCount = kPerLane / kElems;              // vectors a lane
};

__device__ __forceinline__ float2 unpack2(uint32_t w, ElemType t) {
  if (t == ElemType::kBF16) return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
template <ElemType T>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  if constexpr (T == ElemType::kBF16) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  } else {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
}

// The lane's 16 values of row `row` (elements of type T from base), as loaded (raw 16-byte
// vectors) and then as floats. A part's loads only fill registers and are converted at their
// use, so that the loads of several parts are in flight together (a conversion right after each
// conditional load made every load wait for the previous one in the split combine, run 36).
struct RawRow {
  uint4 v[4];  // Vec<T>::kCount of them: 4 (fp32) or 2 (16-bit)
};
// kPeer: another GPU wrote it during this kernel (L2 of its owner, not the read-only path).
template <typename U, bool kPeer>
__device__ __forceinline__ U load(const U* p) {
  if constexpr (kPeer) return __ldcg(p);
  else return __ldg(p);
}
template <ElemType T, bool kPeer>
__device__ __forceinline__ void load_row(const void* base, size_t row, int lane, RawRow& r) {
  using V = Vec<T>;
  constexpr size_t kBytes = T == ElemType::kFP32 ? 4 : 2;
#pragma unroll
  for (int j = 0; j < V::kCount; ++j) {
    const size_t col = static_cast<size_t>(j * 32 + lane) * V::kElems;
    const char* p = static_cast<const char*>(base) + (row * kDv + col) * kBytes;
    r.v[j] = load<uint4, kPeer>(reinterpret_cast<const uint4*>(p));
  }
}
template <ElemType T>
__device__ __forceinline__ void row_floats(const RawRow& r, float (&f)[kPerLane]) {
  using V = Vec<T>;
#pragma unroll
  for (int j = 0; j < V::kCount; ++j) {
    const uint32_t w[4] = {r.v[j].x, r.v[j].y, r.v[j].z, r.v[j].w};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if constexpr (T == ElemType::kFP32) {
        f[4 * j + q] = __uint_as_float(w[q]);
      } else {
        const float2 p = unpack2(w[q], T);
        f[8 * j + 2 * q] = p.x;
        f[8 * j + 2 * q + 1] = p.y;
      }
    }
  }
}

// Stores the lane's values laid out as load_row<PT> read them, converted to OT.
template <ElemType PT, ElemType OT>
__device__ __forceinline__ void store_row(void* base, size_t row, int lane, const float (&f)[kPerLane]) {
  using V = Vec<PT>;
#pragma unroll
  for (int j = 0; j < V::kCount; ++j) {
    const size_t col = static_cast<size_t>(j * 32 + lane) * V::kElems;
    const float* v = f + j * V::kElems;
    if constexpr (OT == ElemType::kFP32) {
      float4* d = reinterpret_cast<float4*>(static_cast<float*>(base) + row * kDv + col);
#pragma unroll
      for (int q = 0; q < V::kElems / 4; ++q) d[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    } else if constexpr (V::kElems == 8) {
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(base) + row * kDv + col) =
          make_uint4(pack2<OT>(v[0], v[1]), pack2<OT>(v[2], v[3]), pack2<OT>(v[4], v[5]), pack2<OT>(v[6], v[7]));
    } else {
      *reinterpret_cast<uint2*>(static_cast<uint16_t*>(base) + row * kDv + col) =
          make_uint2(pack2<OT>(v[0], v[1]), pack2<OT>(v[2], v[3]));
    }
  }
}

// This warp's row (b, t, h; h fastest) of batch * s_q * heads; false past the end.
struct WarpRow {
  int h, bt, t, b;
};
__device__ __forceinline__ bool warp_row(int batch, int s_q, int heads, WarpRow* r) {
  const long long row = static_cast<long long>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<long long>(batch) * s_q * heads) return false;
  r->h = static_cast<int>(row % heads);
  r->bt = static_cast<int>(row / heads);
  r->t = r->bt % s_q;
  r->b = r->bt / s_q;
  return true;
}

// Pull merge, steps 1-2 (peer_exchange.h): the first CTA announces this rank's window, every CTA
// waits for its peers'. Returns the epoch, 0 when the call is off (a failure, now or earlier).
__device__ uint64_t pull_begin(const PeerWindow& w) {
  __shared__ uint64_t epoch;
  if (threadIdx.x == 0) {
    const bool traced = w.trace != nullptr && blockIdx.x == 0;
    const uint64_t t0 = traced ? globaltimer_ns() : 0;
    const int me = w.rank;
    const WindowCtrl my(w, me);
    const Failure err{w.error, my.failed()};
    uint64_t e = ld_volatile(my.epoch()) + 1;
    if (ld_volatile(my.failed()) != 0) e = 0;  // an earlier call failed
    if (e != 0 && atomicCAS(my.signaled(), e - 1, e) == e - 1) {
      __threadfence_system();
      for (int p = 0; p < w.world; ++p)
        if (p != me) st_release_sys(WindowCtrl(w, p).ready(me), e);
    }
    uint64_t deadline = 0;
    for (int p = 0; p < w.world && e != 0; ++p)
      if (p != me && !thread_wait_ge(my.ready(p), e, deadline, w.timeout_ns, err, kPeerErrArriveTimeout | p)) e = 0;
    if (traced && e != 0) {
      uint64_t* r = w.trace + 4 * ((e - 1) % w.trace_len);
      r[0] = e;
      r[1] = t0;
      r[2] = globaltimer_ns();
    }
    epoch = e;
  }
  __syncthreads();
  return epoch;
}

// Pull merge, step 3: once every CTA's reads are done, the last one tells the peers and waits
// until none of them reads this rank's window any more.
__device__ void pull_end(const PeerWindow& w, uint64_t e) {
  __syncthreads();
  if (threadIdx.x != 0) return;
  const int me = w.rank;
  const WindowCtrl my(w, me);
  __threadfence();
  if (atomicAdd(my.done(), 1ull) != gridDim.x - 1) return;
  st_volatile(reinterpret_cast<uint64_t*>(my.done()), 0);  // the next call starts after this kernel
  __threadfence_system();
  for (int p = 0; p < w.world; ++p)
    if (p != me) st_release_sys(WindowCtrl(w, p).freed(me), e);
  const Failure err{w.error, my.failed()};
  uint64_t deadline = 0;
  for (int p = 0; p < w.world; ++p)
    if (p != me && !thread_wait_ge(my.freed(p), e, deadline, w.timeout_ns, err, kPeerErrFreeTimeout | p)) return;
  if (w.trace) w.trace[4 * ((e - 1) % w.trace_len) + 3] = globaltimer_ns();
  st_volatile(my.epoch(), e);
}

// One warp merges one row; kPull: the parts come from the peers' windows (a.pull).
template <ElemType PT, ElemType OT, bool kPull>
__device__ __forceinline__ void combine_row(const CrossRankCombineArgs& a, const WarpRow& w) {
  const int lane = threadIdx.x % 32;
  const int h = w.h, bt = w.bt, t = w.t, b = w.b;
  const int ph = a.head_offset + h;
  const size_t o_row = static_cast<size_t>(bt) * a.part_heads + ph;
  const size_t lse_bsh = o_row;
  const size_t lse_bhs = (static_cast<size_t>(b) * a.part_heads + ph) * a.s_q + t;
  auto part = [&](int c) {
    if constexpr (kPull) return static_cast<const char*>(a.part_at[c]);
    else return static_cast<const char*>(a.parts) + c * a.part_stride;
  };
  auto part_lse = [&](int c) {
    const float* lse = reinterpret_cast<const float*>(part(c) + a.lse_offset);
    return load<float, kPull>(lse + (c >= a.bsh_from ? lse_bsh : lse_bhs));
  };

  // Online log-sum-exp over pairs of parts: a pair's lse and o loads are issued together (the
  // o loads do not wait for the weights), so CP = 2 is one memory round trip.
  float mx = -INFINITY, sum = 0.f;  // running max of the lse and sum of exp(lse - mx)
  float acc[kPerLane] = {};
  for (int c0 = 0; c0 < a.num_parts; c0 += 2) {
    float l[2];
    RawRow x[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int c = c0 + u;
      l[u] = c < a.num_parts ? part_lse(c) : -INFINITY;
      if (c < a.num_parts) load_row<PT, kPull>(part(c), o_row, lane, x[u]);
    }
    const float gm = fmaxf(mx, fmaxf(l[0], l[1]));
    if (gm == -INFINITY) continue;  // no tokens so far
    const float r = __expf(mx - gm);  // 0 while mx is still -inf
    sum *= r;
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) acc[k] *= r;
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      if (l[u] == -INFINITY) continue;  // weight zero: its o is never used (may be NaN)
      const float w = __expf(l[u] - gm);
      sum += w;
      float v[kPerLane];
      row_floats<PT>(x[u], v);
#pragma unroll
      for (int k = 0; k < kPerLane; ++k) acc[k] += w * v[k];
    }
    mx = gm;
  }
  const bool empty = mx == -INFINITY || !(sum > 0.f);
  const float lse = empty ? -INFINITY : mx + __logf(sum);
  const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
  for (int k = 0; k < kPerLane; ++k) acc[k] *= inv;
  store_row<PT, OT>(a.out, static_cast<size_t>(bt) * a.heads + h, lane, acc);
  if (lane == 0) a.lse_out[(static_cast<size_t>(b) * a.heads + h) * a.s_q + t] = lse;
}

template <ElemType PT, ElemType OT, bool kPull>
__global__ void __launch_bounds__(kThreads) combine_kernel(const __grid_constant__ CrossRankCombineArgs a) {
  uint64_t e = 0;
  if constexpr (kPull) {
    e = pull_begin(a.pull);
    if (e == 0) return;
  }
  WarpRow w;
  if (warp_row(a.batch, a.s_q, a.heads, &w)) combine_row<PT, OT, kPull>(a, w);
  if constexpr (kPull) pull_end(a.pull, e);
}

template <ElemType T>
__global__ void __launch_bounds__(kThreads) pack_kernel(PackHeadSlicesArgs a) {
  const int lane = threadIdx.x % 32;
  WarpRow w;
  if (!warp_row(a.batch, a.s_q, a.heads, &w)) return;
  const int gh = w.h, bt = w.bt, t = w.t, b = w.b;  // gh: the head among all `heads`
  int h;
  const int c = head_slice_of(gh, a.heads / a.num_chunks, a.heads % a.num_chunks, &h);
  char* chunk = static_cast<char*>(a.chunks) + c * a.chunk_stride;
  const size_t src = static_cast<size_t>(bt) * a.heads + gh;
  const size_t dst = static_cast<size_t>(bt) * a.max_slice + h;
  // A raw 16-byte copy: the row is 1 KB (16-bit) or 2 KB (fp32).
  constexpr int kVecs = kDv * (T == ElemType::kFP32 ? 4 : 2) / 16;
  const uint4* s = reinterpret_cast<const uint4*>(a.o) + src * kVecs;
  uint4* d = reinterpret_cast<uint4*>(chunk) + dst * kVecs;
#pragma unroll
  for (int v = lane; v < kVecs; v += 32) d[v] = __ldg(s + v);
  if (lane == 0) {
    const size_t li = a.src_lse_bsh ? src : (static_cast<size_t>(b) * a.heads + gh) * a.s_q + t;
    reinterpret_cast<float*>(chunk + a.lse_offset)[dst] = a.lse[li];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

unsigned blocks_for(long long rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

template <ElemType PT, bool kPull>
cudaError_t launch_combine(const CrossRankCombineArgs& a, unsigned grid, cudaStream_t stream) {
  switch (a.out_type) {
    case ElemType::kBF16: combine_kernel<PT, ElemType::kBF16, kPull><<<grid, kThreads, 0, stream>>>(a); break;
    case ElemType::kFP16: combine_kernel<PT, ElemType::kFP16, kPull><<<grid, kThreads, 0, stream>>>(a); break;
    default: combine_kernel<PT, ElemType::kFP32, kPull><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}
template <ElemType PT>
cudaError_t launch_combine(const CrossRankCombineArgs& a, unsigned grid, cudaStream_t stream) {
  return a.pull.world > 1 ? launch_combine<PT, true>(a, grid, stream) : launch_combine<PT, false>(a, grid, stream);
}

// The pull merge's arguments (parts from the window, counters, deadline) are complete.
bool pull_ok(const CrossRankCombineArgs& a) {
  const PeerWindow& w = a.pull;
  if (w.world > kMaxPeers || a.num_parts != w.world || w.rank < 0 || w.rank >= w.world || !w.error ||
      w.timeout_ns == 0 || (w.trace && w.trace_len < 1))
    return false;
  for (int c = 0; c < w.world; ++c)
    if (!a.part_at[c] || !w.ctrl[c]) return false;
  return true;
}

}  // namespace

cudaError_t cross_rank_combine(const CrossRankCombineArgs& a, cudaStream_t stream) {
  if (a.num_parts < 1 || a.num_parts > kMaxCombineParts || a.batch < 0 || a.s_q < 1 || a.heads < 0 ||
      a.part_heads < a.head_offset + a.heads)
    return cudaErrorInvalidValue;
  const bool pull = a.pull.world > 1;
  const long long rows = static_cast<long long>(a.batch) * a.s_q * a.heads;
  if (rows == 0 && !pull) return cudaSuccess;  // a pull merge with no rows here still serves its peers
  if (blocks_for(rows) > 0x7fffffffu) return cudaErrorInvalidValue;
  if (pull && !pull_ok(a)) return cudaErrorInvalidValue;
  // Vector access: the parts, their stride and out start on 16-byte boundaries (rows are 1-2 KB).
  bool parts_aligned = aligned16(a.parts) && a.part_stride % 16 == 0;
  for (int c = 0; pull && c < a.num_parts; ++c) parts_aligned = parts_aligned && aligned16(a.part_at[c]);
  if (!parts_aligned || !aligned16(a.out) || a.lse_offset % 4 != 0) return cudaErrorMisalignedAddress;
  const unsigned grid = std::max(1u, blocks_for(rows));
  switch (a.part_type) {
    case ElemType::kBF16: return launch_combine<ElemType::kBF16>(a, grid, stream);
    case ElemType::kFP16: return launch_combine<ElemType::kFP16>(a, grid, stream);
    default: return launch_combine<ElemType::kFP32>(a, grid, stream);
  }
}

cudaError_t pack_head_slices(const PackHeadSlicesArgs& a, cudaStream_t stream) {
  if (a.num_chunks < 1 || a.batch < 0 || a.s_q < 1 || a.heads < 0 || a.max_slice * a.num_chunks < a.heads)
    return cudaErrorInvalidValue;
  const long long rows = static_cast<long long>(a.batch) * a.s_q * a.heads;
  if (rows == 0) return cudaSuccess;
  if (blocks_for(rows) > 0x7fffffffu) return cudaErrorInvalidValue;
  if (!aligned16(a.o) || !aligned16(a.chunks) || a.chunk_stride % 16 != 0 || a.lse_offset % 4 != 0)
    return cudaErrorMisalignedAddress;
  const unsigned grid = blocks_for(rows);
  if (a.type == ElemType::kFP32)
    pack_kernel<ElemType::kFP32><<<grid, kThreads, 0, stream>>>(a);
  else
    pack_kernel<ElemType::kBF16><<<grid, kThreads, 0, stream>>>(a);  // a 16-bit copy: bf16 or fp16 alike
  return cudaGetLastError();
}

}  // namespace distmla::kernels
