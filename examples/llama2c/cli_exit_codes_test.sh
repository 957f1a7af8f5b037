#!/usr/bin/env bash
# ctest of toptheta-llama2c's exit statuses (registered by CMakeLists.txt here), on the small
# models of tests/data/llama2c (no shared model files needed):
#   0 success, 1 runtime failure (an output that cannot be written), 2 usage or input error.
# Every case also checks the one-line message on stderr (which never prints DBL_MAX as a bound).
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
V1=$DATA/v1_header_only.bin  # fails to load: errors that name it were found before loading
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
  elif grep -qF "179769313486231" "$WORK/err.txt"; then  # CLI::Range's DBL_MAX as a bound
    echo "FAIL: stderr prints DBL_MAX: $*" >&2
    sed 's/^/  stderr: /' "$WORK/err.txt" >&2
    failures=$((failures + 1))
  fi
}

# reject NEEDLE: the stderr of the last expect lacks NEEDLE.
reject() {
  if grep -qF -- "$1" "$WORK/err.txt"; then
    echo "FAIL: stderr holds '$1'" >&2
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
# --per-length-out replaces every {k} of the name (only the first was).
expect 0 "" "$BIN" calibrate --model "$TINY" --tokens "$WORK/tiny.tok" --k 2,4 \
  --out "$WORK/multi.thr" --per-length-out "$WORK/pl_{k}_k{k}.txt"
for k in 2 4; do
  [[ -s $WORK/pl_${k}_k$k.txt ]] || { echo "FAIL: --per-length-out wrote no pl_${k}_k$k.txt: $(ls "$WORK")" >&2; failures=$((failures + 1)); }
done
expect 0 "" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention topk --k 2 \
  --layer-k 1:3
expect 0 "" "$BIN" calibrate --model "$MIN" --sample-sequences 1 --seq-len 4 --k 1 \
  --out "$WORK/min.thr"

# ---- 2: usage errors (CLI11 and the checks after parsing)
expect 2 "A subcommand is required" "$BIN"
expect 2 "bogus" "$BIN" eval --model "$TINY" --attention dense --bogus
expect 2 "--tokenizer is required" "$BIN" generate --model "$MIN"
expect 2 "--steps: '-1' is not an integer >= 0" "$BIN" generate --model "$MIN" --tokenizer "$TOK" \
  --steps -1
expect 2 "--steps: '99999999999' is not an integer from 0 to 2147483647" "$BIN" generate \
  --model "$MIN" --tokenizer "$TOK" --steps 99999999999
expect 2 "--seed: '-1' is not an integer >= 0" "$BIN" generate --model "$MIN" --tokenizer "$TOK" \
  --seed -1
# Beyond 64 bits: strtoull / strtoll saturate, and the value was taken as the type's maximum.
expect 2 "--seed: '18446744073709551616' is not an integer from 0 to 18446744073709551615" "$BIN" \
  generate --model "$MIN" --tokenizer "$TOK" --seed 18446744073709551616
expect 2 "--seed: '99999999999999999999' is not an integer from 0 to 18446744073709551615" "$BIN" \
  eval --model "$V1" --sample-sequences 1 --seed 99999999999999999999 --attention dense
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps 1 --seed 18446744073709551615
expect 2 "--k: '99999999999999999999' is not an integer from 1 to 9223372036854775807" "$BIN" eval \
  --model "$V1" --sample-sequences 1 --attention topk --k 99999999999999999999
expect 2 "--cap-k: '9223372036854775808' is not an integer from 0 to 9223372036854775807" "$BIN" \
  eval --model "$V1" --sample-sequences 1 --attention topk --cap-k 9223372036854775808
expect 2 "--min-bucket-samples: '18446744073709551616' is not an integer from 1 to" "$BIN" calibrate \
  --model "$V1" --sample-sequences 1 --k 2 --min-bucket-samples 18446744073709551616 --out "$WORK/x.thr"
expect 2 "--layer-k: k 99999999999999999999 is too large" "$BIN" eval --model "$V1" \
  --sample-sequences 1 --attention topk --layer-k 0:99999999999999999999
expect 2 "--layer-k: layer 99999999999999999999 is too large" "$BIN" eval --model "$V1" \
  --sample-sequences 1 --attention topk --layer-k 99999999999999999999:4
expect 2 "--sample-sequences: '0' is not an integer >= 1" "$BIN" eval --model "$TINY" \
  --sample-sequences 0 --attention dense
expect 2 "--seq-len: '1' is not an integer from 2 to 1048576" "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 1 --attention dense
expect 2 "--k: '0' is not an integer >= 1" "$BIN" eval --model "$TINY" --sample-sequences 1 \
  --seq-len 8 --attention topk --k 0
expect 2 "--cap-k: '-1' is not an integer >= 0" "$BIN" eval --model "$TINY" --sample-sequences 1 \
  --seq-len 8 --attention topk --cap-k -1
expect 2 "--buckets-per-octave: '17' is not an integer from 1 to 16" "$BIN" calibrate \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 --buckets-per-octave 17 --out "$WORK/x.thr"
# Integers are decimal (CLI11 alone read 017 as octal 15 and 0x10 as 16, both accepted here).
expect 2 "--buckets-per-octave: '017' is not an integer from 1 to 16" "$BIN" calibrate \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 --buckets-per-octave 017 --out "$WORK/x.thr"
expect 2 "--buckets-per-octave: '0x10' is not an integer from 1 to 16" "$BIN" calibrate \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 --buckets-per-octave 0x10 --out "$WORK/x.thr"
expect 2 "--seq-len: '01' is not an integer from 2 to 1048576" "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 01
# --sdc-scale scales an SDC term: without --sdc there is none, and the value went unused.
expect 2 "--sdc-scale scales the SDC term, and there is none without --sdc" "$BIN" eval \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --attention topk --k 2 --sdc-scale 0.5
expect 2 "--sdc-scale scales the SDC term, and there is none without --sdc" "$BIN" generate \
  --model "$MIN" --tokenizer "$TOK" --steps 1 --sdc-scale 2
expect 2 "--k: budget k 4 given twice" "$BIN" calibrate --model "$TINY" --sample-sequences 1 \
  --seq-len 8 --k 4,4 --out "$WORK/x.thr"
printf 'd --attention dense\n' >"$WORK/grid_dense.txt"
expect 2 "--length-edges: length edge 16 given twice" "$BIN" eval-grid --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --grid "$WORK/grid_dense.txt" --length-edges 8,16,16
expect 2 "--length-edges: '0' is not a length edge (an integer >= 1)" "$BIN" eval-grid \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --grid "$WORK/grid_dense.txt" --length-edges 0
# Real options: finite numbers in their documented ranges (NaN passed CLI::NonNegativeNumber).
expect 2 "--temperature: 'nan' is not a finite number >= 0" "$BIN" generate --model "$MIN" \
  --tokenizer "$TOK" --steps 1 --temperature nan
expect 2 "--temperature: 'inf' is not a finite number >= 0" "$BIN" generate --model "$MIN" \
  --tokenizer "$TOK" --steps 1 --temperature inf
expect 2 "--temperature: '-0.5' is not a finite number >= 0" "$BIN" generate --model "$MIN" \
  --tokenizer "$TOK" --steps 1 --temperature -0.5
# Options the runner narrows to float (the sampler's temperature, the kernels' SDC scale) are
# checked in float's range: 1e39 passed as a double, then became inf (exit 1 after loading).
expect 2 "--temperature: '1e39' is not a finite number in [0, 3.40282347e+38]" "$BIN" generate \
  --model "$MIN" --tokenizer "$TOK" --steps 1 --temperature 1e39
expect 2 "--temperature: '1e308' is not a finite number in [0, 3.40282347e+38]" "$BIN" generate \
  --model "$MIN" --tokenizer "$TOK" --steps 1 --temperature 1e308
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps 1 --temperature 3e38
expect 2 "--sdc-scale: '1e39' is not a finite number in [0, 3.40282347e+38]" "$BIN" eval \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --attention topk --k 2 --sdc exact --sdc-scale 1e39
expect 2 "--sdc-scale: 'nan' is not a finite number >= 0" "$BIN" generate --model "$MIN" \
  --tokenizer "$TOK" --steps 1 --attention topk --sdc exact --sdc-scale nan
expect 2 "--sdc-scale: 'nan' is not a finite number >= 0" "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --attention topk --k 2 --sdc exact --sdc-scale nan
expect 2 "--sdc-scale: '-inf' is not a finite number >= 0" "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --attention topk --k 2 --sdc exact --sdc-scale -inf
expect 2 "--sigma: 'nan' is not a finite number >= 0" "$BIN" calibrate --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --k 2 --sigma nan --out "$WORK/x.thr"
expect 2 "--sigma: '-1' is not a finite number >= 0" "$BIN" calibrate --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --k 2 --sigma -1 --out "$WORK/x.thr"
expect 2 "--sample-fraction: 'nan' is not a finite number in (0, 1]" "$BIN" calibrate \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 --sample-fraction nan --out "$WORK/x.thr"
expect 2 "--sample-fraction: '1.5' is not a finite number in (0, 1]" "$BIN" calibrate \
  --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 --sample-fraction 1.5 --out "$WORK/x.thr"
expect 2 "File does not exist" "$BIN" eval --model "$WORK/missing.bin" --attention dense
expect 2 "--layer-k" "$BIN" eval --model "$TINY" --attention topk --layer-k 0-3 --sample-sequences 1 --seq-len 8
expect 2 "--sample-fraction" "$BIN" calibrate --model "$TINY" --sample-sequences 1 --seq-len 8 --k 2 \
  --sample-fraction 0 --out "$WORK/x.thr"
expect 2 "give either --tokens FILE or --sample-sequences N" "$BIN" eval --model "$TINY" --attention dense
expect 2 "--attention dense takes no" "$BIN" eval --model "$TINY" --attention dense --vmc \
  --sample-sequences 1 --seq-len 8
expect 2 "needs --thresholds" "$BIN" eval --model "$TINY" --attention toptheta --sample-sequences 1 --seq-len 8
# Flags the kernels reject together: exit 2 before the model loads (V1 would fail to load), not
# exit 1 from the kernel.
expect 2 "--sdc calibrated needs the SDC terms of a threshold file" "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --attention topk --k 8 --sdc calibrated
expect 2 "--sdc calibrated needs the SDC terms of a threshold file" "$BIN" eval --model "$V1" \
  --sample-sequences 1 --seq-len 8 --attention topk --k 8 --sdc calibrated --placement pre
expect 2 "--sdc calibrated needs the SDC terms of a threshold file" "$BIN" generate --model "$V1" \
  --tokenizer "$TOK" --attention topk --sdc calibrated
# Post-softmax rows have no softmax denominator to compensate: --sdc (any mode but none),
# --sdc-file and calibrate's --sdc-terms are refused with them, before the model loads (they
# were ignored: same perplexity with and without --sdc). tiny.thr holds post-softmax thresholds.
expect 2 "--sdc calibrated compensates the softmax denominator of pre-softmax rows; --placement post" \
  "$BIN" eval --model "$V1" --sample-sequences 1 --seq-len 8 --attention topk --k 2 \
  --sdc calibrated --placement post
expect 2 "--sdc exact compensates the softmax denominator of pre-softmax rows; --placement post" \
  "$BIN" eval --model "$V1" --sample-sequences 1 --attention topk --k 2 --placement post --sdc exact
expect 2 "--sdc exp-threshold compensates the softmax denominator of pre-softmax rows; --placement post" \
  "$BIN" generate --model "$V1" --tokenizer "$TOK" --attention topk --placement post --sdc exp-threshold
expect 2 "--sdc exact compensates the softmax denominator of pre-softmax rows; --thresholds '$WORK/tiny.thr' holds post-softmax" \
  "$BIN" eval --model "$V1" --sample-sequences 1 --attention toptheta --thresholds "$WORK/tiny.thr" \
  --k 2 --sdc exact
expect 2 "--sdc calibrated compensates the softmax denominator of pre-softmax rows; --thresholds" \
  "$BIN" eval --model "$V1" --sample-sequences 1 --attention toptheta --thresholds "$WORK/tiny.thr" \
  --sdc calibrated
expect 2 "--sdc-file: SDC terms compensate the softmax denominator of pre-softmax rows; --placement post" \
  "$BIN" eval --model "$V1" --sample-sequences 1 --attention toptheta --thresholds "$WORK/tiny.thr" \
  --sdc-file "$WORK/tiny.thr" --placement post
expect 2 "--sdc-terms: SDC terms compensate the softmax denominator of pre-softmax rows; --placement post" \
  "$BIN" calibrate --model "$V1" --sample-sequences 1 --k 2 --sdc-terms --out "$WORK/x.thr"
printf 'ok --attention topk --k 2\npost --attention toptheta --thresholds %s --sdc exact\n' \
  "$WORK/tiny.thr" >"$WORK/grid_post_sdc.txt"
expect 2 "grid_post_sdc.txt:2: --sdc exact compensates the softmax denominator" "$BIN" eval-grid \
  --model "$V1" --sample-sequences 1 --grid "$WORK/grid_post_sdc.txt"
expect 0 "" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention topk --k 2 \
  --placement pre --sdc exact
expect 2 "--attention dense takes no" "$BIN" eval --model "$V1" --attention dense --vmc \
  --sample-sequences 1 --seq-len 8
expect 2 "needs --thresholds" "$BIN" eval --model "$V1" --attention toptheta --sample-sequences 1
expect 2 "--thresholds and --sdc-file are for --attention toptheta" "$BIN" eval --model "$V1" \
  --attention topk --thresholds "$WORK/tiny.thr" --sample-sequences 1
expect 2 "give either --tokens FILE or --sample-sequences N" "$BIN" eval --model "$V1" --attention dense
# Flags a mode has no use for are refused, not silently ignored (dense ran with --k 4 as plain
# dense, exit 0).
for flag in "--k 4" "--cap-k 4" "--placement post" "--empty-row mean-v" "--lookup linear"; do
  # shellcheck disable=SC2086
  expect 2 "--attention dense takes no --k, --cap-k, --placement, --empty-row or --lookup" \
    "$BIN" eval --model "$V1" --attention dense $flag --sample-sequences 1
done
for flag in "--empty-row mean-v" "--lookup linear"; do
  # shellcheck disable=SC2086
  expect 2 "--empty-row and --lookup are for --attention toptheta" "$BIN" eval --model "$V1" \
    --attention topk --k 2 $flag --sample-sequences 1
done
expect 2 "--layer-k needs a single --k" "$BIN" calibrate --model "$V1" --sample-sequences 1 --k 2,4 \
  --layer-k 0:3 --out "$WORK/x.thr"
printf 'a --attention topk --k 2 --sdc calibrated\n' >"$WORK/grid_sdc.txt"
expect 2 "grid_sdc.txt:1: --sdc calibrated needs" "$BIN" eval-grid --model "$V1" --sample-sequences 1 \
  --grid "$WORK/grid_sdc.txt"
printf '# setups\nb --attention topk --k 2 --sdc exact --sdc-scale nan\n' >"$WORK/grid_nan.txt"
expect 2 "grid_nan.txt:2: --sdc-scale: 'nan' is not a finite number >= 0" "$BIN" eval-grid \
  --model "$V1" --sample-sequences 1 --grid "$WORK/grid_nan.txt"
# eval-grid setup names are the keys of its output: a name given twice is refused before the
# model loads, naming the first line (two JSON objects of the same name came out).
printf 'tk8 --attention topk --k 2\n# comment\ntk8 --attention dense\n' >"$WORK/grid_dup.txt"
expect 2 "grid_dup.txt:3: setup name 'tk8' given twice (first on line 1)" "$BIN" eval-grid \
  --model "$V1" --sample-sequences 1 --grid "$WORK/grid_dup.txt"
# TOPTHETA_ISA is checked once at start-up, before anything loads (V1 would fail to load), with
# the library's message (was exit 1 from the first kernel call, after the model and the dense
# pass).
expect 2 "TOPTHETA_ISA='AVX2' is not one of auto|scalar|avx2|avx512|neon" env TOPTHETA_ISA=AVX2 \
  "$BIN" eval --model "$V1" --sample-sequences 1 --attention dense
expect 2 "TOPTHETA_ISA=' avx2' is not one of" env "TOPTHETA_ISA= avx2" "$BIN" generate \
  --model "$V1" --tokenizer "$TOK"
expect 2 "TOPTHETA_ISA='sse' is not one of" env TOPTHETA_ISA=sse "$BIN" calibrate --model "$V1" \
  --sample-sequences 1 --k 2 --out "$WORK/x.thr"
if [[ $(uname -m) == x86_64 ]]; then
  expect 2 "TOPTHETA_ISA: failed precondition: the neon path is not compiled in this build" \
    env TOPTHETA_ISA=neon "$BIN" eval-grid --model "$V1" --sample-sequences 1 \
    --grid "$WORK/grid_dense.txt"
fi
expect 0 "" env TOPTHETA_ISA=scalar "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps 1
expect 0 "" env TOPTHETA_ISA=AVX2 "$BIN" --help
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
# Lines of nothing but whitespace (any of std::isspace's characters) are blank; a form feed or a
# vertical tab alone used to crash the reader.
printf '\f\n1 2 3\n\v\n \t\r\n\f\v\n1\v2\f3\t4\r\n' >"$WORK/blank.tok"
expect 0 "" "$BIN" eval --model "$TINY" --tokens "$WORK/blank.tok" --attention topk --k 4
expect 0 "" "$BIN" eval --model "$TINY" --tokens "$WORK/blank.tok" --attention dense --json
grep -q '"perplexity"' "$WORK/out.txt" || { echo "FAIL: eval of blank.tok printed no JSON" >&2; failures=$((failures + 1)); }
printf '\v\n\f\n1 2\n' >"$WORK/blank_prompt.tok"
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --prompt-tokens "$WORK/blank_prompt.tok" \
  --steps 1
printf 'a --attention topk --k 2\r\n\f\n\v\r\n \t\n\f# comment\nb --attention dense\n' >"$WORK/blank_grid.txt"
expect 0 "" "$BIN" eval-grid --model "$TINY" --tokens "$WORK/blank.tok" --grid "$WORK/blank_grid.txt"
[[ $(grep -c '"name"' "$WORK/out.txt") -eq 2 ]] || { echo "FAIL: eval-grid of blank_grid.txt: $(cat "$WORK/out.txt")" >&2; failures=$((failures + 1)); }
printf '\f\n\v\n \r\n' >"$WORK/only_blank.tok"
expect 2 "only_blank.tok' holds no sequence" "$BIN" eval --model "$TINY" --tokens "$WORK/only_blank.tok" \
  --attention dense
expect 2 "holds no sequence" "$BIN" generate --model "$MIN" --tokenizer "$TOK" \
  --prompt-tokens "$WORK/only_blank.tok"
printf '1 2\0 3\n' >"$WORK/nul.tok"
expect 2 "nul.tok:1: '2\x00' is not an integer token id" "$BIN" eval --model "$TINY" \
  --tokens "$WORK/nul.tok" --attention dense
# Endless input (/dev/zero has no newline) is refused after one read, not read into memory until
# the machine runs out (the token file, the grid and the tokenizer were read whole).
expect 2 "/dev/zero:1: '\x00\x00" "$BIN" eval --model "$TINY" --tokens /dev/zero --attention dense
expect 2 "... (65536 bytes)' is not an integer token id" "$BIN" eval --model "$TINY" \
  --tokens /dev/zero --attention dense
expect 2 "--grid /dev/zero:1: binary data: NUL byte at column 1" "$BIN" eval-grid --model "$TINY" \
  --tokens "$WORK/blank.tok" --grid /dev/zero
expect 2 "tokenizer: /dev/zero: file is larger than 67108864 bytes" "$BIN" generate --model "$MIN" \
  --tokenizer /dev/zero --steps 1
printf '1 6x\n' >"$WORK/junk.tok"  # a malformed input file is an invalid argument, not data loss
expect 2 "invalid argument: $WORK/junk.tok:1: '6x' is not an integer token id" "$BIN" eval \
  --model "$TINY" --tokens "$WORK/junk.tok" --attention dense
printf '1 2 3 3 3\n' >"$WORK/long.tok"
expect 2 "sequence of 5 tokens exceeds the model's context of 4" "$BIN" eval --model "$MIN" --tokens "$WORK/long.tok" \
  --attention dense
# --prompt-length cuts a prompt line longer than the context before its length is checked;
# without it (or still too long) the line is refused.
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --prompt-tokens "$WORK/long.tok" \
  --prompt-length 3 --steps 1 --no-stop
grep -q "tokens: 4 (prompt 3)" "$WORK/out.txt" || { echo "FAIL: --prompt-length 3: $(cat "$WORK/out.txt")" >&2; failures=$((failures + 1)); }
expect 2 "sequence of 5 tokens exceeds the model's context of 4" "$BIN" generate --model "$MIN" --tokenizer "$TOK" \
  --prompt-tokens "$WORK/long.tok" --steps 1
expect 2 "--prompt-tokens: 5 tokens (BOS included; --prompt-length 5) exceed the model's context of 4" \
  "$BIN" generate --model "$MIN" --tokenizer "$TOK" --prompt-tokens "$WORK/long.tok" \
  --prompt-length 5 --steps 1
# A prompt that fills the context leaves no room: generation stops there (the output had
# context + 1 tokens).
printf '1 2 3 3\n' >"$WORK/full.tok"
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --prompt-tokens "$WORK/full.tok" \
  --steps 3 --no-stop
grep -q "tokens: 4 (prompt 4)" "$WORK/out.txt" || { echo "FAIL: full prompt: $(cat "$WORK/out.txt")" >&2; failures=$((failures + 1)); }
expect 0 "" "$BIN" generate --model "$MIN" --tokenizer "$TOK" --steps 9 --no-stop
grep -q "tokens: 4 (prompt 1)" "$WORK/out.txt" || { echo "FAIL: --steps 9: $(cat "$WORK/out.txt")" >&2; failures=$((failures + 1)); }
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
# --min-bucket-samples that no bucket reaches: every non-empty bucket gets a knot (the fit's
# fallback), and the warning says so (it said "no knot of their own").
expect 0 "every non-empty length bucket got a knot" "$BIN" calibrate --model "$TINY" \
  --sample-sequences 2 --seq-len 16 --k 2 --min-bucket-samples 100000 --out "$WORK/x.thr"
reject "no knot of their own"
# --sigma whose thresholds do not fit a float (they were clamped to FLT_MAX, or written as
# doubles that the kernels read as inf: every row empty).
expect 2 "--sigma 1e+308: the threshold of layer 0 head 0" "$BIN" calibrate --model "$TINY" \
  --sample-sequences 2 --seq-len 16 --k 2 --sigma 1e308 --out "$WORK/x.thr"
expect 2 "does not fit a float" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 \
  --k 2 --sigma 1e300 --form per-length --out "$WORK/x.thr"
expect 2 "does not fit a float" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 \
  --k 2 --sigma 1e39 --placement pre --out "$WORK/x.thr"

# ---- 1: runtime failures: outputs that cannot be written
expect 1 "--out" "$BIN" calibrate --model "$TINY" --sample-sequences 2 --seq-len 16 --k 2 \
  --out "$WORK/no/such/dir/t.thr"
expect 1 "--save-tokens" "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention dense \
  --save-tokens "$WORK/no/such/dir/t.tok"
# --save-tokens and --report are written atomically like --out: a FIFO is refused (exit 1, not a
# write that blocks until a reader comes), and a failed write leaves an old file as it was.
mkfifo "$WORK/fifo"
expect 1 "is a FIFO (named pipe), not a regular file" timeout 60 "$BIN" eval --model "$TINY" \
  --sample-sequences 1 --seq-len 8 --attention dense --save-tokens "$WORK/fifo"
expect 1 "--report: i/o error: $WORK/fifo: is a FIFO" timeout 60 "$BIN" calibrate --model "$TINY" \
  --sample-sequences 2 --seq-len 16 --k 2 --out "$WORK/rep.thr" --report "$WORK/fifo"
mkdir -p "$WORK/fsize_tok"
echo old >"$WORK/fsize_tok/t.tok"
expect 1 "File too large" bash -c 'set -o pipefail; (ulimit -f 0 && exec "$@") 2>&1 >/dev/null | cat >&2' \
  _ "$BIN" eval --model "$TINY" --sample-sequences 1 --seq-len 8 --attention dense \
  --save-tokens "$WORK/fsize_tok/t.tok"
[[ $(cat "$WORK/fsize_tok/t.tok") == old && $(ls "$WORK/fsize_tok") == t.tok ]] ||
  { echo "FAIL: --save-tokens under a 0-byte file size limit changed the old file" >&2; failures=$((failures + 1)); }
# A file size limit of 0 bytes: exit 1 with "File too large", the old file intact and no
# temporary file left (SIGXFSZ used to kill the process mid-write, exit 153). The limit holds in
# a subshell whose stderr goes through a pipe (err.txt, a file, would be limited too).
mkdir -p "$WORK/fsize"
echo old >"$WORK/fsize/t.thr"
expect 1 "File too large" bash -c 'set -o pipefail; (ulimit -f 0 && exec "$@") 2>&1 >/dev/null | cat >&2' \
  _ "$BIN" calibrate --model "$TINY" \
  --sample-sequences 2 --seq-len 16 --k 2 --out "$WORK/fsize/t.thr"
[[ $(cat "$WORK/fsize/t.thr") == old && $(ls "$WORK/fsize") == t.thr ]] ||
  { echo "FAIL: ulimit -f: $(ls "$WORK/fsize")" >&2; failures=$((failures + 1)); }
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
  for help in --help --help-all "eval --help" "eval-grid --help"; do
    # shellcheck disable=SC2086  # "eval --help": two arguments
    "$BIN" $help >/dev/full 2>"$WORK/err.txt"
    rc=$?
    if [[ $rc -ne 1 ]] || ! grep -q "cannot write to standard output" "$WORK/err.txt"; then
      echo "FAIL: $help >/dev/full exited $rc: $(cat "$WORK/err.txt")" >&2
      failures=$((failures + 1))
    fi
  done
fi

if [[ $failures -ne 0 ]]; then
  echo "toptheta-llama2c exit status test: $failures failure(s)" >&2
  exit 1
fi
echo "toptheta-llama2c exit status test passed"
