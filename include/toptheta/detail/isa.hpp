#pragma once
/// \file detail/isa.hpp
/// Instruction sets, configured once for the whole library (in the spirit of Eigen's
/// `ConfigureVectorization.h`): which SIMD paths this build compiles, which one the CPU runs,
/// and how to force one.
///
/// **Compiled paths.** On x86-64 with GCC or Clang every translation unit compiles the scalar,
/// AVX2 (+FMA, F16C) and AVX-512 (F, BW, DQ, VL) paths, whatever `-m` flags it uses: the SIMD
/// functions carry `__attribute__((target(...)))`, so a consumer building with plain `-O2` gets
/// the same kernels as a `-march=native` build. On AArch64 the NEON path is compiled (NEON is
/// part of the base architecture). Elsewhere, or with MSVC, only the scalar path. Define
/// `TOPTHETA_DISABLE_AVX512`, `TOPTHETA_DISABLE_AVX2`, `TOPTHETA_DISABLE_NEON` (or
/// `TOPTHETA_DISABLE_SIMD` for all of them) before including any toptheta header to leave paths
/// out.
///
/// **Chosen path.** The fastest compiled path the CPU supports (CPUID and OS register state,
/// through `__builtin_cpu_supports`), detected once per process. `AttentionOptions::isa` forces
/// a path per call; the environment variable `TOPTHETA_ISA` (`scalar`, `avx2`, `avx512`, `neon`)
/// sets the default for the process. Asking for a path that is not compiled or not supported by
/// the CPU is an error (`StatusCode::kFailedPrecondition`), never a silent fallback.
///
/// Results are bit-identical for any thread count on one path; different paths round
/// differently (vector widths change summation orders) and agree within the tolerances of
/// docs/semantics.md.

#include <cstdlib>
#include <cstring>
#include <string>

#include "../options.hpp"
#include "../status.hpp"

#if !defined(TOPTHETA_DISABLE_SIMD) && (defined(__x86_64__) || defined(_M_X64)) && \
    (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/// The x86 paths' kernels are scheduled for a generic x86-64 core whatever -mtune the consumer
/// compiles with, so that a -march=native build runs the same kernel code as a plain -O2 one.
/// Measured with GCC 12 on the benchmark machine (AMD EPYC, which GCC 12 takes for znver3):
/// f32 dense decode, L = 16k, 1 thread, 7.1-7.5 ms with -march=native's znver3 tuning against
/// 6.4-6.6 ms with generic tuning (the portable build's). GCC only: clang 14 rejects "tune="
/// in a target attribute (and would then ignore the whole attribute).
#if defined(__clang__)
#define TOPTHETA_TUNE ""
#else
#define TOPTHETA_TUNE ",tune=generic"
#endif
#if !defined(TOPTHETA_DISABLE_AVX2)
#define TOPTHETA_COMPILE_AVX2 1
/// Attribute of every function of the AVX2 path.
#define TOPTHETA_ATTR_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt" TOPTHETA_TUNE)))
#endif
#if !defined(TOPTHETA_DISABLE_AVX512)
#define TOPTHETA_COMPILE_AVX512 1
/// Attribute of every function of the AVX-512 path.
#define TOPTHETA_ATTR_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2,popcnt" TOPTHETA_TUNE)))
#endif
#endif

#if !defined(TOPTHETA_DISABLE_SIMD) && !defined(TOPTHETA_DISABLE_NEON) && defined(__aarch64__) && \
    defined(__ARM_NEON)
#include <arm_neon.h>
#define TOPTHETA_COMPILE_NEON 1
#endif

/// Keeps a kernel out of line. Measured: f32 dense decode (L = 16k, 1 thread, -O3
/// -march=native, where the target attributes allow inlining) ran 8.0 ms with dot_rows /
/// accumulate_rows inlined into the walk against 7.3 ms out of line: inlined, the walk's own
/// values compete for the vector registers and the FMA loop spills.
#if defined(__GNUC__) || defined(__clang__)
#define TOPTHETA_NOINLINE __attribute__((noinline))
#else
#define TOPTHETA_NOINLINE
#endif

/// Full unrolling of a loop with a compile-time trip count (the register-blocked SIMD kernels):
/// GCC at -O2 leaves such loops rolled and their accumulators in memory otherwise.
#if defined(__clang__)
#define TOPTHETA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define TOPTHETA_UNROLL _Pragma("GCC unroll 64")
#else
#define TOPTHETA_UNROLL
#endif

#if defined(TOPTHETA_COMPILE_AVX2)
#include <cpuid.h>
#endif

namespace toptheta {

namespace detail {
#if defined(TOPTHETA_COMPILE_AVX2)
/// CPUID leaf 1, ECX bit 29 (F16C); Clang's __builtin_cpu_supports does not know "f16c".
inline bool cpu_has_f16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c >> 29) & 1u;
}
#endif
}  // namespace detail

/// True when this build compiled the path `isa` (kAuto: always).
constexpr bool isa_compiled(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar: return true;
    case Isa::kAvx2:
#if defined(TOPTHETA_COMPILE_AVX2)
      return true;
#else
      return false;
#endif
    case Isa::kAvx512:
#if defined(TOPTHETA_COMPILE_AVX512)
      return true;
#else
      return false;
#endif
    case Isa::kNeon:
#if defined(TOPTHETA_COMPILE_NEON)
      return true;
#else
      return false;
#endif
  }
  return false;
}

/// True when the path is compiled and this CPU (and operating system) can run it.
inline bool isa_supported(Isa isa) {
  if (!isa_compiled(isa)) return false;
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar:
    case Isa::kNeon: return true;
    case Isa::kAvx2:
#if defined(TOPTHETA_COMPILE_AVX2)
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             detail::cpu_has_f16c() && __builtin_cpu_supports("bmi2");
#else
      return false;
#endif
    case Isa::kAvx512:
#if defined(TOPTHETA_COMPILE_AVX512)
      __builtin_cpu_init();
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl");
#else
      return false;
#endif
  }
  return false;
}

/// The fastest path this build compiled and this CPU runs (detected once).
inline Isa best_isa() {
  static const Isa best = [] {
    for (Isa i : {Isa::kAvx512, Isa::kAvx2, Isa::kNeon})
      if (isa_supported(i)) return i;
    return Isa::kScalar;
  }();
  return best;
}

/// The path the kernels use for `requested`: kAuto means the process default (the environment
/// variable TOPTHETA_ISA when set, else best_isa()). Returns kFailedPrecondition naming the
/// path when it is not compiled or not supported here, kInvalidArgument for a bad TOPTHETA_ISA.
inline Status resolve_isa(Isa requested, Isa* out) {
  TOPTHETA_RETURN_IF_ERROR(detail::check_enum(requested, "isa"));
  Isa want = requested;
  if (want == Isa::kAuto) {
    static const std::string env = [] {
      const char* e = std::getenv("TOPTHETA_ISA");
      return std::string(e ? e : "");
    }();
    if (env.empty() || env == "auto") {
      *out = best_isa();
      return {};
    }
    if (!parse(env, want) || want == Isa::kAuto)
      return Status::invalid_argument("TOPTHETA_ISA='" + env + "' is not one of " +
                                      names_list<Isa>());
  }
  if (!isa_compiled(want))
    return Status::failed_precondition(std::string("the ") + to_string(want) +
                                       " path is not compiled in this build");
  if (!isa_supported(want))
    return Status::failed_precondition(std::string("this CPU cannot run the ") +
                                       to_string(want) + " path");
  *out = want;
  return {};
}

}  // namespace toptheta
