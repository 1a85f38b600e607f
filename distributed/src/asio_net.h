// Internal: the Boost.Asio pieces shared by the TCP store and the decode service: the servers'
// listening and accepting, and the clients' blocking calls with a deadline.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <boost/asio.hpp>

#include <chrono>
#include <string>
#include <utility>

#include "check.h"

namespace distmla::dist::net {

// Opens, binds and listens acceptor on host:port (host empty: every address; port 0: any free
// one) and returns the port it got. Throws distmla::Error naming `who` and the bad value:
// dmlaErrorInvalidArgument for a port out of range or a host that is not an IP address,
// dmlaErrorComm when the address cannot be listened on.
inline int listen(boost::asio::ip::tcp::acceptor& acceptor, const std::string& host, int port, const char* who) {
  namespace asio = boost::asio;
  using asio::ip::tcp;
  if (port < 0 || port > 65535)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, std::string(who) + ": port = " + std::to_string(port) + " (must be 0..65535)");
  boost::system::error_code ec;
  const asio::ip::address addr = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, std::string(who) + ": host = '" + host + "' (not an IP address)");
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    DMLA_DIST_FAIL(dmlaErrorComm, std::string(who) + ": cannot listen on " + host + ":" + std::to_string(port) + ": " +
                                      ec.message());
  return acceptor.local_endpoint().port();
}

// Accepts connections until acceptor is closed, handing each one (Nagle off: requests and answers
// are small frames that wait for each other) to on_socket(tcp::socket) on the acceptor's thread.
template <typename OnSocket>
void accept_loop(boost::asio::ip::tcp::acceptor& acceptor, OnSocket on_socket) {
  acceptor.async_accept([&acceptor, on_socket](boost::system::error_code ec, boost::asio::ip::tcp::socket sock) mutable {
    if (ec) {
      if (ec == boost::asio::error::operation_aborted || !acceptor.is_open()) return;
    } else {
      boost::system::error_code ignored;
      sock.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
      on_socket(std::move(sock));
    }
    accept_loop(acceptor, std::move(on_socket));
  });
}

// TCP keepalive: a peer whose host died (no FIN ever comes) is noticed after ~16 s (10 s idle,
// then 3 probes 2 s apart) instead of never. Not exercised by the tests (one host only).
inline void keep_alive(boost::asio::ip::tcp::socket& sock) {
  boost::system::error_code ignored;
  sock.set_option(boost::asio::socket_base::keep_alive(true), ignored);
#if defined(TCP_KEEPIDLE) && defined(TCP_KEEPINTVL) && defined(TCP_KEEPCNT)
  const int idle = 10, interval = 2, count = 3;
  const int fd = sock.native_handle();
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
#endif
}

// A client's blocking step: runs io until the step's handler has set *ec (it starts as
// asio::error::would_block) or the deadline passes; false on the deadline, when the caller gives
// the connection up (abandon).
inline bool run_until(boost::asio::io_context& io, std::chrono::steady_clock::time_point deadline,
                      const boost::system::error_code* ec) {
  io.restart();
  while (*ec == boost::asio::error::would_block)
    if (io.run_one_until(deadline) == 0 && std::chrono::steady_clock::now() >= deadline) break;
  return *ec != boost::asio::error::would_block;
}

// Closes a client's socket and lets the cancelled handlers run, so that the next operation on io
// starts clean.
inline void abandon(boost::asio::ip::tcp::socket& sock, boost::asio::io_context& io) {
  boost::system::error_code ignored;
  sock.close(ignored);
  io.restart();
  io.poll();
}

}  // namespace distmla::dist::net
