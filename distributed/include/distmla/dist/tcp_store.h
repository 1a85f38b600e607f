// A small key-value store on Boost.Asio for bootstrap without MPI (N processes started with
// --rank --world --store host:port). Operations: set, get (waits for the key), wait, add, abort,
// abort_on_disconnect.
// Every call has a deadline; the client reconnects with exponential backoff; keys are
// namespaced per client prefix (one prefix per communicator). abort(reason) is for a rank that
// fails: every get or wait on the server, parked or later and under any prefix, then fails at
// once with that reason instead of waiting out its deadline (set and add still work, so ranks can
// count themselves out). abort_on_disconnect(reason) arms the same abort for when that client's
// connection closes (its process died): a rank killed mid-job ends the job for the others too.
//
// Wire format (versioned, little-endian), request:
//   u32 magic 'DMKV' | u16 version | u16 op | u32 key_len | u32 value_len | u32 timeout_ms
//   | key | value
// response: u32 magic | u16 version | u16 status | u32 value_len | value
// Lengths are bounded (key <= 1 KiB, value <= 16 MiB); a bad frame closes that connection and
// the server keeps serving the others.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distmla/distmla.h"

namespace distmla::dist {

namespace store_wire {
constexpr uint32_t kMagic = 0x564B4D44u;  // "DMKV"
constexpr uint16_t kVersion = 1;
constexpr uint32_t kMaxKey = 1024;
constexpr uint32_t kMaxValue = 16u << 20;
constexpr size_t kRequestHeader = 20;
constexpr size_t kResponseHeader = 12;
enum Op : uint16_t { kSet = 1, kGet = 2, kWait = 3, kAdd = 4, kAbort = 5, kAbortOnClose = 6 };
enum Status : uint16_t { kOk = 0, kTimeout = 1, kBadRequest = 2, kAborted = 3 };  // kAborted: value = reason
}  // namespace store_wire

class TcpStoreServer {
 public:
  // Listens on host:port (port 0 = ephemeral) and serves from its own thread.
  // Throws distmla::Error(dmlaErrorComm) if it cannot listen.
  TcpStoreServer(const std::string& host, int port);
  ~TcpStoreServer();  // stops the thread and closes every connection
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;
  int port() const;
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct StoreOptions {
  int timeout_ms = 30000;        // default deadline of a call (connect + request + reply)
  int backoff_initial_ms = 10;   // reconnect backoff, doubling up to backoff_max_ms
  int backoff_max_ms = 1000;
};

class TcpStoreClient {
 public:
  // Does not connect yet: the first call connects (with backoff until its deadline).
  TcpStoreClient(const std::string& host, int port, const std::string& prefix = "",
                 const StoreOptions& opt = {});
  ~TcpStoreClient();
  TcpStoreClient(const TcpStoreClient&) = delete;
  TcpStoreClient& operator=(const TcpStoreClient&) = delete;

  // A client on the same server whose keys live under prefix()/sub.
  std::unique_ptr<TcpStoreClient> scoped(const std::string& sub) const;
  // Another client on the same server and prefix, with a connection of its own.
  std::unique_ptr<TcpStoreClient> clone() const;
  const std::string& prefix() const;

  // timeout_ms < 0: the client's default. Errors: dmlaErrorTimeout (deadline),
  // dmlaErrorComm (server gone, bad reply), dmlaErrorInvalidArgument (key/value too long).
  dmlaResult_t set(const std::string& key, const std::vector<uint8_t>& value, int timeout_ms = -1);
  dmlaResult_t get(const std::string& key, std::vector<uint8_t>* value, int timeout_ms = -1);
  dmlaResult_t wait(const std::string& key, int timeout_ms = -1);
  // Atomically adds delta to the int64 counter under key (absent = 0); *result = new value.
  dmlaResult_t add(const std::string& key, int64_t delta, int64_t* result, int timeout_ms = -1);
  // Marks the job failed on the server (the first reason is kept): every get / wait then fails
  // with dmlaErrorComm and "store: aborted: <reason>".
  dmlaResult_t abort(const std::string& reason, int timeout_ms = -1);
  // Arms the server for this client's connection closing (its process died): it then aborts the
  // job with reason and adds 1 to the counter count_key, which the ranks count themselves out on.
  // An empty reason disarms (do that before a normal exit). The server sees the close only while
  // the connection is idle, so arm a client that makes no other call (clone()): a get or wait
  // parked on it would hide a dead process until it ended.
  dmlaResult_t abort_on_disconnect(const std::string& reason, const std::string& count_key, int timeout_ms = -1);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Parses "host:port" (port 1..65535). Returns false with *err naming the value on bad input.
bool parse_host_port(const std::string& s, std::string* host, int* port, std::string* err);

}  // namespace distmla::dist
