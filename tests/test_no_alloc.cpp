// No allocation in the hot path once a workspace is given (semantics §11; attention.hpp): the global
// operator new / new[] are replaced by counting versions (tests/counting_allocator.hpp) and the
// count must not change across decode(args, opt, ws) / prefill(args, opt, ws) calls, for every
// mode and variant and every storage type, with a preallocated statistics object (per-head
// counters enabled), threshold table and calibrator.
//
// Warm-up: the first call of each configuration runs before counting. OpenMP may allocate when
// it first creates a thread team, and the calibrator sizes its per-length accumulators the first
// time it sees a length (constant memory per (layer, head, L), not per row).

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "counting_allocator.hpp"
#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

template <class T>
void no_alloc_all_modes(bool prefill_call) {
  ProblemSpec sp;
  sp.T = prefill_call ? 70 : 1;  // prefill: several query blocks
  sp.P = prefill_call ? 30 : 99;
  sp.Hq = 8;
  sp.Hkv = 2;
  sp.d = 64;
  sp.seed = 5;
  Problem<T> p = make_problem<T>(sp);
  p.set_vsum(prefill_call);
  const AttentionArgs<T> args_with_sum = p.args();
  auto args_without_sum = args_with_sum;
  args_without_sum.v_sum = nullptr;
  Rng rng(6);
  ThetaPlan plan;
  plan.with_sdc = true;
  const ThresholdTable pre_table = make_margin_table(p, Placement::kPreSoftmax, 8, plan, rng, 1);
  const ThresholdTable post_table = make_margin_table(p, Placement::kPostSoftmax, 8, plan, rng, 1);
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = sp.Hq;
  co.default_k = 8;
  Calibrator cal_pre(co);
  co.placement = Placement::kPostSoftmax;
  co.tac = TacMode::kOff;
  Calibrator cal_post(co);
  AttentionStats stats;
  stats.enable_per_head(sp.Hq);

  std::vector<AttentionOptions> variants;
  for (AttentionMode mode : {AttentionMode::kDense, AttentionMode::kTopK, AttentionMode::kTopTheta,
                             AttentionMode::kCalibrate})
    for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
      for (SdcMode sdc :
           {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated})
        for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn})
          for (EmptyRowPolicy er : {EmptyRowPolicy::kKeepMax, EmptyRowPolicy::kMeanV}) {
            if (sdc == SdcMode::kCalibrated && mode != AttentionMode::kTopTheta) continue;
            // Only Top-theta has empty rows; the other modes run with the default policy.
            if (er == EmptyRowPolicy::kMeanV && mode != AttentionMode::kTopTheta) continue;
            AttentionOptions o;
            o.mode = mode;
            o.k = 8;
            o.placement = pl;
            o.sdc = sdc;
            o.vmc = vmc;
            o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
            o.empty_row = er;
            o.cap_k = vmc == VmcMode::kOn ? 3 : 0;
            o.thresholds = pl == Placement::kPreSoftmax ? &pre_table : &post_table;
            o.calibrator = pl == Placement::kPreSoftmax ? &cal_pre : &cal_post;
            o.stats = &stats;
            variants.push_back(o);
          }
  // One workspace for all variants (sized for the largest), allocated before counting.
  std::size_t max_bytes = 0;
  for (int threads : {1, 0})
    for (AttentionOptions o : variants) {
      o.threads = threads;
      max_bytes = std::max(
          {max_bytes, workspace_size(args_with_sum, o), workspace_size(args_without_sum, o)});
    }
  WorkspaceBuffer ws(max_bytes);
  const AttentionArgs<T>* arg_list[] = {&args_with_sum, &args_without_sum};
  for (int threads : {1, 0}) {
    for (std::size_t vi = 0; vi < variants.size(); ++vi) {
      // The OpenMP path (threads = 0) on every third variant keeps the runtime down; the
      // single-threaded path on all of them.
      if (threads == 0 && vi % 3 != 0) continue;
      AttentionOptions o = variants[vi];
      o.threads = threads;
      for (const AttentionArgs<T>* args : arg_list) {
        const std::size_t bytes = workspace_size(*args, o);
        ASSERT_GT(bytes, 0u);
        auto call = [&] {
          return prefill_call ? prefill(*args, o, ws.get(bytes)) : decode(*args, o, ws.get(bytes));
        };
        ASSERT_TRUE(call().ok());  // warm-up
        const long long before = allocation_count();
        bool ok = true;
        for (int r = 0; r < 2; ++r) ok = call().ok() && ok;
        const long long allocated = allocation_count() - before;
        ASSERT_TRUE(ok);
        EXPECT_EQ(allocated, 0) << (prefill_call ? "prefill " : "decode ") << dtype_name<T>() << " "
                                << to_string(o.mode) << " " << to_string(o.placement) << " sdc "
                                << to_string(o.sdc) << " vmc " << (o.vmc == VmcMode::kOn) << " "
                                << to_string(o.empty_row) << " threads " << threads
                                << (args->v_sum ? " with v_sum" : " without v_sum");
      }
    }
  }
  EXPECT_GT(stats.rows, 0u);
}

template <class T>
class NoAlloc : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(NoAlloc, StorageTypes);

TYPED_TEST(NoAlloc, Decode) { no_alloc_all_modes<TypeParam>(false); }
TYPED_TEST(NoAlloc, Prefill) { no_alloc_all_modes<TypeParam>(true); }

// The counter works (guards against a silently inactive replacement).
TEST(NoAllocCounter, CountsAllocations) {
  const long long before = allocation_count();
  auto* v = new std::vector<int>(100);
  delete v;
  EXPECT_GE(allocation_count() - before, 2);
}

// workspace_size() is enough, for any thread count, and the call fails cleanly (no allocation
// fallback) when the workspace is too small.
TEST(NoAllocWorkspace, ExactSizeWorksTooSmallFails) {
  ProblemSpec sp;
  sp.T = 40;
  sp.P = 10;
  sp.Hq = 4;
  sp.Hkv = 1;
  sp.d = 8;
  Problem<float> p = make_problem<float>(sp);
  for (int threads : {1, 2, 3}) {
    AttentionOptions o;
    o.mode = AttentionMode::kTopK;
    o.k = 4;
    o.vmc = VmcMode::kOn;
    o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
    o.threads = threads;
    const std::size_t bytes = workspace_size(p.args(), o);
    WorkspaceBuffer ws(bytes);
    EXPECT_TRUE(prefill(p.args(), o, ws.get(bytes)).ok());
    const long long before = allocation_count();
    const Status s = prefill(p.args(), o, ws.get(bytes / 2));
    const long long allocated = allocation_count() - before;
    EXPECT_FALSE(s.ok());
    // Building the error message may allocate; nothing else may (no silent fallback buffer):
    EXPECT_LE(allocated, 8);
  }
}

}  // namespace
