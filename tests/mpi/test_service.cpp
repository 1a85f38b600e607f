// The decode service (distmla/dist/decode_server.h): a server on 127.0.0.1, CPU backend, and its client.
// Answers match the double reference (NaN-poisoned unused pages, a zero-length sequence); a bad
// shape or a wrong payload size gets an error naming the field and leaves the connection usable;
// an oversized request is refused and its connection closed; garbage closes that connection only;
// connections past the limit, idle ones and stalled transfers are closed without affecting others.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "distmla/dist/decode_client.h"
#include "distmla/dist/decode_server.h"
#include "distmla/compare.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"
#include "distmla/dist/service_protocol.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

Workload small_workload(uint64_t seed) {
  WorkloadOptions o;
  o.batch = 3;
  o.s_q = 2;
  o.h_q = 16;
  o.page_size = 32;
  o.lengths = {100, 0, 37};
  o.seed = seed;
  return make_workload(o);
}

ServerOptions cpu(uint64_t max_bytes = 1ull << 30) {
  ServerOptions o;
  o.backend = dmlaBackendCpu;
  o.max_request_bytes = max_bytes;
  return o;
}

bool have_gpu() {
  dmlaBackend_t b = dmlaBackendCpu;
  return dmlaResolveBackend(dmlaBackendAuto, &b) == dmlaSuccess && b == dmlaBackendCuda;
}

ServerOptions cuda() {
  ServerOptions o;
  o.backend = dmlaBackendCuda;
  return o;
}

void expect_matches_reference(const Workload& w, const DecodeResult& r) {
  ASSERT_EQ(r.status, dmlaSuccess) << r.message;
  std::vector<double> out_ref, lse_ref;
  reference_decode(w.shape, w.host_tensors(), &out_ref, &lse_ref);
  const CompareResult c = compare_with_reference(w.shape, r.out.data(), w.shape.out_dtype, r.lse.data(), out_ref, lse_ref);
  EXPECT_TRUE(c.ok()) << "wrong " << c.wrong << " rel " << c.rel_err;
}

}  // namespace

TEST(Service, AnswersMatchTheReference) {
  DecodeServer server("127.0.0.1", 0, cpu());
  EXPECT_EQ(server.backend(), dmlaBackendCpu);
  DecodeClient client("127.0.0.1", server.port());
  for (uint64_t seed : {1, 2}) {  // two requests on one connection
    const Workload w = small_workload(seed);
    expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
  }
}

TEST(Service, ABadShapeIsNamedAndTheConnectionStaysUsable) {
  DecodeServer server("127.0.0.1", 0, cpu());
  DecodeClient client("127.0.0.1", server.port());
  const Workload w = small_workload(3);
  dmlaDecodeShape_t bad = w.shape;
  bad.page_size = 48;  // refused by the plan; the pool sent is sized for it, as the protocol wants
  std::vector<uint16_t> pool48(static_cast<size_t>(bad.num_blocks) * 48 * DMLA_D_QK);
  dmlaDecodeTensors_t t48 = w.host_tensors();
  t48.kv_pool = pool48.data();
  DecodeResult r = client.decode(bad, t48);
  EXPECT_EQ(r.status, dmlaErrorPageSize);
  EXPECT_NE(r.message.find("48"), std::string::npos) << r.message;
  // a block id past the pool: caught by the checked run, nothing computed
  std::vector<int32_t> table = w.block_table;
  table[0] = w.shape.num_blocks + 5;
  dmlaDecodeTensors_t t = w.host_tensors();
  t.block_table = table.data();
  r = client.decode(w.shape, t);
  EXPECT_EQ(r.status, dmlaErrorBlockOutOfRange) << r.message;
  expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
}

TEST(Service, AWrongPayloadSizeIsRefused) {
  DecodeServer server("127.0.0.1", 0, cpu());
  DecodeClient client("127.0.0.1", server.port());
  const Workload w = small_workload(4);
  RequestHeader h;
  h.id = 7;
  h.shape = w.shape;
  h.payload_bytes = 100;  // not what the shape needs
  const auto head = encode_request_header(h);
  std::vector<uint8_t> frame(head.begin(), head.end());
  frame.resize(frame.size() + 100);
  client.send_raw(frame);
  const DecodeResult r = client.read_result(w.shape);
  EXPECT_EQ(r.status, dmlaErrorInvalidArgument);
  EXPECT_NE(r.message.find("payload_bytes = 100"), std::string::npos) << r.message;
  expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
}

TEST(Service, AnOversizedRequestIsRefusedAndItsConnectionClosed) {
  const Workload w = small_workload(5);
  DecodeServer server("127.0.0.1", 0, cpu(1 << 20));
  DecodeClient client("127.0.0.1", server.port(), 5000);
  RequestHeader h;
  h.shape = w.shape;
  h.payload_bytes = 1ull << 40;  // refused from the header, before any payload is read
  const auto head = encode_request_header(h);
  client.send_raw(std::vector<uint8_t>(head.begin(), head.end()));
  const DecodeResult r = client.read_result(w.shape);
  EXPECT_EQ(r.status, dmlaErrorInvalidArgument);
  EXPECT_NE(r.message.find("over this server's limit of 1048576"), std::string::npos) << r.message;
  EXPECT_THROW(client.read_result(w.shape), Error);  // closed
  // a request within the limit, on a new connection
  DecodeClient again("127.0.0.1", server.port());
  expect_matches_reference(w, again.decode(w.shape, w.host_tensors()));
}

TEST(Service, GarbageClosesThatConnectionOnly) {
  DecodeServer server("127.0.0.1", 0, cpu());
  DecodeClient bad("127.0.0.1", server.port(), 5000), good("127.0.0.1", server.port());
  bad.send_raw(std::vector<uint8_t>(kRequestHeaderBytes, 0x5a));
  const Workload w = small_workload(6);
  EXPECT_THROW(bad.read_result(w.shape), Error);
  expect_matches_reference(w, good.decode(w.shape, w.host_tensors()));
}

TEST(Service, RefusesABadAddressOrPort) {
  EXPECT_THROW(DecodeServer("not-an-ip", 0, cpu()), Error);
  EXPECT_THROW(DecodeServer("127.0.0.1", 70000, cpu()), Error);
  ServerOptions o = cpu();
  o.workers = 0;
  EXPECT_THROW(DecodeServer("127.0.0.1", 0, o), Error);
  o = cpu();
  o.max_connections = 0;
  EXPECT_THROW(DecodeServer("127.0.0.1", 0, o), Error);
  o = cpu();
  o.io_timeout_ms = 0;
  EXPECT_THROW(DecodeServer("127.0.0.1", 0, o), Error);
}

TEST(Service, ConnectionsOverTheLimitAreClosed) {
  ServerOptions o = cpu();
  o.max_connections = 1;
  DecodeServer server("127.0.0.1", 0, o);
  const Workload w = small_workload(7);
  {
    DecodeClient first("127.0.0.1", server.port());
    expect_matches_reference(w, first.decode(w.shape, w.host_tensors()));
    DecodeClient second("127.0.0.1", server.port(), 5000);  // TCP connects; the server closes it
    EXPECT_THROW(second.decode(w.shape, w.host_tensors()), Error);
    expect_matches_reference(w, first.decode(w.shape, w.host_tensors()));
  }
  // once the first has gone (the server notices its close), a new one is served
  for (int attempt = 0;; ++attempt) {
    try {
      DecodeClient next("127.0.0.1", server.port(), 5000);
      expect_matches_reference(w, next.decode(w.shape, w.host_tensors()));
      break;
    } catch (const Error&) {
      ASSERT_LT(attempt, 50) << "the closed connection still counts after 5 s";
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
}

TEST(Service, AnIdleConnectionIsClosed) {
  ServerOptions o = cpu();
  o.idle_timeout_ms = 200;
  DecodeServer server("127.0.0.1", 0, o);
  const Workload w = small_workload(8);
  DecodeClient idle("127.0.0.1", server.port(), 5000);
  expect_matches_reference(w, idle.decode(w.shape, w.host_tensors()));  // the idle time counts from the answer
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_THROW(idle.decode(w.shape, w.host_tensors()), Error);
  DecodeClient fresh("127.0.0.1", server.port());
  expect_matches_reference(w, fresh.decode(w.shape, w.host_tensors()));
}

TEST(Service, AStalledPayloadIsDroppedAndOthersGoOn) {
  ServerOptions o = cpu();
  o.io_timeout_ms = 300;
  DecodeServer server("127.0.0.1", 0, o);
  const Workload w = small_workload(9);
  DecodeClient slow("127.0.0.1", server.port(), 5000), good("127.0.0.1", server.port());
  RequestHeader h;
  h.shape = w.shape;
  h.payload_bytes = payload_sizes(w.shape).request();
  const auto head = encode_request_header(h);
  std::vector<uint8_t> part(head.begin(), head.end());
  part.resize(part.size() + h.payload_bytes / 2);  // half the payload, then nothing
  slow.send_raw(part);
  expect_matches_reference(w, good.decode(w.shape, w.host_tensors()));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(slow.read_result(w.shape), Error);  // closed by the server, not the client's 5 s
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  expect_matches_reference(w, good.decode(w.shape, w.host_tensors()));
}

// The CUDA backend behind the service (skipped without a usable sm_90 GPU; scripts/gpu_check.sh
// runs it on the GPU machine): a larger batch, fp32 out, then a refused request, then again, then
// two connections at once.
TEST(Service, CudaBackendMatchesTheReference) {
  if (!have_gpu()) GTEST_SKIP() << "no usable GPU";
  DecodeServer server("127.0.0.1", 0, cuda());
  DecodeClient client("127.0.0.1", server.port());
  WorkloadOptions wo;
  wo.batch = 16;
  wo.h_q = 128;
  wo.mean_len = 700;
  wo.varlen = true;
  wo.zero_len_frac = 0.1;
  const Workload w = make_workload(wo);
  expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
  dmlaDecodeShape_t f32 = w.shape;
  f32.out_dtype = dmlaFP32;
  Workload w32 = w;
  w32.shape = f32;
  expect_matches_reference(w32, client.decode(f32, w.host_tensors()));
  std::vector<int32_t> lens = w.seqlens;
  lens[3] = w.shape.max_blocks_per_seq * w.shape.page_size + 1;  // more pages than the table holds
  dmlaDecodeTensors_t t = w.host_tensors();
  t.seqlens = lens.data();
  EXPECT_EQ(client.decode(w.shape, t).status, dmlaErrorSeqlenOutOfRange);
  expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
  // two connections at once: each worker on its own stream and buffers
  const Workload small = small_workload(11);
  std::thread other([&] {
    DecodeClient c2("127.0.0.1", server.port());
    for (int k = 0; k < 3; ++k) expect_matches_reference(small, c2.decode(small.shape, small.host_tensors()));
  });
  for (int k = 0; k < 3; ++k) expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
  other.join();
}

cudaError_t service_test_fault();  // service_fault.cu

// Defined last: its kernel fault leaves this process's GPU context unusable. The request after
// the fault fails and finds the context lost; later ones are refused with the reason at once.
TEST(Service, CudaContextLossIsReportedAndLaterRequestsRefused) {
  if (!have_gpu()) GTEST_SKIP() << "no usable GPU";
  DecodeServer server("127.0.0.1", 0, cuda());
  DecodeClient client("127.0.0.1", server.port());
  const Workload w = small_workload(10);
  expect_matches_reference(w, client.decode(w.shape, w.host_tensors()));
  EXPECT_TRUE(server.healthy());
  ASSERT_NE(service_test_fault(), cudaSuccess);
  const DecodeResult first = client.decode(w.shape, w.host_tensors());
  EXPECT_NE(first.status, dmlaSuccess);
  EXPECT_FALSE(server.healthy()) << first.message;
  EXPECT_NE(server.lost_reason().find("unusable"), std::string::npos) << server.lost_reason();
  const DecodeResult later = client.decode(w.shape, w.host_tensors());
  EXPECT_EQ(later.status, dmlaErrorCuda);
  EXPECT_NE(later.message.find("restart distmla_serve"), std::string::npos) << later.message;
}
