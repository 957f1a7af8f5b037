#!/usr/bin/env python3
"""Checks that the software-prefetch loops of built binaries exist and branch only to loop.

The decode and prefill walks request the cache lines of the rows they read next with software
prefetches (detail/simd.hpp: prefetch_line, one line per loop trip in prefetch_bytes). The walks
are bound by those requests on wide storage, and their speed depends on the shape of that loop:
- GCC once deleted every prefetch of a plain -O2 build (the builtin has no side effects, and a
  function that only prefetches was classified pure): f16 dense decode ran 1.5x slower. Hence
  the volatile asm in prefetch_line, and this check's first rule: the binaries given have
  prefetch loops (counted over all of them).
- At -O2 GCC kept prefetch_bytes' cache-level test inside the loop (no loop unswitching): a
  compare and a conditional jump per line (plus a jump for prefetcht0 lines), and the f32 walks
  ran up to 1.5x slower than at -O3 (head-major, prefetcht0; see prefetch_bytes). Hence the level
  chosen outside the loop, and the second rule: the innermost loop around a prefetch of a
  toptheta function has exactly one conditional jump (its back edge) and one prefetch
  instruction (one line per trip, as prefetch_bytes measured).

Innermost loops are found as in check_kernel_calls.py (the range from the target of a
conditional jump back within the function to its last such jump). A prefetch outside any loop
(a single line, or a fully unrolled row) is not checked, nor is toptheta code inlined into a
function whose name does not mention toptheta (a test body). GNU objdump's output format only.

Exit 0 when at least one prefetch loop was found and every one is clean, 1 with one line per
offending loop otherwise (or when none was found), 2 when objdump is missing or fails.
Usage: scripts/check_prefetch_loops.py [--objdump PATH] BINARY...
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_kernel_calls import FUNC, INSN, disassemble, innermost_loops  # noqa: E402

PREFETCH = re.compile(r"^prefetch(t0|t1|t2|nta)\s")
# Any conditional jump (not jmp): counted inside a loop, wherever it goes.
COND_JUMP = re.compile(r"^(?:bnd )?(?!jmp)j[a-z]+\s")


def prefetch_loops(binary, objdump):
    """Yields (function, loop start, number of conditional jumps, the hint of each prefetch
    instruction) for every innermost loop holding a prefetch in a toptheta function."""
    def finish(fn, insns):
        for lo, hi in innermost_loops(fn, insns):
            body = [text for addr, text in insns if lo <= addr <= hi]
            hints = [m.group(1) for m in (PREFETCH.match(t) for t in body) if m]
            if hints:
                yield fn, lo, sum(1 for t in body if COND_JUMP.match(t)), hints

    fn, insns = None, []
    for line in disassemble(binary, objdump).splitlines():
        m = FUNC.match(line)
        if m:
            if fn:
                yield from finish(fn, insns)
            fn = m.group(1) if "toptheta::" in m.group(1) else None
            insns = []
            continue
        i = INSN.match(line) if fn else None
        if i:
            insns.append((int(i.group(1), 16), i.group(2).strip()))
    if fn:
        yield from finish(fn, insns)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    found = 0
    bad = []
    for b in args.binaries:
        try:
            for fn, lo, jumps, hints in prefetch_loops(b, args.objdump):
                found += 1
                if jumps != 1 or len(hints) != 1:
                    bad.append(f"{b}: {fn}: loop at {lo:x}: {jumps} conditional jumps, "
                               f"prefetches {', '.join(hints)}")
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"check_prefetch_loops: cannot disassemble {b}: {e}", file=sys.stderr)
            return 2
    for line in bad:
        print(line)
    if not found:
        print(f"check_prefetch_loops: no prefetch loop in {', '.join(args.binaries)} (were the "
              "prefetches deleted?)", file=sys.stderr)
        return 1
    if bad:
        print(f"check_prefetch_loops: {len(bad)} of {found} prefetch loops test more than their "
              "end or prefetch more than one line per trip (see the docstring)", file=sys.stderr)
        return 1
    print(f"check_prefetch_loops: {found} prefetch loops, each one prefetch and one conditional "
          "jump per trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
