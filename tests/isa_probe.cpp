// Prints the SIMD paths this build compiles and this CPU runs, one name per line
// (tests/CMakeLists.txt runs it at configure time to register the per-path test runs).
#include <cstdio>

#include "toptheta/detail/isa.hpp"

int main() {
  using toptheta::Isa;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon})
    if (toptheta::isa_supported(i)) std::printf("%s\n", toptheta::to_string(i));
  return 0;
}
