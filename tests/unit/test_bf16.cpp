// bf16 / fp16 conversions: round to nearest even, NaN, inf, overflow, subnormals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "distmla/bf16.h"

namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Bf16, ExactValues) {
  EXPECT_EQ(distmla::float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(distmla::float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(distmla::float_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(distmla::float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(distmla::bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(distmla::bf16_to_float(0xc040), -3.0f);
}

TEST(Bf16, RoundsToNearestEven) {
  // ulp of bf16 at 1 is 2^-7: 1 + 2^-8 is a tie and goes to the even 1.0 ...
  EXPECT_EQ(distmla::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  // ... 1 + 3*2^-8 is a tie between 0x3f81 and 0x3f82 and goes to the even 0x3f82.
  EXPECT_EQ(distmla::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  // Just above a tie rounds up, just below rounds down.
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(distmla::float_to_bf16(-1.0f - 3 * std::ldexp(1.0f, -8)), 0xbf82);
}

TEST(Bf16, NanInfOverflow) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(distmla::float_to_bf16(inf), 0x7f80);
  EXPECT_EQ(distmla::float_to_bf16(-inf), 0xff80);
  EXPECT_EQ(distmla::float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x7f7f0000u)), 0x7f7f);             // largest bf16 stays
  // A NaN whose payload lives only in the low 16 bits must stay NaN, not become inf.
  const uint16_t n = distmla::float_to_bf16(from_bits(0x7f800001u));
  EXPECT_TRUE(std::isnan(distmla::bf16_to_float(n)));
  EXPECT_TRUE(std::isnan(distmla::bf16_to_float(distmla::float_to_bf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(distmla::bf16_to_float(0x7f80)));
}

TEST(Bf16, SubnormalsAndRoundTrip) {
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x00010000u)), 0x0001);  // smallest bf16 subnormal
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x00008000u)), 0x0000);  // tie to even: 0
  EXPECT_EQ(distmla::float_to_bf16(from_bits(0x00018000u)), 0x0002);  // tie to even: 2
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = distmla::bf16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(distmla::float_to_bf16(f), b) << "bits " << b;
  }
}

TEST(Fp16, ExactAndRounding) {
  EXPECT_EQ(distmla::float_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(distmla::float_to_fp16(-2.5f), 0xc100);
  EXPECT_EQ(distmla::float_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(distmla::float_to_fp16(65519.0f), 0x7bff);  // below the midpoint to 65536
  EXPECT_EQ(distmla::float_to_fp16(65520.0f), 0x7c00);  // tie rounds to even = inf
  // ulp at 1 is 2^-10: ties go to even.
  EXPECT_EQ(distmla::float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(distmla::float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(distmla::fp16_to_float(0x3555), 0.333251953125f);
}

TEST(Fp16, SubnormalsNanInf) {
  EXPECT_EQ(distmla::float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);        // smallest subnormal
  EXPECT_EQ(distmla::float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);        // tie to even: 0
  EXPECT_EQ(distmla::float_to_fp16(1.5f * std::ldexp(1.0f, -25)), 0x0001);  // above the tie
  EXPECT_EQ(distmla::float_to_fp16(3 * std::ldexp(1.0f, -25)), 0x0002);     // tie 1.5 ulp -> 2
  EXPECT_EQ(distmla::float_to_fp16(std::ldexp(1.0f, -14)), 0x0400);        // smallest normal
  EXPECT_EQ(distmla::float_to_fp16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(distmla::float_to_fp16(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(distmla::fp16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(distmla::float_to_fp16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(distmla::float_to_fp16(-1e10f), 0xfc00);
  const uint16_t n = distmla::float_to_fp16(std::nanf(""));
  EXPECT_EQ(n & 0x7c00, 0x7c00);
  EXPECT_NE(n & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(distmla::fp16_to_float(n)));
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = distmla::fp16_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(distmla::float_to_fp16(f), b) << "bits " << b;
  }
}

TEST(Dtype, DispatchAndSizes) {
  EXPECT_EQ(distmla::float_to_half_bits(1.0f, dmlaBF16), 0x3f80);
  EXPECT_EQ(distmla::float_to_half_bits(1.0f, dmlaFP16), 0x3c00);
  EXPECT_EQ(distmla::half_bits_to_float(0x3c00, dmlaFP16), 1.0f);
  EXPECT_EQ(distmla::half_bits_to_float(0x3f80, dmlaBF16), 1.0f);
  EXPECT_EQ(distmla::dtype_size(dmlaBF16), 2u);
  EXPECT_EQ(distmla::dtype_size(dmlaFP16), 2u);
  EXPECT_EQ(distmla::dtype_size(dmlaFP32), 4u);
}

}  // namespace
