#pragma once
/// \file detail/dot.hpp
/// Dot products and axpy in the accumulation type.
///
/// The dot product keeps 16 independent partial sums (one vector register of floats) and adds
/// them in a fixed tree, so the compiler vectorises it without -ffast-math and the result does
/// not depend on the instruction set or the thread count.

#include "convert.hpp"

namespace toptheta::detail {

inline constexpr Index kDotLanes = 16;

/// sum_i a[i] * b[i] over the accumulation type.
template <class Acc>
inline Acc dot(const Acc* TOPTHETA_RESTRICT a, const Acc* TOPTHETA_RESTRICT b, Index n) {
  Acc lane[kDotLanes] = {};
  Index i = 0;
  for (; i + kDotLanes <= n; i += kDotLanes)
    for (Index l = 0; l < kDotLanes; ++l) lane[l] += a[i + l] * b[i + l];
  for (Index l = 0; i < n; ++i, ++l) lane[l & (kDotLanes - 1)] += a[i] * b[i];
  for (Index w = kDotLanes / 2; w > 0; w /= 2)
    for (Index l = 0; l < w; ++l) lane[l] += lane[l + w];
  return lane[0];
}

/// y[i] += w * x[i].
template <class Acc>
inline void axpy(Acc w, const Acc* TOPTHETA_RESTRICT x, Acc* TOPTHETA_RESTRICT y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] += w * x[i];
}

}  // namespace toptheta::detail
