// Validation of shapes, tensor pointers and (checked mode) block ids and seqlens. Every failure
// gets its own code and a message naming the argument and the value.
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>

#include "internal.h"

namespace distmla::detail {

std::string dtype_name(dmlaDataType_t dtype) {
  switch (dtype) {
    case dmlaBF16: return "bf16";
    case dmlaFP16: return "fp16";
    case dmlaFP32: return "fp32";
  }
  return "unknown (" + std::to_string(static_cast<int>(dtype)) + ")";
}

namespace {
bool is_half(dmlaDataType_t d) { return d == dmlaBF16 || d == dmlaFP16; }

std::string float_str(float f) {
  std::ostringstream os;
  os << f;
  return os.str();
}
}  // namespace

dmlaResult_t validate_shape(const dmlaDecodeShape_t& s) {
  auto num = [](int v) { return std::to_string(v); };
  if (s.batch < 0) return set_error(dmlaErrorBatch, "batch = " + num(s.batch) + " is negative");
  if (s.h_q < 1 || s.h_q > DMLA_MAX_HEADS) {
    return set_error(dmlaErrorHeads, "h_q = " + num(s.h_q) + " is outside 1..128");
  }
  if (s.s_q < 1 || s.s_q > DMLA_MAX_SQ) {
    return set_error(dmlaErrorQueryLength, "s_q = " + num(s.s_q) + " is outside 1..4");
  }
  if (s.page_size != 16 && s.page_size != 32 && s.page_size != 64 && s.page_size != 128) {
    return set_error(dmlaErrorPageSize,
                     "page_size = " + num(s.page_size) + " is not 16, 32, 64 or 128");
  }
  if (!is_half(s.q_dtype)) {
    return set_error(dmlaErrorDtype, "q_dtype = " + dtype_name(s.q_dtype) + " is not bf16 or fp16");
  }
  if (s.kv_dtype != s.q_dtype) {
    return set_error(dmlaErrorDtype, "kv_dtype = " + dtype_name(s.kv_dtype) +
                                         " differs from q_dtype = " + dtype_name(s.q_dtype));
  }
  if (s.out_dtype != s.q_dtype && s.out_dtype != dmlaFP32) {
    return set_error(dmlaErrorDtype, "out_dtype = " + dtype_name(s.out_dtype) +
                                         " is neither q_dtype (" + dtype_name(s.q_dtype) +
                                         ") nor fp32");
  }
  if (s.num_blocks < 1) {
    return set_error(dmlaErrorShape, "num_blocks = " + num(s.num_blocks) + " is below 1");
  }
  if (s.max_blocks_per_seq < 1) {
    return set_error(dmlaErrorShape,
                     "max_blocks_per_seq = " + num(s.max_blocks_per_seq) + " is below 1");
  }
  if (!std::isfinite(s.scale)) {
    return set_error(dmlaErrorScale, "scale = " + float_str(s.scale) + " is not finite");
  }
  if (s.scale < 0.f) {
    return set_error(dmlaErrorScale, "scale = " + float_str(s.scale) +
                                         " is negative (0 selects 1/sqrt(576))");
  }
  // The kernels index the pool with 64-bit offsets, but block ids are int32 and a token
  // position must fit an int: a block table wider than 2^31 tokens is a caller error.
  if (static_cast<int64_t>(s.max_blocks_per_seq) * s.page_size > INT32_MAX) {
    return set_error(dmlaErrorShape, "max_blocks_per_seq = " + num(s.max_blocks_per_seq) +
                                         " times page_size = " + num(s.page_size) +
                                         " exceeds 2^31 - 1 tokens");
  }
  return dmlaSuccess;
}

dmlaResult_t validate_tensor_pointers(const dmlaDecodeTensors_t& t) {
  const char* name = nullptr;
  if (!t.q) name = "tensors->q";
  else if (!t.kv_pool) name = "tensors->kv_pool";
  else if (!t.block_table) name = "tensors->block_table";
  else if (!t.seqlens) name = "tensors->seqlens";
  else if (!t.out) name = "tensors->out";
  else if (!t.lse) name = "tensors->lse";
  if (name) return set_error(dmlaErrorNullPointer, std::string(name) + " is null");
  return dmlaSuccess;
}

dmlaHeadSlices_t plain_slices(const dmlaDecodeShape_t& shape) {
  dmlaHeadSlices_t p;
  p.num_slices = 1;
  p.max_slice = shape.h_q;
  p.out_slice_stride = 0;
  p.lse_slice_stride = 0;
  return p;
}

dmlaResult_t validate_slices(const dmlaDecodeShape_t& s, const dmlaHeadSlices_t& sl) {
  const std::string pre = "slices->";
  if (sl.num_slices < 1)
    return set_error(dmlaErrorInvalidArgument, pre + "num_slices = " + std::to_string(sl.num_slices) + " (must be >= 1)");
  const int need = (s.h_q + sl.num_slices - 1) / sl.num_slices;
  if (sl.max_slice < need)
    return set_error(dmlaErrorInvalidArgument, pre + "max_slice = " + std::to_string(sl.max_slice) + " is below " +
                                                   std::to_string(need) + " (h_q " + std::to_string(s.h_q) + " in " +
                                                   std::to_string(sl.num_slices) + " slices)");
  if (sl.num_slices == 1) return dmlaSuccess;  // strides unused
  const size_t rows = static_cast<size_t>(s.batch) * s.s_q * sl.max_slice;
  const size_t o_block = rows * DMLA_D_V * (s.out_dtype == dmlaFP32 ? 4 : 2), lse_block = rows * sizeof(float);
  if (sl.out_slice_stride % 16 != 0 || sl.out_slice_stride < o_block)
    return set_error(dmlaErrorInvalidArgument, pre + "out_slice_stride = " + std::to_string(sl.out_slice_stride) +
                                                   " (must be a multiple of 16 and >= " + std::to_string(o_block) + ")");
  if (sl.lse_slice_stride % 4 != 0 || sl.lse_slice_stride < lse_block)
    return set_error(dmlaErrorInvalidArgument, pre + "lse_slice_stride = " + std::to_string(sl.lse_slice_stride) +
                                                   " (must be a multiple of 4 and >= " + std::to_string(lse_block) + ")");
  return dmlaSuccess;
}

kernels::SliceRowOffsets sliced_row(const dmlaDecodeShape_t& s, const dmlaHeadSlices_t& sl, int b, int t, int head) {
  const size_t eb = s.out_dtype == dmlaFP32 ? 4 : 2;
  return kernels::slice_row_offsets(b, t, head, s.s_q, sl.num_slices, sl.max_slice, s.h_q / sl.num_slices,
                                    s.h_q % sl.num_slices, sl.out_slice_stride / eb,
                                    sl.lse_slice_stride / sizeof(float));
}

dmlaResult_t validate_indices(const dmlaDecodeShape_t& s, const int32_t* block_table,
                              const int32_t* seqlens) {
  for (int i = 0; i < s.batch; ++i) {
    const int32_t len = seqlens[i];
    const std::string where = "seqlens[" + std::to_string(i) + "] = " + std::to_string(len);
    if (len < 0) return set_error(dmlaErrorNegativeValue, where + " is negative");
    const int64_t pages = (static_cast<int64_t>(len) + s.page_size - 1) / s.page_size;
    if (pages > s.max_blocks_per_seq) {
      return set_error(dmlaErrorSeqlenOutOfRange,
                       where + " needs " + std::to_string(pages) +
                           " pages but max_blocks_per_seq = " + std::to_string(s.max_blocks_per_seq));
    }
    // Only the pages the sequence uses are checked: the rest may hold anything (e.g. -1).
    const int32_t* row = block_table + static_cast<size_t>(i) * s.max_blocks_per_seq;
    for (int64_t j = 0; j < pages; ++j) {
      const int32_t blk = row[j];
      if (blk >= 0 && blk < s.num_blocks) continue;
      const std::string entry = "block_table[" + std::to_string(i) + "][" + std::to_string(j) +
                                "] = " + std::to_string(blk);
      if (blk < 0) return set_error(dmlaErrorNegativeValue, entry + " is negative");
      return set_error(dmlaErrorBlockOutOfRange, entry + " is outside the pool (num_blocks = " +
                                                     std::to_string(s.num_blocks) + ")");
    }
  }
  return dmlaSuccess;
}

}  // namespace distmla::detail
