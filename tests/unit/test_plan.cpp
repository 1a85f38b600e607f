// Plan/run on the CPU backend, through the C ABI and through distmla::DecodePlan.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "distmla/compare.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"

namespace {

distmla::Workload small_workload(int s_q, dmlaDataType_t dtype = dmlaBF16) {
  distmla::WorkloadOptions o;
  o.batch = 5;
  o.h_q = 3;
  o.s_q = s_q;
  o.page_size = 32;
  o.lengths = {0, 1, 31, 33, 130};
  o.dtype = dtype;
  o.seed = 11;
  return distmla::make_workload(o);
}

// Runs plan on w with 16-bit outputs pre-filled with `poison` (lse with NaN) and compares the
// result with the double reference.
distmla::CompareResult run_and_compare(const distmla::DecodePlan& plan, const distmla::Workload& w,
                                       uint16_t poison) {
  const size_t rows = static_cast<size_t>(w.shape.batch) * w.shape.s_q * w.shape.h_q;
  std::vector<uint16_t> out(rows * DMLA_D_V, poison);
  std::vector<float> lse(rows, NAN);
  auto t = w.host_tensors();
  t.out = out.data();
  t.lse = lse.data();
  plan.run(t, nullptr, 0);
  std::vector<double> ref, lse_ref;
  distmla::reference_decode(w.shape, w.host_tensors(), &ref, &lse_ref);
  return distmla::compare_with_reference(w.shape, out.data(), w.shape.out_dtype, lse.data(), ref,
                                         lse_ref);
}

TEST(Plan, ShapeInitDefaults) {
  dmlaDecodeShape_t s;
  std::memset(&s, 0x5a, sizeof s);
  dmlaShapeInit(&s);
  EXPECT_EQ(s.page_size, 64);
  EXPECT_EQ(s.q_dtype, dmlaBF16);
  EXPECT_EQ(s.kv_dtype, dmlaBF16);
  EXPECT_EQ(s.out_dtype, dmlaBF16);
  EXPECT_EQ(s.scale, 0.f);
  EXPECT_EQ(s.causal, 1);
  EXPECT_EQ(s.s_q, 1);
  EXPECT_EQ(s.check_inputs, 0);
}

TEST(Plan, AutoResolvesToCpuWithoutAGpu) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  (void)cudaGetLastError();
  dmlaBackend_t r = dmlaBackendCuda;
  ASSERT_EQ(dmlaResolveBackend(dmlaBackendAuto, &r), dmlaSuccess);
  if (e != cudaSuccess || n == 0) {
    EXPECT_EQ(r, dmlaBackendCpu);
    EXPECT_EQ(dmlaResolveBackend(dmlaBackendCuda, &r), dmlaErrorBackend);
  }
  ASSERT_EQ(dmlaResolveBackend(dmlaBackendCpu, &r), dmlaSuccess);
  EXPECT_EQ(r, dmlaBackendCpu);
  EXPECT_EQ(dmlaResolveBackend(dmlaBackendCpu, nullptr), dmlaErrorNullPointer);
}

TEST(Plan, CAbiCpuMatchesReference) {
  for (int s_q : {1, 3}) {
    for (dmlaDataType_t out_dtype : {dmlaBF16, dmlaFP32}) {
      auto w = small_workload(s_q);
      w.shape.out_dtype = out_dtype;
      dmlaPlan_t plan = nullptr;
      ASSERT_EQ(dmlaPlanCreate(&plan, &w.shape, dmlaBackendAuto), dmlaSuccess);
      dmlaBackend_t b;
      ASSERT_EQ(dmlaPlanGetBackend(plan, &b), dmlaSuccess);
      if (b != dmlaBackendCpu) {
        dmlaPlanDestroy(plan);
        GTEST_SKIP() << "Auto picked the GPU; the GPU suite covers it";
      }
      size_t ws = 99;
      ASSERT_EQ(dmlaPlanGetWorkspaceSize(plan, &ws), dmlaSuccess);
      EXPECT_EQ(ws, 0u);
      const size_t rows = static_cast<size_t>(w.shape.batch) * s_q * w.shape.h_q;
      std::vector<float> out32(rows * 512, NAN), lse(rows, NAN);
      std::vector<uint16_t> out16(rows * 512, 0x7fc0);
      auto t = w.host_tensors();
      t.out = out_dtype == dmlaFP32 ? static_cast<void*>(out32.data()) : out16.data();
      t.lse = lse.data();
      ASSERT_EQ(dmlaRun(plan, &t, nullptr, 0, nullptr), dmlaSuccess) << dmlaGetLastErrorMessage();
      std::vector<double> ref, lse_ref;
      distmla::reference_decode(w.shape, w.host_tensors(), &ref, &lse_ref);
      const auto c = distmla::compare_with_reference(w.shape, t.out, out_dtype, lse.data(), ref, lse_ref);
      EXPECT_EQ(c.wrong, 0);
      EXPECT_LT(c.rel_err, out_dtype == dmlaFP32 ? 1e-6 : 5e-3);
      EXPECT_GT(c.rel_err, 0.0);  // rounded output: not bit-identical to double
      EXPECT_LT(c.max_lse_err, 1e-5);
      // Sequence 0 is empty: lse -inf, out exactly 0.
      EXPECT_TRUE(std::isinf(lse[0]) && lse[0] < 0);
      // Reusing the schedule on the CPU backend is accepted and gives the same result.
      ASSERT_EQ(dmlaRunEx(plan, &t, nullptr, 0, nullptr, DMLA_RUN_REUSE_SCHEDULE), dmlaSuccess);
      EXPECT_EQ(distmla::compare_with_reference(w.shape, t.out, out_dtype, lse.data(), ref, lse_ref).rel_err,
                c.rel_err);
      EXPECT_EQ(dmlaPlanDestroy(plan), dmlaSuccess);
    }
  }
}

TEST(Plan, Fp16EndToEnd) {
  auto w = small_workload(2, dmlaFP16);
  distmla::DecodePlan plan(w.shape, dmlaBackendCpu);
  const auto c = run_and_compare(plan, w, 0x7e00);  // fp16 NaN poison
  EXPECT_TRUE(c.ok(1e-3)) << c.rel_err << " wrong " << c.wrong;
}

TEST(Plan, CppWrapperCpu) {
  auto w = small_workload(2);
  distmla::DecodePlan plan(w.shape, dmlaBackendCpu);
  EXPECT_EQ(plan.backend(), dmlaBackendCpu);
  EXPECT_EQ(plan.workspace_bytes(), 0u);
  EXPECT_EQ(plan.shape().batch, 5);
  const auto c = run_and_compare(plan, w, 0x7fc0);  // bf16 NaN poison
  EXPECT_TRUE(c.ok(5e-3)) << c.rel_err << " wrong " << c.wrong;

  // Move: the handle travels, the source is empty.
  distmla::DecodePlan moved(std::move(plan));
  EXPECT_NE(moved.handle(), nullptr);
  EXPECT_EQ(plan.handle(), nullptr);
  EXPECT_TRUE(run_and_compare(moved, w, 0x7fc0).ok(5e-3));

  // Errors become distmla::Error with the code and the message.
  const size_t rows = static_cast<size_t>(w.shape.batch) * w.shape.s_q * w.shape.h_q;
  std::vector<uint16_t> out(rows * DMLA_D_V);
  std::vector<float> lse(rows);
  auto t = w.host_tensors();
  t.out = out.data();
  t.lse = lse.data();
  w.seqlens[4] = -1;
  try {
    moved.run(t, nullptr, 0);
    FAIL() << "no exception";
  } catch (const distmla::Error& e) {
    EXPECT_EQ(e.code(), dmlaErrorNegativeValue);
    EXPECT_NE(std::string(e.what()).find("seqlens[4] = -1"), std::string::npos);
  }
  auto bad = w.shape;
  bad.page_size = 100;
  try {
    distmla::DecodePlan p(bad, dmlaBackendCpu);
    FAIL() << "no exception";
  } catch (const distmla::Error& e) {
    EXPECT_EQ(e.code(), dmlaErrorPageSize);
    EXPECT_NE(std::string(e.what()).find("page_size = 100"), std::string::npos);
  }
}

TEST(Plan, BatchZeroIsANoOp) {
  dmlaDecodeShape_t s;
  dmlaShapeInit(&s);
  s.batch = 0;
  s.num_blocks = 1;
  s.max_blocks_per_seq = 1;
  dmlaPlan_t plan = nullptr;
  ASSERT_EQ(dmlaPlanCreate(&plan, &s, dmlaBackendAuto), dmlaSuccess);
  dmlaDecodeTensors_t t{};  // all null: nothing may be touched
  EXPECT_EQ(dmlaRun(plan, &t, nullptr, 0, nullptr), dmlaSuccess);
  dmlaPlanDestroy(plan);
}

TEST(Plan, CheckErrorHelper) {
  EXPECT_NO_THROW(distmla::check(dmlaSuccess));
  EXPECT_THROW(distmla::check(dmlaErrorInternal), distmla::Error);
}

}  // namespace

// dmlaRunSliced: every row lands where the head-slice layout says, with the plain run's values;
// bad slice descriptions are refused naming the field.
TEST(Plan, SlicedOutputMatchesPlainRows) {
  distmla::WorkloadOptions o;
  o.batch = 3; o.h_q = 7; o.s_q = 2; o.page_size = 32; o.lengths = {0, 40, 100}; o.seed = 5;
  const distmla::Workload w = distmla::make_workload(o);
  const dmlaDecodeShape_t& g = w.shape;
  distmla::DecodePlan plan(g, dmlaBackendCpu);
  const size_t rows = static_cast<size_t>(g.batch) * g.s_q * g.h_q;
  std::vector<uint16_t> out(rows * DMLA_D_V);
  std::vector<float> lse(rows);
  auto t = w.host_tensors();
  t.out = out.data();
  t.lse = lse.data();
  plan.run(t, nullptr, 0);

  const int slices = 3, max_slice = 3;  // 7 heads: 3, 2, 2
  const size_t srows = static_cast<size_t>(g.batch) * g.s_q * max_slice;
  const size_t o_stride = srows * DMLA_D_V * 2 + 64, l_stride = srows * 4 + 16;  // padded blocks
  std::vector<uint8_t> sout(o_stride * slices, 0xEE), slse(l_stride * slices, 0xEE);
  dmlaHeadSlices_t hs{slices, max_slice, o_stride, l_stride};
  t.out = sout.data();
  t.lse = reinterpret_cast<float*>(slse.data());
  plan.run_sliced(t, hs, nullptr, 0);
  const int first[] = {0, 3, 5, 7};
  for (int c = 0; c < slices; ++c)
    for (int b = 0; b < g.batch; ++b)
      for (int q = 0; q < g.s_q; ++q)
        for (int h = first[c]; h < first[c + 1]; ++h) {
          const int hl = h - first[c];
          const uint16_t* want = out.data() + ((static_cast<size_t>(b) * g.s_q + q) * g.h_q + h) * DMLA_D_V;
          const uint8_t* got = sout.data() + c * o_stride + ((static_cast<size_t>(b) * g.s_q + q) * max_slice + hl) * DMLA_D_V * 2;
          EXPECT_EQ(0, std::memcmp(want, got, DMLA_D_V * 2)) << "slice " << c << " b " << b << " t " << q << " h " << h;
          float l;
          std::memcpy(&l, slse.data() + c * l_stride + ((static_cast<size_t>(b) * max_slice + hl) * g.s_q + q) * 4, 4);
          const float lw = lse[(static_cast<size_t>(b) * g.h_q + h) * g.s_q + q];
          EXPECT_TRUE(l == lw || (std::isinf(l) && std::isinf(lw))) << "lse slice " << c << " b " << b << " h " << h;
        }

  dmlaHeadSlices_t bad = hs;
  bad.max_slice = 2;  // 7 heads in 3 slices need 3
  EXPECT_EQ(dmlaRunSliced(plan.handle(), &t, &bad, nullptr, 0, nullptr, 0), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("max_slice = 2"), std::string::npos);
  bad = hs;
  bad.out_slice_stride = 8;
  EXPECT_EQ(dmlaRunSliced(plan.handle(), &t, &bad, nullptr, 0, nullptr, 0), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("out_slice_stride = 8"), std::string::npos);
  bad = hs;
  bad.num_slices = 0;
  EXPECT_EQ(dmlaRunSliced(plan.handle(), &t, &bad, nullptr, 0, nullptr, 0), dmlaErrorInvalidArgument);
}
