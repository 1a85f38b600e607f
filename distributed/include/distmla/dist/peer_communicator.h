// Communicator whose all_to_all goes GPU to GPU through CUDA IPC mailboxes (kernels/
// peer_exchange.h): one kernel, no NCCL proxy, for CP groups whose GPUs reach each other (NVLink
// peers, or ranks sharing one GPU). Everything else, and the bootstrap of the mailboxes (their
// IPC handles are all-gathered once, in reserve()), goes through the wrapped communicator `base`,
// whose memory space it reports; an all_to_all it cannot serve (larger than reserved, not a
// multiple of 16 bytes, before reserve(), or when some rank could not map a peer's mailbox: the
// ranks agree) falls back to base. send and recv must be 16-byte aligned. Waits have the deadline of CommOptions; a missed one inside the kernel
// makes wait() return dmlaErrorTimeout naming the peer, and the communicator refuses further
// exchanges (like an aborted NCCL communicator).
// reserve_window maps the pull merge's windows (kernels/peer_exchange.h) the same way.
// A captured all_to_all holds the mailboxes' addresses: destroy such graph execs before the
// communicator, and capture after the last reserve() (one that grows the mailboxes replaces them).
// The calls of one communicator must run one after the other on the device (one stream, or
// streams ordered by events), in the same order on every rank: they share the counters.
#pragma once

#include <memory>

#include "distmla/dist/communicator.h"

namespace distmla::dist {

// device: this rank's CUDA device. base: any communicator of the group (NCCL in production; the
// MPI one works for the bootstrap, e.g. several ranks on one GPU, where NCCL refuses).
std::unique_ptr<Communicator> make_peer_communicator(std::unique_ptr<Communicator> base, int device,
                                                     const CommOptions& opt = {});

}  // namespace distmla::dist
