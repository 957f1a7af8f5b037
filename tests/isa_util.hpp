#pragma once
// Runs a test body once per SIMD path this build compiled and this CPU runs (scalar always).

#include <gtest/gtest.h>

#include "toptheta/detail/simd.hpp"

namespace toptheta::testing {

/// Calls f(Ops{}) for every supported path, with a trace naming the path.
template <class F>
void for_each_isa(F&& f) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (!isa_supported(isa)) continue;
    SCOPED_TRACE(std::string("isa ") + to_string(isa));
    detail::with_ops(isa, f);
  }
}

}  // namespace toptheta::testing
