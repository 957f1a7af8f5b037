#pragma once
/// \file detail/vexp.hpp
/// Vectorisable exp over rows: out[i] = exp(s[i] - m).
///
/// float: Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2, and a degree-6 minimax
/// polynomial for e^r (Cephes expf coefficients), scaled by 2^n through the exponent bits.
/// Relative error below 2 ulp over the whole range; x < -87.3 (including -inf) gives 0 and
/// x > 88.7 saturates at FLT_MAX scale. No branches, so GCC/Clang vectorise the loop without
/// -ffast-math. double falls back to std::exp.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TOPTHETA_VEXP_AVX2 1
#endif

#include "../types.hpp"

namespace toptheta::detail {

inline float exp_poly(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to nearest integer
  const float xc = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  const float t = xc * kLog2e + kRound;
  const float n = t - kRound;
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t ni = static_cast<std::int32_t>(n);
  const std::int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return x < -87.3f ? 0.0f : y;
}

#if defined(TOPTHETA_VEXP_AVX2)
/// Eight lanes of exp_poly (same maths, fused multiply-adds).
inline __m256 exp_poly8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.7f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
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
  const __m256i bits = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  return _mm256_and_ps(y, _mm256_cmp_ps(x, lo, _CMP_GE_OQ));  // x < -87.3 or NaN -> 0
}
#endif

/// out[i] = exp(s[i] - m), 0 for s[i] = -inf; all 0 when m = -inf. Returns sum_i out[i].
inline float exp_shifted_row(const float* TOPTHETA_RESTRICT s, Index n, float m,
                             float* TOPTHETA_RESTRICT out) {
  if (m == -std::numeric_limits<float>::infinity()) {
    for (Index i = 0; i < n; ++i) out[i] = 0.f;
    return 0.f;
  }
#if defined(TOPTHETA_VEXP_AVX2)
  const __m256 mv = _mm256_set1_ps(m);
  Index j = 0;
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(out + j, exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv)));
  if (j < n) {  // tail through the same vector code, so every element gets identical maths
    alignas(32) float buf[8];
    for (Index l = 0; l < 8; ++l) buf[l] = j + l < n ? s[j + l] : m;
    _mm256_store_ps(buf, exp_poly8(_mm256_sub_ps(_mm256_load_ps(buf), mv)));
    for (Index l = 0; j + l < n; ++l) out[j + l] = buf[l];
  }
#else
  for (Index i = 0; i < n; ++i) out[i] = exp_poly(s[i] - m);
#endif
  float lane[16] = {};
  Index i = 0;
  for (; i + 16 <= n; i += 16)
    for (Index l = 0; l < 16; ++l) lane[l] += out[i + l];
  for (Index l = 0; i < n; ++i, ++l) lane[l & 15] += out[i];
  for (Index w = 8; w > 0; w /= 2)
    for (Index l = 0; l < w; ++l) lane[l] += lane[l + w];
  return lane[0];
}

inline double exp_shifted_row(const double* s, Index n, double m, double* out) {
  double z = 0;
  for (Index i = 0; i < n; ++i) {
    out[i] = m == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(s[i] - m);
    z += out[i];
  }
  return z;
}

}  // namespace toptheta::detail
