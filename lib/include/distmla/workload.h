// Random paged decode workloads for the main job, the benchmark and the tests.
// Unused pages and the tails of partial pages are NaN (DESIGN.md section 8), unused block-table
// entries are -1, and physical blocks are shuffled so that logical order != physical order.
#pragma once

#include <cstdint>
#include <vector>

#include "distmla/distmla.h"

namespace distmla {

struct WorkloadOptions {
  int batch = 8;
  int s_q = 1;
  int h_q = 16;
  int page_size = 64;
  int mean_len = 512;
  bool varlen = false;        // lengths uniform in [mean/2, 3*mean/2] (at least s_q)
  double zero_len_frac = 0;   // fraction of sequences with length 0
  std::vector<int> lengths;   // explicit lengths (overrides mean_len/varlen when non-empty)
  int spare_blocks = 2;       // NaN-filled blocks in the pool that no sequence uses
  bool causal = true;
  float scale = 0.f;
  dmlaDataType_t dtype = dmlaBF16;
  uint64_t seed = 1;
};

struct Workload {
  dmlaDecodeShape_t shape;           // filled and consistent (max_blocks_per_seq, num_blocks)
  std::vector<uint16_t> q;           // [batch, s_q, h_q, 576]
  std::vector<uint16_t> kv;          // [num_blocks, page_size, 576]
  std::vector<int32_t> block_table;  // [batch, max_blocks_per_seq]
  std::vector<int32_t> seqlens;      // [batch]
  double mean_len() const;           // actual mean of seqlens
  // Host tensors view (out and lse left null).
  dmlaDecodeTensors_t host_tensors() const;
};

Workload make_workload(const WorkloadOptions& opt);

// DESIGN.md section 7: FLOP and bytes of one decode step.
double decode_flops(const dmlaDecodeShape_t& shape, double mean_len);
double decode_bytes(const dmlaDecodeShape_t& shape, double mean_len);

}  // namespace distmla
