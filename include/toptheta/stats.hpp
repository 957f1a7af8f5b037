#pragma once
/// \file stats.hpp
/// `AttentionStats`: counts that describe how sparse a call was (DESIGN.md section 2,
/// "Statistics"). All fractions are ratios of sums, never means of ratios.
///
/// Counting is O(rows * heads) per call (the kept counts fall out of the selection), cheap enough
/// to leave on. Define `TOPTHETA_NO_STATS` to compile it out of the kernels.

#include <cstdint>
#include <vector>

#include "types.hpp"

namespace toptheta {

struct AttentionStats {
  // Per (row, query head) counts.
  std::uint64_t rows = 0;               ///< (row, query head) pairs processed
  std::uint64_t thresholded_rows = 0;   ///< pairs with L > k_l in a sparse mode
  std::uint64_t empty_rows = 0;         ///< thresholded pairs where nothing passed
  std::uint64_t elements_total = 0;     ///< sum of L (the dense attention elements)
  std::uint64_t elements_kept = 0;      ///< sum of kept elements (dense rows count L)
  std::uint64_t elements_topk = 0;      ///< sum of min(k_l, L): what top-k would keep
  std::uint64_t elements_kept_thresholded = 0;  ///< kept elements of thresholded pairs only
  // Per (row, KV head) counts: V rows a decode step of that row reads.
  std::uint64_t vrows_total = 0;        ///< sum of L over (row, KV head)
  std::uint64_t vrows_read = 0;         ///< sum of |union of kept over the KV group|
  /// Optional per-query-head breakdown; sized by `enable_per_head`, left empty otherwise.
  std::vector<std::uint64_t> kept_per_head;
  std::vector<std::uint64_t> total_per_head;

  /// Turn on per-head counters for `num_q_heads` heads (allocates once, outside the kernels).
  void enable_per_head(Index num_q_heads) {
    kept_per_head.assign(static_cast<std::size_t>(num_q_heads), 0);
    total_per_head.assign(static_cast<std::size_t>(num_q_heads), 0);
  }
  void reset() {
    const auto n = kept_per_head.size();
    *this = AttentionStats();
    if (n) enable_per_head(static_cast<Index>(n));
  }
  /// Adds the counts of `o` (per-head vectors must have the same size or be empty).
  void merge(const AttentionStats& o) {
    rows += o.rows;
    thresholded_rows += o.thresholded_rows;
    empty_rows += o.empty_rows;
    elements_total += o.elements_total;
    elements_kept += o.elements_kept;
    elements_topk += o.elements_topk;
    elements_kept_thresholded += o.elements_kept_thresholded;
    vrows_total += o.vrows_total;
    vrows_read += o.vrows_read;
    if (kept_per_head.size() == o.kept_per_head.size())
      for (std::size_t i = 0; i < kept_per_head.size(); ++i) {
        kept_per_head[i] += o.kept_per_head[i];
        total_per_head[i] += o.total_per_head[i];
      }
  }

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
};

}  // namespace toptheta
