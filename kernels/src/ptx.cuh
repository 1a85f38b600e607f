#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// Inline-PTX helpers (PDL, mbarrier, TMA, fences, wgmma descriptors) and the element traits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "globaltimer.cuh"
#include "wgmma_ops.cuh"

namespace distmla::kernels::detail {

__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
// Spins until the phase of the given parity completed; sem: "" (acquire at CTA scope, the
// default) or ".acquire.cluster" (for arrivals of another CTA's threads).
#define DMLA_MBAR_WAIT_LOOP(sem)                                                   \
  "{\n.reg .pred done;\n"                                                          \
  "WAIT_%=:\n"                                                                     \
  "mbarrier.try_wait.parity" sem ".shared::cta.b64 done, [%0], %1;\n"              \
  "@!done bra WAIT_%=;\n}\n"
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(DMLA_MBAR_WAIT_LOOP("") ::"r"(bar), "r"(parity) : "memory");
}
// evict_first: data read once, which L2 may evict first (createpolicy evict_first).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            bool evict_first = false) {
  if (evict_first) {
    uint64_t policy;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(policy));
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%3, "
        "%4}], [%2], %5;\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "l"(policy)
        : "memory");
  } else {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, "
        "%4}], [%2];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
  }
}
// 2-CTA clusters (the KV multicast of a part's two row tiles): this CTA's rank in its cluster,
// a barrier over every thread of the cluster, an arrival on the peer CTA's barrier at the same
// offset, a wait that acquires at cluster scope (for arrivals of the peer's threads), and a
// TMA load written to the same offset in every CTA of mask, completing bytes on each one's
// barrier at bar's offset.
__device__ __forceinline__ uint32_t cluster_ctarank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive_peer(uint32_t bar, uint32_t peer) {
  asm volatile(
      "{\n.reg .b32 ra;\n"
      "mapa.shared::cluster.u32 ra, %0, %1;\n"
      "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [ra];\n}\n" ::"r"(bar),
      "r"(peer)
      : "memory");
}
__device__ __forceinline__ void mbar_wait_cluster(uint32_t bar, uint32_t parity) {
  asm volatile(DMLA_MBAR_WAIT_LOOP(".acquire.cluster") ::"r"(bar), "r"(parity) : "memory");
}
__device__ __forceinline__ void tma_load_2d_multicast(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0,
                                                      int c1, uint16_t mask) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, "
      "{%3, %4}], [%2], %5;\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "h"(mask)
      : "memory");
}
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, "
      "%4, %5}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void st_shared_f32(uint32_t addr, float v) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
__device__ __forceinline__ float ld_shared_f32(uint32_t addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
// Four 8x8 16-bit matrices to smem: register k of lane t holds row t / 4, columns 2 (t % 4), +1 of
// matrix k (the wgmma accumulator layout, packed); lanes 8k .. 8k + 7 give matrix k's row addresses.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}
// The inverse of stmatrix_x4: four 8x8 16-bit matrices from smem into the accumulator layout.
__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
// Bulk copy smem -> global (16-byte aligned, size a multiple of 16), in this thread's bulk group.
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
// Bulk copy global -> smem (16-byte aligned, size a multiple of 16), completing on mbarrier bar
// (complete_tx: the bytes count against the barrier's expected transaction bytes).
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// 4 bytes global -> smem, asynchronously (cp.async; cp_async_arrive tracks its completion).
__device__ __forceinline__ void cp_async_4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}
// mbarrier bar's current phase also waits for this thread's cp.async copies so far (without
// .noinc the pending count goes up by one now and back down once they complete: no arrival).
__device__ __forceinline__ void cp_async_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// This thread's bulk copies have read their smem source (which may then be reused).
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// This thread's bulk copies are complete (their writes done).
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }
// Named barrier 1 over the 256 consumer threads (warp-specialised kernels).
__device__ __forceinline__ void consumer_sync() { asm volatile("bar.sync 1, 256;\n" ::: "memory"); }
// The same barrier, which also tells every consumer thread whether any of them passed true.
__device__ __forceinline__ bool consumer_sync_any(bool v) {
  uint32_t r;
  asm volatile(
      "{\n.reg .pred p, q;\nsetp.ne.u32 p, %1, 0;\nbar.red.or.pred q, 1, 256, p;\nselp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(r)
      : "r"(static_cast<uint32_t>(v))
      : "memory");
  return r != 0;
}
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.s32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
  return v;
}
// This thread's bulk-copy (async proxy) writes to global, ordered before its later generic
// accesses and fences.
__device__ __forceinline__ void fence_proxy_async_global() {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
}
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_wait0() {
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// 2^x with denormal results flushed to zero: one MUFU.EX2, where exp2f adds a range fix-up of
// three instructions around it (P below 2^-126 is 0 either way in a bf16 product).
__device__ __forceinline__ float ex2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// wgmma shared-memory matrix descriptors, 128-byte swizzle. The kernels' descriptors differ only
// in their low word (start address >> 4, LBO >> 4 at bit 16); the high word holds SBO 1024 and the
// swizzle (layout type 1 at bit 62). desc_lo() makes a low word once; desc_at() gives the
// descriptor of the operand `bytes` (a multiple of 16) past it with one 32-bit add: building each
// product's descriptor from its address took ten uniform instructions, half of the kernel's
// instructions (run 68). Shared addresses stay below 2^18, so the 14-bit address field does not
// carry into LBO.
constexpr uint32_t kDescHi = (1024u >> 4) | (1u << 30);
__device__ __forceinline__ uint32_t desc_lo(uint32_t saddr, uint32_t lbo) {
  return ((saddr & 0x3FFFF) >> 4) | (((lbo >> 4) & 0x3FFF) << 16);
}
__device__ __forceinline__ uint64_t desc_at(uint32_t lo, uint32_t bytes) {
  return (static_cast<uint64_t>(kDescHi) << 32) | (lo + (bytes >> 4));
}

template <typename T>
struct ElemTraits;
template <>
struct ElemTraits<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void qk32(float (&d)[16], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n32k16_ss_bf16(d, da, db, sd);
  }
  static __device__ __forceinline__ void qk64(float (&d)[32], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n64k16_ss_bf16(d, da, db, sd);
  }
  static __device__ __forceinline__ void qk64_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int sd = 1) {
    detail::wgmma_m64n64k16_rs_bf16(d, a, db, sd);
  }
  static __device__ __forceinline__ void pv_ss(float (&d)[128], uint64_t da, uint64_t db) {
    detail::wgmma_m64n256k16_ss_bf16_tb(d, da, db, 1);
  }
  static __device__ __forceinline__ float to_float(uint16_t h) {
    return __uint_as_float(static_cast<uint32_t>(h) << 16);
  }
  static __device__ __forceinline__ uint16_t to_bits(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
};
template <>
struct ElemTraits<__half> {
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void qk32(float (&d)[16], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n32k16_ss_f16(d, da, db, sd);
  }
  static __device__ __forceinline__ void qk64(float (&d)[32], uint64_t da, uint64_t db, int sd) {
    detail::wgmma_m64n64k16_ss_f16(d, da, db, sd);
  }
  static __device__ __forceinline__ void qk64_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int sd = 1) {
    detail::wgmma_m64n64k16_rs_f16(d, a, db, sd);
  }
  static __device__ __forceinline__ void pv_ss(float (&d)[128], uint64_t da, uint64_t db) {
    detail::wgmma_m64n256k16_ss_f16_tb(d, da, db, 1);
  }
  static __device__ __forceinline__ float to_float(uint16_t h) {
    return __half2float(__ushort_as_half(h));
  }
  static __device__ __forceinline__ uint16_t to_bits(float x) { return __half_as_ushort(__float2half_rn(x)); }
};

}  // namespace distmla::kernels::detail
