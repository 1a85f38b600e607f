#!/usr/bin/env bash
# A store launch in which one rank fails ends on every rank within seconds (the store's abort),
# not when the others' 60 s deadlines pass. Three distmla_decode ranks on the CPU path through
# the TCP store, in four cases: rank 1 asks for a layout (-t 2 -x 2) that does not fit the world
# of 3; rank 2's command line does not parse; rank 0's (the store's host) does not parse; rank 2
# is killed (SIGKILL) in the middle of its steps (the store sees its connection close).
#   store_launch_abort.sh <distmla_decode>
set -u
D=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail=0
# case <name> <culprit rank> <its extra flags> <text its own log must hold>
run_case() {
  local name=$1 culprit=$2 bad=$3 own=$4 r rc secs port attempt
  local -a rcs
  for attempt in 1 2 3; do  # a random port may be taken: then rank 0 cannot listen, try another
    port=$((20000 + RANDOM % 12000))  # below the kernel's ephemeral range (32768-60999), where tests bind port 0
    local common="--world 3 --store 127.0.0.1:$port --backend cpu -b 2 -s 64 -H 16 -n 1 -w 0"
    local t0 pids=()
    t0=$(date +%s)
    for r in 1 2 0; do
      local extra="-t 1 -x 3"
      [ "$r" = "$culprit" ] && extra=$bad
      # shellcheck disable=SC2086  # flags are words
      timeout 60 "$D" --rank $r $common $extra >"$dir/$name.r$r.log" 2>&1 &
      pids[$r]=$!
    done
    for r in 0 1 2; do wait "${pids[$r]}"; rcs[$r]=$?; done
    secs=$(($(date +%s) - t0))
    grep -q "cannot listen" "$dir/$name.r0.log" || break
  done
  for r in 0 1 2; do echo "[$name] rank $r (rc ${rcs[$r]}): $(tr '\n' ' ' <"$dir/$name.r$r.log")"; done
  echo "[$name] all done after $secs s"
  for r in 0 1 2; do
    rc=${rcs[$r]}
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then echo "[$name] FAIL: rank $r rc $rc"; fail=1; fi
  done
  [ "$secs" -le 15 ] || { echo "[$name] FAIL: took $secs s"; fail=1; }
  grep -q -- "$own" "$dir/$name.r$culprit.log" || { echo "[$name] FAIL: rank $culprit's log lacks '$own'"; fail=1; }
  for r in 0 1 2; do
    [ "$r" = "$culprit" ] && continue
    grep -q "aborted: rank $culprit" "$dir/$name.r$r.log" || { echo "[$name] FAIL: rank $r not aborted by rank $culprit"; fail=1; }
  done
}
# kill_case: rank 2 killed 2 s into a long run; ranks 0 and 1 must end within seconds, naming it.
kill_case() {
  local port r rc t0 pids=() killed=1
  port=$((20000 + RANDOM % 12000))
  t0=$(date +%s)
  for r in 1 2 0; do
    # rank 2 without timeout(1), so that $! is the process to kill (the kill ends it either way)
    local wrap="timeout 60"
    [ $r = 2 ] && wrap=""
    $wrap "$D" --rank $r --world 3 --store 127.0.0.1:$port --backend cpu -b 2 -s 256 -H 16 -n 20000 -w 0 \
      -t 1 -x 3 >"$dir/kill.r$r.log" 2>&1 &
    pids[$r]=$!
  done
  sleep 2
  kill -9 "${pids[2]}" 2>/dev/null || killed=0
  for r in 0 1; do
    wait "${pids[$r]}"
    rc=$?
    echo "[kill] rank $r (rc $rc) after $(($(date +%s) - t0)) s: $(tr '\n' ' ' <"$dir/kill.r$r.log")"
    if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then echo "[kill] FAIL: rank $r rc $rc"; fail=1; fi
    grep -q "aborted: rank 2: its process ended" "$dir/kill.r$r.log" || { echo "[kill] FAIL: rank $r does not name rank 2"; fail=1; }
  done
  wait "${pids[2]}" 2>/dev/null
  local secs=$(($(date +%s) - t0))
  [ $killed = 1 ] || { echo "[kill] FAIL: rank 2 had ended before the kill"; fail=1; }
  [ "$secs" -le 10 ] || { echo "[kill] FAIL: took $secs s"; fail=1; }
}
run_case layout 1 "-t 2 -x 2" "tp \* cp must equal the world size"
run_case parse 2 "-t 1 -x 3 --bogus 1" "bogus"
run_case parse0 0 "-t 1 -x 3 --bogus 1" "bogus"
kill_case
[ $fail -eq 0 ] && echo PASS || echo FAIL
exit $fail
