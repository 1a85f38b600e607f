// CPU backend: the double reference, converted to the output dtype. Host pointers only.
#include <cstdint>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/reference.h"
#include "internal.h"

namespace distmla::detail {

dmlaResult_t cpu_run(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t,
                     const dmlaHeadSlices_t& slices) {
  std::vector<double> out_ref, lse_ref;  // plain layout: [b, s_q, h_q, 512], [b, h_q, s_q]
  reference_decode(shape, t, &out_ref, &lse_ref);
  for (int b = 0; b < shape.batch; ++b)
    for (int q = 0; q < shape.s_q; ++q)
      for (int h = 0; h < shape.h_q; ++h) {
        const kernels::SliceRowOffsets dst = sliced_row(shape, slices, b, q, h);
        const double* src = out_ref.data() + ((static_cast<size_t>(b) * shape.s_q + q) * shape.h_q + h) * DMLA_D_V;
        if (shape.out_dtype == dmlaFP32) {
          float* out = static_cast<float*>(t.out) + dst.o;
          for (int k = 0; k < DMLA_D_V; ++k) out[k] = static_cast<float>(src[k]);
        } else {
          uint16_t* out = static_cast<uint16_t*>(t.out) + dst.o;
          for (int k = 0; k < DMLA_D_V; ++k) out[k] = float_to_half_bits(static_cast<float>(src[k]), shape.out_dtype);
        }
        t.lse[dst.lse] = static_cast<float>(lse_ref[(static_cast<size_t>(b) * shape.h_q + h) * shape.s_q + q]);
      }
  return dmlaSuccess;
}

}  // namespace distmla::detail
