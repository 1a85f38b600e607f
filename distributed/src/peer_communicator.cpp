// Peer all-to-all over CUDA IPC mailboxes; the rest delegated to the wrapped communicator.
#include "distmla/dist/peer_communicator.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cancel_registry.h"
#include "check.h"
#include "deadline_poll.h"
#include "device_guard.h"
#include "distmla/kernels/peer_exchange.h"
#include "pull_trace.h"

namespace distmla::dist {
namespace {

using detail::DeviceGuard;

class PeerCommunicator final : public Communicator, detail::Cancellable {
 public:
  PeerCommunicator(std::unique_ptr<Communicator> base, int device, const CommOptions& opt)
      : base_(std::move(base)), device_(device), opt_(opt) {
    if (!base_) DMLA_DIST_FAIL(dmlaErrorNullPointer, "make_peer_communicator: base is null");
    if (opt_.timeout_ms <= 0)
      DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "CommOptions::timeout_ms = " + std::to_string(opt_.timeout_ms));
    set_name(std::string("peer+") + base_->backend_name());
    DeviceGuard g(device_);
    DMLA_DIST_CUDA_THROW(cudaHostAlloc(reinterpret_cast<void**>(&err_host_), sizeof(unsigned), cudaHostAllocMapped));
    *err_host_ = 0;
    DMLA_DIST_CUDA_THROW(cudaHostGetDevicePointer(reinterpret_cast<void**>(&err_dev_), err_host_, 0));
    DMLA_DIST_CUDA_THROW(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    detail::register_cancellable(opt_.cancel, this);
  }
  ~PeerCommunicator() override {
    detail::unregister_cancellable(opt_.cancel, this);  // a cancelled job: stops this one's kernels and the others'
    release();
    DeviceGuard g(device_);
    if (side_) cudaStreamDestroy(side_);
    if (err_host_) cudaFreeHost(err_host_);
  }

  int rank() const override { return base_->rank(); }
  int size() const override { return base_->size(); }
  MemSpace memory() const override { return base_->memory(); }
  // Also says why the peer path or the pull merge's window is off, where one is.
  const char* backend_name() const override { return shown_name_.c_str(); }

  dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void* stream) override {
    return base_->all_gather(send, recv, bytes, stream);
  }
  dmlaResult_t broadcast(void* buf, size_t bytes, int root, void* stream) override {
    return base_->broadcast(buf, bytes, root, stream);
  }
  dmlaResult_t barrier() override { return base_->barrier(); }
  dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) override { return base_->agree(ok, all_ok, n); }
  std::unique_ptr<Communicator> split(int color, int key) override {
    return std::make_unique<PeerCommunicator>(base_->split(color, key), device_, opt_);
  }
  Communicator* wrapped() override { return base_.get(); }

  dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void* stream) override {
    if (auto r = failed(); r != dmlaSuccess) return r;
    // Only conditions every rank shares choose the path (a rank alone on NCCL would leave the
    // others waiting); a misaligned buffer is an error, not a fallback.
    if (((reinterpret_cast<uintptr_t>(send) | reinterpret_cast<uintptr_t>(recv)) & 15u) != 0)
      return set_error(dmlaErrorInvalidArgument, "peer all_to_all: send and recv must be 16-byte aligned");
    if (!ready_ || bytes > slot_ || bytes % 16 != 0) {
      if (base_->memory() != MemSpace::kDevice)
        return set_error(dmlaErrorInvalidArgument,
                         "peer all_to_all: bytes = " + std::to_string(bytes) + " (reserved " + std::to_string(slot_) +
                             ", multiples of 16) cannot take the peer path, and the base " +
                             "communicator (" + base_->backend_name() + ") works on host buffers");
      return base_->all_to_all(send, recv, bytes, stream);
    }
    if (bytes > 0 && (!send || !recv)) return set_error(dmlaErrorNullPointer, "peer all_to_all: null buffer");
    kernels::PeerExchangeArgs a;
    a.world = size();
    a.rank = rank();
    a.send = send;
    a.recv = recv;
    a.bytes = bytes;
    a.slot_bytes = slot_;
    const size_t cb = kernels::peer_ctrl_bytes(size());
    for (int p = 0; p < size(); ++p) {
      a.ctrl[p] = reinterpret_cast<uint64_t*>(mail_.at[p]);
      a.mail[p] = mail_.at[p] + cb;
    }
    a.error = err_dev_;
    a.timeout_ns = static_cast<uint64_t>(opt_.timeout_ms) * 1000000ull;
    DeviceGuard g(device_);
    DMLA_DIST_CUDA_RET(kernels::peer_all_to_all(a, static_cast<cudaStream_t>(stream)));
    return dmlaSuccess;
  }

  dmlaResult_t wait(void* stream) override {
    if (auto r = failed(); r != dmlaSuccess) return r;
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t q = cudaErrorNotReady;
    // The kernel's own deadline (timeout_ms from its first unmet wait, after its launch and its
    // pushes) names the rank it waited for; the host waits longer so that the kernel's verdict
    // arrives first (with equal deadlines the host won the race on a fresh 2-GPU machine, run D13).
    const int host_ms = opt_.timeout_ms + std::max(100, opt_.timeout_ms / 4);
    const detail::PollEnd end = detail::poll_until(detail::deadline_after_ms(host_ms), opt_.cancel, [&] {
      q = cudaStreamQuery(st);
      return q != cudaErrorNotReady || error_word() != 0;
    });
    if (end == detail::PollEnd::kCancelled) {
      detail::cancel_all(opt_.cancel);  // this one's kernels (stop_kernels) and every other communicator's
      // They leave their waits now; give them a moment so that the teardown does not wait for them.
      detail::poll_until(detail::deadline_after_ms(1000), [&] { return cudaStreamQuery(st) != cudaErrorNotReady; });
    }
    if (auto r = failed(); r != dmlaSuccess) return r;
    if (end != detail::PollEnd::kDone)
      return set_error(dmlaErrorTimeout, "peer wait: stream not done after " + std::to_string(host_ms) + " ms");
    if (q != cudaSuccess)
      return set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": cudaStreamQuery: " + cudaGetErrorString(q));
    return base_->memory() == MemSpace::kDevice ? base_->wait(stream) : dmlaSuccess;
  }

  // Collective: (re)creates the mailboxes for up to bytes a peer and maps every peer's. The
  // ranks agree whether all of them mapped all peers; if not, all_to_all stays on base.
  dmlaResult_t reserve(size_t bytes) override {
    if (auto r = failed(); r != dmlaSuccess) return r;
    bytes = (bytes + 15) & ~size_t(15);
    if (ready_ && bytes <= slot_) return dmlaSuccess;
    if (size() > kernels::kMaxPeers) return dmlaSuccess;  // base serves (same decision on every rank)
    DeviceGuard g(device_);
    if (auto r = release_checked(); r != dmlaSuccess) return r;
    std::string why;
    if (auto r = map_group(kernels::peer_ctrl_bytes(size()), size() * bytes, &mail_, &why); r != dmlaSuccess) return r;
    if (!mail_.mine) {  // stay on base; backend_name() says why
      set_name(std::string(base_->backend_name()) + " (peer path off: " + why + ")");
      return dmlaSuccess;
    }
    set_name(std::string("peer+") + base_->backend_name());
    slot_ = bytes;
    ready_ = true;
    return dmlaSuccess;
  }

  // Collective: the newest window if it is large enough, else a new one (the older ones stay
  // mapped for whoever holds them).
  dmlaResult_t reserve_window(size_t bytes, DeviceWindow* w) override {
    *w = DeviceWindow{};
    if (auto r = failed(); r != dmlaSuccess) return r;
    if (size() > kernels::kMaxPeers) {
      set_window_note("more than " + std::to_string(kernels::kMaxPeers) + " ranks");
      return dmlaSuccess;
    }
    bytes = std::max<size_t>((bytes + 255) & ~size_t(255), 256);
    if (windows_.empty() || windows_.back().bytes < bytes) {
      DeviceGuard g(device_);
      Mapping m;
      std::string why;
      if (auto r = map_group(kernels::peer_window_ctrl_bytes(size()), bytes, &m, &why); r != dmlaSuccess) return r;
      if (!m.mine) {  // no window on any rank: the decoder keeps exchange + merge; backend_name() says why
        set_window_note(why);
        return dmlaSuccess;
      }
      set_window_note("");
      windows_.push_back(std::move(m));
      if (!trace_) trace_ = detail::PullTrace::from_env();
    }
    const Mapping& m = windows_.back();
    const size_t cb = kernels::peer_window_ctrl_bytes(size());
    w->sync.world = size();
    w->sync.rank = rank();
    w->sync.error = err_dev_;
    w->sync.timeout_ns = static_cast<uint64_t>(opt_.timeout_ms) * 1000000ull;
    if (trace_) {
      w->sync.trace = trace_->device();
      w->sync.trace_len = trace_->length();
    }
    for (int p = 0; p < size(); ++p) {
      w->sync.ctrl[p] = reinterpret_cast<uint64_t*>(m.at[p]);
      w->at[p] = m.at[p] + cb;
    }
    return dmlaSuccess;
  }

 private:
  unsigned error_word() const { return *reinterpret_cast<volatile unsigned*>(err_host_); }
  dmlaResult_t failed() const {
    const unsigned v = error_word();
    if (v == 0) return dmlaSuccess;
    if ((v & 0xff00u) == kernels::kPeerErrCancelled)
      return set_error(dmlaErrorComm, "peer exchange: cancelled (CommOptions::cancel; the communicator refuses "
                                      "further exchanges)");
    const unsigned peer = v & 0xffu;
    const bool freeing = (v & 0xff00u) == kernels::kPeerErrFreeTimeout;
    return set_error(dmlaErrorTimeout, "peer exchange: rank " + std::to_string(rank()) + " waited more than " +
                                           std::to_string(opt_.timeout_ms) + " ms for rank " + std::to_string(peer) +
                                           (freeing ? " to free its mailbox slot (or stop reading its window)"
                                                    : " to deliver its chunk") +
                                           " (the communicator refuses further exchanges)");
  }
  // CommOptions::cancel: sets the error word and this rank's failed words (its mailbox's and its
  // windows' control blocks), which every kernel wait polls, so that no kernel keeps waiting for a
  // peer that is gone (and the teardown for it) until its own deadline.
  void stop_kernels() override {
    if (error_word() == 0) *reinterpret_cast<volatile unsigned*>(err_host_) = kernels::kPeerErrCancelled;
    static const uint64_t code = kernels::kPeerErrCancelled;
    DeviceGuard g(device_);
    auto put = [&](char* ctrl, size_t at) {
      if (ctrl) (void)cudaMemcpyAsync(ctrl + at, &code, sizeof(code), cudaMemcpyHostToDevice, side_);
    };
    put(mail_.mine, kernels::peer_ctrl_failed_offset(size()));
    for (Mapping& m : windows_) put(m.mine, kernels::peer_window_failed_offset(size()));
    (void)cudaStreamSynchronize(side_);
  }
  // One allocation on every rank (zeroed counters, then bytes), every peer's mapped here.
  struct Mapping {
    char* mine = nullptr;
    std::vector<char*> at;  // every rank's as mapped here (mine at rank())
    size_t bytes = 0;       // past the counters
  };
  // Collective. m->mine stays null (and why says why) when some rank could not map a peer's.
  dmlaResult_t map_group(size_t ctrl_bytes, size_t bytes, Mapping* m, std::string* why) {
    const dmlaResult_t r = try_map(ctrl_bytes, bytes, m, why);
    if (r != dmlaSuccess) unmap(m);
    return r;
  }
  dmlaResult_t try_map(size_t ctrl_bytes, size_t bytes, Mapping* m, std::string* why) {
    const int world = size(), me = rank();
    DMLA_DIST_CUDA_RET(cudaMalloc(reinterpret_cast<void**>(&m->mine), ctrl_bytes + bytes));
    DMLA_DIST_CUDA_RET(cudaMemset(m->mine, 0, ctrl_bytes));
    DMLA_DIST_CUDA_RET(cudaDeviceSynchronize());  // zeroed before any peer can see the handle
    cudaIpcMemHandle_t h;
    DMLA_DIST_CUDA_RET(cudaIpcGetMemHandle(&h, m->mine));
    std::vector<cudaIpcMemHandle_t> all(world);
    if (auto r = gather_handles(h, all.data()); r != dmlaSuccess) return r;
    m->at.assign(world, nullptr);
    m->at[me] = m->mine;
    m->bytes = bytes;
    uint8_t ok = 1;
    for (int p = 0; p < world; ++p) {
      if (p == me) continue;
      void* ptr = nullptr;
      const cudaError_t e = cudaIpcOpenMemHandle(&ptr, all[p], cudaIpcMemLazyEnablePeerAccess);
      if (e != cudaSuccess) {
        (void)cudaGetLastError();
        ok = 0;
        *why = "peer " + std::to_string(p) + ": " + cudaGetErrorString(e);
        continue;
      }
      m->at[p] = static_cast<char*>(ptr);
    }
    uint8_t all_ok = 0;
    if (auto r = base_->agree(&ok, &all_ok, 1); r != dmlaSuccess) return r;
    if (!all_ok) {
      if (ok) *why = "another rank could not map its peers";
      unmap(m);
    }
    return dmlaSuccess;
  }
  void unmap(Mapping* m) {
    for (char* p : m->at)
      if (p && p != m->mine) cudaIpcCloseMemHandle(p);
    if (m->mine) cudaFree(m->mine);
    *m = Mapping{};
  }
  // Everything enqueued is done (the kernels' own deadlines bound it), every rank got here, then
  // the mailboxes (all = also the windows) go.
  dmlaResult_t release_checked(bool all = false) {
    if (!mail_.mine && (!all || windows_.empty())) return dmlaSuccess;
    dmlaResult_t r = dmlaSuccess;
    if (cudaDeviceSynchronize() != cudaSuccess) r = set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": cudaDeviceSynchronize");
    if (r == dmlaSuccess) r = base_->barrier();
    unmap(&mail_);
    ready_ = false;
    slot_ = 0;
    if (all) {
      for (Mapping& m : windows_) unmap(&m);
      windows_.clear();
      if (trace_) trace_->write(rank());
      trace_.reset();
    }
    return r;
  }
  void release() {
    DeviceGuard g(device_);
    (void)release_checked(true);
  }
  // All-gather of the 64-byte IPC handles through base, in its memory space.
  dmlaResult_t gather_handles(const cudaIpcMemHandle_t& h, cudaIpcMemHandle_t* all) {
    const size_t n = sizeof(cudaIpcMemHandle_t);
    if (base_->memory() == MemSpace::kHost) return base_->all_gather(&h, all, n, nullptr);
    char* d = nullptr;
    cudaStream_t st = nullptr;
    DMLA_DIST_CUDA_RET(cudaMalloc(reinterpret_cast<void**>(&d), n * (size() + 1)));
    dmlaResult_t r = dmlaSuccess;
    if (cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMemcpy(d, &h, n, cudaMemcpyHostToDevice) != cudaSuccess)
      r = set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": staging the IPC handle");
    if (r == dmlaSuccess) r = base_->all_gather(d, d + n, n, st);
    if (r == dmlaSuccess) r = base_->wait(st);
    if (r == dmlaSuccess && cudaMemcpy(all, d + n, n * size(), cudaMemcpyDeviceToHost) != cudaSuccess)
      r = set_error(dmlaErrorCuda, DMLA_DIST_WHERE + ": fetching the IPC handles");
    if (st) cudaStreamDestroy(st);
    cudaFree(d);
    return r;
  }

  std::unique_ptr<Communicator> base_;
  int device_ = 0;
  CommOptions opt_;
  std::string name_;         // the exchange path: peer+base, or base and why not peer
  std::string window_note_;  // why the newest window request got none ("" if it got one)
  std::string shown_name_;   // name_ and window_note_, as backend_name() shows them
  void set_name(std::string n) {
    name_ = std::move(n);
    shown_name_ = window_note_.empty() ? name_ : name_ + " (pull merge off: " + window_note_ + ")";
  }
  void set_window_note(std::string why) {
    window_note_ = std::move(why);
    set_name(name_);
  }
  unsigned* err_host_ = nullptr;  // host-mapped error word of the kernel
  unsigned* err_dev_ = nullptr;
  cudaStream_t side_ = nullptr;   // stop_kernels' writes, beside the kernels they end
  Mapping mail_;                  // control block, then world mailbox slots of slot_ bytes
  std::vector<Mapping> windows_;  // reserve_window's, the newest last
  std::unique_ptr<detail::PullTrace> trace_;  // DISTMLA_PULL_TRACE (pull_trace.h)
  size_t slot_ = 0;
  bool ready_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_peer_communicator(std::unique_ptr<Communicator> base, int device,
                                                     const CommOptions& opt) {
  return std::make_unique<PeerCommunicator>(std::move(base), device, opt);
}

}  // namespace distmla::dist
