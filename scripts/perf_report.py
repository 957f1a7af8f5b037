#!/usr/bin/env python3
"""Run toptheta-bench and write docs/performance.md: the targets table (required / measured /
worst configuration / PASS-MISS), the Top-θ variants, GB/s against the read-bandwidth floor,
the dense walk on L2-resident rows (its compute ceiling), prefill GFLOP/s against the FMA
probe, the engine interfaces (batched ragged decode, paged and q8_0 caches), head dims, SIMD
paths, the portable binary against the native one, thread scaling, bit-identity, and the
speed-up plot (docs/img/speedup_vs_L.png).

Python 3 standard library only; the plot is drawn by gnuplot (Debian: gnuplot-nox) when it is
installed, and skipped with a note otherwise.

Usually called through scripts/perf_report.sh, which builds the `bench` preset first:

    scripts/perf_report.sh                 # full suite, 3 repetitions, medians
    scripts/perf_report.sh --quick         # smoke run: L in {1k, 16k}, T = 1024, engine
                                           # batch Lmax = 8k, paged / q8_0 L = 16k, 1 repetition,
                                           # written to build/bench/perf/performance-quick.md
    scripts/perf_report.py --from-json build/bench/perf/results.json   # re-render only

A report is the main run of toptheta-bench (everything, or the --quick / --filter subset), then
the portable comparison: --portable-rounds rounds (default 5), each running five groups (dense /
toptheta decode at L = 16k f32, the same f16, prefill at T = 1024 f32, the same f16, q8_0
engine decode at L = 16k) with
toptheta-bench and toptheta-bench-portable back to back, the first binary alternating; the
portable / native ratio is the median of the per-round ratios; last, the main run's probes
once more (results.probe_end.json): each probe's faster reading of the two is the floor the
page uses. All other ratios come from the main run of one binary. Times are wall-clock medians
over the repetitions (the single run with --repetitions 1).

The decode ratio targets (over dense, over top-k, every key kept, 2 threads over 1) use the
decode_paired family where it was measured: the modes of one (L, dtype, layout) on 1 and 2
threads in one timed loop, in a shuffled order per round, the ratio per round, median over the
rounds (and over the repetitions). Ratios of the separate decode/ benchmarks, run seconds apart,
drift by tens of percent on a shared machine; the page lists both. The prefill ratio targets use
prefill_paired the same way (the four modes of one (T, dtype) on 1 and 2 threads).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from atomic_file import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICK_FILTER = (r"^(probe/|decode/[^/]+/L:(1024|16384)/|decode_paired/L:(1024|16384)/"
                r"|decode_isa/|decode_dim/|decode_resident/"
                r"|prefill/[^/]+/T:1024/|prefill_paired/T:1024/"
                r"|engine_batch/[^/]+/[^/]+/seqs:8/Lmax:8192/|engine_paged/[^/]+/[^/]+/L:16384/"
                r"|engine_q8/[^/]+/L:16384/)")
# The portable comparison's groups: each round runs each group with both binaries, back to back.
# engine_q8: the q8_0 loads are where a -march=native build once lost to the portable one
# (an out-of-line call in the kernel; scripts/check_kernel_calls.py now guards it).
PORTABLE_GROUPS = (r"^decode/(dense|toptheta)/L:16384/dtype:f32/layout:token/",
                   r"^decode/(dense|toptheta)/L:16384/dtype:f16/layout:token/",
                   r"^prefill/(dense|toptheta)/T:1024/dtype:f32/",
                   r"^prefill/(dense|toptheta)/T:1024/dtype:f16/",
                   r"^engine_q8/(dense|toptheta)/L:16384/dtype:q8_0/")
K_BUDGET = 64
# The dense-decode targets: GB/s over the read probe's, by thread count (L >= 16k).
DENSE_DECODE_NEED = {2: 0.80, 1: 0.60}
# FLOP of one dense decode step per cache token at d = 128, Hq = 32, Hkv = 8: scores and V rows,
# 2 x 128 each, for each of the 32 query heads.
DENSE_DECODE_FLOP_PER_TOKEN = 2 * 2 * 128 * 32
DTYPES = ("f32", "f16", "bf16")
TOPTHETA_MODES = ("toptheta", "toptheta_pre")

RE_DECODE = re.compile(
    r"^decode/(?P<mode>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)/layout:(?P<layout>[^/]+)"
    r"/threads:(?P<threads>\d+)$")
RE_PAIRED = re.compile(
    r"^decode_paired/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)/layout:(?P<layout>[^/]+)$")
RE_ISA = re.compile(
    r"^decode_isa/(?P<mode>[^/]+)/isa:(?P<isa>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)"
    r"/layout:(?P<layout>[^/]+)/threads:(?P<threads>\d+)$")
RE_DIM = re.compile(
    r"^decode_dim/(?P<mode>[^/]+)/d:(?P<d>\d+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)"
    r"/layout:(?P<layout>[^/]+)/threads:(?P<threads>\d+)$")
RE_RESIDENT = re.compile(
    r"^decode_resident/(?P<mode>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)"
    r"/layout:(?P<layout>[^/]+)/threads:(?P<threads>\d+)$")
RE_PREFILL = re.compile(
    r"^prefill/(?P<mode>[^/]+)/T:(?P<T>\d+)/dtype:(?P<dtype>[^/]+)/threads:(?P<threads>\d+)$")
RE_PPAIRED = re.compile(r"^prefill_paired/T:(?P<T>\d+)/dtype:(?P<dtype>[^/]+)$")
RE_EBATCH = re.compile(
    r"^engine_batch/(?P<mode>[^/]+)/call:(?P<call>[^/]+)/seqs:(?P<n>\d+)/Lmax:(?P<L>\d+)"
    r"/dtype:(?P<dtype>[^/]+)/threads:(?P<threads>\d+)$")
RE_EPAGED = re.compile(
    r"^engine_paged/(?P<mode>[^/]+)/kv:(?P<kv>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)"
    r"/threads:(?P<threads>\d+)$")
RE_EQ8 = re.compile(
    r"^engine_q8/(?P<mode>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)/threads:(?P<threads>\d+)$")
RE_BW = re.compile(r"^probe/read_bandwidth/threads:(?P<threads>\d+)$")
RE_FMA = re.compile(r"^probe/fma_peak/threads:(?P<threads>\d+)$")
RE_BLOCKS = re.compile(r"^probe/read_blocks/block:(?P<block>\d+)/threads:(?P<threads>\d+)$")

TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

# What each mode measures (the benchmark labels say the same, shorter).
VARIANTS = {
    "dense": ("dense", "`AttentionOptions{}`: exact softmax attention over all L keys"),
    "topk": ("top-k baseline", "`mode = kTopK, k = 64`: pre-softmax, renormalised over the kept "
             "keys, no VMC (the options' defaults)"),
    "toptheta": ("Top-θ recommended (post + VMC)",
                 "`toptheta_options(post_table)`: post-softmax thresholds, VMC with the running V "
                 "sum (`RunningVSum` over the rows before the new token), keep-max empty rows"),
    "toptheta_pre": ("Top-θ pre + exact SDC + VMC",
                     "`toptheta_options(pre_table)`: pre-softmax thresholds, exact SDC, VMC with "
                     "the running V sum, keep-max empty rows"),
    "toptheta_dense_fallback": ("Top-θ recommended, every key kept",
                                "`toptheta_options(table)` with a post-softmax table whose heads "
                                "are all declared dense (`ThresholdTable::set_dense`)"),
}
MODE_ORDER = {m: i for i, m in enumerate(VARIANTS)}


def short(mode):
    return VARIANTS.get(mode, (mode, ""))[0]


# --------------------------------------------------------------------------------------------
# Running the benchmark
# --------------------------------------------------------------------------------------------
def run_bench(exe, json_out, args, flt, repetitions=None):
    repetitions = args.repetitions if repetitions is None else repetitions
    if not os.path.isfile(exe):
        sys.exit(f"error: {exe} not found; build it with `cmake --preset bench && "
                 f"cmake --build --preset bench` or run scripts/perf_report.sh")
    os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
    cmd = [exe,
           f"--benchmark_out={json_out}",
           "--benchmark_out_format=json",
           f"--benchmark_repetitions={repetitions}",
           f"--benchmark_min_time={args.min_time}"]
    if repetitions > 1:
        cmd.append("--benchmark_display_aggregates_only=true")
    if flt:
        cmd.append(f"--benchmark_filter={flt}")
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = _dt.datetime.now()
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(f"error: {os.path.basename(exe)} exited with status {rc}")
    print(f"{os.path.basename(exe)} run took {(_dt.datetime.now() - start).total_seconds():.0f} s",
          file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    seconds: float                 # wall time per call (median over repetitions)
    counters: dict = field(default_factory=dict)
    label: str = ""


@dataclass
class Run:
    ctx: dict
    results: dict
    errors: dict
    reps: int


# Largest results file read (a full run writes about 2 MB): a larger file, or an endless stream
# such as /dev/zero, is an error rather than a read that takes all memory.
MAX_RESULTS_BYTES = 256 << 20


def load_results(path: str) -> Run:
    """The results file of one toptheta-bench run. Google Benchmark writes an empty file when
    the filter matches nothing: that reads as a run with no results."""
    try:
        with open(path) as f:
            text = f.read(MAX_RESULTS_BYTES + 1)
    except OSError as e:
        sys.exit(f"error: cannot read the benchmark results {path}: {e.strerror}")
    except UnicodeDecodeError as e:
        sys.exit(f"error: {path} is not a benchmark results file (not UTF-8 text: {e.reason})")
    if len(text) > MAX_RESULTS_BYTES:
        sys.exit(f"error: {path} is not a benchmark results file (larger than "
                 f"{MAX_RESULTS_BYTES} bytes)")
    if not text.strip():
        return Run({}, {}, {}, 1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        sys.exit(f"error: {path} is not a benchmark results file ({e})")
    ctx = data.get("context", {})
    runs = data.get("benchmarks", [])
    reps = {}
    for r in runs:
        reps[r["run_name"]] = max(reps.get(r["run_name"], 1), int(r.get("repetitions", 1)))
    results: dict[str, Result] = {}
    errors: dict[str, str] = {}
    skip_keys = {"name", "run_name", "run_type", "aggregate_name", "aggregate_unit", "family_index",
                 "per_family_instance_index", "repetitions", "repetition_index", "threads",
                 "iterations", "real_time", "cpu_time", "time_unit", "error_occurred",
                 "error_message", "label"}
    for r in runs:
        name = r["run_name"].replace("/real_time", "")
        if r.get("error_occurred"):
            errors[name] = r.get("error_message", "error")
            continue
        multi = reps[r["run_name"]] > 1
        if multi and not (r.get("run_type") == "aggregate" and r.get("aggregate_name") == "median"):
            continue
        if not multi and r.get("run_type") == "aggregate":
            continue
        sec = float(r["real_time"]) * TIME_UNIT_S[r.get("time_unit", "ns")]
        counters = {k: v for k, v in r.items() if k not in skip_keys and isinstance(v, (int, float))}
        results[name] = Result(name, sec, counters, r.get("label", ""))
    return Run(ctx, results, errors, max(reps.values(), default=1))


@dataclass
class Data:
    bw: dict = field(default_factory=dict)       # threads -> bytes/s
    bw_blocks: dict = field(default_factory=dict)  # (block bytes, threads) -> bytes/s
    fma: dict = field(default_factory=dict)      # threads -> flop/s
    fma_label: str = ""
    decode: dict = field(default_factory=dict)   # (mode, L, dtype, layout, t) -> Result
    paired: dict = field(default_factory=dict)   # (L, dtype, layout) -> Result (decode_paired)
    isa: dict = field(default_factory=dict)      # (mode, isa) -> Result
    dim: dict = field(default_factory=dict)      # (mode, d) -> Result
    resident: dict = field(default_factory=dict)  # (dtype, t) -> Result (decode_resident, dense)
    prefill: dict = field(default_factory=dict)  # (mode, T, dtype, t) -> Result
    ppaired: dict = field(default_factory=dict)  # (T, dtype) -> Result (prefill_paired)
    ebatch: dict = field(default_factory=dict)   # (mode, call, Lmax, t) -> Result
    epaged: dict = field(default_factory=dict)   # (mode, kv, L, t) -> Result
    eq8: dict = field(default_factory=dict)      # (mode, L, dtype, t) -> Result


def classify(results) -> Data:
    D = Data()
    for name, r in results.items():
        if m := RE_BW.match(name):
            D.bw[int(m["threads"])] = r.counters.get("bytes_per_second", 0.0)
        elif m := RE_BLOCKS.match(name):
            D.bw_blocks[(int(m["block"]), int(m["threads"]))] = r.counters.get(
                "bytes_per_second", 0.0)
        elif m := RE_FMA.match(name):
            D.fma[int(m["threads"])] = r.counters.get("flops", 0.0)
            D.fma_label = r.label
        elif m := RE_DECODE.match(name):
            D.decode[(m["mode"], int(m["L"]), m["dtype"], m["layout"], int(m["threads"]))] = r
        elif m := RE_PAIRED.match(name):
            D.paired[(int(m["L"]), m["dtype"], m["layout"])] = r
        elif m := RE_ISA.match(name):
            D.isa[(m["mode"], m["isa"])] = r
        elif m := RE_DIM.match(name):
            D.dim[(m["mode"], int(m["d"]))] = r
        elif m := RE_RESIDENT.match(name):
            D.resident[(m["dtype"], int(m["threads"]))] = r
        elif m := RE_PREFILL.match(name):
            D.prefill[(m["mode"], int(m["T"]), m["dtype"], int(m["threads"]))] = r
        elif m := RE_PPAIRED.match(name):
            D.ppaired[(int(m["T"]), m["dtype"])] = r
        elif m := RE_EBATCH.match(name):
            D.ebatch[(m["mode"], m["call"], int(m["L"]), int(m["threads"]))] = r
        elif m := RE_EPAGED.match(name):
            D.epaged[(m["mode"], m["kv"], int(m["L"]), int(m["threads"]))] = r
        elif m := RE_EQ8.match(name):
            D.eq8[(m["mode"], int(m["L"]), m["dtype"], int(m["threads"]))] = r
    return D


def lscpu_info():
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    # Some VMs expose no cache topology to lscpu (no /sys/devices/system/cpu/cpu0/cache); glibc's
    # getconf still reads the sizes from CPUID.
    for key, var in (("L1d cache", "LEVEL1_DCACHE_SIZE"), ("L2 cache", "LEVEL2_CACHE_SIZE"),
                     ("L3 cache", "LEVEL3_CACHE_SIZE")):
        if info.get(key):
            continue
        try:
            size = int(subprocess.run(["getconf", var], capture_output=True, text=True,
                                      check=True).stdout.strip() or 0)
        except (OSError, ValueError, subprocess.CalledProcessError):
            size = 0
        if size > 0:
            info[key] = f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size >> 10} KiB"
            info["caches from getconf"] = "yes"
    return info


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
@dataclass
class Target:
    text: str
    required: str
    measured: float | None
    ok: bool | None
    worst: str = ""


def dcfg(key):
    mode, L, dtype, layout, t = key
    return f"L={L} {dtype} {layout} t={t}"


def pcfg(key):
    mode, T, dtype, t = key
    return f"T={T} {dtype} t={t}"


def make_target(text, required, pairs, op, bound, empty_note="not measured"):
    """pairs: [(value, configuration)]; op '>=' or '<='. The worst is the least favourable."""
    if not pairs:
        return Target(text, required, None, None, empty_note)
    v, where = (min if op == ">=" else max)(pairs, key=lambda p: p[0])
    ok = v >= bound if op == ">=" else v <= bound
    return Target(text, required, v, ok, where)


def largest(values, want):
    """(chosen value, note) — `want` if measured, else the largest measured."""
    vals = sorted(set(values))
    if not vals:
        return None, ""
    if want in vals:
        return want, ""
    return vals[-1], f" ({vals[-1]} measured, not {want})"


def paired_or_separate(paired: dict, separate: dict, key, counter, sep_num, sep_den):
    """(value, paired): the counter of the paired benchmark paired[key] when it was measured,
    else the time ratio sep_num / sep_den of the separate benchmarks (keys of `separate`);
    (None, False) when neither is there."""
    p = paired.get(key)
    if p is not None and counter in p.counters:
        return p.counters[counter], True
    a, b = separate.get(sep_num), separate.get(sep_den)
    return (a.seconds / b.seconds, False) if a and b else (None, False)


def paired_value(D: Data, cfg3, counter, sep_num, sep_den):
    """paired_or_separate over decode_paired (key (L, dtype, layout)) and decode/."""
    return paired_or_separate(D.paired, D.decode, cfg3, counter, sep_num, sep_den)


def decode_speedup_src(D: Data, mode, cfg, over="dense"):
    """(time(over) / time(mode), paired) of decode configuration cfg = (L, dtype, layout,
    threads), over "dense" or "topk": the paired median of decode_paired (modes in one timed loop,
    the ratio per round) when it was measured, else the ratio of the separate decode/ benchmarks."""
    counter = ("x_" if over == "dense" else "k_") + f"{mode}_t{cfg[3]}"
    return paired_value(D, cfg[:3], counter, (over,) + cfg, (mode,) + cfg)


def decode_speedup(D: Data, mode, cfg, over="dense"):
    return decode_speedup_src(D, mode, cfg, over)[0]


def paired_cfgs(D: Data):
    """(L, dtype, layout, threads) of every configuration decode_paired measured."""
    return sorted(cfg + (t,) for cfg, r in D.paired.items() for t in (1, 2)
                  if f"t_dense_t{t}" in r.counters)


def prefill_ratio_src(D: Data, counter, key, sep_num, sep_den):
    """paired_or_separate over prefill_paired (key (T, dtype)) and prefill/."""
    return paired_or_separate(D.ppaired, D.prefill, key, counter, sep_num, sep_den)


def prefill_speedup_src(D: Data, mode, cfg, over="dense"):
    """(time(over) / time(mode), paired) of prefill configuration cfg = (T, dtype, threads), over
    "dense" or "topk": the paired median of prefill_paired when it was measured, else the ratio
    of the separate prefill/ benchmarks."""
    counter = ("x_" if over == "dense" else "k_") + f"{mode}_t{cfg[2]}"
    return prefill_ratio_src(D, counter, cfg[:2], (over,) + cfg, (mode,) + cfg)


def prefill_cfgs(D: Data):
    """(T, dtype, threads) of every prefill configuration measured (separately or paired)."""
    return sorted({k[1:] for k in D.prefill} |
                  {cfg + (t,) for cfg, r in D.ppaired.items() for t in (1, 2)
                   if f"t_dense_t{t}" in r.counters})


def ratio_pairs(cfgs, src, name, keep, prefix):
    """([(ratio, configuration)], [paired flags]): src(cfg) = (ratio, paired) over the
    configurations `cfgs` that `keep` accepts, each named prefix + name(cfg)."""
    pairs, flags = [], []
    for cfg in cfgs:
        v, paired = src(cfg) if keep(cfg) else (None, False)
        if v is not None:
            pairs.append((v, prefix + name(cfg)))
            flags.append(paired)
    return pairs, flags


def prefill_pairs(D: Data, mode, over="dense", keep=lambda cfg: True, prefix=""):
    """([(ratio, configuration)], [paired flags]) of prefill_speedup_src over every prefill
    configuration that `keep` accepts."""
    return ratio_pairs(prefill_cfgs(D), lambda cfg: prefill_speedup_src(D, mode, cfg, over),
                       lambda cfg: pcfg((mode,) + cfg), keep, prefix)


def decode_cfgs(D: Data):
    return sorted(set(paired_cfgs(D)) | {k[1:] for k in D.decode})


def paired_tag(flags):
    """The target-name tag for values of which `flags` say which were paired."""
    if not flags or not any(flags):
        return ""
    return " [paired]" if all(flags) else " [paired where measured, else separate runs]"


def speedup_pairs(D: Data, mode, over="dense", keep=lambda cfg: True, prefix=""):
    """([(speed-up, configuration)], tag) over every decode configuration that `keep` accepts."""
    pairs, flags = ratio_pairs(decode_cfgs(D), lambda cfg: decode_speedup_src(D, mode, cfg, over),
                               lambda cfg: dcfg((mode,) + cfg), keep, prefix)
    return pairs, paired_tag(flags)


def thread_scaling_L(D: Data):
    """(L of the decode thread-scaling rows, note): 64k, or the largest L measured."""
    return largest([k[1] for k in D.decode] + [c[0] for c in D.paired], 65536)


def thread_scaling_cfgs(D: Data, L):
    """(mode, (L, dtype, layout)) of every decode configuration at L with a 1-thread time."""
    cfgs = {(k[0], k[1:4]) for k in D.decode if k[1] == L and k[4] == 1}
    cfgs |= {(key[2:], cfg) for cfg, r in D.paired.items() if cfg[0] == L
             for key in r.counters if key.startswith("s_")}
    return sorted(cfgs, key=lambda mc: (dtype_order(mc[1][1]), mc[1][2] != "token",
                                        MODE_ORDER.get(mc[0], 9)))


def thread_speedup_src(D: Data, mode, cfg3):
    """(time(1 thread) / time(2 threads), paired) of a decode mode on (L, dtype, layout)."""
    return paired_value(D, cfg3, "s_" + mode, (mode,) + cfg3 + (1,), (mode,) + cfg3 + (2,))


def resident_fraction(D: Data, dtype, t):
    """The dense walk on L2-resident rows (decode_resident, token-major): its bytes / s over the
    read probe's (same thread count), or None."""
    r = D.resident.get((dtype, t))
    if not r or not D.bw.get(t) or r.seconds <= 0:
        return None
    return r.counters["bytes"] / r.seconds / D.bw[t]


def ceiling_note(D: Data, key):
    """For a dense decode configuration: the resident walk of its dtype and thread count, when
    both are token-major (decode_resident measures only that walk)."""
    mode, L, dtype, layout, t = key
    f = resident_fraction(D, dtype, t) if layout == "token" else None
    return ("" if f is None else
            f"; token-major {dtype} on L2-resident rows (L = 16k): {f:.2f} of the probe, "
            "see *Decode: the dense walk's compute ceiling*")


def write_resident_section(w, D: Data):
    w("## Decode: the dense walk's compute ceiling")
    w("")
    w("`decode_resident/dense/L:16384/dtype:<t>/layout:token/threads:<n>`: a dense decode of "
      "16384 tokens (d = 128, Hq = 32, Hkv = 8, token-major) whose rows come from 4 blocks of 16 "
      "tokens repeated through a block table, so that every row the walk reads is already in the "
      "core's L2 (*resident KiB*: K + V of the 4 blocks). It does all of a dense decode's work "
      "(every dot product, exp, V-row FMA and software prefetch) without waiting on memory, so "
      "its bytes / time (K + V of 16384 tokens, as `decode/dense` counts them) estimates the "
      "fastest this kernel could read a cold cache. It also does what a paged walk adds per row, "
      "a block-table lookup, which the contiguous walk does not. *cold* "
      "is `decode/dense` at L = 16384, token-major, the same dtype and thread count; *cold / "
      "resident time* under 1 would mean the estimate is no ceiling.")
    w("")
    w("| dtype | thr | resident KiB | resident (ms) | resident GB/s | resident % of probe | "
      "cold (ms) | cold GB/s | cold % of probe | cold / resident time |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pr = lambda g, t: f"{100 * g / D.bw[t]:.0f}%" if g and D.bw.get(t) else "—"  # noqa: E731
    rows = 0
    for (dtype, t) in sorted(D.resident, key=lambda k: (k[1], dtype_order(k[0]))):
        r = D.resident[(dtype, t)]
        if r.seconds <= 0:
            continue
        rows += 1
        rg = r.counters["bytes"] / r.seconds
        c = D.decode.get(("dense", 16384, dtype, "token", t))
        cold = "— | — | — | —"
        if c and c.seconds > 0:
            cg = c.counters["bytes"] / c.seconds
            cold = f"{1e3 * c.seconds:.3f} | {gb(cg)} | {pr(cg, t)} | {c.seconds / r.seconds:.2f}"
        w(f"| {dtype} | {t} | {r.counters.get('resident_bytes', 0) / 1024:.0f} | "
          f"{1e3 * r.seconds:.3f} | {gb(rg)} | {pr(rg, t)} | {cold} |")
    if not rows:
        w("| — | | | not measured | | | | | | |")
    w("")
    if rows:
        w("Each resident output equals the contiguous walk's over the same rows, bit for bit "
          "(checked before timing; a mismatch skips the benchmark with an error).")
        w("")
    lines = []
    for t in sorted(DENSE_DECODE_NEED):
        need = DENSE_DECODE_NEED[t]
        r, f = D.resident.get(("f16", t)), resident_fraction(D, "f16", t)
        if r is None or f is None:
            continue
        c = D.decode.get(("dense", 16384, "f16", "token", t))
        cf = c.counters["bytes"] / c.seconds / D.bw[t] if c and c.seconds > 0 else None
        line = (f"- f16, {t} thread{'s' if t > 1 else ''}: the resident walk reads at {f:.2f} of "
                f"the probe, against the dense-decode target's {need:.2f}")
        if cf is not None:
            line += f" (the cold walk: {cf:.2f})"
        if cf is not None and cf > f:
            line += (": the cold walk reads faster than the resident one, so this estimate is "
                     "no ceiling here.")
        elif f < need:
            line += (": the target is beyond what this kernel's instructions allow, even with "
                     "no memory latency to wait on.")
        elif cf is None:
            line += ": the kernel's instructions would allow the target."
        elif cf >= need:
            line += ": the cold walk meets the target."
        else:
            line += (": the kernel's instructions would allow the target; the cold walk falls "
                     "short of it by waiting on memory.")
        if D.fma.get(t) and r.counters.get("tokens"):
            per_token = r.seconds / r.counters["tokens"]
            fma_only = DENSE_DECODE_FLOP_PER_TOKEN / D.fma[t]
            line += (f" {1e9 * per_token:.0f} ns per token resident; its "
                     f"{DENSE_DECODE_FLOP_PER_TOKEN} FLOP per token take {1e9 * fma_only:.0f} ns "
                     f"at the FMA probe's rate ({100 * fma_only / per_token:.0f}%).")
        lines.append(line)
    if lines:
        w("Per token and KV head a dense walk does 4 x 128 multiply-adds (2 FLOP each) for the "
          "scores (the 4 query heads of the GQA group, d = 128) and as many for the V rows, "
          f"{DENSE_DECODE_FLOP_PER_TOKEN} FLOP per token over the 8 KV heads; the f16 walk also "
          "converts every stored value and issues one software prefetch per 64-byte line of the "
          "K and V rows:")
        w("")
        for line in lines:
            w(line)
        w("")


def compute_targets(D: Data):
    T = []
    dec, pre = D.decode, D.prefill

    # Dense decode against the probe's read bandwidth, L >= 16k.
    for t, need in sorted(DENSE_DECODE_NEED.items(), reverse=True):
        pairs = [(r.counters["bytes"] / r.seconds / D.bw[t], dcfg(k) + ceiling_note(D, k))
                 for k, r in dec.items()
                 if k[0] == "dense" and k[1] >= 16384 and k[4] == t and D.bw.get(t)]
        T.append(make_target(f"dense decode, L >= 16k, {t} thread{'s' if t > 1 else ''}: "
                             "GB/s / probe read GB/s", f">= {need:.2f}", pairs, ">=", need))

    # Top-theta decode vs its own floor and vs dense, L >= 16k.
    for mode in TOPTHETA_MODES:
        pairs = [(r.seconds / (r.counters["bytes"] / D.bw[k[4]]), dcfg(k)) for k, r in dec.items()
                 if k[0] == mode and k[1] >= 16384 and D.bw.get(k[4])]
        T.append(make_target(f"{short(mode)} decode, L >= 16k: time / floor "
                             "((K + kept V-row union) bytes / probe GB/s)", "<= 1.25",
                             pairs, "<=", 1.25))
    for mode in TOPTHETA_MODES:
        pairs, pn = speedup_pairs(D, mode, keep=lambda cfg: cfg[0] >= 16384)
        T.append(make_target(f"{short(mode)} decode (k = 64), L >= 16k: speed-up over dense{pn}",
                             ">= 1.60x", pairs, ">=", 1.6))

    # Keeping every key costs what dense costs.
    pairs, pn = speedup_pairs(D, "toptheta_dense_fallback")
    pairs = [(1.0 / v, w) for v, w in pairs]
    T.append(make_target("Top-θ keeping every key (recommended options, all heads declared "
                         f"dense): time / dense time, all L{pn}", "<= 1.05", pairs, "<=", 1.05))

    # Top-theta vs top-k, decode (all L) and prefill (T = 4096).
    for mode in TOPTHETA_MODES:
        pairs, pn = speedup_pairs(D, mode, over="topk")
        T.append(make_target(f"{short(mode)} decode: speed-up over top-k (k = 64), all L{pn}",
                             ">= 1.00x", pairs, ">=", 1.0))
    Tp, tnote = largest([k[1] for k in pre] + [k[0] for k in D.ppaired], 4096)
    for mode in TOPTHETA_MODES:
        pairs, flags = prefill_pairs(D, mode, over="topk", keep=lambda cfg: cfg[0] == Tp)
        T.append(make_target(f"{short(mode)} prefill T = L = 4096: speed-up over top-k{tnote}"
                             f"{paired_tag(flags)}", ">= 1.30x", pairs, ">=", 1.3))

    # Prefill dense against the FMA probe, Top-theta against dense.
    pairs = [(r.counters["flops"] / D.fma[k[3]], pcfg(k)) for k, r in pre.items()
             if k[0] == "dense" and k[1] == Tp and "flops" in r.counters and D.fma.get(k[3])]
    T.append(make_target(f"dense causal prefill T = L = 4096: GFLOP/s / FMA probe GFLOP/s "
                         f"(same threads){tnote}", ">= 0.40", pairs, ">=", 0.40))
    for mode in TOPTHETA_MODES:
        pairs, flags = prefill_pairs(D, mode, keep=lambda cfg: cfg[0] == Tp)
        T.append(make_target(f"{short(mode)} prefill T = L = 4096 (k = 64): speed-up over "
                             f"dense{tnote}{paired_tag(flags)}", ">= 1.50x", pairs, ">=", 1.5))

    # The README's options never slower than dense (every decode and prefill configuration).
    pairs, pn = speedup_pairs(D, "toptheta", prefix="decode ")
    ppairs, flags = prefill_pairs(D, "toptheta", prefix="prefill ")
    T.append(make_target("recommended options (`toptheta_options`, as in the README): speed-up "
                         f"over dense, every decode{pn} and prefill{paired_tag(flags)} "
                         "configuration", ">= 1.00x", pairs + ppairs, ">=", 1.0))

    # Thread scaling.
    Lp, lnote = thread_scaling_L(D)
    pairs, flags = [], []
    for mode, cfg3 in thread_scaling_cfgs(D, Lp):
        v, paired = thread_speedup_src(D, mode, cfg3)
        if v is not None:
            pairs.append((v, f"{mode} L={cfg3[0]} {cfg3[1]} {cfg3[2]}"))
            flags.append(paired)
    pn = paired_tag(flags)
    T.append(make_target(f"decode L = 64k: 2-thread speed-up over 1 thread, all modes{lnote}"
                         f"{pn}", ">= 1.30x", pairs, ">=", 1.3))
    pairs, flags = [], []
    for (T_, dtype, t) in prefill_cfgs(D):
        if T_ != Tp or t != 1:
            continue
        for mode in ("dense", "topk") + TOPTHETA_MODES:
            v, paired = prefill_ratio_src(D, "s_" + mode, (T_, dtype), (mode, T_, dtype, 1),
                                          (mode, T_, dtype, 2))
            if v is not None:
                pairs.append((v, f"{mode} T={T_} {dtype}"))
                flags.append(paired)
    T.append(make_target(f"prefill T = 4096: 2-thread speed-up over 1 thread, all modes{tnote}"
                         f"{paired_tag(flags)}", ">= 1.80x", pairs, ">=", 1.8))

    # Bit-identity across thread counts.
    flags = [(r.counters["bit_identical"], "decode " + f"{k[0]} " + dcfg(k))
             for k, r in dec.items() if "bit_identical" in r.counters]
    flags += [(r.counters["bit_identical"], "prefill " + f"{k[0]} " + pcfg(k))
              for k, r in pre.items() if "bit_identical" in r.counters]
    bad = [n for v, n in flags if v != 1.0]
    T.append(Target("outputs bit-identical with 1 and 2 threads (fraction of configurations)",
                    "= 1", None if not flags else (len(flags) - len(bad)) / len(flags),
                    None if not flags else not bad,
                    ("; ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""))
                    if bad else (f"{len(flags)}/{len(flags)} identical" if flags else "not measured")))

    # Head dims that are not multiples of the vector width against their neighbours.
    pairs = []
    for (mode, d), r in D.dim.items():
        ref = DIM_REFERENCE.get(d)
        if ref is None or (mode, ref) not in D.dim:
            continue
        rr = D.dim[(mode, ref)]
        pairs.append((per_byte(r) / per_byte(rr), f"{mode} d={d} vs d={ref}"))
    T.append(make_target("head dim 100 / 72: time per byte / that of d = 104 / 64 "
                         "(decode L = 16k, dense and Top-θ)", "<= 1.50", pairs, "<=", 1.5))
    return T


# --------------------------------------------------------------------------------------------
# Engine interfaces: batched ragged decode, paged caches, q8_0 caches
# --------------------------------------------------------------------------------------------
ENGINE_MODES = ("dense",) + TOPTHETA_MODES
BATCH_LMAX = 32768           # the batch target's lengths: 1k..32k
BATCH_FRACTIONS = (1, 2, 3, 4, 8, 12, 16, 32)  # sequence lengths in units of Lmax / 32
KV_KINDS = ("contiguous", "paged16", "paged256")
# Bytes of one paged block of engine_paged (f16, Hkv = 8, d = 128: 2 KiB per token and pool),
# the block size of the probe/read_blocks run that gives its memory floor.
PAGED_BLOCK_BYTES = {"paged16": 16 * 2048, "paged256": 256 * 2048}


def batch_lengths(lmax):
    return ", ".join(f"{lmax * f // 32 // 1024}k" if lmax * f // 32 >= 1024 else str(lmax * f // 32)
                     for f in BATCH_FRACTIONS)


def paged_block_floor(r, kv, t, D):
    """GB/s of the engine_paged result r (kind kv, t threads) over the probe that reads the
    same block size at shuffled addresses (None when that probe was not run)."""
    bw = D.bw_blocks.get((PAGED_BLOCK_BYTES.get(kv), t))
    return gbps_floor(r, t, D)[0] / bw if bw and "bytes" in r.counters else None


def gbps_floor(r, t, D):
    """(GB/s, fraction of the probe's read bandwidth at t threads or None)."""
    g = r.counters["bytes"] / r.seconds
    return g, (g / D.bw[t] if D.bw.get(t) else None)


def pct(x):
    return "—" if x is None else f"{100 * x:.0f}%"


def engine_targets(D: Data):
    T = []
    b, pg, q8 = D.ebatch, D.epaged, D.eq8
    Lb, note = largest([k[2] for k in b], BATCH_LMAX)
    spread = f"{batch_lengths(Lb)}" if Lb else ""

    # Batch vs the sum of the single calls, 2 threads (the target's configuration), every mode.
    pairs = [(r.seconds / b[(k[0], "singles") + k[2:]].seconds, f"{short(k[0])}, t={k[3]}")
             for k, r in b.items()
             if k[1] == "batch" and k[2] == Lb and k[3] == 2 and (k[0], "singles") + k[2:] in b]
    T.append(make_target(f"decode_batch of 8 ragged f16 sequences ({spread}), 2 threads: "
                         f"time(batch) / sum of the 8 single decode times{note}",
                         "<= 1.10", pairs, "<=", 1.10))
    # ... at the memory floor: the dense batch against the probe (the dense-decode bound).
    pairs = [(gbps_floor(r, k[3], D)[1], f"dense, t={k[3]}") for k, r in b.items()
             if k[0] == "dense" and k[1] == "batch" and k[2] == Lb and k[3] == 2 and D.bw.get(2)]
    T.append(make_target("dense decode_batch, 2 threads: GB/s / probe read GB/s (the memory "
                         f"floor; the dense-decode bound){note}", ">= 0.80",
                         pairs, ">=", 0.80))
    for mode in TOPTHETA_MODES:
        pairs = [(b[("dense",) + k[1:]].seconds / r.seconds, f"t={k[3]}") for k, r in b.items()
                 if k[0] == mode and k[1] == "batch" and k[2] == Lb and ("dense",) + k[1:] in b]
        T.append(make_target(f"{short(mode)} decode_batch (k = 64): speed-up over dense "
                             f"decode_batch, same batch{note}", ">= 1.50x", pairs, ">=", 1.5))

    # Paged vs contiguous, every mode, block size, thread count and L >= 16k; the worst names
    # how fast the paged walk reads against the probe of the same blocks at shuffled addresses.
    def paged_where(k, r):
        f = paged_block_floor(r, k[1], k[3], D)
        return (f"{short(k[0])}, {k[1]}, L={k[2]}, t={k[3]}"
                + (f" (reads at {pct(f)} of the shuffled {PAGED_BLOCK_BYTES[k[1]] // 1024} KiB "
                   "block probe)" if f else ""))
    pairs = [(r.seconds / pg[(k[0], "contiguous") + k[2:]].seconds, paged_where(k, r))
             for k, r in pg.items()
             if k[1] != "contiguous" and k[2] >= 16384 and (k[0], "contiguous") + k[2:] in pg]
    T.append(make_target("paged decode (f16, blocks of 16 and 256 tokens, shuffled block table), "
                         "L >= 16k: time / contiguous time, every variant and thread count",
                         "<= 1.10", pairs, "<=", 1.10))

    # q8_0 Top-theta vs q8_0 dense, L >= 16k.
    for mode in TOPTHETA_MODES:
        pairs = [(q8[("dense",) + k[1:]].seconds / r.seconds, f"L={k[1]}, t={k[3]}")
                 for k, r in q8.items()
                 if k[0] == mode and k[2] == "q8_0" and k[1] >= 16384 and ("dense",) + k[1:] in q8]
        T.append(make_target(f"{short(mode)} decode over a q8_0 cache (k = 64), L >= 16k: "
                             "speed-up over q8_0 dense", ">= 1.50x", pairs, ">=", 1.5))
    return T


def write_targets_table(w, targets):
    w("| target | required | measured | worst configuration | status |")
    w("|---|---:|---:|---|:---:|")
    for tg in targets:
        w(f"| {tg.text} | {tg.required} | {fmt_val(tg.measured, 3)} | {tg.worst} | {status(tg.ok)} |")


def write_engine_section(w, D: Data, targets, probe_rows=()):
    b, pg, q8 = D.ebatch, D.epaged, D.eq8
    w("## Engine interfaces")
    w("")
    w("The interfaces an engine drives (`include/toptheta/plan.hpp`, `PagedKv`, "
      "`AttentionArgs<T, float>`, `quantize.hpp`), all with **f32 queries** over the cache "
      "(`AttentionArgs<Eigen::half, float>`, `AttentionArgs<BlockQ8_0, float>`), d = 128, Hq = 32, "
      "Hkv = 8, token-major caches. Variants as above: *dense*, the recommended Top-θ "
      "(`toptheta_options(post table)`, post-softmax + VMC with the running V sum) and pre-softmax + "
      "exact SDC + VMC; tables calibrated at k = 64 on each family's own caches. Each iteration "
      "reads another copy of the caches when one copy is below 128 MiB. Ratios compare benchmarks "
      "of this run over the same inputs; *% of probe* = GB/s over the read-bandwidth probe of the "
      "same thread count.")
    w("")
    write_targets_table(w, targets)
    w("")

    # ---- batch ----------------------------------------------------------------------------
    w("### Batched ragged decode")
    w("")
    w("`engine_batch/<mode>/call:<batch|singles>/seqs:8/Lmax:<n>/dtype:f16/threads:<t>`: 8 "
      "sequences of lengths Lmax × {1, 2, 3, 4, 8, 12, 16, 32} / 32, each its own f16 cache and "
      "running V sum; Top-θ tables calibrated on all 8 (one per-length entry per sequence length). "
      "*batch* = one `decode_batch` call; *singles* = the 8 `decode` calls on the same arguments, "
      "back to back (their summed time). *batch / singles* = time ratio (< 1: the batch is faster); "
      "*vs dense* = time(dense batch) / time(this batch); *identical* = the batch's outputs equal "
      "the single calls' bit for bit.")
    w("")
    w("| lengths | thr | variant | batch (ms) | singles (ms) | batch / singles | batch GB/s | "
      "% of probe | singles GB/s | vs dense | kept/row | V rows | identical | rel err |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|")
    rows = 0
    for key in sorted((k for k in b if k[1] == "batch"),
                      key=lambda k: (k[2], k[3], MODE_ORDER.get(k[0], 9))):
        mode, _, L, t = key
        r = b[key]
        sg = b.get((mode, "singles", L, t))
        dn = b.get(("dense", "batch", L, t))
        g, f = gbps_floor(r, t, D)
        w(f"| {batch_lengths(L)} | {t} | {short(mode)} | {1e3 * r.seconds:.3f} | "
          f"{f'{1e3 * sg.seconds:.3f}' if sg else '—'} | "
          f"{f'{r.seconds / sg.seconds:.3f}' if sg else '—'} | {gb(g)} | {pct(f)} | "
          f"{gb(gbps_floor(sg, t, D)[0]) if sg else '—'} | "
          f"{f'{dn.seconds / r.seconds:.2f}x' if dn and mode != 'dense' else ''} | "
          f"{r.counters.get('kept_per_row', 0):.1f} | {100 * r.counters.get('vrows_frac', 1):.2f}% | "
          f"{'yes' if r.counters.get('bit_identical') == 1.0 else 'NO'} | {err_text(r)} |")
        rows += 1
    if not rows:
        w("| — | | not measured | | | | | | | | | | | |")
    w("")

    # ---- paged ----------------------------------------------------------------------------
    w("### Paged KV cache")
    w("")
    w("`engine_paged/<mode>/kv:<contiguous|paged16|paged256>/L:<n>/dtype:f16/threads:<t>`: one f16 "
      "cache read contiguously or through a block table (`PagedKv::token_major`, blocks of 16 or "
      "256 tokens). Each block size has one pool holding the blocks of every rotated copy in one "
      "shuffled order, so a sequence's consecutive blocks are never adjacent. *paged / contiguous* "
      "= time ratio (> 1: paging costs); *% of block probe* = the paged walk's GB/s (the same "
      "bytes as the contiguous one) over the probe that reads blocks of the same size at "
      "shuffled addresses (same thread count), a reference for that layout rather than a hard "
      "floor (the walk rotates over a smaller working set than the probe's 1 GiB and can read "
      "above 100%; the Top-θ rows also read scattered kept V rows, for which this probe is no "
      "floor at all); *identical* = the paged output equals the contiguous one bit for bit.")
    w("")
    bullets = []
    for t in sorted({t for _, t in D.bw_blocks}):
        sizes = sorted(blk for blk, u in D.bw_blocks if u == t and D.bw_blocks[(blk, u)])
        if D.bw.get(t) and sizes:
            bullets.append(f"- {t} thread{'s' if t > 1 else ''}: " + ", ".join(
                f"{D.bw[t] / D.bw_blocks[(blk, t)]:.2f}x in {blk // 1024} KiB blocks"
                for blk in sizes))
    if bullets:
        w("The read probe's time over its buffer taken in shuffled blocks, against the sequential "
          f"read{' (each probe its faster reading, see *Probes*)' if probe_rows else ''}:")
        w("")
        w("\n".join(bullets))
        w("")
    w("| L | thr | variant | contiguous (ms) | GB/s | % of probe | paged16 (ms) | paged16 / contiguous "
      "| paged16 % of block probe | paged256 (ms) | paged256 / contiguous "
      "| paged256 % of block probe | identical |")
    w("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|")
    rows = 0
    for key in sorted((k for k in pg if k[1] == "contiguous"),
                      key=lambda k: (k[2], k[3], MODE_ORDER.get(k[0], 9))):
        mode, _, L, t = key
        r = pg[key]
        g, f = gbps_floor(r, t, D)
        cells, ident = [], []
        for kv in KV_KINDS[1:]:
            x = pg.get((mode, kv, L, t))
            cells += ([f"{1e3 * x.seconds:.3f}", f"{x.seconds / r.seconds:.3f}",
                       pct(paged_block_floor(x, kv, t, D))] if x else ["—", "—", "—"])
            if x:
                ident.append(x.counters.get("bit_identical") == 1.0)
        w(f"| {L} | {t} | {short(mode)} | {1e3 * r.seconds:.3f} | {gb(g)} | {pct(f)} | "
          f"{' | '.join(cells)} | {('yes' if all(ident) else 'NO') if ident else ''} |")
        rows += 1
    if not rows:
        w("| — | | not measured | | | | | | | | | | |")
    w("")

    # ---- q8_0 -----------------------------------------------------------------------------
    w("### q8_0 cache against f16")
    w("")
    w("`engine_q8/<mode>/L:<n>/dtype:<q8_0|f16>/threads:<t>`: the same float K/V stored as f16 and "
      "as llama.cpp q8_0 (`quantize_row_q8_0`; 34 bytes per 32 values, 0.53x the f16 bytes), each "
      "with its own tables. *vs q8 dense* = time(q8_0 dense) / time(this q8_0 row); *q8_0 vs f16* "
      "= time(f16, same variant) / time(q8_0) (> 1: q8_0 is faster); *vs f16 dense* = "
      "time(f16 dense) / time(q8_0 row); *err vs f16* = |o − o_f16 dense| / |o_f16 dense| (q8_0 "
      "storage plus the variant's own error).")
    w("")
    w("| L | thr | variant | q8_0 (ms) | GB/s | % of probe | vs q8 dense | f16 (ms) | vs f16 dense "
      "(f16) | q8_0 vs f16 | q8_0 vs f16 dense | V rows | err vs f16 |")
    w("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = 0
    for key in sorted((k for k in q8 if k[2] == "q8_0"),
                      key=lambda k: (k[1], k[3], MODE_ORDER.get(k[0], 9))):
        mode, L, _, t = key
        r = q8[key]
        g, f = gbps_floor(r, t, D)
        qd = q8.get(("dense", L, "q8_0", t))
        h = q8.get((mode, L, "f16", t))
        hd = q8.get(("dense", L, "f16", t))
        e = r.counters.get("err_vs_f16")
        w(f"| {L} | {t} | {short(mode)} | {1e3 * r.seconds:.3f} | {gb(g)} | {pct(f)} | "
          f"{f'{qd.seconds / r.seconds:.2f}x' if qd and mode != 'dense' else ''} | "
          f"{f'{1e3 * h.seconds:.3f}' if h else '—'} | "
          f"{f'{hd.seconds / h.seconds:.2f}x' if h and hd and mode != 'dense' else ''} | "
          f"{f'{h.seconds / r.seconds:.2f}x' if h else '—'} | "
          f"{f'{hd.seconds / r.seconds:.2f}x' if hd else '—'} | "
          f"{100 * r.counters.get('vrows_frac', 1):.2f}% | {'' if e is None else f'{e:.2e}'} |")
        rows += 1
    if not rows:
        w("| — | | not measured | | | | | | | | | | |")
    w("")


# d -> the multiple of 8 (or, for 72, which is one, of 16 = the AVX-512 width) it is compared with.
DIM_REFERENCE = {100: 104, 72: 64}


def per_byte(r):
    return r.seconds / r.counters["bytes"]


@dataclass
class Portable:
    """The portable comparison: rows (benchmark, native s, portable s, portable / native,
    rounds), the times medians over the rounds and the ratio the median of the per-round
    ratios; each binary's context; errors by benchmark name."""
    rows: list
    native_ctx: dict
    portable_ctx: dict
    errors: dict
    rounds: int
    legacy: bool  # the single back-to-back pair of runs before the rounds


def run_portable(args, pdir):
    """`args.portable_rounds` rounds; each runs every group (args.portable_group, default
    PORTABLE_GROUPS) once with each binary (1 repetition), back to back, the binary that goes
    first alternating, into pdir/<native|portable>.r<round>.g<group>.json."""
    shutil.rmtree(pdir, ignore_errors=True)
    os.makedirs(pdir)
    bins = (("native", args.bench), ("portable", args.bench_portable))
    for r in range(args.portable_rounds):
        for g, flt in enumerate(args.portable_group or PORTABLE_GROUPS):
            for which, exe in (bins if (r + g) % 2 == 0 else bins[::-1]):
                run_bench(exe, os.path.join(pdir, f"{which}.r{r}.g{g}.json"), args, flt,
                          repetitions=1)


def portable_rows(D: Data):
    """(order, name, result) of the benchmarks the portable table can hold: decode, prefill and
    engine_q8 results of classify(...), in that order."""
    for key, r in D.decode.items():
        yield (0, key), f"decode/{key[0]}/L:{key[1]}/{key[2]}/{key[3]}/t={key[4]}", r
    for key, r in D.prefill.items():
        yield (1, key), f"prefill/{key[0]}/T:{key[1]}/{key[2]}/t={key[3]}", r
    for key, r in D.eq8.items():
        yield (2, key), f"engine_q8/{key[0]}/L:{key[1]}/{key[2]}/t={key[3]}", r


def results_base(json_path):
    """Results file json_path without its .json: the stem of the files written beside it."""
    return json_path[:-5] if json_path.endswith(".json") else json_path


def probe_end_path(json_path):
    """Where the probes run again at the end of the run of results file json_path."""
    return results_base(json_path) + ".probe_end.json"


def probe_rate(r):
    """A probe's rate: bytes/s of a read probe, FLOP/s of the FMA probe."""
    return r.counters.get("bytes_per_second") or r.counters.get("flops") or 0.0


def run_probe_end(args, main: Run, json_path):
    """Runs the probes of the main run once more (same repetitions) after everything else."""
    names = [n for n in main.results if n.startswith("probe/")]
    if not names:
        return
    flt = "^(" + "|".join(re.escape(n) for n in names) + ")(/real_time)?$"
    path = probe_end_path(json_path)
    run_bench(args.bench, path + ".tmp", args, flt)
    os.replace(path + ".tmp", path)  # a run cut short leaves no end file behind


def merge_probes(main: Run, end: Run | None):
    """(results, rows): the main run's results with each probe replaced by its end-of-run
    measurement when that one is faster; rows = [(name, start rate, end rate)]. A probe read
    slow by a transient neighbour would make every ratio against it read favourably; the faster
    of the two is the stricter floor."""
    results, rows = dict(main.results), []
    if end is None:
        return results, rows
    for name, r in main.results.items():
        e = end.results.get(name)
        if not name.startswith("probe/") or e is None:
            continue
        rows.append((name, probe_rate(r), probe_rate(e)))
        if probe_rate(e) > probe_rate(r):
            results[name] = e
    return results, rows


def portable_dir(json_path):
    """Where run_portable writes the comparison of results file json_path."""
    return results_base(json_path) + ".portable"


RE_PORTABLE_FILE = re.compile(r"^(native|portable)\.r(\d+)\.g(\d+)\.json$")


def portable_files(json_path):
    """[(binary, round, path)] of the comparison beside results file json_path: the files
    run_portable wrote into <base>.portable/, else (results of runs before the rounds) the one
    back-to-back pair <base>.native_subset.json / <base>.portable_subset.json as round 0."""
    base = results_base(json_path)
    files = []
    for path in sorted(glob.glob(os.path.join(glob.escape(portable_dir(json_path)), "*.json"))):
        m = RE_PORTABLE_FILE.match(os.path.basename(path))
        if m:
            files.append((m.group(1), int(m.group(2)), path))
    if not files:
        old = [(w, 0, f"{base}.{w}_subset.json") for w in ("native", "portable")]
        files = old if all(os.path.isfile(p) for _, _, p in old) else []
    return files


def load_portable(files) -> Portable | None:
    """The comparison of portable_files(...), or None when there is none."""
    if not files:
        return None
    times = {"native": {}, "portable": {}}  # which -> (order, name) -> {round: seconds}
    ctx = {"native": {}, "portable": {}}
    errors = {}
    for which, r, path in files:
        run = load_results(path)
        if not run.results and not run.errors:
            errors[f"{os.path.basename(path)}"] = "no benchmark ran (does the group's filter match any?)"
        ctx[which] = ctx[which] or run.ctx
        errors.update({f"{n} ({run.ctx.get('binary', which)})": e for n, e in run.errors.items()})
        for order, name, res in portable_rows(classify(run.results)):
            times[which].setdefault((order, name), {})[r] = res.seconds
    rows = []
    for key in sorted(times["native"]):
        n, p = times["native"][key], times["portable"].get(key, {})
        rs = sorted(set(n) & set(p))
        if rs:
            rows.append((key[1], statistics.median(n[r] for r in rs),
                         statistics.median(p[r] for r in rs),
                         statistics.median(p[r] / n[r] for r in rs), len(rs)))
    return Portable(rows, ctx["native"], ctx["portable"], errors,
                    max((r[4] for r in rows), default=0),
                    any(p.endswith("_subset.json") for _, _, p in files))


def portable_target(pt: Portable | None):
    pairs = [(ratio, name) for name, _, _, ratio, _ in pt.rows] if pt else []
    return make_target("portable binary (plain -O2, no -march) time / native (-O3 -march=native) "
                       "time, median over rounds of the two binaries run back to back",
                       "<= 1.10", pairs, "<=", 1.10,
                       "not measured (--no-portable)" if pt is None
                       else "no benchmark ran with both binaries")


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
PLOT_LINES = (("toptheta", "Top-θ recommended (post + VMC)", "#1f77b4", 7, 0.96),
              ("toptheta_pre", "Top-θ pre + exact SDC + VMC", "#2ca02c", 5, 1.0),
              ("topk", "top-k", "#d62728", 9, 1.04))  # (mode, title, colour, point, x nudge)


def plot_speedup(D: Data, png_path):
    """One panel per dtype; per mode, the median speed-up over dense (decode_speedup: paired
    when measured) of the (layout, threads) configurations at each L, with bars from the least
    to the most favourable."""
    gp = shutil.which("gnuplot")
    if not gp:
        return "gnuplot not found (Debian: apt-get install gnuplot-nox); plot skipped"
    cfgs = decode_cfgs(D)
    dtypes = [dt for dt in DTYPES if any(c[1] == dt for c in cfgs)]
    if not dtypes:
        return "no decode results to plot"
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    Ls = sorted({c[0] for c in cfgs})
    speedups = {(mode, c): decode_speedup(D, mode, c) for mode, *_ in PLOT_LINES for c in cfgs}
    speedups = {k: v for k, v in speedups.items() if v is not None}
    ymax = max([1.0] + list(speedups.values()))  # one y range for every panel
    with tempfile.TemporaryDirectory() as tmp:
        png_tmp = os.path.join(tmp, "plot.png")  # renamed over png_path once gnuplot succeeds
        lines = [f'set terminal pngcairo size {460 * len(dtypes) + 80},560 font "DejaVu Sans,11"',
                 f'set output "{png_tmp}"',
                 f"set multiplot layout 1,{len(dtypes)} title "
                 '"Decode speed-up over dense, d = 128, Hq = 32, Hkv = 8, k = 64 '
                 '(median of token/head-major x 1/2 threads; bars: min to max)"',
                 "set logscale x 2", "set grid",
                 'set key top left Left reverse font ",10"',
                 'set xlabel "cache length L (tokens)"', 'set ylabel "time(dense) / time(mode)"',
                 f"set yrange [0:{1.1 * ymax:.3g}]", f"set xrange [{Ls[0] / 1.4:g}:{Ls[-1] * 1.4:g}]",
                 "set xtics (" + ", ".join(f'"{L // 1024}k" {L}' for L in Ls) + ")"]
        for dt in dtypes:
            plots = ['1 with lines lc rgb "#888888" dt 2 title "dense"']
            for mode, title, color, pt, nudge in PLOT_LINES:
                pts = []
                for L in Ls:
                    sp = [v for (m, c), v in speedups.items()
                          if m == mode and c[0] == L and c[1] == dt]
                    if sp:
                        pts.append((L, statistics.median(sp), min(sp), max(sp)))
                if not pts:
                    continue
                fn = os.path.join(tmp, f"{dt}_{mode}.dat")
                with open(fn, "w") as f:
                    for p in pts:
                        f.write("%.6g %.6g %.6g %.6g\n" % (p[0] * nudge, p[1], p[2], p[3]))
                plots.append(f'"{fn}" using 1:2:3:4 with yerrorlines lw 2 lc rgb "{color}" '
                             f'pt {pt} title "{title}"')
            lines.append(f'set title "{dt}"')
            lines.append("plot " + ", ".join(plots))
        lines.append("unset multiplot")
        script = os.path.join(tmp, "plot.gp")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        res = subprocess.run([gp, script], capture_output=True, text=True)
        if res.returncode != 0:
            return f"gnuplot failed: {res.stderr.strip()[:300]}"
        # Copied beside png_path, then renamed over it: an old plot stays whole until then.
        beside = png_path + ".tmp"
        shutil.copyfile(png_tmp, beside)
        os.chmod(beside, 0o644)
        os.replace(beside, png_path)
    return ""


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def gb(x):
    return f"{x / 1e9:.2f}"


def fmt_val(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def fmt_x(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}x"


def status(ok):
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def dtype_order(dt):
    return DTYPES.index(dt) if dt in DTYPES else 9


def err_text(r):
    e = r.counters.get("rel_err")
    return "" if e is None else f"{e:.2e}"


def thread_counters(counters, t):
    """A paired benchmark's counters of thread count `t` (those named `<key>_t<t>`), keyed by
    `<key>`."""
    suffix = f"_t{t}"
    return {k[:-len(suffix)]: v for k, v in counters.items() if k.endswith(suffix)}


def quartile_cell(c, mode):
    """A paired table's speed-up cell of `mode`: the median ratio over the rounds with its
    quartiles, from one thread count's counters `c` (the `x_`, `x25_` and `x75_` keys);
    "—" when the mode was not measured."""
    return (f"{c['x_' + mode]:.2f}x ({c['x25_' + mode]:.2f}-{c['x75_' + mode]:.2f})"
            if "x_" + mode in c else "—")


def write_paired_section(w, D: Data):
    if not D.paired:
        return
    w("## Decode: paired ratios")
    w("")
    w("`decode_paired/L:<n>/dtype:<t>/layout:<l>` runs the five modes of one (L, dtype, layout) "
      "on 1 and 2 threads, ten entries, inside one timed loop. Each round calls every entry "
      "once, on the next cache copy, and times each call alone: the five entries of one thread "
      "count in a shuffled order, then the other five, the two groups alternating which goes "
      "first, with an untimed call where the thread count changes (so no entry always follows the "
      "same one; bench_decode.cpp gives the bias this removed). A ratio is taken between two calls of the same round and the table gives its "
      "median over the rounds (the target rows marked [paired] use these). *speed-up* = "
      "time(dense) / time(mode), with its quartiles over the rounds; *kept all / dense* = "
      "time(every key kept) / time(dense); *over top-k* = time(top-k) / time(mode); *separate* = "
      "the recommended variant's speed-up from the separate `decode/` benchmarks, for "
      "comparison.")
    w("")
    w("| L | dtype | layout | thr | rounds | top-k | recommended (quartiles) | pre + SDC "
      "(quartiles) | kept all / dense | rec. over top-k | pre over top-k | separate |")
    w("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in sorted(paired_cfgs(D), key=lambda c: (c[0], dtype_order(c[1]), c[2] != "token",
                                                     c[3])):
        L, dtype, layout, t = cfg
        c = thread_counters(D.paired[cfg[:3]].counters, t)
        c["rounds"] = D.paired[cfg[:3]].counters.get("rounds", 0)
        fb = c.get("x_toptheta_dense_fallback")
        dn, tt = D.decode.get(("dense",) + cfg), D.decode.get(("toptheta",) + cfg)
        sep = fmt_x(dn.seconds / tt.seconds if dn and tt else None)
        w(f"| {L} | {dtype} | {layout} | {t} | {c.get('rounds', 0):.0f} | "
          f"{fmt_x(c.get('x_topk'))} | {quartile_cell(c, 'toptheta')} | "
          f"{quartile_cell(c, 'toptheta_pre')} | "
          f"{fmt_val(None if not fb else 1.0 / fb, 3)} | {fmt_x(c.get('k_toptheta'))} | "
          f"{fmt_x(c.get('k_toptheta_pre'))} | {sep} |")
    w("")


def write_prefill_paired_section(w, D: Data):
    if not D.ppaired:
        return
    w("### Prefill: paired ratios")
    w("")
    w("`prefill_paired/T:<n>/dtype:<t>` runs the four prefill modes of one (T, dtype) on 1 and 2 "
      "threads, eight entries, inside one timed loop, ordered as `decode_paired` orders its "
      "entries (see *Decode: paired ratios*), for a fixed number of rounds. A ratio is taken "
      "between two calls of the same round and the table gives its median over the rounds (the "
      "prefill target rows marked [paired] use these). *speed-up* = time(dense) / time(mode), "
      "with its quartiles over the rounds; *over top-k* = time(top-k) / time(mode); *separate* = "
      "the recommended variant's speed-up over dense from the separate `prefill/` benchmarks "
      "above, for comparison.")
    w("")
    w("| T | dtype | thr | rounds | top-k | recommended (quartiles) | pre + SDC (quartiles) | "
      "rec. over top-k | pre over top-k | separate |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for T_, dtype, t in prefill_cfgs(D):
        pp = D.ppaired.get((T_, dtype))
        if pp is None or f"t_dense_t{t}" not in pp.counters:
            continue
        c = thread_counters(pp.counters, t)
        dn, tt = D.prefill.get(("dense", T_, dtype, t)), D.prefill.get(("toptheta", T_, dtype, t))
        sep = fmt_x(dn.seconds / tt.seconds if dn and tt else None)
        w(f"| {T_} | {dtype} | {t} | {pp.counters.get('rounds', 0):.0f} | "
          f"{fmt_x(c.get('x_topk'))} | {quartile_cell(c, 'toptheta')} | "
          f"{quartile_cell(c, 'toptheta_pre')} | "
          f"{fmt_x(c.get('k_toptheta'))} | {fmt_x(c.get('k_toptheta_pre'))} | {sep} |")
    w("")


def probe_anomaly(D: Data):
    """A warning when the 2-thread read probe looks too slow to be the floor: no faster than
    the 1-thread probe, or slower than a 2-thread decode at L >= 16k (out of cache). A second
    core normally adds read bandwidth; when it did not while the probe ran (another tenant of
    the host, most likely), this run's 2-thread comparisons against the probe are off."""
    if 2 not in D.bw:
        return None
    over = [r.counters["bytes"] / r.seconds for cfg, r in D.decode.items()
            if cfg[4] == 2 and cfg[1] >= 16384 and r.counters.get("bytes")
            and r.counters["bytes"] / r.seconds > D.bw[2]]
    slow = 1 in D.bw and D.bw[2] <= D.bw[1]
    if not slow and not over:
        return None
    what = []
    if slow:
        what.append(f"{gb(D.bw[2])} GB/s on 2 threads against {gb(D.bw[1])} on 1")
    if over:
        what.append(f"{len(over)} 2-thread decode benchmark(s) at L >= 16k read faster than it "
                    f"(up to {gb(max(over))} GB/s)")
    return ("the read probe gave " + " and ".join(what) + ": it did not measure the 2-thread "
            "floor. This run's 2-thread ratios against the probe (GB/s / probe, % of probe) read "
            "high and its 2-thread time / floor ratios read low; time ratios between benchmarks "
            "are unaffected.")


def write_report(args, json_path, main: Run, pt: Portable | None, end: Run | None = None):
    merged, probe_rows = merge_probes(main, end)
    D = classify(merged)
    ctx = main.ctx
    cpu = lscpu_info()
    targets = compute_targets(D)
    targets.append(portable_target(pt))
    etargets = engine_targets(D)
    img_rel = os.path.relpath(args.img, os.path.dirname(os.path.abspath(args.out)))
    plot_note = plot_speedup(D, args.img) if not args.no_plot else "plot disabled (--no-plot)"

    out = []
    w = out.append
    w("# Performance")
    w("")
    w("<!-- Generated by scripts/perf_report.py; do not edit by hand. -->")
    w("")
    date = ctx.get("date", _dt.datetime.now().isoformat(timespec="seconds"))
    w(f"Generated on {date} from one run of `toptheta-bench` ({main.reps} repetition"
      f"{'s' if main.reps > 1 else ''}, wall-time medians"
      f"{'' if main.reps > 1 else ' of a single run'}; `--benchmark_min_time={args.min_time}`"
      f"{'; **quick mode** (smoke run): decode L in {1k, 16k}, prefill T = 1024, engine batch Lmax = 8k, paged / q8_0 L = 16k' if args.quick else ''}"
      f"{f'; filter `{args.filter}`' if args.filter else ''})"
      f"{', plus the portable-binary comparison' if pt else ''}"
      f"{' and the probes once more at its end' if probe_rows else ''}. "
      "Regenerate with `scripts/perf_report.sh` (full, on an idle machine) or "
      "`scripts/perf_report.sh --quick`; "
      f"raw results: `{os.path.relpath(json_path, ROOT)}`.")
    w("")
    load = ctx.get("load_avg", [])
    ncpu = ctx.get("num_cpus") or os.cpu_count() or 1
    if load and load[0] > 0.5 * ncpu:
        w(f"> **Noisy run:** the load average was {', '.join(f'{x:.2f}' for x in load)} on {ncpu} "
          "CPUs when the run started, i.e. other work shared the cores. Ratios within one run are "
          "still comparable, absolute numbers less so, and 2-thread runs suffer most (a kernel "
          "call's OpenMP barriers wait for a descheduled thread); the targets assume an idle "
          "machine.")
        w("")
    anomaly = probe_anomaly(D)
    if anomaly:
        w(f"> **Probe anomaly:** {anomaly}")
        w("")
    if args.quick:
        w("> **Quick run:** a smoke test of the suite and this page (short minimum time, one "
          "repetition, a subset of L and T). Its numbers are not the ones to quote.")
        w("")

    # ---- machine --------------------------------------------------------------------------
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {cpu.get('Model name', '?')} ({cpu.get('Vendor ID', '?')}, family "
      f"{cpu.get('CPU family', '?')} model {cpu.get('Model', '?')}) |")
    w(f"| cores / threads | {cpu.get('Core(s) per socket', '?')} cores per socket x "
      f"{cpu.get('Socket(s)', '?')} socket(s), {cpu.get('Thread(s) per core', '?')} thread(s) per "
      f"core, {cpu.get('CPU(s)', ncpu)} CPUs |")
    w(f"| caches | L1d {cpu.get('L1d cache', '?')}, L2 {cpu.get('L2 cache', '?')}, L3 "
      f"{cpu.get('L3 cache', '?')}"
      f"{' (sizes lscpu did not report are the CPUID ones from getconf; a VM may report the whole host socket, more than the L3 its cores reach)' if cpu.get('caches from getconf') else ''} |")
    flags = cpu.get("Flags", "").split()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    w(f"| widest SIMD (lscpu flags) | {simd} |")
    w(f"| kernels' SIMD path (runtime dispatch) | {ctx.get('runtime_isa', '?')}; "
      f"`toptheta-bench` compiled with `-march=native` ({ctx.get('simd', '?')} flags) |")
    if cpu.get("Hypervisor vendor"):
        w(f"| virtualised | {cpu['Hypervisor vendor']} |")
    elif "hypervisor" in flags:
        w("| virtualised | yes (the `hypervisor` CPU flag; vendor not reported) |")
    w(f"| MHz (Google Benchmark) | {ctx.get('mhz_per_cpu', '?')} |")
    w(f"| load average at start | {', '.join(f'{x:.2f}' for x in load) if load else '?'} |")
    w(f"| toptheta | {ctx.get('toptheta_version', '?')}; OpenMP max threads "
      f"{ctx.get('openmp_max_threads', '?')} |")
    w(f"| Google Benchmark library build | {ctx.get('library_build_type', '?')} (Debian's package "
      "reports `debug`; it only affects the library's own bookkeeping, not our code) |")
    w("")

    # ---- probes ---------------------------------------------------------------------------
    w("## Probes")
    w("")
    w("`probe/read_bandwidth/threads:n`: sequential read of a 1 GiB float buffer (32x a 32 MiB L3), "
      "summed in 64 independent lanes: the floor every decode is measured against (same thread "
      "count). `probe/read_blocks/block:b/threads:n`: the same buffer read in blocks of b bytes "
      "taken in a shuffled order: what the memory system charges a paged cache whose blocks lie "
      "at scattered addresses (32 KiB is one 16-token block of the paged benchmark's f16 cache, "
      "512 KiB one of 256 tokens; see *Paged KV cache*). `probe/fma_peak/threads:n`: "
      "register-resident fused multiply-adds, 12 independent chains per thread, on the widest "
      f"SIMD path the CPU runs (here: {D.fma_label or '?'}); 2 FLOP per lane per FMA: the peak "
      "prefill is measured against (same thread count).")
    w("")
    blocks = sorted({b for b, _ in D.bw_blocks})
    w("| threads | read GB/s | " + "".join(f"shuffled {b // 1024} KiB blocks GB/s | "
                                           for b in blocks) + "FMA GFLOP/s |")
    w("|---:|---:|" + "---:|" * len(blocks) + "---:|")
    for t in sorted(set(D.bw) | set(D.fma) | {t for _, t in D.bw_blocks}):
        w(f"| {t} | {gb(D.bw[t]) if t in D.bw else '—'} | "
          + "".join(f"{gb(D.bw_blocks[(b, t)]) if (b, t) in D.bw_blocks else '—'} | "
                    for b in blocks)
          + f"{f'{D.fma[t] / 1e9:.1f}' if t in D.fma else '—'} |")
    if not (D.bw or D.fma or D.bw_blocks):
        w("| — | not measured | " + "not measured | " * len(blocks) + "not measured |")
    w("")
    if probe_rows:
        w("Each probe ran at the start of the run and again at its end"
          f"{' (after the portable comparison)' if pt else ''}; the table above holds the faster "
          "of the two, the stricter floor (a probe slowed by another tenant of the host would "
          "flatter every ratio against it):")
        w("")
        w("| probe | start | end |")
        w("|---|---:|---:|")
        for name, a, b in probe_rows:
            a, b = ((f"{x / 1e9:.1f} GFLOP/s" if "fma_peak" in name else f"{gb(x)} GB/s")
                    for x in (a, b))
            w(f"| `{name}` | {a} | {b} |")
        w("")
    if anomaly:
        w(f"**Probe anomaly:** {anomaly}")
        w("")

    # ---- targets --------------------------------------------------------------------------
    w("## Targets")
    w("")
    w("Ratios from this run. Speed-ups are time ratios of benchmarks over the same inputs with "
      "the same dtype, layout and thread count; *worst configuration* is the one with the least "
      "favourable value (the one *measured* shows). Top-θ targets are checked for both measured "
      "variants (see the next section).")
    w("")
    write_targets_table(w, targets)
    w("")
    w("Notes: dense fallback — a Top-θ call whose table keeps every key; it should cost what "
      "dense costs. Head dims — 72 is itself a multiple of 8, but not of 16 (the AVX-512 "
      "width), so it is compared with 64; 100 with 104."
      + (" [paired] — a decode ratio taken within `decode_paired`, which runs the five modes of "
         "an (L, dtype, layout) on 1 and 2 threads in one timed loop: the ratio of "
         "two calls of the same "
         "round, milliseconds apart, median over the rounds (see *Decode: paired ratios*). "
         "Ratios of the separate `decode/` benchmarks, run seconds apart, move by tens of "
         "percent on a shared machine; the absolute targets (GB/s, time over floor) use "
         "those." if D.paired else ""))
    w("")

    # ---- variants --------------------------------------------------------------------------
    w("## Top-θ variants")
    w("")
    w("Every benchmark's label names its variant. Thresholds are calibrated with `kCalibrate` on "
      "the benchmark's own cache at k = 64, lambda = 0.1: decode with 8 other queries of the same "
      "distribution, prefill with 4 calibration prefills, each over its own query set (theta(L) = "
      "mean + lambda * std of 4 samples per head and row length).")
    w("")
    w("| mode (benchmark name) | variant | options |")
    w("|---|---|---|")
    for mode, (name, opts) in VARIANTS.items():
        w(f"| `{mode}` | {name} | {opts} |")
    w("")
    tt = [(k, r) for k, r in D.decode.items() if k[0] in TOPTHETA_MODES + ("topk",)]
    if tt:
        w("What the sparse decode rows kept (mean over dtypes, layouts and threads). *kept/row*: "
          "kept keys per (row, head); *V rows*: the union of kept V rows per KV group over L; "
          "*rel err*: |o - o_dense| / |o_dense|.")
        w("")
        w("| L | variant | kept/row | kept fraction | V rows read | rel err |")
        w("|---:|---|---:|---:|---:|---:|")
        for L in sorted({k[1] for k, _ in tt}):
            for mode in ("topk",) + TOPTHETA_MODES:
                rs = [r for k, r in tt if k[1] == L and k[0] == mode]
                if not rs:
                    continue
                mean = lambda c: sum(r.counters.get(c, 0) for r in rs) / len(rs)  # noqa: E731
                w(f"| {L} | {short(mode)} | {mean('kept_per_row'):.1f} | "
                  f"{100 * mean('kept_frac'):.3f}% | {100 * mean('vrows_frac'):.2f}% | "
                  f"{mean('rel_err'):.2e} |")
        w("")

    # ---- decode ---------------------------------------------------------------------------
    w("## Decode: GB/s against the floor")
    w("")
    w("One decode step, d = 128, Hq = 32, Hkv = 8, k = 64. *bytes* = bytes touched per step: "
      "K + V for dense (and a fallback row that keeps everything); K + (union of kept V rows per "
      "KV group) x d x sizeof(T) for the sparse modes. *floor* = bytes / probe GB/s (same thread "
      "count); *% of floor* = floor time / measured time. Each iteration reads a different copy "
      "of the cache when one copy is smaller than 128 MiB (4x a 32 MiB L3), so small L is DRAM-bound as in "
      "a multi-layer model. Dense is checked against a double reference on two heads.")
    w("")
    w("| L | dtype | layout | thr | variant | time (ms) | GB/s | % of floor | vs dense | "
      "kept/row | V rows | rel err |")
    w("|---:|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(D.decode, key=lambda k: (k[1], dtype_order(k[2]), k[3] != "token", k[4],
                                               MODE_ORDER.get(k[0], 9))):
        mode, L, dtype, layout, t = key
        r = D.decode[key]
        gbps = r.counters["bytes"] / r.seconds
        pf = f"{100 * gbps / D.bw[t]:.0f}%" if D.bw.get(t) else "—"
        dn = D.decode.get(("dense",) + key[1:])
        vs = f"{dn.seconds / r.seconds:.2f}x" if dn and mode != "dense" else ""
        w(f"| {L} | {dtype} | {layout} | {t} | {short(mode)} | {1e3 * r.seconds:.3f} | {gb(gbps)} "
          f"| {pf} | {vs} | {r.counters.get('kept_per_row', 0):.1f} | "
          f"{100 * r.counters.get('vrows_frac', 1):.2f}% | {err_text(r)} |")
    if not D.decode:
        w("| — | | | | not measured | | | | | | | |")
    w("")
    write_paired_section(w, D)
    write_resident_section(w, D)

    # ---- prefill --------------------------------------------------------------------------
    w("## Prefill: GFLOP/s against the FMA probe")
    w("")
    w("Causal prefill, T = L, token-major Q/K/V. *GFLOP/s* counts the dense-equivalent work "
      "2·d·T(T+1)/2·Hq·2 (QK^T + PV) for every mode, so it is a speed, not the work done; "
      "*% of FMA* divides it by the FMA probe of the same thread count.")
    w("")
    w("| T | dtype | thr | variant | time (ms) | GFLOP/s | % of FMA | vs dense | vs top-k | "
      "kept frac | V rows | rel err |")
    w("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(D.prefill, key=lambda k: (k[1], dtype_order(k[2]), k[3],
                                                MODE_ORDER.get(k[0], 9))):
        mode, Tn, dtype, t = key
        r = D.prefill[key]
        fl = r.counters.get("flops", 0)
        dn = D.prefill.get(("dense",) + key[1:])
        tk = D.prefill.get(("topk",) + key[1:])
        vs = f"{dn.seconds / r.seconds:.2f}x" if dn and mode != "dense" else ""
        vk = f"{tk.seconds / r.seconds:.2f}x" if tk and mode in TOPTHETA_MODES else ""
        pk = f"{100 * fl / D.fma[t]:.0f}%" if D.fma.get(t) else "—"
        w(f"| {Tn} | {dtype} | {t} | {short(mode)} | {1e3 * r.seconds:.1f} | {fl / 1e9:.1f} | "
          f"{pk} | {vs} | {vk} | {100 * r.counters.get('kept_frac', 1):.2f}% | "
          f"{100 * r.counters.get('vrows_frac', 1):.1f}% | {err_text(r)} |")
    if not D.prefill:
        w("| — | | | not measured | | | | | | | | |")
    w("")
    write_prefill_paired_section(w, D)

    # ---- engine interfaces ----------------------------------------------------------------
    write_engine_section(w, D, etargets, probe_rows)

    # ---- plot -----------------------------------------------------------------------------
    w("## Speed-up over dense against L")
    w("")
    if plot_note:
        w(f"_{plot_note}_")
    else:
        w(f"![decode speed-up over dense against L, one panel per dtype]({img_rel})")
        w("")
        w("One panel per storage type. Each point is the **median** over the four (layout, "
          "threads) configurations — token-major and head-major cache, 1 and 2 threads — of "
          "time(dense) / time(mode) on the same inputs"
          + (" (the paired ratio of `decode_paired`, see *Decode: paired ratios*)" if D.paired
             else "") + "; the bars span the least and the most "
          "favourable of the four. Above the dashed line (1) the mode is faster than dense.")
    w("")

    # ---- thread scaling -------------------------------------------------------------------
    w("## Thread scaling")
    w("")
    Lp, _ = thread_scaling_L(D)
    Tps = sorted({k[1] for k in D.prefill})
    w(f"Speed-up of 2 threads over 1 (time(1) / time(2)): decode at L = {Lp}, prefill at every T."
      + (" *paired*: the speed-up within `decode_paired` / `prefill_paired` (1- and 2-thread "
         "calls of the same round, median over the rounds); the target uses it."
         if D.paired or D.ppaired else ""))
    w("")
    w("| benchmark | variant | 1 thread (ms) | 2 threads (ms) | speed-up | paired |")
    w("|---|---|---:|---:|---:|---:|")
    for mode, cfg3 in thread_scaling_cfgs(D, Lp):
        r1, r2 = D.decode.get((mode,) + cfg3 + (1,)), D.decode.get((mode,) + cfg3 + (2,))
        p = D.paired.get(cfg3)
        sp = p.counters.get("s_" + mode) if p else None
        if not (r1 and r2) and sp is None:
            continue
        w(f"| decode L={cfg3[0]} {cfg3[1]} {cfg3[2]} | {short(mode)} | "
          f"{fmt_val(1e3 * r1.seconds if r1 else None, 3)} | "
          f"{fmt_val(1e3 * r2.seconds if r2 else None, 3)} | "
          f"{fmt_x(r1.seconds / r2.seconds if r1 and r2 else None)} | {fmt_x(sp)} |")
    for key in sorted((k for k in D.prefill if k[3] == 1),
                      key=lambda k: (k[1], dtype_order(k[2]), MODE_ORDER.get(k[0], 9))):
        r2 = D.prefill.get(key[:3] + (2,))
        if r2:
            r1 = D.prefill[key]
            pp = D.ppaired.get(key[1:3])
            sp = pp.counters.get("s_" + key[0]) if pp else None
            w(f"| prefill T={key[1]} {key[2]} | {short(key[0])} | {1e3 * r1.seconds:.1f} "
              f"| {1e3 * r2.seconds:.1f} | {r1.seconds / r2.seconds:.2f}x | {fmt_x(sp)} |")
    if not Tps and Lp is None:
        w("| — | not measured | | | | |")
    w("")

    # ---- bit identity ---------------------------------------------------------------------
    w("## Bit-identity across thread counts")
    w("")
    flags = [("decode " + f"{k[0]} " + dcfg(k), r.counters["bit_identical"])
             for k, r in D.decode.items() if "bit_identical" in r.counters]
    flags += [("prefill " + f"{k[0]} " + pcfg(k), r.counters["bit_identical"])
              for k, r in D.prefill.items() if "bit_identical" in r.counters]
    bad = [n for n, v in flags if v != 1.0]
    w(f"Every 2-thread benchmark compares its output with a 1-thread call on the same inputs, bit "
      f"for bit: {len(flags) - len(bad)} of {len(flags)} configurations identical"
      f"{'' if not bad else ': differ — ' + ', '.join(bad)}.")
    w("")

    # ---- head dims ------------------------------------------------------------------------
    w("## Head dims")
    w("")
    w("`decode_dim/<mode>/d:<n>`: decode at L = 16k, Hq = 32, Hkv = 8, f32, token-major, 1 thread, "
      "same synthetic inputs with head dim d (Top-θ: recommended variant, calibrated for that d). "
      "*ps/byte* = wall time per byte touched; *vs ref* compares it with the reference dim "
      f"({', '.join(f'{d} vs {r}' for d, r in DIM_REFERENCE.items())}).")
    w("")
    w("| d | variant | time (ms) | MB touched | GB/s | ps/byte | vs ref | kept/row |")
    w("|---:|---|---:|---:|---:|---:|---:|---:|")
    for (mode, d) in sorted(D.dim, key=lambda k: (MODE_ORDER.get(k[0], 9), k[1])):
        r = D.dim[(mode, d)]
        ref = DIM_REFERENCE.get(d)
        vs = (f"{per_byte(r) / per_byte(D.dim[(mode, ref)]):.2f}"
              if ref and (mode, ref) in D.dim else "")
        w(f"| {d} | {short(mode)} | {1e3 * r.seconds:.3f} | {r.counters['bytes'] / 1e6:.1f} | "
          f"{gb(r.counters['bytes'] / r.seconds)} | {1e12 * per_byte(r):.1f} | {vs} | "
          f"{r.counters.get('kept_per_row', 0):.1f} |")
    if not D.dim:
        w("| — | not measured | | | | | | |")
    w("")

    # ---- ISA ------------------------------------------------------------------------------
    w("## SIMD paths")
    w("")
    w("`decode_isa/<mode>/isa:<path>`: decode at L = 16k, f32, token-major, 1 thread, first with "
      f"the automatic choice (`auto`: {ctx.get('runtime_isa', '?')} on this CPU), then with "
      "`AttentionOptions::isa` forced to each path compiled in, back to back. *vs auto* = "
      "time(auto) / time(path). *rel err* is against the automatic path's dense output.")
    w("")
    w("| path | variant | time (ms) | GB/s | vs auto | rel err |")
    w("|---|---|---:|---:|---:|---:|")
    isa_order = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3, "neon": 4}
    for (mode, isa) in sorted(D.isa, key=lambda k: (MODE_ORDER.get(k[0], 9), isa_order.get(k[1], 9))):
        r = D.isa[(mode, isa)]
        auto = D.isa.get((mode, "auto"))
        vs = f"{auto.seconds / r.seconds:.2f}x" if auto and isa != "auto" else ""
        w(f"| {isa} | {short(mode)} | {1e3 * r.seconds:.3f} | {gb(r.counters['bytes'] / r.seconds)} "
          f"| {vs} | {err_text(r)} |")
    skipped = sorted(n for n in main.errors if n.startswith("decode_isa/"))
    for n in skipped:
        w(f"| {n.split('/')[2].split(':')[1]} | {n.split('/')[1]} | skipped: {main.errors[n]} | | | |")
    if not D.isa and not skipped:
        w("| — | not measured | | | | |")
    w("")

    # ---- portable -------------------------------------------------------------------------
    w("## Portable binary against the native one")
    w("")
    if pt and not pt.rows:
        w("_Measured, but no decode/ or prefill/ benchmark ran with both binaries"
          + (" (see the errors below)._" if pt.errors else "._"))
    elif pt:
        w("`toptheta-bench-portable` is built from the same sources as a consumer with plain "
          "`-O2` would (no `-m` flags; "
          f"{pt.portable_ctx.get('simd', '?')} instruction set at compile time), "
          "`toptheta-bench` with `-O3 -march=native`. Both dispatch at run time (portable: "
          f"{pt.portable_ctx.get('runtime_isa', '?')}, native: "
          f"{pt.native_ctx.get('runtime_isa', '?')}). "
          + ("These results predate the rounds: the subset below ran once with each binary, "
             "native first, back to back, and *portable / native* is the ratio of the two "
             "runs' medians." if pt.legacy else
             f"After the main run, {pt.rounds} round{'s' if pt.rounds != 1 else ''} each ran "
             "the benchmarks below in groups (by default decode f32, decode f16, prefill f32, "
             "prefill f16, q8_0 engine decode) with both binaries back to back, one repetition each, the binary that "
             "goes first alternating. *portable / native* is the median over the rounds of the "
             "ratio within a round (seconds apart, so the machine's slow drift cancels); the "
             "times are medians over the rounds."))
        w("")
        w("| benchmark | native (ms) | portable (ms) | portable / native | rounds |")
        w("|---|---:|---:|---:|---:|")
        for name, n, p, ratio, nr in pt.rows:
            w(f"| {name} | {1e3 * n:.3f} | {1e3 * p:.3f} | {ratio:.2f} | {nr} |")
    else:
        w("_Not measured (`--no-portable`, or results from a run without it)._")
    w("")

    # ---- errors ---------------------------------------------------------------------------
    errors = {n: e for n, e in main.errors.items() if not n.startswith("decode_isa/")}
    if end is not None:
        errors.update({f"{n} (end-of-run probe)": e for n, e in end.errors.items()})
    if pt:
        errors.update(pt.errors)
    if errors:
        w("## Benchmarks that reported an error")
        w("")
        for n, e in sorted(errors.items()):
            w(f"- `{n}`: {e}")
        w("")

    # ---- reproduce ------------------------------------------------------------------------
    w("## Reproduce")
    w("")
    w("```sh")
    w("scripts/perf_report.sh            # build the bench preset, run everything (3 repetitions), "
      "write this page")
    w("scripts/perf_report.sh --quick    # smoke run: decode L in {1k, 16k} and resident, prefill T = 1024, "
      "engine batch Lmax = 8k, paged / q8_0 L = 16k, "
      "1 repetition")
    w("scripts/perf_report.py --from-json build/bench/perf/results.json   # re-render only")
    w("build/bench/bin/toptheta-bench --benchmark_filter='decode/(dense|toptheta)/L:16384/dtype:f32'")
    w("build/bench/bin/toptheta-bench --benchmark_filter='^engine_' --benchmark_repetitions=3")
    w("```")
    w("")
    w("Benchmark names: `decode/<mode>/L:<n>/dtype:<f32|f16|bf16>/layout:<token|head>/threads:<n>` "
      "with mode `dense|topk|toptheta|toptheta_pre|toptheta_dense_fallback`; "
      "`decode_paired/L:<n>/dtype:<f32|f16|bf16>/layout:<token|head>`; "
      "`prefill/<dense|topk|toptheta|toptheta_pre>/T:<n>/dtype:<f32|f16>/threads:<n>`; "
      "`prefill_paired/T:<n>/dtype:<f32|f16>`; "
      "`decode_isa/<dense|toptheta>/isa:<auto|scalar|avx2|avx512|neon>/L:16384/dtype:f32/layout:token/threads:1`; "
      "`decode_dim/<dense|toptheta>/d:<n>/L:16384/dtype:f32/layout:token/threads:1`; "
      "`decode_resident/dense/L:16384/dtype:<f32|f16|bf16>/layout:token/threads:<n>`; "
      "`engine_batch/<dense|toptheta|toptheta_pre>/call:<batch|singles>/seqs:8/Lmax:<n>/dtype:f16/threads:<n>`; "
      "`engine_paged/<dense|toptheta|toptheta_pre>/kv:<contiguous|paged16|paged256>/L:<n>/dtype:f16/threads:<n>`; "
      "`engine_q8/<dense|toptheta|toptheta_pre>/L:<n>/dtype:<q8_0|f16>/threads:<n>`; "
      "`probe/read_bandwidth/threads:<n>`, `probe/read_blocks/block:<32768|524288>/threads:<n>`, "
      "`probe/fma_peak/threads:<n>` "
      "(see `bench/bench_common.hpp` for the synthetic inputs).")
    w("")
    write_atomic(args.out, "\n".join(out))
    print(f"wrote {os.path.relpath(args.out, ROOT)}"
          + ("" if plot_note else f" and {os.path.relpath(args.img, ROOT)}"), file=sys.stderr)
    if anomaly:
        print(f"warning: {anomaly}", file=sys.stderr)
    for tg in targets + etargets:
        print(f"  {status(tg.ok).strip('*'):5} {fmt_val(tg.measured, 3):>6} {tg.required:>8}  {tg.text}"
              f"  [{tg.worst}]", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: decode L in {1k, 16k}, prefill T = 1024, probes, head dims, "
                        "SIMD paths, resident decode, engine batch Lmax = 8k, paged / q8_0 L = 16k; 1 repetition, "
                        "min time 0.05 s (unless given)")
    p.add_argument("--repetitions", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="--benchmark_min_time in seconds (default 0.3, quick 0.05)")
    p.add_argument("--filter", default=None, help="--benchmark_filter regex of the main run "
                   "(overrides --quick's)")
    p.add_argument("--bench", default=os.path.join(ROOT, "build/bench/bin/toptheta-bench"))
    p.add_argument("--bench-portable",
                   default=os.path.join(ROOT, "build/bench/bin/toptheta-bench-portable"))
    p.add_argument("--no-portable", action="store_true",
                   help="skip the portable-vs-native comparison runs")
    p.add_argument("--portable-rounds", type=int, default=None,
                   help="rounds of the portable comparison (default 5, quick 1)")
    p.add_argument("--portable-group", action="append", default=None, metavar="REGEX",
                   help="a --benchmark_filter group of the portable comparison (repeatable; "
                        "default: dense / toptheta decode at L = 16k token-major f32, the same "
                        "f16, prefill at T = 1024 f32, the same f16, engine_q8 at L = 16k q8_0)")
    p.add_argument("--from-json", default=None, help="render an existing results file; run nothing")
    p.add_argument("--json-out", default=os.path.join(ROOT, "build/bench/perf/results.json"))
    p.add_argument("--out", default=None,
                   help="the page (default docs/performance.md; quick runs: "
                        "build/bench/perf/performance-quick.md, --filter runs: "
                        "build/bench/perf/performance-filtered.md, so partial numbers never "
                        "replace the committed page by accident)")
    p.add_argument("--img", default=None,
                   help="the plot (default docs/img/speedup_vs_L.png; quick runs: "
                        "build/bench/perf/speedup_vs_L-quick.png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    if args.min_time is None:
        args.min_time = 0.05 if args.quick else 0.3
    if args.portable_rounds is None:
        args.portable_rounds = 1 if args.quick else 5
    if args.portable_rounds < 1:
        p.error("--portable-rounds must be at least 1")


    if args.from_json:
        json_path = os.path.abspath(args.from_json)
        meta_path = json_path + ".meta.json"
        meta = {}
        if os.path.isfile(meta_path):  # how that run was made, for the page's header
            with open(meta_path) as f:
                meta = json.load(f)
            for k in ("quick", "min_time", "filter"):
                if k in meta:
                    setattr(args, k, meta[k])
        portable_done = meta.get("portable", True)
    else:
        json_path = os.path.abspath(args.json_out)
        run_bench(args.bench, json_path, args, args.filter or (QUICK_FILTER if args.quick else None))
        if os.path.exists(probe_end_path(json_path)):  # a previous run's
            os.remove(probe_end_path(json_path))
        portable_done = not args.no_portable
        if portable_done:
            run_portable(args, portable_dir(json_path))
        try:
            run_probe_end(args, load_results(json_path), json_path)
        except SystemExit as e:  # the page still renders, with the start-of-run probes only
            print(f"warning: the end-of-run probes failed ({e}); the page uses the start-of-run "
                  "ones", file=sys.stderr)
        write_atomic(json_path + ".meta.json",
                     json.dumps({"quick": args.quick, "min_time": args.min_time,
                                 "filter": args.filter, "repetitions": args.repetitions,
                                 "portable": portable_done}))
    quick_dir = os.path.join(ROOT, "build/bench/perf")
    # A partial run (--quick, or a --filter subset) never replaces the committed page by default.
    tag = "quick" if args.quick else "filtered" if args.filter else None
    if args.out is None:
        args.out = (os.path.join(quick_dir, f"performance-{tag}.md") if tag
                    else os.path.join(ROOT, "docs/performance.md"))
    if args.img is None:
        args.img = (os.path.join(quick_dir, f"speedup_vs_L-{tag}.png") if tag
                    else os.path.join(ROOT, "docs/img/speedup_vs_L.png"))
    args.out = os.path.abspath(args.out)
    args.img = os.path.abspath(args.img)
    main_run = load_results(json_path)
    pt = load_portable(portable_files(json_path)) if portable_done else None
    end_path = probe_end_path(json_path)
    end_run = None
    if os.path.isfile(end_path):
        try:
            end_run = load_results(end_path)
        except SystemExit as e:  # unreadable: render with the start-of-run probes only
            print(f"warning: {e}; the end-of-run probes are left out", file=sys.stderr)
    write_report(args, json_path, main_run, pt, end_run)


if __name__ == "__main__":
    main()
