// CUDA backend glue: device discovery, plan-time sizing, and the launch. The kernels live in
// kernels/ (distmla::kernels); this file never switches devices and never synchronises except
// in checked mode, where the caller asked for it.
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "distmla/reference.h"
#include "internal.h"

namespace distmla::detail {

namespace {
std::string cuda_msg(const char* call, cudaError_t e) {
  return std::string(call) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

kernels::ElemType elem_type(dmlaDataType_t d) {
  switch (d) {
    case dmlaFP16: return kernels::ElemType::kFP16;
    case dmlaFP32: return kernels::ElemType::kFP32;
    case dmlaBF16: break;
  }
  return kernels::ElemType::kBF16;
}
}  // namespace

bool cuda_backend_available(std::string* why) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    // No driver / no GPU (error 35 and friends) means "no device", not a failure; clear the
    // sticky last-error so the caller's later CUDA calls do not see it.
    (void)cudaGetLastError();
    *why = "no usable CUDA device (" + cuda_msg("cudaGetDeviceCount", e) + ")";
    return false;
  }
  if (count < 1) {
    *why = "no CUDA device (cudaGetDeviceCount = 0)";
    return false;
  }
  int dev = 0;
  e = cudaGetDevice(&dev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    *why = cuda_msg("cudaGetDevice", e);
    return false;
  }
  if (!kernels::device_supported(dev)) {
    cudaDeviceProp prop{};
    std::string name = "?";
    int major = 0, minor = 0;
    if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
      name = prop.name;
      major = prop.major;
      minor = prop.minor;
    } else {
      (void)cudaGetLastError();
    }
    *why = "device " + std::to_string(dev) + " (" + name + ", sm_" + std::to_string(major) +
           std::to_string(minor) + ") is not supported: the kernels need sm_90a";
    return false;
  }
  return true;
}

dmlaResult_t cuda_plan(const dmlaDecodeShape_t& shape, CudaPlanInfo* info) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("cudaGetDevice", e));
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) {
    return set_error(dmlaErrorCuda, cuda_msg("cudaDeviceGetAttribute(multiProcessorCount)", e));
  }
  kernels::DecodeShape k;
  k.batch = shape.batch;
  k.s_q = shape.s_q;
  k.h_q = shape.h_q;
  k.page_size = shape.page_size;
  k.num_blocks = shape.num_blocks;
  k.max_blocks_per_seq = shape.max_blocks_per_seq;
  k.qkv_type = elem_type(shape.q_dtype);
  k.out_type = elem_type(shape.out_dtype);
  k.scale = static_cast<float>(resolved_scale(shape));  // 0 -> 1/sqrt(576) = 1/24, exact in float
  k.causal = shape.causal != 0;
  k.num_sms = sms;
  info->device = dev;
  info->num_sms = sms;
  info->kshape = k;
  info->workspace_bytes = kernels::decode_workspace_bytes(k);
  return dmlaSuccess;
}

dmlaResult_t cuda_run(const CudaPlanInfo& info, const dmlaDecodeShape_t& shape,
                      const dmlaDecodeTensors_t& t, const dmlaHeadSlices_t& slices, void* workspace,
                      size_t workspace_bytes, void* stream, bool reuse_schedule) {
  if (workspace_bytes < info.workspace_bytes) {
    return set_error(dmlaErrorWorkspace, "workspace_bytes = " + std::to_string(workspace_bytes) +
                                             " is below the plan's workspace size " +
                                             std::to_string(info.workspace_bytes));
  }
  if (info.workspace_bytes > 0 && workspace == nullptr) {
    return set_error(dmlaErrorNullPointer, "workspace is null (the plan needs " +
                                               std::to_string(info.workspace_bytes) + " bytes)");
  }
  if (reinterpret_cast<uintptr_t>(workspace) % 256 != 0) {
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", workspace);
    return set_error(dmlaErrorWorkspace, std::string("workspace = ") + addr + " is not 256-byte aligned");
  }
  // The kernels move q, KV rows and out rows in 16-byte vectors.
  const struct { const char* name; const void* p; uintptr_t align; } ptrs[] = {
      {"q", t.q, 16}, {"kv_pool", t.kv_pool, 16}, {"out", t.out, 16}, {"lse", t.lse, 4}};
  for (const auto& a : ptrs) {
    if (reinterpret_cast<uintptr_t>(a.p) % a.align != 0) {
      char addr[32];
      std::snprintf(addr, sizeof addr, "%p", a.p);
      return set_error(dmlaErrorInvalidArgument, std::string(a.name) + " = " + addr + " is not " +
                                                     std::to_string(a.align) + "-byte aligned");
    }
  }
  int dev = -1;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("cudaGetDevice", e));
  if (dev != info.device) {
    return set_error(dmlaErrorBackend, "current device = " + std::to_string(dev) +
                                           " differs from the plan's device = " +
                                           std::to_string(info.device) +
                                           " (the library does not switch devices)");
  }
  kernels::DecodeTensors kt;
  kt.q = t.q;
  kt.kv = t.kv_pool;
  kt.block_table = t.block_table;
  kt.seqlens = t.seqlens;
  kt.out = t.out;
  kt.lse = t.lse;
  const size_t eb = shape.out_dtype == dmlaFP32 ? 4 : 2;
  kt.slices.num_slices = slices.num_slices;
  kt.slices.max_slice = slices.max_slice;
  kt.slices.out_slice_stride = slices.out_slice_stride / eb;
  kt.slices.lse_slice_stride = slices.lse_slice_stride / sizeof(float);
  e = kernels::decode(info.kshape, kt, workspace, workspace_bytes, reuse_schedule,
                      static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("kernels::decode", e));
  return dmlaSuccess;
}

// Checked mode for device tensors: copy the indices to the host, wait, validate.
dmlaResult_t cuda_check_indices(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t,
                                void* stream, int32_t* h_block_table, int32_t* h_seqlens) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const size_t bt_bytes = sizeof(int32_t) * static_cast<size_t>(shape.batch) * shape.max_blocks_per_seq;
  cudaError_t e = cudaMemcpyAsync(h_block_table, t.block_table, bt_bytes, cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("cudaMemcpyAsync(block_table)", e));
  e = cudaMemcpyAsync(h_seqlens, t.seqlens, sizeof(int32_t) * shape.batch, cudaMemcpyDeviceToHost, s);
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("cudaMemcpyAsync(seqlens)", e));
  e = cudaStreamSynchronize(s);
  if (e != cudaSuccess) return set_error(dmlaErrorCuda, cuda_msg("cudaStreamSynchronize", e));
  return validate_indices(shape, h_block_table, h_seqlens);
}

}  // namespace distmla::detail
