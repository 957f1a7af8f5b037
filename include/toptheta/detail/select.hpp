#pragma once
/// \file detail/select.hpp
/// Selection primitives: the k-th largest value and exact top-k index selection with ties to
/// the lower index. O(L) expected (introselect on a prefiltered candidate list).

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>

#include "../config.hpp"
#include "../types.hpp"

namespace toptheta::detail {

/// The k-th largest of a[0..L) (1 <= k <= L). `scratch` holds L values and is clobbered.
template <class Acc>
Acc kth_largest(const Acc* a, Index L, Index k, Acc* scratch) {
  TOPTHETA_ASSERT(k >= 1 && k <= L, "kth_largest: k out of [1, L]");
  std::copy(a, a + L, scratch);
  std::nth_element(scratch, scratch + (k - 1), scratch + L, std::greater<Acc>());
  return scratch[k - 1];
}

/// Top-k over the candidate list (idx[i], val[i]), i < n, ascending indices, that contains the
/// k + 1 largest values of the row: writes the k winners (ties to the lower index) to out in
/// ascending order. `work` holds n values. out may alias idx.
template <class Acc>
Index topk_from_candidates(const std::int32_t* idx, const Acc* val, Index n, Index k, Acc* work,
                           std::int32_t* out, Acc* kth, Acc* next) {
  std::copy(val, val + n, work);
  std::nth_element(work, work + (k - 1), work + n, std::greater<Acc>());
  const Acc v = work[k - 1];
  // Elements after position k-1 are <= v; the largest of them is the (k+1)-th largest.
  *next = k < n ? *std::max_element(work + k, work + n) : -std::numeric_limits<Acc>::infinity();
  *kth = v;
  Index greater = 0;
  for (Index i = 0; i < k - 1; ++i) greater += work[i] > v;
  Index ties_left = k - greater;  // how many elements equal to v to take, lowest index first
  Index c = 0;
  for (Index i = 0; i < n; ++i) {
    const Acc x = val[i];
    if (x > v || (x == v && ties_left > 0)) {
      if (!(x > v)) --ties_left;
      out[c++] = idx[i];
    }
  }
  return c;
}

/// Writes the indices of the k largest a_j (ties to the lower index) to `out` in ascending order
/// and returns k. Also returns through `kth` the k-th largest value and through `next` the
/// (k+1)-th largest (or -inf when k == L). Requires 1 <= k <= L; `scratch` holds L values.
///
/// For long rows a prefilter bounds the work: the minimum over k + 1 bucket maxima is a lower
/// bound of the (k+1)-th largest value, so only values at or above it are candidates (typically
/// a few times k), and the exact selection runs on those. O(L) with a small constant; the
/// bucket maxima use the SIMD path `Ops`.
template <class Ops, class Acc>
Index select_topk(const Acc* a, Index L, Index k, Acc* scratch, std::int32_t* out, Acc* kth,
                  Acc* next) {
  TOPTHETA_ASSERT(k >= 1 && k <= L, "select_topk: k out of [1, L]");
  if (k < L && L >= 8 * (k + 1) && L >= 256) {
    const Index buckets = k + 1, size = L / buckets;
    Acc bound = std::numeric_limits<Acc>::infinity();
    for (Index b = 0; b < buckets; ++b) {
      const Index lo = b * size, hi = b + 1 == buckets ? L : lo + size;
      const Acc m = Ops::row_max(a + lo, hi - lo);
      bound = m < bound ? m : bound;
    }
    Index n = 0;  // candidates a_j >= bound: indices in out, values in scratch
    for (Index j = 0; j < L; ++j) {
      out[n] = static_cast<std::int32_t>(j);
      scratch[n] = a[j];
      n += a[j] >= bound;
    }
    if (n <= L / 2) return topk_from_candidates(out, scratch, n, k, scratch + n, out, kth, next);
  }
  for (Index j = 0; j < L; ++j) out[j] = static_cast<std::int32_t>(j);
  return topk_from_candidates(out, a, L, k, scratch, out, kth, next);
}

/// Index of the first maximum of a[0..L) (L >= 1).
template <class Acc>
Index argmax_first(const Acc* a, Index L) {
  Index best = 0;
  for (Index j = 1; j < L; ++j)
    if (a[j] > a[best]) best = j;
  return best;
}

}  // namespace toptheta::detail
