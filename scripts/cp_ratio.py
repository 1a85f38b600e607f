#!/usr/bin/env python3
"""Issue 4's ratio from a distmla_decode log of `tests/mpi/gpu_run.sh` (decode.log): for every
CP row with a graph-replayed step, step / the one-GPU call of the same shape, -r and -W run before it,
like for like (the one-GPU 'graph us' from -G) and, for comparison with runs D5-D14, against the
eager one-GPU 'time us'.   usage: cp_ratio.py decode.log"""
import re
import sys


def opt(cmd, flag, default):
    m = re.search(r"(?:^|\s)" + re.escape(flag) + r"\s+(\S+)", cmd)
    return m.group(1) if m else default


def main(path):
    one = {}  # (b, S, H, r, W) -> (eager us, graph us or None)
    cmd = ""
    tail = []  # names of the one-GPU table's columns after the device name (from its header)
    out = []
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
        key = (opt(cmd, "-b", "?"), opt(cmd, "-s", "?"), opt(cmd, "-H", "?"), opt(cmd, "-r", "0"),
               opt(cmd, "-W", "0"))
        if re.match(r"^\d+x\d+$", f[0]) and len(f) >= 17:  # distributed row
            step = f[16]
            if step == "-" or key not in one:
                continue
            eager, graph = one[key]
            peer = "NCCL" if re.search(r"-P\s+0", cmd) else "default"
            like = f"{float(step) / graph:.3f}x" if graph else "-"
            out.append(f"b {key[0]} S {key[1]} h {key[2]} -r {key[3]} -W {key[4]} {f[0]} {f[1]} exchange {peer}: "
                       f"graph step {step} us; one GPU graph {graph or '-'} us, eager {eager} us; "
                       f"step / one GPU: {like} like for like, {float(step) / eager:.3f}x vs eager")
        elif f[0].isdigit() and tail:  # a one-GPU row (distributed rows start with TPxCP)
            col = dict(zip(tail, f[-len(tail):]))
            if "time us" not in col:
                continue
            g = col.get("graph us", "-")
            one[key] = (float(col["time us"]), float(g) if g != "-" else None)
    print("\n".join(out) if out else "no CP row with a graph-replayed step")


if __name__ == "__main__":
    main(sys.argv[1])
