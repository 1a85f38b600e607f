// Host cross-rank combine: per row, the merge law of DESIGN.md section 3 via
// distmla::merge_partials (the distributed layer has no attention math of its own).
#include "distmla/dist/host_combine.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "distmla/bf16.h"
#include "distmla/merge.h"

namespace distmla::dist {

namespace {

inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

inline void load_row(const void* base, dmlaDataType_t dt, size_t index, float* dst) {
  if (dt == dmlaFP32) {
    std::memcpy(dst, static_cast<const float*>(base) + index, DMLA_D_V * sizeof(float));
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(base) + index;
  for (int k = 0; k < DMLA_D_V; ++k) dst[k] = half_bits_to_float(src[k], dt);
}

inline void store_row(const double* src, dmlaDataType_t dt, void* base, size_t index) {
  if (dt == dmlaFP32) {
    float* d = static_cast<float*>(base) + index;
    for (int k = 0; k < DMLA_D_V; ++k) d[k] = static_cast<float>(src[k]);
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(base) + index;
  for (int k = 0; k < DMLA_D_V; ++k) d[k] = float_to_half_bits(static_cast<float>(src[k]), dt);
}

}  // namespace

size_t combine_host_scratch_bytes(int num_parts) {
  const size_t n = static_cast<size_t>(num_parts);
  return align_up(n * DMLA_D_V * sizeof(float), 64) + align_up(n * sizeof(float), 64) +
         align_up(n * sizeof(const float*), 64) + DMLA_D_V * sizeof(double);
}

void combine_host(const CombineLayout& l, const void* parts, void* out, dmlaDataType_t out_dtype,
                  float* lse, void* scratch) {
  const size_t n = static_cast<size_t>(l.num_parts);
  char* s = static_cast<char*>(scratch);
  float* rows = reinterpret_cast<float*>(s);
  s += align_up(n * DMLA_D_V * sizeof(float), 64);
  float* lses = reinterpret_cast<float*>(s);
  s += align_up(n * sizeof(float), 64);
  const float** ptrs = reinterpret_cast<const float**>(s);
  s += align_up(n * sizeof(const float*), 64);
  double* merged = reinterpret_cast<double*>(s);

  const char* base = static_cast<const char*>(parts);
  for (int b = 0; b < l.batch; ++b)
    for (int t = 0; t < l.s_q; ++t)
      for (int h = 0; h < l.heads; ++h) {
        const int ph = l.head_offset + h;
        const size_t o_index = ((static_cast<size_t>(b) * l.s_q + t) * l.part_heads + ph) * DMLA_D_V;
        const size_t lse_bsh = (static_cast<size_t>(b) * l.s_q + t) * l.part_heads + ph;
        const size_t lse_bhs = (static_cast<size_t>(b) * l.part_heads + ph) * l.s_q + t;
        for (size_t c = 0; c < n; ++c) {
          const char* part = base + c * l.part_stride;
          lses[c] = reinterpret_cast<const float*>(part + l.lse_offset)[static_cast<int>(c) >= l.bsh_from ? lse_bsh : lse_bhs];
          // A part with lse -inf carries weight zero whatever its o holds.
          if (lses[c] == -std::numeric_limits<float>::infinity())
            std::memset(rows + c * DMLA_D_V, 0, DMLA_D_V * sizeof(float));
          else
            load_row(part, l.part_dtype, o_index, rows + c * DMLA_D_V);
          ptrs[c] = rows + c * DMLA_D_V;
        }
        const double m = merge_partials(l.num_parts, lses, ptrs, DMLA_D_V, merged);
        store_row(merged, out_dtype, out, ((static_cast<size_t>(b) * l.s_q + t) * l.heads + h) * DMLA_D_V);
        lse[(static_cast<size_t>(b) * l.heads + h) * l.s_q + t] = static_cast<float>(m);
      }
}

void pack_head_slices_host(const PackLayout& l, const void* o, const float* lse, void* chunks) {
  const size_t e = l.dtype == dmlaFP32 ? 4 : 2;
  const char* src = static_cast<const char*>(o);
  char* dst = static_cast<char*>(chunks);
  for (int c = 0; c < l.num_chunks; ++c) {
    const int base = l.heads / l.num_chunks, rem = l.heads % l.num_chunks;
    const int count = base + (c < rem ? 1 : 0);
    const int begin = c * base + (c < rem ? c : rem);
    char* chunk = dst + c * l.chunk_stride;
    float* chunk_lse = reinterpret_cast<float*>(chunk + l.lse_offset);
    for (int b = 0; b < l.batch; ++b)
      for (int t = 0; t < l.s_q; ++t)
        for (int h = 0; h < count; ++h) {
          const int gh = begin + h;
          const size_t row = static_cast<size_t>(b) * l.s_q + t;
          std::memcpy(chunk + ((row * l.max_slice + h) * DMLA_D_V) * e,
                      src + ((row * l.heads + gh) * DMLA_D_V) * e, DMLA_D_V * e);
          const size_t li = l.src_lse_bsh ? row * l.heads + gh
                                          : (static_cast<size_t>(b) * l.heads + gh) * l.s_q + t;
          chunk_lse[row * l.max_slice + h] = lse[li];
        }
  }
}

}  // namespace distmla::dist
