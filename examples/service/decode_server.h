// The decode service (distmla_serve): decode requests over TCP (service_protocol.h), run on the
// library's CUDA or CPU backend. One network thread (Boost.Asio) and a pool of workers: each
// connection has one request in flight, connections are served concurrently. A request is checked
// before anything runs (its size against the limit and against its shape, the shape by the plan,
// block ids and lengths by a checked run), and a refused or failed request gets its error back
// without affecting any other request or connection.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "distmla/distmla.h"

namespace distmla::service {

struct ServerOptions {
  dmlaBackend_t backend = dmlaBackendAuto;
  uint64_t max_request_bytes = 1ull << 30;  // payload; a larger request is refused and its connection closed
  int workers = 2;                          // requests computed at once
};

class DecodeServer {
 public:
  // Listens on host:port (port 0: ephemeral) and serves from its own threads. Throws
  // distmla::Error (dmlaErrorInvalidArgument, dmlaErrorComm) if the address is bad or it cannot
  // listen, (dmlaErrorBackend) if the backend is not available here.
  DecodeServer(const std::string& host, int port, const ServerOptions& opt = {});
  ~DecodeServer();  // stop()
  DecodeServer(const DecodeServer&) = delete;
  DecodeServer& operator=(const DecodeServer&) = delete;
  int port() const;
  dmlaBackend_t backend() const;  // the resolved one
  // Stops accepting, closes every connection (requests being computed finish first), joins.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace distmla::service
