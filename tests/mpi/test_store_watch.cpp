// StoreWatch (store_watch.h): an abort or a lost store sets the cancel flag with the reason; a
// normal finish leaves the job alone.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "distmla/dist/error.h"
#include "distmla/dist/store_watch.h"
#include "distmla/dist/tcp_store.h"

using namespace distmla::dist;

namespace {

StoreOptions quick() {
  StoreOptions o;
  o.timeout_ms = 3000;
  o.backoff_initial_ms = 5;
  o.backoff_max_ms = 50;
  return o;
}

// Polls the watch's flag for up to ms.
bool cancelled_within(const StoreWatch& w, int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (!w.cancelled() && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return w.cancelled();
}

}  // namespace

TEST(StoreWatch, AnotherRanksAbortCancelsWithItsReason) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient mine("127.0.0.1", server.port(), "job", quick());
  TcpStoreClient other("127.0.0.1", server.port(), "job", quick());
  StoreWatch watch(mine, 0, "exited");
  EXPECT_FALSE(watch.cancelled());
  ASSERT_EQ(other.abort("rank 1: out of memory"), dmlaSuccess) << last_error_message();
  EXPECT_TRUE(cancelled_within(watch, 2000));
  EXPECT_NE(watch.reason().find("rank 1: out of memory"), std::string::npos) << watch.reason();
  EXPECT_TRUE(watch.cancel()->load());
}

TEST(StoreWatch, ALostStoreCancels) {
  auto server = std::make_unique<TcpStoreServer>("127.0.0.1", 0);
  TcpStoreClient mine("127.0.0.1", server->port(), "job", quick());
  StoreWatch watch(mine, 1, "exited");
  server.reset();  // its host (rank 0) is gone
  EXPECT_TRUE(cancelled_within(watch, 10000));
  EXPECT_NE(watch.reason().find("the store is gone"), std::string::npos) << watch.reason();
}

TEST(StoreWatch, FinishLeavesTheJobAlone) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient other("127.0.0.1", server.port(), "job", quick());
  {
    TcpStoreClient mine("127.0.0.1", server.port(), "job", quick());
    StoreWatch watch(mine, 2, "exited");
    watch.finish();
    EXPECT_FALSE(watch.cancelled());
  }  // its connections close, disarmed
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(other.wait("never", 200), dmlaErrorTimeout) << last_error_message();  // not aborted
  int64_t n = -1;
  EXPECT_EQ(other.add("exited", 0, &n), dmlaSuccess);
  EXPECT_EQ(n, 0);  // not counted as a rank that died
}
