#pragma once
/// \file detail/softmax_math.hpp
/// Scalar softmax helpers shared by the kernels, the calibrator and the reference code paths.
///
/// Conventions for non-finite scores: NaN scores are replaced by -inf when scores are computed
/// (a NaN key behaves like a masked key), +inf scores by the largest finite value; a row whose maximum is -inf (every key masked) has all
/// probabilities 0 and produces a zero output.

#include <cmath>
#include <limits>

#include "../types.hpp"
#include "simd.hpp"
#include "vexp.hpp"

namespace toptheta::detail {

/// A score as the kernels use it: NaN becomes -inf (a masked key), +inf the largest finite value
/// (so a row maximum is always finite or -inf and s - M is never inf - inf).
template <class Acc>
inline Acc sanitize_score(Acc x) {
  if (std::isnan(x)) return -std::numeric_limits<Acc>::infinity();
  return x == std::numeric_limits<Acc>::infinity() ? std::numeric_limits<Acc>::max() : x;
}

/// max_j s_j, or -inf for an empty / fully masked row.
template <class Acc>
Acc row_max(const Acc* s, Index L) {
  return max_value(s, L);
}

/// exp(s - m), defined as 0 when m is -inf (fully masked row).
template <class Acc>
inline Acc exp_shifted(Acc s, Acc m) {
  return m == -std::numeric_limits<Acc>::infinity() ? Acc(0) : std::exp(s - m);
}

/// p_j = exp(s_j - m) / sum exp(s - m); all zero when m is -inf. Returns the denominator.
template <class Acc>
Acc softmax_probs(const Acc* s, Index L, Acc m, Acc* p) {
  const Acc z = exp_shifted_row(s, L, m, p);
  if (z > 0) {
    const Acc inv = Acc(1) / z;
    for (Index j = 0; j < L; ++j) p[j] *= inv;
  }
  return z;
}

}  // namespace toptheta::detail
