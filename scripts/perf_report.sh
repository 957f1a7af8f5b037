#!/usr/bin/env bash
# Builds toptheta-bench and toptheta-bench-portable (the `bench` CMake preset, into build/bench),
# runs the benchmark suite and writes docs/performance.md plus docs/img/speedup_vs_L.png
# (scripts/perf_report.py).
#
#   scripts/perf_report.sh [--no-build] [perf_report.py options]
#
# perf_report.py options (see scripts/perf_report.py --help):
#   --quick                  smoke run: decode L in {1k, 16k}, prefill T = 1024, probes, head dims,
#                            SIMD paths, resident decode, engine batch Lmax = 8k, paged / q8_0
#                            L = 16k; 1 repetition,
#                            0.05 s min time; the page goes to build/bench/perf/performance-quick.md
#                            (docs/ stays untouched)
#   --out FILE, --img FILE   where the page and the plot go
#   --repetitions N          default 3 (medians are reported)
#   --min-time S             --benchmark_min_time, default 0.3
#   --filter REGEX           --benchmark_filter of the main run (overrides --quick's); the page
#                            goes to build/bench/perf/performance-filtered.md unless --out
#   --no-portable            skip the portable-vs-native comparison runs
#   --portable-rounds N      rounds of that comparison (default 5, quick 1), each running both
#                            binaries back to back; the page gives the median per-round ratio
#   --portable-group REGEX   a --benchmark_filter group of that comparison (repeatable; default:
#                            dense / toptheta decode L = 16k f32, f16, prefill T = 1024 f32, f16,
#                            engine_q8 L = 16k q8_0)
#   --from-json FILE         re-render a previous run without running anything
# Environment: JOBS (build parallelism, default 2).
#
# Run it on an otherwise idle machine: the suite measures memory bandwidth and the page compares
# against the probe's floor. The full suite takes about twenty minutes.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

build=1
render_only=0
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --from-json | --from-json=*) build=0; render_only=1; args+=("$a") ;;
    -h | --help)
      sed -n '2,29p' scripts/perf_report.sh | sed 's/^# \{0,1\}//'
      exec python3 scripts/perf_report.py --help
      ;;
    *) args+=("$a") ;;
  esac
done

command -v python3 >/dev/null 2>&1 || toptheta_die "python3 is required"
if ! command -v gnuplot >/dev/null 2>&1; then
  toptheta_try_install_packages gnuplot-nox ||
    toptheta_warn "gnuplot not available: docs/img/speedup_vs_L.png will not be drawn"
fi

if [[ $build -eq 1 ]]; then
  toptheta_log "Configuring and building the bench preset (build/bench)"
  cmake --preset bench >/dev/null
  cmake --build --preset bench -j"${JOBS:-2}" --target toptheta-bench toptheta-bench-portable
fi

# The page records the load average at start and calls the run noisy above 0.5 per CPU: after a
# build (or other work) give the 1-minute average up to two minutes to settle below 0.25 per CPU.
if [[ $render_only -eq 0 && -r /proc/loadavg ]]; then
  for _ in $(seq 24); do
    awk -v n="$(nproc)" '{ exit !($1 > 0.25 * n) }' /proc/loadavg || break
    sleep 5
  done
fi
toptheta_log "Running the benchmarks and writing docs/performance.md (load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
exec python3 scripts/perf_report.py "${args[@]}"
