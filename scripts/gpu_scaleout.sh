#!/bin/bash
# Scale-out GPU run (issues 5 and 6): NCCL multi-rank tests and distmla_decode over every TP x CP
# layout of NP GPUs, next to the one-GPU step of the same run. Logs under $OUT.
#   NP=4 OUT=... [SHAPES="16 65536,64 32768"] bash scripts/gpu_scaleout.sh [build-dir]   (default build-dist; NP GPUs)
# All-to-all rows run twice: with the default exchange (-P auto: the CUDA IPC peer path) and -P 0 (NCCL).
# The build folder may hold carried runtime libraries in <build>/rt (cudart, Open MPI).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=${1:-build-dist}
NP=${NP:-4}
OUT=${OUT:-/tmp/distmla_scaleout}
mkdir -p "$OUT"
NCCL_DIR=""
for d in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libnccl.so.2" ] && NCCL_DIR=$d && break
done
export LD_LIBRARY_PATH="$PWD/$B/lib:$PWD/$B/distributed:${LD_LIBRARY_PATH:-}:$NCCL_DIR:/usr/local/cuda/lib64:$PWD/$B/rt"
G=$OUT/scaleout.log
{ date -u; nvidia-smi -L; nvidia-smi topo -m; } > "$G" 2>&1
D=$B/examples/decode/distmla_decode
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
if [ "$NGPU" -lt "$NP" ]; then  # NCCL takes one GPU a rank
  echo "NP=$NP needs $NP GPUs, this machine has $NGPU" | tee -a "$G"
  exit 1
fi
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -np $NP -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH"
timeout 200 $MPI $B/tests/mpi/distmla_nccl_tests --gtest_color=no > "$OUT/nccl_tests_np$NP.log" 2>&1
echo "nccl_tests -np $NP rc=$? ($(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$OUT/nccl_tests_np$NP.log" | tr '\n' ' '))" >> "$G"
timeout 200 $MPI $B/tests/mpi/distmla_peer_tests --gtest_color=no > "$OUT/peer_tests_np$NP.log" 2>&1
echo "peer_tests -np $NP rc=$? ($(grep -E '^\[  (PASSED|FAILED|SKIPPED)' "$OUT/peer_tests_np$NP.log" | tr '\n' ' '))" >> "$G"
LOG=$OUT/decode_np$NP.log
run() { sleep 1; echo "## $*" >> "$LOG"; "$@" >> "$LOG" 2>&1; echo "## rc=$?" >> "$LOG"; }  # from idle GPUs (run 42)
layouts() {  # TP x CP pairs with TP * CP = NP
  local t=$NP
  while [ $t -ge 1 ]; do echo "$t $((NP / t))"; t=$((t / 2)); done
}
# checked at a size the CPU reference handles, every layout and merge mode
for H in 128 16; do
  for l in $(layouts | tr ' ' ':'); do
    tp=${l%:*}; cp=${l#*:}
    for m in allgather alltoall; do
      [ "$cp" = 1 ] && [ "$m" = alltoall ] && continue  # nothing to exchange with CP 1
      run timeout 120 $MPI $D -t $tp -x $cp -m $m -b 32 -s 4096 -H $H -n 10 -w 2
    done
  done
done
# the issue rows, unchecked (-c 0): one GPU, then every layout and merge mode
IFS=, read -r -a shapes <<< "${SHAPES-16 65536,64 32768,128 8192}"  # SHAPES="": the checked rows only
for shape in "${shapes[@]}"; do
  set -- $shape
  for H in 128 16; do
    run timeout 60 $D -b $1 -s $2 -H $H --varlen 0 -n 20 -w 3 -c 0
    for l in $(layouts | tr ' ' ':'); do
      tp=${l%:*}; cp=${l#*:}
      for m in allgather alltoall; do
        [ "$cp" = 1 ] && [ "$m" = alltoall ] && continue
        run timeout 90 $MPI $D -t $tp -x $cp -m $m -b $1 -s $2 -H $H --varlen 0 -n 20 -w 3 -c 0
        [ "$m" = alltoall ] && run timeout 90 $MPI $D -t $tp -x $cp -m $m -b $1 -s $2 -H $H --varlen 0 -n 20 -w 3 -c 0 -P 0
      done
    done
  done
done
echo "done $(date -u)" >> "$G"
