// Internal: the communicators that share one CommOptions::cancel flag (a world communicator and
// those split from it), so that a wait that sees the flag ends them all: a kernel of a group's
// collective can still spin for a dead peer while the host waits on another communicator.
#pragma once

#include <atomic>

namespace distmla::dist::detail {

// Two steps, because freeing a communicator synchronises the device, which waits for every kernel
// still spinning for a dead peer, another communicator's included: first every communicator of
// the flag stops its kernels (peer: the failed words its waits poll), then each is aborted
// (NCCL: ncclCommAbort; the communicators split from one share its abort flag, splitShare,
// so the first abort stops every NCCL kernel of the family before anything is freed). Both may be
// called more than once (cancel_all, then the communicator's own unregistering), so they are
// idempotent, and they make no registry calls (cancel_all holds its lock).
class Cancellable {
 public:
  virtual ~Cancellable() = default;
  virtual void stop_kernels() {}
  virtual void abort_now() {}
};

// Register in the constructor, unregister first thing in the destructor (no-ops for a null flag).
// Unregistering when the flag is already set also ends the job's communicators before this one's
// teardown frees anything: c->stop_kernels(), cancel_all(flag) for the others, c->abort_now().
void register_cancellable(const std::atomic<bool>* flag, Cancellable* c);
void unregister_cancellable(const std::atomic<bool>* flag, Cancellable* c);
// stop_kernels(), then abort_now(), of every communicator registered on flag (each once).
void cancel_all(const std::atomic<bool>* flag);

}  // namespace distmla::dist::detail
