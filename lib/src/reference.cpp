// CPU reference decode (DESIGN.md section 1) in double. Each work item is (sequence, group of
// heads): it converts the sequence's visible KV rows to float once (exact for bf16/fp16) and
// reuses them for all of its rows; products of two floats are exact in double, sums are double.
#include "distmla/reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <thread>

#include "distmla/bf16.h"

namespace distmla {

double resolved_scale(const dmlaDecodeShape_t& shape) {
  if (shape.scale == 0.f) return 1.0 / std::sqrt(static_cast<double>(DMLA_D_QK));
  return static_cast<double>(shape.scale);
}

namespace {

constexpr int kDqk = DMLA_D_QK;
constexpr int kDv = DMLA_D_V;
constexpr int kRowBlock = 8;  // query rows sharing one pass over the KV rows

// Tokens row t of a sequence of length len may see (DESIGN.md section 1, causal rule).
int visible_tokens(int len, int s_q, int t, bool causal) {
  if (!causal) return len;
  long n = static_cast<long>(len) - s_q + t + 1;
  return static_cast<int>(std::max(0L, std::min<long>(n, len)));
}

void convert_row(const uint16_t* src, int n, dmlaDataType_t dtype, float* dst) {
  if (dtype == dmlaFP16) {
    for (int k = 0; k < n; ++k) dst[k] = fp16_to_float(src[k]);
  } else {
    for (int k = 0; k < n; ++k) dst[k] = bf16_to_float(src[k]);
  }
}

// Eight independent accumulators: a fixed summation order that the compiler can vectorise.
double dot576(const float* a, const float* b) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int k = 0; k < kDqk; k += 8) {
    for (int i = 0; i < 8; ++i) acc[i] += static_cast<double>(a[k + i]) * static_cast<double>(b[k + i]);
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

struct Item {
  int seq;
  int h_begin;
  int h_end;
};

struct Scratch {
  std::vector<float> kv;      // [visible tokens, 576]
  std::vector<float> q;       // [rows of a block, 576]
  std::vector<double> score;  // [rows of a block, tokens]
};

void run_item(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& host, const Item& it,
              double scale, Scratch* sc, double* out, double* lse) {
  const int s_q = shape.s_q, h_q = shape.h_q, ps = shape.page_size;
  const bool causal = shape.causal != 0;
  const int len = host.seqlens[it.seq];
  const uint16_t* q = static_cast<const uint16_t*>(host.q);
  const uint16_t* pool = static_cast<const uint16_t*>(host.kv_pool);
  const int32_t* bt = host.block_table + static_cast<size_t>(it.seq) * shape.max_blocks_per_seq;

  // Only the tokens some row sees are read (never a NaN tail or an unused page).
  int max_vis = 0;
  for (int t = 0; t < s_q; ++t) max_vis = std::max(max_vis, visible_tokens(len, s_q, t, causal));
  sc->kv.resize(static_cast<size_t>(max_vis) * kDqk);
  for (int j = 0; j < max_vis; ++j) {
    const int32_t block = bt[j / ps];
    const uint16_t* src = pool + (static_cast<size_t>(block) * ps + j % ps) * kDqk;
    convert_row(src, kDqk, shape.kv_dtype, sc->kv.data() + static_cast<size_t>(j) * kDqk);
  }

  // Rows of this item: (t, h) for every t and h in [h_begin, h_end).
  const int nh = it.h_end - it.h_begin;
  const int rows = s_q * nh;
  for (int r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int rb = std::min(kRowBlock, rows - r0);
    int tt[kRowBlock], hh[kRowBlock], nvis[kRowBlock];
    int block_vis = 0;
    for (int r = 0; r < rb; ++r) {
      tt[r] = (r0 + r) / nh;
      hh[r] = it.h_begin + (r0 + r) % nh;
      nvis[r] = visible_tokens(len, s_q, tt[r], causal);
      block_vis = std::max(block_vis, nvis[r]);
    }
    sc->q.resize(static_cast<size_t>(kRowBlock) * kDqk);
    for (int r = 0; r < rb; ++r) {
      const size_t qoff = ((static_cast<size_t>(it.seq) * s_q + tt[r]) * h_q + hh[r]) * kDqk;
      convert_row(q + qoff, kDqk, shape.q_dtype, sc->q.data() + static_cast<size_t>(r) * kDqk);
    }
    sc->score.resize(static_cast<size_t>(kRowBlock) * std::max(block_vis, 1));
    double* score = sc->score.data();
    // Pass 1: scores, one KV row at a time for all rows of the block (the row stays in L1).
    for (int j = 0; j < block_vis; ++j) {
      const float* k = sc->kv.data() + static_cast<size_t>(j) * kDqk;
      for (int r = 0; r < rb; ++r) {
        if (j < nvis[r]) score[static_cast<size_t>(r) * block_vis + j] =
            scale * dot576(sc->q.data() + static_cast<size_t>(r) * kDqk, k);
      }
    }
    // Pass 2: max-subtracted softmax weights.
    double mx[kRowBlock], sum[kRowBlock];
    for (int r = 0; r < rb; ++r) {
      double* s = score + static_cast<size_t>(r) * block_vis;
      double m = -std::numeric_limits<double>::infinity();
      for (int j = 0; j < nvis[r]; ++j) m = std::max(m, s[j]);
      double z = 0.0;
      for (int j = 0; j < nvis[r]; ++j) {
        s[j] = std::exp(s[j] - m);
        z += s[j];
      }
      mx[r] = m;
      sum[r] = z;
    }
    // Pass 3: out = sum_j p_j * v_j, V being the first 512 values of each KV row.
    double* orow[kRowBlock];
    for (int r = 0; r < rb; ++r) {
      orow[r] = out + ((static_cast<size_t>(it.seq) * s_q + tt[r]) * h_q + hh[r]) * kDv;
      std::fill(orow[r], orow[r] + kDv, 0.0);
    }
    for (int j = 0; j < block_vis; ++j) {
      const float* v = sc->kv.data() + static_cast<size_t>(j) * kDqk;
      for (int r = 0; r < rb; ++r) {
        if (j >= nvis[r]) continue;
        const double p = score[static_cast<size_t>(r) * block_vis + j];
        double* o = orow[r];
        for (int k = 0; k < kDv; ++k) o[k] += p * static_cast<double>(v[k]);
      }
    }
    for (int r = 0; r < rb; ++r) {
      double* lse_row = lse + (static_cast<size_t>(it.seq) * h_q + hh[r]) * s_q + tt[r];
      if (nvis[r] == 0) {  // saw no token: out 0, lse -inf
        *lse_row = -std::numeric_limits<double>::infinity();
        continue;
      }
      const double inv = 1.0 / sum[r];
      for (int k = 0; k < kDv; ++k) orow[r][k] *= inv;
      *lse_row = mx[r] + std::log(sum[r]);
    }
  }
}

}  // namespace

void reference_decode(const dmlaDecodeShape_t& shape, const dmlaDecodeTensors_t& host,
                      std::vector<double>* out_ref, std::vector<double>* lse_ref, int num_threads) {
  const int b = std::max(shape.batch, 0);
  out_ref->assign(static_cast<size_t>(b) * shape.s_q * shape.h_q * kDv, 0.0);
  lse_ref->assign(static_cast<size_t>(b) * shape.h_q * shape.s_q,
                  -std::numeric_limits<double>::infinity());
  if (b == 0) return;
  if (num_threads <= 0) num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // Split heads only as far as needed to give every thread work (splitting re-converts KV).
  const int groups = std::min(shape.h_q, std::max(1, (2 * num_threads + b - 1) / b));
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(b) * groups);
  for (int i = 0; i < b; ++i) {
    for (int g = 0; g < groups; ++g) {
      items.push_back({i, g * shape.h_q / groups, (g + 1) * shape.h_q / groups});
    }
  }
  // Long sequences first, so the threads finish together.
  std::stable_sort(items.begin(), items.end(), [&](const Item& x, const Item& y) {
    return host.seqlens[x.seq] > host.seqlens[y.seq];
  });

  const double scale = resolved_scale(shape);
  std::atomic<size_t> next{0};
  auto worker = [&]() {
    Scratch sc;
    for (size_t k = next++; k < items.size(); k = next++) {
      run_item(shape, host, items[k], scale, &sc, out_ref->data(), lse_ref->data());
    }
  };
  const int nt = static_cast<int>(std::min<size_t>(static_cast<size_t>(num_threads), items.size()));
  std::vector<std::thread> threads;
  for (int t = 1; t < nt; ++t) threads.emplace_back(worker);
  worker();
  for (auto& th : threads) th.join();
}

}  // namespace distmla
