#!/usr/bin/env python3
"""Issue 4's ratio from a distmla_decode log of `tests/mpi/gpu_run.sh` (decode.log): for every
CP row with a graph-replayed step, step / the one-GPU call of the same shape, -r and -W, like for
like (the one-GPU 'graph us' from -G; the mean of every such row in the log, as gpu_run.sh runs one
before and one after the CP rows) and, for comparison with runs D5-D14, against the eager one-GPU
'time us'. Where the log has the single replays' spread ('N single replays: mean M, ...'), also
the ratio of those means: every replay of the ~1 s window counted, the clock's dips included (the
throughput a serving loop gets; the slowest rank's for the CP step).   usage: cp_ratio.py decode.log"""
import re
import sys


def opt(cmd, flag, default):
    m = re.search(r"(?:^|\s)" + re.escape(flag) + r"\s+(\S+)", cmd)
    return m.group(1) if m else default


def means(path):
    """command -> the largest 'mean' of its spread lines (the slowest rank), in log order."""
    out = {}
    cmd = ""
    for line in open(path):
        if line.startswith("## ") and not line.startswith("## rc="):
            cmd = line[3:].strip()
        m = re.search(r"single replays: mean ([0-9.]+)", line)
        if m:
            out[cmd] = max(out.get(cmd, 0.0), float(m.group(1)))
    return out


def rows(path):
    """Yields (command, fields, one-GPU column names) for each table row of the log."""
    cmd = ""
    tail = []  # names of the one-GPU table's columns after the device name (from its header)
    for line in open(path):
        if line.startswith("## ") and not line.startswith("## rc="):
            cmd = line[3:].strip()
            continue
        f = line.split()
        if not f or line.startswith("#"):
            continue
        if "device" in f and "time us" in line:  # the one-GPU header (device names have spaces)
            tail = re.split(r"\s{2,}", line.split("device", 1)[1].strip())
            continue
        yield cmd, f, tail


def key_of(cmd):
    return (opt(cmd, "-b", "?"), opt(cmd, "-s", "?"), opt(cmd, "-H", "?"), opt(cmd, "-r", "0"),
            opt(cmd, "-W", "0"))


def main(path):
    one = {}  # (b, S, H, r, W) -> [(eager us, graph us or None)], every one-GPU row of that key
    one_mean = {}  # (b, S, H, r, W) -> [the spread's mean], every one-GPU row of that key that has one
    mean = means(path)
    for cmd, f, tail in rows(path):
        if f[0].isdigit() and tail:  # a one-GPU row (distributed rows start with TPxCP)
            col = dict(zip(tail, f[-len(tail):]))
            if "time us" in col:
                g = col.get("graph us", "-")
                one.setdefault(key_of(cmd), []).append((float(col["time us"]), float(g) if g != "-" else None))
                if cmd in mean:
                    one_mean.setdefault(key_of(cmd), []).append(mean[cmd])
    out = []
    for cmd, f, _ in rows(path):
        key = key_of(cmd)
        if not (re.match(r"^\d+x\d+$", f[0]) and len(f) >= 17) or f[16] == "-" or key not in one:
            continue
        step = float(f[16])
        eager = sum(e for e, _ in one[key]) / len(one[key])
        graphs = [g for _, g in one[key] if g]
        graph = sum(graphs) / len(graphs) if graphs else None
        peer = "NCCL" if re.search(r"-P\s+0", cmd) else "default"
        like = f"{step / graph:.3f}x" if graph else "-"
        shown = "/".join(f"{g:.1f}" for g in graphs) or "-"
        by_mean = ""
        if cmd in mean and one_mean.get(key):
            m1 = sum(one_mean[key]) / len(one_mean[key])
            by_mean = f"; means of all replays {mean[cmd]:.1f} / {m1:.1f} us = {mean[cmd] / m1:.3f}x"
        out.append(f"b {key[0]} S {key[1]} h {key[2]} -r {key[3]} -W {key[4]} {f[0]} {f[1]} exchange {peer}: "
                   f"graph step {f[16]} us; one GPU graph {shown} us, eager {eager:.1f} us; "
                   f"step / one GPU: {like} like for like, {step / eager:.3f}x vs eager" + by_mean)
    print("\n".join(out) if out else "no CP row with a graph-replayed step")


if __name__ == "__main__":
    main(sys.argv[1])
