// The decoder without MPI: 4 threads as ranks (2x2 and 1x4), a store communicator each
// (TCP store on 127.0.0.1, ephemeral port), CPU backend, compared with the reference.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "dist_test_util.h"
#include "distmla/dist/decoder.h"
#include "distmla/dist/shard_data.h"
#include "distmla/dist/store_communicator.h"
#include "distmla/dist/tcp_store.h"
#include "distmla/distmla.hpp"
#include "distmla/reference.h"
#include "distmla/workload.h"

using namespace distmla;
using namespace distmla::dist;

TEST(StoreDecode, FourThreadRanksMatchReference) {
  TcpStoreServer server("127.0.0.1", 0);
  WorkloadOptions wo;
  wo.batch = 5; wo.s_q = 3; wo.h_q = 6; wo.page_size = 16; wo.seed = 3;
  wo.lengths = {0, 2, 17, 40, 90};
  Workload wl = make_workload(wo);
  std::vector<double> out_ref, lse_ref;
  reference_decode(wl.shape, wl.host_tensors(), &out_ref, &lse_ref, 1);
  const dmlaDecodeShape_t& g = wl.shape;
  int layout_id = 0;
  for (auto [tp, cp] : std::vector<std::pair<int, int>>{{2, 2}, {1, 4}})
    for (MergeMode mode : {MergeMode::kAllGather, MergeMode::kAllToAll}) {
      std::atomic<int> failures{0};
      std::vector<std::thread> ranks;
      const std::string ns = "layout" + std::to_string(layout_id++);
      for (int r = 0; r < 4; ++r)
        ranks.emplace_back([&, r, tp = tp, cp = cp, mode] {
          try {
            TcpStoreClient store("127.0.0.1", server.port(), ns);
            auto comm = make_store_communicator(store, r, 4, CommOptions{20000});
            ShardPlan plan(4, r, tp, cp, g.h_q, g.s_q, true, g.page_size);
            RankShard s = shard_batch(plan, g, wl.host_tensors());
            DecoderConfig cfg;
            cfg.batch = g.batch; cfg.s_q = g.s_q; cfg.h_q = g.h_q; cfg.page_size = g.page_size;
            cfg.num_blocks = s.num_blocks; cfg.max_blocks_per_seq = s.max_blocks_per_seq;
            cfg.tp = tp; cfg.cp = cp; cfg.mode = mode;
            DistDecoder dec(*comm, cfg);
            const Range oh = dec.out_heads();
            std::vector<uint16_t> out(static_cast<size_t>(g.batch) * g.s_q * oh.count * DMLA_D_V, 0x7FC0);
            std::vector<float> lse(static_cast<size_t>(g.batch) * oh.count * g.s_q, NAN);
            std::vector<double> ws_d(dec.workspace_bytes() / 8 + 64);
            void* ws = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws_d.data()) + 255) / 256 * 256);
            DecoderInputs in;
            in.q = s.q.data(); in.kv_pool = s.kv.data(); in.block_table = s.block_table.data();
            in.seqlens = s.seqlens.data();
            in.tail_block_table = s.tail_block_table.data(); in.tail_seqlens = s.tail_seqlens.data(); in.out = out.data(); in.lse = lse.data();
            if (dec.run(in, ws, dec.workspace_bytes(), nullptr) != dmlaSuccess) {
              ADD_FAILURE() << "rank " << r << ": " << last_error_message();
              ++failures;
              return;
            }
            if (oh.count == 0) return;
            CompareResult cr = test_util::compare_heads(g, oh, out.data(), g.q_dtype, lse.data(), out_ref, lse_ref);
            if (!cr.ok()) {
              ADD_FAILURE() << "rank " << r << " tp " << tp << " cp " << cp << " " << merge_mode_name(mode)
                            << ": rel_err " << cr.rel_err << " wrong " << cr.wrong;
              ++failures;
            }
          } catch (const std::exception& e) {
            ADD_FAILURE() << "rank " << r << ": " << e.what();
            ++failures;
          }
        });
      for (auto& t : ranks) t.join();
      EXPECT_EQ(failures.load(), 0);
    }
}

TEST(StoreDecode, BadConfigAndInputsAreRejectedNamingTheValue) {
  TcpStoreServer server("127.0.0.1", 0);
  TcpStoreClient store("127.0.0.1", server.port(), "validation");
  auto comm = make_store_communicator(store, 0, 1, CommOptions{2000});
  DecoderConfig cfg;
  cfg.batch = 2; cfg.h_q = 8; cfg.num_blocks = 4; cfg.max_blocks_per_seq = 2;
  cfg.tp = 2;  // world is 1
  try {
    DistDecoder d(*comm, cfg);
    FAIL() << "accepted tp 2 on a world of 1";
  } catch (const distmla::Error& e) {
    EXPECT_NE(std::string(e.what()).find("world = 1"), std::string::npos) << e.what();
  }
  cfg.tp = 1;
  cfg.partial_dtype = dmlaFP16;  // q is bf16
  try {
    DistDecoder d(*comm, cfg);
    FAIL() << "accepted fp16 partials for bf16 q";
  } catch (const distmla::Error& e) {
    EXPECT_NE(std::string(e.what()).find("partial_dtype = fp16"), std::string::npos) << e.what();
  }
  cfg.partial_dtype = dmlaBF16;
  for (int k : {-1, 3, DistDecoder::kMaxSubBatches + 1}) {  // batch is 2
    cfg.sub_batches = k;
    try {
      DistDecoder d(*comm, cfg);
      FAIL() << "accepted sub_batches " << k;
    } catch (const distmla::Error& e) {
      EXPECT_NE(std::string(e.what()).find("sub_batches = " + std::to_string(k)), std::string::npos) << e.what();
    }
  }
  cfg.sub_batches = 0;
  cfg.backend = dmlaBackendCuda;  // host communicator
  EXPECT_THROW(DistDecoder(*comm, cfg), distmla::Error);
  cfg.backend = dmlaBackendAuto;
  DistDecoder d(*comm, cfg);
  EXPECT_EQ(d.backend(), dmlaBackendCpu);
  std::vector<uint8_t> ws(d.workspace_bytes() + 512);
  void* wsp = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(ws.data()) + 255) / 256 * 256);
  DecoderInputs in;  // all null
  EXPECT_EQ(d.run(in, wsp, d.workspace_bytes()), dmlaErrorNullPointer);
  EXPECT_NE(std::string(last_error_message()).find("q is null"), std::string::npos) << last_error_message();
  std::vector<uint16_t> buf(1 << 16);
  std::vector<int32_t> ibuf(16, 0);
  std::vector<float> lse(64);
  in.q = buf.data(); in.kv_pool = buf.data(); in.block_table = ibuf.data(); in.seqlens = ibuf.data();
  in.out = buf.data(); in.lse = lse.data();
  if (d.workspace_bytes() > 0) {
    EXPECT_EQ(d.run(in, wsp, d.workspace_bytes() - 1), dmlaErrorWorkspace);
    EXPECT_NE(std::string(last_error_message()).find("workspace_bytes"), std::string::npos);
  }
  EXPECT_EQ(d.run(in, wsp, d.workspace_bytes()), dmlaSuccess) << last_error_message();  // all lengths 0
}
