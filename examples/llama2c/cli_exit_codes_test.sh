#!/usr/bin/env bash
# ctest of toptheta-llama2c's exit statuses (registered by CMakeLists.txt here), on the small
# models of tests/data/llama2c (no shared model files needed):
#   0 success, 1 runtime failure (an output that cannot be written), 2 usage or input error.
# Every case also checks the one-line message on stderr.
# Usage: cli_exit_codes_test.sh BIN DATA_DIR WORK_DIR
set -uo pipefail
BIN=$1
DATA=$2
WORK=$3
rm -rf "$WORK"
mkdir -p "$WORK"
MIN=$DATA/min_model.bin      # dim 2, 1 layer, 1 head, vocab 4, context 4 (handed case)
TOK=$DATA/min_tok.bin        # its 4-token tokenizer, no byte pieces
TINY=$DATA/tiny_l2h2.bin     # 2 layers, 2 heads, vocab 8, context 32
failures=0

# expect CODE NEEDLE CMD...: runs CMD, checks its exit status and that stderr contains NEEDLE.
expect() {
  local code=$1 needle=$2
  shift 2
  "$@" >"$WORK/out.txt" 2>"$WORK/err.txt"
  local rc=$?
  if [[ $rc -ne $code ]]; then
    echo "FAIL: exit $rc, expected $code: $*" >&2
    sed 's/^/  stderr: /' "$WORK/err.txt" >&2
    failures=$((failures + 1))
  elif [[ -n $needle ]] && ! grep -qF -- "$needle" "$WORK/err.txt"; then
    echo "FAIL: stderr lacks '$needle': $*" >&2
    sed 's/^/  stderr: /' "$WORK/err.txt" >&2
    failures=$((failures + 1))
  fi
}

# ---- 0: success
expect 0 "" "$BIN" --help
expect 0 "" "$BIN" generate --help
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --prompt "é" --steps 1
grep -q "<unk>" "$WORK/out.txt" || { echo "FAIL: generate did not print <unk>" >&2; failures=$((failures + 1)); }
expect 0 "" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 --k 2 \
  --out "$WORK/tiny.thr" --save-tokens "$WORK/tiny.tok"
expect 0 "" "$BIN" eval --model "$TINY" --tokens "$WORK/tiny.tok" --attention toptheta \
  --thresholds "$WORK/tiny.thr" --vmc --json
expect 0 "" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention topk --k 2 \
  --layer-k 1:3
expect 0 "" "$BIN" calibrate --model "$MIN" --sample-sequences 1 --seq-len 4 --k 1 \
  --out "$WORK/min.thr"

# ---- 2: usage errors (CLI11 and the checks after parsing)
expect 2 "A subcommand is required" "$BIN"
expect 2 "bogus" "$BIN" eval --model "$TINY" --attention dense --bogus
expect 2 "--tokenizer is required" "$BIN" generate --model "$MIN"
expect 2 "--steps" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps -1
expect 2 "File does not exist" "$BIN" eval --model "$WORK/missing.bin" --attention dense
expect 2 "--layer-k" "$BIN" eval --model "$TINY" --attention topk --layer-k 0-3 --sample-sequences 1 --seq-len 8
expect 2 "--sample-fraction" "$BIN" calibrate --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 \
  --sample-fraction 0 --out "$WORK/x.thr"
expect 2 "give either --tokens FILE or --sample-sequences N" "$BIN" eval --model "$TINY" --attention dense
expect 2 "--attention dense takes no" "$BIN" eval --model "$TINY" --attention dense --vmc \
  --sample-sequences 1 --seq-len 8
expect 2 "needs --thresholds" "$BIN" eval --model "$TINY" --attention toptheta --sample-sequences 1 --seq-len 8
# KV cache storage: f16 / bf16 run on any head dim; q8_0 needs a multiple of 32 (tiny: 4).
expect 0 "" "$BIN" eval --model "$TINY" --tokens "$WORK/tiny.tok" --attention toptheta \
  --thresholds "$WORK/tiny.thr" --vmc --kv-cache f16 --json
expect 0 "" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 --k 2 \
  --out "$WORK/tiny_bf16.thr" --kv-cache bf16
expect 2 "needs a head dim that is a multiple of 32" "$BIN" eval --model "$TINY" \
  --tokens "$WORK/tiny.tok" --attention dense --kv-cache q8_0
expect 2 "needs a head dim that is a multiple of 32" "$BIN" calibrate --model "$TINY" \
  --sample-sequences 2 --seq-len 16 --k 2 --out "$WORK/tiny_q8.thr" --kv-cache q8_0
expect 2 "needs a head dim that is a multiple of 32" "$BIN" generate --model "$MIN" \
  --tokenizer "$TOK" --steps 1 --kv-cache q8_0
expect 2 "--kv-cache" "$BIN" eval --model "$TINY" --attention dense --kv-cache f8 \
  --sample-sequences 1 --seq-len 8

# ---- 2: input errors: model, tokenizer, token file, threshold file, shapes
expect 2 "llama2.c version 1 (float32)" "$BIN" eval --model "$DATA/v1_header_only.bin" \
  --attention dense --sample-sequences 1 --seq-len 8
expect 2 "truncated at token 4 of 8" "$BIN" generate --model "$TINY" --tokenizer "$TOK"  # 4 tokens
printf '1 2 3\n1 9\n' >"$WORK/bad.tok"
expect 2 "bad.tok:2: token id 9 outside the vocabulary" "$BIN" eval --model "$TINY" \
  --tokens "$WORK/bad.tok" --attention dense
printf '1 2 3 3 3\n' >"$WORK/long.tok"
expect 2 "sequence of 5 tokens (need 2..4)" "$BIN" eval --model "$MIN" --tokens "$WORK/long.tok" \
  --attention dense
printf 'not a threshold file\n' >"$WORK/garbage.thr"
expect 2 "garbage.thr" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention toptheta \
  --thresholds "$WORK/garbage.thr"
expect 2 "layers" "$BIN" eval --model "$MIN" --sample-sequences 1 --seq-len 4 \
  --attention toptheta --thresholds "$WORK/tiny.thr"  # table of 2 layers x 2 heads, model 1 x 1
expect 2 "no table for k = 4 (the file holds k = 2)" "$BIN" eval --model "$TINY" --sample-sequences 1 \
  --seq-len 8 --attention toptheta --thresholds "$WORK/tiny.thr" --k 4
expect 2 "was calibrated with k = 2" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 \
  --attention toptheta --thresholds "$WORK/tiny.thr" --layer-k 1:3
expect 2 "layer 5 outside [0, 2)" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 \
  --attention topk --layer-k 5:4
expect 2 "--seq-len 64 outside [2, 32]" "$BIN" eval --model "$TINY" --sample-sequences 1 \
  --seq-len 64 --attention dense
expect 2 "not more than k = 16" "$BIN" calibrate --model "$TINY" --sample-sequences 1 \
  --seq-len 8 --k 16 --out "$WORK/x.thr"
expect 2 "exceed the model's context of 4" "$BIN" generate --model "$MIN" --tokenizer "$TOK" \
  --prompt "     "

# ---- 1: runtime failures: outputs that cannot be written
expect 1 "--out" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 --k 2 \
  --out "$WORK/no/such/dir/t.thr"
expect 1 "--save-tokens" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention dense \
  --save-tokens "$WORK/no/such/dir/t.tok"
if [[ -w /dev/full ]]; then
  "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps 1 >/dev/full 2>"$WORK/err.txt"
  rc=$?
  if [[ $rc -ne 1 ]] || ! grep -q "cannot write to standard output" "$WORK/err.txt"; then
    echo "FAIL: generate >/dev/full exited $rc: $(cat "$WORK/err.txt")" >&2
    failures=$((failures + 1))
  fi
  "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention dense --json >/dev/full \
    2>"$WORK/err.txt"
  rc=$?
  [[ $rc -eq 1 ]] || { echo "FAIL: eval --json >/dev/full exited $rc" >&2; failures=$((failures + 1)); }
fi

if [[ $failures -ne 0 ]]; then
  echo "toptheta-llama2c exit status test: $failures failure(s)" >&2
  exit 1
fi
echo "toptheta-llama2c exit status test passed"
