#!/usr/bin/env bash
# ctest smoke test of the toptheta-llama2c command line (registered by CMakeLists.txt here):
# --help documents every option, calibrate (both formats, SDC terms, per-layer k), eval --json
# keys, greedy generate, and clear errors. Exits 77 (ctest: skipped) without the model files.
# Usage: cli_smoke_test.sh BIN MODELS_DIR WORK_DIR
set -euo pipefail
BIN=$1
MODELS=$2
WORK=$3
M=$MODELS/stories260K.bin
T=$MODELS/tok512.bin
if [[ ! -f $M || ! -f $T ]]; then
  echo "SKIPPED: model files not found ($M, $T); see ../shared/models/README.md"
  exit 77
fi
rm -rf "$WORK"
mkdir -p "$WORK/ref"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$BIN" --help-all >"$WORK/help.txt"
for opt in --model --tokenizer --prompt --steps --temperature --seed --tokens --sample-sequences \
  --seq-len --k --layer-k --placement --sigma --tac --sample-fraction --sdc-terms --out --format \
  --attention --thresholds --sdc-file --sdc --sdc-scale --vmc --cap-k --empty-row --json \
  --kv-cache; do
  grep -q -- "$opt " "$WORK/help.txt" || fail "--help-all does not document $opt"
done

common=(--model "$M" --sample-sequences 3 --seq-len 96)
"$BIN" calibrate "${common[@]}" --seed 1 --k 8 --layer-k 0:16 --placement pre --sdc-terms \
  --out "$WORK/pre.txt" --save-tokens "$WORK/cal.tok"
"$BIN" calibrate --model "$M" --tokens "$WORK/cal.tok" --k 8 --placement pre --sdc-terms \
  --format reference --out "$WORK/ref/th.txt"
[[ -s $WORK/ref/th.txt && -s $WORK/ref/sdc.txt ]] || fail "reference format: th.txt/sdc.txt missing"
"$BIN" eval "${common[@]}" --seed 2 --attention toptheta --thresholds "$WORK/pre.txt" \
  --sdc calibrated --vmc --json >"$WORK/eval.json"
for key in perplexity dense_perplexity kl_mean top1_agreement attention_kept_fraction \
  vrows_read_fraction kept_per_row_mean empty_row_fraction extrapolated_row_fraction per_layer \
  kv_cache; do
  grep -q "\"$key\":" "$WORK/eval.json" || fail "--json lacks the key $key"
done
"$BIN" eval "${common[@]}" --seed 2 --attention toptheta --thresholds "$WORK/ref/th.txt" \
  --sdc-file "$WORK/ref/sdc.txt" --sdc calibrated --vmc >"$WORK/eval_ref.txt"
grep -q "perplexity:" "$WORK/eval_ref.txt" || fail "eval with the reference format printed no perplexity"
"$BIN" eval "${common[@]}" --seed 2 --attention topk --k 4 --placement post --vmc >/dev/null

"$BIN" generate --model "$M" --tokenizer "$T" --steps 31 --temperature 0 >"$WORK/gen.txt"
grep -q "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." \
  "$WORK/gen.txt" || fail "greedy generation differs: $(cat "$WORK/gen.txt")"
grep -q "V rows read" "$WORK/gen.txt" || fail "generate does not print the V rows read"

# Errors: exit status 2 (usage or input error) and a one-line message naming the problem
# (cli_exit_codes_test.sh covers every status on small models).
rc=0
"$BIN" eval "${common[@]}" --attention toptheta 2>"$WORK/err.txt" || rc=$?
[[ $rc -eq 2 ]] || fail "toptheta without thresholds: exit $rc, expected 2"
grep -q "needs --thresholds" "$WORK/err.txt" || fail "unexpected message: $(cat "$WORK/err.txt")"
head -c 1000 "$M" >"$WORK/cut.bin"
rc=0
"$BIN" eval --model "$WORK/cut.bin" --sample-sequences 1 --attention dense 2>"$WORK/err.txt" || rc=$?
[[ $rc -eq 2 ]] || fail "truncated checkpoint: exit $rc, expected 2"
grep -q "truncated" "$WORK/err.txt" || fail "unexpected message: $(cat "$WORK/err.txt")"
echo "toptheta-llama2c CLI smoke test passed"
