#pragma once
/// \file detail/convert.hpp
/// Loads of storage types into the accumulation type. fp16 rows convert with F16C when the
/// target has it and bf16 rows by a 16-bit shift, both vectorised; results are exact either way.

#include <Eigen/Core>

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__)
#include <immintrin.h>
#endif

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
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, Eigen::bfloat16> && std::is_same_v<Acc, float>) {
    // bf16 is the high half of a float: widen the bits and shift.
    static_assert(sizeof(Eigen::bfloat16) == 2, "bfloat16 must be 16 bits");
    const std::uint16_t* s = reinterpret_cast<const std::uint16_t*>(src);
    std::uint32_t* d = reinterpret_cast<std::uint32_t*>(dst);
    for (Index i = 0; i < n; ++i) d[i] = std::uint32_t(s[i]) << 16;
  } else if constexpr (std::is_same_v<U, Eigen::half> && std::is_same_v<Acc, float>) {
    Index i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
#endif
    for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  } else {
    for (Index i = 0; i < n; ++i) dst[i] = to_acc<Acc>(src[i]);
  }
}

/// dst[i] = (T)src[i], i < n.
template <class T, class Acc>
inline void store_row(const Acc* TOPTHETA_RESTRICT src, Index n, T* TOPTHETA_RESTRICT dst) {
  for (Index i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

}  // namespace toptheta::detail
