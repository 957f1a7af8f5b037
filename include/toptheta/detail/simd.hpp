#pragma once
/// \file detail/simd.hpp
/// The SIMD primitives of every compiled instruction-set path and the dispatch between them.
///
/// `simd_kernels.inl` is compiled once per path into `toptheta::detail::<path>::Ops`
/// (`scalar`, `avx2`, `avx512`, `neon`; next to the path's one-lane vector type, `VecOneLane` of
/// `vec_one_lane.inl`), each a set of static functions: dot products of key
/// rows with a GQA group, weighted sums of value rows, row max / exp / threshold compaction, and
/// the prefill tile kernels. `with_ops(isa, f)` calls `f(Ops{})` with the path's Ops; the
/// kernels above (kernels/) are templates over Ops, so each path is one instantiation and a
/// call decides the path once.

#include <cstdint>
#include <cstring>
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
#define TT_VEC VecOneLane<float, kBuildTargetsFma>
#define TT_VEC_D VecOneLane<double, kBuildTargetsFma>
#define TT_ISA Isa::kScalar
#include "vec_one_lane.inl"
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_VEC_D
#undef TT_ISA
}  // namespace scalar

#if defined(TOPTHETA_COMPILE_AVX2)
namespace avx2 {
#define TT_ATTR TOPTHETA_ATTR_AVX2 inline
#define TT_VEC VecAvx2
#define TT_VEC_D VecOneLane<double, true>
#define TT_ISA Isa::kAvx2
#include "vec_one_lane.inl"
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_VEC_D
#undef TT_ISA
}  // namespace avx2
#endif

#if defined(TOPTHETA_COMPILE_AVX512)
namespace avx512 {
#define TT_ATTR TOPTHETA_ATTR_AVX512 inline
#define TT_VEC VecAvx512
#define TT_VEC_D VecOneLane<double, true>
#define TT_ISA Isa::kAvx512
#include "vec_one_lane.inl"
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_VEC_D
#undef TT_ISA
}  // namespace avx512
#endif

#if defined(TOPTHETA_COMPILE_NEON)
namespace neon {
#define TT_ATTR inline
#define TT_VEC VecNeon
#define TT_VEC_D VecOneLane<double, true>
#define TT_ISA Isa::kNeon
#include "vec_one_lane.inl"
#include "simd_kernels.inl"
#undef TT_ATTR
#undef TT_VEC
#undef TT_VEC_D
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

/// The innermost cache level a software prefetch asks to fill (a CPU may ignore the hint).
enum class PrefetchTo {
  kL2,  ///< L2 and the outer levels: prefetcht1 / prfm pldl2keep (the default)
  kL1,  ///< L1 and the outer levels: prefetcht0 / prfm pldl1keep
};

/// Prefetches the cache line holding address p into the level `to` and the levels beyond it.
///
/// An `asm volatile` statement where the compiler supports it, not `__builtin_prefetch`: GCC
/// gives the builtin no side effects, so at -O2 a function whose only work is prefetching (the
/// decode walk's per-token prefetch loop, before it is inlined) is classified pure and every
/// call to it is deleted as dead code (measured with GCC 12 -O2: the decode walk lost all its
/// prefetches in a consumer build and ran f16 dense decode at 5.6 ms against 3.7 ms for -O3).
/// A volatile asm statement is never removed.
inline void prefetch_line(const void* p, PrefetchTo to = PrefetchTo::kL2) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  if (to == PrefetchTo::kL1) __asm__ volatile("prefetcht0 (%0)" : : "r"(p));
  else __asm__ volatile("prefetcht1 (%0)" : : "r"(p));
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
  if (to == PrefetchTo::kL1) __asm__ volatile("prfm pldl1keep, [%0]" : : "r"(p));
  else __asm__ volatile("prfm pldl2keep, [%0]" : : "r"(p));
#elif defined(__GNUC__) || defined(__clang__)
  if (to == PrefetchTo::kL1) __builtin_prefetch(p, 0, 3);
  else __builtin_prefetch(p, 0, 2);
#else
  (void)p;
  (void)to;
#endif
}

/// Prefetches every cache line of the bytes [p, p + bytes) (64-byte lines, the first one aligned
/// down so that a row that straddles lines has all of them requested). One line per loop trip:
/// measured against four per trip on the decode walks (f16 and f32, L = 16k), the back-to-back
/// form ran up to 1.4x slower, as if requests issued in a burst were dropped. The cache level is
/// tested once, outside the loop: at -O2 (a consumer's plain build) GCC kept the test in every
/// trip (a compare and a conditional jump per line, plus a jump per prefetcht0 line), and the
/// prefetch-bound f32 walks ran slower than the -O3 build's unswitched loop, most on the
/// head-major (prefetcht0) walks (Zen 3, L = 16k, Top-θ f32 head-major, 1 thread, the binaries
/// alternating, ranges over rounds: -O2 7.95-12.8 ms before, 7.75-9.24 after, -O3 6.2-9.1; perf
/// put the difference in the walk's prefetches: 48% of the -O2 samples against 33% at -O3).
/// scripts/check_prefetch_loops.py checks the loop's shape.
inline void prefetch_bytes(const void* p, Index bytes, PrefetchTo to = PrefetchTo::kL2) {
  if (bytes <= 0) return;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + std::uintptr_t(bytes);
  const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(63);
  if (to == PrefetchTo::kL1) {
    for (std::uintptr_t a = first; a < end; a += 64)
      prefetch_line(reinterpret_cast<const void*>(a), PrefetchTo::kL1);
  } else {
    for (std::uintptr_t a = first; a < end; a += 64)
      prefetch_line(reinterpret_cast<const void*>(a), PrefetchTo::kL2);
  }
}

/// Prefetches the cache lines of a row of n elements.
template <class T>
inline void prefetch_row(const T* row, Index n, PrefetchTo to = PrefetchTo::kL2) {
  prefetch_bytes(row, n * Index(sizeof(T)), to);
}

}  // namespace toptheta::detail
