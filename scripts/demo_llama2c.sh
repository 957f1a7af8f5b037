#!/usr/bin/env bash
# The real-model demo (run by scripts/demo.sh after the demo build when stories260K.bin and
# tok512.bin are in the model directory): Top-θ attention on karpathy's stories260K.
#   1. calibrate post-softmax thresholds at k = 16 on 32 sequences sampled from the dense model;
#   2. evaluate dense vs Top-θ (post-softmax + VMC, the library's recommended variant, see
#      docs/results.md) teacher-forced on 32 other sequences;
#   3. generate a story with Top-θ attention and print the fractions of attention elements kept
#      and of V rows read.
# Takes about 10 seconds.
#
# Environment: LLAMA2C_BIN [build/demo/bin/toptheta-llama2c, else build/release/bin/...],
#              MODELS [see scripts/lib.sh], WORK [<LLAMA2C_BIN>/../../demo-llama2c], K [16]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ -z ${LLAMA2C_BIN:-} ]]; then
  LLAMA2C_BIN=build/demo/bin/toptheta-llama2c
  [[ -x $LLAMA2C_BIN || ! -x build/release/bin/toptheta-llama2c ]] ||
    LLAMA2C_BIN=build/release/bin/toptheta-llama2c
fi
BIN=$LLAMA2C_BIN
MODELS=$TOPTHETA_MODELS
WORK=${WORK:-$(dirname "$(dirname "$BIN")")/demo-llama2c}
K=${K:-16}
MODEL=$MODELS/stories260K.bin
TOKENIZER=$MODELS/tok512.bin

[[ -x $BIN ]] || { echo "demo_llama2c.sh: $BIN not found; run scripts/demo.sh (or build the demo or release preset) first" >&2; exit 1; }
for f in "$MODEL" "$TOKENIZER"; do
  [[ -f $f ]] || {
    echo "demo_llama2c.sh: $f not found. Get stories260K.bin and tok512.bin from" \
      "https://huggingface.co/karpathy/tinyllamas (folder stories260K) into $MODELS" >&2
    exit 1
  }
done
mkdir -p "$WORK"
THRESHOLDS=$WORK/stories260K_post_k$K.thresholds

banner() {
  echo
  toptheta_log "$*"
}

banner "1. Calibrate post-softmax Top-θ thresholds, k = $K (32 sequences x 512 tokens, seed 1)"
"$BIN" calibrate --model "$MODEL" --sample-sequences 32 --seq-len 512 --seed 1 \
  --k "$K" --placement post --out "$THRESHOLDS"

banner "2. Dense vs Top-θ (post-softmax + VMC), teacher-forced on 32 held-out sequences (seed 2)"
"$BIN" eval --model "$MODEL" --sample-sequences 32 --seq-len 512 --seed 2 \
  --attention toptheta --thresholds "$THRESHOLDS" --vmc

banner "3. A story generated with Top-θ attention (decode kernel)"
"$BIN" generate --model "$MODEL" --tokenizer "$TOKENIZER" --prompt "Once upon a time" \
  --steps 400 --temperature 0.8 --seed 7 \
  --attention toptheta --thresholds "$THRESHOLDS" --vmc
