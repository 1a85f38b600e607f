// A host-memory communicator over the TCP store, for runs without MPI and without GPUs
// (N processes started with --rank --world --store host:port on the CPU backend) and for tests.
// Every collective is a round of set/get under fresh keys, so it is slow and the store keeps
// every value: meant for bootstrap-scale traffic and CI, not for serving.
#pragma once

#include <memory>

#include "distmla/dist/communicator.h"
#include "distmla/dist/tcp_store.h"

namespace distmla::dist {

// store: a client whose prefix names this communicator (one prefix per communicator); the
// communicator makes its own clients with the same address and prefix.
std::unique_ptr<Communicator> make_store_communicator(const TcpStoreClient& store, int rank, int world,
                                                      const CommOptions& opt = {});

}  // namespace distmla::dist
