// Cross-rank combine and head-slice pack for the distributed decode (DESIGN.md section 3, level
// 2). The partials of a row arrive from the CP ranks through NCCL; this merges them on the
// stream: lse = log(sum_c exp(lse_c)), out = sum_c exp(lse_c - lse) * o_c, max-subtracted;
// parts with lse -inf carry weight zero (never NaN); all -inf gives out 0, lse -inf.
// Host-compilable header; the distributed layer's host path uses the same layouts.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "distmla/kernels/decode.h"
#include "distmla/kernels/peer_exchange.h"

namespace distmla::kernels {

// num_parts parts, part_stride bytes apart. A part: o [batch, s_q, part_heads, 512] of
// part_type, then at lse_offset bytes fp32 lse in [batch, part_heads, s_q] for parts
// c < bsh_from and [batch, s_q, part_heads] for parts c >= bsh_from (what a decode of
// batch * s_q rows with s_q = 1 writes). Heads head_offset .. head_offset + heads are merged into
// out [batch, s_q, heads, 512] (out_type) and lse_out [batch, heads, s_q].
struct CrossRankCombineArgs {
  int num_parts = 1;
  int batch = 0;
  int s_q = 1;
  int heads = 0;
  int part_heads = 0;
  int head_offset = 0;
  const void* parts = nullptr;
  size_t part_stride = 0;
  size_t lse_offset = 0;
  ElemType part_type = ElemType::kBF16;
  int bsh_from = 1 << 30;  // first part whose lse is [batch, s_q, part_heads]
  void* out = nullptr;
  ElemType out_type = ElemType::kBF16;
  float* lse_out = nullptr;
  // Pull merge (peer_exchange.h) when pull.world > 1: num_parts = pull.world, part c at part_at[c]
  // (in rank c's window as mapped here; parts and part_stride unused), lse at part_at[c] +
  // lse_offset. The call synchronises with the group's other ranks on the device.
  PeerWindow pull;
  const void* part_at[kMaxPeers] = {};
};

constexpr int kMaxCombineParts = 256;

// parts (or part_at), part_stride and out must be 16-byte aligned (else cudaErrorMisalignedAddress;
// nothing launched). Launch errors returned; never synchronises (graph-capturable).
cudaError_t cross_rank_combine(const CrossRankCombineArgs& a, cudaStream_t stream);

// Splits o [batch, s_q, heads, 512] + lse (src_lse_bsh ? [b, s_q, heads] : [b, heads, s_q])
// into num_chunks chunks chunk_stride bytes apart: chunk c holds head slice c (the first
// heads % num_chunks slices one head more) as o [batch, s_q, max_slice, 512] and, at
// lse_offset, lse [batch, s_q, max_slice] (the all-to-all send buffer). o, chunks and
// chunk_stride must be 16-byte aligned.
struct PackHeadSlicesArgs {
  int batch = 0;
  int s_q = 1;
  int heads = 0;
  int num_chunks = 1;
  int max_slice = 0;
  ElemType type = ElemType::kBF16;
  bool src_lse_bsh = false;
  const void* o = nullptr;
  const float* lse = nullptr;
  void* chunks = nullptr;
  size_t chunk_stride = 0;
  size_t lse_offset = 0;
};
cudaError_t pack_head_slices(const PackHeadSlicesArgs& a, cudaStream_t stream);

}  // namespace distmla::kernels
