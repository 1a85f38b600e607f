#include "distmla/dist/decode_server.h"

#include <cuda_runtime_api.h>

#include <boost/asio.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include "asio_net.h"
#include "distmla/distmla.hpp"
#include "distmla/dist/service_protocol.h"

namespace distmla::dist {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

// A request's answer: its status, and the response frame ready to send.
struct Answer {
  dmlaResult_t status;
  std::vector<uint8_t> frame;
};
Answer response(uint64_t id, dmlaResult_t status, const std::string& message, std::vector<uint8_t> payload = {}) {
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
  return {status, std::move(b)};
}

// A worker thread's CUDA resources, made by its first CUDA request and kept until the thread
// ends (the pool's join): a stream, and device buffers that grow to the largest request seen.
// Allocating per request would make every request synchronise the device (cudaFree does), which
// serialises the workers.
struct WorkerDevice {
  enum Buf { kIn, kOut, kWs, kBufs };
  cudaStream_t stream = nullptr;
  void* buf[kBufs] = {};
  size_t cap[kBufs] = {};
  ~WorkerDevice() {
    for (void* b : buf)
      if (b) cudaFree(b);
    if (stream) cudaStreamDestroy(stream);
  }
  cudaError_t reserve(Buf k, size_t bytes) {
    if (cap[k] >= bytes) return cudaSuccess;
    if (buf[k]) cudaFree(buf[k]);
    buf[k] = nullptr;
    cap[k] = 0;
    const cudaError_t e = cudaMalloc(&buf[k], bytes);
    if (e == cudaSuccess) cap[k] = bytes;
    return e;
  }
};
thread_local WorkerDevice tl_device;

// The GPU context's state, shared by the workers: lost after a sticky CUDA error.
struct DeviceHealth {
  std::atomic<bool> lost{false};
  mutable std::mutex mu;
  std::string reason;
  // After a request failed on the CUDA backend: an error that a device synchronisation still
  // returns is sticky (an asynchronous kernel fault corrupts the context for good).
  void check_after_failure(uint64_t id) {
    const cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return;
    std::lock_guard<std::mutex> lock(mu);
    if (lost.exchange(true)) return;
    reason = "request " + std::to_string(id) + " left the GPU context unusable: " + cudaGetErrorName(e) + " (" +
             cudaGetErrorString(e) + ")";
  }
  std::string why() const {
    std::lock_guard<std::mutex> lock(mu);
    return reason;
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
Answer run_request(const RequestHeader& h, const std::vector<uint8_t>& payload, dmlaBackend_t backend) {
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
  WorkerDevice& dev = tl_device;
  if (!dev.stream) SVC_CUDA(cudaStreamCreateWithFlags(&dev.stream, cudaStreamNonBlocking));
  SVC_CUDA(dev.reserve(WorkerDevice::kIn, std::max<uint64_t>(payload.size(), 1)));
  SVC_CUDA(dev.reserve(WorkerDevice::kOut, std::max<uint64_t>(result.size(), 1)));
  SVC_CUDA(dev.reserve(WorkerDevice::kWs, std::max<size_t>(ws_bytes, 1)));
  const cudaStream_t st = dev.stream;
  SVC_CUDA(cudaMemcpyAsync(dev.buf[WorkerDevice::kIn], in, payload.size(), cudaMemcpyHostToDevice, st));
  char* din = static_cast<char*>(dev.buf[WorkerDevice::kIn]);
  t.q = din;
  t.kv_pool = din + at_kv;  // offsets are multiples of 16 (rows of 576 16-bit values)
  t.block_table = reinterpret_cast<const int32_t*>(din + at_table);
  t.seqlens = reinterpret_cast<const int32_t*>(din + at_seqlens);
  t.out = dev.buf[WorkerDevice::kOut];
  t.lse = reinterpret_cast<float*>(static_cast<char*>(dev.buf[WorkerDevice::kOut]) + z.out);
  if (dmlaResult_t r = dmlaRun(plan, &t, dev.buf[WorkerDevice::kWs], ws_bytes, st); r != dmlaSuccess) {
    cudaStreamSynchronize(st);  // nothing of this request left in flight on the worker's buffers
    return response(id, r, dmlaGetLastErrorMessage());
  }
  SVC_CUDA(cudaMemcpyAsync(result.data(), dev.buf[WorkerDevice::kOut], result.size(), cudaMemcpyDeviceToHost, st));
  SVC_CUDA(cudaStreamSynchronize(st));
  return response(id, dmlaSuccess, "", std::move(result));
}

// run_request behind the GPU context's health: a lost context answers at once, and a failed CUDA
// request checks whether it lost it.
std::vector<uint8_t> serve_request(const RequestHeader& h, const std::vector<uint8_t>& payload, dmlaBackend_t backend,
                                   DeviceHealth& health) {
  if (backend == dmlaBackendCuda && health.lost)
    return response(h.id, dmlaErrorCuda, "the GPU context is lost (" + health.why() + "); restart distmla_serve").frame;
  Answer a = run_request(h, payload, backend);
  // any failure: after a fault even the plan's device queries fail, with other codes
  if (backend == dmlaBackendCuda && a.status != dmlaSuccess) health.check_after_failure(h.id);
  return std::move(a.frame);
}

}  // namespace

struct DecodeServer::Impl {
  class Session;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{io.get_executor()};
  tcp::acceptor acceptor{io};
  std::unique_ptr<asio::thread_pool> pool;
  std::thread net_thread;
  ServerOptions opt;
  dmlaBackend_t backend = dmlaBackendCpu;
  int port = 0;
  std::list<std::weak_ptr<Session>> sessions;  // touched on the network thread only
  DeviceHealth health;
  bool stopped = false;
};


class DecodeServer::Impl::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket sock, Impl& srv) : sock_(std::move(sock)), timer_(srv.io), srv_(srv) {}
  void start() { read_header(); }
  void close() {
    boost::system::error_code ignored;
    sock_.close(ignored);
    timer_.cancel();
  }

 private:
  // Closes the connection unless the next step is done within ms (re-armed at each step; not
  // armed while the request is computed).
  void deadline(int ms) {
    timer_.expires_after(std::chrono::milliseconds(ms));
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->close();
    });
  }
  void read_header() {
    auto self = shared_from_this();
    deadline(srv_.opt.idle_timeout_ms);
    asio::async_read(sock_, asio::buffer(head_), [this, self](boost::system::error_code ec, size_t) {
      if (ec) return close();
      std::string err;
      if (!decode_request_header(head_.data(), &req_, &err)) return close();  // framing lost: this connection only
      if (req_.payload_bytes > srv_.opt.max_request_bytes)  // refused unread: answer, then close
        return send(response(req_.id, dmlaErrorInvalidArgument,
                             "payload_bytes = " + std::to_string(req_.payload_bytes) + " is over this server's limit of " +
                                 std::to_string(srv_.opt.max_request_bytes) + " (distmla_serve --max-mb)")
                        .frame,
                    /*then_close=*/true);
      payload_.resize(req_.payload_bytes);
      deadline(srv_.opt.io_timeout_ms);
      asio::async_read(sock_, asio::buffer(payload_), [this, self](boost::system::error_code ec2, size_t) {
        if (ec2) return close();
        timer_.cancel();
        asio::post(*srv_.pool, [this, self] {
          std::vector<uint8_t> out = serve_request(req_, payload_, srv_.backend, srv_.health);
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
    deadline(srv_.opt.io_timeout_ms);
    asio::async_write(sock_, asio::buffer(out_), [this, self, then_close](boost::system::error_code ec, size_t) {
      if (ec || then_close) return close();
      read_header();
    });
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  Impl& srv_;
  std::array<uint8_t, kRequestHeaderBytes> head_{};
  RequestHeader req_;
  std::vector<uint8_t> payload_, out_;
};

DecodeServer::DecodeServer(const std::string& host, int port, const ServerOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  if (opt.workers < 1 || opt.workers > 256)
    throw Error(dmlaErrorInvalidArgument, "DecodeServer: workers = " + std::to_string(opt.workers) + " (1..256)");
  if (opt.max_connections < 1)
    throw Error(dmlaErrorInvalidArgument, "DecodeServer: max_connections = " + std::to_string(opt.max_connections) +
                                              " (must be at least 1)");
  if (opt.idle_timeout_ms < 1 || opt.io_timeout_ms < 1)
    throw Error(dmlaErrorInvalidArgument, "DecodeServer: idle_timeout_ms = " + std::to_string(opt.idle_timeout_ms) +
                                              ", io_timeout_ms = " + std::to_string(opt.io_timeout_ms) +
                                              " (each must be at least 1)");
  check(dmlaResolveBackend(opt.backend, &impl_->backend));
  impl_->opt = opt;
  impl_->port = net::listen(impl_->acceptor, host, port, "DecodeServer");
  impl_->pool = std::make_unique<asio::thread_pool>(opt.workers);
  net::accept_loop(impl_->acceptor, [impl = impl_.get()](tcp::socket sock) {
    impl->sessions.remove_if([](const std::weak_ptr<Impl::Session>& w) { return w.expired(); });
    if (static_cast<int>(impl->sessions.size()) >= impl->opt.max_connections) {
      boost::system::error_code ignored;
      sock.close(ignored);  // over the limit: the client sees the connection closed
      return;
    }
    auto s = std::make_shared<Impl::Session>(std::move(sock), *impl);
    impl->sessions.push_back(s);
    s->start();
  });
  impl_->net_thread = std::thread([this] { impl_->io.run(); });
}

DecodeServer::~DecodeServer() { stop(); }

int DecodeServer::port() const { return impl_->port; }
dmlaBackend_t DecodeServer::backend() const { return impl_->backend; }
bool DecodeServer::healthy() const { return !impl_->health.lost; }
std::string DecodeServer::lost_reason() const { return impl_->health.why(); }

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
  impl_->net_thread.join();
}

}  // namespace distmla::dist
