#!/usr/bin/env python3
"""Checks that the float SIMD kernels of a built binary call nothing outside the kernels.

Every SIMD path's primitives (`toptheta::detail::<path>::Ops::*`, detail/simd_kernels.inl) carry
a target attribute. GCC does not inline a plain inline function into such a function when the
build's own flags enable more than the attribute names (-march=native on a CPU with extensions
the attribute does not list): the call stays out of line, and every vector register live across
it is spilled to the stack and reloaded, in the innermost loop. Eigen::numext::bit_cast in the
q8_0 load did that, and a -march=native build ran q8_0 decode 2.4x slower than a plain -O2 one.

This script disassembles the given binaries (objdump -d -C) and lists every call made from a
kernel with float accumulators (the instantiations whose last template argument is `float`, the
ones decode and prefill run) to anything but another kernel or vector primitive of
toptheta::detail, or memcpy / memset (which GCC emits for copies and fills it does not expand).
Not checked: the double-accumulator kernels (one lane at a time, std::exp, std::isnan) and the
scalar path, which has no target attribute (its inlining is GCC's ordinary size decision).

Exit 0 when no such call exists (and at least one float kernel was found), 1 with one line per
offending (kernel, callee) pair otherwise, 2 when objdump is missing or fails.
Usage: scripts/check_kernel_calls.py [--objdump PATH] BINARY...
"""
import argparse
import collections
import re
import subprocess
import sys

FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
KERNEL = re.compile(r"toptheta::detail::(?!scalar::)(\w+)::Ops::(\w+)<(.*), float>\(")
CALL = re.compile(r"\tcall[q]?\s+[0-9a-f]+\s+<(.*)>\s*$")
ALLOWED = re.compile(r"^(.* )?toptheta::detail::(\w+::Ops::|Vec\w*::)|^(memcpy|memset|memmove)(@plt)?$")


def kernel_calls(binary, objdump):
    """Yields (kernel, callee) for every call instruction inside a float kernel."""
    out = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", binary], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    kernel = None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            k = KERNEL.search(m.group(1))
            kernel = f"{k.group(1)}::Ops::{k.group(2)}<{k.group(3)}, float>" if k else None
            if kernel:
                yield kernel, None
            continue
        if kernel:
            c = CALL.search(line)
            if c:
                yield kernel, c.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    bad = collections.Counter()
    kernels = set()
    for b in args.binaries:
        try:
            for kernel, callee in kernel_calls(b, args.objdump):
                kernels.add(kernel)
                if callee is not None and not ALLOWED.search(re.sub(r"\+0x[0-9a-f]+$", "", callee)):
                    bad[(b, kernel, callee)] += 1
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"check_kernel_calls: cannot disassemble {b}: {e}", file=sys.stderr)
            return 2
    if not kernels:
        print("check_kernel_calls: no float kernel (toptheta::detail::<path>::Ops::*<..., float>) "
              f"in {', '.join(args.binaries)}", file=sys.stderr)
        return 1
    for (b, kernel, callee), n in sorted(bad.items()):
        print(f"{b}: {kernel} calls {callee} ({n} call site{'s' if n > 1 else ''})")
    if bad:
        print(f"check_kernel_calls: {len(bad)} out-of-line call(s) from float kernels "
              "(see the docstring: a plain inline function called from a target-attributed "
              "kernel)", file=sys.stderr)
        return 1
    print(f"check_kernel_calls: {len(kernels)} float kernels, no out-of-line calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
