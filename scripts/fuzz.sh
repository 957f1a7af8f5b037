#!/usr/bin/env bash
# Fuzzes every libFuzzer target of tests/fuzz/, each for a bounded time:
#
#   target             what                                                seed corpus
#   threshold_loader   threshold file loaders (include/toptheta/io)        tests/fuzz/corpus/
#   checkpoint         llama2.c checkpoint header/size checks, versions    tests/fuzz/corpus_checkpoint/
#                      0-2, weight reading (examples/llama2c)
#   tokenizer          llama2.c tokenizer loader, encoder and decoder on   tests/fuzz/corpus_tokenizer/
#                      random vocabularies and text (examples/llama2c)
#
# For each target:
#   1. builds tests/fuzz/fuzz_<target>.cpp with clang++ -fsanitize=fuzzer,address,undefined into
#      build/fuzz/;
#   2. runs it for TOPTHETA_FUZZ_SECONDS (default 45) seconds over a temporary copy of its seed
#      corpus (the repository's corpora are never modified), with its dictionary if any;
#   3. prints the executions and seconds.
# The default total fuzzing time is 3 x 45 = 135 s (plus the builds).
#
# Exit status: 0 when every run is clean, or when clang++ or the libFuzzer runtime is missing
# (prints "fuzz.sh: SKIP: ..."); non-zero when a build fails or a fuzzer finds a crash, a leak, a
# timeout or a sanitizer report (the reproducer is kept in build/fuzz/artifacts/<target>/ and the
# log in build/fuzz/<target>.log; the other targets still run). Reproduce with:
# build/fuzz/fuzz_<target> <artifact>.
#
# Environment: TOPTHETA_FUZZ_SECONDS (run time per target), TOPTHETA_FUZZ_TARGETS (space-separated
# subset, default all), TOPTHETA_FUZZ_CXX (compiler, default clang++).
# Usage: ./scripts/fuzz.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${TOPTHETA_FUZZ_SECONDS:-45}
cxx=${TOPTHETA_FUZZ_CXX:-clang++}
targets=${TOPTHETA_FUZZ_TARGETS:-threshold_loader checkpoint tokenizer}
build=build/fuzz

# Per target: seed corpus, dictionary (or empty), maximum input length.
corpus_of() {
  case $1 in
    threshold_loader) echo tests/fuzz/corpus ;;
    *) echo "tests/fuzz/corpus_$1" ;;
  esac
}
dict_of() {
  case $1 in
    threshold_loader) echo tests/fuzz/threshold_loader.dict ;;
    *) echo "" ;;
  esac
}
max_len_of() {
  case $1 in
    threshold_loader) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

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

work=$(mktemp -d "${TMPDIR:-/tmp}/toptheta-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT

declare -a summary=()
status=0
for t in $targets; do
  src=tests/fuzz/fuzz_$t.cpp
  bin=$build/fuzz_$t
  log=$build/$t.log
  corpus=$(corpus_of "$t")
  dict=$(dict_of "$t")
  [[ -f $src && -d $corpus ]] || {
    echo "fuzz.sh: error: unknown target '$t' ($src or $corpus missing)" >&2
    exit 2
  }

  echo "fuzz.sh: building $bin with $cxx"
  # shellcheck disable=SC2086  # eigen_flags holds several words
  if ! "$cxx" -std=c++17 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Iinclude $eigen_flags "$src" -o "$bin"; then
    summary+=("$t: BUILD FAILED")
    status=1
    continue
  fi

  mkdir -p "$work/$t" "$build/artifacts/$t"
  cp "$corpus"/* "$work/$t/"
  seeds=$(find "$work/$t" -type f | wc -l)
  dict_arg=()
  [[ -n $dict ]] && dict_arg=(-dict="$dict")

  echo "fuzz.sh: fuzzing $t for ${seconds}s over a copy of $seeds seed inputs"
  rc=0
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin" "$work/$t" \
    -max_total_time="$seconds" -max_len="$(max_len_of "$t")" -timeout=20 -rss_limit_mb=2048 \
    ${dict_arg[@]+"${dict_arg[@]}"} -artifact_prefix="$build/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 ||
    rc=$?

  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  final=$(find "$work/$t" -type f | wc -l)
  if [[ $rc -ne 0 ]]; then
    echo "fuzz.sh: $t FAILED (exit $rc) after ${runs:-?} executions; last lines of $log:" >&2
    tail -n 60 "$log" >&2
    echo "fuzz.sh: reproducers in $build/artifacts/$t/:" >&2
    ls -l "$build/artifacts/$t/" >&2 || true
    summary+=("$t: FAILED (exit $rc) after ${runs:-?} executions (log: $log)")
    status=1
    continue
  fi
  summary+=("$t: OK: ${runs:-?} executions in ${secs:-$seconds}s, 0 crashes; corpus $seeds -> $final inputs (log: $log)")
done

for line in "${summary[@]}"; do
  echo "fuzz.sh: $line"
done
exit "$status"
