#!/bin/bash
# The distributed layer's GPU run (2 GPUs, one process each): NCCL multi-rank tests, then
# distmla_decode over TP x CP layouts, logs under $OUT. Run from the repository root with the
# build in build-dist.
set -u
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-/tmp/distmla_gpu_run}
mkdir -p "$OUT"
B=build-dist
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 -x NCCL_NVLS_ENABLE"
LOG=$OUT/decode.log
{ date -u; nvidia-smi -L; nvidia-smi topo -m; } > "$OUT/gpu.log" 2>&1
timeout 120 $MPI $B/tests/mpi/distmla_nccl_tests > "$OUT/nccl_tests.log" 2>&1
echo "nccl_tests rc=$?" >> "$OUT/gpu.log"
run() {  # run <timeout> <args...>
  local t=$1; shift
  echo "## $*" >> "$LOG"
  timeout "$t" "$@" >> "$LOG" 2>&1
  echo "## rc=$?" >> "$LOG"
}
D=$B/examples/decode/distmla_decode
# correctness + timing at a checkable size
run 60 $MPI $D -t 1 -x 2 -m allgather -b 32 -s 4096 -H 128 -n 20 -w 3
run 60 $MPI $D -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -n 20 -w 3
run 60 $MPI $D -t 2 -x 1 -m allgather -b 32 -s 4096 -H 128 -n 20 -w 3
run 60 $MPI $D -t 1 -x 2 -m alltoall -b 32 -s 4096 -H 128 -q 2 -n 20 -w 3
run 60 $D -b 32 -s 4096 -H 128 -n 20 -w 3
# large rows (no CPU check): single device vs 1x2 both merges vs 2x1
run 60 $D -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
run 60 $MPI $D -t 1 -x 2 -m allgather -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
run 60 $MPI $D -t 1 -x 2 -m alltoall -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
run 60 $MPI $D -t 2 -x 1 -m allgather -b 128 -s 8192 -H 128 -n 20 -w 3 -c 0
run 60 $D -b 64 -s 32768 -H 16 --varlen 0 -n 20 -w 3 -c 0
run 60 $MPI $D -t 1 -x 2 -m auto -b 64 -s 32768 -H 16 --varlen 0 -n 20 -w 3 -c 0
# TCP store bootstrap on GPUs (no mpirun)
echo "## store bootstrap" >> "$LOG"
($D --rank 1 --world 2 --store 127.0.0.1:29555 -x 2 -b 16 -s 2048 -H 64 -n 5 > "$OUT/store_r1.log" 2>&1 &)
timeout 60 $D --rank 0 --world 2 --store 127.0.0.1:29555 -x 2 -b 16 -s 2048 -H 64 -n 5 >> "$LOG" 2>&1
echo "## rc=$?" >> "$LOG"
sleep 2; cat "$OUT/store_r1.log" >> "$LOG"
