#!/usr/bin/env bash
# Quick start, part 1: installs the missing Debian packages (apt-get, as root or through sudo),
# builds the `demo` preset (Release; no tests, benchmarks or tools) and, of it, only the program
# the demo runs:
#   - the llama2.c Top-theta demo (scripts/demo_llama2c.sh, target toptheta-llama2c) when
#     stories260K.bin and tok512.bin are in the model directory (MODELS, see scripts/lib.sh),
#   - otherwise examples/02_calibrate_and_decode (synthetic data).
# Usage: ./scripts/demo.sh     (MODELS=<dir> looks for the llama2.c files elsewhere)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

for arg in "$@"; do
  case $arg in
    -h | --help) sed -n '2,8p' scripts/demo.sh | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo.sh: unknown argument '$arg' (usage: ./scripts/demo.sh; MODELS=<dir> in the environment)" >&2
       exit 2 ;;
  esac
done

toptheta_install_packages

MODELS=$TOPTHETA_MODELS
if [[ -f $MODELS/stories260K.bin && -f $MODELS/tok512.bin ]]; then
  target=toptheta-llama2c
else
  target=02_calibrate_and_decode
fi
bin=build/demo/bin

t0=$SECONDS
toptheta_log "Configuring and building $target (preset: demo)"
cmake --preset demo
cmake --build --preset demo -j2 --target "$target"
toptheta_log "Built $target in $((SECONDS - t0)) s"

t0=$SECONDS
if [[ $target == toptheta-llama2c ]]; then
  toptheta_log "Running the llama2.c demo (scripts/demo_llama2c.sh)"
  LLAMA2C_BIN=$bin/toptheta-llama2c WORK=build/demo/demo-llama2c MODELS=$MODELS \
    bash scripts/demo_llama2c.sh
else
  toptheta_log "Running $bin/$target (llama2.c models not found in $MODELS, see README.md)"
  "$bin/$target"
fi
toptheta_log "Demo ran in $((SECONDS - t0)) s"
