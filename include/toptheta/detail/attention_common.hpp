#pragma once
/// \file detail/attention_common.hpp
/// Pieces shared by the decode and prefill orchestration: per-call mode resolution, the
/// per-(row, head) pipeline (calibration, selection, weights, statistics) and V sums.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../attention_args.hpp"
#include "../calibrator.hpp"
#include "../row_select.hpp"
#include "../sparse_softmax.hpp"
#include "../stats.hpp"
#include "../workspace.hpp"
#include "convert.hpp"
#include "softmax_math.hpp"

namespace toptheta::detail {

inline constexpr Index kMaxGroup = 256;  // query heads per KV head
inline constexpr Index kMaxKv = 256;     // KV heads

/// Multiply-adds a thread must get before a call goes parallel: below it, opening an OpenMP
/// region costs more than it saves (a few microseconds per call, much more on busy cores).
inline constexpr double kMinMacsPerThread = 1 << 18;

/// Threads for a call of `macs` multiply-adds split into `items` independent pieces. The split
/// itself never depends on this number, so results stay bit-identical.
inline int call_threads(int requested, double macs, Index items) {
  const Index by_work = std::max<Index>(1, Index(macs / kMinMacsPerThread));
  return int(std::max<Index>(1, std::min({Index(resolve_threads(requested)), items, by_work})));
}

/// Integer counters of one thread; merged into AttentionStats after the parallel region.
struct StatCounters {
  std::uint64_t rows, thresholded_rows, empty_rows, elements_total, elements_kept, elements_topk,
      elements_kept_thresholded, vrows_total, vrows_read;
};

/// Per-thread statistics sinks (per-head arrays may be null).
struct StatSink {
  StatCounters* counters = nullptr;
  std::uint64_t* head_kept = nullptr;   // (Hq)
  std::uint64_t* head_total = nullptr;  // (Hq)
};

/// What every row of a call shares: the effective selection mode, placement and budget.
template <class Acc>
struct RowContext {
  const AttentionOptions* o = nullptr;
  Index layer = 0;
  AttentionMode sel_mode = AttentionMode::kDense;  // kCalibrate resolved to kTopK / kDense
  Placement placement = Placement::kPreSoftmax;
  Index k = 0;
  bool calibrate = false;
  Acc scale = 1;

  template <class T>
  static RowContext make(const AttentionArgs<T>& a, const AttentionOptions& o) {
    RowContext c;
    c.o = &o;
    c.layer = a.layer;
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
};

/// Result of one (row, head): kept entries and the coefficient of vbar in the output.
template <class Acc>
struct HeadRow {
  Index count = 0;    // kept indices with weights (0 for masked / mean-V rows)
  Acc vbar_coeff = 0;  // 1 - sum w with VMC, 1 for mean-V rows, else 0
};

/// The per-(row, head) pipeline on a score row s[0..L): calibration, selection, weights, stats.
/// `scratch` holds L values; `kept` and `w` receive up to L entries.
template <class Acc>
HeadRow<Acc> process_head_row(const RowContext<Acc>& cx, Index h, const Acc* s, Index L,
                              Acc* scratch, std::int32_t* kept, Acc* w, const StatSink& sink) {
  const AttentionOptions& o = *cx.o;
  if (cx.calibrate && L > cx.k) {
    const Acc m = row_max(s, L);
    const Acc* av = s;
    if (cx.placement == Placement::kPostSoftmax) {
      softmax_probs(s, L, m, w);  // w is free until the weights are computed
      av = w;
    }
    o.calibrator->observe_row<Acc>(cx.layer, h, av, L, s, m, scratch);
  }
  RowSelectParams<Acc> sp;
  sp.mode = cx.sel_mode;
  sp.placement = cx.placement;
  sp.k = cx.k;
  sp.empty_row = o.empty_row;
  sp.cap_k = o.cap_k;
  RowWeightParams<Acc> wp;
  wp.placement = cx.placement;
  wp.sdc = o.sdc;
  wp.sdc_scale = Acc(o.sdc_scale);
  if (cx.sel_mode == AttentionMode::kTopTheta && L > cx.k) {
    const ThresholdLookup th = o.thresholds->lookup(cx.layer, h, L, o.lookup);
    sp.theta = Acc(th.theta);
    wp.theta = Acc(th.theta);
    wp.sdc_term = std::isnan(th.sdc) ? Acc(0) : Acc(th.sdc);
  }
  const RowSelection<Acc> sel = select_row(s, L, sp, scratch, kept);
  if (cx.sel_mode == AttentionMode::kTopK) wp.theta = sel.next_score;
  const Acc wsum = row_weights(s, L, sel, kept, wp, scratch, w);

  HeadRow<Acc> r;
  r.count = (sel.masked || sel.mean_v) ? 0 : sel.count;
  if (sel.mean_v) r.vbar_coeff = 1;
  else if (sel.thresholded && !sel.masked && o.vmc == VmcMode::kOn) r.vbar_coeff = Acc(1) - wsum;
#ifndef TOPTHETA_NO_STATS
  StatCounters& c = *sink.counters;
  c.rows += 1;
  c.elements_total += std::uint64_t(L);
  c.elements_kept += std::uint64_t(r.count);
  c.elements_topk += std::uint64_t(std::min(cx.k, L));
  if (sel.thresholded) {
    c.thresholded_rows += 1;
    c.empty_rows += sel.empty;
    c.elements_kept_thresholded += std::uint64_t(r.count);
  }
  if (sink.head_kept) {
    sink.head_kept[h] += std::uint64_t(r.count);
    sink.head_total[h] += std::uint64_t(L);
  }
#else
  (void)sink;
#endif
  return r;
}

/// Sum of V rows [first, first + count) of KV head g, added into acc (d values).
template <class T, class Acc>
void add_v_rows(const HeadsView<const T>& v, Index g, Index first, Index count, Acc* acc) {
  for (Index j = first; j < first + count; ++j) {
    const T* r = v.row(j, g);
    for (Index i = 0; i < v.dim; ++i) acc[i] += to_acc<Acc>(r[i]);
  }
}

/// The error for a workspace smaller than the `need` bytes a call carves from it.
inline Status workspace_too_small(const Workspace& ws, std::size_t need) {
  return Status::invalid_argument("workspace of " + std::to_string(ws.bytes) +
                                  " bytes is smaller than this call needs (" +
                                  std::to_string(need) + " bytes); size it with workspace_size()");
}

/// Adds per-thread counters into the caller's AttentionStats.
inline void merge_stats(AttentionStats* st, const StatSink* sinks, int n, Index Hq) {
#ifndef TOPTHETA_NO_STATS
  if (!st) return;
  for (int i = 0; i < n; ++i) {
    const StatCounters& c = *sinks[i].counters;
    st->rows += c.rows;
    st->thresholded_rows += c.thresholded_rows;
    st->empty_rows += c.empty_rows;
    st->elements_total += c.elements_total;
    st->elements_kept += c.elements_kept;
    st->elements_topk += c.elements_topk;
    st->elements_kept_thresholded += c.elements_kept_thresholded;
    st->vrows_total += c.vrows_total;
    st->vrows_read += c.vrows_read;
    if (sinks[i].head_kept && Index(st->kept_per_head.size()) == Hq)
      for (Index h = 0; h < Hq; ++h) {
        st->kept_per_head[std::size_t(h)] += sinks[i].head_kept[h];
        st->total_per_head[std::size_t(h)] += sinks[i].head_total[h];
      }
  }
#else
  (void)st;
  (void)sinks;
  (void)n;
  (void)Hq;
#endif
}

/// Carves and zeroes one thread's statistics sink.
template <class ArenaT>
StatSink carve_sink(ArenaT& ar, Index Hq, bool per_head) {
  StatSink s;
  s.counters = ar.template take<StatCounters>(1);
  if (per_head) {
    s.head_kept = ar.template take<std::uint64_t>(Hq);
    s.head_total = ar.template take<std::uint64_t>(Hq);
  }
  return s;
}
inline void zero_sink(const StatSink& s, Index Hq) {
  *s.counters = StatCounters{};
  if (s.head_kept) {
    std::fill(s.head_kept, s.head_kept + Hq, std::uint64_t(0));
    std::fill(s.head_total, s.head_total + Hq, std::uint64_t(0));
  }
}

}  // namespace toptheta::detail
