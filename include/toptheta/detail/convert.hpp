#pragma once
/// \file detail/convert.hpp
/// Loads of storage types into the accumulation type.

#include <Eigen/Core>

#include <type_traits>

#include "../types.hpp"

namespace toptheta::detail {

template <class Acc, class T>
inline Acc to_acc(T x) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, Acc>) return x;
  else return static_cast<Acc>(static_cast<float>(x));
}

/// dst[i] = (Acc)src[i], i < n.
template <class Acc, class T>
inline void load_row(const T* TOPTHETA_RESTRICT src, Index n, Acc* TOPTHETA_RESTRICT dst) {
  for (Index i = 0; i < n; ++i) dst[i] = to_acc<Acc>(src[i]);
}

/// dst[i] = (T)src[i], i < n.
template <class T, class Acc>
inline void store_row(const Acc* TOPTHETA_RESTRICT src, Index n, T* TOPTHETA_RESTRICT dst) {
  for (Index i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

}  // namespace toptheta::detail
