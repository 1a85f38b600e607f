// Communicator over device buffers on NCCL: non-blocking communicators, every possibly
// in-progress call polled against the deadline, abort on timeout.
#include "distmla/dist/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cancel_registry.h"
#include "check.h"
#include "deadline_poll.h"
#include "device_guard.h"
#include "distmla/dist/tcp_store.h"

namespace distmla::dist {

static_assert(sizeof(ncclUniqueId) == sizeof(NcclId), "ncclUniqueId size changed");

void nccl_disable_nvls_default() { setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0); }

namespace {

#define NCCL_RET(call)                                                                              \
  do {                                                                                              \
    ncclResult_t e_ = (call);                                                                       \
    if (e_ != ncclSuccess && e_ != ncclInProgress)                                                  \
      return set_error(dmlaErrorComm, DMLA_DIST_WHERE + ": " #call ": " + ncclGetErrorString(e_) + \
                                          " (" + ncclGetLastError(nullptr) + ")");                  \
  } while (0)

using detail::DeviceGuard;

// For a poll that did not end in kDone: on a cancel every communicator of the flag is ended
// (cancel_all: this one too if it is registered, which sets *aborted), on a deadline this one;
// comm is aborted here unless that already happened (one not registered: init, split, finalize).
// The error names the deadline or the cancel.
dmlaResult_t abort_for(ncclComm_t comm, detail::PollEnd end, const CommOptions& opt, const std::string& what,
                       bool* aborted) {
  if (end == detail::PollEnd::kCancelled) detail::cancel_all(opt.cancel);
  if (!*aborted) ncclCommAbort(comm);
  *aborted = true;
  if (end == detail::PollEnd::kCancelled)
    return set_error(dmlaErrorComm, "nccl " + what + ": cancelled (CommOptions::cancel; communicator aborted)");
  return set_error(dmlaErrorTimeout, "nccl " + what + ": not done after " + std::to_string(opt.timeout_ms) +
                                         " ms (communicator aborted)");
}

// Polls a non-blocking communicator until its pending operation left ncclInProgress. aborted:
// the communicator's flag (null for one not registered yet: init, split, teardown), set when it
// had to be aborted (deadline or cancel).
dmlaResult_t settle(ncclComm_t comm, const CommOptions& opt, const char* what, bool* aborted = nullptr) {
  ncclResult_t state = ncclInProgress;
  const detail::PollEnd end = detail::poll_until(detail::deadline_after_ms(opt.timeout_ms), opt.cancel, [&] {
    if (ncclCommGetAsyncError(comm, &state) != ncclSuccess) return true;
    return state != ncclInProgress;
  });
  if (end != detail::PollEnd::kDone) {
    bool local = false;
    return abort_for(comm, end, opt, what, aborted ? aborted : &local);
  }
  if (state != ncclSuccess)
    return set_error(dmlaErrorComm, std::string("nccl ") + what + ": " + ncclGetErrorString(state));
  return dmlaSuccess;
}

class NcclCommunicator final : public Communicator, detail::Cancellable {
 public:
  NcclCommunicator(ncclComm_t comm, int device, const CommOptions& opt) : comm_(comm), device_(device), opt_(opt) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
    DeviceGuard g(device_);
    DMLA_DIST_CUDA_THROW(cudaStreamCreateWithFlags(&internal_, cudaStreamNonBlocking));
    detail::register_cancellable(opt_.cancel, this);
  }

  ~NcclCommunicator() override {
    detail::unregister_cancellable(opt_.cancel, this);  // a cancelled job: aborts this one and the others
    {
      DeviceGuard g(device_);
      if (scratch_) cudaFree(scratch_);
      if (internal_) cudaStreamDestroy(internal_);
    }
    if (!comm_) return;
    if (aborted_) return;
    // Teardown with a deadline: finalize (non-blocking), then destroy; abort if it hangs.
    const ncclResult_t f = ncclCommFinalize(comm_);
    if (f != ncclSuccess && f != ncclInProgress) {
      ncclCommAbort(comm_);
      return;
    }
    if (settle(comm_, opt_, "finalize") != dmlaSuccess) return;  // settle aborted it (not registered now)
    ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace memory() const override { return MemSpace::kDevice; }
  const char* backend_name() const override { return "nccl"; }

  dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void* stream) override {
    if (auto r = usable(send, recv, bytes, "all_gather"); r != dmlaSuccess) return r;
    NCCL_RET(ncclAllGather(send, recv, bytes, ncclUint8, comm_, static_cast<cudaStream_t>(stream)));
    return settle(comm_, opt_, "all_gather", &aborted_);
  }
  dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void* stream) override {
    if (auto r = usable(send, recv, bytes, "all_to_all"); r != dmlaSuccess) return r;
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    NCCL_RET(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      NCCL_RET(ncclSend(static_cast<const char*>(send) + p * bytes, bytes, ncclUint8, p, comm_, st));
      NCCL_RET(ncclRecv(static_cast<char*>(recv) + p * bytes, bytes, ncclUint8, p, comm_, st));
    }
    NCCL_RET(ncclGroupEnd());
    return settle(comm_, opt_, "all_to_all", &aborted_);
  }
  dmlaResult_t broadcast(void* buf, size_t bytes, int root, void* stream) override {
    if (auto r = usable(buf, buf, bytes, "broadcast"); r != dmlaSuccess) return r;
    if (root < 0 || root >= size_)
      return set_error(dmlaErrorInvalidArgument, "broadcast: root = " + std::to_string(root));
    NCCL_RET(ncclBroadcast(buf, buf, bytes, ncclUint8, root, comm_, static_cast<cudaStream_t>(stream)));
    return settle(comm_, opt_, "broadcast", &aborted_);
  }
  dmlaResult_t barrier() override {
    uint8_t one = 1, all = 0;
    return agree(&one, &all, 1);
  }
  dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) override {
    if (n < 0) return set_error(dmlaErrorInvalidArgument, "agree: n = " + std::to_string(n));
    if (n == 0) return dmlaSuccess;
    if (!ok || !all_ok) return set_error(dmlaErrorNullPointer, "agree: ok or all_ok is null");
    if (auto r = usable(ok, all_ok, 0, "agree"); r != dmlaSuccess) return r;
    DeviceGuard g(device_);
    if (scratch_bytes_ < static_cast<size_t>(n)) {  // host path (append), not the decode step
      if (scratch_) cudaFree(scratch_);
      scratch_ = nullptr;
      DMLA_DIST_CUDA_RET(cudaMalloc(&scratch_, n));
      scratch_bytes_ = n;
    }
    std::vector<uint8_t> in(ok, ok + n);
    for (auto& v : in) v = v ? 1 : 0;
    DMLA_DIST_CUDA_RET(cudaMemcpyAsync(scratch_, in.data(), n, cudaMemcpyHostToDevice, internal_));
    NCCL_RET(ncclAllReduce(scratch_, scratch_, n, ncclUint8, ncclMin, comm_, internal_));
    if (auto r = settle(comm_, opt_, "agree", &aborted_); r != dmlaSuccess) return r;
    // The reduction done first, under the deadline and the cancel: a copy into pageable memory
    // returns only when it is, so behind a reduction waiting for a dead rank it would never return.
    if (auto r = wait(internal_); r != dmlaSuccess) return r;
    DMLA_DIST_CUDA_RET(cudaMemcpyAsync(all_ok, scratch_, n, cudaMemcpyDeviceToHost, internal_));
    return wait(internal_);
  }
  dmlaResult_t wait(void* stream) override {
    if (aborted_) return set_error(dmlaErrorComm, "nccl: communicator was aborted");
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t q = cudaErrorNotReady;
    ncclResult_t state = ncclSuccess;
    const detail::PollEnd end = detail::poll_until(detail::deadline_after_ms(opt_.timeout_ms), opt_.cancel, [&] {
      q = cudaStreamQuery(st);
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || (state != ncclSuccess && state != ncclInProgress))
        return true;
      return q != cudaErrorNotReady;
    });
    if (state != ncclSuccess && state != ncclInProgress) {
      ncclCommAbort(comm_);
      aborted_ = true;
      return set_error(dmlaErrorComm, std::string("nccl wait: ") + ncclGetErrorString(state) + " (communicator aborted)");
    }
    if (end != detail::PollEnd::kDone) return abort_for(comm_, end, opt_, "wait (stream)", &aborted_);
    if (q != cudaSuccess)
      return set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": cudaStreamQuery: " + cudaGetErrorString(q));
    return dmlaSuccess;
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (aborted_) DMLA_DIST_FAIL(dmlaErrorComm, "nccl split: communicator was aborted");
    if (color < 0) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "split: color = " + std::to_string(color));
    DeviceGuard g(device_);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    // NCCL shares a parent's resources and abort flag with the groups split from it when the
    // parent was made with splitShare (the world communicator is, and so is every group, for its
    // own splits): aborting any communicator of the family then stops the kernels of all of them
    // before anything is freed (CommOptions::cancel: cancel_registry.h).
    config.splitShare = 1;
    ncclComm_t sub = nullptr;
    ncclResult_t r = ncclCommSplit(comm_, color, key, &sub, &config);
    if (r != ncclSuccess && r != ncclInProgress)
      DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": ncclCommSplit: " + ncclGetErrorString(r));
    throw_if_error(settle(comm_, opt_, "split (parent)", &aborted_));
    if (!sub) DMLA_DIST_FAIL(dmlaErrorComm, "nccl split: no communicator for color " + std::to_string(color));
    throw_if_error(settle(sub, opt_, "split"));
    return std::make_unique<NcclCommunicator>(sub, device_, opt_);
  }

 private:
  void abort_now() override {
    if (aborted_) return;
    ncclCommAbort(comm_);
    aborted_ = true;
  }
  dmlaResult_t usable(const void* a, const void* b, size_t bytes, const char* what) {
    if (aborted_) return set_error(dmlaErrorComm, std::string("nccl ") + what + ": communicator was aborted");
    if (bytes > 0 && (!a || !b)) return set_error(dmlaErrorNullPointer, std::string("nccl ") + what + ": null buffer");
    return dmlaSuccess;
  }

  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  CommOptions opt_;
  int rank_ = 0, size_ = 1;
  bool aborted_ = false;
  cudaStream_t internal_ = nullptr;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

}  // namespace

NcclId nccl_unique_id() {
  nccl_disable_nvls_default();
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": ncclGetUniqueId: " + ncclGetErrorString(r));
  NcclId out;
  std::memcpy(out.bytes, &id, sizeof(id));
  return out;
}

std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int world, int device,
                                                     const CommOptions& opt) {
  nccl_disable_nvls_default();
  if (world < 1) DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_nccl_communicator: world = " + std::to_string(world));
  if (rank < 0 || rank >= world)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_nccl_communicator: rank = " + std::to_string(rank) +
                                                 " (world " + std::to_string(world) + ")");
  if (opt.timeout_ms <= 0)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "CommOptions::timeout_ms = " + std::to_string(opt.timeout_ms));
  int count = 0;
  DMLA_DIST_CUDA_THROW(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count)
    DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_nccl_communicator: device = " + std::to_string(device) + " (" +
                                                 std::to_string(count) + " devices)");
  DeviceGuard g(device);
  ncclUniqueId uid;
  std::memcpy(&uid, id.bytes, sizeof(uid));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  config.splitShare = 1;  // the groups split from it share its abort flag (see split())
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, world, uid, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress)
    DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": ncclCommInitRankConfig: " + ncclGetErrorString(r));
  throw_if_error(settle(comm, opt, "init"));
  return std::make_unique<NcclCommunicator>(comm, device, opt);
}

std::unique_ptr<Communicator> make_nccl_communicator_mpi(MPI_Comm comm, int device, const CommOptions& opt) {
  int rank = 0, world = 1;
  if (MPI_Comm_rank(comm, &rank) != MPI_SUCCESS || MPI_Comm_size(comm, &world) != MPI_SUCCESS)
    DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": MPI_Comm_rank/size failed");
  NcclId id{};
  if (rank == 0) id = nccl_unique_id();
  MPI_Request req;
  if (MPI_Ibcast(id.bytes, sizeof(id.bytes), MPI_BYTE, 0, comm, &req) != MPI_SUCCESS)
    DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": MPI_Ibcast of the NCCL id failed");
  int done = 0;
  detail::poll_until(detail::deadline_after_ms(opt.timeout_ms), [&] {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    return done != 0;
  });
  if (!done)
    DMLA_DIST_FAIL(dmlaErrorTimeout, "make_nccl_communicator_mpi: NCCL id broadcast not done after " +
                                         std::to_string(opt.timeout_ms) + " ms");
  return make_nccl_communicator(id, rank, world, device, opt);
}

std::unique_ptr<Communicator> make_nccl_communicator_store(TcpStoreClient& store, const std::string& key, int rank,
                                                           int world, int device, const CommOptions& opt) {
  NcclId id{};
  if (rank == 0) {
    id = nccl_unique_id();
    throw_if_error(store.set(key, std::vector<uint8_t>(id.bytes, id.bytes + sizeof(id.bytes)), opt.timeout_ms));
  } else {
    std::vector<uint8_t> v;
    throw_if_error(store.get(key, &v, opt.timeout_ms));
    if (v.size() != sizeof(id.bytes))
      DMLA_DIST_FAIL(dmlaErrorComm, "make_nccl_communicator_store: key '" + key + "' holds " +
                                        std::to_string(v.size()) + " bytes, not an NCCL id");
    std::memcpy(id.bytes, v.data(), v.size());
  }
  return make_nccl_communicator(id, rank, world, device, opt);
}

}  // namespace distmla::dist
