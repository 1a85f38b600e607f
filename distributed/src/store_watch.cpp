#include "distmla/dist/store_watch.h"

#include <string>
#include <vector>

#include "check.h"
#include "distmla/dist/error.h"

namespace distmla::dist {

namespace {
constexpr int kSliceMs = 2000;  // each parked wait; the watcher checks stop_ between them
}

StoreWatch::StoreWatch(const TcpStoreClient& store, int rank, const std::string& count_key)
    : alive_(store.clone()), watcher_(store.clone()), count_key_(count_key),
      done_key_("watch/" + std::to_string(rank) + "/done") {
  const std::string why = "rank " + std::to_string(rank) + ": its process ended without leaving the job (killed or "
                          "crashed)";
  throw_if_error(alive_->abort_on_disconnect(why, count_key_));
  thread_ = std::thread([this] { watch_loop(); });
}

StoreWatch::~StoreWatch() { finish(); }

std::string StoreWatch::reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reason_;
}

void StoreWatch::watch_loop() {
  for (;;) {
    const dmlaResult_t r = watcher_->wait(done_key_, kSliceMs);
    if (r == dmlaSuccess || stop_.load()) return;
    const std::string msg = last_error_message();
    // A slice that ended without news (the server's "not set within" reply), or a hiccup: wait
    // again. An abort, or a store that cannot be reached any more (its host, rank 0, is gone):
    // the job is over for this rank.
    const bool aborted = msg.find("store: aborted") != std::string::npos;
    const bool gone = msg.find("cannot connect") != std::string::npos;
    if (!aborted && !gone) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      reason_ = aborted ? msg : "the store is gone (" + msg + ")";
    }
    store_gone_.store(gone);
    cancel_.store(true);
    return;
  }
}

void StoreWatch::finish() {
  if (finished_) return;
  finished_ = true;
  stop_.store(true);
  if (!store_gone_.load()) {  // (else nothing to tell, and the watcher has returned)
    (void)alive_->abort_on_disconnect("", count_key_, kSliceMs);  // disarm
    (void)alive_->set(done_key_, std::vector<uint8_t>{}, kSliceMs);  // wakes the watcher
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace distmla::dist
