// Cross-rank combine (one block of 128 threads per output row, 4 values a thread) and the
// head-slice pack for all-to-all.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "distmla/kernels/cross_rank_combine.h"

namespace distmla::kernels {

namespace {

constexpr int kDv = 512;
constexpr int kThreads = 128;
constexpr int kPerThread = kDv / kThreads;

__device__ __forceinline__ float load_elem(const void* base, size_t i, ElemType t) {
  switch (t) {
    case ElemType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case ElemType::kFP16: return __half2float(static_cast<const __half*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store_elem(void* base, size_t i, ElemType t, float v) {
  switch (t) {
    case ElemType::kBF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
    case ElemType::kFP16: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(base)[i] = v;
  }
}

__global__ void __launch_bounds__(kThreads) combine_kernel(CrossRankCombineArgs a) {
  const int row = blockIdx.x;  // (b, t, h) with h fastest
  const int h = row % a.heads;
  const int bt = row / a.heads;
  const int t = bt % a.s_q;
  const int b = bt / a.s_q;
  const int ph = a.head_offset + h;
  const size_t o_index = (static_cast<size_t>(bt) * a.part_heads + ph) * kDv;
  const size_t lse_bsh = static_cast<size_t>(bt) * a.part_heads + ph;
  const size_t lse_bhs = (static_cast<size_t>(b) * a.part_heads + ph) * a.s_q + t;
  const char* parts = static_cast<const char*>(a.parts);

  // Every thread reads the few lse values itself (num_parts is small): no shared memory.
  float m = -INFINITY;
  for (int c = 0; c < a.num_parts; ++c) {
    const float l = reinterpret_cast<const float*>(parts + c * a.part_stride + a.lse_offset)[c >= a.bsh_from ? lse_bsh : lse_bhs];
    m = fmaxf(m, l);
  }
  float acc[kPerThread] = {};
  float lse = -INFINITY;
  if (m != -INFINITY) {
    float sum = 0.f;
    for (int c = 0; c < a.num_parts; ++c) {
      const char* part = parts + c * a.part_stride;
      const float l = reinterpret_cast<const float*>(part + a.lse_offset)[c >= a.bsh_from ? lse_bsh : lse_bhs];
      if (l == -INFINITY) continue;  // weight zero; its o is never read (may be anything)
      const float w = __expf(l - m);
      sum += w;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k)
        acc[k] += w * load_elem(part, o_index + threadIdx.x + k * kThreads, a.part_type);
    }
    const float inv = 1.f / sum;
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) acc[k] *= inv;
    lse = m + __logf(sum);
  }
  const size_t out_index = (static_cast<size_t>(bt) * a.heads + h) * kDv;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) store_elem(a.out, out_index + threadIdx.x + k * kThreads, a.out_type, acc[k]);
  if (threadIdx.x == 0) a.lse_out[(static_cast<size_t>(b) * a.heads + h) * a.s_q + t] = lse;
}

__global__ void __launch_bounds__(kThreads) pack_kernel(PackHeadSlicesArgs a, int elem_bytes) {
  const int row = blockIdx.x;  // (b, t, gh) with gh fastest
  const int gh = row % a.heads;
  const int bt = row / a.heads;
  const int t = bt % a.s_q;
  const int b = bt / a.s_q;
  const int base = a.heads / a.num_chunks, rem = a.heads % a.num_chunks;
  // Slice c covers [c*base + min(c, rem), ...): invert that for gh.
  const int big = rem * (base + 1);
  const int c = gh < big ? gh / (base + 1) : rem + (gh - big) / base;
  const int h = gh - (c * base + min(c, rem));
  char* chunk = static_cast<char*>(a.chunks) + c * a.chunk_stride;
  const size_t src = (static_cast<size_t>(bt) * a.heads + gh) * kDv;
  const size_t dst = (static_cast<size_t>(bt) * a.max_slice + h) * kDv;
  // 16-bit or 32-bit elements, copied as 4-byte words.
  const int words = kDv * elem_bytes / 4;
  const uint32_t* s = reinterpret_cast<const uint32_t*>(static_cast<const char*>(a.o) + src * elem_bytes);
  uint32_t* d = reinterpret_cast<uint32_t*>(chunk + dst * elem_bytes);
  for (int w = threadIdx.x; w < words; w += kThreads) d[w] = s[w];
  if (threadIdx.x == 0) {
    const size_t li = a.src_lse_bsh ? static_cast<size_t>(bt) * a.heads + gh
                                    : (static_cast<size_t>(b) * a.heads + gh) * a.s_q + t;
    reinterpret_cast<float*>(chunk + a.lse_offset)[static_cast<size_t>(bt) * a.max_slice + h] = a.lse[li];
  }
}

}  // namespace

cudaError_t cross_rank_combine(const CrossRankCombineArgs& a, cudaStream_t stream) {
  if (a.num_parts < 1 || a.num_parts > kMaxCombineParts || a.batch < 0 || a.s_q < 1 || a.heads < 0 ||
      a.part_heads < a.head_offset + a.heads)
    return cudaErrorInvalidValue;
  const long long rows = static_cast<long long>(a.batch) * a.s_q * a.heads;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidValue;
  combine_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t pack_head_slices(const PackHeadSlicesArgs& a, cudaStream_t stream) {
  if (a.num_chunks < 1 || a.batch < 0 || a.s_q < 1 || a.heads < 0 || a.max_slice * a.num_chunks < a.heads)
    return cudaErrorInvalidValue;
  const long long rows = static_cast<long long>(a.batch) * a.s_q * a.heads;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffffLL) return cudaErrorInvalidValue;
  const int elem_bytes = a.type == ElemType::kFP32 ? 4 : 2;
  pack_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a, elem_bytes);
  return cudaGetLastError();
}

}  // namespace distmla::kernels
