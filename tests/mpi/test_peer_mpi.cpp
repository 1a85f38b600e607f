// The peer communicator's all_to_all (CUDA IPC mailboxes, kernels/peer_exchange.h) under mpirun,
// bootstrapped over MPI so that ranks may share a GPU (NCCL refuses that): patterns over sizes
// and repeated calls, graph capture + replays, the fallback above the reservation, a missing
// peer (timeout naming it, no hang; also in the pull merge over windows), and the distributed
// decode (CP all-to-all, pull merge) over it against the double reference, eager and
// graph-replayed. Skips without a GPU.
// Launch: mpirun -np 2 distmla_peer_tests.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dist_test_util.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/error.h"
#include "distmla/dist/mpi_communicator.h"
#include "distmla/dist/peer_communicator.h"
#include "distmla/dist/shard_data.h"
#include "distmla/distmla.hpp"
#include "distmla/kernels/cross_rank_combine.h"
#include "distmla/kernels/decode.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int device_of_rank() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return -1;
  return world_rank() % n;
}
#define REQUIRE_GPU()                                               \
  do {                                                              \
    if (device_of_rank() < 0) GTEST_SKIP() << "needs a GPU";        \
    cudaSetDevice(device_of_rank());                                \
  } while (0)

// peer_ms: the deadline of the peer kernel's waits. The MPI bootstrap's is longer, so that its
// barrier in the destructor waits for a rank that is late by one peer deadline.
std::unique_ptr<Communicator> make_comm(int peer_ms) {
  return make_peer_communicator(make_mpi_communicator(MPI_COMM_WORLD, CommOptions{20000}), device_of_rank(),
                                CommOptions{peer_ms});
}

// Word i of the chunk that rank `from` sends to rank `to` in call `it`.
uint32_t word(int from, int to, size_t i, int it) {
  return static_cast<uint32_t>(from * 0x01000193u ^ to * 0x9E3779B9u ^ i * 2654435761u ^ it * 0x85EBCA6Bu);
}

struct Bufs {
  uint32_t* send = nullptr;
  uint32_t* recv = nullptr;
  size_t words = 0;  // a chunk
  int n = 1;
  Bufs(size_t bytes, int world) : words(bytes / 4), n(world) {
    cudaMalloc(reinterpret_cast<void**>(&send), std::max<size_t>(16, bytes * world));
    cudaMalloc(reinterpret_cast<void**>(&recv), std::max<size_t>(16, bytes * world));
  }
  ~Bufs() {
    cudaFree(send);
    cudaFree(recv);
  }
  void fill(int me, int it, cudaStream_t st) {
    std::vector<uint32_t> h(words * n);
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < words; ++i) h[p * words + i] = word(me, p, i, it);
    cudaMemcpyAsync(send, h.data(), h.size() * 4, cudaMemcpyHostToDevice, st);
    cudaMemsetAsync(recv, 0xFF, h.size() * 4, st);
    cudaStreamSynchronize(st);
  }
  // Number of wrong words in recv.
  size_t check(int me, int it) const {
    std::vector<uint32_t> h(words * n);
    cudaMemcpy(h.data(), recv, h.size() * 4, cudaMemcpyDeviceToHost);
    size_t bad = 0;
    for (int s = 0; s < n; ++s)
      for (size_t i = 0; i < words; ++i) bad += h[s * words + i] != word(s, me, i, it);
    return bad;
  }
};

}  // namespace

// Bad arguments are refused before any CUDA call (also on machines without a GPU).
TEST(PeerComm, BadArgumentsAreRefused) {
  try {
    make_peer_communicator(nullptr, 0, CommOptions{1000});
    ADD_FAILURE() << "null base accepted";
  } catch (const distmla::Error& e) {
    EXPECT_EQ(e.code(), dmlaErrorNullPointer) << e.what();
  }
  try {
    make_peer_communicator(make_mpi_communicator(MPI_COMM_WORLD, CommOptions{1000}), 0, CommOptions{0});
    ADD_FAILURE() << "timeout 0 accepted";
  } catch (const distmla::Error& e) {
    EXPECT_EQ(e.code(), dmlaErrorInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("timeout_ms = 0"), std::string::npos) << e.what();
  }
}

TEST(PeerComm, AllToAllOverSizesAndCalls) {
  REQUIRE_GPU();
  auto comm = make_comm(20000);
  const int me = comm->rank(), n = comm->size();
  ASSERT_EQ(comm->reserve(1 << 20), dmlaSuccess) << last_error_message();
  EXPECT_EQ(std::string(comm->backend_name()).rfind("peer+", 0), 0u) << comm->backend_name();
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int it = 0;
  for (size_t bytes : {size_t(16), size_t(4096 + 16), size_t(1) << 16, size_t(1) << 20}) {
    Bufs b(bytes, n);
    for (int rep = 0; rep < 3; ++rep, ++it) {
      b.fill(me, it, st);
      ASSERT_EQ(comm->all_to_all(b.send, b.recv, bytes, st), dmlaSuccess) << last_error_message();
      ASSERT_EQ(comm->wait(st), dmlaSuccess) << last_error_message();
      EXPECT_EQ(b.check(me, it), 0u) << "bytes " << bytes << " call " << it;
    }
  }
  // zero bytes: nothing to move, still a (valid) collective
  ASSERT_EQ(comm->all_to_all(nullptr, nullptr, 0, st), dmlaSuccess) << last_error_message();
  ASSERT_EQ(comm->wait(st), dmlaSuccess) << last_error_message();
  cudaStreamDestroy(st);
}

TEST(PeerComm, GraphReplays) {
  REQUIRE_GPU();
  auto comm = make_comm(20000);
  const int me = comm->rank(), n = comm->size();
  const size_t bytes = 256 * 1024;
  ASSERT_EQ(comm->reserve(bytes), dmlaSuccess) << last_error_message();
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  Bufs b(bytes, n);
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const dmlaResult_t r = comm->all_to_all(b.send, b.recv, bytes, st);
  CUDA_OK(cudaStreamEndCapture(st, &g));
  ASSERT_EQ(r, dmlaSuccess) << last_error_message();
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  for (int it = 0; it < 4; ++it) {  // the device counters advance with every replay
    b.fill(me, 100 + it, st);
    CUDA_OK(cudaGraphLaunch(ge, st));
    ASSERT_EQ(comm->wait(st), dmlaSuccess) << last_error_message();
    EXPECT_EQ(b.check(me, 100 + it), 0u) << "replay " << it;
  }
  // an eager call after the replays continues the same sequence
  b.fill(me, 200, st);
  ASSERT_EQ(comm->all_to_all(b.send, b.recv, bytes, st), dmlaSuccess) << last_error_message();
  ASSERT_EQ(comm->wait(st), dmlaSuccess) << last_error_message();
  EXPECT_EQ(b.check(me, 200), 0u);
  cudaGraphExecDestroy(ge);
  cudaGraphDestroy(g);
  cudaStreamDestroy(st);
}

TEST(PeerComm, AboveTheReservationWithAHostBaseAndMisalignedAreRefused) {
  REQUIRE_GPU();
  auto comm = make_comm(20000);
  ASSERT_EQ(comm->reserve(4096), dmlaSuccess) << last_error_message();
  Bufs b(8192, comm->size());
  EXPECT_EQ(comm->all_to_all(b.send, b.recv, 8192, nullptr), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(last_error_message()).find("bytes = 8192 (reserved 4096"), std::string::npos) << last_error_message();
  // a misaligned buffer is refused on the rank that has it, before anything is launched
  EXPECT_EQ(comm->all_to_all(reinterpret_cast<char*>(b.send) + 4, b.recv, 1024, nullptr), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(last_error_message()).find("16-byte aligned"), std::string::npos) << last_error_message();
}

TEST(PeerComm, MissingPeerTimesOutNamingIt) {
  REQUIRE_GPU();
  auto comm = make_comm(300);
  const int me = comm->rank(), n = comm->size();
  if (n < 2) GTEST_SKIP() << "needs 2 ranks";
  ASSERT_EQ(comm->reserve(4096), dmlaSuccess) << last_error_message();
  if (me == 0) {  // the others never call: rank 0's kernel gives up at its deadline
    cudaStream_t st;
    CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Bufs b(4096, n);
    b.fill(me, 0, st);
    ASSERT_EQ(comm->all_to_all(b.send, b.recv, 4096, st), dmlaSuccess) << last_error_message();
    EXPECT_EQ(comm->wait(st), dmlaErrorTimeout);
    EXPECT_NE(std::string(last_error_message()).find("to deliver its chunk"), std::string::npos) << last_error_message();
    // refused from now on, without touching the GPU
    EXPECT_EQ(comm->all_to_all(b.send, b.recv, 4096, st), dmlaErrorTimeout);
    CUDA_OK(cudaStreamSynchronize(st));
    cudaStreamDestroy(st);
  }
  // the destructor's barrier meets every rank
}

// The pull merge (the cross-rank combine reading the peers' windows) with a rank that never
// merges: the others' combines give up at their deadline naming it, and the communicator then
// refuses exchanges. Rank 0 merges alone here.
TEST(PeerComm, PullMergeMissingPeerTimesOutNamingIt) {
  REQUIRE_GPU();
  auto comm = make_comm(300);
  const int me = comm->rank(), n = comm->size();
  if (n < 2) GTEST_SKIP() << "needs 2 ranks";
  constexpr size_t kPart = 2048;  // one 512-wide bf16 row, then its lse
  DeviceWindow w;
  ASSERT_EQ(comm->reserve_window(n * kPart, &w), dmlaSuccess) << last_error_message();
  ASSERT_EQ(w.sync.world, n) << "the ranks share GPUs or are NVLink peers: the window must map";
  if (me == 0) {
    cudaStream_t st;
    CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Bufs out(kPart, 1);
    kernels::CrossRankCombineArgs a;
    a.num_parts = n; a.batch = 1; a.s_q = 1; a.heads = 1; a.part_heads = 1; a.lse_offset = 1024;
    a.out = out.send; a.lse_out = reinterpret_cast<float*>(out.recv); a.pull = w.sync;
    for (int c = 0; c < n; ++c) a.part_at[c] = w.at[c] + me * kPart;
    ASSERT_EQ(kernels::cross_rank_combine(a, st), cudaSuccess);
    EXPECT_EQ(comm->wait(st), dmlaErrorTimeout);
    EXPECT_NE(std::string(last_error_message()).find("for rank 1 to deliver its chunk"), std::string::npos)
        << last_error_message();
    Bufs b(1024, n);
    EXPECT_EQ(comm->all_to_all(b.send, b.recv, 1024, st), dmlaErrorTimeout);  // refused from now on
    CUDA_OK(cudaStreamSynchronize(st));
    cudaStreamDestroy(st);
  }
  // the destructor's barrier meets every rank
}

namespace {

// Test-only device communicator for ranks that share a GPU (NCCL refuses them): the MPI
// communicator's collectives on device buffers staged through host memory, synchronously (not
// capturable). Under the peer communicator only its bootstrap and host-side calls run, and the
// decode step's all_to_all goes through the peer kernel.
class StagedComm final : public Communicator {
 public:
  explicit StagedComm(std::unique_ptr<Communicator> host) : host_(std::move(host)) {}
  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  MemSpace memory() const override { return MemSpace::kDevice; }
  const char* backend_name() const override { return "mpi-staged"; }
  dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void* stream) override {
    std::vector<char> hs(bytes), hr(bytes * size());
    if (!fetch(hs.data(), send, bytes, stream)) return dmlaErrorCuda;
    if (auto r = host_->all_gather(hs.data(), hr.data(), bytes, nullptr); r != dmlaSuccess) return r;
    return cudaMemcpy(recv, hr.data(), hr.size(), cudaMemcpyHostToDevice) == cudaSuccess ? dmlaSuccess : dmlaErrorCuda;
  }
  dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void* stream) override {
    std::vector<char> hs(bytes * size()), hr(bytes * size());
    if (!fetch(hs.data(), send, hs.size(), stream)) return dmlaErrorCuda;
    if (auto r = host_->all_to_all(hs.data(), hr.data(), bytes, nullptr); r != dmlaSuccess) return r;
    return cudaMemcpy(recv, hr.data(), hr.size(), cudaMemcpyHostToDevice) == cudaSuccess ? dmlaSuccess : dmlaErrorCuda;
  }
  dmlaResult_t broadcast(void* buf, size_t bytes, int root, void* stream) override {
    std::vector<char> h(bytes);
    if (!fetch(h.data(), buf, bytes, stream)) return dmlaErrorCuda;
    if (auto r = host_->broadcast(h.data(), bytes, root, nullptr); r != dmlaSuccess) return r;
    return cudaMemcpy(buf, h.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess ? dmlaSuccess : dmlaErrorCuda;
  }
  dmlaResult_t barrier() override { return host_->barrier(); }
  dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) override { return host_->agree(ok, all_ok, n); }
  dmlaResult_t wait(void* stream) override {
    return cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) == cudaSuccess ? dmlaSuccess : dmlaErrorCuda;
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<StagedComm>(host_->split(color, key));
  }

 private:
  static bool fetch(void* dst, const void* src, size_t bytes, void* stream) {
    return cudaStreamSynchronize(static_cast<cudaStream_t>(stream)) == cudaSuccess &&
           cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
  }
  std::unique_ptr<Communicator> host_;
};

}  // namespace

// CP = world, all-to-all by head slice through the peer kernel, 1 and 2 sub-batches, s_q 1 and 2
// (the bulk + tail path), eager, replayed from a CUDA graph, and the exchange + merge alone.
TEST(PeerDecode, CpAllToAllMatchesReferenceOnSharedGpus) {
  REQUIRE_GPU();
  if (!kernels::device_supported(device_of_rank())) GTEST_SKIP() << "no sm_90 kernel for this device";
  auto world = make_peer_communicator(std::make_unique<StagedComm>(make_mpi_communicator(MPI_COMM_WORLD, CommOptions{20000})),
                                      device_of_rank(), CommOptions{20000});
  const int n = world->size();
  if (n < 2) GTEST_SKIP() << "needs 2 ranks";
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (int s_q : {1, 2})
    for (int k : {1, 2}) {
      SCOPED_TRACE("s_q " + std::to_string(s_q) + " sub_batches " + std::to_string(k));
      const test_util::RefWorkload rw = test_util::varlen_step_workload(s_q, 11 + s_q);
      DecoderConfig layout;
      layout.tp = 1; layout.cp = n; layout.mode = MergeMode::kAllToAll; layout.sub_batches = k;
      test_util::check_gpu_step(*world, rw, layout, true, st, "peer+mpi-staged");
    }
  cudaStreamDestroy(st);
}
