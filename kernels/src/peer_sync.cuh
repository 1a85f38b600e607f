#pragma once
// Cross-GPU synchronisation shared by the peer all-to-all (peer_exchange.cu) and the pull merge
// (cross_rank_combine.cu): system-scope flag loads and stores on IPC-mapped counters, and waits
// with a %globaltimer deadline that record a failure instead of hanging.
#include <cstdint>

#include "distmla/kernels/peer_exchange.h"
#include "globaltimer.cuh"

namespace distmla::kernels::detail {

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];\n" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void red_add_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;\n" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;\n" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t ld_volatile(const uint64_t* p) { return *reinterpret_cast<const volatile uint64_t*>(p); }
__device__ __forceinline__ void st_volatile(uint64_t* p, uint64_t v) { *reinterpret_cast<volatile uint64_t*>(p) = v; }

// Where a missed deadline is recorded: the control block (what the next call checks, device
// memory) and the host-mapped word the communicator reads. The kernel never reads host memory:
// on these machines each read of it took tens of microseconds (run P2).
struct Failure {
  unsigned* host;
  uint64_t* device;
  __device__ void set(unsigned code) const {
    st_volatile(device, code);
    *reinterpret_cast<volatile unsigned*>(host) = code;
  }
};

// One thread waits until *p >= target; false (and the failure recorded) past the deadline, which
// it sets at its first wait that does not succeed at once (0 until then), or at once when the
// failed word is set meanwhile (another wait of this rank failed, or the host cancelled).
__device__ __forceinline__ bool thread_wait_ge(const uint64_t* p, uint64_t target, uint64_t& deadline,
                                               uint64_t timeout_ns, const Failure& err, unsigned code) {
  if (ld_acquire_sys(p) >= target) return true;
  if (deadline == 0) deadline = globaltimer_ns() + timeout_ns;
  while (ld_acquire_sys(p) < target) {
    if (ld_volatile(err.device) != 0) return false;
    if (globaltimer_ns() > deadline) {
      err.set(code);
      return false;
    }
  }
  return true;
}

// The two control blocks, as rank r's is mapped here (their sizes: peer_exchange.h).
// The all-to-all's (peer_ctrl_bytes): arrived[W], freed[W], done, epoch, failed.
struct MailCtrl {
  uint64_t* c;
  int world;
  __device__ MailCtrl(const PeerExchangeArgs& a, int r) : c(a.ctrl[r]), world(a.world) {}
  __device__ uint64_t* arrived(int p) const { return c + p; }  // CTAs of rank p that pushed here
  __device__ uint64_t* freed(int p) const { return c + world + p; }  // rank p emptied its slot here
  __device__ unsigned long long* done() const { return reinterpret_cast<unsigned long long*>(c + 2 * world); }
  __device__ uint64_t* epoch() const { return c + 2 * world + 1; }
  __device__ uint64_t* failed() const { return c + 2 * world + 2; }
};
// The pull merge's window (peer_window_ctrl_bytes): ready[W], freed[W], signaled, done, epoch, failed.
struct WindowCtrl {
  uint64_t* c;
  int world;
  __device__ WindowCtrl(const PeerWindow& w, int r) : c(w.ctrl[r]), world(w.world) {}
  __device__ uint64_t* ready(int p) const { return c + p; }  // rank p announced epoch *ready(p)
  __device__ uint64_t* freed(int p) const { return c + world + p; }  // rank p read this window up to it
  __device__ unsigned long long* signaled() const { return reinterpret_cast<unsigned long long*>(c + 2 * world); }
  __device__ unsigned long long* done() const { return reinterpret_cast<unsigned long long*>(c + 2 * world + 1); }
  __device__ uint64_t* epoch() const { return c + 2 * world + 2; }
  __device__ uint64_t* failed() const { return c + 2 * world + 3; }
};

}  // namespace distmla::kernels::detail
