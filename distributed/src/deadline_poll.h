// Internal: deadline polling shared by the communicators and the store.
#pragma once

#include <chrono>
#include <thread>

namespace distmla::dist::detail {

using Clock = std::chrono::steady_clock;

inline Clock::time_point deadline_after_ms(int ms) {
  return Clock::now() + std::chrono::milliseconds(ms);
}

// Polls done() until it returns true or the deadline passes. Spins briefly, then sleeps a
// little, so oversubscribed ranks (more ranks than cores) still progress. Returns done's
// last value.
template <typename F>
bool poll_until(Clock::time_point deadline, F&& done) {
  for (int i = 0;; ++i) {
    if (done()) return true;
    if (Clock::now() > deadline) return done();
    if (i < 64)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(i < 1024 ? 20 : 200));
  }
}

}  // namespace distmla::dist::detail
