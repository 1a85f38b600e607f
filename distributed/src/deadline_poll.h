// Internal: deadline polling shared by the communicators and the store.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

namespace distmla::dist::detail {

using Clock = std::chrono::steady_clock;

inline Clock::time_point deadline_after_ms(int ms) {
  return Clock::now() + std::chrono::milliseconds(ms);
}

enum class PollEnd { kDone, kTimeout, kCancelled };

// Polls done() until it returns true, the deadline passes or *cancel (CommOptions::cancel, may be
// null) is set. Spins briefly, then sleeps a little, so oversubscribed ranks (more ranks than
// cores) still progress.
template <typename F>
PollEnd poll_until(Clock::time_point deadline, const std::atomic<bool>* cancel, F&& done) {
  for (int i = 0;; ++i) {
    if (done()) return PollEnd::kDone;
    if (cancel && cancel->load(std::memory_order_relaxed)) return PollEnd::kCancelled;
    if (Clock::now() > deadline) return done() ? PollEnd::kDone : PollEnd::kTimeout;
    if (i < 64)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(i < 1024 ? 20 : 200));
  }
}
// The same without a cancel flag; true when done.
template <typename F>
bool poll_until(Clock::time_point deadline, F&& done) {
  return poll_until(deadline, nullptr, done) == PollEnd::kDone;
}

}  // namespace distmla::dist::detail
