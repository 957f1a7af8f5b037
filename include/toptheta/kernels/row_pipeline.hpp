#pragma once
/// \file kernels/row_pipeline.hpp
/// The per-(row, query head) pipeline shared by the decode and prefill kernels on a full score
/// row: calibration (observe tau), selection (row_select.hpp), weights with SDC
/// (sparse_softmax.hpp) and statistics (stats.hpp). The gather + VMC stage (gather.hpp) then
/// turns the kept lists of a KV group into outputs.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../attention_args.hpp"
#include "../calibrator.hpp"
#include "../row_select.hpp"
#include "../sparse_softmax.hpp"
#include "../stats.hpp"
#include "../threshold_table.hpp"

namespace toptheta::detail {

/// What every row of a call shares: the effective selection mode, placement and budget.
template <class Acc>
struct RowContext {
  const AttentionOptions* o = nullptr;
  Index layer = 0;
  Index head0 = 0;  ///< table / calibrator index of the call's query head 0
  AttentionMode sel_mode = AttentionMode::kDense;  ///< kCalibrate resolved to kTopK / kDense
  Placement placement = Placement::kPreSoftmax;
  Index k = 0;
  bool calibrate = false;
  Acc scale = 1;

  template <class Args>
  static RowContext make(const Args& a, const AttentionOptions& o) {
    RowContext c;
    c.o = &o;
    c.layer = a.layer;
    c.head0 = a.head_offset;
    c.sel_mode = o.mode;
    c.placement = o.placement;
    c.k = o.k;
    c.scale = a.scale > 0 ? Acc(a.scale) : Acc(1) / std::sqrt(Acc(a.q.dim));
    if (o.mode == AttentionMode::kTopTheta) c.k = o.thresholds->k(a.layer);
    if (o.mode == AttentionMode::kCalibrate) {
      c.calibrate = true;
      c.k = o.calibrator->k(a.layer);
      c.placement = o.calibrator->placement();
      c.sel_mode = o.calibrator->options().tac == TacMode::kOn ? AttentionMode::kTopK
                                                               : AttentionMode::kDense;
    }
    return c;
  }
  /// True when a row of length L is thresholded (sparse mode and L > k_l).
  bool thresholded(Index L) const { return sel_mode != AttentionMode::kDense && L > k; }
  /// The threshold lookup of query head h (call numbering) for a row of length L.
  ThresholdLookup lookup(Index h, Index L) const {
    return o->thresholds->lookup(layer, head0 + h, L, o->lookup);
  }
  /// Adds to `st` the Top-θ thresholded (row, query head) pairs of a call whose rows have the
  /// lengths P+1 .. P+T (decode: P = L - 1, T = 1) and exceed the lengths their pair was
  /// calibrated at (ThresholdTable::max_calibrated_length; semantics §9). O(Hq) per call, no
  /// allocation; nothing without statistics or outside Top-θ.
  void count_extrapolated(AttentionStats* st, Index Hq, Index P, Index T) const {
#ifndef TOPTHETA_NO_STATS
    if (!st || sel_mode != AttentionMode::kTopTheta) return;
    for (Index h = 0; h < Hq; ++h) {
      const Index limit = o->thresholds->max_calibrated_length(layer, head0 + h);
      if (limit <= 0) continue;  // declared dense: no threshold to extrapolate
      const Index from = std::max(std::max(k, limit), P);  // rows with L > from
      if (P + T > from) st->extrapolated_rows += std::uint64_t(P + T - from);
    }
#else
    (void)st, (void)Hq, (void)P, (void)T;
#endif
  }
};

/// Result of one (row, head).
template <class Acc>
struct HeadRow {
  Index count = 0;     ///< kept indices with weights (0 for masked / mean-V rows)
  Acc vbar_coeff = 0;  ///< 1 - sum w with VMC, 1 for mean-V rows, else 0
  bool all_kept = false;  ///< kept = 0..L-1 in order (w is a full row): a dense row
};

/// Scratch of one row: four buffers of L values.
template <class Acc>
struct RowScratch {
  Acc* a;               ///< selection scratch
  Acc* probs;           ///< compact probabilities (post Top-θ)
  std::int32_t* kept;   ///< kept indices
  Acc* w;               ///< weights of kept[i]
};

/// The pipeline on a score row s[0..L) of query head h (call numbering). `mz`, when given, is
/// the row maximum and softmax denominator computed while the scores were made.
template <class Ops, class Acc>
HeadRow<Acc> process_head_row(const RowContext<Acc>& cx, Index h, const Acc* s, Index L,
                              const Acc* mz, const RowScratch<Acc>& rs, const StatSink& sink) {
  const AttentionOptions& o = *cx.o;
  if (cx.calibrate && L > cx.k) {
    const Acc m = mz ? mz[0] : Ops::row_max(s, L);
    const Acc* av = s;
    if (cx.placement == Placement::kPostSoftmax) {
      detail::softmax_probs<Ops>(s, L, m, rs.w);  // w is free until the weights are computed
      av = rs.w;
    }
    o.calibrator->observe_row<Acc>(cx.layer, cx.head0 + h, av, L, s, m, rs.a);
  }
  RowSelectParams<Acc> sp;
  sp.mode = cx.sel_mode;
  sp.placement = cx.placement;
  sp.k = cx.k;
  sp.empty_row = o.empty_row;
  sp.cap_k = o.cap_k;
  if (mz) {
    sp.have_max_denominator = true;
    sp.row_max = mz[0];
    sp.denominator = mz[1];
  }
  RowWeightParams<Acc> wp;
  wp.placement = cx.placement;
  wp.sdc = o.sdc;
  wp.sdc_scale = Acc(o.sdc_scale);
  if (cx.sel_mode == AttentionMode::kTopTheta && L > cx.k) {
    const ThresholdLookup th = cx.lookup(h, L);
    sp.theta = wp.theta = threshold_in<Acc>(th.theta);
    wp.sdc_term = std::isnan(th.sdc) ? Acc(0) : Acc(th.sdc);
  }
  const RowSelection<Acc> sel = select_row<Ops>(s, L, sp, rs.a, rs.kept, rs.probs);
  if (cx.sel_mode == AttentionMode::kTopK) wp.theta = sel.next_score;
  const Acc wsum = row_weights<Ops>(s, L, sel, rs.kept, wp, rs.a, rs.probs, rs.w);

  HeadRow<Acc> r;
  r.count = (sel.masked || sel.mean_v) ? 0 : sel.count;
  r.all_kept = r.count == L && (!sel.thresholded || sel.count == L);
  if (sel.mean_v) r.vbar_coeff = 1;
  else if (sel.thresholded && !sel.masked && o.vmc == VmcMode::kOn) r.vbar_coeff = Acc(1) - wsum;
  sink.row(h, L, r.count, cx.k, sel.thresholded, sel.empty);
  return r;
}

}  // namespace toptheta::detail
