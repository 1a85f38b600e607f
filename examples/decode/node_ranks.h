// Which ranks of a job share this host, so that the launcher gives each its own GPU (NCCL takes
// one GPU a rank) and refuses more ranks on a host than it has GPUs, with either bootstrap.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

namespace distmla::dist {
class TcpStoreClient;
}

namespace distmla::examples {

struct NodeRanks {
  int local_rank = 0;  // this rank's place among the ranks on its host, by rank
  int local_size = 1;  // ranks on its host
  std::string host;
};

// From every rank's host name (hosts[r] is rank r's).
NodeRanks node_ranks_from_hosts(const std::vector<std::string>& hosts, int rank);

// This host's name ("localhost" if it has none).
std::string this_host();

// Through MPI (MPI-3's shared-memory split: any MPI, not only Open MPI's environment).
NodeRanks node_ranks_mpi(MPI_Comm world);

// Through the TCP store: each rank sets "host/<rank>" and reads every rank's (each get waits up
// to timeout_ms). Throws distmla::Error naming the rank that did not answer.
NodeRanks node_ranks_store(dist::TcpStoreClient& store, int rank, int world, int timeout_ms);

}  // namespace distmla::examples
