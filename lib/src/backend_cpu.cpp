// CPU backend: the double reference, converted to the output dtype. Host pointers only.
#include <cstdint>

#include "distmla/bf16.h"
#include "distmla/reference.h"
#include "internal.h"

namespace distmla::detail {

dmlaResult_t cpu_run(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t) {
  std::vector<double> out_ref, lse_ref;
  reference_decode(shape, t, &out_ref, &lse_ref);
  if (shape.out_dtype == dmlaFP32) {
    float* out = static_cast<float*>(t.out);
    for (size_t k = 0; k < out_ref.size(); ++k) out[k] = static_cast<float>(out_ref[k]);
  } else {
    uint16_t* out = static_cast<uint16_t*>(t.out);
    for (size_t k = 0; k < out_ref.size(); ++k) {
      out[k] = float_to_half_bits(static_cast<float>(out_ref[k]), shape.out_dtype);
    }
  }
  for (size_t k = 0; k < lse_ref.size(); ++k) t.lse[k] = static_cast<float>(lse_ref[k]);
  return dmlaSuccess;
}

}  // namespace distmla::detail
