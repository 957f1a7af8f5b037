#pragma once
/// \file detail/simd.hpp
/// The two inner loops of attention, with an AVX2+FMA path (chosen at compile time) and a
/// portable one:
/// - `dot_group`: the G dot products of one key row with the G queries of a KV group, sharing
///   each load of the key;
/// - `accumulate_rows`: out += sum_u w_u * row_u over a short list of rows, with the output
///   block held in registers while the rows stream through.
/// Summation order is fixed by the code, never by the thread count.

#include <cstdint>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TOPTHETA_SIMD_AVX2 1
#endif

#include "../types.hpp"

namespace toptheta::detail {

#if defined(TOPTHETA_SIMD_AVX2)
inline float hsum8(__m256 v) {
  const __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  __m128 s = _mm_add_ps(lo, hi);
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

/// max_i a[i] (a holds no NaN), -inf for n = 0.
inline float max_value(const float* a, Index n) {
  float m = -std::numeric_limits<float>::infinity();
  Index i = 0;
#if defined(TOPTHETA_SIMD_AVX2)
  if (n >= 16) {
    __m256 m0 = _mm256_set1_ps(m), m1 = m0;
    for (; i + 16 <= n; i += 16) {
      m0 = _mm256_max_ps(m0, _mm256_loadu_ps(a + i));
      m1 = _mm256_max_ps(m1, _mm256_loadu_ps(a + i + 8));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_max_ps(m0, m1));
    for (float x : lanes) m = x > m ? x : m;
  }
#endif
  for (; i < n; ++i) m = a[i] > m ? a[i] : m;
  return m;
}
inline double max_value(const double* a, Index n) {
  double m = -std::numeric_limits<double>::infinity();
  for (Index i = 0; i < n; ++i) m = a[i] > m ? a[i] : m;
  return m;
}

/// Writes the indices j < n with a[j] > theta (strict) to out, ascending; returns the count.
/// Blocks of 8 without a survivor cost one compare and one branch.
inline Index indices_above(const float* a, Index n, float theta, std::int32_t* out) {
  Index c = 0, j = 0;
#if defined(TOPTHETA_SIMD_AVX2)
  const __m256 tv = _mm256_set1_ps(theta);
  for (; j + 8 <= n; j += 8) {
    unsigned mask = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(a + j), tv, _CMP_GT_OQ)));
    while (mask) {
      out[c++] = static_cast<std::int32_t>(j + __builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
#endif
  for (; j < n; ++j) {
    out[c] = static_cast<std::int32_t>(j);
    c += a[j] > theta;
  }
  return c;
}
inline Index indices_above(const double* a, Index n, double theta, std::int32_t* out) {
  Index c = 0;
  for (Index j = 0; j < n; ++j) {
    out[c] = static_cast<std::int32_t>(j);
    c += a[j] > theta;
  }
  return c;
}

/// Prefetches the cache lines of a row of n elements into L2 (no-op where unsupported).
template <class T>
inline void prefetch_row(const T* row, Index n) {
#if defined(__GNUC__) || defined(__clang__)
  const char* p = reinterpret_cast<const char*>(row);
  const Index bytes = n * Index(sizeof(T));
  for (Index off = 0; off < bytes; off += 64) __builtin_prefetch(p + off, 0, 2);
#else
  (void)row;
  (void)n;
#endif
}

/// out[h] = sum_i q[h * d + i] * k[i] for h < G (q: G rows of d, contiguous).
inline void dot_group(const float* TOPTHETA_RESTRICT q, Index G, const float* TOPTHETA_RESTRICT k,
                      Index d, float* TOPTHETA_RESTRICT out) {
#if defined(TOPTHETA_SIMD_AVX2)
  if (d % 8 == 0) {
    Index h = 0;
    for (; h + 4 <= G; h += 4) {
      const float* q0 = q + h * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (Index i = 0; i < d; i += 8) {
        const __m256 kv = _mm256_loadu_ps(k + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), kv, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d + i), kv, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 2 * d + i), kv, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + 3 * d + i), kv, a3);
      }
      out[h] = hsum8(a0);
      out[h + 1] = hsum8(a1);
      out[h + 2] = hsum8(a2);
      out[h + 3] = hsum8(a3);
    }
    for (; h < G; ++h) {
      const float* q0 = q + h * d;
      __m256 a0 = _mm256_setzero_ps();
      for (Index i = 0; i < d; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + i), _mm256_loadu_ps(k + i), a0);
      out[h] = hsum8(a0);
    }
    return;
  }
#endif
  for (Index h = 0; h < G; ++h) {
    const float* q0 = q + h * d;
    float lane[8] = {};
    Index i = 0;
    for (; i + 8 <= d; i += 8)
      for (Index l = 0; l < 8; ++l) lane[l] += q0[i + l] * k[i + l];
    float tail = 0;
    for (; i < d; ++i) tail += q0[i] * k[i];
    out[h] = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7])) +
             tail;
  }
}

inline void dot_group(const double* TOPTHETA_RESTRICT q, Index G,
                      const double* TOPTHETA_RESTRICT k, Index d, double* TOPTHETA_RESTRICT out) {
  for (Index h = 0; h < G; ++h) {
    const double* q0 = q + h * d;
    double lane[4] = {};
    Index i = 0;
    for (; i + 4 <= d; i += 4)
      for (Index l = 0; l < 4; ++l) lane[l] += q0[i + l] * k[i + l];
    double tail = 0;
    for (; i < d; ++i) tail += q0[i] * k[i];
    out[h] = (lane[0] + lane[2]) + (lane[1] + lane[3]) + tail;
  }
}

/// out[0..d) += sum_{u < n} w[u * w_stride] * rows[u][0..d), rows with zero weight skipped.
inline void accumulate_rows(float* TOPTHETA_RESTRICT out, const float* const* rows,
                            const float* w, Index w_stride, Index n, Index d) {
  Index i0 = 0;
#if defined(TOPTHETA_SIMD_AVX2)
  for (; i0 + 64 <= d; i0 += 64) {  // 8 accumulators = 64 floats in registers
    __m256 acc[8];
    for (int b = 0; b < 8; ++b) acc[b] = _mm256_loadu_ps(out + i0 + 8 * b);
    for (Index u = 0; u < n; ++u) {
      const float wu = w[u * w_stride];
      if (wu == 0.f) continue;
      const __m256 wv = _mm256_set1_ps(wu);
      const float* r = rows[u] + i0;
      for (int b = 0; b < 8; ++b) acc[b] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(r + 8 * b), acc[b]);
    }
    for (int b = 0; b < 8; ++b) _mm256_storeu_ps(out + i0 + 8 * b, acc[b]);
  }
  for (; i0 + 8 <= d; i0 += 8) {
    __m256 acc = _mm256_loadu_ps(out + i0);
    for (Index u = 0; u < n; ++u) {
      const float wu = w[u * w_stride];
      if (wu == 0.f) continue;
      acc = _mm256_fmadd_ps(_mm256_set1_ps(wu), _mm256_loadu_ps(rows[u] + i0), acc);
    }
    _mm256_storeu_ps(out + i0, acc);
  }
#endif
  if (i0 < d)
    for (Index u = 0; u < n; ++u) {
      const float wu = w[u * w_stride];
      if (wu == 0.f) continue;
      for (Index i = i0; i < d; ++i) out[i] += wu * rows[u][i];
    }
}

inline void accumulate_rows(double* TOPTHETA_RESTRICT out, const double* const* rows,
                            const double* w, Index w_stride, Index n, Index d) {
  for (Index u = 0; u < n; ++u) {
    const double wu = w[u * w_stride];
    if (wu == 0.0) continue;
    for (Index i = 0; i < d; ++i) out[i] += wu * rows[u][i];
  }
}

}  // namespace toptheta::detail
