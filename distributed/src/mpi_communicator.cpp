// Communicator over host buffers on MPI: non-blocking collectives polled against a deadline.
#include "distmla/dist/mpi_communicator.h"

#include <climits>
#include <string>
#include <vector>

#include "check.h"
#include "distmla/distmla.hpp"
#include "deadline_poll.h"

namespace distmla::dist {

namespace {

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

#define MPI_RET(call)                                                                    \
  do {                                                                                   \
    int e_ = (call);                                                                     \
    if (e_ != MPI_SUCCESS)                                                               \
      return set_error(dmlaErrorComm, DMLA_DIST_WHERE + ": " #call ": " + mpi_error_string(e_)); \
  } while (0)

#define MPI_THROW(call)                                                                  \
  do {                                                                                   \
    int e_ = (call);                                                                     \
    if (e_ != MPI_SUCCESS)                                                               \
      DMLA_DIST_FAIL(dmlaErrorComm, DMLA_DIST_WHERE + ": " #call ": " + mpi_error_string(e_)); \
  } while (0)

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, const CommOptions& opt) : opt_(opt) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) DMLA_DIST_FAIL(dmlaErrorComm, "make_mpi_communicator: MPI is not initialised");
    if (comm == MPI_COMM_NULL)
      DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "make_mpi_communicator: comm is MPI_COMM_NULL");
    if (opt.timeout_ms <= 0)
      DMLA_DIST_FAIL(dmlaErrorInvalidArgument,
                     "CommOptions::timeout_ms = " + std::to_string(opt.timeout_ms) + " (must be > 0)");
    // Non-blocking dup so that a rank that never arrives gives a timeout, not a hang.
    MPI_Request req;
    MPI_THROW(MPI_Comm_idup(comm, &comm_, &req));
    throw_if_error(wait_request(&req, "comm dup"));
    // Errors come back as codes, never abort the job.
    MPI_THROW(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    MPI_THROW(MPI_Comm_rank(comm_, &rank_));
    MPI_THROW(MPI_Comm_size(comm_, &size_));
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // After a timeout a collective is still pending on comm_ (MPI cannot cancel one), and the
    // late ranks may yet enter it: freeing the communicator under it made the next
    // communicator's progress crash (4 ranks; tests/mpi MpiCommunicator.TimedOut...). Such a
    // communicator is left to MPI_Finalize.
    if (!finalized && comm_ != MPI_COMM_NULL && !broken_) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemSpace memory() const override { return MemSpace::kHost; }
  const char* backend_name() const override { return "mpi"; }

  dmlaResult_t all_gather(const void* send, void* recv, size_t bytes, void*) override {
    if (auto r = check_args("all_gather", send, recv, bytes); r != dmlaSuccess) return r;
    MPI_Request req;
    MPI_RET(MPI_Iallgather(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes),
                           MPI_BYTE, comm_, &req));
    return wait_request(&req, "all_gather");
  }
  dmlaResult_t all_to_all(const void* send, void* recv, size_t bytes, void*) override {
    if (auto r = check_args("all_to_all", send, recv, bytes); r != dmlaSuccess) return r;
    MPI_Request req;
    MPI_RET(MPI_Ialltoall(send, static_cast<int>(bytes), MPI_BYTE, recv, static_cast<int>(bytes),
                          MPI_BYTE, comm_, &req));
    return wait_request(&req, "all_to_all");
  }
  dmlaResult_t broadcast(void* buf, size_t bytes, int root, void*) override {
    if (auto r = check_args("broadcast", buf, buf, bytes); r != dmlaSuccess) return r;
    if (root < 0 || root >= size_)
      return set_error(dmlaErrorInvalidArgument, "broadcast: root = " + std::to_string(root) +
                                                     " (world " + std::to_string(size_) + ")");
    MPI_Request req;
    MPI_RET(MPI_Ibcast(buf, static_cast<int>(bytes), MPI_BYTE, root, comm_, &req));
    return wait_request(&req, "broadcast");
  }
  dmlaResult_t barrier() override {
    if (broken_) return broken_error();
    MPI_Request req;
    MPI_RET(MPI_Ibarrier(comm_, &req));
    return wait_request(&req, "barrier");
  }
  dmlaResult_t agree(const uint8_t* ok, uint8_t* all_ok, int n) override {
    if (broken_) return broken_error();
    if (n < 0) return set_error(dmlaErrorInvalidArgument, "agree: n = " + std::to_string(n));
    if (n == 0) return dmlaSuccess;
    if (!ok || !all_ok) return set_error(dmlaErrorNullPointer, "agree: ok or all_ok is null");
    std::vector<uint8_t> in(ok, ok + n);  // host path, not the decode step: copying is fine
    for (auto& v : in) v = v ? 1 : 0;
    MPI_Request req;
    MPI_RET(MPI_Iallreduce(in.data(), all_ok, n, MPI_UNSIGNED_CHAR, MPI_MIN, comm_, &req));
    return wait_request(&req, "agree");
  }
  dmlaResult_t wait(void*) override { return broken_ ? broken_error() : dmlaSuccess; }

  std::unique_ptr<Communicator> split(int color, int key) override {
    if (broken_) throw_if_error(broken_error());
    if (color < 0)
      DMLA_DIST_FAIL(dmlaErrorInvalidArgument, "split: color = " + std::to_string(color) + " (must be >= 0)");
    // MPI_Comm_split has no deadline: first make sure every rank arrived (with one).
    int mine[2] = {color, key};
    std::vector<int> all(2 * static_cast<size_t>(size_));
    throw_if_error(all_gather(mine, all.data(), sizeof(mine), nullptr));
    MPI_Comm sub = MPI_COMM_NULL;
    MPI_THROW(MPI_Comm_split(comm_, color, key, &sub));
    auto r = std::make_unique<MpiCommunicator>(sub, opt_);
    MPI_Comm_free(&sub);
    return r;
  }

 private:
  dmlaResult_t broken_error() const {
    return set_error(dmlaErrorComm, "mpi communicator: unusable after an earlier timeout or cancel");
  }
  dmlaResult_t check_args(const char* what, const void* a, const void* b, size_t bytes) {
    if (broken_) return broken_error();
    if (bytes > static_cast<size_t>(INT_MAX))
      return set_error(dmlaErrorInvalidArgument, std::string(what) + ": bytes = " +
                                                     std::to_string(bytes) + " (MPI limit INT_MAX)");
    if (bytes > 0 && (!a || !b))
      return set_error(dmlaErrorNullPointer, std::string(what) + ": null buffer");
    return dmlaSuccess;
  }
  dmlaResult_t wait_request(MPI_Request* req, const char* what) {
    int done = 0;
    int err = MPI_SUCCESS;
    const detail::PollEnd end = detail::poll_until(detail::deadline_after_ms(opt_.timeout_ms), opt_.cancel, [&] {
      if (!done) err = MPI_Test(req, &done, MPI_STATUS_IGNORE);
      return done != 0 || err != MPI_SUCCESS;
    });
    if (err != MPI_SUCCESS)
      return set_error(dmlaErrorComm, std::string("mpi ") + what + ": " + mpi_error_string(err));
    if (end == detail::PollEnd::kCancelled) {
      broken_ = true;
      return set_error(dmlaErrorComm, std::string("mpi ") + what + ": cancelled (CommOptions::cancel)");
    }
    if (end != detail::PollEnd::kDone) {
      // A collective cannot be cancelled: the communicator is unusable from here on.
      broken_ = true;
      return set_error(dmlaErrorTimeout, std::string("mpi ") + what + ": no completion within " +
                                             std::to_string(opt_.timeout_ms) +
                                             " ms (a rank is lost or late)");
    }
    return dmlaSuccess;
  }

  CommOptions opt_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  bool broken_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const CommOptions& opt) {
  return std::make_unique<MpiCommunicator>(comm, opt);
}

}  // namespace distmla::dist
