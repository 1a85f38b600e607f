// The launcher's node-local ranks (examples/decode/node_ranks.cpp): from host names, and gathered
// through the TCP store by 4 ranks on threads (the --store launch on one host).
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "decode/node_ranks.h"
#include "distmla/dist/tcp_store.h"
#include "distmla/distmla.hpp"

using distmla::examples::NodeRanks;
using distmla::examples::node_ranks_from_hosts;
using distmla::examples::node_ranks_store;
using namespace distmla::dist;

TEST(NodeRanks, OneHost) {
  const std::vector<std::string> hosts(4, "a");
  for (int r = 0; r < 4; ++r) {
    const NodeRanks n = node_ranks_from_hosts(hosts, r);
    EXPECT_EQ(n.local_rank, r);
    EXPECT_EQ(n.local_size, 4);
    EXPECT_EQ(n.host, "a");
  }
}

TEST(NodeRanks, TwoHostsInterleaved) {
  const std::vector<std::string> hosts = {"a", "b", "a", "b", "b"};
  const int want_rank[] = {0, 0, 1, 1, 2};
  const int want_size[] = {2, 3, 2, 3, 3};
  for (int r = 0; r < 5; ++r) {
    const NodeRanks n = node_ranks_from_hosts(hosts, r);
    EXPECT_EQ(n.local_rank, want_rank[r]) << "rank " << r;
    EXPECT_EQ(n.local_size, want_size[r]) << "rank " << r;
  }
}

TEST(NodeRanks, ThroughTheStore) {
  TcpStoreServer server("127.0.0.1", 0);
  std::vector<NodeRanks> got(4);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&, r] {
      TcpStoreClient store("127.0.0.1", server.port(), "node_ranks");
      got[static_cast<size_t>(r)] = node_ranks_store(store, r, 4, 10000);
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(got[static_cast<size_t>(r)].local_rank, r);
    EXPECT_EQ(got[static_cast<size_t>(r)].local_size, 4);
    EXPECT_EQ(got[static_cast<size_t>(r)].host, got[0].host);
  }
}

// A rank that never publishes its name: the others get an error naming it, within the deadline.
TEST(NodeRanks, MissingRankNamed) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient store("127.0.0.1", server.port(), "node_ranks_missing");
  try {
    node_ranks_store(store, 0, 2, 300);
    FAIL() << "expected an error";
  } catch (const distmla::Error& e) {
    EXPECT_EQ(e.code(), dmlaErrorTimeout);
    EXPECT_NE(std::string(e.what()).find("rank 1"), std::string::npos) << e.what();
  }
}
