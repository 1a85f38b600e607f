#!/usr/bin/env bash
# The one script sent to the GPU machine (run from the repo root, with the build folder carried):
#   bash scripts/gpu_check.sh [build-dir]          (default build-gpu)
# Writes logs under $OUT (at most 8 files come back) and prints a short summary last.
# Sections can be skipped with env vars: SKIP_TESTS=1 SKIP_SIMPLE=1 SKIP_SANITIZER=1 SKIP_SASS=1 SKIP_BENCH=1
# To extend (e.g. mpi runs): add a section that appends to $OUT/<name>.log and one line to $SUM.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=${1:-build-gpu}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
SUM="$OUT/summary.txt"
: >"$SUM"
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH="$PWD/$B/lib:${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64:/usr/local/cuda/lib:$PWD/$B/cudart"
say() { echo "$*" | tee -a "$SUM"; }

say "== gpu_check $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi -L 2>&1 | tee -a "$SUM"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total --format=csv 2>&1 | tee -a "$SUM"

T="$B/tests/gpu/distmla_gpu_tests"
BENCH="$B/examples/bench/distmla_bench"

# 1. GPU tests, one process per test (a hang in one cannot hide the others).
run_tests() {  # $1 = log, $2 = per-test timeout, rest = env
  local log=$1 to=$2; shift 2
  local pass=0 fail=0 tmo=0 names
  names=$("$T" --gtest_list_tests | awk '/^[^ ]/{s=$1} /^  /{print s $1}')
  for n in $names; do
    if [ $tmo -ge 2 ]; then echo "SKIPPED (2 timeouts) $n" >>"$log"; fail=$((fail + 1)); continue; fi
    env "$@" timeout "$to" "$T" --gtest_color=no --gtest_filter="$n" >>"$log" 2>&1
    rc=$?
    [ $rc -eq 124 ] && tmo=$((tmo + 1))
    if [ $rc -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAILED($rc) $n" >>"$log"; say "  FAIL($rc) $n"; fi
  done
  say "  $pass passed, $fail failed ($log)"
}
# DISTMLA_DECODE_KERNEL: dsplit (default), tsplit (v3), simple (CUDA cores, same schedule/combine);
# dsplit-nomc: dsplit without the KV multicast of paired row tiles (DISTMLA_KV_MULTICAST=0).
# (A build with -DDISTMLA_MERGE_IN_DECODE=ON merges split sequences in the dsplit decode: run this
# script on that build folder too.)
TEST_KERNELS=${TEST_KERNELS:-"dsplit dsplit-nomc tsplit simple"}
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  for k in $TEST_KERNELS; do
    say "== gpu tests (DISTMLA_DECODE_KERNEL=$k)"
    mc=1; [ "$k" = dsplit-nomc ] && mc=0
    run_tests "$OUT/gpu_tests_$k.log" 60 DISTMLA_DECODE_KERNEL=${k%-nomc} DISTMLA_KV_MULTICAST=$mc
    [ "$k" = dsplit ] && grep '^\[case\]' "$OUT/gpu_tests_$k.log" | sed 's/^/  /' | tee -a "$SUM" >/dev/null
  done
fi

# 1b. The decode service (distmla_serve's server) on the CUDA backend (its log stays off $OUT, which
# brings back 8 files at most; a failure's tail goes into the summary).
if [ "${SKIP_TESTS:-0}" != 1 ] && [ -x "$B/tests/mpi/distmla_service_tests" ]; then
  timeout 120 "$B/tests/mpi/distmla_service_tests" --gtest_color=no --gtest_filter='Service.Cuda*' >/tmp/service.log 2>&1
  rc=$?
  say "== service on CUDA: rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' /tmp/service.log | head -1)"
  [ $rc -eq 0 ] || tail -20 /tmp/service.log >>"$SUM"
fi

# 2. compute-sanitizer on small cases.
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  say "== compute-sanitizer"
  F='GpuDecode.Basic:GpuDecode.OddHeads*:GpuDecode.Sq4Page128*:GpuDecode.AllZeroLengths:GpuDecode.Batch128Short:GpuDecode.Heads128Page16*'
  for tool in memcheck racecheck; do
    DISTMLA_DECODE_KERNEL=${CHECK_KERNEL:-dsplit} timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 "$T" --gtest_color=no --gtest_filter="$F" \
      >>"$OUT/sanitizer.log" 2>&1
    say "  $tool rc=$? ($(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1))"
  done
fi

# 3. SASS facts of the kernels in the library.
if [ "${SKIP_SASS:-0}" != 1 ]; then
  say "== SASS"
  LIB=$(ls "$B"/lib/libdistmla.so* | head -1)
  cuobjdump --dump-sass "$LIB" >/tmp/distmla.sass 2>&1
  awk '/Function :/{f=$3} /HGMMA/{h[f]++} /(LDL|STL)/{l[f]++} END{for (k in h) print "  HGMMA", h[k], k; for (k in l) print "  LDL/STL", l[k], k}' \
    /tmp/distmla.sass | tee "$OUT/sass_counts.txt" | tee -a "$SUM"
  say "  total HGMMA $(grep -c HGMMA /tmp/distmla.sass), LDL/STL $(grep -cE 'LDL|STL' /tmp/distmla.sass)"
fi

# 4. Benchmark: every row of DESIGN.md section 7 (short rows also with the schedule reused), then
#    correctness-checked rows.
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  for k in ${BENCH_KERNELS:-dsplit}; do
    say "== distmla_bench (DISTMLA_DECODE_KERNEL=$k)"
    echo "## DISTMLA_DECODE_KERNEL=$k" >>"$OUT/bench.log"
    # -i 2000: every row from an idle card (reproducible; docs/PERFORMANCE.md run 42)
    DISTMLA_DECODE_KERNEL=$k timeout 150 "$BENCH" -i 2000 >>"$OUT/bench.log" 2>&1
    say "  rc=$?"
  done
  echo "## checked rows (DISTMLA_DECODE_KERNEL=${CHECK_KERNEL:-dsplit})" >>"$OUT/bench.log"
  DISTMLA_DECODE_KERNEL=${CHECK_KERNEL:-dsplit} timeout 60 "$BENCH" -b 32 -s 1024 -H 16 -c 1 -n 30 >>"$OUT/bench.log" 2>&1
  DISTMLA_DECODE_KERNEL=${CHECK_KERNEL:-dsplit} timeout 60 "$BENCH" -b 16 -s 2000 -H 128 -q 2 -V 1 -c 1 -n 30 >>"$OUT/bench.log" 2>&1
  cat "$OUT/bench.log" | tee -a "$SUM" >/dev/null
fi

# 5. Optional Nsight Compute profile of one decode launch (NCU=1; clocks left as they are).
if [ "${NCU:-0}" = 1 ]; then
  say "== ncu (DISTMLA_DECODE_KERNEL=${NCU_KERNEL:-dsplit}, b=128 S=8192 h_q=${NCU_H:-128})"
  DISTMLA_DECODE_KERNEL=${NCU_KERNEL:-dsplit} timeout 150 ncu --clock-control none -k regex:decode_ -c 1 \
    --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
    "$BENCH" -b 128 -s 8192 -H ${NCU_H:-128} -V 1 -n 1 -w 1 >"$OUT/ncu.txt" 2>&1
  say "  rc=$?"
  grep -E "Duration|Throughput|Pipe|Stall|Issued|Warp Cycles|Bandwidth|Busy" "$OUT/ncu.txt" | head -40 | tee -a "$SUM" >/dev/null
fi

echo
echo "================ SUMMARY ================"
cat "$SUM"
