#!/usr/bin/env python3
"""Splits the CP steps of a DISTMLA_PULL_TRACE run (distributed/src/pull_trace.h) into, per rank:
'before' (from the previous merge's end to this merge's start: the decode, and any host gap),
'wait' (the merge waiting for the peers' announcements: a later peer) and 'merge' (reads, merge,
end handshake). Prints each rank's distribution and the slowest steps, both ranks side by side
(the epochs are the same merges on every rank).   usage: pull_trace.py FILE.rank0.txt FILE.rank1.txt ..."""
import sys


def load(path):
    recs = []
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        e, s, r, t = (int(x) for x in line.split()[:4])
        if t:  # a merge that finished
            recs.append((e, s, r, t))
    return {e: (s, r, t) for e, s, r, t in recs}


def phases(recs):
    """epoch -> (step, before, wait, merge) in us, for epochs whose predecessor is recorded."""
    out = {}
    for e, (s, r, t) in recs.items():
        prev = recs.get(e - 1)
        if prev:
            out[e] = ((t - prev[2]) / 1e3, (s - prev[2]) / 1e3, (r - s) / 1e3, (t - r) / 1e3)
    return out


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def main(paths):
    ranks = [phases(load(p)) for p in paths]
    names = ("step", "before", "wait", "merge")
    for i, ph in enumerate(ranks):
        print(f"rank {i} ({paths[i]}): {len(ph)} steps")
        for k, n in enumerate(names):
            v = [x[k] for x in ph.values()]
            print(f"  {n:6s} median {pct(v, 0.5):9.1f}  p90 {pct(v, 0.9):9.1f}  p99 {pct(v, 0.99):9.1f}  max {max(v, default=float('nan')):9.1f} us")
    common = set.intersection(*(set(ph) for ph in ranks)) if ranks else set()
    worst = sorted(common, key=lambda e: -max(ph[e][0] for ph in ranks))[:10]
    print("slowest steps (us): epoch, then per rank step / before / wait / merge")
    for e in worst:
        print(f"  {e:7d}  " + "   ".join("%.1f / %.1f / %.1f / %.1f" % ph[e] for ph in ranks))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
