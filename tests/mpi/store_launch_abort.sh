#!/usr/bin/env bash
# A store launch in which one rank fails ends on every rank within seconds (the store's abort),
# not when the others' 60 s deadlines pass. Three distmla_decode ranks on the CPU path through
# the TCP store; rank 1 asks for a layout (-t 2 -x 2) that does not match the world of 3.
#   store_launch_abort.sh <distmla_decode>
set -u
D=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for attempt in 1 2 3; do  # a random port may be taken: then rank 0 cannot listen, try another
  port=$((20000 + RANDOM % 12000))  # below the kernel's ephemeral range (32768-60999), where tests bind port 0
  common=(--world 3 --store "127.0.0.1:$port" --backend cpu -b 2 -s 64 -H 16 -n 1 -w 0)
  t0=$(date +%s)
  timeout 60 "$D" --rank 1 "${common[@]}" -t 2 -x 2 >"$dir/r1.log" 2>&1 &
  p1=$!
  timeout 60 "$D" --rank 2 "${common[@]}" -t 1 -x 3 >"$dir/r2.log" 2>&1 &
  p2=$!
  timeout 60 "$D" --rank 0 "${common[@]}" -t 1 -x 3 >"$dir/r0.log" 2>&1
  r0=$?
  wait $p1; r1=$?
  wait $p2; r2=$?
  secs=$(($(date +%s) - t0))
  grep -q "cannot listen" "$dir/r0.log" || break
done
for r in 0 1 2; do echo "rank $r:"; cat "$dir/r$r.log"; done
echo "exit codes $r0 $r1 $r2 after $secs s"
fail=0
for rc in $r0 $r1 $r2; do
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]; then fail=1; fi  # every rank fails, none by the timeout
done
[ "$secs" -le 15 ] || fail=1
grep -q "tp \* cp must equal the world size" "$dir/r1.log" || fail=1
for r in 0 2; do grep -q "aborted: rank 1" "$dir/r$r.log" || fail=1; done
[ $fail -eq 0 ] && echo PASS || echo FAIL
exit $fail
