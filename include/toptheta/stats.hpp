#pragma once
/// \file stats.hpp
/// Statistics stage: how sparse a call was (semantics §9).
///
/// `AttentionCounts` are the integer counters a kernel accumulates (per thread, then merged);
/// `AttentionStats` adds the optional per-query-head breakdown and the ratios. Fractions are
/// ratios of sums, never means of ratios. Counting is O(rows x heads) per call; define
/// `TOPTHETA_NO_STATS` to compile it out of the kernels.

#include <cstdint>
#include <vector>

#include "types.hpp"

namespace toptheta {

/// The integer counters of attention calls.
struct AttentionCounts {
  // Per (row, query head).
  std::uint64_t rows = 0;               ///< (row, query head) pairs processed
  std::uint64_t thresholded_rows = 0;   ///< pairs with L > k_l in a sparse mode
  std::uint64_t empty_rows = 0;         ///< thresholded pairs where nothing passed
  std::uint64_t elements_total = 0;     ///< sum of L (the dense attention elements)
  std::uint64_t elements_kept = 0;      ///< sum of kept elements (dense rows count L)
  std::uint64_t elements_topk = 0;      ///< sum of min(k_l, L): what top-k would keep
  std::uint64_t elements_kept_thresholded = 0;  ///< kept elements of thresholded pairs only
  /// Top-θ thresholded pairs whose L exceeds the largest length their (layer, head) was
  /// calibrated at (ThresholdTable::max_calibrated_length): they ran on a theta clamped to the
  /// last entry (per-length tables) or extrapolated past the last knot (compact tables).
  std::uint64_t extrapolated_rows = 0;
  // Per (row, KV head): the V rows a decode step of that row reads.
  std::uint64_t vrows_total = 0;        ///< sum of L over (row, KV head)
  std::uint64_t vrows_read = 0;         ///< sum of |union of kept over the KV group|

  /// Adds the counters of `o`.
  void add(const AttentionCounts& o) {
    rows += o.rows;
    thresholded_rows += o.thresholded_rows;
    empty_rows += o.empty_rows;
    elements_total += o.elements_total;
    elements_kept += o.elements_kept;
    elements_topk += o.elements_topk;
    elements_kept_thresholded += o.elements_kept_thresholded;
    extrapolated_rows += o.extrapolated_rows;
    vrows_total += o.vrows_total;
    vrows_read += o.vrows_read;
  }
};

/// Counters of one or more calls, with an optional per-query-head breakdown.
struct AttentionStats : AttentionCounts {
  /// Per query head of the model: kept elements; sized by `enable_per_head` (the model's query
  /// heads: AttentionArgs::model_heads, else q heads; a call whose statistics have another
  /// non-zero size is kInvalidArgument), left empty otherwise.
  std::vector<std::uint64_t> kept_per_head;
  /// Per query head: the dense attention elements (sum of L), the denominator of that head's
  /// kept fraction; same size as kept_per_head.
  std::vector<std::uint64_t> total_per_head;

  /// Turn on per-head counters for `num_q_heads` heads (allocates once, outside the kernels).
  void enable_per_head(Index num_q_heads) {
    kept_per_head.assign(static_cast<std::size_t>(num_q_heads), 0);
    total_per_head.assign(static_cast<std::size_t>(num_q_heads), 0);
  }
  /// Zero every counter (the per-head breakdown stays enabled).
  void reset() {
    const auto n = kept_per_head.size();
    *this = AttentionStats();
    if (n) enable_per_head(static_cast<Index>(n));
  }
  /// Adds the counts of `o` (per-head vectors when both have the same size).
  void merge(const AttentionStats& o) {
    add(o);
    if (kept_per_head.size() == o.kept_per_head.size())
      for (std::size_t i = 0; i < kept_per_head.size(); ++i) {
        kept_per_head[i] += o.kept_per_head[i];
        total_per_head[i] += o.total_per_head[i];
      }
  }

  /// a / b, or 0 when b is 0 (no calls counted yet).
  static double ratio(std::uint64_t a, std::uint64_t b) { return b ? double(a) / double(b) : 0.0; }
  /// Kept attention elements / dense attention elements.
  double kept_fraction() const { return ratio(elements_kept, elements_total); }
  /// Kept elements / what top-k at the same budget keeps.
  double kept_vs_topk() const { return ratio(elements_kept, elements_topk); }
  /// V rows read (union over each KV group) / V rows a dense step reads.
  double vrows_fraction() const { return ratio(vrows_read, vrows_total); }
  /// Mean kept elements per thresholded (row, head).
  double kept_per_thresholded_row() const {
    return ratio(elements_kept_thresholded, thresholded_rows);
  }
  /// Fraction of thresholded (row, head) pairs where nothing passed.
  double empty_row_fraction() const { return ratio(empty_rows, thresholded_rows); }
  /// Fraction of thresholded (row, head) pairs longer than their calibrated lengths (a table
  /// calibrated at shorter contexts than the calls run at).
  double extrapolated_fraction() const { return ratio(extrapolated_rows, thresholded_rows); }
};

namespace detail {

/// One thread's statistics: counters and optional per-head arrays (carved from a workspace).
struct StatSink {
  AttentionCounts* counts = nullptr;
  std::uint64_t* head_kept = nullptr;   ///< (Hq) or null
  std::uint64_t* head_total = nullptr;  ///< (Hq) or null

  /// Counts one (row, query head) pair of query head h (index within the call).
  void row(Index h, Index L, Index kept, Index k, bool thresholded, bool empty) const {
#ifndef TOPTHETA_NO_STATS
    AttentionCounts& c = *counts;
    c.rows += 1;
    c.elements_total += std::uint64_t(L);
    c.elements_kept += std::uint64_t(kept);
    c.elements_topk += std::uint64_t(k < L ? k : L);
    if (thresholded) {
      c.thresholded_rows += 1;
      c.empty_rows += empty;
      c.elements_kept_thresholded += std::uint64_t(kept);
    }
    if (head_kept) {
      head_kept[h] += std::uint64_t(kept);
      head_total[h] += std::uint64_t(L);
    }
#else
    (void)h, (void)L, (void)kept, (void)k, (void)thresholded, (void)empty;
#endif
  }
  /// Counts one (row, KV head): row length L, |union of kept| = read.
  void vrows(Index L, Index read) const {
#ifndef TOPTHETA_NO_STATS
    counts->vrows_total += std::uint64_t(L);
    counts->vrows_read += std::uint64_t(read);
#else
    (void)L, (void)read;
#endif
  }
  void zero(Index Hq) const {
    *counts = AttentionCounts{};
    if (head_kept)
      for (Index h = 0; h < Hq; ++h) head_kept[h] = head_total[h] = 0;
  }
  /// Adds this sink into `st`; `head0` is the first query head of the call in `st`'s numbering.
  void merge_into(AttentionStats* st, Index Hq, Index head0 = 0) const {
#ifndef TOPTHETA_NO_STATS
    if (!st) return;
    st->add(*counts);
    if (head_kept && Index(st->kept_per_head.size()) >= head0 + Hq)
      for (Index h = 0; h < Hq; ++h) {
        st->kept_per_head[std::size_t(head0 + h)] += head_kept[h];
        st->total_per_head[std::size_t(head0 + h)] += head_total[h];
      }
#else
    (void)st, (void)Hq, (void)head0;
#endif
  }
};

}  // namespace detail
}  // namespace toptheta
