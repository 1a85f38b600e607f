// Communicator over device buffers on NCCL (production). Non-blocking communicators
// (ncclCommInitRankConfig with blocking = 0): every call that may return ncclInProgress is
// polled with ncclCommGetAsyncError against the deadline and the communicator is aborted on
// timeout. Sub-groups come from ncclCommSplit. NCCL_NVLS_ENABLE is set to 0 (if unset) before
// any NCCL initialisation.
//
// Bootstrap, three ways (the library never launches processes):
//   - from an MPI communicator: rank 0's unique id is broadcast over MPI;
//   - from a TCP store (tcp_store.h): rank 0 publishes the id under a namespaced key;
//   - from a ready unique id handed in by the host framework.
#pragma once

#include <memory>
#include <string>

#include <mpi.h>

#include "distmla/dist/communicator.h"

namespace distmla::dist {

class TcpStoreClient;

// ncclUniqueId as plain bytes (keeps nccl.h out of this header).
struct NcclId {
  char bytes[128];
};

// ncclGetUniqueId (sets NCCL_NVLS_ENABLE=0 first if unset).
NcclId nccl_unique_id();

// device: the CUDA device of this rank; the current device is restored before returning.
std::unique_ptr<Communicator> make_nccl_communicator(const NcclId& id, int rank, int world,
                                                     int device, const CommOptions& opt = {});
std::unique_ptr<Communicator> make_nccl_communicator_mpi(MPI_Comm comm, int device,
                                                         const CommOptions& opt = {});
// key: the store key the id travels under (namespaced by the client's prefix).
std::unique_ptr<Communicator> make_nccl_communicator_store(TcpStoreClient& store,
                                                           const std::string& key, int rank,
                                                           int world, int device,
                                                           const CommOptions& opt = {});

// Sets NCCL_NVLS_ENABLE=0 unless the user set it (NVLink multicast is off on our machines).
void nccl_disable_nvls_default();

}  // namespace distmla::dist
