// Results are bit-identical for threads = 1, 2, 3 (semantics §11; attention.hpp): outputs (memcmp of
// every element), statistics and calibrated tables, for every mode, decode and prefill (several
// query blocks and KV groups so that work items really spread over threads), every storage type.
// Skipped when the tests are built without OpenMP (the kernels then ignore `threads`).

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

template <class T>
void threads_bit_identical(bool prefill_call, bool packed_head_major = false) {
  using Acc = acc_t<T>;
#if !TOPTHETA_HAS_OPENMP
  GTEST_SKIP() << "built without OpenMP: the kernels run on the calling thread";
#endif
  ProblemSpec sp;
  sp.T = prefill_call ? 130 : 1;
  sp.P = prefill_call ? 300 : 1023;  // prefill: several query blocks per KV group
  sp.Hq = 8;
  sp.Hkv = 4;
  sp.d = 64;
  sp.seed = 9;
  sp.layout = prefill_call || packed_head_major ? Layout::kHeadMajor : Layout::kTokenMajor;
  sp.packed_kv = packed_head_major;
  Problem<T> p = make_problem<T>(sp);
  const auto args = p.args();
  Rng rng(10);
  ThetaPlan plan;
  plan.with_sdc = true;
  plan.target_hi = 40;
  const ThresholdTable table = make_margin_table(p, Placement::kPreSoftmax, 16, plan, rng, 1);
  const ThresholdTable post_table = make_margin_table(p, Placement::kPostSoftmax, 16, plan, rng, 1);
  struct Variant {
    AttentionMode mode;
    Placement pl;
    SdcMode sdc;
    VmcMode vmc;
    EmptyRowPolicy er;
  };
  const Variant variants[] = {
      {AttentionMode::kDense, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOff,
       EmptyRowPolicy::kKeepMax},
      {AttentionMode::kTopK, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOff,
       EmptyRowPolicy::kKeepMax},
      {AttentionMode::kTopK, Placement::kPostSoftmax, SdcMode::kNone, VmcMode::kOn,
       EmptyRowPolicy::kKeepMax},
      {AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kExact, VmcMode::kOn,
       EmptyRowPolicy::kKeepMax},
      {AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kCalibrated, VmcMode::kOn,
       EmptyRowPolicy::kMeanV},
      {AttentionMode::kTopTheta, Placement::kPostSoftmax, SdcMode::kNone, VmcMode::kOn,
       EmptyRowPolicy::kMeanV},
      {AttentionMode::kCalibrate, Placement::kPreSoftmax, SdcMode::kExpThreshold, VmcMode::kOn,
       EmptyRowPolicy::kKeepMax},
      {AttentionMode::kCalibrate, Placement::kPostSoftmax, SdcMode::kNone, VmcMode::kOff,
       EmptyRowPolicy::kKeepMax},
  };
  for (const Variant& v : variants) {
    std::vector<Acc> first;
    AttentionStats first_stats;
    ThresholdTable first_table;
    for (int threads : {1, 2, 3}) {
      CalibrationOptions co;
      co.num_layers = 1;
      co.num_heads = sp.Hq;
      co.default_k = 16;
      co.placement = v.pl;
      co.sample_fraction = 0.7;  // sampling must not depend on the thread schedule either
      co.seed = 3;
      Calibrator cal(co);
      AttentionStats st;
      st.enable_per_head(sp.Hq);
      AttentionOptions o;
      o.mode = v.mode;
      o.k = 16;
      o.placement = v.pl;
      o.sdc = v.sdc;
      o.vmc = v.vmc;
      o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
      o.empty_row = v.er;
      o.thresholds = v.pl == Placement::kPreSoftmax ? &table : &post_table;
      o.calibrator = &cal;
      o.stats = &st;
      o.threads = threads;
      p.clear_out();
      const Status s = prefill_call ? prefill(args, o) : decode(args, o);
      ASSERT_TRUE(s.ok()) << s.to_string();
      const std::vector<Acc> out = snapshot(p.out.view);
      const std::string what = std::string(to_string(v.mode)) + " " + to_string(v.pl) + " sdc " +
                               to_string(v.sdc) + (prefill_call ? " prefill" : " decode") +
                               " threads " + std::to_string(threads);
      if (threads == 1) {
        first = out;
        first_stats = st;
        first_table = cal.finalize();
        continue;
      }
      ASSERT_EQ(out.size(), first.size());
      EXPECT_EQ(std::memcmp(out.data(), first.data(), out.size() * sizeof(Acc)), 0)
          << what << ": outputs differ";
      EXPECT_TRUE(stats_equal(first_stats, st)) << what;
      if (v.mode == AttentionMode::kCalibrate) {
        const ThresholdTable tab = cal.finalize();
        EXPECT_GT(tab.size(), 0u);
        EXPECT_TRUE(same_tables(first_table, tab)) << what << ": calibrated tables differ";
      }
    }
  }
}

template <class T>
class Threads : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
// The empty third argument (name generator) keeps clang's -Wpedantic quiet: a variadic macro
// called without any argument for '...' is a GNU extension before C++20.
TYPED_TEST_SUITE(Threads, StorageTypes, );

TYPED_TEST(Threads, DecodeBitIdentical) { threads_bit_identical<TypeParam>(false); }
// Unpadded head-major K / V: the two-pass decode runs one task per KV group when the thread
// count divides Hkv (1, 2 threads here) and chunk tasks otherwise (3 threads).
TYPED_TEST(Threads, DecodeBitIdenticalPackedHeadMajor) {
  threads_bit_identical<TypeParam>(false, true);
}
TYPED_TEST(Threads, PrefillBitIdentical) { threads_bit_identical<TypeParam>(true); }

}  // namespace
