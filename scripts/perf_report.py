#!/usr/bin/env python3
"""Run toptheta-bench and write docs/performance.md (issue 6: targets, GB/s against the floor,
speed-up plot).

Python 3 standard library only; the plot is drawn by gnuplot (Debian: gnuplot-nox) when it is
installed, and skipped with a note otherwise.

Usually called through scripts/perf_report.sh, which builds the `bench` preset first:

    scripts/perf_report.sh                 # full suite, 3 repetitions, medians
    scripts/perf_report.sh --quick         # L <= 16k, T = 1024, 1 repetition, 0.1 s min time
    scripts/perf_report.py --from-json build/bench/perf/results.json   # re-render only

All speed ratios come from one run of one binary. Times are wall-clock medians over the
repetitions (the single run with --repetitions 1).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICK_FILTER = r"^(probe/|decode/[^/]+/L:(1024|4096|16384)/|prefill/[^/]+/T:1024/)"
K_BUDGET = 64

RE_DECODE = re.compile(
    r"^decode/(?P<mode>[^/]+)/L:(?P<L>\d+)/dtype:(?P<dtype>[^/]+)/layout:(?P<layout>[^/]+)"
    r"/threads:(?P<threads>\d+)$")
RE_PREFILL = re.compile(
    r"^prefill/(?P<mode>[^/]+)/T:(?P<T>\d+)/dtype:(?P<dtype>[^/]+)/threads:(?P<threads>\d+)$")
RE_PROBE = re.compile(r"^probe/read_bandwidth/threads:(?P<threads>\d+)$")

TIME_UNIT_S = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


# --------------------------------------------------------------------------------------------
# Running the benchmark
# --------------------------------------------------------------------------------------------
def run_bench(args) -> str:
    exe = args.bench
    if not os.path.isfile(exe):
        sys.exit(f"error: {exe} not found; build it with `cmake --preset bench && "
                 f"cmake --build --preset bench` or run scripts/perf_report.sh")
    os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
    cmd = [exe,
           f"--benchmark_out={args.json_out}",
           "--benchmark_out_format=json",
           f"--benchmark_repetitions={args.repetitions}",
           f"--benchmark_min_time={args.min_time}"]
    if args.repetitions > 1:
        cmd.append("--benchmark_display_aggregates_only=true")
    flt = args.filter or (QUICK_FILTER if args.quick else None)
    if flt:
        cmd.append(f"--benchmark_filter={flt}")
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = _dt.datetime.now()
    rc = subprocess.call(cmd)
    if rc != 0:
        sys.exit(f"error: toptheta-bench exited with status {rc}")
    print(f"benchmark run took {(_dt.datetime.now() - start).total_seconds():.0f} s",
          file=sys.stderr)
    return args.json_out


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    seconds: float                 # wall time per call (median over repetitions)
    counters: dict = field(default_factory=dict)
    error: str = ""


def load_results(path: str):
    with open(path) as f:
        data = json.load(f)
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
        results[name] = Result(name, sec, counters)
    return ctx, results, errors, max(reps.values(), default=1)


def classify(results):
    probe, decode, prefill = {}, {}, {}
    for name, r in results.items():
        if m := RE_PROBE.match(name):
            probe[int(m["threads"])] = r.counters.get("bytes_per_second", 0.0)
        elif m := RE_DECODE.match(name):
            decode[(m["mode"], int(m["L"]), m["dtype"], m["layout"], int(m["threads"]))] = r
        elif m := RE_PREFILL.match(name):
            prefill[(m["mode"], int(m["T"]), m["dtype"], int(m["threads"]))] = r
    return probe, decode, prefill


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
    note: str = ""


def fmt_cfg(key, kind="decode"):
    if kind == "decode":
        mode, L, dtype, layout, t = key
        return f"{mode} L={L} {dtype} {layout} t={t}"
    mode, T, dtype, t = key
    return f"{mode} T={T} {dtype} t={t}"


def worst(pairs, lower_is_worse=True):
    """pairs: list of (value, description). Returns (value, description) of the worst."""
    if not pairs:
        return None, ""
    return (min if lower_is_worse else max)(pairs, key=lambda p: p[0])


def compute_targets(probe, decode, prefill, peak_per_core):
    T = []

    def t_of(key, table):
        r = table.get(key)
        return r.seconds if r else None

    def ratio_rows(num_mode, den_mode, cond):
        """time(num_mode) / time(den_mode) for every decode config where both exist."""
        out = []
        for key, r in decode.items():
            mode, L, dtype, layout, t = key
            if mode != den_mode or not cond(L):
                continue
            other = decode.get((num_mode, L, dtype, layout, t))
            if other:
                out.append((other.seconds / r.seconds, fmt_cfg(key)[len(den_mode) + 1:]))
        return out

    # 1. dense decode >= 80% of the probe for L >= 16k, per layout
    for layout in ("token", "head"):
        pairs = []
        for key, r in decode.items():
            mode, L, dtype, lay, t = key
            if mode == "dense" and lay == layout and L >= 16384 and probe.get(t):
                pairs.append((r.counters["bytes"] / r.seconds / probe[t], fmt_cfg(key)))
        v, d = worst(pairs)
        T.append(Target(f"dense decode, {layout}-major, L >= 16k: GB/s / probe GB/s", ">= 0.80",
                        v, None if v is None else v >= 0.80, f"worst: {d}" if d else "not measured"))

    # 2./3. Top-theta vs dense
    for cond, label, need in ((lambda L: L >= 16384, "L >= 16k", 1.6), (lambda L: L == 4096, "L = 4k", 1.3)):
        v, d = worst(ratio_rows("dense", "toptheta", cond))
        T.append(Target(f"Top-θ decode (k = 64) speed-up over dense, {label}", f">= {need:.2f}x",
                        v, None if v is None else v >= need, f"worst: {d}" if d else "not measured"))

    # 4. dense fallback no more than 5% slower
    v, d = worst(ratio_rows("toptheta_dense_fallback", "dense", lambda L: True), lower_is_worse=False)
    T.append(Target("Top-θ keeping every key (dense fallback): time / dense time", "<= 1.05",
                    v, None if v is None else v <= 1.05, f"worst: {d}" if d else "not measured"))

    # 5. Top-theta vs top-k
    v, d = worst(ratio_rows("topk", "toptheta", lambda L: True))
    T.append(Target("Top-θ decode speed-up over top-k (k = 64), all L", ">= 2.00x", v,
                    None if v is None else v >= 2.0, f"worst: {d}" if d else "not measured"))

    # 6./7. prefill at T = 4096 (or the largest T measured)
    Ts = sorted({k[1] for k in prefill})
    Tp = 4096 if 4096 in Ts else (Ts[-1] if Ts else None)
    tnote = "" if Tp == 4096 else f" (T = {Tp}: T = 4096 not measured)" if Tp else ""
    pairs = []
    for key, r in prefill.items():
        mode, Tn, dtype, t = key
        if mode == "dense" and Tn == Tp and dtype == "f32" and "flops" in r.counters:
            pairs.append((r.counters["flops"] / (peak_per_core * 1e9 * t), fmt_cfg(key, "prefill")))
    v, d = worst(pairs)
    T.append(Target(f"prefill dense, T = L = 4096 causal: GFLOP/s / FMA peak "
                    f"({peak_per_core:g} GFLOP/s per core x threads)", ">= 0.40", v,
                    None if v is None else v >= 0.40,
                    (f"worst: {d}" if d else "not measured") + tnote))
    pairs = []
    for key, r in prefill.items():
        mode, Tn, dtype, t = key
        if mode == "toptheta" and Tn == Tp:
            dn = prefill.get(("dense", Tn, dtype, t))
            if dn:
                pairs.append((dn.seconds / r.seconds, fmt_cfg(key, "prefill")))
    v, d = worst(pairs)
    T.append(Target("prefill Top-θ (k = 64) speed-up over dense, T = 4096", ">= 1.50x", v,
                    None if v is None else v >= 1.5, (f"worst: {d}" if d else "not measured") + tnote))

    # 8. two threads on the largest decode (L = 64k)
    Ls = sorted({k[1] for k in decode})
    Lp = 65536 if 65536 in Ls else (Ls[-1] if Ls else None)
    lnote = "" if Lp == 65536 else f" (L = {Lp}: L = 64k not measured)" if Lp else ""
    pairs = []
    for key, r in decode.items():
        mode, L, dtype, layout, t = key
        if L == Lp and t == 1:
            r2 = decode.get((mode, L, dtype, layout, 2))
            if r2:
                pairs.append((r.seconds / r2.seconds, fmt_cfg(key)[:-4]))
    v, d = worst(pairs)
    T.append(Target("decode L = 64k: 2-thread speed-up over 1 thread (all modes)", ">= 1.30x", v,
                    None if v is None else v >= 1.3, (f"worst: {d}" if d else "not measured") + lnote))
    pairs = []
    for key, r in prefill.items():
        mode, Tn, dtype, t = key
        if Tn == Tp and t == 1:
            r2 = prefill.get((mode, Tn, dtype, 2))
            if r2:
                pairs.append((r.seconds / r2.seconds, fmt_cfg(key, "prefill")[:-4]))
    v, d = worst(pairs)
    T.append(Target("prefill T = 4096: 2-thread speed-up over 1 thread (all modes)", ">= 1.80x", v,
                    None if v is None else v >= 1.8, (f"worst: {d}" if d else "not measured") + tnote))

    # 9. bit-identical outputs across thread counts
    flags = [(r.counters["bit_identical"], n) for n, r in
             list(((fmt_cfg(k), r) for k, r in decode.items())) +
             list(((fmt_cfg(k, "prefill"), r) for k, r in prefill.items()))
             if "bit_identical" in r.counters]
    bad = [n for v, n in flags if v != 1.0]
    T.append(Target("outputs bit-identical with 1 and 2 threads", "all",
                    None if not flags else float(len(flags) - len(bad)) / len(flags),
                    None if not flags else not bad,
                    (f"{len(flags) - len(bad)}/{len(flags)} identical" +
                     (f"; differ: {', '.join(bad[:4])}" if bad else "")) if flags else "not measured"))

    # 10. Top-theta decode within 1.25x of its own floor
    pairs = []
    for key, r in decode.items():
        mode, L, dtype, layout, t = key
        if mode == "toptheta" and probe.get(t):
            floor = r.counters["bytes"] / probe[t]
            pairs.append((r.seconds / floor, fmt_cfg(key)))
    v, d = worst(pairs, lower_is_worse=False)
    T.append(Target("Top-θ decode time / its floor ((K + kept V-row union) bytes / probe GB/s), all L",
                    "<= 1.25", v, None if v is None else v <= 1.25, f"worst: {d}" if d else "not measured"))
    return T


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
def plot_speedup(decode, png_path):
    gp = shutil.which("gnuplot")
    if not gp:
        return "gnuplot not found (Debian: apt-get install gnuplot-nox); plot skipped"
    series = {}  # (threads, mode, dtype, layout) -> [(L, speedup)]
    for key, r in decode.items():
        mode, L, dtype, layout, t = key
        if mode == "dense":
            continue
        dn = decode.get(("dense", L, dtype, layout, t))
        if dn:
            series.setdefault((t, mode, dtype, layout), []).append((L, dn.seconds / r.seconds))
    if not series:
        return "no decode results to plot"
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    colors = {"toptheta": "#1f77b4", "topk": "#d62728", "toptheta_dense_fallback": "#2ca02c"}
    dash = {("f32", "token"): 1, ("f32", "head"): 2, ("f16", "token"): 3, ("f16", "head"): 4,
            ("bf16", "token"): 5, ("bf16", "head"): 5}
    point = {"f32": 7, "f16": 5, "bf16": 9}
    threads = sorted({k[0] for k in series})
    with tempfile.TemporaryDirectory() as tmp:
        lines = ['set terminal pngcairo size 1400,700 font "DejaVu Sans,10"',
                 f'set output "{png_path}"',
                 f"set multiplot layout 1,{len(threads)} title "
                 '"Decode speed-up over dense (same inputs, same run); d=128, Hq=32, Hkv=8, k=64"',
                 "set logscale x 2", "set grid",
                 'set key outside below center horizontal maxrows 5 width -2 font ",8"',
                 'set xlabel "cache length L (tokens)"', 'set ylabel "time(dense) / time(mode)"',
                 "set yrange [0:*]", "set xrange [700:90000]",
                 'set xtics ("1k" 1024, "4k" 4096, "16k" 16384, "64k" 65536)']
        for t in threads:
            plots = []
            for (tt, mode, dtype, layout), pts in sorted(series.items()):
                if tt != t:
                    continue
                fn = os.path.join(tmp, f"{t}_{mode}_{dtype}_{layout}.dat")
                with open(fn, "w") as f:
                    for L, s in sorted(pts):
                        f.write(f"{L} {s}\n")
                plots.append(f'"{fn}" using 1:2 with linespoints lc rgb "{colors.get(mode, "#000000")}" '
                             f'dt {dash.get((dtype, layout), 1)} pt {point.get(dtype, 7)} '
                             f'title "{mode.replace("_", " ")} {dtype} {layout}"')
            lines.append(f'set title "{t} thread{"s" if t > 1 else ""}"')
            lines.append("plot 1 with lines lc rgb \"#888888\" dt 2 notitle, " + ", ".join(plots))
        lines.append("unset multiplot")
        script = os.path.join(tmp, "plot.gp")
        with open(script, "w") as f:
            f.write("\n".join(lines) + "\n")
        res = subprocess.run([gp, script], capture_output=True, text=True)
        if res.returncode != 0:
            return f"gnuplot failed: {res.stderr.strip()[:300]}"
    return ""


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def gb(x):
    return f"{x / 1e9:.2f}"


def fmt_ratio(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def status(ok):
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def mode_order(m):
    return {"dense": 0, "topk": 1, "toptheta": 2, "toptheta_dense_fallback": 3}.get(m, 9)


def write_report(args, json_path, ctx, results, errors, reps):
    probe, decode, prefill = classify(results)
    cpu = lscpu_info()
    peak = args.fma_peak_per_core
    targets = compute_targets(probe, decode, prefill, peak)
    img_rel = os.path.relpath(args.img, os.path.dirname(os.path.abspath(args.out)))
    plot_note = plot_speedup(decode, args.img) if not args.no_plot else "plot disabled (--no-plot)"

    L_ = []
    w = L_.append
    w("# Performance")
    w("")
    w("<!-- Generated by scripts/perf_report.py; do not edit by hand. -->")
    w("")
    date = ctx.get("date", _dt.datetime.now().isoformat(timespec="seconds"))
    w(f"Generated on {date} from one run of `toptheta-bench` ({reps} repetition"
      f"{'s' if reps > 1 else ''}, wall-time medians"
      f"{'' if reps > 1 else ' of a single run'}; `--benchmark_min_time={args.min_time}`"
      f"{'; quick mode: L <= 16k, prefill T = 1024' if args.quick else ''}"
      f"{f'; filter `{args.filter}`' if args.filter else ''}). "
      "Regenerate with `scripts/perf_report.sh` (full) or `scripts/perf_report.sh --quick`; "
      f"raw results: `{os.path.relpath(json_path, ROOT)}`.")
    w("")
    load = ctx.get("load_avg", [])
    ncpu = ctx.get("num_cpus") or os.cpu_count() or 1
    if load and load[0] > 0.5 * ncpu:
        w(f"> **Noisy run:** the load average was {', '.join(f'{x:.2f}' for x in load)} on {ncpu} "
          "CPUs when the run started, i.e. other work shared the cores. Ratios within one run are "
          "still comparable, absolute numbers less so.")
        w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {cpu.get('Model name', '?')} ({cpu.get('Vendor ID', '?')}, family {cpu.get('CPU family', '?')} model {cpu.get('Model', '?')}) |")
    w(f"| cores / threads | {cpu.get('Core(s) per socket', '?')} cores per socket x {cpu.get('Socket(s)', '?')} socket(s), {cpu.get('Thread(s) per core', '?')} thread(s) per core, {cpu.get('CPU(s)', ncpu)} CPUs |")
    w(f"| caches | L1d {cpu.get('L1d cache', '?')}, L2 {cpu.get('L2 cache', '?')}, L3 {cpu.get('L3 cache', '?')} |")
    flags = cpu.get("Flags", "").split()
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    w(f"| widest SIMD (lscpu flags) | {simd}; binary built for: {ctx.get('simd', '?')} |")
    if cpu.get("Hypervisor vendor"):
        w(f"| virtualised | {cpu['Hypervisor vendor']} |")
    w(f"| MHz (Google Benchmark) | {ctx.get('mhz_per_cpu', '?')} |")
    w(f"| load average at start | {', '.join(f'{x:.2f}' for x in load) if load else '?'} |")
    w(f"| toptheta | {ctx.get('toptheta_version', '?')}; OpenMP max threads {ctx.get('openmp_max_threads', '?')} |")
    w(f"| Google Benchmark library build | {ctx.get('library_build_type', '?')} (Debian's package reports `debug`; it only affects the library's own bookkeeping, not our code) |")
    w(f"| FMA peak used | {peak:g} GFLOP/s per core (script parameter `--fma-peak-per-core`) |")
    w("")
    w("## Memory read bandwidth (probe)")
    w("")
    w("`probe/read_bandwidth/threads:n`: sequential read of a 1 GiB float buffer (32x the L3), summed "
      "in 64 independent lanes. This is the floor every decode is measured against (same thread count).")
    w("")
    w("| threads | GB/s |")
    w("|---:|---:|")
    for t in sorted(probe):
        w(f"| {t} | {gb(probe[t])} |")
    if not probe:
        w("| — | not measured |")
    w("")
    w("## Targets (issue 6)")
    w("")
    w("Ratios from this run. Speed-ups are time ratios of benchmarks over the same inputs with the "
      "same dtype, layout and thread count; *worst* is the configuration with the least favourable "
      "ratio.")
    w("")
    w("| target | required | measured | status | note |")
    w("|---|---:|---:|:---:|---|")
    for tg in targets:
        w(f"| {tg.text} | {tg.required} | {fmt_ratio(tg.measured)} | {status(tg.ok)} | {tg.note} |")
    w("")
    tt = [(k, r) for k, r in decode.items() if k[0] == "toptheta"]
    if tt:
        w("Kept fraction reached by Top-θ (thresholds calibrated at k = 64 on 8 other queries of "
          "the same cache, lambda = 0.1; mean over dtypes, layouts and threads):")
        w("")
        w("| L | kept keys per (row, head) | kept fraction | V rows read (union per KV group) |")
        w("|---:|---:|---:|---:|")
        for L in sorted({k[1] for k, _ in tt}):
            rs = [r for k, r in tt if k[1] == L]
            kpr = sum(r.counters.get("kept_per_row", 0) for r in rs) / len(rs)
            kf = sum(r.counters.get("kept_frac", 0) for r in rs) / len(rs)
            vf = sum(r.counters.get("vrows_frac", 0) for r in rs) / len(rs)
            w(f"| {L} | {kpr:.1f} (top-k: {K_BUDGET}) | {100 * kf:.3f}% | {100 * vf:.2f}% |")
        w("")
    w("## Decode: GB/s against the floor")
    w("")
    w("One decode step, d = 128, Hq = 32, Hkv = 8, k = 64. *bytes* = bytes touched per step: "
      "K + V for dense; K + (union of kept V rows per KV group) x d x sizeof(T) for the sparse modes. "
      "*floor* = bytes / probe GB/s (same thread count); *% of floor* = floor time / measured time. "
      "Each iteration reads a different copy of the cache when one copy is smaller than 128 MiB "
      "(4x L3), so small L is DRAM-bound as in a multi-layer model. "
      "*rel err* = |o - o_dense| / |o_dense| (sparse modes); dense is checked against a double "
      "reference on two heads.")
    w("")
    w("| mode | L | dtype | layout | thr | time (ms) | GB/s | % of floor | vs dense | kept/row | V rows | rel err |")
    w("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(decode, key=lambda k: (k[1], ["f32", "f16", "bf16"].index(k[2]) if k[2] in ("f32", "f16", "bf16") else 9,
                                            k[3] != "token", k[4], mode_order(k[0]))):
        mode, L, dtype, layout, t = key
        r = decode[key]
        gbps = r.counters["bytes"] / r.seconds
        pf = f"{100 * gbps / probe[t]:.0f}%" if probe.get(t) else "—"
        dn = decode.get(("dense", L, dtype, layout, t))
        vs = f"{dn.seconds / r.seconds:.2f}x" if dn and mode != "dense" else ""
        err = r.counters.get("rel_err")
        w(f"| {mode} | {L} | {dtype} | {layout} | {t} | {1e3 * r.seconds:.3f} | {gb(gbps)} | {pf} | {vs} | "
          f"{r.counters.get('kept_per_row', 0):.1f} | {100 * r.counters.get('vrows_frac', 1):.2f}% | "
          f"{'' if err is None else f'{err:.2e}'} |")
    if not decode:
        w("| — | | | | | | | | | | | |")
    w("")
    w("## Prefill")
    w("")
    w("Causal prefill, T = L, token-major Q/K/V. *GFLOP/s* counts the dense-equivalent work "
      "2·d·T(T+1)/2·Hq·2 (QK^T + PV) for every mode, so it is a speed, not the work done.")
    w("")
    w("| mode | T | dtype | thr | time (ms) | GFLOP/s | % of FMA peak | vs dense | kept frac | V rows | rel err |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in sorted(prefill, key=lambda k: (k[1], k[2] != "f32", k[3], mode_order(k[0]))):
        mode, Tn, dtype, t = key
        r = prefill[key]
        fl = r.counters.get("flops", 0)
        dn = prefill.get(("dense", Tn, dtype, t))
        vs = f"{dn.seconds / r.seconds:.2f}x" if dn and mode != "dense" else ""
        err = r.counters.get("rel_err")
        w(f"| {mode} | {Tn} | {dtype} | {t} | {1e3 * r.seconds:.1f} | {fl / 1e9:.1f} | "
          f"{100 * fl / (peak * 1e9 * t):.0f}% | {vs} | {100 * r.counters.get('kept_frac', 1):.2f}% | "
          f"{100 * r.counters.get('vrows_frac', 1):.1f}% | {'' if err is None else f'{err:.2e}'} |")
    if not prefill:
        w("| — | | | | | | | | | | |")
    w("")
    w("## Speed-up over dense against L")
    w("")
    if plot_note:
        w(f"_{plot_note}_")
    else:
        w(f"![decode speed-up over dense against L]({img_rel})")
    w("")
    if errors:
        w("## Benchmarks that reported an error")
        w("")
        for n, e in sorted(errors.items()):
            w(f"- `{n}`: {e}")
        w("")
    w("## Reproduce")
    w("")
    w("```sh")
    w("scripts/perf_report.sh            # build the bench preset, run everything (3 repetitions), write this page")
    w("scripts/perf_report.sh --quick    # L <= 16k, prefill T = 1024, 1 repetition")
    w("build/bench/bin/toptheta-bench --benchmark_filter='decode/(dense|toptheta)/L:16384/dtype:f32'")
    w("```")
    w("")
    w("Benchmark names: `decode/<dense|topk|toptheta|toptheta_dense_fallback>/L:<n>/dtype:<f32|f16|bf16>/"
      "layout:<token|head>/threads:<n>`, `prefill/<mode>/T:<n>/dtype:<..>/threads:<n>`, "
      "`probe/read_bandwidth/threads:<n>` (see `bench/bench_common.hpp` for the synthetic inputs).")
    w("")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(L_))
    print(f"wrote {os.path.relpath(args.out, ROOT)}"
          + ("" if plot_note else f" and {os.path.relpath(args.img, ROOT)}"), file=sys.stderr)
    for tg in targets:
        print(f"  {status(tg.ok).strip('*'):5} {fmt_ratio(tg.measured):>6} {tg.required:>8}  {tg.text}",
              file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="L <= 16k, prefill T = 1024, 1 repetition, min time 0.1 s (unless given)")
    p.add_argument("--repetitions", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="--benchmark_min_time in seconds (default 0.3, quick 0.1)")
    p.add_argument("--filter", default=None, help="--benchmark_filter regex (overrides --quick's)")
    p.add_argument("--bench", default=os.path.join(ROOT, "build/bench/bin/toptheta-bench"))
    p.add_argument("--from-json", default=None, help="render an existing results file; run nothing")
    p.add_argument("--json-out", default=os.path.join(ROOT, "build/bench/perf/results.json"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs/performance.md"))
    p.add_argument("--img", default=os.path.join(ROOT, "docs/img/speedup_vs_L.png"))
    p.add_argument("--fma-peak-per-core", type=float, default=112.0,
                   help="fp32 FMA peak in GFLOP/s per core (default 112)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    if args.min_time is None:
        args.min_time = 0.1 if args.quick else 0.3
    args.out = os.path.abspath(args.out)
    args.img = os.path.abspath(args.img)
    if args.from_json:
        json_path = args.from_json
        meta_path = json_path + ".meta.json"
        if os.path.isfile(meta_path):  # how that run was made, for the page's header
            with open(meta_path) as f:
                meta = json.load(f)
            for k in ("quick", "min_time", "filter"):
                if k in meta:
                    setattr(args, k, meta[k])
    else:
        json_path = run_bench(args)
        with open(json_path + ".meta.json", "w") as f:
            json.dump({"quick": args.quick, "min_time": args.min_time, "filter": args.filter,
                       "repetitions": args.repetitions}, f)
    ctx, results, errors, reps = load_results(json_path)
    write_report(args, os.path.abspath(json_path), ctx, results, errors, reps)


if __name__ == "__main__":
    main()
