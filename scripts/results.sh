#!/usr/bin/env bash
# Regenerates the real-model accuracy report: docs/results.md (the generated section between the
# BEGIN/END GENERATED markers; the hand-written discussion around it is kept) and the plots
# docs/img/llama2c_dppl_vs_vrows.png and docs/img/llama2c_theta_vs_L.png.
#
# Protocol (DESIGN.md section 6): sequences sampled from the dense model at temperature 1; the
# calibration set (seed CAL_SEED) and the held-out set (seed EVAL_SEED) are disjoint. For every
# k in K_LIST: calibrate pre-softmax thresholds (with SDC terms) and post-softmax thresholds on
# the calibration set, then evaluate every variant teacher-forced on the held-out set.
#
# Needs: a release build (build/release/bin/toptheta-llama2c), ../shared/models/stories260K.bin,
# python3 and gnuplot (Debian: gnuplot-nox). Takes about 5-6 minutes on 2 idle cores.
#
# Environment (defaults in brackets):
#   LLAMA2C_BIN [build/release/bin/toptheta-llama2c]   MODEL [../shared/models/stories260K.bin]
#   SEQUENCES [64] per set     SEQ_LEN [512]     CAL_SEED [1]     EVAL_SEED [2]
#   K_LIST ["4 8 16 32 64"]    PAPER_LAYER_K ["0:64,1:64"] (extra rows at k = 16)
#   JOBS [2] parallel runs     WORK [build/results/llama2c] intermediate files
#   RESUME [0]: 1 reuses the sequence sets, threshold files and JSON results already in WORK
#               (after an interrupted run, or to regenerate only the report and plots)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${LLAMA2C_BIN:-build/release/bin/toptheta-llama2c}
MODEL=${MODEL:-../shared/models/stories260K.bin}
SEQUENCES=${SEQUENCES:-64}
SEQ_LEN=${SEQ_LEN:-512}
CAL_SEED=${CAL_SEED:-1}
EVAL_SEED=${EVAL_SEED:-2}
K_LIST=${K_LIST:-"4 8 16 32 64"}
PAPER_LAYER_K=${PAPER_LAYER_K:-"0:64,1:64"}
JOBS=${JOBS:-2}
WORK=${WORK:-build/results/llama2c}
OUT_MD=docs/results.md
IMG=docs/img

die() { echo "results.sh: $*" >&2; exit 1; }
[[ -x $BIN ]] || die "$BIN not found: build the release preset first (cmake --preset release && cmake --build --preset release)"
[[ -f $MODEL ]] || die "$MODEL not found (see ../shared/models/README.md)"
command -v python3 >/dev/null || die "python3 is required"
command -v gnuplot >/dev/null || die "gnuplot is required (Debian: apt-get install gnuplot-nox)"

mkdir -p "$WORK/json" "$WORK/th" "$IMG"
T0=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }

# --- 1. the two sequence sets (sampling also gives the dense perplexity of each set)
RESUME=${RESUME:-0}
have() { [[ $RESUME == 1 && -s $1 ]]; }
if have "$WORK/json/dense_cal.json" && have "$WORK/json/dense_eval.json"; then
  log "reusing the sequence sets in $WORK"
else
  log "sampling $SEQUENCES calibration (seed $CAL_SEED) and $SEQUENCES held-out (seed $EVAL_SEED) sequences of $SEQ_LEN tokens"
  "$BIN" eval --model "$MODEL" --sample-sequences "$SEQUENCES" --seq-len "$SEQ_LEN" --seed "$CAL_SEED" \
    --attention dense --json --save-tokens "$WORK/cal.tok" >"$WORK/json/dense_cal.json" &
  "$BIN" eval --model "$MODEL" --sample-sequences "$SEQUENCES" --seq-len "$SEQ_LEN" --seed "$EVAL_SEED" \
    --attention dense --json --save-tokens "$WORK/eval.tok" >"$WORK/json/dense_eval.json" &
  wait
fi
cmp -s "$WORK/cal.tok" "$WORK/eval.tok" && die "calibration and held-out sets are identical"

# run_jobs FILE: runs each line of FILE (a shell command) with $JOBS in parallel; fails if any fails.
run_jobs() {
  xargs -P "$JOBS" -I{} -d '\n' bash -c '{}' <"$1"
}

# --- 2. calibration
log "calibrating (k in $K_LIST; paper-style layer k $PAPER_LAYER_K at k = 16)"
: >"$WORK/cal_jobs"
cal() {  # cal NAME ARGS...
  local name=$1
  shift
  have "$WORK/th/$name.txt" && return 0
  echo "\"$BIN\" calibrate --model \"$MODEL\" --tokens \"$WORK/cal.tok\" $* --sigma 0.1 --tac on --out \"$WORK/th/$name.txt\" >\"$WORK/th/$name.log\"" >>"$WORK/cal_jobs"
}
for k in $K_LIST; do
  cal "pre_k$k" --k "$k" --placement pre --sdc-terms
  cal "post_k$k" --k "$k" --placement post
done
cal "pre_k16_paper" --k 16 --layer-k "$PAPER_LAYER_K" --placement pre --sdc-terms
cal "post_k16_paper" --k 16 --layer-k "$PAPER_LAYER_K" --placement post
run_jobs "$WORK/cal_jobs"

# --- 3. evaluation grid
# Variants: id|label|arguments (THR_PRE / THR_POST are replaced by the threshold files).
VARIANTS=(
  "topk|top-k|--attention topk"
  "topk_post_vmc|top-k post + VMC|--attention topk --placement post --vmc"
  "pre|Top-θ pre|--attention toptheta --thresholds THR_PRE"
  "pre_sdc|pre + exact SDC|--attention toptheta --thresholds THR_PRE --sdc exact"
  "pre_sdc_vmc|pre + exact SDC + VMC|--attention toptheta --thresholds THR_PRE --sdc exact --vmc"
  "pre_csdc_vmc|pre + calibrated SDC + VMC|--attention toptheta --thresholds THR_PRE --sdc calibrated --vmc"
  "post|post|--attention toptheta --thresholds THR_POST"
  "post_vmc|post + VMC|--attention toptheta --thresholds THR_POST --vmc"
)
printf '%s\n' "${VARIANTS[@]}" >"$WORK/variants.txt"
log "evaluating $(( ${#VARIANTS[@]} * 2 - 2 )) runs per k on the held-out set"
: >"$WORK/eval_jobs"
ev() {  # ev NAME ARGS...
  local name=$1
  shift
  have "$WORK/json/$name.json" && return 0
  echo "\"$BIN\" eval --model \"$MODEL\" --tokens \"$WORK/eval.tok\" $* --json >\"$WORK/json/$name.json\"" >>"$WORK/eval_jobs"
}
add_grid() {  # add_grid SUFFIX K [LAYER_K]
  local suffix=$1 k=$2 lk=${3:-} v id args
  for v in "${VARIANTS[@]}"; do
    id=${v%%|*}
    args=${v##*|}
    args=${args//THR_PRE/$WORK/th/pre_k$suffix.txt}
    args=${args//THR_POST/$WORK/th/post_k$suffix.txt}
    if [[ $id == topk* ]]; then
      ev "${id}_k$suffix" "$args --k $k ${lk:+--layer-k $lk}"
    else
      ev "${id}_keepmax_k$suffix" "$args --empty-row keep-max"
      ev "${id}_meanv_k$suffix" "$args --empty-row mean-v"
    fi
  done
}
for k in $K_LIST; do add_grid "$k" "$k"; done
add_grid "16_paper" 16 "$PAPER_LAYER_K"
run_jobs "$WORK/eval_jobs"

# --- 4. tables, plot data, markdown
log "writing $OUT_MD and plots"
python3 - "$WORK" "$OUT_MD" "$SEQUENCES" "$SEQ_LEN" "$CAL_SEED" "$EVAL_SEED" "$K_LIST" "$PAPER_LAYER_K" <<'PY'
import json, os, sys
work, out_md, nseq, seq_len, cal_seed, eval_seed, k_list, paper_lk = sys.argv[1:]
ks = [int(k) for k in k_list.split()]
variants = [l.rstrip('\n').split('|') for l in open(os.path.join(work, 'variants.txt')) if l.strip()]

def load(name):
    with open(os.path.join(work, 'json', name + '.json')) as f:
        return json.load(f)


dense_cal, dense_eval = load('dense_cal'), load('dense_eval')

def row_cells(label, k_text, r):
    d = r['dense_perplexity']
    return ('| {} | {} | {:.4f} | {:+.2f}% | {:.5f} | {:.2f}% | {:.2f}% | {:.2f}% | {:.2f} | {:.3f}% |'
            .format(label, k_text, r['perplexity'], 100 * (r['perplexity'] / d - 1), r['kl_mean'],
                    100 * r['top1_agreement'], 100 * r['attention_kept_fraction'],
                    100 * r['vrows_read_fraction'], r['kept_per_row_mean'], 100 * r['empty_row_fraction']))

HEAD = ('| variant | k | PPL | ΔPPL | KL(dense‖sparse) | top-1 agree | attn kept | V rows read | kept/row | empty rows |\n'
        '|---|---|---|---|---|---|---|---|---|---|')

def rows_for(suffix, k_text):
    """Markdown rows and plot points for one k: (lines, {variant_id: result})."""
    lines, chosen = [], {}
    for vid, label, _ in variants:
        if vid.startswith('topk'):
            r = load(f'{vid}_k{suffix}')
            lines.append(row_cells(label, k_text, r))
            chosen[vid] = r
            continue
        km, mv = load(f'{vid}_keepmax_k{suffix}'), load(f'{vid}_meanv_k{suffix}')
        chosen[vid] = km
        # Show both policies only where they differ at the printed precision.
        if row_cells('', k_text, km) == row_cells('', k_text, mv):
            lines.append(row_cells(label, k_text, km))
        else:
            lines.append(row_cells(label + ' (keep-max)', k_text, km))
            lines.append(row_cells(label + ' (mean-V)', k_text, mv))
    return lines, chosen

md = []
md.append('<!-- BEGIN GENERATED by scripts/results.sh: do not edit by hand, rerun the script -->')
md.append('')
md.append('### Setup (generated)')
md.append('')
md.append(f'- model `stories260K.bin` (5 layers, 8 query heads, 4 KV heads, head dim 8, context 512)')
md.append(f'- calibration set: {nseq} sequences x {seq_len} tokens sampled from the dense model at temperature 1, seed {cal_seed}; '
          f'dense perplexity on it {dense_cal["dense_perplexity"]:.4f}')
md.append(f'- held-out set: {nseq} sequences x {seq_len} tokens, seed {eval_seed} (disjoint from the calibration set); '
          f'dense perplexity {dense_eval["dense_perplexity"]:.4f}; all metrics below are on this set')
md.append('- calibration: TAC on, lambda (sigma) 0.1, all rows; pre-softmax tables also carry the calibrated SDC terms (second pass)')
md.append('- ΔPPL = PPL / dense PPL - 1 on the same tokens; KL in nats per predicted token; "attn kept" = kept / causal '
          'attention elements; "V rows read" = union over the 2 query heads of a KV group, per row, over the summed row lengths '
          '(what a decode step reads); "kept/row" and "empty rows" over thresholded rows (L > k) only')
md.append('- empty-row policy: keep-max, unless a variant shows two rows; both policies ran for every Top-θ variant, and a variant shows both only where they differ at the printed precision')
md.append('')
md.append('### Results by k (generated)')
md.append('')
md.append(HEAD)
plot = {}
for k in ks:
    lines, chosen = rows_for(str(k), str(k))
    md.extend(lines)
    for vid, r in chosen.items():
        plot.setdefault(vid, []).append((k, r))
md.append('')
md.append(f'### Paper-style per-layer k (generated): k = 16, layers {paper_lk}')
md.append('')
md.append(HEAD)
lines, paper = rows_for('16_paper', f'16 ({paper_lk})')
md.extend(lines)
md.append('')
md.append('<!-- END GENERATED -->')
generated = '\n'.join(md)

# Plot data: one file per variant, columns: vrows% dppl% k
for vid, pts in plot.items():
    with open(os.path.join(work, f'plot_{vid}.dat'), 'w') as f:
        for k, r in pts:
            f.write('{:.6f} {:.6f} {}\n'.format(100 * r['vrows_read_fraction'],
                                                100 * (r['perplexity'] / r['dense_perplexity'] - 1), k))
with open(os.path.join(work, 'plot_variants.txt'), 'w') as f:
    for vid, label, _ in variants:
        f.write(f'{vid}|{label}\n')

begin, end = '<!-- BEGIN GENERATED', '<!-- END GENERATED -->'
if os.path.exists(out_md):
    text = open(out_md).read()
    i, j = text.find(begin), text.find(end)
    if i >= 0 and j >= 0:
        text = text[:i] + generated + text[j + len(end):]
    else:
        text = text.rstrip('\n') + '\n\n' + generated + '\n'
else:
    text = '# Real-model results: Top-θ on stories260K\n\n' + generated + '\n'
open(out_md, 'w').write(text)
PY

# --- 5. plots
{
  echo "set terminal pngcairo size 900,600 font ',11'"
  echo "set output '$IMG/llama2c_dppl_vs_vrows.png'"
  echo "set title 'stories260K, held-out set: perplexity cost vs V rows read (k = ${K_LIST// /, })'"
  echo "set xlabel 'V rows read in decoding (% of dense)'"
  echo "set ylabel 'ΔPPL vs dense (%, symlog scale)'"
  echo "set grid; set key outside right top"
  # Symmetric log: y' = sign(y) * log10(1 + |y| / 0.01); ticks at round values.
  echo "sl(y) = (y >= 0 ? 1 : -1) * log10(1 + abs(y) / 0.01)"
  echo "set ytics ('-1' sl(-1), '-0.1' sl(-0.1), '0' 0, '0.01' sl(0.01), '0.1' sl(0.1), '1' sl(1), '10' sl(10), '100' sl(100), '1000' sl(1000))"
  echo "set xrange [0:*]"
  printf "plot "
  first=1
  while IFS='|' read -r vid label; do
    [[ $first -eq 1 ]] || printf ", \\\\\n     "
    first=0
    printf "'%s' using 1:(sl(\$2)) with linespoints lw 2 pt 7 title '%s'" "$WORK/plot_$vid.dat" "$label"
  done <"$WORK/plot_variants.txt"
  echo ""
} >"$WORK/dppl.gp"
gnuplot "$WORK/dppl.gp"

# theta against L for a few heads (k = 16 tables): one data file per (placement, layer, head).
THETA_HEADS=("0 0" "1 3" "2 5" "4 7")
for p in pre post; do
  for lh in "${THETA_HEADS[@]}"; do
    read -r l h <<<"$lh"
    awk -v l="$l" -v h="$h" 'f && $1 == l && $2 == h {print $3, $4} /^entries/ {f = 1}' \
      "$WORK/th/${p}_k16.txt" >"$WORK/theta_${p}_l${l}h${h}.dat"
  done
done
{
  echo "set terminal pngcairo size 1100,520 font ',11'"
  echo "set output '$IMG/llama2c_theta_vs_L.png'"
  echo "set multiplot layout 1,2 title 'Calibrated thresholds theta(layer, head, L), k = 16 (lambda 0.1, TAC on)'"
  echo "set grid; set xlabel 'row length L'; set key below"
  for p in pre post; do
    if [[ $p == pre ]]; then
      echo "set title 'pre-softmax'; set ylabel 'theta (scaled score)'; unset logscale y"
    else
      echo "set title 'post-softmax'; set ylabel 'theta (probability, log scale)'; set logscale y"
    fi
    printf "plot "
    first=1
    for lh in "${THETA_HEADS[@]}"; do
      read -r l h <<<"$lh"
      [[ $first -eq 1 ]] || printf ", "
      first=0
      printf "'%s' using 1:2 with lines lw 2 title 'layer %s head %s'" "$WORK/theta_${p}_l${l}h${h}.dat" "$l" "$h"
    done
    echo ""
  done
  echo "unset multiplot"
} >"$WORK/theta.gp"
gnuplot "$WORK/theta.gp"

log "done: $OUT_MD, $IMG/llama2c_dppl_vs_vrows.png, $IMG/llama2c_theta_vs_L.png"
