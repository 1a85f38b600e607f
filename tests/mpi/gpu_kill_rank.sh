#!/bin/bash
# A rank killed (SIGKILL) in the middle of a 2-GPU store launch ends the job on the other rank
# within seconds, naming the dead rank (store_watch.h: the store sees the dead rank's connection
# close, aborts the job, and the other rank's watch cancels its NCCL and peer waits), for TP 2,
# CP 2 through the peer all-to-all and CP 2 through NCCL. Run from the repository root with the
# build in build-dist and LD_LIBRARY_PATH set as in gpu_run.sh (which calls it); prints one line a
# layout and PASS or FAIL; logs under $OUT.
#   gpu_kill_rank.sh [distmla_decode]
set -u
D=${1:-build-dist/examples/decode/distmla_decode}
OUT=${OUT:-/tmp/distmla_gpu_run}
mkdir -p "$OUT"
fail=0
kill_case() {  # kill_case <name> <layout flags>: rank 1 killed 10 s into a long run
  local name=$1 port=$((29800 + RANDOM % 150)) p0 p1 t0 rc i
  shift
  $D --rank 1 --world 2 --store 127.0.0.1:$port "$@" -b 16 -s 4096 -H 128 -n 1000000 -w 1 -c 0 \
    > "$OUT/kill_$name.r1.log" 2>&1 &
  p1=$!
  $D --rank 0 --world 2 --store 127.0.0.1:$port "$@" -b 16 -s 4096 -H 128 -n 1000000 -w 1 -c 0 \
    > "$OUT/kill_$name.r0.log" 2>&1 &
  p0=$!
  sleep 10  # past NCCL's init, in the timed steps
  t0=$(date +%s%N)
  kill -9 $p1 2>/dev/null || { echo "kill $name: FAIL (rank 1 had ended before the kill)"; fail=1; }
  for i in $(seq 1 100); do kill -0 $p0 2>/dev/null || break; sleep 0.1; done
  if kill -0 $p0 2>/dev/null; then
    echo "kill $name: FAIL (rank 0 still running 10 s after the kill)"
    kill -9 $p0
    fail=1
  fi
  wait $p0; rc=$?
  wait $p1 2>/dev/null
  echo "kill $name: rank 0 rc $rc, $(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill: $(tail -1 "$OUT/kill_$name.r0.log")"
  grep -q "rank 1: its process ended" "$OUT/kill_$name.r0.log" || { echo "kill $name: FAIL (rank 0 does not name rank 1)"; fail=1; }
  [ "$rc" -ne 0 ] || { echo "kill $name: FAIL (rank 0 rc 0)"; fail=1; }
  sleep 1
}
kill_case cp2_peer -t 1 -x 2 -m alltoall
kill_case tp2_nccl -t 2 -x 1
kill_case cp2_nccl -t 1 -x 2 -m alltoall -P 0
[ $fail -eq 0 ] && echo PASS || echo FAIL
exit $fail
