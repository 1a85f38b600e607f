#pragma once
// The GPU's %globaltimer in ns, for deadlines and traces: one definition for the sm_90a decode
// (ptx.cuh) and the cross-GPU waits (peer_sync.cuh), which are built for different targets.
#include <cstdint>

namespace distmla::kernels::detail {

__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
  return t;
}

}  // namespace distmla::kernels::detail
