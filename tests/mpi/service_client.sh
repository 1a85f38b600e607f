#!/usr/bin/env bash
# distmla_serve and distmla_client as a user runs them (README): the server on a free port (CPU
# backend), two checked clients at once, a client flag that does not apply (exit 2), a port with
# no server (exit 1), then SIGTERM: the server exits 0 within seconds.
#   service_client.sh <distmla_serve> <distmla_client>
set -u
S=$1
C=$2
dir=$(mktemp -d)
trap 'kill $spid 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; for f in "$dir"/*.log; do echo "--- $f"; cat "$f"; done; exit 1; }

"$S" --port 0 --backend cpu --workers 2 >"$dir/serve.log" 2>&1 &
spid=$!
port=
for _ in $(seq 100); do  # up to 10 s for the listening line
  port=$(sed -n 's/.*listening on [^:]*:\([0-9]*\),.*/\1/p' "$dir/serve.log")
  [ -n "$port" ] && break
  kill -0 $spid 2>/dev/null || fail "distmla_serve exited before listening"
  sleep 0.1
done
[ -n "$port" ] || fail "distmla_serve did not say where it listens"

timeout 60 "$C" --port "$port" -b 3 -s 200 -H 16 -q 2 -n 2 >"$dir/client1.log" 2>&1 &
c1=$!
timeout 60 "$C" --port "$port" -b 2 -s 100 -H 128 -p 32 -n 2 >"$dir/client2.log" 2>&1
rc2=$?
wait $c1
rc1=$?
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] || fail "clients exited $rc1 / $rc2"
grep -q ' 0$' "$dir/client1.log" && grep -q ' 0$' "$dir/client2.log" || fail "a #wrong column is not 0"

timeout 10 "$C" --port "$port" -x 2 >"$dir/bad_flag.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q -- '-x does not apply' "$dir/bad_flag.log" || fail "-x: exit $rc, expected 2 and the flag named"
"$S" --port 0 --workers 0 >"$dir/bad_server_flag.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q -- '--workers 0' "$dir/bad_server_flag.log" || fail "--workers 0: exit $rc, expected 2"

kill -TERM $spid
for _ in $(seq 50); do kill -0 $spid 2>/dev/null || break; sleep 0.1; done
kill -0 $spid 2>/dev/null && fail "distmla_serve still running 5 s after SIGTERM"
wait $spid
rc=$?
[ $rc -eq 0 ] || fail "distmla_serve exited $rc after SIGTERM, expected 0"

# No server there any more: the client says so and exits 1.
timeout 10 "$C" --port "$port" -b 1 -s 16 -n 1 >"$dir/no_server.log" 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q 'connect to' "$dir/no_server.log" || fail "no server: exit $rc, expected 1 and a connect error"
echo "service_client: ok (port $port)"
