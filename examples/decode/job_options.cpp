// Command line of distmla_decode: nccl-tests style short flags plus long aliases.
#include "job_options.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace distmla::examples {

namespace {

constexpr long long kIntMax = std::numeric_limits<int>::max();

bool parse_int64(const std::string& s, long long* v) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  *v = x;
  return true;
}

bool bool01(const std::string& flag, const std::string& val, bool* out, std::string* err) {
  if (val == "0" || val == "1") {
    *out = val == "1";
    return true;
  }
  *err = flag + " " + val + ": must be 0 or 1";
  return false;
}

// "--flag=value" into its flag and value (true); any other argument is a flag alone (false).
bool split_flag(const std::string& arg, std::string* flag, std::string* val) {
  *flag = arg;
  const size_t eq = arg.find('=');
  if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return false;
  *val = arg.substr(eq + 1);
  *flag = arg.substr(0, eq);
  return true;
}

// A store launch's flags (--store, --rank, --world): *known false for any other flag; false with
// *err on a bad value.
bool launch_flag(const std::string& flag, const std::string& val, JobOptions* opt, bool* known, std::string* err) {
  *known = true;
  if (flag == "--store") {
    const size_t colon = val.rfind(':');
    long long port;
    if (colon == std::string::npos || colon == 0 || !parse_int64(val.substr(colon + 1), &port) || port < 1 ||
        port > 65535) {
      *err = flag + " " + val + ": store must be host:port with port 1..65535";
      return false;
    }
    opt->store = val;
    return true;
  }
  if (flag == "--rank") return int_flag(flag, val, 0, kIntMax, "rank must be >= 0", &opt->rank, err);
  if (flag == "--world") return int_flag(flag, val, 1, kIntMax, "world size must be >= 1", &opt->world, err);
  *known = false;
  return true;
}

}  // namespace

bool int_flag(const std::string& flag, const std::string& val, long long lo, long long hi, const char* what,
              int* out, std::string* err) {
  long long x;
  if (!parse_int64(val, &x) || x < lo || x > hi) {
    *err = flag + " " + val + ": " + what;
    return false;
  }
  *out = static_cast<int>(x);
  return true;
}

bool store_launch_of(int argc, char** argv, JobOptions* opt) {
  for (int i = 1; i < argc; ++i) {
    std::string flag, val, err;
    if (!split_flag(argv[i], &flag, &val)) {
      if (i + 1 >= argc) break;
      val = argv[++i];
    }
    bool known;
    launch_flag(flag, val, opt, &known, &err);  // a bad value leaves the field unset
  }
  return !opt->store.empty() && opt->rank >= 0 && opt->world >= 2 && opt->rank < opt->world;
}

bool parse_job_options(int argc, char** argv, JobOptions* opt, bool* help, std::string* err) {
  *help = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag, val;
    const bool has_val = split_flag(argv[i], &flag, &val);
    if (flag == "-h" || flag == "--help") {
      *help = true;
      return true;
    }
    if (!has_val) {
      if (i + 1 >= argc) {
        *err = flag + " needs a value";
        // Unknown flags are reported as such even when they come last.
        static const char* known[] = {"-b", "--batch", "-s", "--seqlen", "-H", "--heads", "-q",
                                      "--sq", "-p", "--page", "-n", "--iters", "-w", "--warmup",
                                      "-c", "--check", "--varlen", "--causal", "--seed", "--backend",
                                      "-t", "--tp", "-x", "--cp", "-m", "--merge", "--store",
                                      "--rank", "--world", "-k", "--sub-batches", "-G",
                                      "--graph-iters", "-r", "--reuse-schedule", "-P", "--peer", "-W",
                                      "--warm-ms"};
        bool is_known = false;
        for (const char* k : known) is_known |= flag == k;
        if (!is_known) *err = "unknown flag " + flag + " (see --help)";
        return false;
      }
      val = argv[++i];
    }
    bool launch;  // --store, --rank, --world (launch_flag, shared with store_launch_of)
    bool ok = launch_flag(flag, val, opt, &launch, err);
    if (launch) {
    } else if (flag == "-b" || flag == "--batch") {
      ok = int_flag(flag, val, 0, kIntMax, "batch must be an integer >= 0", &opt->batch, err);
    } else if (flag == "-s" || flag == "--seqlen") {
      ok = int_flag(flag, val, 0, kIntMax, "mean sequence length must be an integer >= 0", &opt->mean_len, err);
    } else if (flag == "-H" || flag == "--heads") {
      ok = int_flag(flag, val, 1, DMLA_MAX_HEADS, "heads must be 1..128", &opt->heads, err);
    } else if (flag == "-q" || flag == "--sq") {
      ok = int_flag(flag, val, 1, DMLA_MAX_SQ, "query tokens (s_q) must be 1..4", &opt->s_q, err);
    } else if (flag == "-p" || flag == "--page") {
      ok = int_flag(flag, val, 16, 128, "page size must be 16, 32, 64 or 128", &opt->page_size, err);
      if (ok && (opt->page_size & (opt->page_size - 1)) != 0) {
        *err = flag + " " + val + ": page size must be 16, 32, 64 or 128";
        ok = false;
      }
    } else if (flag == "-n" || flag == "--iters") {
      ok = int_flag(flag, val, 1, kIntMax, "iterations must be >= 1", &opt->iters, err);
    } else if (flag == "-w" || flag == "--warmup") {
      ok = int_flag(flag, val, 0, kIntMax, "warm-up iterations must be >= 0", &opt->warmup, err);
    } else if (flag == "-c" || flag == "--check") {
      ok = bool01(flag, val, &opt->check, err);
    } else if (flag == "-P" || flag == "--peer") {
      if (val == "auto") {
        opt->peer = -1;
      } else {
        bool on = false;
        ok = bool01(flag, val, &on, err);
        if (ok) opt->peer = on ? 1 : 0;
        else *err = flag + " " + val + ": must be auto, 0 or 1";
      }
    } else if (flag == "--varlen") {
      ok = bool01(flag, val, &opt->varlen, err);
    } else if (flag == "--causal") {
      ok = bool01(flag, val, &opt->causal, err);
    } else if (flag == "--seed") {
      long long x;
      ok = parse_int64(val, &x) && x >= 0;
      if (ok) opt->seed = static_cast<uint64_t>(x);
      else *err = flag + " " + val + ": seed must be an integer >= 0";
    } else if (flag == "--backend") {
      if (val == "auto") opt->backend = dmlaBackendAuto;
      else if (val == "cuda") opt->backend = dmlaBackendCuda;
      else if (val == "cpu") opt->backend = dmlaBackendCpu;
      else {
        *err = flag + " " + val + ": backend must be auto, cuda or cpu";
        ok = false;
      }
    } else if (flag == "-t" || flag == "--tp") {
      ok = int_flag(flag, val, 1, DMLA_MAX_HEADS, "tensor-parallel size must be 1..128", &opt->tp, err);
    } else if (flag == "-x" || flag == "--cp") {
      ok = int_flag(flag, val, 1, 4096, "context-parallel size must be 1..4096", &opt->cp, err);
    } else if (flag == "-m" || flag == "--merge") {
      if (val == "allgather" || val == "alltoall" || val == "auto") {
        opt->merge = val;
      } else {
        *err = flag + " " + val + ": merge must be allgather, alltoall or auto";
        ok = false;
      }
    } else if (flag == "-k" || flag == "--sub-batches") {
      ok = int_flag(flag, val, 0, 8, "sub-batches must be 0 (automatic) .. 8", &opt->sub_batches, err);
    } else if (flag == "-G" || flag == "--graph-iters") {
      ok = int_flag(flag, val, 0, 100000, "graph replays must be 0 (off) .. 100000", &opt->graph_iters, err);
    } else if (flag == "-r" || flag == "--reuse-schedule") {
      ok = bool01(flag, val, &opt->reuse_schedule, err);
    } else if (flag == "-W" || flag == "--warm-ms") {
      ok = int_flag(flag, val, 0, 60000, "warm time must be 0 .. 60000 ms", &opt->warm_ms, err);
    } else {
      *err = "unknown flag " + flag + " (see --help)";
      ok = false;
    }
    if (!ok) return false;
  }
  if (opt->sub_batches > opt->batch && opt->batch > 0) {
    *err = "-k/--sub-batches " + std::to_string(opt->sub_batches) + ": sub-batches must not exceed the batch " +
           std::to_string(opt->batch);
    return false;
  }
  if (opt->reuse_schedule && opt->warmup < 1) {
    *err = "-r/--reuse-schedule 1 with -w/--warmup " + std::to_string(opt->warmup) +
           ": the warm-up computes the schedule the timed runs reuse (needs -w >= 1)";
    return false;
  }
  if (opt->warm_ms > 0 && opt->graph_iters == 0) {
    *err = "-W/--warm-ms " + std::to_string(opt->warm_ms) + ": warms the graph replays of -G, which is off (give -G N)";
    return false;
  }
  if (opt->rank >= 0 && opt->world > 0 && opt->rank >= opt->world) {
    *err = "--rank " + std::to_string(opt->rank) + ": must be below --world " + std::to_string(opt->world);
    return false;
  }
  return true;
}

void print_job_usage(const char* argv0) {
  std::printf(
      "Usage: %s [flags]\n"
      "MLA decode over a paged KV cache on random inputs: times it and checks it against the\n"
      "double CPU reference. Distributed when -t/-x > 1, --world > 1 or under mpirun -np > 1.\n"
      "\n"
      "  -b, --batch N       sequences (default 8)\n"
      "  -s, --seqlen N      mean sequence length in tokens (default 512)\n"
      "  -H, --heads N       query heads h_q, 1..128 (default 16)\n"
      "  -q, --sq N          query tokens a sequence s_q, 1..4 (default 1)\n"
      "  -p, --page N        page size 16|32|64|128 (default 64)\n"
      "  -n, --iters N       timed iterations (default 5)\n"
      "  -w, --warmup N      warm-up iterations (default 1)\n"
      "  -c, --check 0|1     compare with the CPU reference (default 1)\n"
      "      --varlen 0|1    lengths drawn uniformly in [S/2, 3S/2] (default 1)\n"
      "      --causal 0|1    causal mask for s_q > 1 (default 1)\n"
      "      --seed N        random seed (default 1)\n"
      "      --backend B     auto|cuda|cpu (default auto: CUDA on an sm_90 GPU, else CPU)\n"
      "  -t, --tp N          tensor-parallel ranks (head groups, default 1)\n"
      "  -x, --cp N          context-parallel ranks (KV page shards, default 1)\n"
      "  -m, --merge M       allgather|alltoall|auto cross-rank merge (default auto)\n"
      "  -k, --sub-batches N batch slices whose exchange overlaps the next one's attention,\n"
      "                      1..8 (default 0: automatic; 1: no overlap)\n"
      "  -G, --graph-iters N GPUs: also time the call (one GPU) or the step replayed from a CUDA\n"
      "                      graph N times back to back; with cp > 1 also exchange + merge alone\n"
      "                      and a bare collective of the same bytes (default 0: off)\n"
      "  -W, --warm-ms MS    with -G: replay the graph back to back for about MS ms before timing\n"
      "                      it, so that it is timed at the card's power cap, as in a busy server\n"
      "                      (1000 is enough; default 0: timed in the state the eager runs left)\n"
      "  -r, --reuse-schedule 0|1  time a layer after the first of a step: the timed runs reuse\n"
      "                      the split schedule the warm-up computed (default 0)\n"
      "  -P, --peer auto|0|1 GPUs: the CP all-to-all through CUDA IPC mailboxes, one kernel instead\n"
      "                      of NCCL; -G's 'bare' column then times that path and 'NCCL bare' the\n"
      "                      NCCL one it wraps. auto (default): on with GPUs and cp > 1, staying on\n"
      "                      NCCL (the header says why) when a rank cannot map a peer's memory\n"
      "      --store H:P     TCP store bootstrap instead of MPI (with --rank, --world)\n"
      "      --rank N        this process's rank (TCP store bootstrap)\n"
      "      --world N       number of processes (TCP store bootstrap)\n"
      "  -h, --help          this text\n"
      "Exit codes: 0 ok, 1 wrong results or a failed run, 2 bad command line.\n",
      argv0);
}

WorkloadOptions workload_options(const JobOptions& opt) {
  WorkloadOptions wo;
  wo.batch = opt.batch;
  wo.s_q = opt.s_q;
  wo.h_q = opt.heads;
  wo.page_size = opt.page_size;
  wo.mean_len = opt.mean_len;
  wo.varlen = opt.varlen;
  wo.causal = opt.causal;
  wo.seed = opt.seed;
  return wo;
}

}  // namespace distmla::examples
