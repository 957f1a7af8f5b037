#pragma once
/// \file detail/vec_scalar.hpp
/// The one-lane "vector" of the portable path, in float or double. It has the interface of the
/// SIMD vector types (vec_avx2.hpp, vec_avx512.hpp, vec_neon.hpp), so the kernels in
/// simd_kernels.inl are written once.

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
/// never decides (see VecScalar::fma).
template <bool kFused, class T>
inline T mul_add(T a, T b, T c) {
  if constexpr (kFused) return std::fma(a, b, c);
  else return a * b + c;
}

/// exp(x) in float without libm: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and a
/// degree-6 minimax polynomial for e^r (Cephes expf coefficients), scaled by 2^n through the
/// exponent bits. Relative error below 2 ulp; x < -87.3 (and -inf, NaN) gives 0, x > 88.7
/// saturates. Every path evaluates the same polynomial in the same order (the vector types lane
/// by lane, with fused multiply-adds), so with kFused this gives their bits exactly.
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

/// Storage element -> accumulation type (half and bfloat16 through float, exactly).
template <class Acc, class T>
inline Acc to_acc(T x) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, Acc>) return x;
  else return static_cast<Acc>(static_cast<float>(x));
}

/// One lane of Acc (float or double). `kFusedFma` says how `fma` rounds: once (std::fma) or
/// twice (a * b, then + c). The scalar path uses the default, fused exactly when the build
/// targets FMA hardware; the AVX2 and AVX-512 paths, whose functions enable FMA through their
/// target attribute even in a build without -mfma, use it for double with kFusedFma = true.
template <class Acc, bool kFusedFma = kBuildTargetsFma>
struct VecScalar {
  /// True when a masked fused multiply-add costs what a plain one does.
  static constexpr bool kFreeMaskedFma = false;
  static constexpr int W = 1;
  using Mask = std::uint32_t;  ///< bit 0: the lane
  Acc r;

  static VecScalar zero() { return {Acc(0)}; }
  static VecScalar set1(Acc x) { return {x}; }
  static VecScalar load(const Acc* p) { return {*p}; }
  static VecScalar load_n(const Acc* p, int n) { return {n > 0 ? *p : Acc(0)}; }
  template <class T>
  static VecScalar load_cvt(const T* p) {
    return {to_acc<Acc>(*p)};
  }
  template <class T>
  static VecScalar load_cvt_n(const T* p, int n) {
    return {n > 0 ? to_acc<Acc>(*p) : Acc(0)};
  }
  void store(Acc* p) const { *p = r; }
  void store_n(Acc* p, int n) const {
    if (n > 0) *p = r;
  }
  friend VecScalar operator+(VecScalar a, VecScalar b) { return {a.r + b.r}; }
  friend VecScalar operator-(VecScalar a, VecScalar b) { return {a.r - b.r}; }
  friend VecScalar operator*(VecScalar a, VecScalar b) { return {a.r * b.r}; }
  /// a * b + c, rounded as kFusedFma says, never left to the compiler: where FMA is enabled GCC
  /// contracts a plain `a * b + c` in some inlined copies and not in others (it did so in
  /// qk_keys<4>, <2>, <1> of the scalar path), and a score's bits then depend on which
  /// micro-kernel its tile position takes (found by test_post_prefill,
  /// ScoreTileBudgetBetweenNoneAndAll; test_isa's ScoresDoNotDependOnTheTilePosition checks it
  /// for every path and both accumulation types). The unfused form is used only where the
  /// target has no FMA instruction to contract into.
  static VecScalar fma(VecScalar a, VecScalar b, VecScalar c) {
    return {mul_add<kFusedFma>(a.r, b.r, c.r)};
  }
  static VecScalar max(VecScalar a, VecScalar b) { return {a.r > b.r ? a.r : b.r}; }
  static VecScalar min(VecScalar a, VecScalar b) { return {a.r < b.r ? a.r : b.r}; }
  static VecScalar exp(VecScalar x) {
    if constexpr (std::is_same_v<Acc, float>) return {exp_poly<kFusedFma>(x.r)};
    else return {x.r == -std::numeric_limits<double>::infinity() || std::isnan(x.r) ? 0.0 : std::exp(x.r)};
  }
  static Mask gt(VecScalar a, VecScalar b) { return a.r > b.r ? 1u : 0u; }
  static Mask ne(VecScalar a, VecScalar b) { return a.r != b.r ? 1u : 0u; }
  /// Lanes that hold NaN or +-infinity.
  static Mask nonfinite(VecScalar a) { return std::isfinite(a.r) ? 0u : 1u; }
  static VecScalar select(Mask m, VecScalar a, VecScalar b) { return (m & 1u) ? a : b; }
  /// acc + a * b in the lanes of m, acc elsewhere (a zero weight never touches acc).
  static VecScalar fma_masked(VecScalar a, VecScalar b, VecScalar acc, Mask m) {
    return (m & 1u) ? fma(a, b, acc) : acc;
  }
  static std::uint64_t bits(Mask m) { return m & 1u; }
  static Mask first_n(int n) { return n > 0 ? 1u : 0u; }
  Acc reduce_sum() const { return r; }
  Acc reduce_max() const { return r; }
  /// out lane i = sum of the lanes of acc[i] (W accumulators): the same tree for every i.
  static VecScalar reduce_many(const VecScalar* acc) { return acc[0]; }
};

}  // namespace toptheta::detail
