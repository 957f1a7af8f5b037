#pragma once
/// \file detail/vec_avx512.hpp
/// Sixteen float lanes with AVX-512 (F, BW, DQ, VL), every member compiled with
/// TOPTHETA_ATTR_AVX512 (detail/isa.hpp) so that it works whatever the translation unit's -m
/// flags are. Tails use masked loads and stores (nothing outside [0, n) is read or written).

#include "isa.hpp"

#if defined(TOPTHETA_COMPILE_AVX512)

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <Eigen/Core>

#include "../types.hpp"

namespace toptheta::detail {

#define TT_A TOPTHETA_ATTR_AVX512 inline

struct VecAvx512 {
  /// True when a masked fused multiply-add costs what a plain one does.
  static constexpr bool kFreeMaskedFma = true;
  static constexpr int W = 16;
  /// Architectural vector registers the path's kernels can use: their register blocking keeps
  /// accumulators and operands within it (the prefill tiles of simd_kernels.inl).
  static constexpr int kRegisters = 32;  // zmm0-31
  using Mask = __mmask16;
  __m512 r;

  TT_A static VecAvx512 zero() { return {_mm512_setzero_ps()}; }
  TT_A static VecAvx512 set1(float x) { return {_mm512_set1_ps(x)}; }
  TT_A static VecAvx512 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  TT_A static Mask first_n(int n) {
    return n >= 16 ? Mask(0xFFFF) : Mask((1u << (n < 0 ? 0 : n)) - 1u);
  }
  TT_A static VecAvx512 load_n(const float* p, int n) {
    return {_mm512_maskz_loadu_ps(first_n(n), p)};
  }
  template <class T>
  TT_A static VecAvx512 load_cvt(const T* p) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return {_mm512_loadu_ps(p)};
    } else if constexpr (std::is_same_v<U, Eigen::half>) {
      return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
    } else {
      static_assert(std::is_same_v<U, Eigen::bfloat16>, "float, half or bfloat16 storage");
      const __m512i w =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
    }
  }
  template <class T>
  TT_A static VecAvx512 load_cvt_n(const T* p, int n) {
    using U = std::remove_const_t<T>;
    if constexpr (std::is_same_v<U, float>) {
      return load_n(p, n);
    } else if constexpr (std::is_same_v<U, Eigen::half>) {
      return {_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_n(n), p))};
    } else {
      static_assert(std::is_same_v<U, Eigen::bfloat16>, "float, half or bfloat16 storage");
      const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(first_n(n), p));
      return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
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
  /// Values [o, o + 16) of a q8_0 block (o = 0 or 16): d * qs.
  TT_A static VecAvx512 load_q8(const BlockQ8_0* b, int o) {
    const __m512i w = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b->qs + o)));
    // The scale converted in every lane at once (F16C; Eigen 3.4's Eigen::half converts in
    // software under GCC: its EIGEN_HAS_FP16_C test never passes there).
    return {_mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_cvtph_ps(_mm256_set1_epi16(short(half_bits(b->d)))))};
  }
  TT_A void store(float* p) const { _mm512_storeu_ps(p, r); }
  TT_A void store_n(float* p, int n) const { _mm512_mask_storeu_ps(p, first_n(n), r); }
  TT_A friend VecAvx512 operator+(VecAvx512 a, VecAvx512 b) { return {_mm512_add_ps(a.r, b.r)}; }
  TT_A friend VecAvx512 operator-(VecAvx512 a, VecAvx512 b) { return {_mm512_sub_ps(a.r, b.r)}; }
  TT_A friend VecAvx512 operator*(VecAvx512 a, VecAvx512 b) { return {_mm512_mul_ps(a.r, b.r)}; }
  TT_A static VecAvx512 fma(VecAvx512 a, VecAvx512 b, VecAvx512 c) {
    return {_mm512_fmadd_ps(a.r, b.r, c.r)};
  }
  TT_A static VecAvx512 max(VecAvx512 a, VecAvx512 b) { return {_mm512_max_ps(a.r, b.r)}; }
  TT_A static VecAvx512 min(VecAvx512 a, VecAvx512 b) { return {_mm512_min_ps(a.r, b.r)}; }
  /// exp_poly (vec_scalar.hpp) lane by lane, with fused multiply-adds.
  TT_A static VecAvx512 exp(VecAvx512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.7f);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x.r, lo), hi);
    const __m512 round = _mm512_set1_ps(12582912.0f);
    const __m512 t = _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), round);
    const __m512 n = _mm512_sub_ps(t, round);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    const __m512i bits =
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    const __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
    // x < -87.3 or NaN -> 0
    return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.r, lo, _CMP_GE_OQ), y)};
  }
  TT_A static Mask gt(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.r, b.r, _CMP_GT_OQ); }
  TT_A static Mask ne(VecAvx512 a, VecAvx512 b) { return _mm512_cmp_ps_mask(a.r, b.r, _CMP_NEQ_UQ); }
  TT_A static Mask nonfinite(VecAvx512 a) { return _mm512_fpclass_ps_mask(a.r, 0x99); }
  TT_A static VecAvx512 select(Mask m, VecAvx512 a, VecAvx512 b) {
    return {_mm512_mask_blend_ps(m, b.r, a.r)};
  }
  TT_A static VecAvx512 fma_masked(VecAvx512 a, VecAvx512 b, VecAvx512 acc, Mask m) {
    return {_mm512_mask3_fmadd_ps(a.r, b.r, acc.r, m)};
  }
  TT_A static std::uint64_t bits(Mask m) { return std::uint64_t(m); }
  /// (((l0 + l8) + (l4 + l12)) + ((l2 + l10) + (l6 + l14))) + (same with odd lanes): the tree
  /// of reduce_many.
  TT_A float reduce_sum() const {
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(r), _mm512_extractf32x8_ps(r, 1));
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
  }
  TT_A float reduce_max() const {
    const __m256 s8 = _mm256_max_ps(_mm512_castps512_ps256(r), _mm512_extractf32x8_ps(r, 1));
    const __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_max_ss(s2, _mm_shuffle_ps(s2, s2, 0x55));
    return _mm_cvtss_f32(s1);
  }
  /// Lane i of the result = the sum of the 16 lanes of acc[i], by reduce_sum's tree for every i.
  TT_A static VecAvx512 reduce_many(const VecAvx512* a) {
    __m512 b[8], c[4], d[2];
    TOPTHETA_UNROLL
    for (int i = 0; i < 8; ++i)  // 256-bit halves: [a_2i: s8 | a_2i+1: s8]
      b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i].r, a[2 * i + 1].r, 0x44),
                           _mm512_shuffle_f32x4(a[2 * i].r, a[2 * i + 1].r, 0xEE));
    TOPTHETA_UNROLL
    for (int j = 0; j < 4; ++j)  // 128-bit halves: [a_4j | a_4j+1 | a_4j+2 | a_4j+3] s4 each
      c[j] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0x88),
                           _mm512_shuffle_f32x4(b[2 * j], b[2 * j + 1], 0xDD));
    TOPTHETA_UNROLL
    for (int j = 0; j < 2; ++j)  // 64-bit halves: lane q = [a_q s2 | a_q+4 s2] (of c pair j)
      d[j] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * j], c[2 * j + 1], 0x44),
                           _mm512_shuffle_ps(c[2 * j], c[2 * j + 1], 0xEE));
    // Lane q: [a_q, a_q+4, a_q+8, a_q+12] totals.
    const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88),
                                   _mm512_shuffle_ps(d[0], d[1], 0xDD));
    const __m512i idx =
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return {_mm512_permutexvar_ps(idx, e)};
  }
};

#undef TT_A

}  // namespace toptheta::detail

#endif  // TOPTHETA_COMPILE_AVX512
