// The kernel of kernels/peer_exchange.h (the protocol is described there).
#include "distmla/kernels/peer_exchange.h"

#include <cstdint>

#include "peer_sync.cuh"

namespace distmla::kernels {
namespace {

using namespace detail;

constexpr int kThreads = 512;

// Thread 0 waits (thread_wait_ge), the CTA learns the verdict.
__device__ __forceinline__ bool wait_ge(const uint64_t* p, uint64_t target, uint64_t& deadline,
                                        uint64_t timeout_ns, const Failure& err, unsigned code) {
  __shared__ int ok;
  if (threadIdx.x == 0) ok = thread_wait_ge(p, target, deadline, timeout_ns, err, code);
  __syncthreads();
  const int r = ok;
  __syncthreads();
  return r != 0;
}

// This CTA's share of an n16-vector copy. Mailbox reads bypass L1 (written by another GPU).
template <bool kFromMail>
__device__ __forceinline__ void copy_share(void* dst, const void* src, size_t n16) {
  const size_t per = (n16 + gridDim.x - 1) / gridDim.x;
  const size_t b = blockIdx.x * per, e = b + per < n16 ? b + per : n16;
  uint4* d = static_cast<uint4*>(dst);
  const uint4* s = static_cast<const uint4*>(src);
  for (size_t i = b + threadIdx.x; i < e; i += kThreads) d[i] = kFromMail ? __ldcg(s + i) : __ldg(s + i);
}

__global__ void __launch_bounds__(kThreads, 1) peer_a2a_kernel(const __grid_constant__ PeerExchangeArgs a) {
  const int W = a.world, me = a.rank;
  const MailCtrl my(a, me);
  __shared__ int failed;
  if (threadIdx.x == 0) failed = ld_volatile(my.failed()) != 0;  // an earlier call
  __syncthreads();
  if (failed) return;
  Failure err{a.error, my.failed()};
  uint64_t deadline = 0;  // thread 0's, set at its first wait
  // Every CTA reads the epoch before the last one (which waits for all) advances it.
  const uint64_t e = ld_volatile(my.epoch()) + 1;
  const size_t n16 = a.bytes / 16;
  const char* send = static_cast<const char*>(a.send);
  char* recv = static_cast<char*>(a.recv);
  // 1. push
  for (int j = 1; j < W; ++j) {
    const int p = (me + j) % W;
    if (!wait_ge(my.freed(p), e - 1, deadline, a.timeout_ns, err, kPeerErrFreeTimeout | p)) return;
    copy_share<false>(static_cast<char*>(a.mail[p]) + me * a.slot_bytes, send + p * a.bytes, n16);
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence_system();
      red_add_release_sys(MailCtrl(a, p).arrived(me), 1);
    }
  }
  copy_share<false>(recv + me * a.bytes, send + me * a.bytes, n16);
  // 2. receive
  for (int j = 1; j < W; ++j) {
    const int s = (me + W - j) % W;
    if (!wait_ge(my.arrived(s), e * gridDim.x, deadline, a.timeout_ns, err, kPeerErrArriveTimeout | s)) return;
    copy_share<true>(recv + s * a.bytes, static_cast<const char*>(a.mail[me]) + s * a.slot_bytes, n16);
  }
  // 3. release the slots (the last CTA, once every CTA's mailbox reads are done)
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned long long prev = atomicAdd(my.done(), 1ull);
    if (prev + 1 == e * gridDim.x) {
      __threadfence_system();
      for (int s = 0; s < W; ++s)
        if (s != me) st_release_sys(MailCtrl(a, s).freed(me), e);
      st_volatile(my.epoch(), e);
    }
  }
}

}  // namespace

cudaError_t peer_all_to_all(const PeerExchangeArgs& a, cudaStream_t stream) {
  if (a.world < 1 || a.world > kMaxPeers || a.rank < 0 || a.rank >= a.world) return cudaErrorInvalidValue;
  if (a.bytes % 16 != 0 || a.bytes > a.slot_bytes || !a.error || a.timeout_ns == 0) return cudaErrorInvalidValue;
  if (a.bytes > 0 && (!a.send || !a.recv)) return cudaErrorInvalidValue;
  if ((reinterpret_cast<uintptr_t>(a.send) | reinterpret_cast<uintptr_t>(a.recv)) % 16 != 0)
    return cudaErrorMisalignedAddress;
  for (int p = 0; p < a.world; ++p)
    if (!a.mail[p] || !a.ctrl[p]) return cudaErrorInvalidValue;
  peer_a2a_kernel<<<kPeerCtas, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace distmla::kernels
