#include "decode_server.h"

#include <cuda_runtime_api.h>

#include <boost/asio.hpp>
#include <algorithm>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "distmla/distmla.hpp"
#include "service_protocol.h"

namespace distmla::service {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// A request's answer: the response frame, ready to send.
std::vector<uint8_t> response(uint64_t id, dmlaResult_t status, const std::string& message,
                              std::vector<uint8_t> payload = {}) {
  ResponseHeader h;
  h.id = id;
  h.status = status;
  const std::string msg = message.substr(0, kMaxMessageBytes);
  h.message_bytes = static_cast<uint32_t>(msg.size());
  h.payload_bytes = status == dmlaSuccess ? payload.size() : 0;
  const auto head = encode_response_header(h);
  std::vector<uint8_t> b(head.size() + msg.size() + h.payload_bytes);
  std::memcpy(b.data(), head.data(), head.size());
  if (!msg.empty()) std::memcpy(b.data() + head.size(), msg.data(), msg.size());
  if (h.payload_bytes) std::memcpy(b.data() + head.size() + msg.size(), payload.data(), h.payload_bytes);
  return b;
}

// Device memory of one request (the service is not the hot path: it allocates per request).
struct DevBuf {
  void* p = nullptr;
  ~DevBuf() {
    if (p) cudaFree(p);
  }
};

#define SVC_CUDA(call)                                                                                \
  do {                                                                                                \
    const cudaError_t e_ = (call);                                                                    \
    if (e_ != cudaSuccess)                                                                            \
      return response(id, dmlaErrorCuda, std::string(#call) + ": " + cudaGetErrorString(e_) + " (" + \
                                             __FILE__ + ":" + std::to_string(__LINE__) + ")");        \
  } while (0)

// Runs one decode request (payload as the protocol lays it out) on backend; returns the response.
std::vector<uint8_t> run_request(const RequestHeader& h, const std::vector<uint8_t>& payload, dmlaBackend_t backend) {
  const uint64_t id = h.id;
  const dmlaDecodeShape_t& s = h.shape;
  if (backend == dmlaBackendCuda) SVC_CUDA(cudaSetDevice(0));  // the plan runs on the current device
  dmlaPlan_t plan = nullptr;
  if (dmlaResult_t r = dmlaPlanCreate(&plan, &s, backend); r != dmlaSuccess)
    return response(id, r, std::string("shape: ") + dmlaGetLastErrorMessage());
  std::unique_ptr<dmlaPlan, dmlaResult_t (*)(dmlaPlan_t)> plan_guard(plan, dmlaPlanDestroy);
  const PayloadSizes z = payload_sizes(s);
  if (!z.ok || payload.size() != z.request())
    return response(id, dmlaErrorInvalidArgument,
                    "payload_bytes = " + std::to_string(payload.size()) + ", but batch " + std::to_string(s.batch) +
                        ", s_q " + std::to_string(s.s_q) + ", h_q " + std::to_string(s.h_q) + ", num_blocks " +
                        std::to_string(s.num_blocks) + " x page_size " + std::to_string(s.page_size) +
                        " and max_blocks_per_seq " + std::to_string(s.max_blocks_per_seq) + " need " +
                        std::to_string(z.request()));
  size_t ws_bytes = 0;
  if (dmlaResult_t r = dmlaPlanGetWorkspaceSize(plan, &ws_bytes); r != dmlaSuccess)
    return response(id, r, dmlaGetLastErrorMessage());
  std::vector<uint8_t> result(z.response());
  const uint8_t* in = payload.data();
  const uint64_t at_kv = z.q, at_table = at_kv + z.kv, at_seqlens = at_table + z.block_table;
  dmlaDecodeTensors_t t{};
  if (backend == dmlaBackendCpu) {
    std::vector<uint8_t> ws(std::max<size_t>(ws_bytes, 1));
    t.q = in;
    t.kv_pool = in + at_kv;
    t.block_table = reinterpret_cast<const int32_t*>(in + at_table);
    t.seqlens = reinterpret_cast<const int32_t*>(in + at_seqlens);
    t.out = result.data();
    std::vector<float> lse(z.lse / 4);
    t.lse = lse.data();
    if (dmlaResult_t r = dmlaRun(plan, &t, ws.data(), ws_bytes, nullptr); r != dmlaSuccess)
      return response(id, r, dmlaGetLastErrorMessage());
    std::memcpy(result.data() + z.out, lse.data(), z.lse);
    return response(id, dmlaSuccess, "", std::move(result));
  }
  DevBuf d_in, d_out, d_ws;
  SVC_CUDA(cudaMalloc(&d_in.p, std::max<uint64_t>(payload.size(), 1)));
  SVC_CUDA(cudaMalloc(&d_out.p, std::max<uint64_t>(result.size(), 1)));
  SVC_CUDA(cudaMalloc(&d_ws.p, std::max<size_t>(ws_bytes, 1)));
  cudaStream_t st = nullptr;
  SVC_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::unique_ptr<CUstream_st, cudaError_t (*)(cudaStream_t)> st_guard(st, cudaStreamDestroy);
  SVC_CUDA(cudaMemcpyAsync(d_in.p, in, payload.size(), cudaMemcpyHostToDevice, st));
  char* din = static_cast<char*>(d_in.p);
  t.q = din;
  t.kv_pool = din + at_kv;  // offsets are multiples of 16 (rows of 576 16-bit values)
  t.block_table = reinterpret_cast<const int32_t*>(din + at_table);
  t.seqlens = reinterpret_cast<const int32_t*>(din + at_seqlens);
  t.out = d_out.p;
  t.lse = reinterpret_cast<float*>(static_cast<char*>(d_out.p) + z.out);
  if (dmlaResult_t r = dmlaRun(plan, &t, d_ws.p, ws_bytes, st); r != dmlaSuccess) {
    cudaStreamSynchronize(st);  // the input copy, before its buffer goes
    return response(id, r, dmlaGetLastErrorMessage());
  }
  SVC_CUDA(cudaMemcpyAsync(result.data(), d_out.p, result.size(), cudaMemcpyDeviceToHost, st));
  SVC_CUDA(cudaStreamSynchronize(st));
  return response(id, dmlaSuccess, "", std::move(result));
}

}  // namespace

struct DecodeServer::Impl {
  class Session;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  tcp::acceptor acceptor{io};
  std::unique_ptr<asio::thread_pool> pool;
  std::thread net;
  ServerOptions opt;
  dmlaBackend_t backend = dmlaBackendCpu;
  int port = 0;
  std::list<std::weak_ptr<Session>> sessions;  // touched on the network thread only
  bool stopped = false;

  void accept();
};

class DecodeServer::Impl::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket sock, Impl& srv) : sock_(std::move(sock)), srv_(srv) {}
  void start() { read_header(); }
  void close() {
    boost::system::error_code ignored;
    sock_.close(ignored);
  }

 private:
  void read_header() {
    auto self = shared_from_this();
    asio::async_read(sock_, asio::buffer(head_), [this, self](boost::system::error_code ec, size_t) {
      if (ec) return close();
      std::string err;
      if (!decode_request_header(head_.data(), &req_, &err)) return close();  // framing lost: this connection only
      if (req_.payload_bytes > srv_.opt.max_request_bytes)  // refused unread: answer, then close
        return send(response(req_.id, dmlaErrorInvalidArgument,
                             "payload_bytes = " + std::to_string(req_.payload_bytes) + " is over this server's limit of " +
                                 std::to_string(srv_.opt.max_request_bytes) + " (distmla_serve --max-mb)"),
                    /*then_close=*/true);
      payload_.resize(req_.payload_bytes);
      asio::async_read(sock_, asio::buffer(payload_), [this, self](boost::system::error_code ec2, size_t) {
        if (ec2) return close();
        asio::post(*srv_.pool, [this, self] {
          std::vector<uint8_t> out = run_request(req_, payload_, srv_.backend);
          asio::post(srv_.io, [this, self, out = std::move(out)]() mutable {
            payload_.clear();
            payload_.shrink_to_fit();
            send(std::move(out), false);
          });
        });
      });
    });
  }
  void send(std::vector<uint8_t> frame, bool then_close) {
    out_ = std::move(frame);
    auto self = shared_from_this();
    asio::async_write(sock_, asio::buffer(out_), [this, self, then_close](boost::system::error_code ec, size_t) {
      if (ec || then_close) return close();
      read_header();
    });
  }

  tcp::socket sock_;
  Impl& srv_;
  std::array<uint8_t, kRequestHeaderBytes> head_{};
  RequestHeader req_;
  std::vector<uint8_t> payload_, out_;
};

void DecodeServer::Impl::accept() {
  acceptor.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    } else {
      boost::system::error_code ignored;
      sock.set_option(tcp::no_delay(true), ignored);
      auto s = std::make_shared<Session>(std::move(sock), *this);
      sessions.remove_if([](const std::weak_ptr<Session>& w) { return w.expired(); });
      sessions.push_back(s);
      s->start();
    }
    accept();
  });
}

DecodeServer::DecodeServer(const std::string& host, int port, const ServerOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  if (port < 0 || port > 65535)
    throw Error(dmlaErrorInvalidArgument, "DecodeServer: port = " + std::to_string(port) + " (must be 0..65535)");
  if (opt.workers < 1 || opt.workers > 256)
    throw Error(dmlaErrorInvalidArgument, "DecodeServer: workers = " + std::to_string(opt.workers) + " (1..256)");
  check(dmlaResolveBackend(opt.backend, &impl_->backend));
  impl_->opt = opt;
  boost::system::error_code ec;
  const asio::ip::address addr = asio::ip::make_address(host.empty() ? "0.0.0.0" : host, ec);
  if (ec) throw Error(dmlaErrorInvalidArgument, "DecodeServer: host = '" + host + "' (not an IP address)");
  const tcp::endpoint ep(addr, static_cast<unsigned short>(port));
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error(dmlaErrorComm, "DecodeServer: cannot listen on " + host + ":" + std::to_string(port) + ": " + ec.message());
  impl_->port = impl_->acceptor.local_endpoint().port();
  impl_->pool = std::make_unique<asio::thread_pool>(opt.workers);
  impl_->accept();
  impl_->net = std::thread([this] { impl_->io.run(); });
}

DecodeServer::~DecodeServer() { stop(); }

int DecodeServer::port() const { return impl_->port; }
dmlaBackend_t DecodeServer::backend() const { return impl_->backend; }

void DecodeServer::stop() {
  if (!impl_ || impl_->stopped) return;
  impl_->stopped = true;
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    for (auto& w : impl_->sessions)
      if (auto s = w.lock()) s->close();
  });
  impl_->pool->join();  // requests being computed finish; their answers go to closed sockets
  impl_->guard.reset();
  asio::post(impl_->io, [this] { impl_->io.stop(); });
  impl_->net.join();
}

}  // namespace distmla::service
