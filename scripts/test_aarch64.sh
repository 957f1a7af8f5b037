#!/usr/bin/env bash
# The kernel tests cross-compiled for AArch64 (the NEON path) and run under qemu-user: installs
# g++-aarch64-linux-gnu, qemu-user and googletest when missing, then configures, builds and
# tests the `aarch64` preset (about 10 minutes on 2 cores; scripts/test.sh runs the same step).
# Usage: ./scripts/test_aarch64.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
_toptheta_install 1 "${TOPTHETA_DEB_AARCH64_PACKAGES[@]}"
cmake --preset aarch64
cmake --build --preset aarch64 -j2
ctest --preset aarch64 --output-on-failure -j2
