// Internal: encoding and validation of the TCP store frames (tcp_store.h describes the format).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "distmla/dist/tcp_store.h"

namespace distmla::dist {

struct RequestHeader {
  uint16_t op = 0;
  uint32_t key_len = 0;
  uint32_t value_len = 0;
  uint32_t timeout_ms = 0;
};

inline void put_u16(std::vector<uint8_t>& b, uint16_t v) {
  b.push_back(static_cast<uint8_t>(v));
  b.push_back(static_cast<uint8_t>(v >> 8));
}
inline void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
inline uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Upper bound of a wait a client may ask for (a day): bounds the server's timers.
constexpr uint32_t kMaxWaitMs = 24u * 3600u * 1000u;

inline std::vector<uint8_t> encode_request(uint16_t op, const std::string& key, const std::vector<uint8_t>& value,
                                           uint32_t timeout_ms) {
  std::vector<uint8_t> b;
  b.reserve(store_wire::kRequestHeader + key.size() + value.size());
  put_u32(b, store_wire::kMagic);
  put_u16(b, store_wire::kVersion);
  put_u16(b, op);
  put_u32(b, static_cast<uint32_t>(key.size()));
  put_u32(b, static_cast<uint32_t>(value.size()));
  put_u32(b, timeout_ms);
  b.insert(b.end(), key.begin(), key.end());
  b.insert(b.end(), value.begin(), value.end());
  return b;
}

// False for a frame the server must reject (then it closes the connection).
inline bool decode_request_header(const std::array<uint8_t, store_wire::kRequestHeader>& h, RequestHeader* out) {
  if (get_u32(h.data()) != store_wire::kMagic || get_u16(h.data() + 4) != store_wire::kVersion) return false;
  out->op = get_u16(h.data() + 6);
  out->key_len = get_u32(h.data() + 8);
  out->value_len = get_u32(h.data() + 12);
  out->timeout_ms = get_u32(h.data() + 16);
  if (out->op < store_wire::kSet || out->op > store_wire::kAbortOnClose) return false;
  if (out->key_len == 0 || out->key_len > store_wire::kMaxKey || out->value_len > store_wire::kMaxValue) return false;
  if ((out->op == store_wire::kGet || out->op == store_wire::kWait) && out->value_len != 0) return false;
  if (out->op == store_wire::kAdd && out->value_len != 8) return false;
  if (out->timeout_ms > kMaxWaitMs) return false;
  return true;
}

inline std::vector<uint8_t> encode_response(uint16_t status, const std::vector<uint8_t>& value) {
  std::vector<uint8_t> b;
  b.reserve(store_wire::kResponseHeader + value.size());
  put_u32(b, store_wire::kMagic);
  put_u16(b, store_wire::kVersion);
  put_u16(b, status);
  put_u32(b, static_cast<uint32_t>(value.size()));
  b.insert(b.end(), value.begin(), value.end());
  return b;
}

}  // namespace distmla::dist
