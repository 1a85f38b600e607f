#!/bin/bash
# The distributed layer's GPU run (2 GPUs, one process each): NCCL and peer-communicator
# multi-rank tests, a rank killed mid-run (gpu_kill_rank.sh), then distmla_decode over TP x CP
# layouts; logs under $OUT. Run from the repository root with the
# build in build-dist (build-dist/rt may hold carried runtime libraries: cudart, Open MPI).
# Uses mpirun when the machine has it, else N processes bootstrapped through the TCP store.
# LIB_FIRST=<folder holding another libdistmla.so.0> runs everything on that library (an A/B of
# a kernel branch on the same binaries).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/distmla_gpu_run}
export DISTMLA_PULL_TRACE=${DISTMLA_PULL_TRACE:-0} DISTMLA_PULL_TRACE_FILE=${DISTMLA_PULL_TRACE_FILE:-$OUT/pull_trace}
mkdir -p "$OUT"
B=build-dist
NCCL_DIR=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libnccl.so.2" ] && NCCL_DIR=$d && break
done
[ -z "$NCCL_DIR" ] && NCCL_DIR=$(dirname "$(find / -name 'libnccl.so.2' -not -path '*/proc/*' 2>/dev/null | head -1)" 2>/dev/null)
export LD_LIBRARY_PATH="${LIB_FIRST:+$PWD/$LIB_FIRST:}$PWD/$B/lib:$PWD/$B/distributed:${LD_LIBRARY_PATH:-}:$NCCL_DIR:/usr/local/cuda/lib64:$PWD/$B/rt"
G=$OUT/gpu.log  # the summary
{ date -u; nvidia-smi -L; nvidia-smi topo -m; echo "nccl from: $NCCL_DIR"; which mpirun; } > "$G" 2>&1
ldd $B/examples/decode/distmla_decode | grep -E "not found|nccl|cudart|mpi" >> "$G" 2>&1
# ROWS (below) picks the timed rows; ROWS=spread skips the suites (TESTS=1 keeps them).
ROWS=${ROWS:-all}
[ "$ROWS" = spread ] && TESTS=${TESTS:-0} || TESTS=${TESTS:-1}
# device cross-rank combine and pack against their host twins (one GPU)
if [ "$TESTS" = 1 ]; then
  timeout 60 $B/tests/mpi/distmla_combine_gpu_tests --gtest_color=no > "$OUT/combine_tests.log" 2>&1
  echo "combine_tests rc=$?" >> "$G"
fi
LOG=$OUT/decode.log
D=$B/examples/decode/distmla_decode
# Only an Open MPI 4 launcher matches the libmpi.so.40 the binaries were linked with.
if mpirun --version 2>/dev/null | grep -q "Open MPI) 4\."; then
  MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
       -x DISTMLA_PULL_TRACE -x DISTMLA_PULL_TRACE_FILE"
  if [ "$TESTS" = 1 ]; then
    timeout 150 $MPI $B/tests/mpi/distmla_nccl_tests --gtest_color=no > "$OUT/nccl_tests.log" 2>&1
    echo "nccl_tests (mpirun) rc=$?" >> "$G"
    timeout 120 $MPI $B/tests/mpi/distmla_peer_tests --gtest_color=no > "$OUT/peer_tests.log" 2>&1
    echo "peer_tests (mpirun) rc=$?" >> "$G"
  fi
  dist() { timeout 90 $MPI $D "$@"; }
else
  # No MPI here: two processes through the TCP store (rank 0 hosts it).
  P=29600
  if [ "$TESTS" = 1 ]; then
    DISTMLA_TEST_STORE=127.0.0.1:$P DISTMLA_TEST_RANK=1 DISTMLA_TEST_WORLD=2 timeout 150 \
      $B/tests/mpi/distmla_nccl_tests --gtest_color=no > "$OUT/nccl_tests_r1.log" 2>&1 &
    DISTMLA_TEST_STORE=127.0.0.1:$P DISTMLA_TEST_RANK=0 DISTMLA_TEST_WORLD=2 timeout 150 \
      $B/tests/mpi/distmla_nccl_tests --gtest_color=no > "$OUT/nccl_tests.log" 2>&1
    echo "nccl_tests (store) rc=$?" >> "$G"
    wait
    tail -5 "$OUT/nccl_tests_r1.log" >> "$G"
  fi
  dist() {
    P=$((P + 1))
    timeout 90 $D --rank 1 --world 2 --store 127.0.0.1:$P "$@" > /dev/null 2>> "$OUT/rank1.err" &
    timeout 90 $D --rank 0 --world 2 --store 127.0.0.1:$P "$@"
    local rc=$?
    wait
    return $rc
  }
fi
# a rank killed mid-run in a store launch ends the job on the other within seconds
[ "$TESTS" = 1 ] && { OUT=$OUT bash tests/mpi/gpu_kill_rank.sh "$D" > "$OUT/kill_rank.log" 2>&1; echo "kill_rank rc=$?" >> "$G"; }
run() {  # run <command...>: one configuration, from idle GPUs (a GPU that just ran the previous
  # configuration is clocked down by its power cap: docs/PERFORMANCE.md run 42)
  sleep 2
  echo "## $*" >> "$LOG"
  "$@" >> "$LOG" 2>&1
  echo "## rc=$?" >> "$LOG"
}
# ROWS=core: only the loop below (the issue-4 rows, -P 0 and -P 1, -r 0 and 1, -W 1000 and 0; ~4 min);
# ROWS=target: those plus sub-batches and the all-gather (~5.5 min); default: all rows.
# ROWS=spread: the issue-4 rows timed over equal stretches of the sustained state (~1 s of
# replays each, after 1 s of warm-up: one GPU -G 300, CP -G 600), in the order one GPU, CP, CP,
# one GPU; the SM clock and power of both cards sampled every 20 ms (clocks.csv; run start and
# end in marks.log, Unix seconds); each CP step's merges traced (DISTMLA_PULL_TRACE, split into
# decode / wait / merge by scripts/pull_trace.py; the raw traces in traces.tgz); the single
# replays' spread per rank. Run D25 found the CP step's time following the card's power-cap
# clock over ~0.1-1 s, so shorter windows land on one phase of it (~2 min).
if [ "$ROWS" = spread ]; then
  nvidia-smi --query-gpu=timestamp,index,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
    --format=csv,noheader -lms 20 > "$OUT/clocks.csv" 2>&1 &
  SMI=$!
  mark() { echo "$(date +%s.%N) $*" >> "$OUT/marks.log"; }
  for a in "-b 16 -s 65536 -H 128" "-b 64 -s 32768 -H 16"; do
    for who in one cp cp2 one2; do
      mark "start $who $a"
      if [ "${who%2}" = one ]; then
        run timeout 60 $D $a --varlen 0 -n 10 -w 3 -c 0 -r 1 -G 300 -W 1000
      else
        t="$OUT/pull_trace_h${a##* }_$who"
        DISTMLA_PULL_TRACE=16384 DISTMLA_PULL_TRACE_FILE=$t \
          run dist -t 1 -x 2 -m alltoall $a --varlen 0 -n 10 -w 3 -c 0 -k 1 -r 1 -G 600 -W 1000
        { echo "## pull trace, CP 2 $a ($who)"; python3 scripts/pull_trace.py "$t".rank*.txt; } >> "$OUT/trace.log" 2>&1
      fi
      mark "end $who $a"
    done
    { echo "## after: $a"; nvidia-smi -q -d PERFORMANCE; } >> "$OUT/perf.log" 2>&1
  done
  kill $SMI
  (cd "$OUT" && tar czf traces.tgz pull_trace_* && rm -f pull_trace_*)
  grep -E "^## [^r]|single replays|^ +(1x2|16|64) " "$LOG" >> "$G"
  python3 scripts/cp_ratio.py "$LOG" >> "$G" 2>&1
  echo "done $(date -u)" >> "$G"
  exit 0
fi
# issue-4 target rows: one GPU vs CP 2, same run; -k sub-batches (exchange overlapped with the
# next slice's attention); -G: graph-replayed step, exchange + merge alone and a bare NCCL
# collective of the same bytes, back to back; -r 1: every layer after the first of a step
# (the split schedule reused), one GPU and CP alike; -W 1000: the graphs timed after 1 s of
# their own replays, at the power cap (a busy server; -W 0: in the state the eager steps left,
# which differs between a one-GPU call and a CP step twice as short). Timed windows of equal
# length, ~1 s of replays (one GPU -G 300, CP -G 600), each one-GPU row run before and after its
# CP rows: at the cap the SM clock dips for ~0.25 s about once a second (run D26), so a shorter
# window lands on one phase of it (runs D19-D24). Rows without -P use the default (-P auto: the
# peer transport, whose all-to-all merge pulls from the peers' windows).
G1="-G 300"
GC="-G 600"
for rw in "0 1000" "1 1000" "1 0"; do
  r=${rw% *}
  W="-W ${rw#* }"
  for a in "-b 16 -s 65536 -H 128" "-b 64 -s 32768 -H 16"; do
    run timeout 60 $D $a --varlen 0 -n 30 -w 3 -c 0 -r $r $G1 $W  # its 'graph us' is what the CP graph step compares with
    run dist -t 1 -x 2 -m alltoall $a --varlen 0 -n 30 -w 3 -c 0 -k 1 -r $r $GC $W -P 0
    # the peer transport (-P 1, also the default): the merge pulls the peer's chunks from its
    # window; its bare column times the mailbox all-to-all, its NCCL bare the NCCL one it wraps
    run dist -t 1 -x 2 -m alltoall $a --varlen 0 -n 30 -w 3 -c 0 -k 1 -r $r $GC $W -P 1
    run timeout 60 $D $a --varlen 0 -n 30 -w 3 -c 0 -r $r $G1 $W
  done
done
if [ "$ROWS" != core ]; then
  run dist -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -n 10 -w 3 -k 2 -P 1
  run dist -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -n 10 -w 3 -k 2 -P 0
  run timeout 60 $D -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0
  for k in 1 2 4; do run dist -t 1 -x 2 -m alltoall -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0 -k $k $GC; done
  run dist -t 1 -x 2 -m allgather -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0 -k 1 $GC
  run timeout 60 $D -b 64 -s 32768 -H 16 --varlen 0 -n 30 -w 3 -c 0
  for k in 1 2 4; do run dist -t 1 -x 2 -m alltoall -b 64 -s 32768 -H 16 --varlen 0 -n 30 -w 3 -c 0 -k $k $GC; done
fi
if [ "$ROWS" = all ]; then
  # correctness + timing at a checkable size (CPU double reference on every rank)
  run dist -t 1 -x 2 -m allgather -b 32 -s 4096 -H 128 -n 20 -w 3
  run dist -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -n 20 -w 3
  run dist -t 2 -x 1 -m allgather -b 32 -s 4096 -H 128 -n 20 -w 3
  run dist -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -q 2 -n 20 -w 3
  run dist -t 1 -x 2 -m allgather -b 32 -s 4096 -H 128 -q 4 -n 20 -w 3
  run timeout 60 $D -b 32 -s 4096 -H 128 -q 2 -n 20 -w 3 -c 0
  # MTP, memory-bound heads: the bulk + tail split reads each KV page once
  run timeout 60 $D -b 64 -s 8192 -H 16 -q 2 -n 20 -w 3 -c 0
  run dist -t 1 -x 2 -m allgather -b 64 -s 8192 -H 16 -q 2 -n 20 -w 3
  run timeout 60 $D -b 32 -s 4096 -H 128 -n 20 -w 3
  # large rows (no CPU check): single device vs 1x2 (both merges) vs 2x1
  run timeout 60 $D -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
  run dist -t 1 -x 2 -m allgather -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
  run dist -t 1 -x 2 -m alltoall -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
  run dist -t 2 -x 1 -m allgather -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
  run timeout 60 $D -b 64 -s 32768 -H 16 --varlen 0 -n 20 -w 3 -c 0
  run dist -t 1 -x 2 -m auto -b 64 -s 32768 -H 16 --varlen 0 -n 20 -w 3 -c 0
  # issue-4 target rows: b 16 S 64k h 128 and b 64 S 32k h 16, one GPU vs CP 2, same run
  run timeout 60 $D -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0
  run dist -t 1 -x 2 -m alltoall -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0
  run dist -t 1 -x 2 -m allgather -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0
  run dist -t 2 -x 1 -m allgather -b 16 -s 65536 -H 128 --varlen 0 -n 30 -w 3 -c 0
fi
# issue 4's ratio, like for like: CP graph step / one-GPU call replayed from a graph
python3 scripts/cp_ratio.py "$LOG" >> "$G" 2>&1
echo "done $(date -u)" >> "$G"
