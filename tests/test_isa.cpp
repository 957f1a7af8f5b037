// SIMD paths (detail/isa.hpp): every path this machine runs, forced per call with
// AttentionOptions::isa, matches the oracle for every mode, and a path that is not compiled or
// not supported is an error naming it (never a silent fallback). The full kernel suites also run
// once per path through the TOPTHETA_ISA environment variable (tests/CMakeLists.txt).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/detail/isa.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

std::vector<Isa> supported_paths() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

TEST(Isa, ScalarIsAlwaysThereAndBestIsSupported) {
  EXPECT_TRUE(isa_compiled(Isa::kScalar));
  EXPECT_TRUE(isa_supported(Isa::kScalar));
  EXPECT_TRUE(isa_supported(best_isa()));
  Isa got = Isa::kAuto;
  ASSERT_TRUE(resolve_isa(Isa::kScalar, &got).ok());
  EXPECT_EQ(got, Isa::kScalar);
  std::printf("paths this machine runs:");
  for (Isa i : supported_paths()) std::printf(" %s", to_string(i));
  std::printf(" (best: %s)\n", to_string(best_isa()));
}

TEST(Isa, UnavailablePathIsAnErrorNamingIt) {
  for (Isa i : {Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (isa_supported(i)) continue;
    Isa got = Isa::kAuto;
    const Status s = resolve_isa(i, &got);
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.to_string();
    EXPECT_NE(s.message().find(to_string(i)), std::string::npos) << s.message();
    // And through the entry points: nothing is written.
    ProblemSpec sp;
    sp.P = 9;
    auto p = make_problem<float>(sp);
    AttentionOptions o;
    o.isa = i;
    EXPECT_EQ(decode(p.args(), o).code(), StatusCode::kFailedPrecondition);
    EXPECT_EQ(workspace_size(p.args(), o), 0u);
    EXPECT_TRUE(p.out_padding_intact());
  }
}

template <class T>
void check_paths(bool prefill_call) {
  for (AttentionMode mode : {AttentionMode::kDense, AttentionMode::kTopK, AttentionMode::kTopTheta})
    for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
      for (Index d : {Index(5), Index(64), Index(100)}) {
        ProblemSpec sp;
        sp.T = prefill_call ? 21 : 1;
        sp.P = 70;
        sp.Hq = 8;
        sp.Hkv = 2;
        sp.d = d;
        sp.discrete = mode == AttentionMode::kTopK;
        sp.scale = sp.discrete ? pow2_scale(d) : 0.0;
        sp.q_sigma = 2.0;
        sp.seed = std::uint64_t(d * 7 + int(mode) * 3 + int(pl));
        auto p = make_problem<T>(sp);
        p.set_vsum();
        Rng rng(sp.seed);
        ThetaPlan plan;
        plan.with_sdc = true;
        const ThresholdTable table = make_margin_table(p, pl, 8, plan, rng);
        AttentionOptions o;
        o.mode = mode;
        o.k = 8;
        o.placement = pl;
        o.sdc = pl == Placement::kPreSoftmax ? SdcMode::kExact : SdcMode::kNone;
        o.vmc = VmcMode::kOn;
        o.thresholds = &table;
        const reference::Result ref = [&] {
          reference::ReferenceOptions ro;
          ro.prefill_call = prefill_call;
          return reference::attention(p.args(), o, ro);
        }();
        ASSERT_TRUE(ref.status.ok());
        const double tol = output_tolerance<T>(p.length(), problem_score_error(p) + 1e-6,
                                               p.max_abs_v());
        for (Isa isa : supported_paths()) {
          SCOPED_TRACE(std::string(to_string(isa)) + " " + to_string(mode) + " " + to_string(pl) +
                       " d=" + std::to_string(d) + (prefill_call ? " prefill" : " decode"));
          o.isa = isa;
          AttentionStats st;
          st.enable_per_head(sp.Hq);
          o.stats = &st;
          p.clear_out();
          const Status s = prefill_call ? prefill(p.args(), o) : decode(p.args(), o);
          ASSERT_TRUE(s.ok()) << s.to_string();
          EXPECT_TRUE(outputs_close(ref, p.out.view, tol));
          EXPECT_TRUE(stats_equal(ref.stats, st));
          o.stats = nullptr;
        }
      }
}

template <class T>
class IsaPaths : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(IsaPaths, StorageTypes);

TYPED_TEST(IsaPaths, DecodeMatchesTheOracleOnEveryPath) { check_paths<TypeParam>(false); }
TYPED_TEST(IsaPaths, PrefillMatchesTheOracleOnEveryPath) { check_paths<TypeParam>(true); }

}  // namespace
