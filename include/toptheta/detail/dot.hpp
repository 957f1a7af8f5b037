#pragma once
/// \file detail/dot.hpp
/// axpy in the accumulation type (the dot products live in simd.hpp).

#include "convert.hpp"

namespace toptheta::detail {

/// y[i] += w * x[i].
template <class Acc>
inline void axpy(Acc w, const Acc* TOPTHETA_RESTRICT x, Acc* TOPTHETA_RESTRICT y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] += w * x[i];
}

/// True when x[0..n) holds no NaN or infinity.
template <class Acc>
inline bool row_is_finite(const Acc* x, Index n) {
  Acc z = 0;
  for (Index i = 0; i < n; ++i) z += x[i] * Acc(0);  // 0 for finite x, NaN otherwise
  return z == Acc(0);
}

}  // namespace toptheta::detail
