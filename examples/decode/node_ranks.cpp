#include "node_ranks.h"

#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "distmla/dist/error.h"
#include "distmla/dist/tcp_store.h"
#include "distmla/distmla.hpp"

namespace distmla::examples {

NodeRanks node_ranks_from_hosts(const std::vector<std::string>& hosts, int rank) {
  NodeRanks n;
  n.host = hosts.at(static_cast<size_t>(rank));
  n.local_rank = 0;
  n.local_size = 0;
  for (size_t r = 0; r < hosts.size(); ++r) {
    if (hosts[r] != n.host) continue;
    if (static_cast<int>(r) < rank) ++n.local_rank;
    ++n.local_size;
  }
  return n;
}

std::string this_host() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

NodeRanks node_ranks_mpi(MPI_Comm world) {
  MPI_Comm local;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local);
  NodeRanks n;
  MPI_Comm_rank(local, &n.local_rank);
  MPI_Comm_size(local, &n.local_size);
  MPI_Comm_free(&local);
  n.host = this_host();
  return n;
}

NodeRanks node_ranks_store(dist::TcpStoreClient& store, int rank, int world, int timeout_ms) {
  const std::string me = this_host();
  const std::vector<uint8_t> v(me.begin(), me.end());
  dmlaResult_t rc = store.set("host/" + std::to_string(rank), v, timeout_ms);
  if (rc != dmlaSuccess)
    throw Error(rc, "publishing this rank's host name (rank " + std::to_string(rank) + "): " + dist::last_error_message());
  std::vector<std::string> hosts(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r) {
    std::vector<uint8_t> h;
    rc = store.get("host/" + std::to_string(r), &h, timeout_ms);
    if (rc != dmlaSuccess)
      throw Error(rc, "rank " + std::to_string(r) + "'s host name: " + dist::last_error_message());
    hosts[static_cast<size_t>(r)].assign(h.begin(), h.end());
  }
  return node_ranks_from_hosts(hosts, rank);
}

}  // namespace distmla::examples
