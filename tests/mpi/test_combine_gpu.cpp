// Device cross-rank combine and head-slice pack against their host twins (host_combine.h) on
// random partials: every part/out dtype pair, both lse layouts, a head offset, weight-zero parts
// whose o is NaN, rows with no part at all, uneven head slices. One GPU; skips without one.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/dist/host_combine.h"
#include "distmla/kernels/cross_rank_combine.h"

using namespace distmla;

namespace {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;  // error 35 (no driver): no GPU
}

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

size_t esize(dmlaDataType_t t) { return t == dmlaFP32 ? 4 : 2; }
kernels::ElemType etype(dmlaDataType_t t) {
  return t == dmlaBF16 ? kernels::ElemType::kBF16 : t == dmlaFP16 ? kernels::ElemType::kFP16 : kernels::ElemType::kFP32;
}
float read_elem(const uint8_t* p, size_t i, dmlaDataType_t t) {
  if (t == dmlaFP32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  return half_bits_to_float(h, t);
}
void write_elem(uint8_t* p, size_t i, dmlaDataType_t t, float v) {
  if (t == dmlaFP32) {
    std::memcpy(p + 4 * i, &v, 4);
  } else {
    const uint16_t h = float_to_half_bits(v, t);
    std::memcpy(p + 2 * i, &h, 2);
  }
}

struct DevBuf {
  void* p = nullptr;
  explicit DevBuf(size_t n) { EXPECT_EQ(cudaMalloc(&p, n), cudaSuccess); }
  ~DevBuf() { cudaFree(p); }
};

struct Case {
  int parts, batch, s_q, heads, part_heads, head_offset, bsh_from;
  dmlaDataType_t part_t, out_t;
};

void run_combine_case(const Case& c, uint32_t seed) {
  SCOPED_TRACE("parts " + std::to_string(c.parts) + " b " + std::to_string(c.batch) + " s_q " +
               std::to_string(c.s_q) + " heads " + std::to_string(c.heads) + "/" + std::to_string(c.part_heads) +
               " part dtype " + std::to_string(c.part_t) + " out dtype " + std::to_string(c.out_t));
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> val(-2.f, 2.f), lsev(-4.f, 4.f);
  const size_t rows = static_cast<size_t>(c.batch) * c.s_q * c.part_heads;
  const size_t o_bytes = (rows * DMLA_D_V * esize(c.part_t) + 255) / 256 * 256;
  const size_t stride = (o_bytes + rows * 4 + 255) / 256 * 256;
  std::vector<uint8_t> parts(stride * c.parts);
  for (int p = 0; p < c.parts; ++p) {
    uint8_t* base = parts.data() + p * stride;
    float* lse = reinterpret_cast<float*>(base + o_bytes);
    for (size_t r = 0; r < rows; ++r) {  // o row r = (b, t, h), h fastest
      const size_t h = r % c.part_heads, bt = r / c.part_heads, t = bt % c.s_q, b = bt / c.s_q;
      const size_t li = p >= c.bsh_from ? r : (b * c.part_heads + h) * c.s_q + t;
      // Every 5th (part, row): no tokens (lse -inf, o NaN); row 3 of every part: none at all.
      const bool empty = (r + p) % 5 == 0 || r == 3;
      lse[li] = empty ? -std::numeric_limits<float>::infinity() : lsev(rng);
      for (int k = 0; k < DMLA_D_V; ++k) write_elem(base, r * DMLA_D_V + k, c.part_t, empty ? NAN : val(rng));
    }
  }
  const size_t out_rows = static_cast<size_t>(c.batch) * c.s_q * c.heads;
  std::vector<uint8_t> want(out_rows * DMLA_D_V * esize(c.out_t)), got(want.size());
  std::vector<float> want_lse(out_rows), got_lse(out_rows);
  dist::CombineLayout l;
  l.num_parts = c.parts; l.batch = c.batch; l.s_q = c.s_q; l.heads = c.heads; l.part_heads = c.part_heads;
  l.head_offset = c.head_offset; l.part_stride = stride; l.lse_offset = o_bytes; l.part_dtype = c.part_t;
  l.bsh_from = c.bsh_from;
  std::vector<uint8_t> scratch(dist::combine_host_scratch_bytes(c.parts));
  dist::combine_host(l, parts.data(), want.data(), c.out_t, want_lse.data(), scratch.data());

  DevBuf dparts(parts.size()), dout(want.size()), dlse(out_rows * 4);
  CUDA_OK(cudaMemcpy(dparts.p, parts.data(), parts.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(dout.p, 0xff, want.size()));
  kernels::CrossRankCombineArgs a;
  a.num_parts = c.parts; a.batch = c.batch; a.s_q = c.s_q; a.heads = c.heads; a.part_heads = c.part_heads;
  a.head_offset = c.head_offset; a.parts = dparts.p; a.part_stride = stride; a.lse_offset = o_bytes;
  a.part_type = etype(c.part_t); a.bsh_from = c.bsh_from; a.out = dout.p; a.out_type = etype(c.out_t);
  a.lse_out = static_cast<float*>(dlse.p);
  CUDA_OK(kernels::cross_rank_combine(a, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  CUDA_OK(cudaMemcpy(got.data(), dout.p, got.size(), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(got_lse.data(), dlse.p, out_rows * 4, cudaMemcpyDeviceToHost));
  // Both sum in fp32 (exp vs __expf): a 16-bit result may round to the neighbouring value.
  const float tol = c.out_t == dmlaFP32 ? 1e-4f : (c.out_t == dmlaBF16 ? 2e-2f : 4e-3f);
  int bad = 0;
  for (size_t r = 0; r < out_rows; ++r) {
    if (std::isinf(want_lse[r])) {
      EXPECT_TRUE(std::isinf(got_lse[r]) && got_lse[r] < 0) << "row " << r;
    } else {
      EXPECT_NEAR(got_lse[r], want_lse[r], 1e-4f) << "row " << r;
    }
    for (int k = 0; k < DMLA_D_V; ++k) {
      const float w = read_elem(want.data(), r * DMLA_D_V + k, c.out_t), g = read_elem(got.data(), r * DMLA_D_V + k, c.out_t);
      if (!(std::fabs(g - w) <= tol * (1.f + std::fabs(w))) && ++bad <= 5)
        ADD_FAILURE() << "row " << r << " col " << k << ": device " << g << " host " << w;
    }
  }
  EXPECT_EQ(bad, 0);
}

}  // namespace

TEST(CombineGpu, MatchesHostCombine) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU";
  const dmlaDataType_t types[] = {dmlaBF16, dmlaFP16, dmlaFP32};
  uint32_t seed = 1;
  for (dmlaDataType_t pt : types)
    for (dmlaDataType_t ot : types) {
      run_combine_case({2, 3, 1, 8, 8, 0, 1 << 30, pt, ot}, seed++);  // CP 2 all-gather layout
      run_combine_case({3, 2, 2, 5, 7, 2, 0, pt, ot}, seed++);        // all-to-all slices, lse [b, s_q, h]
      run_combine_case({4, 1, 4, 3, 3, 0, 2, pt, ot}, seed++);        // mixed lse layouts
    }
  run_combine_case({33, 2, 1, 4, 4, 0, 1 << 30, dmlaBF16, dmlaBF16}, seed++);  // more parts than lanes
}

// A CP 2 all-to-all step's size (b 16, 64 heads a rank, bf16): also the case to profile the
// kernel with (ncu -k regex:combine_kernel on this test).
TEST(CombineGpu, StepSizedCp2MatchesHostCombine) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU";
  run_combine_case({2, 16, 1, 64, 64, 0, 0, dmlaBF16, dmlaBF16}, 99);
}

TEST(CombineGpu, PackMatchesHost) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU";
  for (dmlaDataType_t t : {dmlaBF16, dmlaFP32})
    for (bool bsh : {false, true}) {
      const int batch = 3, s_q = 2, heads = 7, chunks = 3, max_slice = 3;  // slices 3, 2, 2
      const size_t rows = static_cast<size_t>(batch) * s_q * heads;
      std::vector<uint8_t> o(rows * DMLA_D_V * esize(t));
      std::vector<float> lse(rows);
      std::mt19937 rng(7);
      for (auto& x : o) x = static_cast<uint8_t>(rng());
      for (auto& x : lse) x = static_cast<float>(rng() % 1000) / 100.f;
      const size_t crow = static_cast<size_t>(batch) * s_q * max_slice;
      const size_t o_bytes = (crow * DMLA_D_V * esize(t) + 255) / 256 * 256;
      const size_t stride = (o_bytes + crow * 4 + 255) / 256 * 256;
      std::vector<uint8_t> want(stride * chunks, 0), got(stride * chunks, 0);
      dist::PackLayout l;
      l.batch = batch; l.s_q = s_q; l.heads = heads; l.num_chunks = chunks; l.max_slice = max_slice; l.dtype = t;
      l.src_lse_bsh = bsh; l.chunk_stride = stride; l.lse_offset = o_bytes;
      dist::pack_head_slices_host(l, o.data(), lse.data(), want.data());
      DevBuf d_o(o.size()), d_lse(lse.size() * 4), d_chunks(got.size());
      CUDA_OK(cudaMemcpy(d_o.p, o.data(), o.size(), cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemcpy(d_lse.p, lse.data(), lse.size() * 4, cudaMemcpyHostToDevice));
      CUDA_OK(cudaMemset(d_chunks.p, 0, got.size()));
      kernels::PackHeadSlicesArgs a;
      a.batch = batch; a.s_q = s_q; a.heads = heads; a.num_chunks = chunks; a.max_slice = max_slice;
      a.type = etype(t); a.src_lse_bsh = bsh; a.o = d_o.p; a.lse = static_cast<const float*>(d_lse.p);
      a.chunks = d_chunks.p; a.chunk_stride = stride; a.lse_offset = o_bytes;
      CUDA_OK(kernels::pack_head_slices(a, nullptr));
      CUDA_OK(cudaMemcpy(got.data(), d_chunks.p, got.size(), cudaMemcpyDeviceToHost));
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size())) << "dtype " << t << " lse bsh " << bsh;
    }
}

TEST(CombineGpu, RejectsMisalignedBuffers) {
  if (!have_gpu()) GTEST_SKIP() << "no GPU";
  DevBuf buf(1 << 16);
  kernels::CrossRankCombineArgs a;
  a.num_parts = 1; a.batch = 1; a.heads = 1; a.part_heads = 1; a.part_stride = 4096; a.lse_offset = 1024;
  a.parts = static_cast<char*>(buf.p) + 8;  // not on a 16-byte boundary
  a.out = static_cast<char*>(buf.p) + 8192; a.lse_out = static_cast<float*>(buf.p) + 4096;
  EXPECT_EQ(kernels::cross_rank_combine(a, nullptr), cudaErrorMisalignedAddress);
}
