// C ABI: shape defaults, backend resolution, plan/run. Validation happens before any work so
// that invalid input leaves every output untouched.
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "internal.h"

using distmla::detail::set_error;

struct dmlaPlan {
  dmlaDecodeShape_t shape{};
  dmlaBackend_t backend = dmlaBackendCpu;
  distmla::detail::CudaPlanInfo cuda;
  // Host staging for checked CUDA runs, sized at plan time so run() allocates nothing.
  std::mutex check_mu;
  std::vector<int32_t> h_block_table;
  std::vector<int32_t> h_seqlens;
};


extern "C" void dmlaShapeInit(dmlaDecodeShape_t* shape) {
  if (!shape) return;
  *shape = dmlaDecodeShape_t{};
  shape->batch = 0;
  shape->s_q = 1;
  shape->h_q = 1;
  shape->page_size = 64;
  shape->num_blocks = 0;          // the caller must size the pool
  shape->max_blocks_per_seq = 0;  // and the block table
  shape->q_dtype = dmlaBF16;
  shape->kv_dtype = dmlaBF16;
  shape->out_dtype = dmlaBF16;
  shape->scale = 0.f;
  shape->causal = 1;
  shape->check_inputs = 0;
}

extern "C" dmlaResult_t dmlaResolveBackend(dmlaBackend_t requested, dmlaBackend_t* resolved) {
  if (!resolved) return set_error(dmlaErrorNullPointer, "resolved is null");
  std::string why;
  switch (requested) {
    case dmlaBackendCpu:
      *resolved = dmlaBackendCpu;
      return set_error(dmlaSuccess, "");
    case dmlaBackendAuto:
      *resolved = distmla::detail::cuda_backend_available(&why) ? dmlaBackendCuda : dmlaBackendCpu;
      return set_error(dmlaSuccess, "");
    case dmlaBackendCuda:
      if (!distmla::detail::cuda_backend_available(&why)) {
        return set_error(dmlaErrorBackend, "backend = cuda is not available: " + why);
      }
      *resolved = dmlaBackendCuda;
      return set_error(dmlaSuccess, "");
  }
  return set_error(dmlaErrorInvalidArgument, "backend = " + std::to_string(static_cast<int>(requested)) +
                                                 " is not auto (0), cuda (1) or cpu (2)");
}

extern "C" dmlaResult_t dmlaPlanCreate(dmlaPlan_t* plan, const dmlaDecodeShape_t* shape,
                                       dmlaBackend_t backend) {
  if (!plan) return set_error(dmlaErrorNullPointer, "plan is null");
  if (!shape) return set_error(dmlaErrorNullPointer, "shape is null");
  dmlaResult_t r = distmla::detail::validate_shape(*shape);
  if (r != dmlaSuccess) return r;
  dmlaBackend_t resolved;
  r = dmlaResolveBackend(backend, &resolved);
  if (r != dmlaSuccess) return r;

  std::unique_ptr<dmlaPlan> p(new (std::nothrow) dmlaPlan);
  if (!p) return set_error(dmlaErrorInternal, "out of host memory allocating the plan");
  p->shape = *shape;
  p->backend = resolved;
  if (resolved == dmlaBackendCuda) {
    r = distmla::detail::cuda_plan(*shape, &p->cuda);
    if (r != dmlaSuccess) return r;
    if (shape->check_inputs) {
      p->h_block_table.resize(static_cast<size_t>(shape->batch) * shape->max_blocks_per_seq);
      p->h_seqlens.resize(static_cast<size_t>(shape->batch));
    }
  }
  *plan = p.release();
  return set_error(dmlaSuccess, "");
}

extern "C" dmlaResult_t dmlaPlanDestroy(dmlaPlan_t plan) {
  delete plan;  // null is fine
  return set_error(dmlaSuccess, "");
}

extern "C" dmlaResult_t dmlaPlanGetBackend(dmlaPlan_t plan, dmlaBackend_t* backend) {
  if (!plan) return set_error(dmlaErrorNullPointer, "plan is null");
  if (!backend) return set_error(dmlaErrorNullPointer, "backend is null");
  *backend = plan->backend;
  return set_error(dmlaSuccess, "");
}

extern "C" dmlaResult_t dmlaPlanGetWorkspaceSize(dmlaPlan_t plan, size_t* bytes) {
  if (!plan) return set_error(dmlaErrorNullPointer, "plan is null");
  if (!bytes) return set_error(dmlaErrorNullPointer, "bytes is null");
  *bytes = plan->backend == dmlaBackendCuda ? plan->cuda.workspace_bytes : 0;
  return set_error(dmlaSuccess, "");
}

extern "C" dmlaResult_t dmlaRunEx(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors,
                                  void* workspace, size_t workspace_bytes, void* stream,
                                  unsigned flags) {
  return dmlaRunSliced(plan, tensors, nullptr, workspace, workspace_bytes, stream, flags);
}

extern "C" dmlaResult_t dmlaRunSliced(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors,
                                      const dmlaHeadSlices_t* slices_in, void* workspace,
                                      size_t workspace_bytes, void* stream, unsigned flags) {
  if (!plan) return set_error(dmlaErrorNullPointer, "plan is null");
  if (!tensors) return set_error(dmlaErrorNullPointer, "tensors is null");
  if (flags & ~DMLA_RUN_REUSE_SCHEDULE) {
    return set_error(dmlaErrorInvalidArgument,
                     "flags = " + std::to_string(flags) + " has bits other than DMLA_RUN_REUSE_SCHEDULE");
  }
  const dmlaDecodeShape_t& shape = plan->shape;
  const dmlaHeadSlices_t slices = slices_in ? *slices_in : distmla::detail::plain_slices(shape);
  dmlaResult_t r = distmla::detail::validate_slices(shape, slices);
  if (r != dmlaSuccess) return r;
  if (shape.batch == 0) return set_error(dmlaSuccess, "");  // nothing to compute
  r = distmla::detail::validate_tensor_pointers(*tensors);
  if (r != dmlaSuccess) return r;

  if (plan->backend == dmlaBackendCpu) {
    // The CPU backend reads the indices anyway, so it always checks them first.
    r = distmla::detail::validate_indices(shape, tensors->block_table, tensors->seqlens);
    if (r != dmlaSuccess) return r;
    r = distmla::detail::cpu_run(shape, *tensors, slices);
    return r == dmlaSuccess ? set_error(dmlaSuccess, "") : r;
  }

  if (shape.check_inputs) {
    std::lock_guard<std::mutex> lock(plan->check_mu);
    r = distmla::detail::cuda_check_indices(shape, *tensors, stream, plan->h_block_table.data(),
                                            plan->h_seqlens.data());
    if (r != dmlaSuccess) return r;
  }
  r = distmla::detail::cuda_run(plan->cuda, shape, *tensors, slices, workspace, workspace_bytes, stream,
                                (flags & DMLA_RUN_REUSE_SCHEDULE) != 0);
  return r == dmlaSuccess ? set_error(dmlaSuccess, "") : r;
}

extern "C" dmlaResult_t dmlaRun(dmlaPlan_t plan, const dmlaDecodeTensors_t* tensors, void* workspace,
                                size_t workspace_bytes, void* stream) {
  return dmlaRunEx(plan, tensors, workspace, workspace_bytes, stream, 0);
}
