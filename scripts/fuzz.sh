#!/usr/bin/env bash
# Fuzzes the threshold file loaders (tests/fuzz/fuzz_threshold_loader.cpp) for a bounded time.
#
#   1. builds the target with clang++ -fsanitize=fuzzer,address,undefined into build/fuzz/;
#   2. runs it for TOPTHETA_FUZZ_SECONDS (default 60) seconds over a temporary copy of the seed
#      corpus tests/fuzz/corpus/ (the repository's corpus is never modified), with the
#      dictionary tests/fuzz/threshold_loader.dict.
#
# Exit status: 0 when the run is clean, or when clang++ or the libFuzzer runtime is missing
# (prints "fuzz.sh: SKIP: ..."); non-zero when the build fails or the fuzzer finds a crash, a
# leak, a timeout or a sanitizer report (the reproducer is kept in build/fuzz/artifacts/ and the
# log in build/fuzz/fuzz.log). Reproduce with: build/fuzz/fuzz_threshold_loader <artifact>.
#
# Environment: TOPTHETA_FUZZ_SECONDS (run time), TOPTHETA_FUZZ_CXX (compiler, default clang++).
# Usage: ./scripts/fuzz.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${TOPTHETA_FUZZ_SECONDS:-60}
cxx=${TOPTHETA_FUZZ_CXX:-clang++}
build=build/fuzz
bin=$build/fuzz_threshold_loader
log=$build/fuzz.log

skip() {
  echo "fuzz.sh: SKIP: $*"
  exit 0
}

command -v "$cxx" >/dev/null 2>&1 ||
  skip "$cxx not found (Debian: apt-get install clang libclang-rt-14-dev)"

mkdir -p "$build"

# libFuzzer runtime present?
probe=$build/probe.cpp
cat >"$probe" <<'EOF'
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
EOF
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe" -o "$build/probe" >"$build/probe.log" 2>&1; then
  skip "$cxx cannot link -fsanitize=fuzzer (libFuzzer runtime missing; Debian: apt-get install libclang-rt-14-dev); see $build/probe.log"
fi

# Eigen headers (the library's only dependency).
eigen_flags=""
for d in /usr/include/eigen3 /usr/local/include/eigen3; do
  if [[ -f $d/Eigen/Core ]]; then
    eigen_flags="-isystem $d"
    break
  fi
done
if [[ -z $eigen_flags ]] && command -v pkg-config >/dev/null 2>&1 && pkg-config --exists eigen3; then
  eigen_flags=$(pkg-config --cflags eigen3)
fi
[[ -n $eigen_flags ]] || {
  echo "fuzz.sh: error: Eigen headers not found (apt-get install libeigen3-dev)" >&2
  exit 1
}

echo "fuzz.sh: building $bin with $cxx"
# shellcheck disable=SC2086  # eigen_flags holds several words
"$cxx" -std=c++17 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
  -Wall -Wextra -Iinclude $eigen_flags \
  tests/fuzz/fuzz_threshold_loader.cpp -o "$bin"

work=$(mktemp -d "${TMPDIR:-/tmp}/toptheta-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$build/artifacts"
cp tests/fuzz/corpus/* "$work/corpus/"
seeds=$(find "$work/corpus" -type f | wc -l)

echo "fuzz.sh: fuzzing for ${seconds}s over a copy of $seeds seed inputs"
rc=0
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$bin" "$work/corpus" \
  -max_total_time="$seconds" -max_len=16384 -timeout=20 -rss_limit_mb=2048 \
  -dict=tests/fuzz/threshold_loader.dict \
  -artifact_prefix="$build/artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?

runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
final=$(find "$work/corpus" -type f | wc -l)
if [[ $rc -ne 0 ]]; then
  echo "fuzz.sh: FAILED (exit $rc) after ${runs:-?} executions; last lines of $log:" >&2
  tail -n 60 "$log" >&2
  echo "fuzz.sh: reproducers in $build/artifacts/:" >&2
  ls -l "$build/artifacts/" >&2 || true
  exit "$rc"
fi
echo "fuzz.sh: OK: ${runs:-?} executions in ${secs:-$seconds}s, 0 crashes; corpus $seeds -> $final inputs (log: $log)"
