#pragma once
/// \file detail/vec_scalar.hpp
/// Scalar arithmetic shared by the SIMD paths: whether the build targets FMA hardware, a
/// multiply-add whose rounding the code decides, and the exp polynomial every path evaluates.
/// The one-lane vector type built on them (the scalar path's vector, every path's double) is
/// vec_one_lane.inl, compiled once per path.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <Eigen/Core>

#include "../types.hpp"

namespace toptheta::detail {

/// True when the translation unit targets hardware with a fused multiply-add instruction.
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
inline constexpr bool kBuildTargetsFma = true;
#else
inline constexpr bool kBuildTargetsFma = false;
#endif

/// a * b + c rounded once (std::fma) when kFused, else twice; written out so that the compiler
/// never decides (see vec_one_lane.inl).
template <bool kFused, class T>
inline T mul_add(T a, T b, T c) {
  if constexpr (kFused) return std::fma(a, b, c);
  else return a * b + c;
}

/// exp(x) in float without libm: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and a
/// degree-6 minimax polynomial for e^r (Cephes expf coefficients), scaled by 2^n through the
/// exponent bits. Relative error below 2 ulp for -87.3 <= x <= 88.3; x < -87.3 (and -inf, NaN)
/// gives 0; above about 88.38 (n = 128) the scale and so the result is +inf, also where e^x
/// would still be finite (the kernels only evaluate x <= 0: scores minus their row maximum).
/// Every path evaluates the same polynomial in the same order (the vector types lane by lane,
/// with fused multiply-adds), so with kFused this gives their bits exactly.
template <bool kFused = kBuildTargetsFma>
inline float exp_poly(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  if (!(x >= -87.3f)) return 0.0f;   // also NaN
  const float xc = x > 88.7f ? 88.7f : x;
  const float t = mul_add<kFused>(xc, kLog2e, kRound);
  const float n = t - kRound;
  float r = mul_add<kFused>(-n, kLn2Hi, xc);
  r = mul_add<kFused>(-n, kLn2Lo, r);
  float p = 1.9875691500e-4f;
  p = mul_add<kFused>(p, r, 1.3981999507e-3f);
  p = mul_add<kFused>(p, r, 8.3334519073e-3f);
  p = mul_add<kFused>(p, r, 4.1665795894e-2f);
  p = mul_add<kFused>(p, r, 1.6666665459e-1f);
  p = mul_add<kFused>(p, r, 5.0000001201e-1f);
  p = mul_add<kFused>(p * r, r, r + 1.0f);
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

}  // namespace toptheta::detail
