// Debugging aid of the pull merge (kernels/peer_exchange.h, PeerWindow::trace): with
// DISTMLA_PULL_TRACE=N in the environment a peer communicator keeps a ring of the last N merges'
// {epoch, start, peers ready, end} (this GPU's %globaltimer ns) and writes it, when it goes, to
// <DISTMLA_PULL_TRACE_FILE, default distmla_pull_trace>.rank<r>.txt; scripts/pull_trace.py
// splits the steps into decode, wait for the peers and merge, per rank. Off by default.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace distmla::dist::detail {

class PullTrace {
 public:
  // Null unless DISTMLA_PULL_TRACE is a positive count (or the buffer cannot be had).
  static std::unique_ptr<PullTrace> from_env() {
    const char* e = std::getenv("DISTMLA_PULL_TRACE");
    const long n = e ? std::strtol(e, nullptr, 10) : 0;
    if (n <= 0) return nullptr;
    auto t = std::unique_ptr<PullTrace>(new PullTrace(static_cast<int>(std::min(n, 1L << 22))));
    return t->dev_ ? std::move(t) : nullptr;
  }
  ~PullTrace() {
    if (dev_) cudaFree(dev_);
  }
  uint64_t* device() const { return dev_; }
  int length() const { return len_; }

  // After the device is idle: the records, by epoch.
  void write(int rank) const {
    std::vector<uint64_t> h(static_cast<size_t>(len_) * 4);
    if (cudaMemcpy(h.data(), dev_, h.size() * 8, cudaMemcpyDeviceToHost) != cudaSuccess) return;
    std::vector<const uint64_t*> rec;
    for (int i = 0; i < len_; ++i)
      if (h[4 * i] != 0) rec.push_back(&h[4 * i]);
    std::sort(rec.begin(), rec.end(), [](const uint64_t* a, const uint64_t* b) { return a[0] < b[0]; });
    const char* base = std::getenv("DISTMLA_PULL_TRACE_FILE");
    const std::string path = std::string(base ? base : "distmla_pull_trace") + ".rank" + std::to_string(rank) + ".txt";
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f) return;
    std::fprintf(f, "# rank %d: epoch start_ns ready_ns end_ns (this GPU's %%globaltimer)\n", rank);
    for (const uint64_t* r : rec)
      std::fprintf(f, "%llu %llu %llu %llu\n", static_cast<unsigned long long>(r[0]),
                   static_cast<unsigned long long>(r[1]), static_cast<unsigned long long>(r[2]),
                   static_cast<unsigned long long>(r[3]));
    std::fclose(f);
  }

 private:
  explicit PullTrace(int n) : len_(n) {
    if (cudaMalloc(reinterpret_cast<void**>(&dev_), static_cast<size_t>(n) * 32) != cudaSuccess ||
        cudaMemset(dev_, 0, static_cast<size_t>(n) * 32) != cudaSuccess) {
      if (dev_) cudaFree(dev_);
      dev_ = nullptr;
      (void)cudaGetLastError();
    }
  }
  uint64_t* dev_ = nullptr;
  int len_ = 0;
};

}  // namespace distmla::dist::detail
