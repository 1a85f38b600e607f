// TCP store on 127.0.0.1 with an ephemeral port: set/get/wait/add, deadlines, server gone,
// reconnect with backoff, 16 concurrent clients, bad frames, abort, abort on a disconnect.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "distmla/dist/error.h"
#include "distmla/dist/tcp_store.h"

using namespace distmla::dist;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string str(const std::vector<uint8_t>& v) { return {v.begin(), v.end()}; }
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

StoreOptions fast(int timeout_ms) {
  StoreOptions o;
  o.timeout_ms = timeout_ms;
  o.backoff_initial_ms = 5;
  o.backoff_max_ms = 50;
  return o;
}

// waiter.get(key) parked while another thread runs `later` 100 ms in: the get's result, and in
// *parked_ms how long it took (the thread is joined before this returns).
dmlaResult_t get_while(TcpStoreClient& waiter, const std::string& key, std::vector<uint8_t>* v,
                       const std::function<void()>& later, double* parked_ms) {
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    later();
  });
  const auto t0 = Clock::now();
  const dmlaResult_t r = waiter.get(key, v);
  *parked_ms = ms_since(t0);
  t.join();
  return r;
}

// Raw socket to send hand-made frames. Returns the fd (receive timeout 2 s).
int raw_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
std::vector<uint8_t> frame(uint32_t magic, uint16_t version, uint16_t op, uint32_t klen, uint32_t vlen) {
  std::vector<uint8_t> b;
  put32(b, magic);
  put16(b, version);
  put16(b, op);
  put32(b, klen);
  put32(b, vlen);
  put32(b, 0);
  return b;
}

// True if the server closed the connection (read returns 0) instead of answering.
bool server_closes(int fd, const std::vector<uint8_t>& f) {
  if (send(fd, f.data(), f.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(f.size())) return true;
  char c;
  return recv(fd, &c, 1, 0) == 0;
}

}  // namespace

TEST(TcpStore, SetGetWaitAdd) {
  TcpStoreServer server("127.0.0.1", 0);
  ASSERT_GT(server.port(), 0);
  TcpStoreClient c("127.0.0.1", server.port(), "job1", fast(2000));
  ASSERT_EQ(c.set("a", bytes("hello")), dmlaSuccess) << last_error_message();
  std::vector<uint8_t> v;
  ASSERT_EQ(c.get("a", &v), dmlaSuccess) << last_error_message();
  EXPECT_EQ(str(v), "hello");
  EXPECT_EQ(c.wait("a"), dmlaSuccess);
  ASSERT_EQ(c.set("a", bytes("")), dmlaSuccess);  // empty values and overwrite
  ASSERT_EQ(c.get("a", &v), dmlaSuccess);
  EXPECT_TRUE(v.empty());
  int64_t n = 0;
  ASSERT_EQ(c.add("n", 5, &n), dmlaSuccess);
  EXPECT_EQ(n, 5);
  ASSERT_EQ(c.add("n", -2, &n), dmlaSuccess);
  EXPECT_EQ(n, 3);
  // add on a non-counter value is refused, the connection stays usable
  EXPECT_NE(c.add("a", 1, &n), dmlaSuccess);
  ASSERT_EQ(c.get("n", &v), dmlaSuccess);
  EXPECT_EQ(v.size(), 8u);
}

TEST(TcpStore, KeysAreNamespacedPerPrefix) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient a("127.0.0.1", server.port(), "comm0", fast(300));
  auto b = a.scoped("sub");
  ASSERT_EQ(a.set("k", bytes("A")), dmlaSuccess);
  ASSERT_EQ(b->set("k", bytes("B")), dmlaSuccess);
  std::vector<uint8_t> v;
  ASSERT_EQ(a.get("k", &v), dmlaSuccess);
  EXPECT_EQ(str(v), "A");
  ASSERT_EQ(b->get("k", &v), dmlaSuccess);
  EXPECT_EQ(str(v), "B");
  EXPECT_EQ(b->prefix(), "comm0/sub");
  TcpStoreClient other("127.0.0.1", server.port(), "comm1", fast(200));
  EXPECT_EQ(other.get("k", &v), dmlaErrorTimeout);
}

TEST(TcpStore, GetAndWaitTimeOut) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient c("127.0.0.1", server.port(), "", fast(5000));
  std::vector<uint8_t> v;
  auto t0 = Clock::now();
  EXPECT_EQ(c.get("missing", &v, 200), dmlaErrorTimeout);
  EXPECT_LT(ms_since(t0), 1500);
  t0 = Clock::now();
  EXPECT_EQ(c.wait("missing", 150), dmlaErrorTimeout);
  EXPECT_LT(ms_since(t0), 1500);
  EXPECT_NE(std::string(last_error_message()).find("missing"), std::string::npos);
  // The client still works after a timeout.
  EXPECT_EQ(c.set("x", bytes("1")), dmlaSuccess);
}

TEST(TcpStore, WaitWakesOnSetFromAnotherClient) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient waiter("127.0.0.1", server.port(), "", fast(5000));
  TcpStoreClient setter("127.0.0.1", server.port(), "", fast(5000));
  std::vector<uint8_t> v;
  double ms = 0;
  EXPECT_EQ(get_while(waiter, "late", &v, [&] { setter.set("late", bytes("v")); }, &ms), dmlaSuccess)
      << last_error_message();
  EXPECT_EQ(str(v), "v");
  EXPECT_LT(ms, 3000);
}

TEST(TcpStore, ServerGoneIsAnErrorNotAHang) {
  auto server = std::make_unique<TcpStoreServer>("127.0.0.1", 0);
  TcpStoreClient c("127.0.0.1", server->port(), "", fast(400));
  ASSERT_EQ(c.set("k", bytes("v")), dmlaSuccess);
  server.reset();
  std::vector<uint8_t> v;
  auto t0 = Clock::now();
  const dmlaResult_t r = c.get("k", &v);
  EXPECT_NE(r, dmlaSuccess);
  EXPECT_TRUE(r == dmlaErrorTimeout || r == dmlaErrorComm) << r;
  EXPECT_LT(ms_since(t0), 2000);
  // A waiter parked on the server when it goes away also returns.
  auto s2 = std::make_unique<TcpStoreServer>("127.0.0.1", 0);
  TcpStoreClient w("127.0.0.1", s2->port(), "", fast(800));
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    s2.reset();
  });
  t0 = Clock::now();
  EXPECT_NE(w.wait("never"), dmlaSuccess);
  EXPECT_LT(ms_since(t0), 3000);
  killer.join();
}

TEST(TcpStore, ReconnectsWithBackoffUntilServerAppears) {
  int port;
  { TcpStoreServer probe("127.0.0.1", 0); port = probe.port(); }
  std::unique_ptr<TcpStoreServer> late;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    late = std::make_unique<TcpStoreServer>("127.0.0.1", port);
  });
  TcpStoreClient c("127.0.0.1", port, "", fast(5000));
  EXPECT_EQ(c.set("k", bytes("v")), dmlaSuccess) << last_error_message();
  starter.join();
  // No server at all: the connect deadline holds.
  TcpStoreClient none("127.0.0.1", 1, "", fast(200));
  auto t0 = Clock::now();
  EXPECT_EQ(none.set("k", bytes("v")), dmlaErrorTimeout);
  EXPECT_LT(ms_since(t0), 1500);
}

TEST(TcpStore, SixteenConcurrentClients) {
  TcpStoreServer server("127.0.0.1", 0);
  constexpr int kClients = 16;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      TcpStoreClient c("127.0.0.1", server.port(), "barrier", fast(10000));
      int64_t n = 0;
      if (c.add("arrived", 1, &n) != dmlaSuccess) ++failures;
      if (c.set("rank" + std::to_string(i), bytes(std::to_string(i))) != dmlaSuccess) ++failures;
      for (int j = 0; j < kClients; ++j) {
        std::vector<uint8_t> v;
        if (c.get("rank" + std::to_string(j), &v) != dmlaSuccess || str(v) != std::to_string(j)) ++failures;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  TcpStoreClient c("127.0.0.1", server.port(), "barrier", fast(1000));
  int64_t n = 0;
  ASSERT_EQ(c.add("arrived", 0, &n), dmlaSuccess);
  EXPECT_EQ(n, kClients);
}

TEST(TcpStore, BadFramesCloseThatConnectionOnly) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient good("127.0.0.1", server.port(), "", fast(2000));
  ASSERT_EQ(good.set("k", bytes("v")), dmlaSuccess);
  const uint32_t magic = store_wire::kMagic;
  const std::vector<std::vector<uint8_t>> bad = {
      frame(0xDEADBEEF, 1, store_wire::kSet, 1, 1),                        // magic
      frame(magic, 99, store_wire::kSet, 1, 1),                            // version
      frame(magic, 1, 77, 1, 0),                                           // op
      frame(magic, 1, store_wire::kSet, store_wire::kMaxKey + 1, 0),       // key too long
      frame(magic, 1, store_wire::kSet, 0, 0),                             // empty key
      frame(magic, 1, store_wire::kSet, 1, store_wire::kMaxValue + 1),     // value too long
      frame(magic, 1, store_wire::kGet, 1, 4),                             // get with a value
      frame(magic, 1, store_wire::kAdd, 1, 3),                             // add without int64
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    int fd = raw_connect(server.port());
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(server_closes(fd, bad[i])) << "bad frame " << i;
    close(fd);
  }
  // Truncated frame then hang-up: the server drops it and keeps serving.
  int fd = raw_connect(server.port());
  std::vector<uint8_t> part = frame(magic, 1, store_wire::kSet, 10, 10);
  send(fd, part.data(), 7, MSG_NOSIGNAL);
  close(fd);
  std::vector<uint8_t> v;
  EXPECT_EQ(good.get("k", &v), dmlaSuccess) << last_error_message();
  EXPECT_EQ(str(v), "v");
  TcpStoreClient fresh("127.0.0.1", server.port(), "", fast(2000));
  EXPECT_EQ(fresh.get("k", &v), dmlaSuccess);
}

TEST(TcpStore, RejectsBadArgumentsBeforeSending) {
  EXPECT_ANY_THROW(TcpStoreClient("127.0.0.1", 0));
  EXPECT_ANY_THROW(TcpStoreServer("not-an-ip", 0));
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient c("127.0.0.1", server.port(), "", fast(500));
  EXPECT_EQ(c.set("", bytes("v")), dmlaErrorInvalidArgument);
  EXPECT_EQ(c.set(std::string(store_wire::kMaxKey + 1, 'k'), bytes("v")), dmlaErrorInvalidArgument);
  std::string h, err;
  int p;
  EXPECT_TRUE(parse_host_port("127.0.0.1:29500", &h, &p, &err));
  EXPECT_EQ(h, "127.0.0.1");
  EXPECT_EQ(p, 29500);
  EXPECT_FALSE(parse_host_port("127.0.0.1", &h, &p, &err));
  EXPECT_FALSE(parse_host_port("host:99999", &h, &p, &err));
  EXPECT_NE(err.find("99999"), std::string::npos);
}

TEST(TcpStore, AbortEndsParkedAndLaterWaitsWithItsReason) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient waiter("127.0.0.1", server.port(), "job", fast(20000));
  TcpStoreClient failing("127.0.0.1", server.port(), "other", fast(20000));
  // A get parked on a key nobody will set returns at the abort, not at its 20 s deadline.
  std::vector<uint8_t> v;
  double ms = 0;
  const auto abort = [&] { EXPECT_EQ(failing.abort("rank 1: bad layout"), dmlaSuccess) << last_error_message(); };
  EXPECT_EQ(get_while(waiter, "never", &v, abort, &ms), dmlaErrorComm);
  EXPECT_NE(std::string(last_error_message()).find("aborted: rank 1: bad layout"), std::string::npos) << last_error_message();
  EXPECT_LT(ms, 3000);
  // Later gets and waits fail at once, under any prefix and for keys that exist too.
  ASSERT_EQ(waiter.set("k", bytes("v")), dmlaSuccess) << last_error_message();  // set still works
  const auto t0 = Clock::now();
  EXPECT_EQ(failing.wait("k2"), dmlaErrorComm);
  EXPECT_EQ(waiter.get("k", &v), dmlaErrorComm);
  EXPECT_LT(ms_since(t0), 1000);
  // add still works (ranks count themselves out); a second abort keeps the first reason.
  int64_t n = 0;
  EXPECT_EQ(waiter.add("exited", 1, &n), dmlaSuccess);
  EXPECT_EQ(n, 1);
  EXPECT_EQ(waiter.abort("rank 2: later"), dmlaSuccess);
  EXPECT_EQ(waiter.wait("k"), dmlaErrorComm);
  EXPECT_NE(std::string(last_error_message()).find("rank 1: bad layout"), std::string::npos) << last_error_message();
}

TEST(TcpStore, AbortOnDisconnectEndsTheJobWhenAnArmedClientGoesAway) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient waiter("127.0.0.1", server.port(), "job", fast(20000));
  auto dying = waiter.clone();
  ASSERT_EQ(dying->abort_on_disconnect("rank 2: connection closed", "exited"), dmlaSuccess) << last_error_message();
  std::vector<uint8_t> v;
  double ms = 0;
  // its socket closes, as when the process dies
  EXPECT_EQ(get_while(waiter, "never", &v, [&] { dying.reset(); }, &ms), dmlaErrorComm);
  EXPECT_NE(std::string(last_error_message()).find("aborted: rank 2: connection closed"), std::string::npos)
      << last_error_message();
  EXPECT_LT(ms, 3000);
  // ... and counted out under its prefix, as the ranks that leave count themselves.
  int64_t n = 0;
  EXPECT_EQ(waiter.add("exited", 0, &n), dmlaSuccess) << last_error_message();
  EXPECT_EQ(n, 1);
}

TEST(TcpStore, DisarmedClientLeavesWithoutAborting) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient other("127.0.0.1", server.port(), "job", fast(2000));
  {
    TcpStoreClient done("127.0.0.1", server.port(), "", fast(2000));
    ASSERT_EQ(done.abort_on_disconnect("rank 1: connection closed", "exited"), dmlaSuccess) << last_error_message();
    ASSERT_EQ(done.abort_on_disconnect("", "exited"), dmlaSuccess) << last_error_message();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server has seen the close
  ASSERT_EQ(other.set("k", bytes("v")), dmlaSuccess) << last_error_message();
  std::vector<uint8_t> v;
  EXPECT_EQ(other.get("k", &v), dmlaSuccess) << last_error_message();
  EXPECT_EQ(other.wait("never", 200), dmlaErrorTimeout);
}
