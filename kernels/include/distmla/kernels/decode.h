// Device-side MLA decode: the contract between lib/ (plan/run) and the sm90 kernels.
// Plain structs that carry the stream (FlashMLA style); nothing here allocates or syncs.
// This header is host-compilable (no CUDA device code) so lib/ .cpp files can include it.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace distmla::kernels {

enum class ElemType : int { kBF16 = 0, kFP16 = 1, kFP32 = 2 };

// What the schedule and the workspace depend on (fixed at plan time).
struct DecodeShape {
  int batch = 0;
  int s_q = 1;
  int h_q = 1;
  int page_size = 64;
  int num_blocks = 0;
  int max_blocks_per_seq = 0;
  ElemType qkv_type = ElemType::kBF16;  // q and KV pool
  ElemType out_type = ElemType::kBF16;  // out: qkv_type or fp32
  float scale = 0.f;                    // already resolved (never 0 here)
  bool causal = true;
  int num_sms = 132;                    // of the device the plan was made for
};

#if defined(__CUDACC__)
#define DISTMLA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DISTMLA_HOST_DEVICE inline
#endif

// Head slices: H heads in n consecutive slices, the first H % n one head larger (the
// distributed layer's split_range). With base = H / n and rem = H % n, returns the slice
// holding `head` and sets *in_slice to its index there.
DISTMLA_HOST_DEVICE int head_slice_of(int head, int base, int rem, int* in_slice) {
  const int big = rem * (base + 1);
  const int c = head < big ? head / (base + 1) : rem + (head - big) / base;
  *in_slice = head - (c * base + (c < rem ? c : rem));
  return c;
}

// Element offsets of row (b, t, head) in out and lse with the heads in head slices (strides in
// elements; base / rem as for head_slice_of). One slice with max_slice = h_q is the plain
// layout: out [batch, s_q, h_q, 512], lse [batch, h_q, s_q].
struct SliceRowOffsets {
  size_t o, lse;
};
DISTMLA_HOST_DEVICE SliceRowOffsets slice_row_offsets(int b, int t, int head, int s_q, int num_slices,
                                                      int max_slice, int base, int rem, size_t out_slice_stride,
                                                      size_t lse_slice_stride) {
  constexpr size_t kOutDim = 512;  // d_v
  int hl = head;
  const int c = num_slices > 1 ? head_slice_of(head, base, rem, &hl) : 0;
  return {c * out_slice_stride + ((static_cast<size_t>(b) * s_q + t) * max_slice + hl) * kOutDim,
          c * lse_slice_stride + (static_cast<size_t>(b) * max_slice + hl) * s_q + t};
}

// Where the rows of out / lse go: heads in num_slices consecutive slices (the first
// h_q % num_slices one head larger); slice c's rows at out + c * out_slice_stride elements as
// [batch, s_q, max_slice, 512] and its lse at lse + c * lse_slice_stride as [batch, max_slice,
// s_q]. The default (one slice of h_q heads) is the plain layout.
struct OutSlices {
  int num_slices = 1;
  int max_slice = 0;  // 0: h_q
  size_t out_slice_stride = 0;  // elements of the out type
  size_t lse_slice_stride = 0;  // floats
};

struct DecodeTensors {
  const void* q = nullptr;             // [batch, s_q, h_q, 576]
  const void* kv = nullptr;            // [num_blocks, page_size, 576]
  const int32_t* block_table = nullptr;  // [batch, max_blocks_per_seq]
  const int32_t* seqlens = nullptr;      // [batch]
  void* out = nullptr;                 // [batch, s_q, h_q, 512], or head slices (OutSlices)
  float* lse = nullptr;                // [batch, h_q, s_q], or head slices
  OutSlices slices;
};

// Bytes of device workspace for shape (schedule metadata + split partials), 256-aligned.
size_t decode_workspace_bytes(const DecodeShape& shape);

// Launches the whole step on stream: schedule (unless reuse_schedule), split decode, combine.
// Returns the first CUDA error (launch errors included). Never synchronises.
// Supported: qkv_type bf16 or fp16 (out_type = qkv_type or fp32), page_size 16/32/64/128,
// h_q 1..128, s_q 1..4; anything else returns cudaErrorInvalidValue before any launch.
// reuse_schedule: the schedule metadata left in this workspace by an earlier call with the
// same seqlens (e.g. the previous layer) is reused; the seqlens are then not read again.
// Environment (debugging/measuring): DISTMLA_DECODE_KERNEL=dsplit (default) | tsplit | simple.
cudaError_t decode(const DecodeShape& shape, const DecodeTensors& t, void* workspace,
                   size_t workspace_bytes, bool reuse_schedule, cudaStream_t stream);

// True if kernels for this device were compiled in (sm_90a) and the device is sm_90.
bool device_supported(int device);

}  // namespace distmla::kernels
