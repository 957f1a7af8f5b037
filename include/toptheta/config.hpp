#pragma once
/// \file config.hpp
/// Build configuration: assertion macro, OpenMP detection, statistics switch.
///
/// - `TOPTHETA_ASSERT(cond, msg)` checks programmer errors (violated preconditions that no user
///   data can cause). Define it before including any toptheta header to route failures into your
///   own handler. It is compiled out when `NDEBUG` is defined, unless `TOPTHETA_ENABLE_ASSERTS`
///   is defined.
/// - `TOPTHETA_NO_STATS`: define to compile out statistics collection in the kernels.
/// - OpenMP is used when the translation unit is compiled with it (`_OPENMP`); otherwise the
///   kernels run on the calling thread. Results are bit-identical for any thread count.

#include <cstdio>
#include <cstdlib>

/// \def TOPTHETA_ASSERT(cond, msg)
/// Checks a programmer error: when `cond` is false, prints file, line, `cond` and `msg` to stderr
/// and aborts. Compiled out under NDEBUG unless TOPTHETA_ENABLE_ASSERTS is defined; define it
/// yourself before the first toptheta include to use your own handler.

/// \def TOPTHETA_HAS_OPENMP
/// 1 when the translation unit is compiled with OpenMP (`_OPENMP`): the kernels split their
/// work over `AttentionOptions::threads` threads; 0 otherwise (the calling thread only).

/// \def TOPTHETA_RESTRICT
/// The compiler's `restrict` qualifier (`__restrict__` on GCC and Clang, nothing elsewhere).

/// \def TOPTHETA_LIKELY(x)
/// Branch hint: `x` is usually true (`__builtin_expect` on GCC and Clang).

/// \def TOPTHETA_UNLIKELY(x)
/// Branch hint: `x` is usually false (`__builtin_expect` on GCC and Clang).

#ifndef TOPTHETA_ASSERT
#if defined(NDEBUG) && !defined(TOPTHETA_ENABLE_ASSERTS)
#define TOPTHETA_ASSERT(cond, msg) ((void)0)
#else
#define TOPTHETA_ASSERT(cond, msg)                                                        \
  ((cond) ? (void)0                                                                      \
          : (std::fprintf(stderr, "%s:%d: toptheta assertion failed: %s (%s)\n", __FILE__, \
                          __LINE__, #cond, msg),                                         \
             std::abort()))
#endif
#endif

#if defined(_OPENMP)
#include <omp.h>
#define TOPTHETA_HAS_OPENMP 1
#else
#define TOPTHETA_HAS_OPENMP 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define TOPTHETA_RESTRICT __restrict__
#define TOPTHETA_LIKELY(x) __builtin_expect(!!(x), 1)
#define TOPTHETA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TOPTHETA_RESTRICT
#define TOPTHETA_LIKELY(x) (x)
#define TOPTHETA_UNLIKELY(x) (x)
#endif

namespace toptheta {

/// Number of worker threads the kernels use when `requested` is 0 (OpenMP default, or 1).
inline int resolve_threads(int requested) {
  if (requested > 0) return TOPTHETA_HAS_OPENMP ? requested : 1;
#if TOPTHETA_HAS_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace toptheta
