// distmla_serve: the decode service (distmla/dist/decode_server.h; wire format in
// distmla/dist/service_protocol.h).
//   distmla_serve [--host 0.0.0.0] [--port 29400] [--backend auto|cuda|cpu] [--workers 2] [--max-mb 1024]
//                 [--max-connections 256] [--idle-s 600] [--io-s 60]
// Runs until SIGINT or SIGTERM (exit 0), or until the GPU context is lost (exit 3: a supervisor
// restarts it). The CUDA backend uses GPU 0 (CUDA_VISIBLE_DEVICES picks it).
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>

#include "distmla/dist/decode_server.h"
#include "distmla/distmla.hpp"
#include "job_options.h"

namespace {

void usage(const char* argv0) {
  std::printf("Usage: %s [--host H] [--port P] [--backend auto|cuda|cpu] [--workers N] [--max-mb N]\n"
              "          [--max-connections N] [--idle-s N] [--io-s N]\n"
              "Serves MLA decode requests over TCP (distmla/dist/service_protocol.h) until SIGINT/SIGTERM;\n"
              "exits with status 3 if the GPU context is lost (a sticky CUDA error), for a supervisor to restart it.\n"
              "  --host H      address to listen on (default 0.0.0.0)\n"
              "  --port P      TCP port, 0: any free one (default 29400)\n"
              "  --backend B   auto (CUDA on an sm_90 GPU, else CPU), cuda or cpu (default auto)\n"
              "  --workers N   requests computed at once, 1..256 (default 2)\n"
              "  --max-mb N    largest request payload in MiB (default 1024)\n"
              "  --max-connections N  connections at once; one more is closed at once (default 256)\n"
              "  --idle-s N    close a connection with no request for N seconds (default 600)\n"
              "  --io-s N      close a connection whose request payload or answer takes over N seconds (default 60)\n",
              argv0);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace distmla::dist;
  std::string host = "0.0.0.0";
  int port = 29400, workers = 2, max_mb = 1024, max_conn = 256, idle_s = 600, io_s = 60;
  ServerOptions opt;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") return usage(argv[0]), 0;
    if (i + 1 >= argc) return std::fprintf(stderr, "%s: %s needs a value\n", argv[0], a.c_str()), 2;
    const std::string v = argv[++i];
    using distmla::examples::int_flag;
    std::string err;
    bool ok = true;
    if (a == "--host") host = v;
    else if (a == "--port") ok = int_flag(a, v, 0, 65535, "must be 0..65535", &port, &err);
    else if (a == "--workers") ok = int_flag(a, v, 1, 256, "must be 1..256", &workers, &err);
    else if (a == "--max-mb") ok = int_flag(a, v, 1, 1 << 20, "must be 1..1048576", &max_mb, &err);
    else if (a == "--max-connections") ok = int_flag(a, v, 1, 1 << 20, "must be 1..1048576", &max_conn, &err);
    else if (a == "--idle-s") ok = int_flag(a, v, 1, 1 << 20, "must be 1..1048576", &idle_s, &err);
    else if (a == "--io-s") ok = int_flag(a, v, 1, 1 << 20, "must be 1..1048576", &io_s, &err);
    else if (a == "--backend") {
      ok = v == "auto" || v == "cuda" || v == "cpu";
      if (!ok) err = a + " " + v + ": must be auto, cuda or cpu";
      opt.backend = v == "cuda" ? dmlaBackendCuda : v == "cpu" ? dmlaBackendCpu : dmlaBackendAuto;
    } else {
      std::fprintf(stderr, "%s: unknown flag %s (--help lists them)\n", argv[0], a.c_str());
      return 2;
    }
    if (!ok) return std::fprintf(stderr, "%s: %s\n", argv[0], err.c_str()), 2;
  }
  opt.workers = workers;
  opt.max_request_bytes = static_cast<uint64_t>(max_mb) << 20;
  opt.max_connections = max_conn;
  opt.idle_timeout_ms = idle_s * 1000;  // at most 2^20 s: fits an int in ms
  opt.io_timeout_ms = io_s * 1000;
  try {
    DecodeServer server(host, port, opt);
    std::printf("distmla_serve: listening on %s:%d, %s backend, %d workers, requests up to %d MiB\n", host.c_str(),
                server.port(), server.backend() == dmlaBackendCuda ? "cuda" : "cpu", opt.workers, max_mb);
    std::fflush(stdout);
    boost::asio::io_context sig_io;
    boost::asio::signal_set signals(sig_io, SIGINT, SIGTERM);
    signals.async_wait([&](const boost::system::error_code&, int) { sig_io.stop(); });
    // The GPU context's health, once a second: a lost one cannot serve again in this process.
    boost::asio::steady_timer health(sig_io);
    std::function<void()> watch = [&] {
      health.expires_after(std::chrono::seconds(1));
      health.async_wait([&](const boost::system::error_code& ec) {
        if (ec) return;
        if (!server.healthy()) return sig_io.stop();
        watch();
      });
    };
    watch();
    sig_io.run();
    const bool lost = !server.healthy();
    std::printf("distmla_serve: stopping%s%s\n", lost ? ": " : "", lost ? server.lost_reason().c_str() : "");
    server.stop();
    if (lost) return 3;
  } catch (const distmla::Error& e) {
    std::fprintf(stderr, "distmla_serve: %s (%s)\n", e.what(), dmlaGetErrorString(e.code()));
    return 1;
  }
  return 0;
}
