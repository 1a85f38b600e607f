#include "distmla/dist/service_protocol.h"

#include <cstring>
#include <limits>

namespace distmla::dist {

namespace {

void put(uint8_t*& p, const void* v, size_t n) {  // little-endian hosts only (x86-64, aarch64)
  std::memcpy(p, v, n);
  p += n;
}
template <typename T>
T get(const uint8_t*& p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  p += sizeof(T);
  return v;
}
size_t elem_bytes(dmlaDataType_t t) { return t == dmlaFP32 ? 4 : 2; }

// a * b, false on overflow
bool mul(uint64_t a, uint64_t b, uint64_t* r) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *r = a * b;
  return true;
}

}  // namespace

PayloadSizes payload_sizes(const dmlaDecodeShape_t& s) {
  PayloadSizes z;
  if (s.batch < 0 || s.s_q < 0 || s.h_q < 0 || s.page_size < 0 || s.num_blocks < 0 || s.max_blocks_per_seq < 0)
    return z;
  auto add = [](uint64_t a, uint64_t b, uint64_t* r) {
    if (b > std::numeric_limits<uint64_t>::max() - a) return false;
    *r = a + b;
    return true;
  };
  uint64_t rows = 0, tokens = 0, cells = 0, sum = 0;
  const bool ok = mul(static_cast<uint64_t>(s.batch) * s.s_q, static_cast<uint64_t>(s.h_q), &rows) &&
                  mul(rows, DMLA_D_QK * elem_bytes(s.q_dtype), &z.q) &&
                  mul(static_cast<uint64_t>(s.num_blocks), static_cast<uint64_t>(s.page_size), &tokens) &&
                  mul(tokens, DMLA_D_QK * elem_bytes(s.kv_dtype), &z.kv) &&
                  mul(static_cast<uint64_t>(s.batch), static_cast<uint64_t>(s.max_blocks_per_seq), &cells) &&
                  mul(cells, 4, &z.block_table) && mul(rows, DMLA_D_V * elem_bytes(s.out_dtype), &z.out) &&
                  mul(rows, 4, &z.lse) && add(z.q, z.kv, &sum) && add(sum, z.block_table, &sum) &&
                  add(sum, static_cast<uint64_t>(s.batch) * 4, &sum) && add(z.out, z.lse, &sum);
  z.seqlens = static_cast<uint64_t>(s.batch) * 4;
  z.ok = ok;
  return z;
}

std::array<uint8_t, kRequestHeaderBytes> encode_request_header(const RequestHeader& h) {
  std::array<uint8_t, kRequestHeaderBytes> b{};
  uint8_t* p = b.data();
  const uint32_t magic = kRequestMagic;
  const uint16_t version = kVersion, op = kOpDecode;
  put(p, &magic, 4);
  put(p, &version, 2);
  put(p, &op, 2);
  put(p, &h.id, 8);
  const dmlaDecodeShape_t& s = h.shape;
  const int32_t f[9] = {s.batch, s.s_q, s.h_q, s.page_size, s.num_blocks, s.max_blocks_per_seq,
                        static_cast<int32_t>(s.q_dtype), static_cast<int32_t>(s.out_dtype), s.causal};
  put(p, f, sizeof(f));
  put(p, &s.scale, 4);
  put(p, &h.payload_bytes, 8);
  return b;
}

bool decode_request_header(const uint8_t* p, RequestHeader* h, std::string* err) {
  const uint32_t magic = get<uint32_t>(p);
  const uint16_t version = get<uint16_t>(p), op = get<uint16_t>(p);
  if (magic != kRequestMagic) return *err = "not a distmla_serve request (bad magic)", false;
  if (version != kVersion) return *err = "request version " + std::to_string(version) + " (this server speaks 1)", false;
  if (op != kOpDecode) return *err = "request op " + std::to_string(op) + " (1: decode)", false;
  h->id = get<uint64_t>(p);
  dmlaDecodeShape_t& s = h->shape;
  dmlaShapeInit(&s);
  s.batch = get<int32_t>(p);
  s.s_q = get<int32_t>(p);
  s.h_q = get<int32_t>(p);
  s.page_size = get<int32_t>(p);
  s.num_blocks = get<int32_t>(p);
  s.max_blocks_per_seq = get<int32_t>(p);
  s.q_dtype = s.kv_dtype = static_cast<dmlaDataType_t>(get<int32_t>(p));
  s.out_dtype = static_cast<dmlaDataType_t>(get<int32_t>(p));
  s.causal = get<int32_t>(p);
  s.scale = get<float>(p);
  s.check_inputs = 1;
  h->payload_bytes = get<uint64_t>(p);
  return true;
}

std::array<uint8_t, kResponseHeaderBytes> encode_response_header(const ResponseHeader& h) {
  std::array<uint8_t, kResponseHeaderBytes> b{};
  uint8_t* p = b.data();
  const uint32_t magic = kResponseMagic;
  const uint16_t version = kVersion, zero = 0;
  put(p, &magic, 4);
  put(p, &version, 2);
  put(p, &zero, 2);
  put(p, &h.id, 8);
  put(p, &h.status, 4);
  put(p, &h.message_bytes, 4);
  put(p, &h.payload_bytes, 8);
  return b;
}

bool decode_response_header(const uint8_t* p, ResponseHeader* h, std::string* err) {
  const uint32_t magic = get<uint32_t>(p);
  const uint16_t version = get<uint16_t>(p);
  (void)get<uint16_t>(p);
  if (magic != kResponseMagic || version != kVersion) return *err = "not a distmla_serve version-1 response", false;
  h->id = get<uint64_t>(p);
  h->status = get<int32_t>(p);
  h->message_bytes = get<uint32_t>(p);
  h->payload_bytes = get<uint64_t>(p);
  if (h->message_bytes > kMaxMessageBytes) return *err = "response message of " + std::to_string(h->message_bytes) + " bytes", false;
  return true;
}

}  // namespace distmla::dist
