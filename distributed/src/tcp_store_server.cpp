// TCP store server: one io_context thread, one session per connection, one request in flight a
// session. wait/get on a missing key park the session until a set/add of that key, its timeout,
// or an abort (which also answers every later get/wait at once). A session armed with
// abort_on_disconnect aborts the job when its connection closes.
#include <boost/asio.hpp>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "asio_net.h"
#include "distmla/dist/tcp_store.h"
#include "store_codec.h"

namespace distmla::dist {

namespace asio = boost::asio;
using asio::ip::tcp;
namespace w = store_wire;

namespace {

class Session;

struct State {
  std::map<std::string, std::vector<uint8_t>> data;
  std::multimap<std::string, std::weak_ptr<Session>> waiters;
  bool aborted = false;
  std::vector<uint8_t> abort_reason;  // the first abort's
  void set(const std::string& key, std::vector<uint8_t> value);  // and wakes its waiters
  bool add(const std::string& key, int64_t delta, std::vector<uint8_t>* now);  // false: not a counter
  void abort(const std::vector<uint8_t>& reason);
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket sock, State& st) : sock_(std::move(sock)), timer_(sock_.get_executor()), st_(st) {}
  void start() { read_header(); }

  // Called when key (which this session waits for) was set, or (status kAborted, value = the
  // reason) when the job was aborted.
  void fulfil(const std::vector<uint8_t>& value, uint16_t status = w::kOk) {
    if (!waiting_) return;
    waiting_ = false;
    timer_.cancel();
    reply(status, op_ == w::kGet || status == w::kAborted ? value : std::vector<uint8_t>{});
  }

 private:
  void read_header() {
    auto self = shared_from_this();
    asio::async_read(sock_, asio::buffer(hdr_), [this, self](boost::system::error_code ec, size_t) {
      if (ec) return close();
      RequestHeader h;
      if (!decode_request_header(hdr_, &h)) return close();  // bad frame: drop this connection only
      op_ = h.op;
      timeout_ms_ = h.timeout_ms;
      body_.resize(static_cast<size_t>(h.key_len) + h.value_len);
      key_len_ = h.key_len;
      asio::async_read(sock_, asio::buffer(body_), [this, self](boost::system::error_code ec2, size_t) {
        if (ec2) return close();
        handle();
      });
    });
  }

  void handle() {
    std::string key(reinterpret_cast<const char*>(body_.data()), key_len_);
    std::vector<uint8_t> value(body_.begin() + key_len_, body_.end());
    switch (op_) {
      case w::kSet:
        reply(w::kOk, {});
        st_.set(key, std::move(value));
        return;
      case w::kAdd: {
        if (value.size() != 8) return close();
        int64_t delta;
        std::memcpy(&delta, value.data(), 8);
        std::vector<uint8_t> now;
        if (!st_.add(key, delta, &now)) return reply(w::kBadRequest, {});
        return reply(w::kOk, now);
      }
      case w::kAbort:
        reply(w::kOk, {});
        st_.abort(value);
        return;
      case w::kAbortOnClose:
        close_key_ = key;
        close_reason_ = value;
        return reply(w::kOk, {});
      case w::kGet:
      case w::kWait: {
        if (st_.aborted) return reply(w::kAborted, st_.abort_reason);
        auto it = st_.data.find(key);
        if (it != st_.data.end()) return reply(w::kOk, op_ == w::kGet ? it->second : std::vector<uint8_t>{});
        waiting_ = true;
        st_.waiters.emplace(key, weak_from_this());
        auto self = shared_from_this();
        timer_.expires_after(std::chrono::milliseconds(timeout_ms_));
        timer_.async_wait([this, self](boost::system::error_code ec) {
          if (ec || !waiting_) return;
          waiting_ = false;
          reply(w::kTimeout, {});
        });
        return;
      }
      default:
        return close();
    }
  }

  void reply(uint16_t status, const std::vector<uint8_t>& value) {
    out_ = encode_response(status, value);
    auto self = shared_from_this();
    asio::async_write(sock_, asio::buffer(out_), [this, self](boost::system::error_code ec, size_t) {
      if (ec) return close();
      read_header();
    });
  }

  void close() {
    boost::system::error_code ignored;
    waiting_ = false;
    timer_.cancel();
    sock_.close(ignored);
    if (!close_reason_.empty()) {  // armed: this client's process is gone
      std::vector<uint8_t> reason, ignored_count;
      reason.swap(close_reason_);
      st_.abort(reason);
      st_.add(close_key_, 1, &ignored_count);  // counted out, as it cannot do itself
    }
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  State& st_;
  std::array<uint8_t, w::kRequestHeader> hdr_{};
  std::vector<uint8_t> body_;
  std::vector<uint8_t> out_;
  uint32_t key_len_ = 0;
  uint16_t op_ = 0;
  uint32_t timeout_ms_ = 0;
  bool waiting_ = false;
  std::vector<uint8_t> close_reason_;  // abort_on_disconnect's reason; empty: not armed
  std::string close_key_;              // ... and the counter it adds 1 to
};

void State::set(const std::string& key, std::vector<uint8_t> value) {
  const std::vector<uint8_t>& v = data[key] = std::move(value);
  auto range = waiters.equal_range(key);
  std::vector<std::shared_ptr<Session>> ready;
  for (auto it = range.first; it != range.second; ++it)
    if (auto s = it->second.lock()) ready.push_back(s);
  waiters.erase(range.first, range.second);
  for (auto& s : ready) s->fulfil(v);
}

bool State::add(const std::string& key, int64_t delta, std::vector<uint8_t>* now) {
  int64_t cur = 0;
  auto it = data.find(key);
  if (it != data.end()) {
    if (it->second.size() != 8) return false;
    std::memcpy(&cur, it->second.data(), 8);
  }
  cur += delta;
  now->resize(8);
  std::memcpy(now->data(), &cur, 8);
  set(key, *now);
  return true;
}

// Marks the job failed (the first reason is kept) and answers every parked get / wait with it.
void State::abort(const std::vector<uint8_t>& reason) {
  if (!aborted) {
    aborted = true;
    abort_reason = reason;
  }
  std::vector<std::shared_ptr<Session>> parked;
  for (auto& kv : waiters)
    if (auto s = kv.second.lock()) parked.push_back(s);
  waiters.clear();
  for (auto& s : parked) s->fulfil(abort_reason, w::kAborted);
}

}  // namespace

struct TcpStoreServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  State state;
  std::thread thread;
  int port = 0;
};

TcpStoreServer::TcpStoreServer(const std::string& host, int port) : impl_(std::make_unique<Impl>()) {
  impl_->port = net::listen(impl_->acceptor, host, port, "TcpStoreServer");
  // keepalive: an armed client (abort_on_disconnect) whose host died still ends the job
  net::accept_loop(impl_->acceptor, [this](tcp::socket sock) {
    net::keep_alive(sock);
    std::make_shared<Session>(std::move(sock), impl_->state)->start();
  });
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

TcpStoreServer::~TcpStoreServer() { stop(); }

int TcpStoreServer::port() const { return impl_->port; }

void TcpStoreServer::stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->io.stop();
  });
  impl_->thread.join();
}

}  // namespace distmla::dist
