// Random paged workloads: uniform values in [-1, 1) (the softmax stays far from one-hot),
// NaN in every byte a correct kernel must not read, shuffled physical blocks.
#include "distmla/workload.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "distmla/bf16.h"

namespace distmla {

namespace {

// splitmix64: fast, seedable, identical on every platform (unlike std:: distributions).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform_pm1() {  // [-1, 1)
    return static_cast<float>(static_cast<double>(next() >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  }
  int uniform_int(int lo, int hi) {  // [lo, hi]
    return lo + static_cast<int>(next() % static_cast<uint64_t>(hi - lo + 1));
  }
  double uniform01() { return static_cast<double>(next() >> 11) / 9007199254740992.0; }
};

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("make_workload: " + what);
}

}  // namespace

double Workload::mean_len() const {
  if (seqlens.empty()) return 0.0;
  double s = 0;
  for (int32_t l : seqlens) s += l;
  return s / static_cast<double>(seqlens.size());
}

dmlaDecodeTensors_t Workload::host_tensors() const {
  dmlaDecodeTensors_t t{};
  t.q = q.data();
  t.kv_pool = kv.data();
  t.block_table = block_table.data();
  t.seqlens = seqlens.data();
  t.out = nullptr;
  t.lse = nullptr;
  return t;
}

Workload make_workload(const WorkloadOptions& opt) {
  require(opt.batch >= 0, "batch = " + std::to_string(opt.batch) + " is negative");
  require(opt.s_q >= 1, "s_q = " + std::to_string(opt.s_q) + " is below 1");
  require(opt.h_q >= 1, "h_q = " + std::to_string(opt.h_q) + " is below 1");
  require(opt.page_size >= 1, "page_size = " + std::to_string(opt.page_size) + " is below 1");
  require(opt.mean_len >= 0, "mean_len = " + std::to_string(opt.mean_len) + " is negative");
  require(opt.spare_blocks >= 0, "spare_blocks = " + std::to_string(opt.spare_blocks) + " is negative");
  require(opt.lengths.empty() || static_cast<int>(opt.lengths.size()) == opt.batch,
          "lengths has " + std::to_string(opt.lengths.size()) + " entries, batch = " +
              std::to_string(opt.batch));
  require(opt.dtype == dmlaBF16 || opt.dtype == dmlaFP16, "dtype must be bf16 or fp16");

  Rng rng(opt.seed);
  Workload w;
  dmlaShapeInit(&w.shape);
  w.shape.batch = opt.batch;
  w.shape.s_q = opt.s_q;
  w.shape.h_q = opt.h_q;
  w.shape.page_size = opt.page_size;
  w.shape.q_dtype = w.shape.kv_dtype = w.shape.out_dtype = opt.dtype;
  w.shape.scale = opt.scale;
  w.shape.causal = opt.causal ? 1 : 0;

  // Sequence lengths.
  w.seqlens.resize(opt.batch);
  for (int i = 0; i < opt.batch; ++i) {
    int len;
    if (!opt.lengths.empty()) {
      len = opt.lengths[i];
      require(len >= 0, "lengths[" + std::to_string(i) + "] = " + std::to_string(len) + " is negative");
    } else if (opt.varlen && opt.mean_len > 0) {
      len = rng.uniform_int(opt.mean_len / 2, opt.mean_len + opt.mean_len / 2);
      len = std::max(len, opt.s_q);
    } else {
      len = opt.mean_len;
    }
    if (opt.lengths.empty() && opt.zero_len_frac > 0 && rng.uniform01() < opt.zero_len_frac) len = 0;
    w.seqlens[i] = len;
  }

  // Pages, shuffled over the pool (plus spare blocks nobody uses).
  const int ps = opt.page_size;
  int64_t total_pages = 0;
  int max_pages = 1;
  for (int32_t l : w.seqlens) {
    int p = (l + ps - 1) / ps;
    total_pages += p;
    max_pages = std::max(max_pages, p);
  }
  const int64_t num_blocks = std::max<int64_t>(1, total_pages + opt.spare_blocks);
  require(num_blocks <= std::numeric_limits<int32_t>::max(), "too many blocks");
  w.shape.num_blocks = static_cast<int>(num_blocks);
  w.shape.max_blocks_per_seq = max_pages;

  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  for (size_t k = perm.size(); k > 1; --k) {
    std::swap(perm[k - 1], perm[static_cast<size_t>(rng.next() % k)]);
  }
  w.block_table.assign(static_cast<size_t>(opt.batch) * max_pages, -1);
  size_t next_block = 0;
  for (int i = 0; i < opt.batch; ++i) {
    int p = (w.seqlens[i] + ps - 1) / ps;
    for (int j = 0; j < p; ++j) w.block_table[static_cast<size_t>(i) * max_pages + j] = perm[next_block++];
  }

  // KV: NaN everywhere, then random values in the rows that hold tokens.
  const uint16_t nan_bits = float_to_half_bits(std::numeric_limits<float>::quiet_NaN(), opt.dtype);
  const size_t row = DMLA_D_QK;
  w.kv.assign(static_cast<size_t>(num_blocks) * ps * row, nan_bits);
  for (int i = 0; i < opt.batch; ++i) {
    for (int tok = 0; tok < w.seqlens[i]; ++tok) {
      int32_t block = w.block_table[static_cast<size_t>(i) * max_pages + tok / ps];
      uint16_t* dst = w.kv.data() + (static_cast<size_t>(block) * ps + tok % ps) * row;
      for (size_t k = 0; k < row; ++k) dst[k] = float_to_half_bits(rng.uniform_pm1(), opt.dtype);
    }
  }

  w.q.resize(static_cast<size_t>(opt.batch) * opt.s_q * opt.h_q * row);
  for (auto& v : w.q) v = float_to_half_bits(rng.uniform_pm1(), opt.dtype);
  return w;
}

double decode_flops(const dmlaDecodeShape_t& shape, double mean_len) {
  return static_cast<double>(shape.batch) * shape.s_q * shape.h_q * mean_len * 2.0 *
         (DMLA_D_QK + DMLA_D_V);
}

double decode_bytes(const dmlaDecodeShape_t& shape, double mean_len) {
  return static_cast<double>(shape.batch) *
         (mean_len * DMLA_D_QK * 2.0 + static_cast<double>(shape.s_q) * shape.h_q * (DMLA_D_QK + DMLA_D_V) * 2.0);
}

}  // namespace distmla
