#pragma once
/// \file detail/simd.hpp
/// The SIMD primitives of every compiled instruction-set path and the dispatch between them.
///
/// `simd_kernels.inl` is compiled once per path into `toptheta::detail::<path>::Ops`
/// (`scalar`, `avx2`, `avx512`, `neon`), each a set of static functions: dot products of key
/// rows with a GQA group, weighted sums of value rows, row max / exp / threshold compaction, and
/// the prefill tile kernels. `with_ops(isa, f)` calls `f(Ops{})` with the path's Ops; the
/// kernels above (kernels/) are templates over Ops, so each path is one instantiation and a
/// call decides the path once.

#include <cstdint>
#include <limits>
#include <type_traits>

#include "../types.hpp"
#include "isa.hpp"
#include "vec_scalar.hpp"
#if defined(TOPTHETA_COMPILE_AVX2)
#include "vec_avx2.hpp"
#endif
#if defined(TOPTHETA_COMPILE_AVX512)
#include "vec_avx512.hpp"
#endif
#if defined(TOPTHETA_COMPILE_NEON)
#include "vec_neon.hpp"
#endif

namespace toptheta::detail {

/// True for vector types with a fast q8_0 load (`load_q8(block, offset)`).
template <class V, class = void>
struct HasLoadQ8 : std::false_type {};
template <class V>
struct HasLoadQ8<V, std::void_t<decltype(V::load_q8(static_cast<const BlockQ8_0*>(nullptr), 0))>>
    : std::true_type {};

namespace scalar {
#define TT_ATTR inline
#define TT_VEC VecScalar<float>
#define TT_ISA Isa::kScalar
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_ISA
}  // namespace scalar

#if defined(TOPTHETA_COMPILE_AVX2)
namespace avx2 {
#define TT_ATTR TOPTHETA_ATTR_AVX2 inline
#define TT_VEC VecAvx2
#define TT_ISA Isa::kAvx2
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_ISA
}  // namespace avx2
#endif

#if defined(TOPTHETA_COMPILE_AVX512)
namespace avx512 {
#define TT_ATTR TOPTHETA_ATTR_AVX512 inline
#define TT_VEC VecAvx512
#define TT_ISA Isa::kAvx512
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_ISA
}  // namespace avx512
#endif

#if defined(TOPTHETA_COMPILE_NEON)
namespace neon {
#define TT_ATTR inline
#define TT_VEC VecNeon
#define TT_ISA Isa::kNeon
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_ISA
}  // namespace neon
#endif

/// Calls f(Ops{}) with the Ops of `isa` (a resolved path: not kAuto). Paths that are not
/// compiled fall to scalar (resolve_isa never returns them).
template <class F>
decltype(auto) with_ops(Isa isa, F&& f) {
  switch (isa) {
#if defined(TOPTHETA_COMPILE_AVX512)
    case Isa::kAvx512: return f(avx512::Ops{});
#endif
#if defined(TOPTHETA_COMPILE_AVX2)
    case Isa::kAvx2: return f(avx2::Ops{});
#endif
#if defined(TOPTHETA_COMPILE_NEON)
    case Isa::kNeon: return f(neon::Ops{});
#endif
    default: return f(scalar::Ops{});
  }
}

/// Prefetches the cache lines of a row of n elements (no-op where unsupported).
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

}  // namespace toptheta::detail
