#pragma once
/// \file gather.hpp
/// Sparse V-gather + V-mean compensation stage (semantics §6 and §7; the paper's VMC:
/// o += (1 - sum_j w_j) * vbar_L). One implementation, used by decode and
/// prefill alike:
///  - `kept_union` / `compact_weights`: the kept lists of the G query heads of one KV group
///    merged into their union U (ascending) and a |U| x G weight matrix;
///  - `gather_group`: every V row of U is read (and converted) once and each head accumulates
///    its weight times that row: |U| V-row reads and O(|U| G d) multiply-adds, instead of one
///    read per query head;
///  - `VbarSetup`: the V mean vbar_L from the caller's running sum of the rows before the new
///    tokens plus the new rows (or, when the caller asked for it, a sum over the cache);
///  - `add_vmc`: out_h += coeff_h * vbar.
/// A weight that is exactly zero never lets its V row into a sum (semantics §7).

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "detail/simd.hpp"
#include "options.hpp"
#include "types.hpp"

namespace toptheta {

/// V rows converted per step of a gather (their pointers are handed to the SIMD kernel at once).
inline constexpr Index kGatherTile = 32;

/// Writes the union of the G kept lists (each ascending, indices < length) to `uni`,
/// ascending, and returns its size. `mark` (length bytes) is zero on entry and on exit.
inline Index kept_union(Index G, const std::int32_t* const* kept, const Index* counts,
                        Index length, std::uint8_t* mark, std::int32_t* uni) {
  Index total = 0, single = -1;
  for (Index h = 0; h < G; ++h) {
    if (counts[h] == 0) continue;
    total += counts[h];
    single = single == -1 ? h : -2;
  }
  if (single >= 0) {  // one contributing head: its list is the union
    std::memcpy(uni, kept[single], sizeof(std::int32_t) * std::size_t(counts[single]));
    return counts[single];
  }
  if (total == 0) return 0;
  for (Index h = 0; h < G; ++h)
    for (Index i = 0; i < counts[h]; ++i) mark[kept[h][i]] = 1;
  Index u = 0;
  for (Index j = 0; j < length; ++j) {
    uni[u] = static_cast<std::int32_t>(j);
    u += mark[j];
    mark[j] = 0;
  }
  return u;
}

/// wc[u * G + h] = the weight head h gives uni[u] (0 when h did not keep it).
template <class Acc>
void compact_weights(Index G, const std::int32_t* const* kept, const Acc* const* weights,
                     const Index* counts, const std::int32_t* uni, Index nu, Acc* wc) {
  std::fill(wc, wc + nu * G, Acc(0));
  for (Index h = 0; h < G; ++h) {
    Index u = 0;
    for (Index i = 0; i < counts[h]; ++i) {
      while (uni[u] != kept[h][i]) ++u;
      wc[u * G + h] = weights[h][i];
    }
  }
}

/// Software prefetch of a gather (`gather_group`): the cache level its hints fill, and the V
/// rows the caller gathers next (rows next_uni[0..next_n) of KV head next_g; none when
/// next_n = 0).
struct GatherPrefetch {
  detail::PrefetchTo to = detail::PrefetchTo::kL2;  ///< cache level of the prefetch hints
  const std::int32_t* next_uni = nullptr;  ///< token indices of the next gather's rows
  Index next_n = 0;                        ///< how many (0: no next gather)
  Index next_g = 0;                        ///< KV head of the next gather
};

/// acc[h * d + i] += sum_{u < nu} wc[u * G + h] * V(uni[u], g)[i] for the G heads of KV head g
/// of `v` (any view with `row(token, head)`); rows read in order, each once. Before each tile the
/// rows of this tile and the next are prefetched (into `pf.to`), again for rows already
/// requested (as the decode walks of f32 and wider caches do); where that window runs past
/// uni[nu - 1] it continues into the first rows of `pf`'s next gather, so that they are in flight
/// when the caller starts it. Zero weights skip their row.
template <class Ops, class View, class Acc>
void gather_group(const View& v, Index g, Index G, Index d, const std::int32_t* uni, Index nu,
                  const Acc* wc, Acc* acc, const GatherPrefetch& pf = {}) {
  using T = std::remove_const_t<typename View::value_type>;
  const T* rows[kGatherTile];
  const Index items = d / kValuesPerItem<T>;
  for (Index u0 = 0; u0 < nu; u0 += kGatherTile) {
    const Index n = std::min(kGatherTile, nu - u0);
    for (Index u = 0; u < n; ++u) rows[u] = v.row(uni[u0 + u], g);
    const Index window_end = u0 + 2 * kGatherTile;
    for (Index u = u0; u < std::min(nu, window_end); ++u)
      detail::prefetch_row(v.row(uni[u], g), items, pf.to);
    for (Index u = 0; u < std::min(pf.next_n, window_end - nu); ++u)
      detail::prefetch_row(v.row(pf.next_uni[u], pf.next_g), items, pf.to);
    Ops::accumulate_rows(acc, G, d, rows, wc + u0 * G, G, 1, n);
  }
}

/// Dense rows [j0, j1) of KV head g: acc[h * d + i] += sum_j w[h * w_stride + j - j0] * V(j)[i].
template <class Ops, class View, class Acc>
void accumulate_range(const View& v, Index g, Index G, Index d, Index j0, Index j1,
                      const Acc* w, Index w_stride, Acc* acc) {
  using T = std::remove_const_t<typename View::value_type>;
  const T* rows[kGatherTile];
  for (Index u0 = j0; u0 < j1; u0 += kGatherTile) {
    const Index n = std::min(kGatherTile, j1 - u0);
    for (Index u = 0; u < n; ++u) rows[u] = v.row(u0 + u, g);
    Ops::accumulate_rows(acc, G, d, rows, w + (u0 - j0), 1, w_stride, n);
  }
}

/// out_h[i] += coeff[h] * vbar[i] for the G heads (coefficients of exactly 0 skip vbar).
template <class Ops, class Acc>
void add_vmc(Acc* const* out, Index G, Index d, const Acc* coeff, const Acc* vbar) {
  for (Index h = 0; h < G; ++h)
    if (coeff[h] != Acc(0)) Ops::axpy(coeff[h], vbar, out[h], d);
}

/// The V mean of KV head g: the running sum of the rows before the new tokens (the caller's
/// `v_sum`, or rows 0..P-1 summed here for VbarSource::kSumCache), to which the kernel adds the
/// new rows one by one (vbar_L = sum / L).
struct VbarSetup {
  /// sum[0..d) = sum of V rows 0..P-1 of KV head g: from `v_sum` (row stride `v_sum_stride`,
  /// d when 0) when given, else summed from the view.
  template <class Ops, class View, class Acc>
  static void prefix(const View& v, Index g, Index d, Index P, const Acc* v_sum,
                     Index v_sum_stride, Acc* sum) {
    if (v_sum) {
      std::memcpy(sum, v_sum + g * (v_sum_stride > 0 ? v_sum_stride : d), sizeof(Acc) * std::size_t(d));
      return;
    }
    std::fill(sum, sum + d, Acc(0));
    add_rows<Ops>(v, g, d, 0, P, sum);
  }
  /// sum += V rows [j0, j1) of KV head g.
  template <class Ops, class View, class Acc>
  static void add_rows(const View& v, Index g, Index d, Index j0, Index j1, Acc* sum) {
    using T = std::remove_const_t<typename View::value_type>;
    const T* rows[kGatherTile];
    Acc ones[kGatherTile];
    std::fill(ones, ones + kGatherTile, Acc(1));
    for (Index u0 = j0; u0 < j1; u0 += kGatherTile) {
      const Index n = std::min(kGatherTile, j1 - u0);
      for (Index u = 0; u < n; ++u) rows[u] = v.row(u0 + u, g);
      Ops::accumulate_rows(sum, 1, d, rows, ones, 1, 0, n);
    }
  }
};

}  // namespace toptheta
