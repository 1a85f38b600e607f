// Every validation error: its own code, a message naming the argument and the value, and
// outputs (or the plan handle) untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>

#include "distmla/distmla.h"
#include "distmla/workload.h"

namespace {

dmlaDecodeShape_t good_shape() {
  dmlaDecodeShape_t s;
  dmlaShapeInit(&s);
  s.batch = 2;
  s.h_q = 4;
  s.num_blocks = 8;
  s.max_blocks_per_seq = 4;
  return s;
}

void expect_plan_error(const dmlaDecodeShape_t& s, dmlaResult_t code, const std::string& a,
                       const std::string& b = "") {
  dmlaPlan_t sentinel = reinterpret_cast<dmlaPlan_t>(0x1234);
  dmlaPlan_t plan = sentinel;
  EXPECT_EQ(dmlaPlanCreate(&plan, &s, dmlaBackendCpu), code);
  EXPECT_EQ(plan, sentinel) << "plan handle written on error";
  const std::string msg = dmlaGetLastErrorMessage();
  EXPECT_NE(msg.find(a), std::string::npos) << msg;
  if (!b.empty()) {
    EXPECT_NE(msg.find(b), std::string::npos) << msg;
  }
}

TEST(ValidateShape, EachFieldHasItsCode) {
  auto s = good_shape();
  s.batch = -1;
  expect_plan_error(s, dmlaErrorBatch, "batch = -1");
  s = good_shape();
  s.h_q = 129;
  expect_plan_error(s, dmlaErrorHeads, "h_q = 129 is outside 1..128");
  s.h_q = 0;
  expect_plan_error(s, dmlaErrorHeads, "h_q = 0");
  s = good_shape();
  s.s_q = 5;
  expect_plan_error(s, dmlaErrorQueryLength, "s_q = 5 is outside 1..4");
  s.s_q = 0;
  expect_plan_error(s, dmlaErrorQueryLength, "s_q = 0");
  s = good_shape();
  s.page_size = 48;
  expect_plan_error(s, dmlaErrorPageSize, "page_size = 48");
  s = good_shape();
  s.q_dtype = s.kv_dtype = s.out_dtype = dmlaFP32;
  expect_plan_error(s, dmlaErrorDtype, "q_dtype = fp32");
  s = good_shape();
  s.kv_dtype = dmlaFP16;
  expect_plan_error(s, dmlaErrorDtype, "kv_dtype = fp16", "q_dtype = bf16");
  s = good_shape();
  s.out_dtype = dmlaFP16;
  expect_plan_error(s, dmlaErrorDtype, "out_dtype = fp16");
  s = good_shape();
  s.q_dtype = static_cast<dmlaDataType_t>(9);
  expect_plan_error(s, dmlaErrorDtype, "q_dtype = unknown (9)");
  s = good_shape();
  s.num_blocks = 0;
  expect_plan_error(s, dmlaErrorShape, "num_blocks = 0");
  s = good_shape();
  s.max_blocks_per_seq = -3;
  expect_plan_error(s, dmlaErrorShape, "max_blocks_per_seq = -3");
  s = good_shape();
  s.scale = -0.5f;
  expect_plan_error(s, dmlaErrorScale, "scale = -0.5");
  s.scale = std::numeric_limits<float>::infinity();
  expect_plan_error(s, dmlaErrorScale, "scale = inf", "not finite");
  s.scale = std::numeric_limits<float>::quiet_NaN();
  expect_plan_error(s, dmlaErrorScale, "scale = nan");
}

TEST(ValidateShape, NullPointersAndBadBackend) {
  auto s = good_shape();
  EXPECT_EQ(dmlaPlanCreate(nullptr, &s, dmlaBackendCpu), dmlaErrorNullPointer);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("plan is null"), std::string::npos);
  dmlaPlan_t p = nullptr;
  EXPECT_EQ(dmlaPlanCreate(&p, nullptr, dmlaBackendCpu), dmlaErrorNullPointer);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("shape is null"), std::string::npos);
  EXPECT_EQ(dmlaPlanCreate(&p, &s, static_cast<dmlaBackend_t>(7)), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("backend = 7"), std::string::npos);
  EXPECT_EQ(p, nullptr);
}

TEST(ValidateShape, GoodShapeAndBoundaries) {
  for (int h : {1, 128}) {
    for (int sq : {1, 4}) {
      for (int ps : {16, 32, 64, 128}) {
        auto s = good_shape();
        s.h_q = h;
        s.s_q = sq;
        s.page_size = ps;
        s.out_dtype = dmlaFP32;
        dmlaPlan_t p = nullptr;
        ASSERT_EQ(dmlaPlanCreate(&p, &s, dmlaBackendCpu), dmlaSuccess) << dmlaGetLastErrorMessage();
        EXPECT_STREQ(dmlaGetLastErrorMessage(), "");
        dmlaPlanDestroy(p);
      }
    }
  }
}

TEST(ErrorStrings, EveryCodeHasOne) {
  for (int c = 0; c <= dmlaErrorInvalidArgument; ++c) {
    const std::string s = dmlaGetErrorString(static_cast<dmlaResult_t>(c));
    EXPECT_FALSE(s.empty());
    EXPECT_NE(s, "unknown result code") << c;
  }
  EXPECT_EQ(std::string(dmlaGetErrorString(static_cast<dmlaResult_t>(999))), "unknown result code");
  EXPECT_EQ(std::string(dmlaGetErrorString(dmlaErrorHeads)), "h_q is outside 1..128");
}

TEST(ErrorStrings, LastErrorIsPerThread) {
  auto s = good_shape();
  s.h_q = 200;
  dmlaPlan_t p = nullptr;
  ASSERT_EQ(dmlaPlanCreate(&p, &s, dmlaBackendCpu), dmlaErrorHeads);
  std::string other;
  std::thread([&] { other = dmlaGetLastErrorMessage(); }).join();
  EXPECT_EQ(other, "");
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("h_q = 200"), std::string::npos);
}

// Run-time checks on the CPU backend: a real workload with one corrupted index.
class RunValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    distmla::WorkloadOptions o;
    o.batch = 4;
    o.h_q = 2;
    o.page_size = 16;
    o.lengths = {20, 0, 50, 16};
    w = distmla::make_workload(o);
    ASSERT_EQ(dmlaPlanCreate(&plan, &w.shape, dmlaBackendCpu), dmlaSuccess);
    out.assign(static_cast<size_t>(4) * 2 * 512, 0x7777);
    lse.assign(static_cast<size_t>(4) * 2, 42.0f);
    t = w.host_tensors();
    t.out = out.data();
    t.lse = lse.data();
  }
  void TearDown() override { dmlaPlanDestroy(plan); }

  void expect_run_error(dmlaResult_t code, const std::string& text) {
    EXPECT_EQ(dmlaRun(plan, &t, nullptr, 0, nullptr), code);
    const std::string msg = dmlaGetLastErrorMessage();
    EXPECT_NE(msg.find(text), std::string::npos) << msg;
    for (uint16_t v : out) ASSERT_EQ(v, 0x7777) << "out written on error";
    for (float v : lse) ASSERT_EQ(v, 42.0f) << "lse written on error";
  }

  distmla::Workload w;
  dmlaPlan_t plan = nullptr;
  std::vector<uint16_t> out;
  std::vector<float> lse;
  dmlaDecodeTensors_t t{};
};

TEST_F(RunValidation, GoodInputRuns) {
  ASSERT_EQ(dmlaRun(plan, &t, nullptr, 0, nullptr), dmlaSuccess) << dmlaGetLastErrorMessage();
  EXPECT_NE(out[0], 0x7777);
}

TEST_F(RunValidation, NullTensorPointers) {
  const char* names[] = {"tensors->q", "tensors->kv_pool", "tensors->block_table",
                         "tensors->seqlens", "tensors->out", "tensors->lse"};
  for (int k = 0; k < 6; ++k) {
    dmlaDecodeTensors_t bad = t;
    switch (k) {
      case 0: bad.q = nullptr; break;
      case 1: bad.kv_pool = nullptr; break;
      case 2: bad.block_table = nullptr; break;
      case 3: bad.seqlens = nullptr; break;
      case 4: bad.out = nullptr; break;
      case 5: bad.lse = nullptr; break;
    }
    EXPECT_EQ(dmlaRun(plan, &bad, nullptr, 0, nullptr), dmlaErrorNullPointer);
    EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find(std::string(names[k]) + " is null"),
              std::string::npos);
  }
  EXPECT_EQ(dmlaRun(plan, nullptr, nullptr, 0, nullptr), dmlaErrorNullPointer);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("tensors is null"), std::string::npos);
  EXPECT_EQ(dmlaRun(nullptr, &t, nullptr, 0, nullptr), dmlaErrorNullPointer);
  for (uint16_t v : out) ASSERT_EQ(v, 0x7777);
}

TEST_F(RunValidation, NegativeSeqlen) {
  w.seqlens[2] = -5;
  expect_run_error(dmlaErrorNegativeValue, "seqlens[2] = -5 is negative");
}

TEST_F(RunValidation, SeqlenNeedsTooManyPages) {
  // max_blocks_per_seq is 4 pages of 16 here: 65 tokens need 5.
  ASSERT_EQ(w.shape.max_blocks_per_seq, 4);
  w.seqlens[1] = 65;
  expect_run_error(dmlaErrorSeqlenOutOfRange, "seqlens[1] = 65 needs 5 pages but max_blocks_per_seq = 4");
}

TEST_F(RunValidation, BlockOutOfPool) {
  w.block_table[static_cast<size_t>(2) * 4 + 3] = 999;
  expect_run_error(dmlaErrorBlockOutOfRange, "block_table[2][3] = 999 is outside the pool (num_blocks = " +
                                                 std::to_string(w.shape.num_blocks) + ")");
}

TEST_F(RunValidation, NegativeBlockOfAUsedPage) {
  w.block_table[0 * 4 + 1] = -2;
  expect_run_error(dmlaErrorNegativeValue, "block_table[0][1] = -2 is negative");
}

TEST_F(RunValidation, UnusedEntriesAreNotChecked) {
  // Sequence 1 has no pages and sequence 3 one: garbage in their unused entries is fine.
  w.block_table[1 * 4 + 0] = 12345;
  w.block_table[3 * 4 + 1] = -99;
  EXPECT_EQ(dmlaRun(plan, &t, nullptr, 0, nullptr), dmlaSuccess) << dmlaGetLastErrorMessage();
}

TEST_F(RunValidation, UnknownFlags) {
  EXPECT_EQ(dmlaRunEx(plan, &t, nullptr, 0, nullptr, 0x10u), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("flags = 16"), std::string::npos);
  for (uint16_t v : out) ASSERT_EQ(v, 0x7777);
}

TEST(RunValidationCuda, CudaBackendUnavailableHere) {
  int n = 0;
  dmlaBackend_t r;
  ASSERT_EQ(dmlaResolveBackend(dmlaBackendAuto, &r), dmlaSuccess);
  if (r == dmlaBackendCuda) GTEST_SKIP() << "a supported GPU is present";
  auto s = good_shape();
  dmlaPlan_t p = nullptr;
  EXPECT_EQ(dmlaPlanCreate(&p, &s, dmlaBackendCuda), dmlaErrorBackend);
  EXPECT_NE(std::string(dmlaGetLastErrorMessage()).find("backend = cuda is not available"),
            std::string::npos);
  EXPECT_EQ(p, nullptr);
  (void)n;
}

}  // namespace
