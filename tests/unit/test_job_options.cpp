// The main job's command line (examples/decode/job_options.cpp).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "../../examples/decode/job_options.h"

namespace {

using distmla::examples::JobOptions;

struct Parsed {
  bool ok;
  bool help;
  std::string err;
  JobOptions opt;
};

// f(argc, argv) on the command line "distmla_decode <args>".
template <typename F>
auto with_argv(std::vector<std::string> args, F f) {
  args.insert(args.begin(), "distmla_decode");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return f(static_cast<int>(argv.size()), argv.data());
}

Parsed parse(std::vector<std::string> args) {
  Parsed p;
  p.ok = with_argv(std::move(args), [&](int argc, char** argv) {
    return distmla::examples::parse_job_options(argc, argv, &p.opt, &p.help, &p.err);
  });
  return p;
}

bool launch_of(std::vector<std::string> args, JobOptions* opt) {
  return with_argv(std::move(args), [&](int argc, char** argv) { return distmla::examples::store_launch_of(argc, argv, opt); });
}

TEST(JobOptions, Defaults) {
  const auto p = parse({});
  ASSERT_TRUE(p.ok);
  EXPECT_FALSE(p.help);
  EXPECT_EQ(p.opt.batch, 8);
  EXPECT_EQ(p.opt.mean_len, 512);
  EXPECT_EQ(p.opt.heads, 16);
  EXPECT_EQ(p.opt.backend, dmlaBackendAuto);
  EXPECT_EQ(p.opt.peer, -1);  // auto
}

TEST(JobOptions, ShortLongAndEqualsForms) {
  const auto p = parse({"-b", "4", "--seqlen", "1000", "-H", "128", "-q", "2", "-p", "16", "-n", "3",
                        "-w", "0", "-c", "0", "--varlen=0", "--causal", "0", "--seed", "9",
                        "--backend", "cpu", "-t", "2", "-x", "4", "-m", "alltoall",
                        "--store", "node1:29500", "--rank", "1", "--world", "8", "-P", "1"});
  ASSERT_TRUE(p.ok) << p.err;
  EXPECT_EQ(p.opt.batch, 4);
  EXPECT_EQ(p.opt.mean_len, 1000);
  EXPECT_EQ(p.opt.heads, 128);
  EXPECT_EQ(p.opt.s_q, 2);
  EXPECT_EQ(p.opt.page_size, 16);
  EXPECT_EQ(p.opt.iters, 3);
  EXPECT_EQ(p.opt.warmup, 0);
  EXPECT_FALSE(p.opt.check);
  EXPECT_FALSE(p.opt.varlen);
  EXPECT_FALSE(p.opt.causal);
  EXPECT_EQ(p.opt.seed, 9u);
  EXPECT_EQ(p.opt.backend, dmlaBackendCpu);
  EXPECT_EQ(p.opt.tp, 2);
  EXPECT_EQ(p.opt.cp, 4);
  EXPECT_EQ(p.opt.merge, "alltoall");
  EXPECT_EQ(p.opt.store, "node1:29500");
  EXPECT_EQ(p.opt.rank, 1);
  EXPECT_EQ(p.opt.world, 8);
  EXPECT_EQ(p.opt.peer, 1);
  EXPECT_EQ(parse({"-P", "0"}).opt.peer, 0);
  EXPECT_EQ(parse({"--peer", "auto"}).opt.peer, -1);
  const auto w = parse({"-G", "30", "-W", "1000"});
  ASSERT_TRUE(w.ok) << w.err;
  EXPECT_EQ(w.opt.graph_iters, 30);
  EXPECT_EQ(w.opt.warm_ms, 1000);
}

TEST(JobOptions, HelpFlag) {
  const auto p = parse({"-b", "2", "--help"});
  EXPECT_TRUE(p.ok);
  EXPECT_TRUE(p.help);
}

TEST(JobOptions, BadValuesNameTheFlagAndTheValue) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"-H", "200"}, "-H 200"},         {{"-H", "abc"}, "-H abc"},
      {{"-q", "5"}, "-q 5"},             {{"-p", "48"}, "-p 48"},
      {{"-p", "100"}, "-p 100"},         {{"-b", "-1"}, "-b -1"},
      {{"-n", "0"}, "-n 0"},             {{"-c", "2"}, "-c 2"},
      {{"--backend", "tpu"}, "--backend tpu"}, {{"-m", "ring"}, "-m ring"},
      {{"--store", "nohost"}, "--store nohost"}, {{"--store", "h:99999"}, "--store h:99999"},
      {{"-b", "12x"}, "-b 12x"},         {{"-z", "1"}, "unknown flag -z"},
      {{"-b"}, "-b needs a value"},      {{"--rank", "3", "--world", "2"}, "--rank 3"},
      {{"--varlen=yes"}, "--varlen yes"}, {{"-P", "2"}, "-P 2"},
      {{"-G", "5", "-W", "-1"}, "-W -1"}, {{"-W", "1000"}, "-W/--warm-ms 1000"}};
  for (const auto& c : cases) {
    const auto p = parse(c.first);
    EXPECT_FALSE(p.ok) << c.second;
    EXPECT_NE(p.err.find(c.second), std::string::npos) << "message: " << p.err;
  }
}

}  // namespace

// A command line that does not parse still names its store launch (so that the rank can end it).
TEST(JobOptions, StoreLaunchOfABadCommandLine) {
  JobOptions o;
  ASSERT_FALSE(parse({"--bogus", "1", "--store=node1:29500", "--rank", "2", "--world=3"}).ok);
  ASSERT_TRUE(launch_of({"--bogus", "1", "--store=node1:29500", "--rank", "2", "--world=3"}, &o));
  EXPECT_EQ(o.store, "node1:29500");
  EXPECT_EQ(o.rank, 2);
  EXPECT_EQ(o.world, 3);
  JobOptions missing, bad_port, out_of_world;
  EXPECT_FALSE(launch_of({"-b", "x", "--store", "node1:29500", "--rank", "0"}, &missing));
  EXPECT_FALSE(launch_of({"--store", "node1:0", "--rank", "0", "--world", "2"}, &bad_port));
  EXPECT_FALSE(launch_of({"--store", "node1:29500", "--rank", "2", "--world", "2"}, &out_of_world));
}
