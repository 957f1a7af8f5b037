#pragma once
/// \file detail/softmax_math.hpp
/// Scalar softmax helpers for code outside the SIMD kernels (the calibrator's convenience
/// functions, the reference oracle) and the score sanitising rule the kernels share.
///
/// Non-finite scores (docs/semantics.md): NaN becomes -inf (a masked key), +inf the largest
/// finite value; a row whose maximum is -inf (every key masked) has all probabilities 0.

#include <cmath>
#include <limits>

#include "../types.hpp"
#include "simd.hpp"

namespace toptheta::detail {

/// A score as the kernels use it: NaN becomes -inf (a masked key), +inf the largest finite value
/// (so a row maximum is always finite or -inf and s - M is never inf - inf).
template <class Acc>
inline Acc sanitize_score(Acc x) {
  if (std::isnan(x)) return -std::numeric_limits<Acc>::infinity();
  return x == std::numeric_limits<Acc>::infinity() ? std::numeric_limits<Acc>::max() : x;
}

/// max_j s_j, or -inf for an empty / fully masked row (portable path).
template <class Acc>
Acc row_max(const Acc* s, Index L) {
  return scalar::Ops::row_max(s, L);
}

/// exp(s - m), defined as 0 when m is -inf (fully masked row).
template <class Acc>
inline Acc exp_shifted(Acc s, Acc m) {
  return m == -std::numeric_limits<Acc>::infinity() ? Acc(0) : std::exp(s - m);
}

/// p_j = exp(s_j - m) / sum exp(s - m) with the SIMD path Ops; all zero when m is -inf.
/// Returns the denominator.
template <class Ops = scalar::Ops, class Acc>
Acc softmax_probs(const Acc* s, Index L, Acc m, Acc* p) {
  const Acc z = Ops::exp_shifted(s, L, m, p);
  if (z > 0) Ops::scale(p, Acc(1) / z, L);
  return z;
}

}  // namespace toptheta::detail
