// The decode service (distmla_serve): decode requests over TCP (service_protocol.h), run on the
// library's CUDA or CPU backend. One network thread (Boost.Asio) and a pool of workers: each
// connection has one request in flight, connections are served concurrently. A request is checked
// before anything runs (its size against the limit and against its shape, the shape by the plan,
// block ids and lengths by a checked run), and a refused or failed request gets its error back
// without affecting any other request or connection. Connections are bounded in number and in
// time (idle, and a request's transfer), so slow or silent clients cannot pile up memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "distmla/distmla.h"

namespace distmla::dist {

struct ServerOptions {
  dmlaBackend_t backend = dmlaBackendAuto;
  uint64_t max_request_bytes = 1ull << 30;  // payload; a larger request is refused and its connection closed
  int workers = 2;                          // requests computed at once
  int max_connections = 256;                // a connection past it is closed at once (bounds the buffered payloads)
  int idle_timeout_ms = 600000;             // a connection with no request for this long is closed
  int io_timeout_ms = 60000;                // a request's payload, or its answer, not through in this time: closed
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
  // False once the GPU context is lost (a sticky CUDA error, e.g. a kernel fault): every later
  // CUDA request is answered with that error, and only a new process can serve again (distmla_serve
  // exits with status 3 then, for its supervisor to restart it). lost_reason() says what happened.
  bool healthy() const;
  std::string lost_reason() const;
  // Stops accepting, closes every connection (requests being computed finish first), joins.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace distmla::dist
