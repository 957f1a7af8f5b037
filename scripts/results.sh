#!/usr/bin/env bash
# Regenerates the real-model accuracy report: the generated section of docs/results.md (between
# the BEGIN/END GENERATED markers; the hand-written text around it is kept) and its plots
# docs/img/results_*.png, from runs of toptheta-llama2c on two models:
#
#   code28M    (code28M.bin: 8 layers, 4 query heads of head dim 128 over one
#               KV head, context 4096) on its token files: calibration on the first 4, 8 or 32
#               sequences of code28M_calib_2048.txt (2048 tokens each), evaluation teacher-forced
#               on code28M_heldout_2048.txt and code28M_heldout_4096.txt (16 sequences each; the
#               4096-token evaluation uses thresholds calibrated only on <= 2048-token sequences);
#   stories260K (stories260K.bin: 5 layers, 8 query heads, head dim 8, context
#               512) on sequences sampled from the dense model (calibration seed 1, held-out
#               seed 2, 64 x 512 tokens).
#
# For each model and calibration size: one calibration pass per placement gives the compact tables
# of every k in one file and the per-length tables (--per-length-out). Each evaluation set runs
# once through toptheta-llama2c eval-grid (one dense pass shared by every setup), with kept counts
# per row-length bucket. Then decode speed on code28M from a 4000-token prompt (dense and Top-theta
# in one generate --compare-dense run), and the size of a 32-layer x 32-head table calibrated to
# 32k tokens (toptheta-thresholds synth).
#
# Usage: scripts/results.sh [--quick]
#   --quick: 2 held-out sequences per set, k in {32, 64} (stories: {8, 16}), calibration sizes
#            {4, 8}: a check of the pipeline in a few minutes, written to build/results/quick
#            (report: build/results/quick/results.md; docs/ is untouched).
# Needs: a release build (build/release/bin/toptheta-llama2c and toptheta-thresholds, or
# LLAMA2C_BIN / THRESHOLDS_BIN), the model files in the model directory (MODELS, see
# scripts/lib.sh: code28M.bin, tok8192.bin, the three code28M_*.txt token files, stories260K.bin),
# python3, gnuplot
# (Debian: gnuplot-nox). Every run is single-threaded and sequential (a shared machine): about
# 75 minutes on one core.
#
# Environment: MODELS [see scripts/lib.sh]  WORK [build/results/full]  RESUME [1]: reuse the results
# already in WORK (delete WORK to start over).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

QUICK=0
for arg in "$@"; do
  case $arg in
    --quick) QUICK=1 ;;
    -h | --help) sed -n '2,34p' scripts/results.sh | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "results.sh: unknown argument '$arg' (usage: scripts/results.sh [--quick])" >&2; exit 2 ;;
  esac
done
MODELS=$TOPTHETA_MODELS
BIN_SRC=${LLAMA2C_BIN:-build/release/bin/toptheta-llama2c}
THR_SRC=${THRESHOLDS_BIN:-build/release/bin/toptheta-thresholds}
if [[ $QUICK == 1 ]]; then
  WORK=${WORK:-build/results/quick}
  N_EVAL=2
  K_LIST="32 64"
  S_K_LIST="8 16"
  CAL_COUNTS="4 8"
  S_N=16
  OUT_MD=$WORK/results.md
  IMG=$WORK/img
else
  WORK=${WORK:-build/results/full}
  N_EVAL=16
  K_LIST="32 64 128 256"
  S_K_LIST="8 16 32 64"
  CAL_COUNTS="4 8 32"
  S_N=64
  OUT_MD=docs/results.md
  IMG=docs/img
fi
MAIN_CAL=8
RESUME=${RESUME:-1}

die() { echo "results.sh: $*" >&2; exit 1; }
[[ -x $BIN_SRC ]] || die "$BIN_SRC not found: build the release preset first (cmake --preset release && cmake --build --preset release)"
[[ -x $THR_SRC ]] || die "$THR_SRC not found (release preset, TOPTHETA_BUILD_TOOLS=ON)"
for f in code28M.bin tok8192.bin code28M_calib_2048.txt code28M_heldout_2048.txt code28M_heldout_4096.txt stories260K.bin; do
  [[ -f $MODELS/$f ]] || die "$MODELS/$f not found (set MODELS to the directory of the model files)"
done
command -v python3 >/dev/null || die "python3 is required"
command -v gnuplot >/dev/null || die "gnuplot is required (Debian: apt-get install gnuplot-nox)"

mkdir -p "$WORK"/{bin,tok,th,json,log} "$IMG"
# Private copies: rebuilding the project during a run does not change the binaries it uses.
cp "$BIN_SRC" "$WORK/bin/toptheta-llama2c"
BIN=$WORK/bin/toptheta-llama2c
THR=$WORK/bin/toptheta-thresholds
T0=$SECONDS
log() { printf '[%5ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
have() { [[ $RESUME == 1 && -s $1 ]]; }
csv() { echo "${1// /,}"; }
# Row-length buckets of the reports: 2 per octave, (floor(2^(j/2)), floor(2^((j+1)/2))].
EDGES=$(python3 -c 'import math; print(",".join(str(int(math.floor(2 ** (j / 2) + 1e-9))) for j in range(5, 25)))')

# ---------------------------------------------------------------- code28M
C_MODEL=$MODELS/code28M.bin
for n in $CAL_COUNTS; do head -n "$n" "$MODELS/code28M_calib_2048.txt" >"$WORK/tok/c_cal$n.tok"; done
head -n "$N_EVAL" "$MODELS/code28M_heldout_2048.txt" >"$WORK/tok/c_eval2048.tok"
head -n "$N_EVAL" "$MODELS/code28M_heldout_4096.txt" >"$WORK/tok/c_eval4096.tok"

calibrate() {  # calibrate PREFIX MODEL TOKENS PLACEMENT KLIST [SIGMA]
  local prefix=$1 model=$2 tok=$3 placement=$4 ks=$5 sigma=${6:-0.1}
  have "$WORK/th/$prefix.toptheta" && return 0
  log "calibrating $prefix ($placement-softmax, k $ks, sigma $sigma)"
  "$BIN" calibrate --model "$model" --tokens "$tok" --k "$(csv "$ks")" --placement "$placement" \
    --sigma "$sigma" --tac on --threads 1 --out "$WORK/th/$prefix.toptheta" \
    --per-length-out "$WORK/th/${prefix}_pl_k{k}.txt" --report "$WORK/json/$prefix.report.json" \
    >"$WORK/log/$prefix.log" 2>"$WORK/log/$prefix.err" || die "calibration $prefix failed: $(tail -3 "$WORK/log/$prefix.err")"
}
for n in $CAL_COUNTS; do calibrate "c_post_n$n" "$C_MODEL" "$WORK/tok/c_cal$n.tok" post "$K_LIST"; done
calibrate "c_pre_n$MAIN_CAL" "$C_MODEL" "$WORK/tok/c_cal$MAIN_CAL.tok" pre "$K_LIST"
# lambda = 0 (theta = the fitted mean of tau): the kept count of the compact tables against k.
calibrate "c_post0_n$MAIN_CAL" "$C_MODEL" "$WORK/tok/c_cal$MAIN_CAL.tok" post "$K_LIST" 0

# grid_lines PREFIX KLIST FULL: the setups (name flags) of one model; FULL=0 drops the per-length
# tables of the non-main calibration sizes.
grid_lines() {
  local p=$1 ks=$2 full=$3 k n
  for k in $ks; do
    echo "topk_k$k --attention topk --k $k"
    for n in $CAL_COUNTS; do
      echo "post_compact_n${n}_k$k --attention toptheta --thresholds $WORK/th/${p}_post_n$n.toptheta --k $k --vmc"
      if [[ $full == 1 || $n == "$MAIN_CAL" ]]; then
        echo "post_perlen_n${n}_k$k --attention toptheta --thresholds $WORK/th/${p}_post_n${n}_pl_k$k.txt --k $k --vmc"
      fi
    done
    echo "pre_compact_n${MAIN_CAL}_k$k --attention toptheta --thresholds $WORK/th/${p}_pre_n$MAIN_CAL.toptheta --k $k --sdc exact --vmc"
    echo "pre_perlen_n${MAIN_CAL}_k$k --attention toptheta --thresholds $WORK/th/${p}_pre_n${MAIN_CAL}_pl_k$k.txt --k $k --sdc exact --vmc"
    if [[ $p == c ]]; then
      echo "post0_compact_n${MAIN_CAL}_k$k --attention toptheta --thresholds $WORK/th/${p}_post0_n$MAIN_CAL.toptheta --k $k --vmc"
      echo "post0_perlen_n${MAIN_CAL}_k$k --attention toptheta --thresholds $WORK/th/${p}_post0_n${MAIN_CAL}_pl_k$k.txt --k $k --vmc"
    fi
  done
}
evaluate() {  # evaluate NAME MODEL TOKENS GRIDFILE
  local name=$1 model=$2 tok=$3 grid=$4
  have "$WORK/json/$name.jsonl" && return 0
  log "evaluating $name: $(grep -c . "$grid") setups on $(grep -c . "$tok") sequences"
  "$BIN" eval-grid --model "$model" --tokens "$tok" --grid "$grid" --length-edges "$EDGES" \
    --threads 1 >"$WORK/json/$name.tmp" 2>"$WORK/log/$name.err" || die "evaluation $name failed: $(tail -3 "$WORK/log/$name.err")"
  mv "$WORK/json/$name.tmp" "$WORK/json/$name.jsonl"
}
grid_lines c "$K_LIST" 1 >"$WORK/c_grid2048.txt"
grid_lines c "$K_LIST" 0 >"$WORK/c_grid4096.txt"
evaluate c_eval2048 "$C_MODEL" "$WORK/tok/c_eval2048.tok" "$WORK/c_grid2048.txt"
evaluate c_eval4096 "$C_MODEL" "$WORK/tok/c_eval4096.tok" "$WORK/c_grid4096.txt"

# ---------------------------------------------------------------- stories260K
S_MODEL=$MODELS/stories260K.bin
if ! have "$WORK/json/s_dense_cal.json" || ! have "$WORK/json/s_dense_eval.json"; then
  log "stories260K: sampling $S_N calibration (seed 1) and $S_N held-out (seed 2) sequences"
  "$BIN" eval --model "$S_MODEL" --sample-sequences "$S_N" --seq-len 512 --seed 1 --attention dense \
    --json --save-tokens "$WORK/tok/s_cal.tok" >"$WORK/json/s_dense_cal.json"
  "$BIN" eval --model "$S_MODEL" --sample-sequences "$S_N" --seq-len 512 --seed 2 --attention dense \
    --json --save-tokens "$WORK/tok/s_eval.tok" >"$WORK/json/s_dense_eval.json"
fi
cmp -s "$WORK/tok/s_cal.tok" "$WORK/tok/s_eval.tok" && die "stories calibration and held-out sets are identical"
for n in $CAL_COUNTS; do head -n "$n" "$WORK/tok/s_cal.tok" >"$WORK/tok/s_cal$n.tok"; done
for n in $CAL_COUNTS; do calibrate "s_post_n$n" "$S_MODEL" "$WORK/tok/s_cal$n.tok" post "$S_K_LIST"; done
calibrate "s_pre_n$MAIN_CAL" "$S_MODEL" "$WORK/tok/s_cal$MAIN_CAL.tok" pre "$S_K_LIST"
grid_lines s "$S_K_LIST" 1 >"$WORK/s_grid.txt"
evaluate s_eval512 "$S_MODEL" "$WORK/tok/s_eval.tok" "$WORK/s_grid.txt"

# ---------------------------------------------------------------- decode speed (code28M)
if ! have "$WORK/log/generate.out"; then
  log "decode speed: code28M, 4000-token prompt, dense and Top-theta post + VMC k = 64 in one run"
  "$BIN" generate --model "$C_MODEL" --tokenizer "$MODELS/tok8192.bin" \
    --prompt-tokens "$MODELS/code28M_heldout_4096.txt" --prompt-length 4000 --steps 64 --no-stop \
    --temperature 0 --compare-dense --attention toptheta \
    --thresholds "$WORK/th/c_post_n$MAIN_CAL.toptheta" --k 64 --vmc --threads 1 \
    >"$WORK/log/generate.tmp" 2>"$WORK/log/generate.err" || die "generate failed: $(tail -3 "$WORK/log/generate.err")"
  mv "$WORK/log/generate.tmp" "$WORK/log/generate.out"
fi

# ---------------------------------------------------------------- table sizes
log "table sizes: 32 layers x 32 heads calibrated to 32k tokens"
cp "$THR_SRC" "$WORK/bin/toptheta-thresholds"
"$THR" synth --layers 32 --heads 32 --context 32768 --k 16,32,64,128,256 --out "$WORK/th/synth_32x32_5k.toptheta" >"$WORK/log/synth5.out"
"$THR" synth --layers 32 --heads 32 --context 32768 --k 32 --out "$WORK/th/synth_32x32_1k.toptheta" >"$WORK/log/synth1.out"
"$THR" info "$WORK/th/synth_32x32_5k.toptheta" --k 32 >"$WORK/log/synth5.info"

# ---------------------------------------------------------------- report and plots
log "writing $OUT_MD and plots in $IMG"
python3 scripts/results_report.py "$WORK" "$OUT_MD" "$IMG" "$QUICK" "$K_LIST" "$S_K_LIST" "$CAL_COUNTS" "$MAIN_CAL"
for gp in "$WORK"/*.gp; do gnuplot "$gp"; done
log "done"
