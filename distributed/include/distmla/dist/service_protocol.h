// The decode service's wire format (distmla_serve; versioned, little-endian). One request at a
// time a connection, answered in order:
//   request:  u32 magic 'DMSR' | u16 version | u16 op (1: decode) | u64 id
//             | i32 batch, s_q, h_q, page_size, num_blocks, max_blocks_per_seq, dtype, out_dtype,
//               causal | f32 scale | u64 payload_bytes
//             | payload: q [batch, s_q, h_q, 576] | kv [num_blocks, page_size, 576] (dtype)
//               | block_table [batch, max_blocks_per_seq] i32 | seqlens [batch] i32
//   response: u32 magic 'DMSA' | u16 version | u16 0 | u64 id | i32 status (dmlaResult_t)
//             | u32 message_bytes | u64 payload_bytes | message
//             | payload (status 0): out [batch, s_q, h_q, 512] (out_dtype) | lse [batch, h_q, s_q] f32
// The layouts are DESIGN.md section 2's. A frame with a bad magic, version or op closes its
// connection; a request the server refuses (bad shape, wrong payload size) gets an error response
// naming the field and its value, and the connection stays usable.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "distmla/distmla.h"

namespace distmla::dist {

constexpr uint32_t kRequestMagic = 0x52534D44u;   // "DMSR"
constexpr uint32_t kResponseMagic = 0x41534D44u;  // "DMSA"
constexpr uint16_t kVersion = 1;
constexpr uint16_t kOpDecode = 1;
constexpr size_t kRequestHeaderBytes = 64;
constexpr size_t kResponseHeaderBytes = 32;
constexpr uint32_t kMaxMessageBytes = 4096;

struct RequestHeader {
  uint64_t id = 0;
  dmlaDecodeShape_t shape{};  // check_inputs is not sent: the server always checks
  uint64_t payload_bytes = 0;
};

struct ResponseHeader {
  uint64_t id = 0;
  int32_t status = 0;
  uint32_t message_bytes = 0;
  uint64_t payload_bytes = 0;
};

// Payload sizes a shape implies; ok is false when a field is negative or a size overflows.
struct PayloadSizes {
  bool ok = false;
  uint64_t q = 0, kv = 0, block_table = 0, seqlens = 0;  // request
  uint64_t out = 0, lse = 0;                            // response
  uint64_t request() const { return q + kv + block_table + seqlens; }
  uint64_t response() const { return out + lse; }
};
PayloadSizes payload_sizes(const dmlaDecodeShape_t& shape);

std::array<uint8_t, kRequestHeaderBytes> encode_request_header(const RequestHeader& h);
// False (with *err) for a frame that is not a version-1 decode request.
bool decode_request_header(const uint8_t* p, RequestHeader* h, std::string* err);
std::array<uint8_t, kResponseHeaderBytes> encode_response_header(const ResponseHeader& h);
bool decode_response_header(const uint8_t* p, ResponseHeader* h, std::string* err);

}  // namespace distmla::dist
