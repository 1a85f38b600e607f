// Host side of the cross-rank exchange: packing head slices for all-to-all and the cross-rank
// combine (distmla::merge_partials per row). The device versions are in
// kernels/cross_rank_combine.h; both read and write the same layouts.
#pragma once

#include <cstddef>
#include <cstdint>

#include "distmla/distmla.h"

namespace distmla::dist {

// num_parts partials of one [batch, s_q, part_heads, 512] o block (partial dtype) followed,
// lse_offset bytes from the part start, by fp32 lse in [b, part_heads, s_q] (parts c < bsh_from)
// or [b, s_q, part_heads] (parts c >= bsh_from) layout. Parts are part_stride bytes apart.
struct CombineLayout {
  int num_parts = 1;
  int batch = 0;
  int s_q = 1;
  int heads = 0;       // heads combined (heads head_offset .. head_offset + heads of a part)
  int part_heads = 0;  // head dimension of a part
  int head_offset = 0;
  size_t part_stride = 0;
  size_t lse_offset = 0;
  dmlaDataType_t part_dtype = dmlaBF16;
  int bsh_from = 1 << 30;
};

// Host scratch bytes combine_host needs for num_parts.
size_t combine_host_scratch_bytes(int num_parts);
// out [batch, s_q, heads, 512] (out_dtype), lse [batch, heads, s_q].
void combine_host(const CombineLayout& l, const void* parts, void* out, dmlaDataType_t out_dtype,
                  float* lse, void* scratch);

// Splits o [batch, s_q, heads, 512] + lse (lse_bsh or [b, heads, s_q]) into num_chunks chunks
// chunk_stride bytes apart; chunk c holds heads slice(c) as o [batch, s_q, max_slice, 512]
// then (at lse_offset) lse [batch, s_q, max_slice].
struct PackLayout {
  int batch = 0;
  int s_q = 1;
  int heads = 0;
  int num_chunks = 1;
  int max_slice = 0;
  dmlaDataType_t dtype = dmlaBF16;
  bool src_lse_bsh = false;
  size_t chunk_stride = 0;
  size_t lse_offset = 0;
};
void pack_head_slices_host(const PackLayout& l, const void* o, const float* lse, void* chunks);

}  // namespace distmla::dist
