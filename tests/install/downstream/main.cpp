// A user's program: plan and run one decode step on the CPU backend through the installed
// package, and check one row against a hand computation.
#include <cmath>
#include <cstdio>
#include <vector>

#include <distmla/bf16.h>
#include <distmla/distmla.hpp>

int main() {
  dmlaDecodeShape_t shape;
  dmlaShapeInit(&shape);
  shape.batch = 1;
  shape.h_q = 1;
  shape.page_size = 16;
  shape.num_blocks = 1;
  shape.max_blocks_per_seq = 1;
  // Two tokens: row 0 all 0.5, row 1 all -0.5; q all 0.25 -> softmax weights from the scores.
  std::vector<uint16_t> q(DMLA_D_QK, distmla::float_to_bf16(0.25f));
  std::vector<uint16_t> kv(16 * DMLA_D_QK, distmla::float_to_bf16(NAN));
  for (int d = 0; d < DMLA_D_QK; ++d) {
    kv[d] = distmla::float_to_bf16(0.5f);
    kv[DMLA_D_QK + d] = distmla::float_to_bf16(-0.5f);
  }
  int32_t table[1] = {0}, seqlens[1] = {2};
  std::vector<uint16_t> out(DMLA_D_V);
  float lse = 0;
  dmlaDecodeTensors_t t{q.data(), kv.data(), table, seqlens, out.data(), &lse};
  try {
    distmla::DecodePlan plan(shape, dmlaBackendCpu);
    plan.run(t, nullptr, 0);
  } catch (const distmla::Error& e) {
    std::fprintf(stderr, "distmla error %d: %s\n", e.code(), e.what());
    return 1;
  }
  const double scale = 1.0 / std::sqrt(576.0);
  const double s0 = scale * 576 * 0.125, s1 = -s0;
  const double m = std::max(s0, s1);
  const double want_lse = m + std::log(std::exp(s0 - m) + std::exp(s1 - m));
  const double want_out = 0.5 * std::exp(s0 - want_lse) - 0.5 * std::exp(s1 - want_lse);
  const double got_out = distmla::bf16_to_float(out[0]);
  std::printf("lse %.6f (want %.6f), out[0] %.5f (want %.5f)\n", lse, want_lse, got_out, want_out);
  if (std::fabs(lse - want_lse) > 1e-4 || std::fabs(got_out - want_out) > 1e-2) return 1;
  std::printf("downstream OK\n");
  return 0;
}
