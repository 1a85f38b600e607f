// NCCL path on GPUs, one process per GPU under mpirun: communicator calls on device buffers,
// the three bootstraps, and the distributed decode (CUDA backend, GPU cross-rank combine)
// against the double reference, also replayed from a CUDA graph, with NCCL and with the peer
// communicator's all-to-all on top of it. Skips with < 2 GPUs.
// Launch: mpirun -np 2 distmla_nccl_tests, or without MPI 2 processes with
// DISTMLA_TEST_STORE=host:port DISTMLA_TEST_RANK=r DISTMLA_TEST_WORLD=2 (rank 0 hosts the store).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <thread>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "dist_test_util.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/nccl_communicator.h"
#include "distmla/dist/mpi_communicator.h"
#include "distmla/dist/peer_communicator.h"
#include "distmla/dist/shard_data.h"
#include "distmla/dist/store_communicator.h"
#include "distmla/dist/tcp_store.h"
#include "distmla/kernels/decode.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

int my_device();

// Host communicator of the launch (MPI or TCP store), set up by main().
bool g_mpi = false;
std::unique_ptr<TcpStoreServer> g_server;
std::unique_ptr<TcpStoreClient> g_store;
std::unique_ptr<Communicator> g_host;

int mpi_rank() { return g_host->rank(); }
int mpi_size() { return g_host->size(); }

// NCCL communicator over all ranks: through MPI when launched by mpirun, else from an id
// broadcast over the host communicator.
std::unique_ptr<Communicator> make_world_nccl() {
  if (g_mpi) return make_nccl_communicator_mpi(MPI_COMM_WORLD, my_device(), CommOptions{30000});
  NcclId id{};
  if (g_host->rank() == 0) id = nccl_unique_id();
  throw_if_error(g_host->broadcast(id.bytes, sizeof(id.bytes), 0, nullptr));
  return make_nccl_communicator(id, g_host->rank(), g_host->size(), my_device(), CommOptions{30000});
}

bool have_gpus() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return false;
  return n >= mpi_size() && n >= 2;
}
int my_device() {
  int n = 1;
  cudaGetDeviceCount(&n);
  return mpi_rank() % n;
}

#define REQUIRE_GPUS()                                                      \
  do {                                                                      \
    if (!have_gpus()) GTEST_SKIP() << "needs one GPU a rank (>= 2 GPUs)";   \
    cudaSetDevice(my_device());                                             \
  } while (0)

using test_util::DevBuf;

}  // namespace

TEST(NcclComm, CollectivesOnDeviceBuffers) {
  REQUIRE_GPUS();
  auto comm = make_world_nccl();
  const int r = comm->rank(), n = comm->size();
  cudaStream_t st;
  CUDA_OK(cudaStreamCreate(&st));
  std::vector<int> mine(4, r + 1), chunks(4 * n);
  for (int p = 0; p < n; ++p) for (int k = 0; k < 4; ++k) chunks[p * 4 + k] = 100 * r + p;
  DevBuf<int> send(mine), recv(4 * n), a2a_send(chunks), a2a_recv(4 * n);
  ASSERT_EQ(comm->all_gather(send.p, recv.p, 4 * sizeof(int), st), dmlaSuccess) << last_error_message();
  ASSERT_EQ(comm->all_to_all(a2a_send.p, a2a_recv.p, 4 * sizeof(int), st), dmlaSuccess) << last_error_message();
  ASSERT_EQ(comm->wait(st), dmlaSuccess) << last_error_message();
  auto g = recv.host(), a = a2a_recv.host();
  for (int p = 0; p < n; ++p) {
    EXPECT_EQ(g[p * 4], p + 1);
    EXPECT_EQ(a[p * 4], 100 * p + r);
  }
  DevBuf<int> b(std::vector<int>{r == 1 ? 42 : 0});
  ASSERT_EQ(comm->broadcast(b.p, sizeof(int), 1, st), dmlaSuccess);
  ASSERT_EQ(comm->wait(st), dmlaSuccess);
  EXPECT_EQ(b.host()[0], 42);
  ASSERT_EQ(comm->barrier(), dmlaSuccess) << last_error_message();
  uint8_t ok[2] = {1, static_cast<uint8_t>(r == 0 ? 0 : 1)}, all[2];
  ASSERT_EQ(comm->agree(ok, all, 2), dmlaSuccess) << last_error_message();
  EXPECT_EQ(all[0], 1);
  EXPECT_EQ(all[1], 0);
  auto sub = comm->split(r % 2, r);
  EXPECT_EQ(sub->size(), (n + 1 - r % 2) / 2);
  EXPECT_EQ(sub->barrier(), dmlaSuccess);
  cudaStreamDestroy(st);
}

TEST(NcclComm, BootstrapFromStoreAndFromId) {
  REQUIRE_GPUS();
  const int r = mpi_rank(), n = mpi_size();
  std::unique_ptr<TcpStoreServer> server;
  int port = 0;
  if (r == 0) {
    server = std::make_unique<TcpStoreServer>("127.0.0.1", 0);
    port = server->port();
  }
  ASSERT_EQ(g_host->broadcast(&port, sizeof(port), 0, nullptr), dmlaSuccess);
  {
    TcpStoreClient store("127.0.0.1", port, "test/comm0");
    auto comm = make_nccl_communicator_store(store, "nccl_id", r, n, my_device(), CommOptions{30000});
    EXPECT_EQ(comm->size(), n);
    EXPECT_EQ(comm->barrier(), dmlaSuccess) << last_error_message();
  }
  NcclId id{};
  if (r == 0) id = nccl_unique_id();
  ASSERT_EQ(g_host->broadcast(id.bytes, sizeof(id.bytes), 0, nullptr), dmlaSuccess);
  auto comm = make_nccl_communicator(id, r, n, my_device(), CommOptions{30000});
  EXPECT_EQ(comm->rank(), r);
  EXPECT_EQ(comm->barrier(), dmlaSuccess) << last_error_message();
  ASSERT_EQ(g_host->barrier(), dmlaSuccess);  // the server outlives every client
}

namespace {
// The distributed decode over comm, every layout of the world, eager and graph-replayed
// (cp_backend: as test_util::check_gpu_step's).
void check_decode(std::unique_ptr<Communicator> comm, const char* cp_backend = nullptr) {
  cudaStream_t st;
  CUDA_OK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  for (int s_q : {1, 2, 4}) {
    const test_util::RefWorkload rw = test_util::varlen_step_workload(s_q, 7 + s_q);
    const int n = comm->size();
    for (auto [tp, cp] : std::vector<std::pair<int, int>>{{1, n}, {n, 1}})
      for (MergeMode mode : {MergeMode::kAllGather, MergeMode::kAllToAll})
        for (int k : {1, 2}) {  // k 2: exchange + merge of slice 1 on the side stream (fork/join)
          SCOPED_TRACE("tp " + std::to_string(tp) + " cp " + std::to_string(cp) + " " + merge_mode_name(mode) +
                       " s_q " + std::to_string(s_q) + " sub_batches " + std::to_string(k));
          DecoderConfig layout;
          layout.tp = tp; layout.cp = cp; layout.mode = mode; layout.sub_batches = k;
          test_util::check_gpu_step(*comm, rw, layout, true, st, cp_backend);
        }
  }
  cudaStreamDestroy(st);
}
}  // namespace

TEST(NcclDecode, MatchesReferenceAndGraphReplay) {
  REQUIRE_GPUS();
  if (!kernels::device_supported(my_device())) GTEST_SKIP() << "no sm_90 kernel for this device";
  check_decode(make_world_nccl());
}

// The same over the peer transport (peer_communicator.h): the all-to-all merge pulls the
// peers' chunks from their windows.
TEST(PeerDecode, MatchesReferenceAndGraphReplay) {
  REQUIRE_GPUS();
  if (!kernels::device_supported(my_device())) GTEST_SKIP() << "no sm_90 kernel for this device";
  check_decode(make_peer_communicator(make_world_nccl(), my_device(), CommOptions{30000}), "peer+nccl");
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* store = std::getenv("DISTMLA_TEST_STORE");
  if (store) {
    std::string host, err;
    int port = 0;
    if (!parse_host_port(store, &host, &port, &err)) {
      std::fprintf(stderr, "%s\n", err.c_str());
      return 2;
    }
    const int rank = std::atoi(std::getenv("DISTMLA_TEST_RANK") ? std::getenv("DISTMLA_TEST_RANK") : "0");
    const int world = std::atoi(std::getenv("DISTMLA_TEST_WORLD") ? std::getenv("DISTMLA_TEST_WORLD") : "1");
    if (rank == 0) g_server = std::make_unique<TcpStoreServer>(host, port);
    g_store = std::make_unique<TcpStoreClient>(host, port, "nccl_tests");
    g_host = make_store_communicator(*g_store, rank, world, CommOptions{60000});
  } else {
    MPI_Init(&argc, &argv);
    g_mpi = true;
    g_host = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{60000});
  }
  int rc = RUN_ALL_TESTS();
  // Every rank exits with the worst result.
  std::vector<int> all(g_host->size());
  if (g_host->all_gather(&rc, all.data(), sizeof(int), nullptr) == dmlaSuccess)
    for (int v : all) rc = std::max(rc, v);
  g_host.reset();
  if (g_store) {
    // Rank 0 hosts the store: it leaves only after every other rank is done with it.
    int64_t n = 0;
    if (g_server) {
      for (int i = 0; i < 1000 && n < static_cast<int64_t>(all.size()) - 1; ++i) {
        if (g_store->add("exited", 0, &n) != dmlaSuccess) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    } else {
      g_store->add("exited", 1, &n);
    }
  }
  if (g_mpi) MPI_Finalize();
  return rc;
}
