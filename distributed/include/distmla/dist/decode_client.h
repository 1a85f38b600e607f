// A blocking client of the decode service (distmla_serve), for tests and callers in C++.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "distmla/distmla.h"

namespace distmla::dist {

struct DecodeResult {
  dmlaResult_t status = dmlaSuccess;
  std::string message;              // the server's error message when status != 0
  std::vector<uint8_t> out;         // [batch, s_q, h_q, 512] in the shape's out_dtype
  std::vector<float> lse;           // [batch, h_q, s_q]
};

class DecodeClient {
 public:
  // Connects at once; throws distmla::Error (dmlaErrorComm) if it cannot.
  DecodeClient(const std::string& host, int port, int timeout_ms = 60000);
  ~DecodeClient();
  // Sends one request (host tensors as the shape describes them; 16-bit q and kv) and waits for
  // its answer. A transport failure (closed connection, deadline) throws distmla::Error
  // (dmlaErrorComm / dmlaErrorTimeout); the server's verdict comes back in DecodeResult.
  DecodeResult decode(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& host_tensors);
  // Raw bytes, for tests of malformed requests.
  void send_raw(const std::vector<uint8_t>& bytes);
  DecodeResult read_result(const dmlaDecodeShape_t& shape);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace distmla::dist
