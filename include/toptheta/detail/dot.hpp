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

}  // namespace toptheta::detail
