// The communicator the distributed decoder needs: byte-wise all-gather, all-to-all, broadcast,
// barrier, an all-ranks agreement, and sub-groups (the CP and TP groups).
// Two implementations: NCCL over device buffers (stream-ordered) and MPI over host buffers.
// Every wait has a deadline (CommOptions::timeout_ms); a missed deadline returns
// dmlaErrorTimeout (the NCCL communicator is aborted), never a hang. The host framework can also
// end every wait at once (CommOptions::cancel), e.g. when its failure detector has seen a rank die.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "distmla/dist/error.h"
#include "distmla/distmla.h"
#include "distmla/kernels/peer_exchange.h"

namespace distmla::dist {

enum class MemSpace { kHost, kDevice };

// Device memory every rank of a group reads directly (Communicator::reserve_window).
struct DeviceWindow {
  char* at[kernels::kMaxPeers] = {};  // rank p's window as mapped here
  kernels::PeerWindow sync;           // the pull merge's counters; sync.world == 0: no window
};

struct CommOptions {
  int timeout_ms = 60000;  // deadline of every wait (init, collectives, teardown)
  // Optional, owned by the caller and outliving the communicators: once it is true, the next wait
  // of any of these communicators (and of those split from them) ends at once with dmlaErrorComm
  // ("cancelled"), after ending all of them (NCCL ones aborted, the peer exchange's kernels
  // stopped), so that a rank whose peer died leaves its collective now instead of at timeout_ms.
  const std::atomic<bool>* cancel = nullptr;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Where collective buffers must live (device memory for NCCL, host memory for MPI).
  virtual MemSpace memory() const = 0;
  virtual const char* backend_name() const = 0;

  // recv[size * bytes] gets every rank's send[bytes] in rank order. stream: cudaStream_t for
  // device communicators (the call is stream-ordered and graph-capturable), ignored on the host
  // (the call returns when the data has arrived).
  virtual dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void* stream) = 0;
  // send holds size chunks of bytes each; chunk p goes to rank p, which stores it at recv
  // chunk rank().
  virtual dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void* stream) = 0;
  virtual dmlaResult_t broadcast(void* buf, size_t bytes, int root, void* stream) = 0;
  // Host-side: returns when every rank has entered (device comms also drain their work).
  virtual dmlaResult_t barrier() = 0;
  // Host-side agreement (two-phase commits): all_ok[i] = 1 iff every rank passed ok[i] != 0.
  // ok and all_ok are host arrays of n bytes (may alias).
  virtual dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) = 0;
  // Waits (deadline) until the device work this communicator enqueued on stream finished.
  // Host communicators return at once.
  virtual dmlaResult_t wait(void* stream) = 0;

  // Collective, before any all_to_all of up to bytes a peer is captured or timed: lets a
  // communicator set up its buffers (the peer communicator's mailboxes). No-op by default.
  virtual dmlaResult_t reserve(size_t bytes) {
    (void)bytes;
    return dmlaSuccess;
  }

  // Collective: device memory of at least bytes on every rank that the group's other ranks read
  // directly, for the cross-rank combine's pull merge (kernels/peer_exchange.h). None by
  // default, nor where some rank cannot map its peers (the ranks agree): w->sync.world == 0. A
  // window stays mapped until the communicator goes (a larger request maps another), so what
  // an earlier call returned stays valid; windows are not for all_to_all's mailboxes.
  virtual dmlaResult_t reserve_window(size_t bytes, DeviceWindow* w) {
    (void)bytes;
    *w = DeviceWindow{};
    return dmlaSuccess;
  }

  // Sub-group of the ranks that pass the same color, ordered by key (collective; every rank
  // calls it). Throws distmla::Error on failure.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  // The communicator this one wraps for its bootstrap and fallback (the peer communicator's
  // NCCL one), or null: lets a benchmark time both transports on the same group.
  virtual Communicator* wrapped() { return nullptr; }
};

}  // namespace distmla::dist
