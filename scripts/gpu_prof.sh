#!/usr/bin/env bash
# Where a decode launch's warps stall, on the GPU machine: one `ncu --set full` profile of the
# first decode launch of distmla_bench (clocks left as they are) per kernel in KS, its SM
# frequency, duration, pipe and issue figures, then the SASS lines that hold >= 0.8% of the
# warp-stall samples with their two main reasons, and the summed samples of each stretch between
# barriers / waits / wgmma waits (the landmarks of the pipeline). Logs and reports under $OUT.
#   KS="dsplit tsplit" BARGS="-b 16 -s 65536 -H 128 -n 1 -w 1" OUT=... bash scripts/gpu_prof.sh [build-dir]
set -u
B=${1:-build-dist}
OUT=${OUT:-/tmp/gpu_prof_out}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
export LD_LIBRARY_PATH="$PWD/$B/lib:$PWD/$B/cudart:${LD_LIBRARY_PATH:-}"
BENCH=$B/examples/bench/distmla_bench
for k in ${KS:-dsplit}; do
  DISTMLA_DECODE_KERNEL=$k timeout 300 ncu --clock-control none -k regex:decode_ -c 1 --set full --import-source no \
    -o "$OUT/prof_$k" "$BENCH" ${BARGS:--b 128 -s 8192 -H 128 -V 1 -n 1 -w 1} > "$OUT/ncu_run_$k.log" 2>&1
  echo "== $k ncu rc=$?"
  ncu -i "$OUT/prof_$k.ncu-rep" --page details > "$OUT/details_$k.txt" 2>&1
  ncu -i "$OUT/prof_$k.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$k.csv" 2>&1
  grep -E "SM Frequency|^    Duration|Issue Slots Busy|Tensor|Eligible Warps|No Eligible|L2 Hit Rate|DRAM Throughput|L2 Cache Throughput|Memory Throughput" \
    "$OUT/details_$k.txt" | head -24
  python3 - "$OUT/sass_$k.csv" <<'PY'
import bisect, csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr, data = rows[1], rows[2:]
ix = {h: i for i, h in enumerate(hdr)}
def f(r, k):
    try:
        return float(r[ix[k]] or 0)
    except (KeyError, ValueError):
        return 0.0
tot = sum(f(r, 'Warp Stall Sampling (All Samples)') for r in data) or 1.0
reasons = [h for h in hdr if h.startswith('stall_') and 'Not Issued' not in h]
print("-- lines with >= 0.8% of the samples")
for n, r in enumerate(data):
    s = f(r, 'Warp Stall Sampling (All Samples)') / tot * 100
    if s >= 0.8:
        top = sorted(((f(r, k), k) for k in reasons), reverse=True)[:2]
        print(f"{n:5d} {s:5.1f}% {r[1][:70]:70s} {top[0][1]} {top[1][1]}")
print("-- stretches starting at a barrier, mbarrier wait or wgmma wait, >= 1%")
keys = ['BAR.SYNC', 'BAR.ARV', 'WARPGROUP.DEPBAR', 'SYNCS.PHASECHK', 'EXIT']
marks = [n for n, r in enumerate(data) if any(k in r[1] for k in keys)]
acc = {}
for n, r in enumerate(data):
    i = bisect.bisect_right(marks, n) - 1
    m = marks[i] if i >= 0 else 0
    a = acc.setdefault(m, [0.0, {}])
    a[0] += f(r, 'Warp Stall Sampling (All Samples)') / tot * 100
    for k in reasons:
        a[1][k] = a[1].get(k, 0) + f(r, k) / tot * 100
for m, (s, rs) in sorted(acc.items()):
    if s >= 1.0:
        top = sorted(rs.items(), key=lambda x: -x[1])[:3]
        print(f"{m:5d} {s:5.1f}% {data[m][1][:50]:50s}", " ".join(f"{k[6:]}={v:.1f}" for k, v in top))
PY
done
