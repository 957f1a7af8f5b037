// Force-included (g++ -include) into toptheta's OWN targets by cmake/TopthetaWarnings.cmake when
// the compiler is GCC older than 13. Never installed, never seen by consumers.
//
// GCC 12's AVX-512 intrinsics build their don't-care operands with `__m512 __Y = __Y;`
// (_mm512_undefined_ps() and friends), and once inlined into Eigen's AVX-512 packet code with
// -march=native they trigger "'__Y' may be used uninitialized [-Wmaybe-uninitialized]" hundreds of
// times per build, even though <immintrin.h> is a system header (GCC bug 105593, fixed in GCC 13).
// Including <immintrin.h> once with that warning disabled silences exactly those locations: GCC's
// diagnostic pragmas apply to source locations, so -Wmaybe-uninitialized stays on for our code.
#ifndef TOPTHETA_CMAKE_COMPAT_GCC_PR105593_IMMINTRIN_H
#define TOPTHETA_CMAKE_COMPAT_GCC_PR105593_IMMINTRIN_H
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif
#endif
