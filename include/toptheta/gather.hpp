#pragma once
/// \file gather.hpp
/// Sparse V-gather stage with V-mean compensation (DESIGN.md section 2, inference step 5).
///
/// For one row of one KV group (the G query heads sharing a KV head) the kept index lists of the
/// G heads are merged into their union U, every V row in U is read (and converted) once, and
/// each head accumulates its weight times that row: O(|U| * G * d) multiply-adds and |U| V-row
/// reads, instead of one read per query head.

#include <cstdint>
#include <algorithm>
#include <cstring>

#include "detail/dot.hpp"
#include "detail/simd.hpp"
#include "types.hpp"

namespace toptheta {

/// V rows gathered per step: their converted copies stay in L1 while every head of the group
/// accumulates them.
inline constexpr Index kGatherTile = 32;

/// Inputs of one group row: G heads' kept lists / weights and what to do with them.
template <class Acc>
struct GroupRow {
  Index group_size = 0;                 ///< G
  Index length = 0;                     ///< L of the row
  const std::int32_t* const* kept;      ///< [G] kept indices, ascending
  const Acc* const* weights;            ///< [G] weight of kept[i]
  const Index* counts;                  ///< [G] number of kept indices (0 for mean-V / masked)
  const Acc* vmc_coeff;                 ///< [G] coefficient of vbar added to the output (0 = none)
  const Acc* vbar;                      ///< (d) mean of V rows 0..L-1, or null when unused
};

/// Scratch of the gather, each sized for the largest L (union, marks) or L * G (weights).
template <class Acc>
struct GatherScratch {
  std::uint8_t* mark;    ///< L bytes, all zero on entry and on exit
  std::int32_t* uni;     ///< L indices
  Acc* wc;               ///< L * G compact weights
  Acc* tile;             ///< kGatherTile * d values (converted V rows)
};

/// Writes the union of the kept lists to s.uni (ascending) and returns its size.
template <class Acc>
Index kept_union(const GroupRow<Acc>& row, const GatherScratch<Acc>& s) {
  Index total = 0, single = -1;
  for (Index h = 0; h < row.group_size; ++h) {
    if (row.counts[h] == 0) continue;
    total += row.counts[h];
    single = single == -1 ? h : -2;
  }
  if (single >= 0) {  // one contributing head: its list is the union
    std::memcpy(s.uni, row.kept[single], sizeof(std::int32_t) * std::size_t(row.counts[single]));
    return row.counts[single];
  }
  if (total == 0) return 0;
  for (Index h = 0; h < row.group_size; ++h)
    for (Index i = 0; i < row.counts[h]; ++i) s.mark[row.kept[h][i]] = 1;
  Index u = 0;
  for (Index j = 0; j < row.length; ++j) {
    s.uni[u] = static_cast<std::int32_t>(j);
    u += s.mark[j];
    s.mark[j] = 0;
  }
  return u;
}

/// out[h][0..d) = sum_{j in kept_h} w_hj v_j + vmc_coeff[h] * vbar, for the G heads of the group.
/// `v` is the (L, d) view of the group's KV head; out[h] are output rows (written, not read).
template <class Acc, class T>
Index gather_group_row(const GroupRow<Acc>& row, MatrixView<const T> v, Acc* const* out,
                       const GatherScratch<Acc>& s) {
  const Index G = row.group_size, d = v.cols;
  const Index nu = kept_union(row, s);
  // Compact weights wc[u * G + h]: kept_h is a sorted subset of the sorted union.
  std::memset(s.wc, 0, sizeof(Acc) * std::size_t(nu * G));
  for (Index h = 0; h < G; ++h) {
    Index u = 0;
    for (Index i = 0; i < row.counts[h]; ++i) {
      while (s.uni[u] != row.kept[h][i]) ++u;
      s.wc[u * G + h] = row.weights[h][i];
    }
  }
  for (Index h = 0; h < G; ++h) std::memset(out[h], 0, sizeof(Acc) * std::size_t(d));
  const Acc* rows[kGatherTile];
  for (Index u0 = 0; u0 < nu; u0 += kGatherTile) {
    const Index n = std::min(kGatherTile, nu - u0);
    for (Index u = 0; u < n; ++u) {
      const T* vr = v.row(s.uni[u0 + u]);
      if constexpr (std::is_same_v<T, Acc>) {
        rows[u] = vr;
      } else {
        detail::load_row(vr, d, s.tile + u * d);
        rows[u] = s.tile + u * d;
      }
    }
    for (Index h = 0; h < G; ++h) detail::accumulate_rows(out[h], rows, s.wc + u0 * G + h, G, n, d);
  }
  if (row.vbar)
    for (Index h = 0; h < G; ++h)
      if (row.vmc_coeff[h] != Acc(0)) detail::axpy(row.vmc_coeff[h], row.vbar, out[h], d);
  return nu;
}

}  // namespace toptheta
