// Command line of distmla_decode (nccl-tests style), shared by the single-device and the
// distributed job.
#pragma once

#include <cstdint>
#include <string>

#include "distmla/distmla.h"
#include "distmla/workload.h"

namespace distmla::examples {

struct JobOptions {
  int batch = 8;          // -b
  int mean_len = 512;     // -s  mean sequence length (tokens)
  int heads = 16;         // -H  h_q
  int s_q = 1;            // -q
  int page_size = 64;     // -p
  int iters = 5;          // -n
  int warmup = 1;         // -w
  bool check = true;      // -c 0|1
  bool varlen = true;     // --varlen 0|1: lengths drawn around the mean
  bool causal = true;     // --causal 0|1
  uint64_t seed = 1;      // --seed
  dmlaBackend_t backend = dmlaBackendAuto;  // --backend auto|cuda|cpu
  // Distributed (mpirun -np N, or N processes with --rank/--world/--store).
  int tp = 1;             // -t  tensor-parallel (head groups)
  int cp = 1;             // -x  context-parallel (KV page shards)
  std::string merge = "auto";      // -m allgather|alltoall|auto
  std::string store;               // --store host:port (TCP store bootstrap instead of MPI)
  int rank = -1;                   // --rank
  int world = -1;                  // --world
  int sub_batches = 0;             // -k  DecoderConfig::sub_batches (0: automatic)
  int graph_iters = 0;             // -G  graph-replayed exchange + merge vs bare collective (0: off)
  bool reuse_schedule = false;     // -r  timed runs reuse the warm-up's split schedule (per layer)
  int warm_ms = 0;                 // -W  with -G: replay the step graph ~this long before timing it
  // -P  CP all-to-all through CUDA IPC mailboxes: -1 auto (on GPUs when cp > 1; the peer
  // communicator itself stays on NCCL when a rank cannot map a peer), 0 NCCL, 1 peer (GPUs only)
  int peer = -1;
};

// An integer flag's value in [lo, hi]: false with *err = "<flag> <val>: <what>" otherwise (also
// read by the service's programs, examples/service).
bool int_flag(const std::string& flag, const std::string& val, long long lo, long long hi, const char* what,
              int* out, std::string* err);
// Returns false with *err set (naming the flag and the value) on bad input; sets *help on --help.
bool parse_job_options(int argc, char** argv, JobOptions* opt, bool* help, std::string* err);
// The store launch a command line names (--store, --rank, --world, read as parse_job_options
// reads them) even when another of its flags is bad: true with them in *opt when all three are
// there, valid, and rank < world >= 2.
bool store_launch_of(int argc, char** argv, JobOptions* opt);
void print_job_usage(const char* argv0);
// The random workload the shape flags describe (every job of a command line makes the same one).
WorkloadOptions workload_options(const JobOptions& opt);

int run_single_device_job(const JobOptions& opt);   // single_job.cpp
int run_distributed_job(const JobOptions& opt);     // distributed_job.cpp
// For a command line that did not parse but names a store launch (launch: from store_launch_of):
// ends that job on the store as any failing rank does (the others fail at once with why instead
// of waiting out their deadlines for a rank that never joins). distributed_job.cpp.
void abort_store_launch(const JobOptions& launch, const std::string& why);

}  // namespace distmla::examples
