#!/usr/bin/env python3
"""Checks that the float SIMD kernels of a built binary call nothing outside the kernels.

Every x86 SIMD path's primitives (`toptheta::detail::<path>::Ops::*`, detail/simd_kernels.inl,
and the vector types VecAvx2 / VecAvx512) carry a target attribute, which also sets
tune=generic (TOPTHETA_TUNE, detail/isa.hpp). GCC does not inline a function into one whose
target options differ from its own, so a plain inline function (compiled with the build's
options) called from a kernel stays out of line when the build's options are not the kernel's,
e.g. under -march=native, which tunes for the build machine: every vector register live across
the call is then spilled to the stack and reloaded, in the innermost loop. Eigen::numext::bit_cast
in the q8_0 load did that, and a -march=native build ran q8_0 decode 2.4x slower than a plain
-O2 one. (GCC's rule; clang takes no tune= in a target attribute, TOPTHETA_TUNE is empty
there, and clang inlines a callee whose instruction sets are a subset of the caller's.)

This script disassembles the given binaries (objdump -d -C) and lists every call, or jump (a tail
call, conditional ones included) to another function, made from a float kernel to anything but
another kernel or vector primitive of toptheta::detail, memcpy / memset / memmove (which GCC emits
for copies and fills it does not expand; their _FORTIFY_SOURCE *_chk forms too) or the sanitizer and
stack-protector runtimes. Float kernels: the Ops functions of the x86 paths whose last template
argument is `float` or a VecAvx2 / VecAvx512 vector (the instantiations decode and prefill run), and
the member functions and operators of VecAvx2 / VecAvx512. Not checked: the double-accumulator
kernels (one lane at a time, calling std::exp and std::isnan) and the scalar path, which has no
target attribute (its inlining is GCC's ordinary size decision).

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
KERNEL = re.compile(r"toptheta::detail::(?:(?:(?!scalar::)\w+::Ops::\w+<(?:.*, )?"
                    r"(?:float|toptheta::detail::VecAvx(?:2|512))>"
                    r"|VecAvx(?:2|512)::\w+(?:<.*>)?)\("
                    r"|operator\W+\(toptheta::detail::VecAvx(?:2|512)\b)")
# A call or jump to a named symbol (GNU objdump prints the address bare, llvm-objdump with 0x).
BRANCH = re.compile(r"\t(?:bnd )?(call|j[a-z]+)q?\s+(?:0x)?[0-9a-f]+\s+<(.*)>\s*$")
ALLOWED = re.compile(r"^(.* )?toptheta::detail::(\w+::Ops::|VecAvx(2|512)::"
                     r"|operator\W+\(toptheta::detail::VecAvx(2|512))"
                     r"|^(__)?(memcpy|memset|memmove)(_chk)?(@plt)?$"
                     r"|^(__asan_|__ubsan_|__tsan_|__sanitizer_|__stack_chk_fail)")


def kernel_calls(binary, objdump):
    """Yields (kernel, None) for every float kernel, and (kernel, callee) for every call in it
    and every jump from it to another function."""
    out = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", binary], check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    kernel = None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            kernel = m.group(1) if KERNEL.search(m.group(1)) else None
            if kernel:
                yield kernel, None
            continue
        if kernel:
            b = BRANCH.search(line)
            # A jump inside the function names it with an offset (<kernel+0x40>); a tail jump
            # names another function.
            if b and (b.group(1) == "call" or not b.group(2).startswith(kernel + "+")):
                yield kernel, b.group(2)


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
        print("check_kernel_calls: no float kernel (toptheta::detail::<path>::Ops::*<..., float>, "
              "VecAvx2 / VecAvx512) "
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
