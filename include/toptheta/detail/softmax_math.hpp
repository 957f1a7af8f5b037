#pragma once
/// \file detail/softmax_math.hpp
/// Scalar softmax helpers shared by the kernels, the calibrator and the reference code paths.
///
/// Conventions for non-finite scores: NaN scores are replaced by -inf when scores are computed
/// (a NaN key behaves like a masked key); a row whose maximum is -inf (every key masked) has all
/// probabilities 0 and produces a zero output.

#include <cmath>
#include <limits>

#include "../types.hpp"
#include "simd.hpp"
#include "vexp.hpp"

namespace toptheta::detail {

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
