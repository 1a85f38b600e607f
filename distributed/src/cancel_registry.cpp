#include "cancel_registry.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <vector>

namespace distmla::dist::detail {

namespace {
struct Registry {
  std::mutex mu;
  std::map<const std::atomic<bool>*, std::vector<Cancellable*>> live;  // not yet cancelled
};
Registry& registry() {
  static Registry r;
  return r;
}
}  // namespace

void register_cancellable(const std::atomic<bool>* flag, Cancellable* c) {
  if (!flag) return;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.live[flag].push_back(c);
}

void unregister_cancellable(const std::atomic<bool>* flag, Cancellable* c) {
  if (!flag) return;
  {
    Registry& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.live.find(flag);
    if (it != r.live.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), c), v.end());
      if (v.empty()) r.live.erase(it);
    }
  }
  if (!flag->load()) return;
  // a cancelled job: every communicator's kernels end before this teardown frees or waits
  c->stop_kernels();
  cancel_all(flag);
  c->abort_now();
}

void cancel_all(const std::atomic<bool>* flag) {
  if (!flag) return;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.live.find(flag);
  if (it == r.live.end()) return;
  std::vector<Cancellable*> v;
  v.swap(it->second);
  r.live.erase(it);
  for (Cancellable* c : v) c->stop_kernels();
  for (Cancellable* c : v) c->abort_now();
}

}  // namespace distmla::dist::detail
