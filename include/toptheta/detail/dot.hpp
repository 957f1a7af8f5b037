#pragma once
/// \file detail/dot.hpp
/// Dot products and axpy between an accumulation-type vector and a storage-type row.

#include "convert.hpp"

namespace toptheta::detail {

/// sum_i a[i] * (Acc)b[i]; four partial sums so the compiler vectorises without -ffast-math.
template <class Acc, class T>
inline Acc dot(const Acc* TOPTHETA_RESTRICT a, const T* TOPTHETA_RESTRICT b, Index n) {
  Acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  Index i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * to_acc<Acc>(b[i]);
    s1 += a[i + 1] * to_acc<Acc>(b[i + 1]);
    s2 += a[i + 2] * to_acc<Acc>(b[i + 2]);
    s3 += a[i + 3] * to_acc<Acc>(b[i + 3]);
  }
  for (; i < n; ++i) s0 += a[i] * to_acc<Acc>(b[i]);
  return (s0 + s1) + (s2 + s3);
}

/// y[i] += w * (Acc)x[i].
template <class Acc, class T>
inline void axpy(Acc w, const T* TOPTHETA_RESTRICT x, Acc* TOPTHETA_RESTRICT y, Index n) {
  for (Index i = 0; i < n; ++i) y[i] += w * to_acc<Acc>(x[i]);
}

}  // namespace toptheta::detail
