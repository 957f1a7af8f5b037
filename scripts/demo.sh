#!/usr/bin/env bash
# Quick start, part 1: installs the missing Debian packages (apt-get, as root or through sudo),
# builds the `release` preset and runs the demo:
#   - the llama2.c Top-theta demo (scripts/demo_llama2c.sh) when ../shared/models/stories260K.bin
#     is present,
#   - otherwise examples/02_calibrate_and_decode, or examples/01_dense_decode.
# Usage: ./scripts/demo.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

toptheta_install_packages

toptheta_log "Configuring and building (preset: release)"
cmake --preset release
cmake --build --preset release -j2

bin=build/release/bin
if [[ -f ../shared/models/stories260K.bin && -f scripts/demo_llama2c.sh ]]; then
  toptheta_log "Running the llama2.c demo (scripts/demo_llama2c.sh)"
  exec bash scripts/demo_llama2c.sh
elif [[ -x $bin/02_calibrate_and_decode ]]; then
  toptheta_log "Running $bin/02_calibrate_and_decode"
  exec "$bin/02_calibrate_and_decode"
elif [[ -x $bin/01_dense_decode ]]; then
  toptheta_log "Running $bin/01_dense_decode"
  exec "$bin/01_dense_decode"
else
  toptheta_die "no demo binary found in $bin (expected 02_calibrate_and_decode or 01_dense_decode)"
fi
