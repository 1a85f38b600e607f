#include "distmla/dist/decode_client.h"

#include <boost/asio.hpp>
#include <chrono>
#include <cstring>

#include "asio_net.h"
#include "distmla/distmla.hpp"
#include "distmla/dist/service_protocol.h"

namespace distmla::dist {

namespace asio = boost::asio;
using asio::ip::tcp;

struct DecodeClient::Impl {
  asio::io_context io;
  tcp::socket sock{io};
  int timeout_ms = 60000;
  uint64_t next_id = 1;

  // Runs io until *ec is set or the deadline passes (then the socket is closed and this throws).
  void run(boost::system::error_code* ec, const char* what) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    if (!net::run_until(io, deadline, ec)) {
      net::abandon(sock, io);
      throw Error(dmlaErrorTimeout, std::string("decode service: ") + what + " not done within " +
                                        std::to_string(timeout_ms) + " ms");
    }
    if (*ec) throw Error(dmlaErrorComm, std::string("decode service: ") + what + ": " + ec->message());
  }
  void write(const void* p, size_t n) {
    boost::system::error_code ec = asio::error::would_block;
    asio::async_write(sock, asio::buffer(p, n), [&](boost::system::error_code e, size_t) { ec = e; });
    run(&ec, "send");
  }
  void read(void* p, size_t n) {
    boost::system::error_code ec = asio::error::would_block;
    asio::async_read(sock, asio::buffer(p, n), [&](boost::system::error_code e, size_t) { ec = e; });
    run(&ec, "receive");
  }
};

DecodeClient::DecodeClient(const std::string& host, int port, int timeout_ms) : impl_(std::make_unique<Impl>()) {
  impl_->timeout_ms = timeout_ms;
  boost::system::error_code ec;
  tcp::resolver res(impl_->io);
  auto eps = res.resolve(host, std::to_string(port), ec);
  if (ec) throw Error(dmlaErrorComm, "decode service: cannot resolve '" + host + "': " + ec.message());
  ec = asio::error::would_block;
  asio::async_connect(impl_->sock, eps, [&](boost::system::error_code e, const tcp::endpoint&) { ec = e; });
  impl_->run(&ec, ("connect to " + host + ":" + std::to_string(port)).c_str());
  impl_->sock.set_option(tcp::no_delay(true), ec);
}

DecodeClient::~DecodeClient() = default;

DecodeResult DecodeClient::decode(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t) {
  const PayloadSizes z = payload_sizes(shape);
  if (!z.ok) throw Error(dmlaErrorInvalidArgument, "decode service: the shape's sizes overflow or are negative");
  if (!t.q || !t.kv_pool || !t.block_table || !t.seqlens)
    throw Error(dmlaErrorNullPointer, "decode service: q, kv_pool, block_table and seqlens must be host pointers");
  RequestHeader h;
  h.id = impl_->next_id++;
  h.shape = shape;
  h.payload_bytes = z.request();
  const auto head = encode_request_header(h);
  try {
    impl_->write(head.data(), head.size());
    impl_->write(t.q, z.q);
    impl_->write(t.kv_pool, z.kv);
    impl_->write(t.block_table, z.block_table);
    impl_->write(t.seqlens, z.seqlens);
  } catch (const Error&) {
    // The server may have refused the request from its header (too large) and closed the
    // connection while the payload was still going out: its answer says why, if it arrived.
    try {
      return read_result(shape);
    } catch (const Error&) {
    }
    throw;
  }
  return read_result(shape);
}

void DecodeClient::send_raw(const std::vector<uint8_t>& bytes) { impl_->write(bytes.data(), bytes.size()); }

DecodeResult DecodeClient::read_result(const dmlaDecodeShape_t& shape) {
  std::array<uint8_t, kResponseHeaderBytes> head{};
  impl_->read(head.data(), head.size());
  ResponseHeader h;
  std::string err;
  if (!decode_response_header(head.data(), &h, &err)) throw Error(dmlaErrorComm, "decode service: " + err);
  DecodeResult r;
  r.status = static_cast<dmlaResult_t>(h.status);
  r.message.resize(h.message_bytes);
  if (h.message_bytes) impl_->read(r.message.data(), h.message_bytes);
  if (h.payload_bytes == 0) return r;
  const PayloadSizes z = payload_sizes(shape);
  if (!z.ok || h.payload_bytes != z.response())
    throw Error(dmlaErrorComm, "decode service: answer of " + std::to_string(h.payload_bytes) + " bytes, expected " +
                                   std::to_string(z.response()));
  r.out.resize(z.out);
  r.lse.resize(z.lse / 4);
  impl_->read(r.out.data(), z.out);
  impl_->read(r.lse.data(), z.lse);
  return r;
}

}  // namespace distmla::dist
