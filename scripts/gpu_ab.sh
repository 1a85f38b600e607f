#!/usr/bin/env bash
# A/B of two builds on the GPU machine, rounds interleaved (new, base, new, base, ...): runs
# distmla_bench of NEW (a build folder) and of BASE (a folder holding libdistmla.so.0 and
# distmla_bench, e.g. copied from a build of an older commit in a git worktree) and prints
# b s_q S h_q varlen | us graph_us graph_r1_us for each row. Carry both folders to the machine.
#   NEW=build-dist BASE=build-base ROUNDS="1 2" [BARGS="-b 128 -s 8192 -H 128"] bash scripts/gpu_ab.sh
# VARIANTS adds environment settings to a side: "new new:DISTMLA_DECODE_KERNEL=tsplit base"; a
# side other than new / base names another folder laid out like BASE ("new build-v1 base").
# BARGS defaults to "-i 2000" (each row from an idle card: rounds agree within 0.5%; without it a row
# inherits the power state the rows before it left, up to 17% slower: docs/PERFORMANCE.md, run 42).
# ROWS_FILE: a file of bench rows, one a line ("-b 128 -s 8192 -H 128 -V 1", "-b 128 -s 1024
# -H 16 -V 0 -g 1 -r 1"), each run on its own after BARGS instead of every row of DESIGN.md:
# a few rows, many rounds (runs 54-55 measured this way).
set -u
export NCCL_NVLS_ENABLE=0
NEW=${NEW:-build-dist}
BASE=${BASE:-build-base}
RT="$PWD/$NEW/cudart"  # a carried libcudart, if the build copied one there
nvidia-smi -L
# bench output (header lines dropped) -> b s_q S h_q varlen | us graph_us graph_r1_us
rows_of() { grep -v "^#" | awk '{printf "%s %s %s %s %s | %s %s %s\n", $1, $2, $3, $4, $5, $6, $7, $8}'; }
for round in ${ROUNDS:-1 2}; do
  for v in ${VARIANTS:-new base}; do
    side=${v%%:*}
    ev=""
    [ "$v" != "$side" ] && ev=$(echo "${v#*:}" | tr ',' ' ')
    if [ "$side" = new ]; then
      lib="$PWD/$NEW/lib:$RT"; bench="$NEW/examples/bench/distmla_bench"
    else
      dir=$BASE; [ "$side" != base ] && dir=$side
      lib="$PWD/$dir:$RT"; bench="$dir/distmla_bench"
    fi
    echo "## round $round $v"
    if [ -n "${ROWS_FILE:-}" ]; then
      while read -r row; do
        [ -z "$row" ] && continue
        # shellcheck disable=SC2086  # a row is several arguments
        env LD_LIBRARY_PATH="$lib" $ev timeout 60 "$bench" ${BARGS:--i 2000} $row 2>&1 | rows_of | tail -1
      done <"$ROWS_FILE"
    else
      env LD_LIBRARY_PATH="$lib" $ev timeout 150 "$bench" ${BARGS:--i 2000} 2>&1 | rows_of
    fi
  done
done
