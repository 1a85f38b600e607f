// Communicator over host buffers on MPI (the CPU backend and CI). Non-blocking MPI calls polled
// against the deadline, so a lost rank gives dmlaErrorTimeout instead of a hang. After a timeout
// the communicator refuses further calls, and its duplicate of comm is not freed on destruction
// (a collective is still pending on it; MPI_Finalize releases it).
#pragma once

#include <memory>

#include <mpi.h>

#include "distmla/dist/communicator.h"

namespace distmla::dist {

// Duplicates comm (the library never uses the host framework's communicator directly).
// MPI must be initialised by the caller. Throws distmla::Error on failure.
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, const CommOptions& opt = {});

}  // namespace distmla::dist
