// The peer communicator's all_to_all (CUDA IPC mailboxes, kernels/peer_exchange.h) under mpirun,
// bootstrapped over MPI so that ranks may share a GPU (NCCL refuses that): patterns over sizes
// and repeated calls, graph capture + replays, the fallback above the reservation, and a missing
// peer (timeout naming it, no hang). Skips without a GPU. Launch: mpirun -np 2 distmla_peer_tests.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "distmla/dist/error.h"
#include "distmla/dist/mpi_communicator.h"
#include "distmla/dist/peer_communicator.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

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

std::unique_ptr<Communicator> make_comm(int timeout_ms) {
  return make_peer_communicator(make_mpi_communicator(MPI_COMM_WORLD, CommOptions{timeout_ms}), device_of_rank(),
                                CommOptions{timeout_ms});
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

TEST(PeerComm, AboveTheReservationWithAHostBaseIsRefused) {
  REQUIRE_GPU();
  auto comm = make_comm(20000);
  ASSERT_EQ(comm->reserve(4096), dmlaSuccess) << last_error_message();
  Bufs b(8192, comm->size());
  EXPECT_EQ(comm->all_to_all(b.send, b.recv, 8192, nullptr), dmlaErrorInvalidArgument);
  EXPECT_NE(std::string(last_error_message()).find("bytes = 8192 (reserved 4096"), std::string::npos) << last_error_message();
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
