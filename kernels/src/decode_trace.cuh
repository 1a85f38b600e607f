#pragma once
// Part of the sm_90a decode (included by decode_sm90.cu only; see its header comment).
// A per-CTA timeline of the wgmma decode kernel for a debugging build
// (cmake -DDISTMLA_DECODE_TRACE=ON; compiled out otherwise): thread 0 of the consumers (and the
// KV producer thread, the store warp, and the split combine's CTAs in row 0) stamp clock64 or
// %globaltimer at the points below into g_decode_trace[cta], the host
// writes the last launch's table to $DISTMLA_TRACE_FILE (at exit, or after each launch with
// DISTMLA_TRACE_SYNC=1), and scripts/decode_trace.py sums it up (Q waits, block loop, epilogue,
// per-block waits). Run 27 in docs/PERFORMANCE.md found the short rows' overhead with it.
#include <cstdint>

#include "ptx.cuh"

namespace distmla::kernels::detail {

constexpr int kTraceCtas = 264;   // grid.x * grid.y of any launch (132 SMs x 2 row tiles)
constexpr int kTraceSlots = 256;  // u64 a CTA; the layout below is what decode_trace.py reads
enum TraceSlot : int {
  kTrEntryNs = 0,    // %globaltimer at entry (thread 0)
  kTrExitNs = 1,     // %globaltimer when consumer thread 0 is done
  kTrEntry = 2,      // clock64 at entry; the rest are clock64 too
  kTrPdl = 3,        // after griddepcontrol.wait
  kTrExit = 4,       // consumer thread 0 done
  kTrStoreNs = 5,    // %globaltimer when the store warp's copies are complete (v6)
  kTrSeqs = 6,       // sequences of the part (a count)
  kTrBlocks = 7,     // blocks of the part (a count)
  kTrSeq = 8,        // + 8 j + SeqField, sequences j < 8
  kTrBlkWait = 72,   // + k: block k's wait is done (consumer), k < 64: v3 the whole stage; v6
                     // none here (it waits a chunk at a time inside Q K^T), so its "compute" includes them
  kTrBlkDone = 136,  // + k: block k's P V is done
  kTrIssue = 200,    // + k: the producer issued block k's TMA, k < 48
  kTrPdlNs = 248,    // %globaltimer after griddepcontrol.wait
  kTrCombineNs = 250,  // row 0 only: the combine's first start and last end (%globaltimer;
                       // reset by decode CTA 0, then atomicMin / atomicMax by the combine CTAs)
  kTrStoreFull = 252,  // the store warp's first staged tile: o_full seen (v6)
  kTrStoreRead = 253,  // ... its copies have read the stage (o_free arrivals)
  kTrEpiStm = 254,     // the last staged tile, thread 0: its stmatrix done,
  kTrEpiRows = 255,    // ... its lse written,
  kTrEpiArrive = 249,  // ... fenced and arrived on o_full
};
enum SeqField : int {
  kSeqStart = 0, kSeqQReady, kSeqSums, kSeqSynced, kSeqLoopEnd, kSeqEnd, kSeqEpiSync, kSeqLastWarp
};

#if DISTMLA_DECODE_TRACE
__device__ unsigned long long g_decode_trace[kTraceCtas][kTraceSlots];
__device__ __forceinline__ unsigned long long* trace_row() {
  return g_decode_trace[blockIdx.y * gridDim.x + blockIdx.x];
}
#define DMLA_TRACE(cond, slot)                                              \
  do {                                                                      \
    if (cond) ::distmla::kernels::detail::trace_row()[(slot)] = clock64(); \
  } while (0)
#define DMLA_TRACE_VALUE(cond, slot, value)                                          \
  do {                                                                               \
    if (cond) ::distmla::kernels::detail::trace_row()[(slot)] = (unsigned long long)(value); \
  } while (0)
#define DMLA_TRACE_MAX(cond, slot)                                                           \
  do {                                                                                       \
    if (cond) atomicMax(&::distmla::kernels::detail::trace_row()[(slot)], (unsigned long long)clock64()); \
  } while (0)
#define DMLA_TRACE_NS(cond, slot) DMLA_TRACE_VALUE(cond, slot, ::distmla::kernels::detail::globaltimer_ns())
#define DMLA_TRACE_COMBINE_RESET(cond)                                     \
  do {                                                                    \
    if (cond) {                                                           \
      ::distmla::kernels::detail::g_decode_trace[0][kTrCombineNs] = ~0ull; \
      ::distmla::kernels::detail::g_decode_trace[0][kTrCombineNs + 1] = 0; \
    }                                                                     \
  } while (0)
#define DMLA_TRACE_COMBINE(cond, end)                                                               \
  do {                                                                                              \
    if (cond) {                                                                                     \
      unsigned long long* r = ::distmla::kernels::detail::g_decode_trace[0];                        \
      if (end) atomicMax(&r[kTrCombineNs + 1], ::distmla::kernels::detail::globaltimer_ns());       \
      else atomicMin(&r[kTrCombineNs], ::distmla::kernels::detail::globaltimer_ns());               \
    }                                                                                               \
  } while (0)
#else
#define DMLA_TRACE_COMBINE_RESET(cond) do { } while (0)
#define DMLA_TRACE_COMBINE(cond, end) do { } while (0)
#define DMLA_TRACE(cond, slot) do { } while (0)
#define DMLA_TRACE_VALUE(cond, slot, value) do { } while (0)
#define DMLA_TRACE_MAX(cond, slot) do { } while (0)
#define DMLA_TRACE_NS(cond, slot) do { } while (0)
#endif

}  // namespace distmla::kernels::detail
