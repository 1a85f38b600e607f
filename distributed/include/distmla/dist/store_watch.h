// Failure detection for a job bootstrapped through the TCP store, one watch a rank. It arms the
// store to abort the job if this process dies (a connection of its own that stays idle: the
// server sees it close), and a thread parked on the store turns an abort (another rank failed and
// aborted, or died) or the loss of the store itself into a flag for CommOptions::cancel, so that
// this rank leaves an NCCL or peer wait at once instead of at its timeout.
//   StoreWatch watch(store, rank, "exited");  // before the communicators
//   CommOptions opt; opt.cancel = watch.cancel();
//   ...; watch.finish();                      // a normal end, before counting out on "exited"
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "distmla/dist/tcp_store.h"

namespace distmla::dist {

class StoreWatch {
 public:
  // store: this rank's client (the watch opens two more on its server and prefix); count_key: the
  // counter the ranks count themselves out on, to which the store adds 1 for a rank that died.
  // Throws distmla::Error if the store cannot be reached.
  StoreWatch(const TcpStoreClient& store, int rank, const std::string& count_key);
  ~StoreWatch();  // finish()
  StoreWatch(const StoreWatch&) = delete;
  StoreWatch& operator=(const StoreWatch&) = delete;

  const std::atomic<bool>* cancel() const { return &cancel_; }  // for CommOptions::cancel
  bool cancelled() const { return cancel_.load(); }
  std::string reason() const;  // why the job ended, once cancelled() ("" before)
  // This rank leaves normally: disarms the abort on its disconnect and stops the watcher.
  void finish();

 private:
  void watch_loop();
  std::unique_ptr<TcpStoreClient> alive_;    // armed, idle: its close aborts the job
  std::unique_ptr<TcpStoreClient> watcher_;  // the thread's parked waits
  std::string count_key_, done_key_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> stop_{false};
  std::atomic<bool> store_gone_{false};
  mutable std::mutex mu_;
  std::string reason_;
  std::thread thread_;
  bool finished_ = false;
};

}  // namespace distmla::dist
