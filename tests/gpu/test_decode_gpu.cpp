// CUDA backend (sm_90a kernels) against the double CPU reference (DESIGN.md section 8):
// rel err < 1e-2, lse within 1e-3, every element written, no NaN from unused pages, graph
// capture + replay and reuse_schedule give the same bits.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "distmla/bf16.h"
#include "distmla/compare.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"

namespace {

bool have_sm90() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
    (void)cudaGetLastError();
    return false;
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return p.major == 9 && p.minor == 0;
}

#define SKIP_WITHOUT_SM90()                                              \
  do {                                                                   \
    if (!have_sm90()) GTEST_SKIP() << "no CUDA sm_90 device: skipped"; \
  } while (0)

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    ASSERT_EQ(e_, cudaSuccess) << #x << ": " << cudaGetErrorString(e_);                \
  } while (0)

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) {
    if (cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, count) * sizeof(T)) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() { if (p) cudaFree(p); }
  size_t bytes() const { return n * sizeof(T); }
};

size_t out_elem_size(dmlaDataType_t d) { return d == dmlaFP32 ? 4 : 2; }

struct Device {
  distmla::Workload w;
  DevBuf<uint16_t> q, kv;
  DevBuf<int32_t> bt, sl;
  DevBuf<uint8_t> out;
  DevBuf<float> lse;
  explicit Device(distmla::Workload&& wl, dmlaDataType_t out_dtype)
      : w(std::move(wl)), q(w.q.size()), kv(w.kv.size()), bt(w.block_table.size()), sl(w.seqlens.size()),
        out(static_cast<size_t>(w.shape.batch) * w.shape.s_q * w.shape.h_q * 512 * out_elem_size(out_dtype)),
        lse(static_cast<size_t>(w.shape.batch) * w.shape.s_q * w.shape.h_q) {
    w.shape.out_dtype = out_dtype;
    cudaMemcpy(q.p, w.q.data(), q.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(kv.p, w.kv.data(), kv.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(bt.p, w.block_table.data(), bt.bytes(), cudaMemcpyHostToDevice);
    cudaMemcpy(sl.p, w.seqlens.data(), sl.bytes(), cudaMemcpyHostToDevice);
  }
  dmlaDecodeTensors_t tensors() const {
    dmlaDecodeTensors_t t{};
    t.q = q.p;
    t.kv_pool = kv.p;
    t.block_table = bt.p;
    t.seqlens = sl.p;
    t.out = out.p;
    t.lse = lse.p;
    return t;
  }
  void poison(cudaStream_t s) {
    cudaMemsetAsync(out.p, 0xFF, out.bytes(), s);  // NaN in bf16/fp16/fp32
    cudaMemsetAsync(lse.p, 0xFF, lse.bytes(), s);
  }
  void fetch(std::vector<uint8_t>* o, std::vector<float>* l) {
    o->resize(out.bytes());
    l->resize(lse.n);
    cudaMemcpy(o->data(), out.p, out.bytes(), cudaMemcpyDeviceToHost);
    cudaMemcpy(l->data(), lse.p, lse.bytes(), cudaMemcpyDeviceToHost);
  }
};

struct Case {
  int batch, s_q, h_q, page, mean;
  bool varlen = true;
  double zero_frac = 0;
  bool causal = true;
  dmlaDataType_t dtype = dmlaBF16;
  bool out_fp32 = false;
  std::vector<int> lengths = {};
  uint64_t seed = 1;
  // KV row t of a sequence of length L is scaled by kv_gain(t, L) (bf16 only): scores that rise
  // along the sequence, so that the kernels' exponent base moves after the first block.
  float (*kv_gain)(int t, int L) = nullptr;
};

std::string describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "b=%d s_q=%d h_q=%d page=%d S=%d varlen=%d zero=%.2f causal=%d %s out=%s",
                c.batch, c.s_q, c.h_q, c.page, c.mean, c.varlen ? 1 : 0, c.zero_frac, c.causal ? 1 : 0,
                c.dtype == dmlaFP16 ? "fp16" : "bf16", c.out_fp32 ? "fp32" : "16bit");
  return buf;
}

distmla::Workload make(const Case& c) {
  distmla::WorkloadOptions o;
  o.batch = c.batch;
  o.s_q = c.s_q;
  o.h_q = c.h_q;
  o.page_size = c.page;
  o.mean_len = c.mean;
  o.varlen = c.varlen;
  o.zero_len_frac = c.zero_frac;
  o.lengths = c.lengths;
  o.causal = c.causal;
  o.dtype = c.dtype;
  o.seed = c.seed;
  distmla::Workload w = distmla::make_workload(o);
  if (c.kv_gain) {
    const int page = w.shape.page_size, mb = w.shape.max_blocks_per_seq;
    for (int b = 0; b < w.shape.batch; ++b) {
      const int L = w.seqlens[b];
      for (int t = 0; t < L; ++t) {
        uint16_t* row = w.kv.data() + (static_cast<size_t>(w.block_table[b * mb + t / page]) * page + t % page) * 576;
        for (int d = 0; d < 576; ++d) row[d] = distmla::float_to_bf16(distmla::bf16_to_float(row[d]) * c.kv_gain(t, L));
      }
    }
  }
  return w;
}

// A case on the GPU: its device buffers, a CUDA plan, the workspace and a stream.
struct CaseRun {
  Device d;
  distmla::DecodePlan plan;
  DevBuf<uint8_t> ws;
  cudaStream_t s = nullptr;
  CaseRun(const Case& c, dmlaDataType_t out_dtype)
      : d(make(c), out_dtype), plan(d.w.shape, dmlaBackendCuda), ws(plan.workspace_bytes()) {
    const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    EXPECT_EQ(e, cudaSuccess) << "cudaStreamCreateWithFlags: " << cudaGetErrorString(e);
  }
  ~CaseRun() { cudaStreamDestroy(s); }
  void run(unsigned flags = 0) { plan.run(d.tensors(), ws.p, ws.n, s, flags); }
};

// What d's out / lse now hold against the double reference of its workload.
distmla::CompareResult compare_device(Device& d) {
  std::vector<uint8_t> out;
  std::vector<float> lse;
  d.fetch(&out, &lse);
  std::vector<double> ref, lse_ref;
  distmla::reference_decode(d.w.shape, d.w.host_tensors(), &ref, &lse_ref, 0);
  return distmla::compare_with_reference(d.w.shape, out.data(), d.w.shape.out_dtype, lse.data(), ref, lse_ref);
}

// Runs one case through the CUDA backend and checks it against the reference.
void run_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  CaseRun t(c, c.out_fp32 ? dmlaFP32 : c.dtype);
  ASSERT_EQ(t.plan.backend(), dmlaBackendCuda);
  t.d.poison(t.s);
  t.run();
  CK(cudaStreamSynchronize(t.s));
  CK(cudaGetLastError());
  const distmla::CompareResult r = compare_device(t.d);
  std::printf("[case] %s: rel_err=%.3e max_lse_err=%.3e wrong=%lld\n", describe(c).c_str(), r.rel_err,
              r.max_lse_err, static_cast<long long>(r.wrong));
  EXPECT_EQ(r.wrong, 0);
  EXPECT_LT(r.rel_err, 1e-2);
  EXPECT_LE(r.max_lse_err, 1e-3);
}

TEST(GpuDecode, Basic) {
  SKIP_WITHOUT_SM90();
  run_case({1, 1, 64, 64, 140, false});
}
TEST(GpuDecode, SingleHeadShortPage16) {
  SKIP_WITHOUT_SM90();
  run_case({2, 1, 1, 16, 20});
}
TEST(GpuDecode, OddHeadsCausalSq2Page32ZeroLengths) {
  SKIP_WITHOUT_SM90();
  run_case({6, 2, 3, 32, 140, true, 0.34});
}
TEST(GpuDecode, Sq4Page128ZeroLengths) {
  SKIP_WITHOUT_SM90();
  run_case({6, 4, 16, 128, 140, true, 0.2});
}
TEST(GpuDecode, Sq3Heads63Page16) {
  SKIP_WITHOUT_SM90();
  run_case({6, 3, 63, 16, 140, true, 0.0});
}
TEST(GpuDecode, NonCausalSq4) {
  SKIP_WITHOUT_SM90();
  Case c{6, 4, 16, 64, 140};
  c.causal = false;
  run_case(c);
}
TEST(GpuDecode, Heads128Batch64) {
  SKIP_WITHOUT_SM90();
  run_case({64, 1, 128, 64, 140});
}
// Two row tiles share each KV block by TMA multicast; pages of 16 tokens make each chunk 4 loads.
TEST(GpuDecode, Heads128Page16Varlen) {
  SKIP_WITHOUT_SM90();
  run_case({6, 1, 128, 16, 300, true, 0.2});
}
TEST(GpuDecode, Heads128Sq4EightRowTiles) {
  SKIP_WITHOUT_SM90();
  run_case({6, 4, 128, 64, 140, true, 0.2});
}
TEST(GpuDecode, Batch128Len4096Heads16) {
  SKIP_WITHOUT_SM90();
  run_case({128, 1, 16, 64, 4096});
}
TEST(GpuDecode, Batch64Sq2Len4096Heads64Fp32Out) {
  SKIP_WITHOUT_SM90();
  Case c{64, 2, 64, 32, 4096};
  c.out_fp32 = true;
  run_case(c);
}
// 16 sequences over 66 parts at h_q 128: the combine takes 2 warps a row (4 would not fit one wave).
TEST(GpuDecode, Batch16Heads128SplitsTwoWarpsARow) {
  SKIP_WITHOUT_SM90();
  run_case({16, 1, 128, 64, 2048, false});
}
TEST(GpuDecode, Batch16Heads128SplitsTwoWarpsARowFp32Out) {
  SKIP_WITHOUT_SM90();
  Case c{16, 1, 128, 64, 2048, false};
  c.out_fp32 = true;
  run_case(c);
}
TEST(GpuDecode, LongContextManySplits) {
  SKIP_WITHOUT_SM90();
  run_case({2, 1, 63, 64, 65536, false});
}
TEST(GpuDecode, Batch1Len65536Heads128Sq2) {
  SKIP_WITHOUT_SM90();
  run_case({1, 2, 128, 128, 65536, false});
}
TEST(GpuDecode, MixedOneTokenAnd100k) {
  SKIP_WITHOUT_SM90();
  Case c{6, 1, 16, 64, 0};
  c.lengths = {1, 100000, 0, 5, 64, 65};
  run_case(c);
}
// Scores that rise along each sequence move the exponent base in later blocks: smoothly (P near
// the 2^8 bound the kernel lets it reach before it moves the base), and by a jump of ~60 in log2
// units half-way (P ~2^60 at the old base: the vote sends the block to the exact path). P that
// overflows to inf at the base is every sequence's first block (base -inf).
TEST(GpuDecode, RisingScoresMoveTheBase) {
  SKIP_WITHOUT_SM90();
  Case c{4, 2, 128, 64, 3000};
  c.kv_gain = [](int t, int L) { return 1.f + 4.f * static_cast<float>(t) / static_cast<float>(L); };
  run_case(c);
  c.kv_gain = [](int t, int L) { return 2 * t >= L ? 40.f : 1.f; };
  c.h_q = 16;
  run_case(c);
}
TEST(GpuDecode, AllZeroLengths) {
  SKIP_WITHOUT_SM90();
  Case c{4, 2, 16, 64, 0};
  c.lengths = {0, 0, 0, 0};
  run_case(c);
}
TEST(GpuDecode, Fp16) {
  SKIP_WITHOUT_SM90();
  Case c{6, 2, 16, 64, 300};
  c.dtype = dmlaFP16;
  c.zero_frac = 0.2;
  run_case(c);
}
TEST(GpuDecode, Batch128Short) {
  SKIP_WITHOUT_SM90();
  run_case({128, 1, 16, 64, 20, true, 0.1});
}
// Batches past the schedule kernel's 1024 threads (its passes loop over the sequences), with
// dozens of short sequences a part and zero lengths among them; at h_q 128 with row-tile pairs.
TEST(GpuDecode, Batch1500ShortPage16) {
  SKIP_WITHOUT_SM90();
  run_case({1500, 1, 16, 16, 60, true, 0.1});
}
TEST(GpuDecode, Batch1100Heads128) {
  SKIP_WITHOUT_SM90();
  run_case({1100, 1, 128, 64, 100, true, 0.05});
}
// More sequences than parts: the combine's CTAs go by the cuts between parts (combine_by_cut),
// here one sequence over ~8 parts among 299 short ones (zero lengths too), some split once.
TEST(GpuDecode, ManyShortOneLongCombineByCut) {
  SKIP_WITHOUT_SM90();
  Case c{300, 1, 128, 64, 0};
  for (int k = 0; k < c.batch; ++k) c.lengths.push_back(k % 29 == 0 ? 0 : (k * 37) % 180 + 1);
  c.lengths[150] = 20000;
  run_case(c);
}
// 128 equal sequences of 1024 tokens at h_q 128: the schedule takes 64 parts of two whole
// sequences instead of 66 parts that split most of them (schedule.cuh).
TEST(GpuDecode, UniformBatchWholeSequenceParts) {
  SKIP_WITHOUT_SM90();
  run_case({128, 1, 128, 64, 1024, false});
}
// The same search at one row tile: 128 sequences of 2048 tokens at h_q 16 take 128 parts of one
// whole sequence each instead of 132 parts that split them all.
TEST(GpuDecode, UniformBatchOneTileWholeSequenceParts) {
  SKIP_WITHOUT_SM90();
  run_case({128, 1, 16, 64, 2048, false});
}

// Graph capture + replay, and reuse_schedule, give the same bits as a direct run.
TEST(GpuDecode, GraphReplayAndReuseSchedule) {
  SKIP_WITHOUT_SM90();
  CaseRun t(Case{6, 2, 64, 32, 2000, true, 0.2}, dmlaBF16);
  Device& d = t.d;
  const cudaStream_t s = t.s;
  d.poison(s);
  t.run();
  CK(cudaStreamSynchronize(s));
  std::vector<uint8_t> out0, out1, out2;
  std::vector<float> lse0, lse1, lse2;
  d.fetch(&out0, &lse0);
  const distmla::CompareResult r = compare_device(d);
  EXPECT_TRUE(r.ok()) << "rel_err " << r.rel_err << " wrong " << r.wrong;

  // reuse the schedule left in the workspace
  d.poison(s);
  t.run(DMLA_RUN_REUSE_SCHEDULE);
  CK(cudaStreamSynchronize(s));
  d.fetch(&out1, &lse1);
  EXPECT_EQ(0, std::memcmp(out0.data(), out1.data(), out0.size())) << "reuse_schedule changed out";
  EXPECT_EQ(0, std::memcmp(lse0.data(), lse1.data(), lse0.size() * sizeof(float)));

  // capture poison + run into a graph, replay twice
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  d.poison(s);
  t.run();
  CK(cudaStreamEndCapture(s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  for (int rep = 0; rep < 2; ++rep) {
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    d.fetch(&out2, &lse2);
    EXPECT_EQ(0, std::memcmp(out0.data(), out2.data(), out0.size())) << "graph replay " << rep;
    EXPECT_EQ(0, std::memcmp(lse0.data(), lse2.data(), lse0.size() * sizeof(float)));
  }
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
}

// A serving stack may capture its very first decode step (global capture mode): the library's
// one-time device setup (smem limits, the cluster-occupancy query of the KV multicast) must work
// inside a capture. Two row tiles, so the multicast path is taken; the replay matches the reference.
TEST(GpuDecode, FirstCallInsideGlobalCapture) {
  SKIP_WITHOUT_SM90();
  CaseRun t(Case{4, 1, 128, 64, 300, true, 0.0}, dmlaBF16);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CK(cudaStreamBeginCapture(t.s, cudaStreamCaptureModeGlobal));
  t.d.poison(t.s);
  t.run();
  CK(cudaStreamEndCapture(t.s, &g));
  CK(cudaGraphInstantiate(&ge, g, 0));
  CK(cudaGraphLaunch(ge, t.s));
  CK(cudaStreamSynchronize(t.s));
  const distmla::CompareResult r = compare_device(t.d);
  EXPECT_TRUE(r.ok()) << "rel_err " << r.rel_err << " wrong " << r.wrong;
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
}

// Reuse across "layers": same seqlens, different q (second workload seed), schedule reused.
TEST(GpuDecode, ReuseScheduleAcrossLayers) {
  SKIP_WITHOUT_SM90();
  CaseRun t(Case{8, 1, 128, 64, 3000, true, 0.1}, dmlaBF16);
  Device& d = t.d;
  t.run();
  // layer 2: new q (reverse the q rows), reuse schedule
  std::vector<uint16_t> q2(d.w.q.rbegin(), d.w.q.rend());
  d.w.q = q2;
  CK(cudaMemcpyAsync(d.q.p, d.w.q.data(), d.q.bytes(), cudaMemcpyHostToDevice, t.s));
  d.poison(t.s);
  t.run(DMLA_RUN_REUSE_SCHEDULE);
  CK(cudaStreamSynchronize(t.s));
  const distmla::CompareResult r = compare_device(d);
  EXPECT_TRUE(r.ok()) << "rel_err " << r.rel_err << " wrong " << r.wrong;
}

// Head-sliced output (the distributed all-to-all send layout): the same bits as the plain run,
// row by row, for split sequences (combine) and one-part sequences (decode epilogue) alike, with
// fp32 out too; the bytes between slices are never written.
TEST(GpuDecode, SlicedOutputMatchesPlain) {
  SKIP_WITHOUT_SM90();
  for (bool fp32 : {false, true}) {
    Case c{5, 2, 35, 64, 3000, true, 0.2};
    c.lengths = {0, 17, 70, 9000, 40000};
    Device d(make(c), fp32 ? dmlaFP32 : c.dtype);
    const dmlaDecodeShape_t& g = d.w.shape;
    distmla::DecodePlan plan(g, dmlaBackendCuda);
    DevBuf<uint8_t> ws(plan.workspace_bytes());
    plan.run(d.tensors(), ws.p, ws.n, nullptr);
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> out;
    std::vector<float> lse;
    d.fetch(&out, &lse);

    const int slices = 4, max_slice = 9;  // 35 heads: 9, 9, 9, 8
    const size_t eb = out_elem_size(g.out_dtype);
    const size_t srows = static_cast<size_t>(g.batch) * g.s_q * max_slice;
    const size_t o_stride = srows * 512 * eb + 256, l_stride = srows * 4 + 256;
    DevBuf<uint8_t> sout(o_stride * slices), slse(l_stride * slices);
    CK(cudaMemset(sout.p, 0x5A, sout.bytes()));
    CK(cudaMemset(slse.p, 0x5A, slse.bytes()));
    dmlaDecodeTensors_t t = d.tensors();
    t.out = sout.p;
    t.lse = reinterpret_cast<float*>(slse.p);
    plan.run_sliced(t, dmlaHeadSlices_t{slices, max_slice, o_stride, l_stride}, ws.p, ws.n, nullptr);
    CK(cudaDeviceSynchronize());
    std::vector<uint8_t> ho(sout.bytes()), hl(slse.bytes());
    CK(cudaMemcpy(ho.data(), sout.p, ho.size(), cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hl.data(), slse.p, hl.size(), cudaMemcpyDeviceToHost));
    int bad = 0;
    for (int h = 0; h < g.h_q; ++h) {
      const int sc = h / max_slice, hl_ = h % max_slice;  // 35 = 9 + 9 + 9 + 8: slices of 9
      for (int b = 0; b < g.batch; ++b)
        for (int q = 0; q < g.s_q; ++q) {
          const uint8_t* want = out.data() + ((static_cast<size_t>(b) * g.s_q + q) * g.h_q + h) * 512 * eb;
          const uint8_t* got = ho.data() + sc * o_stride + ((static_cast<size_t>(b) * g.s_q + q) * max_slice + hl_) * 512 * eb;
          if (std::memcmp(want, got, 512 * eb) != 0 && ++bad <= 5) ADD_FAILURE() << "out row b " << b << " t " << q << " h " << h;
          const float lw = lse[(static_cast<size_t>(b) * g.h_q + h) * g.s_q + q];
          float lg;
          std::memcpy(&lg, hl.data() + sc * l_stride + ((static_cast<size_t>(b) * max_slice + hl_) * g.s_q + q) * 4, 4);
          if (std::memcmp(&lw, &lg, 4) != 0 && ++bad <= 5) ADD_FAILURE() << "lse b " << b << " t " << q << " h " << h;
        }
    }
    EXPECT_EQ(bad, 0) << (fp32 ? "fp32 out" : "bf16 out");
    for (int sc = 0; sc < slices; ++sc) {  // padding after each slice's block stays untouched
      const uint8_t* pad = ho.data() + sc * o_stride + srows * 512 * eb;
      for (int k = 0; k < 256; ++k) ASSERT_EQ(pad[k], 0x5A) << "slice " << sc << " out padding written";
      const uint8_t* lpad = hl.data() + sc * l_stride + srows * 4;
      for (int k = 0; k < 256; ++k) ASSERT_EQ(lpad[k], 0x5A) << "slice " << sc << " lse padding written";
    }
  }
}

// Device pointers the 16-byte vector paths cannot use are refused before any launch, naming the
// argument; nothing is written.
TEST(GpuDecode, MisalignedPointersRejected) {
  SKIP_WITHOUT_SM90();
  Case c{2, 1, 16, 64, 100, false};
  Device d(make(c), c.dtype);
  distmla::DecodePlan plan(d.w.shape, dmlaBackendCuda);
  DevBuf<uint8_t> ws(plan.workspace_bytes());
  d.poison(nullptr);
  CK(cudaDeviceSynchronize());
  struct Bad {
    const char* name;
    dmlaDecodeTensors_t t;
  };
  dmlaDecodeTensors_t base = d.tensors();
  std::vector<Bad> bad(3, Bad{"", base});
  bad[0].name = "q";
  bad[0].t.q = static_cast<const char*>(base.q) + 8;
  bad[1].name = "out";
  bad[1].t.out = static_cast<char*>(base.out) + 4;
  bad[2].name = "lse";
  bad[2].t.lse = reinterpret_cast<float*>(reinterpret_cast<char*>(base.lse) + 2);
  for (const Bad& b : bad) {
    EXPECT_EQ(dmlaRun(plan.handle(), &b.t, ws.p, ws.n, nullptr), dmlaErrorInvalidArgument) << b.name;
    EXPECT_EQ(std::string(dmlaGetLastErrorMessage()).rfind(std::string(b.name) + " = ", 0), 0u)
        << dmlaGetLastErrorMessage();
  }
  CK(cudaDeviceSynchronize());
  std::vector<uint8_t> out;
  std::vector<float> lse;
  d.fetch(&out, &lse);
  for (uint8_t v : out) ASSERT_EQ(v, 0xFF) << "a refused run wrote out";
}

}  // namespace
