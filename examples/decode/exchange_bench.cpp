// Graph-replayed exchange + merge vs a bare collective of the same bytes (exchange_bench.h).
#include "exchange_bench.h"

#include <algorithm>
#include <string>
#include <vector>

#include "distmla/dist/error.h"
#include "distmla/distmla.hpp"
#include "graph_replay.h"
#include "median.h"

namespace distmla::examples {

namespace {

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(dmlaErrorCuda, std::string("bench_exchange: ") + what + ": " + cudaGetErrorString(e));
}
void ok(dmlaResult_t r, const char* what) {
  if (r != dmlaSuccess) throw Error(r, std::string("bench_exchange: ") + what + ": " + dist::last_error_message());
}

struct Buf {
  void* p = nullptr;
  explicit Buf(size_t n) { ok(cudaMalloc(&p, std::max<size_t>(n, 256)), "cudaMalloc"); }
  ~Buf() { cudaFree(p); }
};

// body: a distmla call returning dmlaResult_t, checked once the capture has ended.
template <typename F>
void capture(Graph* gr, cudaStream_t st, F&& body) {
  dmlaResult_t r = dmlaSuccess;
  ok(capture_graph(gr, st, [&] { r = body(); }), "capture");
  ok(r, "captured call");
}

}  // namespace

ExchangeBench bench_graphs(dist::Communicator& world, dist::DistDecoder& dec, const dist::DecoderInputs& in,
                           void* ws, cudaStream_t st, int replays, unsigned flags, int warm) {
  dist::Communicator& cp = dec.cp_group();
  const size_t bytes = dec.exchange_bytes(), n = world.size();
  const bool a2a = dec.mode() == dist::MergeMode::kAllToAll, comm_part = bytes > 0;
  Buf send(bytes * n), recv(bytes * n), align_s(256), align_r(256 * n);
  cudaEvent_t e0, e1;
  ok(cudaEventCreate(&e0), "event");
  ok(cudaEventCreate(&e1), "event");
  std::vector<double> step, xm, bare, bare_w;
  StepSpread spread;
  dist::Communicator* wrapped = cp.wrapped();  // -P 1: NCCL beside the peer transport
  // The peer path's mailboxes for the bare all-to-all (a pulling decoder has none), before any
  // capture: a reserve that grows them replaces them.
  if (a2a && comm_part) ok(cp.reserve(bytes), "reserve");
  {
    // The schedule the reusing step needs and the partials run_exchange works on.
    ok(dec.run(in, ws, dec.workspace_bytes(), st), "first step");
    Graph gs, gx, gb, gw;
    capture(&gs, st, [&] { return dec.run(in, ws, dec.workspace_bytes(), st, flags); });
    if (comm_part) {
      capture(&gx, st, [&] { return dec.run_exchange(in, ws, dec.workspace_bytes(), st); });
      auto bare_on = [&](dist::Communicator& c) {
        return a2a ? c.all_to_all(send.p, recv.p, bytes, st) : c.all_gather(send.p, recv.p, bytes, st);
      };
      capture(&gb, st, [&] { return bare_on(cp); });
      if (wrapped) capture(&gw, st, [&] { return bare_on(*wrapped); });
    }
    auto timed = [&](cudaGraphExec_t g, int count) {
      ok(world.barrier(), "barrier");
      ok(world.all_gather(align_s.p, align_r.p, 256, st), "align");  // the ranks leave it together
      ok(cudaEventRecord(e0, st), "record");
      for (int i = 0; i < count; ++i) ok(cudaGraphLaunch(g, st), "graph launch");
      ok(cudaEventRecord(e1, st), "record");
      ok(world.wait(st), "wait");
      float ms = 0;
      ok(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
      return ms * 1e3 / count;
    };
    // The step's rounds as the one-GPU call's (single_job.cpp, time_rounds): after the warm-up,
    // enqueued at once, no barrier between them (the steps' own exchanges keep the ranks in
    // step), so that both sides are timed alike; interleaved with the exchange rounds, as before,
    // the step came out 2-6% faster (runs D21-D24). Then exchange + merge (on the partials the
    // steps left) and the bare collectives, interleaved so that drift hits them alike.
    {
      ok(world.barrier(), "barrier");
      ok(world.all_gather(align_s.p, align_r.p, 256, st), "align");
      double us[kGraphRounds];
      dmlaResult_t waited = dmlaSuccess;
      const cudaError_t e = time_rounds(gs.exec, st, 3 + warm, replays, [&] {
        waited = world.wait(st);
        return waited == dmlaSuccess;
      }, us, &spread);
      ok(waited, "step rounds: wait");
      ok(e, "step rounds");
      step.assign(us, us + kGraphRounds);
    }
    for (int r = -1; r < kGraphRounds && comm_part; ++r) {
      const int count = r < 0 ? 3 : replays;
      const double x = timed(gx.exec, count), b = timed(gb.exec, count);
      const double bw = wrapped ? timed(gw.exec, count) : 0;
      if (r < 0) continue;
      xm.push_back(x);
      bare.push_back(b);
      bare_w.push_back(bw);
    }
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return {median(step), median(xm), median(bare), median(bare_w), spread};
}

}  // namespace distmla::examples
