// Host communicator over the TCP store: each collective round writes this rank's pieces under
// "<round>/..." keys and reads the others' (get waits for them, with the deadline).
#include "distmla/dist/store_communicator.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "check.h"

namespace distmla::dist {

namespace {

class StoreCommunicator final : public Communicator {
 public:
  StoreCommunicator(std::unique_ptr<TcpStoreClient> store, int rank, int world, const CommOptions& opt)
      : store_(std::move(store)), rank_(rank), size_(world), opt_(opt) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace memory() const override { return MemSpace::kHost; }
  const char* backend_name() const override { return "store"; }

  dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void*) override {
    const std::string round = next_round("ag");
    if (bytes > 0 && (!send || !recv)) return set_error(dmlaErrorNullPointer, "store all_gather: null buffer");
    const uint8_t* s = static_cast<const uint8_t*>(send);
    if (auto r = store_->set(round + "/" + std::to_string(rank_), {s, s + bytes}, opt_.timeout_ms); r != dmlaSuccess)
      return r;
    for (int p = 0; p < size_; ++p)
      if (auto r = fetch(round + "/" + std::to_string(p), static_cast<uint8_t*>(recv) + p * bytes, bytes);
          r != dmlaSuccess)
        return r;
    return dmlaSuccess;
  }
  dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void*) override {
    const std::string round = next_round("a2a");
    if (bytes > 0 && (!send || !recv)) return set_error(dmlaErrorNullPointer, "store all_to_all: null buffer");
    const uint8_t* s = static_cast<const uint8_t*>(send);
    for (int p = 0; p < size_; ++p)
      if (auto r = store_->set(round + "/" + std::to_string(rank_) + "to" + std::to_string(p),
                               {s + p * bytes, s + (p + 1) * bytes}, opt_.timeout_ms);
          r != dmlaSuccess)
        return r;
    for (int p = 0; p < size_; ++p)
      if (auto r = fetch(round + "/" + std::to_string(p) + "to" + std::to_string(rank_),
                         static_cast<uint8_t*>(recv) + p * bytes, bytes);
          r != dmlaSuccess)
        return r;
    return dmlaSuccess;
  }
  dmlaResult_t broadcast(void* buf, size_t bytes, int root, void*) override {
    const std::string round = next_round("bc");
    if (root < 0 || root >= size_) return set_error(dmlaErrorInvalidArgument, "broadcast: root = " + std::to_string(root));
    if (bytes > 0 && !buf) return set_error(dmlaErrorNullPointer, "store broadcast: null buffer");
    uint8_t* b = static_cast<uint8_t*>(buf);
    if (rank_ == root) return store_->set(round, {b, b + bytes}, opt_.timeout_ms);
    return fetch(round, b, bytes);
  }
  dmlaResult_t barrier() override {
    uint8_t one = 1, all = 0;
    return agree(&one, &all, 1);
  }
  dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) override {
    if (n < 0) return set_error(dmlaErrorInvalidArgument, "agree: n = " + std::to_string(n));
    if (n > 0 && (!ok || !all_ok)) return set_error(dmlaErrorNullPointer, "agree: ok or all_ok is null");
    std::vector<uint8_t> mine(ok, ok + n), all(static_cast<size_t>(n) * size_);
    if (auto r = all_gather(mine.data(), all.data(), n, nullptr); r != dmlaSuccess) return r;
    for (int i = 0; i < n; ++i) {
      uint8_t v = 1;
      for (int p = 0; p < size_; ++p) v = v && all[static_cast<size_t>(p) * n + i];
      all_ok[i] = v;
    }
    return dmlaSuccess;
  }
  dmlaResult_t wait(void*) override { return dmlaSuccess; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (color < 0) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "split: color = " + std::to_string(color));
    int mine[3] = {color, key, rank_};
    std::vector<int> all(3 * static_cast<size_t>(size_));
    const int round = rounds_;  // the all_gather below takes this round number
    throw_if_error(all_gather(mine, all.data(), sizeof(mine), nullptr));
    std::vector<std::pair<int, int>> members;  // (key, rank) of my color
    for (int p = 0; p < size_; ++p)
      if (all[3 * p] == color) members.push_back({all[3 * p + 1], all[3 * p + 2]});
    std::sort(members.begin(), members.end());
    int sub_rank = 0;
    for (size_t i = 0; i < members.size(); ++i)
      if (members[i].second == rank_) sub_rank = static_cast<int>(i);
    auto sub = store_->scoped("split" + std::to_string(round) + "c" + std::to_string(color));
    return std::make_unique<StoreCommunicator>(std::move(sub), sub_rank, static_cast<int>(members.size()), opt_);
  }

 private:
  std::string next_round(const char* what) { return "r" + std::to_string(rounds_++) + what; }
  dmlaResult_t fetch(const std::string& key, uint8_t* dst, size_t bytes) {
    std::vector<uint8_t> v;
    if (auto r = store_->get(key, &v, opt_.timeout_ms); r != dmlaSuccess) return r;
    if (v.size() != bytes)
      return set_error(dmlaErrorComm, "store communicator: key '" + key + "' holds " + std::to_string(v.size()) +
                                          " bytes, expected " + std::to_string(bytes) + " (ranks disagree)");
    if (bytes) std::memcpy(dst, v.data(), bytes);
    return dmlaSuccess;
  }

  std::unique_ptr<TcpStoreClient> store_;
  int rank_, size_;
  CommOptions opt_;
  int rounds_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_store_communicator(const TcpStoreClient& store, int rank, int world,
                                                      const CommOptions& opt) {
  if (world < 1) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_store_communicator: world = " + std::to_string(world));
  if (rank < 0 || rank >= world)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_store_communicator: rank = " + std::to_string(rank) +
                                                 " (world " + std::to_string(world) + ")");
  if (opt.timeout_ms <= 0)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "CommOptions::timeout_ms = " + std::to_string(opt.timeout_ms));
  return std::make_unique<StoreCommunicator>(store.scoped("comm"), rank, world, opt);
}

}  // namespace distmla::dist
