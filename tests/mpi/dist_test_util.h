// Shared by the MPI, NCCL and peer suites: the reference rows of a rank's output heads and the
// check, and a device buffer for the GPU suites.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "distmla/compare.h"
#include "distmla/dist/shard_plan.h"
#include "distmla/distmla.h"

namespace distmla::dist::test_util {

// Compares out/lse of heads oh of the whole batch with the double reference of all heads.
inline CompareResult compare_heads(const dmlaDecodeShape_t& g, Range oh, const void* out, dmlaDataType_t out_dtype,
                                   const float* lse, const std::vector<double>& out_ref,
                                   const std::vector<double>& lse_ref) {
  dmlaDecodeShape_t sub = g;
  sub.h_q = oh.count;
  std::vector<double> o_sub, l_sub;
  for (int b = 0; b < g.batch; ++b)
    for (int t = 0; t < g.s_q; ++t)
      for (int h = 0; h < oh.count; ++h) {
        const size_t r = ((static_cast<size_t>(b) * g.s_q + t) * g.h_q + oh.begin + h) * DMLA_D_V;
        o_sub.insert(o_sub.end(), out_ref.begin() + r, out_ref.begin() + r + DMLA_D_V);
      }
  for (int b = 0; b < g.batch; ++b)
    for (int h = 0; h < oh.count; ++h)
      for (int t = 0; t < g.s_q; ++t) l_sub.push_back(lse_ref[(static_cast<size_t>(b) * g.h_q + oh.begin + h) * g.s_q + t]);
  return compare_with_reference(sub, out, out_dtype, lse, o_sub, l_sub);
}

// Device copy of a host vector (or count uninitialised elements); host() copies it back.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { cudaMalloc(reinterpret_cast<void**>(&p), std::max<size_t>(1, n) * sizeof(T)); }
  explicit DevBuf(const std::vector<T>& h) : DevBuf(h.size()) {
    cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice);
  }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  std::vector<T> host() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

}  // namespace distmla::dist::test_util
