// All-to-all between the GPUs of a CP group through CUDA IPC mailboxes (dist::PeerCommunicator
// owns the memory and the bootstrap; this is its kernel). Each rank owns a mailbox of world
// slots and a control block of 64-bit counters, both mapped into every peer. One call (epoch e):
//   1. for each peer p: wait until p has consumed this rank's epoch e - 1 chunk (freed[p] >= e - 1,
//      written here by p), copy send chunk p into p's mailbox slot `rank`, then add 1 a CTA to
//      p's arrived[rank] (release, system scope);
//   2. for each peer s: wait until arrived[s] >= e * kPeerCtas (acquire), copy mailbox slot s to
//      recv chunk s;
//   3. the last CTA to finish stores e into every peer's freed[rank] and into the local epoch.
// The counters only grow, so a call captured in a CUDA graph stays valid over replays. Every
// wait has a deadline (%globaltimer); a missed one writes the host-mapped error word and the
// kernel returns (the communicator reports it and is unusable after).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace distmla::kernels {

constexpr int kMaxPeers = 8;
constexpr int kPeerCtas = 32;  // fixed: the arrival counts assume it on both sides

// Control block of a world-rank group: arrived[world], freed[world], done (CTA count), epoch,
// failed (the error word's device twin).
inline size_t peer_ctrl_bytes(int world) { return (static_cast<size_t>(2 * world + 3) * 8 + 255) & ~size_t(255); }
inline size_t peer_ctrl_failed_offset(int world) { return static_cast<size_t>(2 * world + 2) * 8; }

// Error word: 0, or kind | peer (the first failure; later calls return at once). The host
// cancels (kPeerErrCancelled) by writing the control blocks' failed words, which every wait polls.
enum : unsigned { kPeerErrFreeTimeout = 0x100, kPeerErrArriveTimeout = 0x200, kPeerErrCancelled = 0x300 };

struct PeerExchangeArgs {
  int world = 1;
  int rank = 0;
  const void* send = nullptr;  // world chunks of bytes; chunk p goes to rank p
  void* recv = nullptr;        // world chunks of bytes; chunk s came from rank s
  size_t bytes = 0;            // a multiple of 16; send, recv 16-byte aligned
  void* mail[kMaxPeers] = {};  // rank p's mailbox (mapped here): slot s at mail[p] + s * slot_bytes
  size_t slot_bytes = 0;
  uint64_t* ctrl[kMaxPeers] = {};  // rank p's control block (mapped here)
  unsigned* error = nullptr;       // host-mapped, written only when a deadline is missed
  uint64_t timeout_ns = 0;
};

// Pull merge: every rank of a CP group writes its send chunks (chunk p for rank p) into its own
// window, memory the other ranks map; cross_rank_combine with CrossRankCombineArgs::pull then
// reads each rank's chunk for it straight from that rank's window: no copy, no exchange kernel.
// One call (epoch e, the merges of a group in the same order on every rank), in the combine:
//   1. the first CTA stores e into every peer's ready[rank] (release, system scope: the decode
//      that wrote this rank's window ran before, in stream order);
//   2. every CTA waits until ready[p] >= e for each peer p, then merges;
//   3. the last CTA stores e into every peer's freed[rank] and waits until freed[p] >= e for each
//      peer p, so that when the combine ends no peer still reads this rank's window (the next
//      decode overwrites it), then advances the epoch.
// Waits have deadlines as in the all-to-all (the same error word and codes).
struct PeerWindow {
  int world = 0;  // 0: no pull merge
  int rank = 0;
  uint64_t* ctrl[kMaxPeers] = {};  // rank p's window counters (mapped here), peer_window_ctrl_bytes
  unsigned* error = nullptr;       // host-mapped, written only when a deadline is missed
  uint64_t timeout_ns = 0;
  // Debugging (DISTMLA_PULL_TRACE: distributed/src/pull_trace.h): a ring of trace_len records
  // {epoch, start, peers ready, end} of the merges, in this GPU's %globaltimer ns (CTA 0's start
  // and wait, the last CTA's end); null: off.
  uint64_t* trace = nullptr;
  int trace_len = 0;
};
// A window's counters: ready[world], freed[world], signaled (the last epoch announced), done (CTA
// count), epoch, failed (the error word's device twin); its chunks follow.
inline size_t peer_window_ctrl_bytes(int world) {
  return (static_cast<size_t>(2 * world + 4) * 8 + 255) & ~size_t(255);
}
inline size_t peer_window_failed_offset(int world) { return static_cast<size_t>(2 * world + 3) * 8; }

// Launches the exchange on stream (never synchronises; graph-capturable). cudaErrorInvalidValue
// when world, rank, bytes or the pointers are out of range, before anything is launched.
cudaError_t peer_all_to_all(const PeerExchangeArgs& a, cudaStream_t stream);

}  // namespace distmla::kernels
