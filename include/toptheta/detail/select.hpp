#pragma once
/// \file detail/select.hpp
/// Selection primitives: k-th largest value and exact top-k index selection with ties to the
/// lower index. O(L) expected (introselect).

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>

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

/// Writes the indices of the k largest a_j (ties to the lower index) to `out` in ascending order
/// and returns k. Also returns through `kth` the k-th largest value and through `next` the
/// (k+1)-th largest (or -inf when k == L). Requires 1 <= k <= L; `scratch` holds L values.
template <class Acc>
Index select_topk(const Acc* a, Index L, Index k, Acc* scratch, std::int32_t* out, Acc* kth,
                  Acc* next) {
  TOPTHETA_ASSERT(k >= 1 && k <= L, "select_topk: k out of [1, L]");
  std::copy(a, a + L, scratch);
  std::nth_element(scratch, scratch + (k - 1), scratch + L, std::greater<Acc>());
  const Acc v = scratch[k - 1];
  // Elements after position k-1 are <= v; the largest of them is the (k+1)-th largest.
  Acc nx = -std::numeric_limits<Acc>::infinity();
  if (k < L) nx = *std::max_element(scratch + k, scratch + L);
  Index greater = 0;
  for (Index i = 0; i < k - 1; ++i) greater += scratch[i] > v;
  Index ties_left = k - greater;  // how many elements equal to v to take, lowest index first
  Index n = 0;
  for (Index j = 0; j < L; ++j) {
    const Acc x = a[j];
    if (x > v || (x == v && ties_left > 0)) {
      if (!(x > v)) --ties_left;
      out[n++] = static_cast<std::int32_t>(j);
    }
  }
  *kth = v;
  *next = nx;
  return n;
}

/// Writes the indices j with a_j > theta (strict) to `out` in ascending order; returns the count.
template <class Acc>
Index select_above(const Acc* a, Index L, Acc theta, std::int32_t* out) {
  Index n = 0;
  for (Index j = 0; j < L; ++j) {
    out[n] = static_cast<std::int32_t>(j);
    n += a[j] > theta;  // branch-free compaction
  }
  return n;
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
