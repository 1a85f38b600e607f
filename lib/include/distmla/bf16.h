// Host-side bf16 / fp16 conversions (round to nearest even), shared by the whole project.
#pragma once

#include <cstdint>

#include "distmla/distmla.h"

namespace distmla {

uint16_t float_to_bf16(float f);   // NaN stays NaN, overflow rounds to inf
float bf16_to_float(uint16_t h);
uint16_t float_to_fp16(float f);
float fp16_to_float(uint16_t h);

// dtype-dispatched helpers for 16-bit storage (dmlaBF16 or dmlaFP16).
uint16_t float_to_half_bits(float f, dmlaDataType_t dtype);
float half_bits_to_float(uint16_t h, dmlaDataType_t dtype);
// Size in bytes of one element of dtype.
size_t dtype_size(dmlaDataType_t dtype);

}  // namespace distmla
