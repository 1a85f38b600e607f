// Private helpers of libdistmla: error recording and validation (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "distmla/distmla.h"
#include "distmla/kernels/decode.h"

namespace distmla::detail {

// Records msg as this thread's last error message and returns code (dmlaSuccess clears it).
dmlaResult_t set_error(dmlaResult_t code, const std::string& msg);
const char* last_error_message();
// Name of a dtype for messages ("bf16", "fp16", "fp32", or "unknown (7)").
std::string dtype_name(dmlaDataType_t dtype);

// Shape checks of dmlaPlanCreate (DESIGN.md section 6: reject before any work).
dmlaResult_t validate_shape(const dmlaDecodeShape_t& shape);
// Non-null tensor pointers (every tensor is required when batch > 0).
dmlaResult_t validate_tensor_pointers(const dmlaDecodeTensors_t& t);
// Checked mode: seqlens and the block ids of the pages each sequence uses (host copies).
dmlaResult_t validate_indices(const dmlaDecodeShape_t& shape, const int32_t* block_table,
                              const int32_t* seqlens);

// One slice of h_q heads: the plain out / lse layout.
dmlaHeadSlices_t plain_slices(const dmlaDecodeShape_t& shape);
// num_slices, max_slice and the strides (alignment, room for one slice's block).
dmlaResult_t validate_slices(const dmlaDecodeShape_t& shape, const dmlaHeadSlices_t& slices);
// Element offsets of row (b, t, head) in out and lse under slices (kernels::slice_row_offsets).
kernels::SliceRowOffsets sliced_row(const dmlaDecodeShape_t& shape, const dmlaHeadSlices_t& slices, int b, int t,
                                    int head);

// Backend glue (backend_cpu.cpp / backend_cuda.cpp).
dmlaResult_t cpu_run(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t,
                     const dmlaHeadSlices_t& slices);

struct CudaPlanInfo {
  int device = -1;
  int num_sms = 0;
  kernels::DecodeShape kshape;
  size_t workspace_bytes = 0;
};
// True when a usable device exists (cudaGetDeviceCount >= 1 and the current device is sm_90
// with kernels compiled in). No-GPU machines answer false without an error.
bool cuda_backend_available(std::string* why);
dmlaResult_t cuda_plan(const dmlaDecodeShape_t& shape, CudaPlanInfo* info);
dmlaResult_t cuda_run(const CudaPlanInfo& info, const dmlaDecodeShape_t& shape,
                      const dmlaDecodeTensors_t& t, const dmlaHeadSlices_t& slices, void* workspace,
                      size_t workspace_bytes, void* stream, bool reuse_schedule);

dmlaResult_t cuda_check_indices(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& t,
                                void* stream, int32_t* h_block_table, int32_t* h_seqlens);

}  // namespace distmla::detail
