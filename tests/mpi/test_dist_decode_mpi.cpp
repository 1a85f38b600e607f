// The distributed decode on the MPI host path (CPU backend) against the single-device double
// reference, for every TP x CP layout of the world size, both merge modes, varlen batches with
// zero-length sequences and sequences shorter than CP pages, causal s_q 1..4.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>
#include <string>
#include <vector>

#include "dist_test_util.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/mpi_communicator.h"
#include "distmla/dist/shard_data.h"
#include "distmla/reference.h"
#include "distmla/workload.h"

using namespace distmla;
using namespace distmla::dist;

namespace {

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

std::vector<std::pair<int, int>> layouts(int world) {
  std::vector<std::pair<int, int>> v;
  for (int tp = 1; tp <= world; ++tp)
    if (world % tp == 0) v.push_back({tp, world / tp});
  return v;
}

struct Case {
  WorkloadOptions w;
  dmlaDataType_t partial = dmlaBF16;
  int sub_batches = 0;  // DecoderConfig::sub_batches (0: automatic, 1 on the host path)
};

// Runs every layout x mode on one workload.
void run_case(const Case& c) {
  auto comm = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{20000});
  Workload wl = make_workload(c.w);
  std::vector<double> out_ref, lse_ref;
  reference_decode(wl.shape, wl.host_tensors(), &out_ref, &lse_ref, 1);
  const dmlaDecodeShape_t& g = wl.shape;
  for (auto [tp, cp] : layouts(comm->size())) {
    if (g.h_q < tp) continue;
    const ShardGroups groups = split_groups(*comm, tp, cp);  // shared by both merge modes
    for (MergeMode mode : {MergeMode::kAllGather, MergeMode::kAllToAll}) {
      SCOPED_TRACE("tp " + std::to_string(tp) + " cp " + std::to_string(cp) + " " + merge_mode_name(mode) +
                   " s_q " + std::to_string(g.s_q) + " page " + std::to_string(g.page_size) + " h_q " +
                   std::to_string(g.h_q) + " rank " + std::to_string(comm->rank()));
      ShardPlan plan(comm->size(), comm->rank(), tp, cp, g.h_q, g.s_q, g.causal != 0, g.page_size);
      RankShard s = shard_batch(plan, g, wl.host_tensors());
      DecoderConfig cfg;
      cfg.batch = g.batch; cfg.s_q = g.s_q; cfg.h_q = g.h_q; cfg.page_size = g.page_size;
      cfg.num_blocks = s.num_blocks; cfg.max_blocks_per_seq = s.max_blocks_per_seq;
      cfg.dtype = g.q_dtype; cfg.out_dtype = g.q_dtype; cfg.partial_dtype = c.partial;
      cfg.scale = g.scale; cfg.causal = g.causal != 0; cfg.tp = tp; cfg.cp = cp; cfg.mode = mode;
      cfg.record_timing = true; cfg.sub_batches = c.sub_batches;
      DistDecoder dec(*comm, groups, cfg);
      ASSERT_EQ(dec.mode(), cp == 1 ? MergeMode::kAllGather : mode);
      ASSERT_EQ(dec.sub_batches(), std::max(c.sub_batches, 1));
      const Range oh = dec.out_heads();
      std::vector<uint8_t> ws(dec.workspace_bytes() + 256);
      void* wsp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) / 256 * 256);
      // Poisoned outputs: every element must be written.
      std::vector<uint16_t> out(static_cast<size_t>(g.batch) * g.s_q * oh.count * DMLA_D_V, 0x7FC0);
      std::vector<float> lse(static_cast<size_t>(g.batch) * oh.count * g.s_q, NAN);
      DecoderInputs in;
      in.q = s.q.data(); in.kv_pool = s.kv.data(); in.block_table = s.block_table.data();
      in.seqlens = s.seqlens.data();
      in.tail_block_table = s.tail_block_table.data(); in.tail_seqlens = s.tail_seqlens.data(); in.out = out.data(); in.lse = lse.data();
      ASSERT_EQ(dec.run(in, wsp, dec.workspace_bytes(), nullptr), dmlaSuccess) << last_error_message();
      StepTiming t;
      EXPECT_EQ(dec.last_timing(&t), dmlaSuccess);
      // An unknown run flag is refused before anything runs (on every rank alike: no collective).
      EXPECT_EQ(dec.run(in, wsp, dec.workspace_bytes(), nullptr, 2u), dmlaErrorInvalidArgument);
      EXPECT_NE(std::string(last_error_message()).find("flags = 2"), std::string::npos) << last_error_message();
      // Exchange + merge alone (collective: every rank) on the partials run() left behind.
      const std::vector<uint16_t> out_run = out;
      const std::vector<float> lse_run = lse;
      std::fill(out.begin(), out.end(), uint16_t{0x7FC0});
      std::fill(lse.begin(), lse.end(), NAN);
      ASSERT_EQ(dec.run_exchange(in, wsp, dec.workspace_bytes(), nullptr), dmlaSuccess) << last_error_message();
      // Every rank must finish the layout before the next one splits the world again.
      ASSERT_EQ(comm->barrier(), dmlaSuccess) << last_error_message();
      if (oh.count == 0) continue;  // an empty head slice (all-to-all, fewer heads than ranks)
      CompareResult cr = test_util::compare_heads(g, oh, out_run.data(), g.q_dtype, lse_run.data(), out_ref, lse_ref);
      EXPECT_TRUE(cr.ok()) << "rel_err " << cr.rel_err << " max_lse_err " << cr.max_lse_err << " wrong "
                           << cr.wrong;
      if (dec.exchange_bytes() == 0 && cfg.partial_dtype == cfg.out_dtype) continue;  // direct: nothing to redo
      cr = test_util::compare_heads(g, oh, out.data(), g.q_dtype, lse.data(), out_ref, lse_ref);
      EXPECT_TRUE(cr.ok()) << "run_exchange: rel_err " << cr.rel_err << " wrong " << cr.wrong;
    }
  }
}

Case short_and_empty(int s_q, int page) {
  Case c;
  c.w.batch = 8;
  c.w.s_q = s_q;
  c.w.h_q = 7;  // odd: uneven TP groups and head slices
  c.w.page_size = page;
  // zero-length, shorter than s_q, shorter than one page, straddling page ends, long.
  c.w.lengths = {0, 1, 5, page - 1, page + 1, 2 * page + 2, 5 * page + 3, 9 * page};
  c.w.seed = 11 + s_q;
  return c;
}

}  // namespace

TEST(DistDecodeMpi, ShortAndEmptySequencesCausal) {
  for (int s_q = 1; s_q <= 4; ++s_q) run_case(short_and_empty(s_q, 16));
}

TEST(DistDecodeMpi, VarlenPage64) {
  Case c;
  c.w.batch = 6;
  c.w.s_q = 2;
  c.w.h_q = 16;
  c.w.page_size = 64;
  c.w.mean_len = 300;
  c.w.varlen = true;
  c.w.zero_len_frac = 0.2;
  c.w.seed = 5;
  run_case(c);
}

TEST(DistDecodeMpi, SubBatchesMatchReference) {
  // Row slices of the batch (uneven: 8 rows in 3 slices), with and without the bulk + tail split.
  for (int s_q : {1, 3}) {
    Case c = short_and_empty(s_q, 16);
    c.sub_batches = 3;
    run_case(c);
  }
  Case c;
  c.w.batch = 6; c.w.s_q = 2; c.w.h_q = 16; c.w.mean_len = 300; c.w.zero_len_frac = 0.2; c.w.seed = 9;
  c.sub_batches = 6;  // one row a slice
  run_case(c);
}

TEST(DistDecodeMpi, NonCausalAndFp32Partials) {
  Case c = short_and_empty(3, 32);
  c.w.causal = false;
  c.partial = dmlaFP32;
  run_case(c);
}

TEST(DistDecodeMpi, SingleHeadManyRanks) {
  // h_q = world: one head per TP rank at tp = world, empty slices in all-to-all when cp > h.
  Case c = short_and_empty(2, 16);
  c.w.h_q = world_size();
  run_case(c);
}

TEST(DistDecodeMpi, OneHeadEmptySlices) {
  // h_q = 1 over CP ranks: in all-to-all mode every rank but one has an empty head slice.
  Case c = short_and_empty(2, 16);
  c.w.h_q = 1;
  run_case(c);
}

TEST(MpiCommunicator, TimedOutCommunicatorDestroyedBeforeTheLateRankArrives) {
  // The other ranks time out on a barrier and destroy their communicator before rank 0 enters
  // it; rank 0's barrier then reaches their abandoned requests. MPI must stay usable for a new
  // communicator on every rank (freeing a communicator under a pending collective crashed the
  // next one's progress: 4 ranks on 2 H200s, 2026-11-29).
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  {
    auto comm = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{200});
    if (comm->rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(700));
    const dmlaResult_t r = comm->barrier();
    EXPECT_EQ(r, comm->rank() == 0 ? dmlaSuccess : dmlaErrorTimeout) << last_error_message();
  }
  auto fresh = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{20000});
  const int mine = fresh->rank() + 100;
  std::vector<int> all(fresh->size(), -1);
  ASSERT_EQ(fresh->all_gather(&mine, all.data(), sizeof(int), nullptr), dmlaSuccess) << last_error_message();
  for (int r = 0; r < fresh->size(); ++r) EXPECT_EQ(all[r], r + 100);
  EXPECT_EQ(fresh->barrier(), dmlaSuccess) << last_error_message();
}

TEST(MpiCommunicator, LateRankGivesTimeoutNotHang) {
  // Rank 0 waits for a rank that comes late: dmlaErrorTimeout after the deadline, and the
  // communicator refuses further calls. The late rank completes the collective afterwards.
  if (world_size() != 2) GTEST_SKIP() << "written for 2 ranks";
  auto comm = make_mpi_communicator(MPI_COMM_WORLD, CommOptions{300});
  int mine = comm->rank(), all[64] = {};
  if (comm->rank() == 0) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(comm->all_gather(&mine, all, sizeof(int), nullptr), dmlaErrorTimeout);
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 5.0);
    EXPECT_EQ(comm->barrier(), dmlaErrorComm);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(800));
    // Rank 0's request is still posted: this late call matches it (rank 0 progresses it from
    // the barrier below), so nobody hangs.
    if (comm->size() == 2) EXPECT_EQ(comm->all_gather(&mine, all, sizeof(int), nullptr), dmlaSuccess);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}
