#!/usr/bin/env python3
"""Checks that the float SIMD kernels of a built binary call nothing outside the kernels.

With --spills it checks instead that the register-blocked kernels (the prefill tiles'
Ops::qk_micro and Ops::pv_micro, the prefill's key-by-key gathers Ops::scatter_block and the
decode dot products' Ops::dot_batch of the AVX2 and AVX-512 paths, float; the value sums'
Ops::accumulate_block of the AVX2 path, for f32, f16, bf16 and q8_0 rows) keep their
accumulators (scatter_block: its row's vectors) in registers.

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

--spills: a micro-kernel keeps a block of accumulators across its innermost loop; their register
blocking is sized from the path's register count (Ops::qk_query_vectors, pv_column_vectors,
dot_keys_per_step, accumulate_vectors in detail/simd_kernels.inl). A block too big for the
registers makes the compiler spill: vector loads and stores on the stack (a ymm / zmm operand
with an %rsp / %rbp address) inside the kernel, as the AVX-512 blocks (6 x 4 accumulators) did on
AVX2's 16 registers, where they made dense prefill 1.4x slower. The micro-kernels take every
operand by pointer; inside their innermost loops (ranges closed by a conditional jump back, with
no such range inside; a kernel with none is checked whole) any such instruction is a spill.
Outside them GCC may keep loop-invariant vectors in memory (the lane mask of a partial last
vector, dot_batch's reduced sums), which the check ignores. They are declared noinline, and the
check fails unless it finds each kernel out of line on each path (the value sums' blocks without
the zero-weight test on AVX2 only: AVX-512 never runs them). %rbp counts as a stack address
only in a function that sets it up as a frame pointer (`mov %rsp,%rbp`); elsewhere GCC may use
it as an ordinary pointer. Caveat: GCC adds a target attribute's instruction sets to the
build's, so in a -march=native build on an AVX-512 machine the AVX2 kernels may use 32 vector
registers and cannot spill there; the portable and avx2-nof16c builds (plain -O2 and -mavx2)
check the AVX2 path with its own 16 registers (CTest label "kernel").

Exit 0 when no such call exists (and at least one float kernel was found), 1 with one line per
offending (kernel, callee) pair otherwise, 2 when objdump is missing or fails; with --spills,
0 when no micro-kernel spills, 1 with one line per spilling kernel (or when one is missing).
Usage: scripts/check_kernel_calls.py [--objdump PATH] [--spills] BINARY...
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


# The register-blocked kernels of the x86 paths (prefill tiles and decode dot products, float
# accumulators; the value sums' blocks over f32, f16, bf16 and q8_0 rows: rows converted in
# registers take registers of their own); the groups name the path and the kernel. The AVX-512
# value sums always run the blocks that skip zero weights by a masked multiply-add (kSkipZero).
# The AVX2 ones that skip them by a branch keep 4 x 4 accumulators and spill (calls with a zero
# weight only; left as measured, see accumulate_rows), so only the AVX2 blocks without the test
# are checked.
MICRO = re.compile(r"toptheta::detail::(avx2|avx512)::Ops::"
                   r"(qk_micro|pv_micro|dot_batch|accumulate_block|scatter_block)"
                   r"<(?:\d+, \d+, float|\d+, \d+, float, float"
                   r"|\d+, \d+, false, false, "
                   r"(?:float|Eigen::half|Eigen::bfloat16|toptheta::BlockQ8_0), float"
                   r"|\d+, false, "
                   r"(?:float|Eigen::half|Eigen::bfloat16|toptheta::BlockQ8_0), float)>\(")
WANT = {(p, k) for p in ("avx2", "avx512")
        for k in ("qk_micro", "pv_micro", "dot_batch", "scatter_block")} | {
    ("avx2", "accumulate_block")}
# A ymm / zmm register operand (the float accumulators of AVX2 / AVX-512) together with an
# %rsp-based address (SPILL_BP: %rbp-based, for functions with a frame pointer). 64-bit xmm moves
# there are GCC parking pointers, outside the loops, not vectors.
SPILL = re.compile(r"%[yz]mm\d+.*\(%rsp\)|\(%rsp\).*%[yz]mm\d+")
SPILL_BP = re.compile(r"%[yz]mm\d+.*\(%rbp\)|\(%rbp\).*%[yz]mm\d+")
FRAME = re.compile(r"\tmov\s+%rsp,%rbp\s*$")


def disassemble(binary, objdump):
    return subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", binary], check=True,
                          stdout=subprocess.PIPE, universal_newlines=True).stdout


# An instruction line of objdump: its address, then the instruction.
INSN = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
# A conditional jump to an address of a function (<name> or <name+0x40>): within the kernel, the
# back edge of a loop (GCC rotates loops to end in one; an unconditional jump back is a branch
# returning from code placed out of the way).
LOCAL_JUMP = re.compile(r"\t(?!jmp)j[a-z]+\s+(?:0x)?([0-9a-f]+)\s+<(.*?)(?:\+0x[0-9a-f]+)?>\s*$")


def innermost_loops(kernel, insns):
    """[start, end] address ranges of the innermost loops of a function: from the target of a
    conditional jump back within the function to its last such jump to that target, when no
    other such range lies inside."""
    ends = {}
    for addr, text in insns:
        j = LOCAL_JUMP.search("\t" + text)
        if j and j.group(2) == kernel and int(j.group(1), 16) <= addr:
            start = int(j.group(1), 16)
            ends[start] = max(ends.get(start, addr), addr)
    loops = list(ends.items())
    return [(a, b) for a, b in loops
            if not any(a != c and a <= c and d <= b for c, d in loops)]


def micro_spills(binary, objdump):
    """Yields (kernel, None) for every micro-kernel, and (kernel, instruction) for every
    vector load or store on the stack in its innermost loops. (Outside them, GCC may park a
    loop-invariant vector there, such as the lane mask of a partial last vector: not a spill of
    the accumulators, and not in the loop that runs.)"""
    def finish(kernel, frame, insns):
        loops = innermost_loops(kernel, insns)
        if not loops and insns:
            loops = [(insns[0][0], insns[-1][0])]
        for lo, hi in loops:
            for addr, text in insns:
                if lo <= addr <= hi and (SPILL.search(text) or (frame and SPILL_BP.search(text))):
                    yield kernel, text.strip()

    kernel = None
    frame = False
    insns = []
    for line in disassemble(binary, objdump).splitlines():
        m = FUNC.match(line)
        if m:
            if kernel:
                yield from finish(kernel, frame, insns)
            kernel = m.group(1) if MICRO.search(m.group(1)) else None
            frame = False
            insns = []
            if kernel:
                yield kernel, None
            continue
        if not kernel:
            continue
        i = INSN.match(line)
        if not i:
            continue
        if FRAME.search(line):
            frame = True
        insns.append((int(i.group(1), 16), i.group(2)))
    if kernel:
        yield from finish(kernel, frame, insns)


def check_spills(binaries, objdump):
    bad = collections.Counter()
    kernels = set()
    for b in binaries:
        try:
            for kernel, insn in micro_spills(b, objdump):
                kernels.add(kernel)
                if insn is not None:
                    bad[(b, kernel)] += 1
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"check_kernel_calls: cannot disassemble {b}: {e}", file=sys.stderr)
            return 2
    missing = WANT - {MICRO.search(k).groups() for k in kernels}
    if missing:
        print("check_kernel_calls: --spills found no out-of-line "
              f"{', '.join(f'{p}::Ops::{k}<..., float>' for p, k in sorted(missing))} "
              f"in {', '.join(binaries)}", file=sys.stderr)
        return 1
    for (b, kernel), n in sorted(bad.items()):
        print(f"{b}: {kernel}: {n} vector load(s) / store(s) on the stack")
    if bad:
        print(f"check_kernel_calls: {len(bad)} micro-kernel(s) spill vector registers (see the "
              "docstring: a register block too big for the path)", file=sys.stderr)
        return 1
    print(f"check_kernel_calls: {len(kernels)} micro-kernels, no spilled vector registers")
    return 0


def kernel_calls(binary, objdump):
    """Yields (kernel, None) for every float kernel, and (kernel, callee) for every call in it
    and every jump from it to another function."""
    kernel = None
    for line in disassemble(binary, objdump).splitlines():
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
    ap.add_argument("--spills", action="store_true",
                    help="check the prefill micro-kernels for spilled vector registers instead")
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args()
    if args.spills:
        return check_spills(args.binaries, args.objdump)
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
