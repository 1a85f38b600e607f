// TCP store client: synchronous calls built on async Asio operations run against a deadline
// (io_context::run_one_until), reconnecting with exponential backoff.
#include <boost/asio.hpp>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "asio_net.h"
#include "check.h"
#include "distmla/dist/tcp_store.h"
#include "deadline_poll.h"
#include "store_codec.h"

namespace distmla::dist {

namespace asio = boost::asio;
using asio::ip::tcp;
namespace w = store_wire;
using detail::Clock;

bool parse_host_port(const std::string& s, std::string* host, int* port, std::string* err) {
  const size_t c = s.rfind(':');
  if (c == std::string::npos || c == 0 || c + 1 == s.size()) {
    *err = "store address '" + s + "' is not host:port";
    return false;
  }
  const std::string p = s.substr(c + 1);
  if (p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoi(p) < 1 ||
      std::stoi(p) > 65535) {
    *err = "store port '" + p + "' in '" + s + "' is not 1..65535";
    return false;
  }
  *host = s.substr(0, c);
  *port = std::stoi(p);
  return true;
}

struct TcpStoreClient::Impl {
  std::string host;
  int port;
  std::string prefix;
  StoreOptions opt;
  asio::io_context io;
  std::unique_ptr<tcp::socket> sock;
  std::mutex mu;  // one call at a time on this client

  std::string where() const { return host + ":" + std::to_string(port); }

  void drop() {
    if (sock) {
      net::abandon(*sock, io);
      sock.reset();
    }
  }

  // Runs the io_context until *ec is set or the deadline passes (then the socket is dropped).
  bool run_until(Clock::time_point deadline, boost::system::error_code* ec) {
    if (net::run_until(io, deadline, ec)) return true;
    drop();
    return false;
  }

  dmlaResult_t connect(Clock::time_point deadline) {
    if (sock) return dmlaSuccess;
    boost::system::error_code aec;
    asio::ip::address addr = asio::ip::make_address(host, aec);
    std::vector<tcp::endpoint> eps;
    if (!aec) {
      eps.emplace_back(addr, static_cast<unsigned short>(port));
    } else {
      tcp::resolver res(io);
      auto r = res.resolve(host, std::to_string(port), aec);
      if (aec) return set_error(dmlaErrorComm, "store: cannot resolve '" + host + "': " + aec.message());
      for (auto& e : r) eps.push_back(e.endpoint());
    }
    int backoff = std::max(1, opt.backoff_initial_ms);
    std::string last = "no attempt";
    for (;;) {
      sock = std::make_unique<tcp::socket>(io);
      boost::system::error_code ec = asio::error::would_block;
      asio::async_connect(*sock, eps, [&](boost::system::error_code e, const tcp::endpoint&) { ec = e; });
      if (!run_until(deadline, &ec)) break;
      if (!ec) {
        boost::system::error_code ignored;
        sock->set_option(tcp::no_delay(true), ignored);
        return dmlaSuccess;
      }
      last = ec.message();
      drop();
      const auto now = Clock::now();
      if (now >= deadline) break;
      const auto wait = std::min<Clock::duration>(std::chrono::milliseconds(backoff), deadline - now);
      std::this_thread::sleep_for(wait);
      backoff = std::min(backoff * 2, std::max(1, opt.backoff_max_ms));
    }
    return set_error(dmlaErrorTimeout, "store: cannot connect to " + where() + " before the deadline (" + last + ")");
  }

  // One request/response on a connected socket. Returns Success / Comm / Timeout; sent tells
  // whether the whole request went out (add is not retried then).
  dmlaResult_t exchange(const std::vector<uint8_t>& req, Clock::time_point deadline, uint16_t* status,
                        std::vector<uint8_t>* value, bool* sent) {
    *sent = false;
    boost::system::error_code ec = asio::error::would_block;
    asio::async_write(*sock, asio::buffer(req), [&](boost::system::error_code e, size_t) { ec = e; });
    if (!run_until(deadline, &ec)) return set_error(dmlaErrorTimeout, "store: request to " + where() + " timed out");
    if (ec) {
      drop();
      return set_error(dmlaErrorComm, "store: write to " + where() + ": " + ec.message());
    }
    *sent = true;
    std::array<uint8_t, w::kResponseHeader> h{};
    ec = asio::error::would_block;
    asio::async_read(*sock, asio::buffer(h), [&](boost::system::error_code e, size_t) { ec = e; });
    if (!run_until(deadline, &ec)) return set_error(dmlaErrorTimeout, "store: reply from " + where() + " timed out");
    if (ec) {
      drop();
      return set_error(dmlaErrorComm, "store: read from " + where() + ": " + ec.message() + " (server gone?)");
    }
    const uint32_t len = get_u32(h.data() + 8);
    if (get_u32(h.data()) != w::kMagic || get_u16(h.data() + 4) != w::kVersion || len > w::kMaxValue) {
      drop();
      return set_error(dmlaErrorComm, "store: bad reply frame from " + where());
    }
    *status = get_u16(h.data() + 6);
    value->resize(len);
    if (len > 0) {
      ec = asio::error::would_block;
      asio::async_read(*sock, asio::buffer(*value), [&](boost::system::error_code e, size_t) { ec = e; });
      if (!run_until(deadline, &ec)) return set_error(dmlaErrorTimeout, "store: reply from " + where() + " timed out");
      if (ec) {
        drop();
        return set_error(dmlaErrorComm, "store: read from " + where() + ": " + ec.message());
      }
    }
    return dmlaSuccess;
  }

  dmlaResult_t call(uint16_t op, const std::string& key, const std::vector<uint8_t>& value, int timeout_ms,
                    std::vector<uint8_t>* reply) {
    const std::string full = prefix.empty() ? key : prefix + "/" + key;
    if (key.empty() || full.size() > w::kMaxKey)
      return set_error(dmlaErrorInvalidArgument, "store: key '" + key + "' is empty or longer than " +
                                                     std::to_string(w::kMaxKey) + " bytes with its prefix");
    if (value.size() > w::kMaxValue)
      return set_error(dmlaErrorInvalidArgument, "store: value of " + std::to_string(value.size()) +
                                                     " bytes for key '" + key + "' (max " +
                                                     std::to_string(w::kMaxValue) + ")");
    const int ms = timeout_ms < 0 ? opt.timeout_ms : timeout_ms;
    if (ms < 0 || static_cast<uint32_t>(ms) > kMaxWaitMs)
      return set_error(dmlaErrorInvalidArgument, "store: timeout_ms = " + std::to_string(ms));
    const auto deadline = detail::deadline_after_ms(ms);
    std::lock_guard<std::mutex> lock(mu);
    dmlaResult_t last = dmlaSuccess;
    int backoff = std::max(1, opt.backoff_initial_ms);
    for (;;) {
      if (auto r = connect(deadline); r != dmlaSuccess) return r;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      // The server's wait ends a little before ours so that its timeout reply arrives in time.
      const uint32_t server_ms = static_cast<uint32_t>(std::max<int64_t>(0, left - 20));
      uint16_t status = 0;
      bool sent = false;
      last = exchange(encode_request(op, full, value, server_ms), deadline, &status, reply, &sent);
      if (last == dmlaSuccess) {
        if (status == w::kOk) return dmlaSuccess;
        if (status == w::kTimeout)
          return set_error(dmlaErrorTimeout, "store: key '" + full + "' not set within " + std::to_string(ms) + " ms");
        if (status == w::kAborted)
          return set_error(dmlaErrorComm, "store: aborted: " + std::string(reply->begin(), reply->end()));
        return set_error(dmlaErrorInvalidArgument, "store: server rejected the request for key '" + full + "'");
      }
      if (last == dmlaErrorTimeout) return last;
      if (op == w::kAdd && sent) return last;  // not idempotent: never applied twice
      if (Clock::now() >= deadline) return last;
      // Connection broke: reconnect with backoff and retry until the deadline.
      std::this_thread::sleep_for(std::min<Clock::duration>(std::chrono::milliseconds(backoff), deadline - Clock::now()));
      backoff = std::min(backoff * 2, std::max(1, opt.backoff_max_ms));
    }
  }
};

TcpStoreClient::TcpStoreClient(const std::string& host, int port, const std::string& prefix, const StoreOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  if (port < 1 || port > 65535)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "TcpStoreClient: port = " + std::to_string(port) + " (must be 1..65535)");
  if (host.empty()) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "TcpStoreClient: host is empty");
  if (opt.timeout_ms < 0)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "StoreOptions::timeout_ms = " + std::to_string(opt.timeout_ms));
  impl_->host = host;
  impl_->port = port;
  impl_->prefix = prefix;
  impl_->opt = opt;
}

TcpStoreClient::~TcpStoreClient() = default;

std::unique_ptr<TcpStoreClient> TcpStoreClient::scoped(const std::string& sub) const {
  return std::make_unique<TcpStoreClient>(impl_->host, impl_->port,
                                          impl_->prefix.empty() ? sub : impl_->prefix + "/" + sub, impl_->opt);
}

std::unique_ptr<TcpStoreClient> TcpStoreClient::clone() const {
  return std::make_unique<TcpStoreClient>(impl_->host, impl_->port, impl_->prefix, impl_->opt);
}

const std::string& TcpStoreClient::prefix() const { return impl_->prefix; }

dmlaResult_t TcpStoreClient::set(const std::string& key, const std::vector<uint8_t>& value, int timeout_ms) {
  std::vector<uint8_t> reply;
  return impl_->call(w::kSet, key, value, timeout_ms, &reply);
}

dmlaResult_t TcpStoreClient::get(const std::string& key, std::vector<uint8_t>* value, int timeout_ms) {
  if (!value) return set_error(dmlaErrorNullPointer, "store get: value is null");
  return impl_->call(w::kGet, key, {}, timeout_ms, value);
}

dmlaResult_t TcpStoreClient::wait(const std::string& key, int timeout_ms) {
  std::vector<uint8_t> reply;
  return impl_->call(w::kWait, key, {}, timeout_ms, &reply);
}

dmlaResult_t TcpStoreClient::add(const std::string& key, int64_t delta, int64_t* result, int timeout_ms) {
  std::vector<uint8_t> v(8), reply;
  std::memcpy(v.data(), &delta, 8);
  dmlaResult_t r = impl_->call(w::kAdd, key, v, timeout_ms, &reply);
  if (r != dmlaSuccess) return r;
  if (reply.size() != 8) return set_error(dmlaErrorComm, "store add: reply of " + std::to_string(reply.size()) + " bytes");
  if (result) std::memcpy(result, reply.data(), 8);
  return dmlaSuccess;
}

// An abort's reason as sent: a message, not a payload (4 KiB at most).
static std::vector<uint8_t> reason_value(const std::string& reason) {
  const std::string r = reason.substr(0, 4096);
  return std::vector<uint8_t>(r.begin(), r.end());
}

dmlaResult_t TcpStoreClient::abort(const std::string& reason, int timeout_ms) {
  std::vector<uint8_t> reply;
  return impl_->call(w::kAbort, "abort", reason_value(reason), timeout_ms, &reply);
}

dmlaResult_t TcpStoreClient::abort_on_disconnect(const std::string& reason, const std::string& count_key,
                                                 int timeout_ms) {
  std::vector<uint8_t> reply;
  return impl_->call(w::kAbortOnClose, count_key, reason_value(reason), timeout_ms, &reply);
}

}  // namespace distmla::dist
