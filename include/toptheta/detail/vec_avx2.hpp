#pragma once
/// \file detail/vec_avx2.hpp
/// Eight float lanes with AVX2 + FMA + F16C, every member compiled with TOPTHETA_ATTR_AVX2
/// (detail/isa.hpp) so that it works whatever the translation unit's -m flags are.

#include "isa.hpp"

#if defined(TOPTHETA_COMPILE_AVX2)

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "../types.hpp"

namespace toptheta::detail {

#define TT_A TOPTHETA_ATTR_AVX2 inline

struct VecAvx2 {
  /// True when a masked fused multiply-add costs what a plain one does.
  static constexpr bool kFreeMaskedFma = false;
  static constexpr int W = 8;
  /// Architectural vector registers the path's kernels can use: their register blocking keeps
  /// accumulators and operands within it (the prefill tiles of simd_kernels.inl).
  static constexpr int kRegisters = 16;  // ymm0-15
  using Mask = std::uint32_t;  ///< bit i: lane i
  __m256 r;

  TT_A static VecAvx2 zero() { return {_mm256_setzero_ps()}; }
  TT_A static VecAvx2 set1(float x) { return {_mm256_set1_ps(x)}; }
  TT_A static VecAvx2 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  TT_A static __m256i lane_mask(int n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
  }
  /// Lanes [0, n) from p, zero above (nothing is read above n).
  TT_A static VecAvx2 load_n(const float* p, int n) {
    return {_mm256_maskload_ps(p, lane_mask(n))};
  }
  template <class T>
  TT_A static VecAvx2 load_cvt(const T* p) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return {_mm256_loadu_ps(p)};
    } else if constexpr (std::is_same_v<U, Eigen::half>) {
      return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
    } else {
      static_assert(std::is_same_v<U, Eigen::bfloat16>, "float, half or bfloat16 storage");
      const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
    }
  }
  template <class T>
  TT_A static VecAvx2 load_cvt_n(const T* p, int n) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return load_n(p, n);
    } else {
      // Whole pairs of 16-bit values by a masked 32-bit load, an odd last value blended in:
      // nothing is read at or above n, and no copy through memory (GCC made the former
      // element-wise copy to a buffer a memcpy call, around which a kernel spills every live
      // vector: d = 100 dot products ran 1.7x the per-byte time of d = 128).
      const std::uint16_t* s = reinterpret_cast<const std::uint16_t*>(p);
      const __m128i pairs = _mm_cmpgt_epi32(_mm_set1_epi32(n / 2), _mm_setr_epi32(0, 1, 2, 3));
      __m128i w = _mm_maskload_epi32(reinterpret_cast<const int*>(s), pairs);
      if (n & 1) {
        const __m128i lane = _mm_cmpeq_epi16(_mm_set1_epi16(short(n - 1)),
                                             _mm_setr_epi16(0, 1, 2, 3, 4, 5, 6, 7));
        w = _mm_blendv_epi8(w, _mm_set1_epi16(short(s[n - 1])), lane);
      }
      if constexpr (std::is_same_v<U, Eigen::half>) {
        return {_mm256_cvtph_ps(w)};
      } else {
        static_assert(std::is_same_v<U, Eigen::bfloat16>, "float, half or bfloat16 storage");
        return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(w), 16))};
      }
    }
  }
  /// The 16 bits of an fp16 value. std::memcpy, which GCC expands in place in any function:
  /// Eigen::numext::bit_cast is a plain inline function, and GCC does not inline a function into
  /// one whose target attribute sets other options than the build's own: the kernels' attribute
  /// sets tune=generic (TOPTHETA_TUNE, isa.hpp), and -march=native tunes for the build machine.
  /// The out-of-line call made the q8_0 kernels spill every accumulator around it (native
  /// build: q8_0 dense decode 2.4-2.6x slower than f16 on half the bytes).
  TT_A static std::uint16_t half_bits(Eigen::half h) {
    std::uint16_t bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
  }
  /// Values [o, o + 8) of a q8_0 block (o a multiple of 8): d * qs.
  TT_A static VecAvx2 load_q8(const BlockQ8_0* b, int o) {
    const __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b->qs + o)));
    // The scale converted in every lane at once (F16C; Eigen 3.4's Eigen::half converts in
    // software under GCC: its EIGEN_HAS_FP16_C test never passes there).
    return {_mm256_mul_ps(_mm256_cvtepi32_ps(w), _mm256_cvtph_ps(_mm_set1_epi16(short(half_bits(b->d)))))};
  }
  TT_A void store(float* p) const { _mm256_storeu_ps(p, r); }
  TT_A void store_n(float* p, int n) const { _mm256_maskstore_ps(p, lane_mask(n), r); }
  TT_A friend VecAvx2 operator+(VecAvx2 a, VecAvx2 b) { return {_mm256_add_ps(a.r, b.r)}; }
  TT_A friend VecAvx2 operator-(VecAvx2 a, VecAvx2 b) { return {_mm256_sub_ps(a.r, b.r)}; }
  TT_A friend VecAvx2 operator*(VecAvx2 a, VecAvx2 b) { return {_mm256_mul_ps(a.r, b.r)}; }
  TT_A static VecAvx2 fma(VecAvx2 a, VecAvx2 b, VecAvx2 c) { return {_mm256_fmadd_ps(a.r, b.r, c.r)}; }
  TT_A static VecAvx2 max(VecAvx2 a, VecAvx2 b) { return {_mm256_max_ps(a.r, b.r)}; }
  TT_A static VecAvx2 min(VecAvx2 a, VecAvx2 b) { return {_mm256_min_ps(a.r, b.r)}; }
  /// exp_poly (vec_scalar.hpp) lane by lane, with fused multiply-adds.
  TT_A static VecAvx2 exp(VecAvx2 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x.r, lo), hi);
    const __m256 round = _mm256_set1_ps(12582912.0f);
    const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), round);
    const __m256 n = _mm256_sub_ps(t, round);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i bits =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    return {_mm256_and_ps(y, _mm256_cmp_ps(x.r, lo, _CMP_GE_OQ))};  // x < -87.3 or NaN -> 0
  }
  TT_A static Mask gt(VecAvx2 a, VecAvx2 b) {
    return Mask(_mm256_movemask_ps(_mm256_cmp_ps(a.r, b.r, _CMP_GT_OQ)));
  }
  TT_A static Mask ne(VecAvx2 a, VecAvx2 b) {
    return Mask(_mm256_movemask_ps(_mm256_cmp_ps(a.r, b.r, _CMP_NEQ_UQ)));
  }
  TT_A static Mask nonfinite(VecAvx2 a) {  // x - x is NaN exactly for NaN and +-inf
    const __m256 d = _mm256_sub_ps(a.r, a.r);
    return Mask(_mm256_movemask_ps(_mm256_cmp_ps(d, d, _CMP_UNORD_Q)));
  }
  TT_A static __m256 mask_vec(Mask m) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i v = _mm256_and_si256(_mm256_set1_epi32(int(m)), bit);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, bit));
  }
  TT_A static VecAvx2 select(Mask m, VecAvx2 a, VecAvx2 b) {
    return {_mm256_blendv_ps(b.r, a.r, mask_vec(m))};
  }
  TT_A static VecAvx2 fma_masked(VecAvx2 a, VecAvx2 b, VecAvx2 acc, Mask m) {
    return {_mm256_blendv_ps(acc.r, _mm256_fmadd_ps(a.r, b.r, acc.r), mask_vec(m))};
  }
  TT_A static std::uint64_t bits(Mask m) { return m & 0xFFu; }
  TT_A static Mask first_n(int n) { return n >= 8 ? 0xFFu : (1u << (n < 0 ? 0 : n)) - 1u; }
  /// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)): the tree of reduce_many.
  TT_A float reduce_sum() const {
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
  }
  TT_A float reduce_max() const {
    const __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    const __m128 s2 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_max_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
  }
  /// Lane i of the result = the sum of the 8 lanes of acc[i], by the same tree for every i:
  /// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
  TT_A static VecAvx2 reduce_many(const VecAvx2* a) {
    // Halves: lo128(a_i) + hi128(a_i), two accumulators per register.
    const __m256 b01 = _mm256_add_ps(_mm256_permute2f128_ps(a[0].r, a[1].r, 0x20),
                                     _mm256_permute2f128_ps(a[0].r, a[1].r, 0x31));
    const __m256 b23 = _mm256_add_ps(_mm256_permute2f128_ps(a[2].r, a[3].r, 0x20),
                                     _mm256_permute2f128_ps(a[2].r, a[3].r, 0x31));
    const __m256 b45 = _mm256_add_ps(_mm256_permute2f128_ps(a[4].r, a[5].r, 0x20),
                                     _mm256_permute2f128_ps(a[4].r, a[5].r, 0x31));
    const __m256 b67 = _mm256_add_ps(_mm256_permute2f128_ps(a[6].r, a[7].r, 0x20),
                                     _mm256_permute2f128_ps(a[6].r, a[7].r, 0x31));
    // b01 = [a0: s0 s1 s2 s3 | a1: s0 s1 s2 s3] with s_k = l_k + l_{k+4}.
    // Pairs (s0 + s2), (s1 + s3) per accumulator: shuffle the 64-bit halves of each 128 lane.
    const __m256 c0 = _mm256_add_ps(_mm256_shuffle_ps(b01, b23, 0x44), _mm256_shuffle_ps(b01, b23, 0xEE));
    const __m256 c1 = _mm256_add_ps(_mm256_shuffle_ps(b45, b67, 0x44), _mm256_shuffle_ps(b45, b67, 0xEE));
    // c0 = [a0: t0 t1, a2: t0 t1 | a1: t0 t1, a3: t0 t1] with t0 = s0 + s2, t1 = s1 + s3.
    const __m256 d = _mm256_add_ps(_mm256_shuffle_ps(c0, c1, 0x88), _mm256_shuffle_ps(c0, c1, 0xDD));
    // d = [a0 a2 a4 a6 | a1 a3 a5 a7]: restore the order 0..7.
    return {_mm256_permutevar8x32_ps(d, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))};
  }
};

#undef TT_A

}  // namespace toptheta::detail

#endif  // TOPTHETA_COMPILE_AVX2
