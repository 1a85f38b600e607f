// distmla_client: sends random decode requests to a distmla_serve, times their round trips and
// checks the answers against the double CPU reference (the service's counterpart of distmla_decode).
//   distmla_client [--host 127.0.0.1] [--port 29400] [--timeout-s 60] [distmla_decode's shape flags]
// Exit codes: 0 ok, 1 wrong results, a refused request or no server, 2 bad command line.
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "distmla/compare.h"
#include "distmla/dist/decode_client.h"
#include "distmla/dist/service_protocol.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"
#include "job_options.h"
#include "median.h"

namespace {

using namespace distmla;
using distmla::examples::JobOptions;

struct ClientFlags {
  std::string host = "127.0.0.1";
  int port = 29400;
  int timeout_s = 60;
};

void usage(const char* argv0) {
  std::printf(
      "Usage: %s [--host H] [--port P] [--timeout-s N] [shape flags]\n"
      "Sends -w + -n decode requests of one random workload to a distmla_serve, prints the median\n"
      "round trip (payload out, compute, answer back) and checks the last answer against the\n"
      "double CPU reference.\n"
      "  --host H        the server's address (default 127.0.0.1)\n"
      "  --port P        its port (default 29400)\n"
      "  --timeout-s N   give up on a request after N seconds (default 60)\n"
      "Shape flags, as distmla_decode reads them: -b -s -H -q -p -n -w -c --varlen --causal --seed\n"
      "(distmla_decode --help says what they mean). The server picks the backend.\n"
      "Exit codes: 0 ok, 1 wrong results, a refused request or no server, 2 bad command line.\n",
      argv0);
}

// Takes --host / --port / --timeout-s out of argv (the rest is distmla_decode's command line).
bool take_client_flags(int& argc, char** argv, ClientFlags* f, std::string* err) {
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a != "--host" && a != "--port" && a != "--timeout-s") {
      argv[out++] = argv[i];
      continue;
    }
    if (i + 1 >= argc) return *err = a + " needs a value", false;
    const std::string v = argv[++i];
    if (a == "--host") {
      f->host = v;
      continue;
    }
    const bool ok = a == "--port" ? distmla::examples::int_flag(a, v, 1, 65535, "must be 1..65535", &f->port, err)
                                  : distmla::examples::int_flag(a, v, 1, 86400, "must be 1..86400", &f->timeout_s, err);
    if (!ok) return false;
  }
  argc = out;
  return true;
}

// The server runs one device's decode: the flags of distributed or device-side jobs do not apply.
bool refuse_job_only_flags(const JobOptions& o, std::string* err) {
  const JobOptions d;
  const char* flag = o.tp != 1 ? "-t" : o.cp != 1 ? "-x" : o.merge != d.merge ? "-m" : !o.store.empty() ? "--store"
                     : o.rank != d.rank ? "--rank" : o.world != d.world ? "--world" : o.sub_batches != 0 ? "-k"
                     : o.graph_iters != 0 ? "-G" : o.warm_ms != 0 ? "-W" : o.reuse_schedule ? "-r"
                     : o.peer != d.peer ? "-P" : o.backend != d.backend ? "--backend" : nullptr;
  if (flag) *err = std::string(flag) + " does not apply to distmla_client (the server picks the backend and runs one device)";
  return flag == nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  ClientFlags cf;
  JobOptions opt;
  bool help = false;
  std::string err;
  if (!take_client_flags(argc, argv, &cf, &err) || !distmla::examples::parse_job_options(argc, argv, &opt, &help, &err) ||
      (!help && !refuse_job_only_flags(opt, &err))) {
    std::fprintf(stderr, "distmla_client: %s\n", err.c_str());
    return 2;
  }
  if (help) return usage(argv[0]), 0;

  try {
    const Workload w = make_workload(distmla::examples::workload_options(opt));
    dist::DecodeClient client(cf.host, cf.port, cf.timeout_s * 1000);
    std::vector<double> us;
    dist::DecodeResult r;
    for (int i = 0; i < opt.warmup + opt.iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      r = client.decode(w.shape, w.host_tensors());
      const auto t1 = std::chrono::steady_clock::now();
      if (r.status != dmlaSuccess) {
        std::fprintf(stderr, "distmla_client: the server refused request %d: %s (%s)\n", i + 1, r.message.c_str(),
                     dmlaGetErrorString(r.status));
        return 1;
      }
      if (i >= opt.warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    CompareResult cmp;
    if (opt.check) {
      std::vector<double> out_ref, lse_ref;
      reference_decode(w.shape, w.host_tensors(), &out_ref, &lse_ref);
      cmp = compare_with_reference(w.shape, r.out.data(), w.shape.out_dtype, r.lse.data(), out_ref, lse_ref);
    }
    const double mb = static_cast<double>(dist::payload_sizes(w.shape).request()) / (1 << 20);
    std::printf("# distmla_client: %s:%d, page %d, varlen %d, causal %d, seed %llu, %d warm-up + %d timed requests "
                "(median round trip: payload out, compute, answer back)\n",
                cf.host.c_str(), cf.port, w.shape.page_size, opt.varlen ? 1 : 0, opt.causal ? 1 : 0,
                static_cast<unsigned long long>(opt.seed), opt.warmup, opt.iters);
    std::printf("%6s %4s %9s %4s %12s %14s %10s %7s\n", "b", "s_q", "mean S", "h_q", "request MiB", "round trip us",
                "rel err", "#wrong");
    char err_col[32] = "-", wrong_col[32] = "-";
    if (opt.check) {
      std::snprintf(err_col, sizeof err_col, "%.3e", cmp.rel_err);
      std::snprintf(wrong_col, sizeof wrong_col, "%lld", static_cast<long long>(cmp.wrong));
    }
    std::printf("%6d %4d %9.1f %4d %12.2f %14.1f %10s %7s\n", w.shape.batch, w.shape.s_q, w.mean_len(), w.shape.h_q,
                mb, distmla::examples::median(us), err_col, wrong_col);
    if (opt.check && !cmp.ok()) {
      std::printf("# FAILED: %lld wrong elements, rel err %.3e\n", static_cast<long long>(cmp.wrong), cmp.rel_err);
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distmla_client: %s\n", e.what());
    return 1;
  }
  return 0;
}
