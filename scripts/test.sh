#!/usr/bin/env bash
# Quick start, part 2: the whole test suite, as CI runs it (.ci/run calls this script).
#   1. installs the missing Debian packages (apt-get, as root or through sudo); clang and
#      libclang-rt-14-dev for the fuzzers are attempted but optional;
#   2. `release` preset: configure, build, ctest (unit tests + packaging tests);
#   3. `dev` preset: the same under AddressSanitizer + UndefinedBehaviorSanitizer (includes the
#      2,000-configuration randomized differential sweep, tests/test_sweep.cpp);
#   4. `portable` and `avx2-nof16c` presets: the kernel tests (ctest label "kernel") built without
#      -march (plain -O2) and with -mavx2 -mfma but no F16C, as consumers may build them;
#   5. `tsan` preset: the threaded kernel and engine tests under ThreadSanitizer (clang + LLVM
#      OpenMP with its Archer tool; skipped with a note when clang or libomp-14-dev is missing);
#   6. scripts/fuzz.sh, when it exists;
#   7. `docs`: the Doxygen API reference with warnings as errors (scripts/docs.sh --werror);
#      skipped with a note when doxygen is missing (it is attempted but optional);
#   8. `aarch64` preset: the kernel tests cross-compiled for AArch64 (NEON path) and run under
#      qemu-user (scripts/test_aarch64.sh); skipped with a note when the cross compiler or qemu
#      cannot be installed.
# Failed tests (up to 20 per step) run once more, alone: a test that passes then is listed as
# FLAKY in the summary and the step passes; one that fails again fails the step and is named.
# Prints a summary and exits non-zero if any step failed (later steps still run).
#
# Environment:
#   TOPTHETA_SKIP_DEV=1      skip step 3 (the sanitizer build) when iterating locally. CI never sets it.
#   TOPTHETA_SKIP_AARCH64=1  skip step 8 (several minutes of emulation) when iterating locally.
# Usage: ./scripts/test.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

JOBS=2
declare -a SUMMARY=() FLAKY=() FAILED_TESTS=()
FAILED=0

# step NAME CMD...: runs CMD, records PASS/FAIL and the time taken. Returns CMD's status.
step() {
  local name=$1
  shift
  local t0=$SECONDS rc=0
  toptheta_log "$name: $*"
  "$@" || rc=$?
  local dt=$((SECONDS - t0))
  if [[ $rc -eq 0 ]]; then
    SUMMARY+=("PASS  ${name} (${dt}s)")
  else
    SUMMARY+=("FAIL  ${name} (${dt}s, exit ${rc})")
    FAILED=1
  fi
  return "$rc"
}

skip() { SUMMARY+=("SKIP  $1"); }

# failed_tests PRESET: the names of the tests the last ctest run of PRESET failed, on one line
# (empty when it wrote no list).
failed_tests() {
  local f="build/$1/Testing/Temporary/LastTestsFailed.log"
  if [[ -f $f ]]; then cut -d: -f2- "$f" | paste -sd' ' -; fi
}

# shortened WORDS...: the first 10 words, then "... (N in all)".
shortened() {
  if (($# <= 10)); then echo "$*"; else echo "${*:1:10} ... ($# in all)"; fi
}

# test_preset PRESET: ctest of one preset. Up to MAX_RERUN tests that fail run once more, alone
# (-j1): a test that then passes is reported as FLAKY in the summary (its first failure's output
# is in the log above), one that fails again fails the step. More failures than that are not run
# again (a broken build would double the step's time). The summary names the failed tests
# either way, so the end of the log says which they were.
MAX_RERUN=20
test_preset() {
  local p=$1 names again t
  local -a flaky=()
  rm -f "build/$p/Testing/Temporary/LastTestsFailed.log"
  ctest --preset "$p" --output-on-failure -j"$JOBS" && return 0
  names=$(failed_tests "$p")
  [[ -n $names ]] || return 1  # ctest itself failed: nothing to run again
  # shellcheck disable=SC2086  # test names hold no spaces
  set -- $names
  if (($# > MAX_RERUN)); then
    FAILED_TESTS+=("$p (not run again): $(shortened "$@")")
    return 1
  fi
  toptheta_warn "$p: failed: $names; running them once more, alone"
  if ctest --preset "$p" --rerun-failed --output-on-failure -j1; then
    FLAKY+=("$p: $names")
    return 0
  fi
  again=$(failed_tests "$p")
  if [[ -z $again ]]; then  # the rerun failed without a list: count every test as failed
    FAILED_TESTS+=("$p (the rerun itself failed): $(shortened "$@")")
    return 1
  fi
  for t in "$@"; do [[ " $again " == *" $t "* ]] || flaky+=("$t"); done
  ((${#flaky[@]} == 0)) || FLAKY+=("$p: ${flaky[*]}")
  # shellcheck disable=SC2086
  FAILED_TESTS+=("$p (failed twice): $(shortened $again)")
  return 1
}

# run_preset PRESET: configure, build and test one preset; stops at the first failing step.
# (The build and test presets of the same name select the targets and tests.)
run_preset() {
  local p=$1
  step "configure $p" cmake --preset "$p" || { skip "build $p"; skip "test $p"; return 1; }
  step "build $p" cmake --build --preset "$p" -j"$JOBS" || { skip "test $p"; return 1; }
  step "test $p" test_preset "$p"
}

toptheta_install_packages

# ctest runs test binaries in parallel and each uses OpenMP: let idle OpenMP threads sleep instead
# of spinning, or two processes on two cores starve each other.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
toptheta_try_install_packages "${TOPTHETA_DEB_FUZZ_PACKAGES[@]}" ||
  toptheta_warn "fuzzing packages unavailable; scripts/fuzz.sh may skip or fail"
toptheta_try_install_packages "${TOPTHETA_DEB_DOCS_PACKAGES[@]}" ||
  toptheta_warn "doxygen unavailable; the docs step will be skipped"
if [[ ${TOPTHETA_SKIP_AARCH64:-0} != 1 ]]; then
  toptheta_try_install_packages "${TOPTHETA_DEB_AARCH64_PACKAGES[@]}" ||
    toptheta_warn "AArch64 cross packages unavailable; the aarch64 step will be skipped"
fi

run_preset release || true

if [[ ${TOPTHETA_SKIP_DEV:-0} == 1 ]]; then
  skip "dev (ASan+UBSan): TOPTHETA_SKIP_DEV=1"
else
  export ASAN_OPTIONS=detect_leaks=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  run_preset dev || true
  unset ASAN_OPTIONS UBSAN_OPTIONS
fi

run_preset portable || true
run_preset avx2-nof16c || true

if command -v clang++ >/dev/null 2>&1 && [[ -f /usr/lib/llvm-14/lib/libarcher.so ]]; then
  run_preset tsan || true
else
  skip "tsan: needs clang++ and libomp-14-dev (LLVM OpenMP with the Archer tool)"
fi

if [[ -f scripts/fuzz.sh ]]; then
  step "fuzz" bash scripts/fuzz.sh || true
else
  skip "fuzz: scripts/fuzz.sh not present"
fi

if command -v doxygen >/dev/null 2>&1; then
  step "docs (Doxygen, warnings as errors)" bash scripts/docs.sh --werror || true
else
  skip "docs: needs doxygen (Debian package doxygen)"
fi

if [[ ${TOPTHETA_SKIP_AARCH64:-0} == 1 ]]; then
  skip "aarch64: TOPTHETA_SKIP_AARCH64=1"
elif command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1 &&
  [[ -d /usr/src/googletest ]]; then
  run_preset aarch64 || true
else
  skip "aarch64: needs g++-aarch64-linux-gnu, qemu-user and googletest (Debian packages)"
fi

echo
toptheta_log "Summary"
for line in "${SUMMARY[@]}"; do
  echo "  $line"
done
for line in "${FLAKY[@]}"; do
  echo "  FLAKY (failed, then passed alone; see its output above): $line"
done
for line in "${FAILED_TESTS[@]}"; do
  echo "  FAILED TESTS: $line"
done
if [[ $FAILED -ne 0 ]]; then
  echo "RESULT: FAILED"
  exit 1
fi
echo "RESULT: all steps passed"
