#!/usr/bin/env python3
"""Sums up a decode trace (a build with -DDISTMLA_DECODE_TRACE=ON; kernels/src/decode_trace.cuh).

  DISTMLA_TRACE_FILE=t.bin distmla_bench -b 128 -s 1024 -H 128    # the last launch, at exit
  DISTMLA_TRACE_FILE=t.bin DISTMLA_TRACE_SYNC=1 distmla_bench ... -g 0   # launches alone
  python3 scripts/decode_trace.py t.bin [--blocks]

Prints, as medians over the CTAs in microseconds (clock64 converted with each CTA's own clock
against %globaltimer): when the CTAs passed griddepcontrol.wait and finished, when the store
warp's copies completed and when the split combine ran (first start, last end); per sequence j of a
part, the wait for its Q tile, the block loop, and the epilogue (row sums, barrier, the stores or
staging, the last warp); the first block's wait for its KV stage; then the median wait and the
median compute (stage full -> P V done) over the later blocks, the block periods' tail, and for
v6 the store warp's first staged tile (o_full seen, copies read, the stage's refill issued).
--blocks also lists, block by block, the medians of: the period, the refill's issue after the
stage's previous block was done, and issue -> P V done.
"""
import statistics as st
import struct
import sys

CTAS, SLOTS = 264, 256
ENTRY_NS, EXIT_NS, ENTRY, PDL, EXIT, STORE_NS, SEQS, BLOCKS = 0, 1, 2, 3, 4, 5, 6, 7
SEQ, BLK_WAIT, BLK_DONE, ISSUE, PDL_NS, COMBINE_NS, STORE_FULL, STORE_READ = 8, 72, 136, 200, 248, 250, 252, 253
EPI_ARRIVE, EPI_STM, EPI_ROWS = 249, 254, 255
START, QREADY, SUMS, SYNCED, LOOPEND, END, EPISYNC, LASTWARP = range(8)


def main(path, blocks=False):
    data = open(path, "rb").read()
    words = struct.unpack("<%dQ" % (len(data) // 8), data)
    ctas = [words[c * SLOTS:(c + 1) * SLOTS] for c in range(CTAS)]
    ctas = [r for r in ctas if r[ENTRY_NS] and r[EXIT_NS] > r[ENTRY_NS]]
    if not ctas:
        sys.exit("no traced CTA in %s" % path)
    ghz = st.median((r[EXIT] - r[ENTRY]) / (r[EXIT_NS] - r[ENTRY_NS]) for r in ctas)
    us = lambda cycles: cycles / ghz / 1000.0
    t0 = min(r[ENTRY_NS] for r in ctas)
    rel = sorted((r[EXIT_NS] - t0) / 1000.0 for r in ctas)
    pdl = st.median((r[PDL_NS] - t0) / 1000.0 for r in ctas)
    print("%d CTAs, SM clock %.3f GHz; past griddepcontrol.wait at %.2f us; done: first %.2f, median %.2f, last %.2f us"
          % (len(ctas), ghz, pdl, rel[0], rel[len(rel) // 2], rel[-1]))
    c0, c1 = words[COMBINE_NS], words[COMBINE_NS + 1]  # row 0 (CTA 0, 0): the combine's first start, last end
    if 0 < c0 < c1 < 2 ** 63:
        print("combine (past griddepcontrol.wait to the last row): %.2f .. %.2f us" % ((c0 - t0) / 1000.0, (c1 - t0) / 1000.0))
    store = sorted((r[STORE_NS] - t0) / 1000.0 for r in ctas if r[STORE_NS] > t0)
    if store:  # v6's store warp: its copies complete after the consumers are done
        print("store warp copies complete: median %.2f, last %.2f us" % (store[len(store) // 2], store[-1]))
    for j in range(min(8, max(r[SEQS] for r in ctas))):
        rows = [r for r in ctas if r[SEQS] > j]
        b = SEQ + 8 * j
        med = lambda a, z: st.median(us(r[b + z] - r[b + a]) for r in rows)
        print("  sequence %d (%3d CTAs): Q wait %.2f, block loop %.2f, epilogue: sums %.2f, barrier %.2f, out %.2f, last warp %.2f"
              % (j, len(rows), med(START, QREADY), med(SYNCED, LOOPEND), med(LOOPEND, SUMS), med(SUMS, EPISYNC),
                 med(EPISYNC, END), med(EPISYNC, LASTWARP)))
    last = [r for r in ctas if r[EPI_ARRIVE] > r[EPI_ROWS] > r[EPI_STM] > 0 and 0 < r[SEQS] <= 8]
    if last:  # v6's staged epilogue, thread 0, the part's last sequence
        b = lambda r: SEQ + 8 * (r[SEQS] - 1)
        print("  last staged epilogue, thread 0: stmatrix %.2f, lse %.2f, fence and o_full %.2f us"
              % (st.median(us(r[EPI_STM] - r[b(r) + EPISYNC]) for r in last),
                 st.median(us(r[EPI_ROWS] - r[EPI_STM]) for r in last),
                 st.median(us(r[EPI_ARRIVE] - r[EPI_ROWS]) for r in last)))
    nblk = min(64, int(st.median(r[BLOCKS] for r in ctas)))
    if nblk < 2:
        return
    wait = [st.median(us(r[BLK_WAIT + k] - (r[BLK_DONE + k - 1] if k else r[SEQ + SYNCED])) for r in ctas
                      if r[BLOCKS] > k) for k in range(nblk)]
    comp = [st.median(us(r[BLK_DONE + k] - r[BLK_WAIT + k]) for r in ctas if r[BLOCKS] > k) for k in range(nblk)]
    print("  first block's stage wait %.2f us; later blocks: wait %.2f, compute %.3f us (medians of %d)"
          % (wait[0], st.median(wait[1:]), st.median(comp[1:]), nblk - 1))
    # The medians hide the tail that a two-stage pipeline pays for: block periods (P V done to
    # P V done) of every CTA, pooled.
    per = sorted(us(r[BLK_DONE + k] - r[BLK_DONE + k - 1]) for r in ctas for k in range(1, min(64, r[BLOCKS])))
    if per:
        q = lambda f: per[min(len(per) - 1, int(f * len(per)))]
        print("  block period: mean %.2f, p50 %.2f, p90 %.2f, p99 %.2f, max %.2f us (%d periods)"
              % (st.mean(per), q(0.5), q(0.9), q(0.99), per[-1], len(per)))
    # the first sequence's last block (uniform lengths); its stage's refill is block k0 + 2, whose
    # issue is stamped only below block 48 (slot 248 on is another field)
    k0 = lambda r: int(r[BLOCKS] / r[SEQS]) - 1
    staged = [r for r in ctas if r[STORE_READ] > r[STORE_FULL] > 0 and r[SEQS] > 1 and k0(r) + 2 < 48]
    if staged:  # the first sequence's staged O tile and the refill of its stage (block k0 + 2)
        print("  first staged tile (%d CTAs): o_full seen %.2f us after its P V, copies read %.2f later, "
              "the stage's refill issued %.2f later"
              % (len(staged), st.median(us(r[STORE_FULL] - r[BLK_DONE + k0(r)]) for r in staged),
                 st.median(us(r[STORE_READ] - r[STORE_FULL]) for r in staged),
                 st.median(us(r[ISSUE + k0(r) + 2] - r[STORE_READ]) for r in staged)))
    if blocks:
        for k in range(1, min(nblk, 48)):
            rows = [r for r in ctas if r[BLOCKS] > k]
            refill = (" refill issued %.2f after block %d done," % (st.median(us(r[ISSUE + k] - r[BLK_DONE + k - 2]) for r in rows), k - 2)
                      if k >= 2 else "")
            print("    block %2d: period %.2f,%s issue -> done %.2f" % (
                k, st.median(us(r[BLK_DONE + k] - r[BLK_DONE + k - 1]) for r in rows), refill,
                st.median(us(r[BLK_DONE + k] - r[ISSUE + k]) for r in rows)))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--blocks"]
    if len(args) != 1:
        sys.exit(__doc__)
    main(args[0], "--blocks" in sys.argv[1:])
