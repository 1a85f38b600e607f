// C++ API over the C ABI: RAII plan, exceptions that carry the result code and the message.
#pragma once

#include <stdexcept>
#include <string>

#include "distmla/distmla.h"

namespace distmla {

class Error : public std::runtime_error {
 public:
  Error(dmlaResult_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  dmlaResult_t code() const { return code_; }

 private:
  dmlaResult_t code_;
};

// Throws distmla::Error with the last error message if r is not dmlaSuccess.
void check(dmlaResult_t r);

// Plan/run: validate and size once, run many times (graph-capturable on the CUDA backend).
class DecodePlan {
 public:
  DecodePlan(const dmlaDecodeShape_t& shape, dmlaBackend_t backend = dmlaBackendAuto);
  ~DecodePlan();
  DecodePlan(DecodePlan&& other) noexcept;
  DecodePlan& operator=(DecodePlan&& other) noexcept;
  DecodePlan(const DecodePlan&) = delete;
  DecodePlan& operator=(const DecodePlan&) = delete;

  dmlaBackend_t backend() const;
  size_t workspace_bytes() const;
  const dmlaDecodeShape_t& shape() const { return shape_; }
  void run(const dmlaDecodeTensors_t& tensors, void* workspace, size_t workspace_bytes,
           void* stream = nullptr, unsigned flags = 0) const;
  // out / lse in head slices (dmlaRunSliced).
  void run_sliced(const dmlaDecodeTensors_t& tensors, const dmlaHeadSlices_t& slices, void* workspace,
                  size_t workspace_bytes, void* stream = nullptr, unsigned flags = 0) const;
  dmlaPlan_t handle() const { return plan_; }

 private:
  dmlaPlan_t plan_ = nullptr;
  dmlaDecodeShape_t shape_{};
};

}  // namespace distmla
