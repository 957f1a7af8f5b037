# shellcheck shell=bash
# Shared helpers for scripts/demo.sh and scripts/test.sh. Source it; do not run it.
#
# toptheta_install_packages              install the required Debian packages that are missing;
#                                        exits with an error when they cannot be installed.
# toptheta_try_install_packages PKG...   same, but only warns on failure (optional packages).

# Debian 12 packages needed to configure, build and test everything in the `release` and `dev`
# presets (compiler, build tools, Eigen, GoogleTest/GoogleMock, Google Benchmark, CLI11, JSON;
# pkg-config for the Packaging.PkgConfig test).
TOPTHETA_DEB_PACKAGES=(
  cmake
  ninja-build
  g++
  pkg-config
  libeigen3-dev
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  libcli11-dev
  nlohmann-json3-dev
)

# Optional packages for the fuzzers (libFuzzer ships with clang's compiler-rt) and the
# ThreadSanitizer run (LLVM's OpenMP runtime and its Archer tool).
# shellcheck disable=SC2034  # used by scripts/test.sh
TOPTHETA_DEB_FUZZ_PACKAGES=(
  clang
  libclang-rt-14-dev
  libomp-14-dev
)

# Optional package for the API reference (scripts/docs.sh, the `docs` step of scripts/test.sh).
# No graphviz: docs/Doxyfile.in sets HAVE_DOT = NO.
# shellcheck disable=SC2034  # used by scripts/test.sh and scripts/docs.sh
TOPTHETA_DEB_DOCS_PACKAGES=(
  doxygen
)

# Optional packages for the AArch64 cross build run under emulation (the `aarch64` preset, step 8
# of scripts/test.sh): the cross compiler, qemu-user, and GoogleTest's sources to build for it.
# shellcheck disable=SC2034  # used by scripts/test.sh and scripts/test_aarch64.sh
TOPTHETA_DEB_AARCH64_PACKAGES=(
  g++-aarch64-linux-gnu
  qemu-user
  googletest
)

# Directory of the model files that scripts/demo.sh, demo_llama2c.sh and results.sh read
# (llama2.c checkpoints, tokenizers, token files; none is part of the repository): $MODELS when
# set, otherwise this default, a folder beside the checkout (where the project's machines keep
# them). README.md ("Real model") says which files and how to get them.
# shellcheck disable=SC2034  # used by the scripts that source this file
TOPTHETA_MODELS=${MODELS:-../shared/models}

if [[ -t 1 ]]; then
  _TT_BOLD=$'\033[1m' _TT_YELLOW=$'\033[33m' _TT_RED=$'\033[31m' _TT_RESET=$'\033[0m'
else
  _TT_BOLD='' _TT_YELLOW='' _TT_RED='' _TT_RESET=''
fi
toptheta_log() { printf '%s==> %s%s\n' "$_TT_BOLD" "$*" "$_TT_RESET"; }
toptheta_warn() { printf '%swarning:%s %s\n' "$_TT_YELLOW" "$_TT_RESET" "$*" >&2; }
toptheta_die() {
  printf '%serror:%s %s\n' "$_TT_RED" "$_TT_RESET" "$*" >&2
  exit 1
}

# Prints the packages among "$@" that are not installed.
toptheta_missing_packages() {
  local pkg
  for pkg in "$@"; do
    if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
      printf '%s\n' "$pkg"
    fi
  done
}

_TOPTHETA_APT_UPDATED=0

# Runs apt-get as root (directly, or through sudo). Returns non-zero on failure.
_toptheta_apt_get() {
  local -a sudo_prefix=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo_prefix=(sudo)
    else
      toptheta_warn "not root and sudo is not available: cannot run apt-get $*"
      return 1
    fi
  fi
  "${sudo_prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

# _toptheta_install <strict:0|1> PKG...
_toptheta_install() {
  local strict=$1
  shift
  if ! command -v dpkg >/dev/null 2>&1; then
    toptheta_warn "dpkg not found (not a Debian system?): not installing packages; make sure" \
      "these are available: $*"
    return 0
  fi
  local -a missing
  mapfile -t missing < <(toptheta_missing_packages "$@")
  if [[ ${#missing[@]} -eq 0 ]]; then
    return 0
  fi
  toptheta_log "Installing missing Debian packages: ${missing[*]}"
  if [[ $_TOPTHETA_APT_UPDATED -eq 0 ]]; then
    if _toptheta_apt_get update; then
      _TOPTHETA_APT_UPDATED=1
    elif [[ $strict -eq 1 ]]; then
      toptheta_die "apt-get update failed"
    else
      toptheta_warn "apt-get update failed"
      return 1
    fi
  fi
  if ! _toptheta_apt_get install -y --no-install-recommends "${missing[@]}"; then
    if [[ $strict -eq 1 ]]; then
      toptheta_die "could not install: ${missing[*]}"
    fi
    toptheta_warn "could not install (optional): ${missing[*]}"
    return 1
  fi
}

toptheta_install_packages() { _toptheta_install 1 "${TOPTHETA_DEB_PACKAGES[@]}"; }
toptheta_try_install_packages() { _toptheta_install 0 "$@"; }
