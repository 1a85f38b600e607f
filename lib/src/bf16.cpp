// Host bf16/fp16 conversions, round to nearest even, with NaN/inf/subnormal handling.
#include "distmla/bf16.h"

#include <cstring>

namespace distmla {

namespace {
uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace

uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep the sign, force a quiet mantissa bit so truncation cannot make it inf.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // Round to nearest even on the 16 dropped bits; a carry into the exponent correctly
  // rounds the largest finite values up to inf.
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_fp16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN (quiet)
  if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // inf
  int exp = static_cast<int>(abs >> 23) - 127;
  uint32_t mant = abs & 0x7fffffu;
  if (exp > 15) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (exp >= -14) {
    // Normal half: 10 mantissa bits kept, 13 dropped, round to nearest even. A carry out of
    // the mantissa bumps the exponent (and 65520+ becomes inf), which is the right result.
    uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half (or zero): value = m * 2^-24 with the implicit bit restored.
  if (exp < -25) return sign;  // below half the smallest subnormal: rounds to 0
  uint32_t full = mant | 0x800000u;       // 24-bit significand, value = full * 2^(exp-23)
  int shift = -exp - 1;                   // full >> shift gives units of 2^-24 (shift 14..24)
  uint32_t h = full >> shift;
  uint32_t rem = full & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float fp16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_float(sign);
    // Subnormal: exact in float.
    float v = static_cast<float>(mant) * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t float_to_half_bits(float f, dmlaDataType_t dtype) {
  return dtype == dmlaFP16 ? float_to_fp16(f) : float_to_bf16(f);
}

float half_bits_to_float(uint16_t h, dmlaDataType_t dtype) {
  return dtype == dmlaFP16 ? fp16_to_float(h) : bf16_to_float(h);
}

size_t dtype_size(dmlaDataType_t dtype) {
  switch (dtype) {
    case dmlaBF16:
    case dmlaFP16:
      return 2;
    case dmlaFP32:
      return 4;
  }
  return 0;
}

}  // namespace distmla
