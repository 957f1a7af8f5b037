#pragma once
/// \file detail/vec_neon.hpp
/// Four float lanes with AArch64 NEON (part of the base architecture: no target attribute).

#include "isa.hpp"

#if defined(TOPTHETA_COMPILE_NEON)

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "../types.hpp"

namespace toptheta::detail {

struct VecNeon {
  /// True when a masked fused multiply-add costs what a plain one does.
  static constexpr bool kFreeMaskedFma = false;
  static constexpr int W = 4;
  /// Architectural vector registers the path's kernels can use: their register blocking keeps
  /// accumulators and operands within it (the prefill tiles of simd_kernels.inl).
  static constexpr int kRegisters = 32;  // v0-v31
  using Mask = std::uint32_t;  ///< bit i: lane i
  float32x4_t r;

  static VecNeon zero() { return {vdupq_n_f32(0.0f)}; }
  static VecNeon set1(float x) { return {vdupq_n_f32(x)}; }
  static VecNeon load(const float* p) { return {vld1q_f32(p)}; }
  static VecNeon load_n(const float* p, int n) {
    float tmp[4] = {0, 0, 0, 0};
    for (int i = 0; i < n && i < 4; ++i) tmp[i] = p[i];
    return {vld1q_f32(tmp)};
  }
  template <class T>
  static VecNeon load_cvt(const T* p) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return {vld1q_f32(p)};
    } else if constexpr (std::is_same_v<U, Eigen::half>) {
      return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p))))};
    } else {
      static_assert(std::is_same_v<U, Eigen::bfloat16>, "float, half or bfloat16 storage");
      const uint32x4_t w = vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16);
      return {vreinterpretq_f32_u32(w)};
    }
  }
  template <class T>
  static VecNeon load_cvt_n(const T* p, int n) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return load_n(p, n);
    } else {
      std::uint16_t tmp[4] = {0, 0, 0, 0};
      std::memcpy(tmp, p, sizeof(std::uint16_t) * std::size_t(n < 4 ? n : 4));
      return load_cvt(reinterpret_cast<const U*>(tmp));
    }
  }
  void store(float* p) const { vst1q_f32(p, r); }
  void store_n(float* p, int n) const {
    float tmp[4];
    vst1q_f32(tmp, r);
    for (int i = 0; i < n && i < 4; ++i) p[i] = tmp[i];
  }
  friend VecNeon operator+(VecNeon a, VecNeon b) { return {vaddq_f32(a.r, b.r)}; }
  friend VecNeon operator-(VecNeon a, VecNeon b) { return {vsubq_f32(a.r, b.r)}; }
  friend VecNeon operator*(VecNeon a, VecNeon b) { return {vmulq_f32(a.r, b.r)}; }
  static VecNeon fma(VecNeon a, VecNeon b, VecNeon c) { return {vfmaq_f32(c.r, a.r, b.r)}; }
  static VecNeon max(VecNeon a, VecNeon b) { return {vmaxq_f32(a.r, b.r)}; }
  static VecNeon min(VecNeon a, VecNeon b) { return {vminq_f32(a.r, b.r)}; }
  /// exp_poly (vec_scalar.hpp) lane by lane, with fused multiply-adds.
  static VecNeon exp(VecNeon x) {
    const float32x4_t lo = vdupq_n_f32(-87.3f), hi = vdupq_n_f32(88.7f);
    const float32x4_t xc = vminq_f32(vmaxq_f32(x.r, lo), hi);
    const float32x4_t round = vdupq_n_f32(12582912.0f);
    const float32x4_t t = vfmaq_f32(round, xc, vdupq_n_f32(1.44269504088896341f));
    const float32x4_t n = vsubq_f32(t, round);
    float32x4_t r = vfmsq_f32(xc, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
    const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(bits));
    const uint32x4_t keep = vcgeq_f32(x.r, lo);  // x < -87.3 or NaN -> 0
    return {vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), keep))};
  }
  static Mask bits_of(uint32x4_t m) {
    const uint32x4_t bit = {1u, 2u, 4u, 8u};
    return Mask(vaddvq_u32(vandq_u32(m, bit)));
  }
  static uint32x4_t mask_vec(Mask m) {
    const uint32x4_t bit = {1u, 2u, 4u, 8u};
    return vtstq_u32(vdupq_n_u32(m), bit);
  }
  static Mask gt(VecNeon a, VecNeon b) { return bits_of(vcgtq_f32(a.r, b.r)); }
  static Mask ne(VecNeon a, VecNeon b) { return bits_of(vmvnq_u32(vceqq_f32(a.r, b.r))); }
  static Mask nonfinite(VecNeon a) {
    const float32x4_t d = vsubq_f32(a.r, a.r);  // NaN exactly for NaN and +-inf
    return bits_of(vmvnq_u32(vceqq_f32(d, d)));
  }
  static VecNeon select(Mask m, VecNeon a, VecNeon b) { return {vbslq_f32(mask_vec(m), a.r, b.r)}; }
  static VecNeon fma_masked(VecNeon a, VecNeon b, VecNeon acc, Mask m) {
    return select(m, fma(a, b, acc), acc);
  }
  static std::uint64_t bits(Mask m) { return m & 0xFu; }
  static Mask first_n(int n) { return n >= 4 ? 0xFu : (1u << (n < 0 ? 0 : n)) - 1u; }
  /// (l0 + l2) + (l1 + l3): the tree of reduce_many.
  float reduce_sum() const {
    const float32x2_t s2 = vadd_f32(vget_low_f32(r), vget_high_f32(r));
    return vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1);
  }
  float reduce_max() const { return vmaxvq_f32(r); }
  /// Lane i of the result = the sum of the 4 lanes of acc[i], by reduce_sum's tree.
  static VecNeon reduce_many(const VecNeon* a) {
    float out[4];
    for (int i = 0; i < 4; ++i) out[i] = a[i].reduce_sum();
    return {vld1q_f32(out)};
  }
};

}  // namespace toptheta::detail

#endif  // TOPTHETA_COMPILE_NEON
