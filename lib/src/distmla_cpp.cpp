// C++ API (distmla.hpp) over the C ABI.
#include <utility>

#include "distmla/distmla.hpp"

namespace distmla {

void check(dmlaResult_t r) {
  if (r == dmlaSuccess) return;
  std::string msg = dmlaGetLastErrorMessage();
  if (msg.empty()) msg = dmlaGetErrorString(r);
  throw Error(r, msg);
}

DecodePlan::DecodePlan(const dmlaDecodeShape_t& shape, dmlaBackend_t backend) : shape_(shape) {
  check(dmlaPlanCreate(&plan_, &shape, backend));
}

DecodePlan::~DecodePlan() {
  if (plan_) dmlaPlanDestroy(plan_);
}

DecodePlan::DecodePlan(DecodePlan&& other) noexcept
    : plan_(std::exchange(other.plan_, nullptr)), shape_(other.shape_) {}

DecodePlan& DecodePlan::operator=(DecodePlan&& other) noexcept {
  if (this != &other) {
    if (plan_) dmlaPlanDestroy(plan_);
    plan_ = std::exchange(other.plan_, nullptr);
    shape_ = other.shape_;
  }
  return *this;
}

dmlaBackend_t DecodePlan::backend() const {
  dmlaBackend_t b = dmlaBackendCpu;
  check(dmlaPlanGetBackend(plan_, &b));
  return b;
}

size_t DecodePlan::workspace_bytes() const {
  size_t n = 0;
  check(dmlaPlanGetWorkspaceSize(plan_, &n));
  return n;
}

void DecodePlan::run(const dmlaDecodeTensors_t& tensors, void* workspace, size_t workspace_bytes,
                     void* stream, unsigned flags) const {
  check(dmlaRunEx(plan_, &tensors, workspace, workspace_bytes, stream, flags));
}

void DecodePlan::run_sliced(const dmlaDecodeTensors_t& tensors, const dmlaHeadSlices_t& slices, void* workspace,
                            size_t workspace_bytes, void* stream, unsigned flags) const {
  check(dmlaRunSliced(plan_, &tensors, &slices, workspace, workspace_bytes, stream, flags));
}

}  // namespace distmla
