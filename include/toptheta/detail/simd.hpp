#pragma once
/// \file detail/simd.hpp
/// The two inner loops of attention, with an AVX2+FMA path (chosen at compile time) and a
/// portable one:
/// - `dot_group2`: the dot products of one or two key rows with the G queries of a KV group,
///   sharing every load, keys converted from fp16/bf16 in registers;
/// - `score_rows`: a block of query rows against a transposed tile of 16 keys (prefill);
/// - `weighted_rows`: dense rows of weights times V rows (prefill's dense P V);
/// - `accumulate_rows`: out += sum_u w_u * row_u over a short list of rows, with the output
///   block held in registers while the rows stream through.
/// Summation order is fixed by the code, never by the thread count.

#include <cstdint>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TOPTHETA_SIMD_AVX2 1
#endif

#include <type_traits>

#include <Eigen/Core>

#include "../types.hpp"

namespace toptheta::detail {


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

#if defined(TOPTHETA_SIMD_AVX2)
/// Eight consecutive elements of a key row as floats (fp16 via F16C, bf16 via a shift).
template <class T>
inline __m256 load8(const T* p) {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<U, Eigen::half>) {
#if defined(__F16C__)
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else  // AVX2 + FMA without F16C: convert in software
    alignas(32) float f[8];
    for (int i = 0; i < 8; ++i) f[i] = static_cast<float>(p[i]);
    return _mm256_load_ps(f);
#endif
  } else {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
}

/// [sum(a0), ..., sum(a7)]: eight horizontal sums in one register.
inline __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5,
                      __m256 a6, __m256 a7) {
  const __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  const __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  // u0 = [s0 s1 s2 s3 | s0' s1' s2' s3'] (partial sums of the low/high halves of a0..a3).
  const __m256 lo = _mm256_permute2f128_ps(u0, u1, 0x20), hi = _mm256_permute2f128_ps(u0, u1, 0x31);
  return _mm256_add_ps(lo, hi);
}
#endif

/// Dot products of one or two key rows with G query rows, sharing every load:
/// out0[h] = q_h . k0 and, when k1 is not null, out1[h] = q_h . k1 (q: G rows of d floats,
/// contiguous; keys in their storage type, converted in registers).
template <class T>
inline void dot_group2(const float* TOPTHETA_RESTRICT q, Index G, const T* k0, const T* k1,
                       Index d, float* TOPTHETA_RESTRICT out0, float* TOPTHETA_RESTRICT out1) {
#if defined(TOPTHETA_SIMD_AVX2)
  using U = std::remove_const_t<T>;
  constexpr bool kVec = std::is_same_v<U, float> || std::is_same_v<U, Eigen::bfloat16> ||
                        std::is_same_v<U, Eigen::half>;
  if (kVec && d % 8 == 0) {
    const T* k1p = k1 ? k1 : k0;
    Index h = 0;
    for (; h + 4 <= G; h += 4) {
      const float* q0 = q + h * d;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      for (Index i = 0; i < d; i += 8) {
        const __m256 x = load8(k0 + i), y = load8(k1p + i);
        const __m256 v0 = _mm256_loadu_ps(q0 + i), v1 = _mm256_loadu_ps(q0 + d + i);
        const __m256 v2 = _mm256_loadu_ps(q0 + 2 * d + i), v3 = _mm256_loadu_ps(q0 + 3 * d + i);
        a0 = _mm256_fmadd_ps(v0, x, a0);
        a1 = _mm256_fmadd_ps(v1, x, a1);
        a2 = _mm256_fmadd_ps(v2, x, a2);
        a3 = _mm256_fmadd_ps(v3, x, a3);
        b0 = _mm256_fmadd_ps(v0, y, b0);
        b1 = _mm256_fmadd_ps(v1, y, b1);
        b2 = _mm256_fmadd_ps(v2, y, b2);
        b3 = _mm256_fmadd_ps(v3, y, b3);
      }
      alignas(32) float r[8];
      _mm256_store_ps(r, hsum8x8(a0, a1, a2, a3, b0, b1, b2, b3));
      for (int l = 0; l < 4; ++l) out0[h + l] = r[l];
      if (k1)
        for (int l = 0; l < 4; ++l) out1[h + l] = r[4 + l];
    }
    for (; h < G; ++h) {
      const float* q0 = q + h * d;
      __m256 a0 = _mm256_setzero_ps(), b0 = a0;
      for (Index i = 0; i < d; i += 8) {
        const __m256 v0 = _mm256_loadu_ps(q0 + i);
        a0 = _mm256_fmadd_ps(v0, load8(k0 + i), a0);
        b0 = _mm256_fmadd_ps(v0, load8(k1p + i), b0);
      }
      const __m256 z = _mm256_setzero_ps();
      alignas(32) float r[8];
      _mm256_store_ps(r, hsum8x8(a0, b0, z, z, z, z, z, z));
      out0[h] = r[0];
      if (k1) out1[h] = r[1];
    }
    return;
  }
#endif
  for (int which = 0; which < (k1 ? 2 : 1); ++which) {
    const T* k = which ? k1 : k0;
    float* out = which ? out1 : out0;
    for (Index h = 0; h < G; ++h) {
      const float* q0 = q + h * d;
      float lane[8] = {};
      Index i = 0;
      for (; i + 8 <= d; i += 8)
        for (Index l = 0; l < 8; ++l) lane[l] += q0[i + l] * static_cast<float>(k[i + l]);
      float tail = 0;
      for (; i < d; ++i) tail += q0[i] * static_cast<float>(k[i]);
      out[h] = ((lane[0] + lane[4]) + (lane[1] + lane[5])) +
               ((lane[2] + lane[6]) + (lane[3] + lane[7])) + tail;
    }
  }
}

inline void dot_group2(const double* TOPTHETA_RESTRICT q, Index G, const double* k0,
                       const double* k1, Index d, double* TOPTHETA_RESTRICT out0,
                       double* TOPTHETA_RESTRICT out1) {
  for (int which = 0; which < (k1 ? 2 : 1); ++which) {
    const double* k = which ? k1 : k0;
    double* out = which ? out1 : out0;
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
}

/// Keys per score tile of the prefill microkernel.
inline constexpr Index kKeyTile = 16;

/// kt[i * kKeyTile + c] = key c, element i (c < nk; columns nk..15 zero): a transposed key tile.
template <class T, class Acc>
inline void transpose_key_tile(const T* const* keys, Index nk, Index d, Acc* kt) {
  for (Index i = 0; i < d; ++i)
    for (Index c = 0; c < kKeyTile; ++c)
      kt[i * kKeyTile + c] = c < nk ? static_cast<Acc>(static_cast<float>(keys[c][i])) : Acc(0);
}
template <class Acc>
inline void transpose_key_tile(const double* const* keys, Index nk, Index d, Acc* kt) {
  for (Index i = 0; i < d; ++i)
    for (Index c = 0; c < kKeyTile; ++c) kt[i * kKeyTile + c] = c < nk ? keys[c][i] : 0.0;
}

/// out[m * kKeyTile + c] = q_m . key_c for M query rows (stride d) against a transposed key tile:
/// an outer-product microkernel (one key-vector load and one query broadcast feed 2M FMAs).
template <int M>
inline void score_tile(const float* q, const float* kt, Index d, float* out) {
#if defined(TOPTHETA_SIMD_AVX2)
  __m256 acc0[M], acc1[M];
  for (int m = 0; m < M; ++m) acc0[m] = acc1[m] = _mm256_setzero_ps();
  for (Index i = 0; i < d; ++i) {
    const __m256 k0 = _mm256_loadu_ps(kt + i * kKeyTile), k1 = _mm256_loadu_ps(kt + i * kKeyTile + 8);
    for (int m = 0; m < M; ++m) {
      const __m256 qb = _mm256_broadcast_ss(q + m * d + i);
      acc0[m] = _mm256_fmadd_ps(qb, k0, acc0[m]);
      acc1[m] = _mm256_fmadd_ps(qb, k1, acc1[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    _mm256_storeu_ps(out + m * kKeyTile, acc0[m]);
    _mm256_storeu_ps(out + m * kKeyTile + 8, acc1[m]);
  }
#else
  for (int m = 0; m < M; ++m)
    for (Index c = 0; c < kKeyTile; ++c) out[m * kKeyTile + c] = 0.f;
  for (Index i = 0; i < d; ++i)
    for (int m = 0; m < M; ++m)
      for (Index c = 0; c < kKeyTile; ++c)
        out[m * kKeyTile + c] += q[m * d + i] * kt[i * kKeyTile + c];
#endif
}
template <int M>
inline void score_tile(const double* q, const double* kt, Index d, double* out) {
  for (int m = 0; m < M; ++m)
    for (Index c = 0; c < kKeyTile; ++c) out[m * kKeyTile + c] = 0.0;
  for (Index i = 0; i < d; ++i)
    for (int m = 0; m < M; ++m)
      for (Index c = 0; c < kKeyTile; ++c)
        out[m * kKeyTile + c] += q[m * d + i] * kt[i * kKeyTile + c];
}

/// Scores of rows [0, n) (stride d) against a transposed key tile, six rows at a time.
template <class Acc>
inline void score_rows(const Acc* q, Index n, const Acc* kt, Index d, Acc* out) {
  Index m = 0;
  for (; m + 6 <= n; m += 6) score_tile<6>(q + m * d, kt, d, out + m * kKeyTile);
  switch (n - m) {
    case 5: score_tile<5>(q + m * d, kt, d, out + m * kKeyTile); break;
    case 4: score_tile<4>(q + m * d, kt, d, out + m * kKeyTile); break;
    case 3: score_tile<3>(q + m * d, kt, d, out + m * kKeyTile); break;
    case 2: score_tile<2>(q + m * d, kt, d, out + m * kKeyTile); break;
    case 1: score_tile<1>(q + m * d, kt, d, out + m * kKeyTile); break;
    default: break;
  }
}

/// outs[m][c0, c0 + 16) += sum_{j < nj} w[m][j] * rows[j][c0, c0 + 16) for M output rows:
/// the dense P V product of prefill as an outer-product microkernel (one V load feeds M FMAs).
template <int M>
inline void weighted_rows_tile(const float* const* w, const float* const* rows, Index nj, Index c0,
                               float* const* outs) {
#if defined(TOPTHETA_SIMD_AVX2)
  __m256 acc0[M], acc1[M];
  for (int m = 0; m < M; ++m) {
    acc0[m] = _mm256_loadu_ps(outs[m] + c0);
    acc1[m] = _mm256_loadu_ps(outs[m] + c0 + 8);
  }
  for (Index j = 0; j < nj; ++j) {
    const __m256 v0 = _mm256_loadu_ps(rows[j] + c0), v1 = _mm256_loadu_ps(rows[j] + c0 + 8);
    for (int m = 0; m < M; ++m) {
      const __m256 wb = _mm256_broadcast_ss(w[m] + j);
      acc0[m] = _mm256_fmadd_ps(wb, v0, acc0[m]);
      acc1[m] = _mm256_fmadd_ps(wb, v1, acc1[m]);
    }
  }
  for (int m = 0; m < M; ++m) {
    _mm256_storeu_ps(outs[m] + c0, acc0[m]);
    _mm256_storeu_ps(outs[m] + c0 + 8, acc1[m]);
  }
#else
  for (Index j = 0; j < nj; ++j)
    for (int m = 0; m < M; ++m)
      for (Index c = c0; c < c0 + 16; ++c) outs[m][c] += w[m][j] * rows[j][c];
#endif
}

/// outs[m][0, d) += sum_{j < nj} w[m][j] * rows[j][0, d) for n output rows (any n, any d).
template <class Acc>
inline void weighted_rows(const Acc* const* w, Index n, const Acc* const* rows, Index nj, Index d,
                          Acc* const* outs) {
  Index c0 = 0;
  if constexpr (std::is_same_v<Acc, float>) {
    for (; c0 + 16 <= d; c0 += 16) {
      Index m = 0;
      for (; m + 6 <= n; m += 6) weighted_rows_tile<6>(w + m, rows, nj, c0, outs + m);
      switch (n - m) {
        case 5: weighted_rows_tile<5>(w + m, rows, nj, c0, outs + m); break;
        case 4: weighted_rows_tile<4>(w + m, rows, nj, c0, outs + m); break;
        case 3: weighted_rows_tile<3>(w + m, rows, nj, c0, outs + m); break;
        case 2: weighted_rows_tile<2>(w + m, rows, nj, c0, outs + m); break;
        case 1: weighted_rows_tile<1>(w + m, rows, nj, c0, outs + m); break;
        default: break;
      }
    }
  }
  if (c0 < d)
    for (Index m = 0; m < n; ++m)
      for (Index j = 0; j < nj; ++j)
        for (Index c = c0; c < d; ++c) outs[m][c] += w[m][j] * rows[j][c];
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
