// A kernel fault for the decode service's context-loss test (test_service.cpp): a trap, which
// leaves this process's GPU context unusable (every later CUDA call returns the error).
#include <cuda_runtime_api.h>

namespace {
__global__ void trap_kernel() { __trap(); }
}  // namespace

cudaError_t service_test_fault() {
  trap_kernel<<<1, 1>>>();
  const cudaError_t e = cudaGetLastError();
  return e != cudaSuccess ? e : cudaDeviceSynchronize();
}
