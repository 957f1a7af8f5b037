// Non-finite values that carry zero weight never reach an output (docs/semantics.md,
// "Non-finite values"). For every storage type, decode and prefill, every mode and placement
// (and each SDC / VMC / empty-row setting of Top-theta), NaN, +Inf and -Inf are injected into
//  - K and V rows of keys masked by a -inf bias (for every row of the call), and
//  - V rows that no query head of the KV group keeps in any row of the call (selection),
// and the output must be bit-identical to the run with finite values there, and match the
// oracle on the injected input. V rows enter the V mean of VMC / mean-V by definition, so in
// those configurations the caller's running V sum (computed from the finite values) covers them:
// the kernel must then not read them either. Also the handed case `prefill_masked_nan_v`.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/kv_cache.hpp"
#include "toptheta/reference/attention.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

struct Config {
  AttentionMode mode;
  Placement placement;
  SdcMode sdc = SdcMode::kNone;
  VmcMode vmc = VmcMode::kOff;
  EmptyRowPolicy empty = EmptyRowPolicy::kKeepMax;
};

std::string name(const Config& c) {
  return std::string(to_string(c.mode)) + "/" + to_string(c.placement) + "/sdc-" +
         to_string(c.sdc) + (c.vmc == VmcMode::kOn ? "/vmc" : "") + "/" + to_string(c.empty);
}

std::vector<Config> configs() {
  std::vector<Config> cs;
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    cs.push_back({AttentionMode::kDense, pl});
    cs.push_back({AttentionMode::kCalibrate, pl});
    for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn}) {
      cs.push_back({AttentionMode::kTopK, pl, SdcMode::kExact, vmc});
      for (SdcMode sdc :
           {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated})
        for (EmptyRowPolicy er : {EmptyRowPolicy::kKeepMax, EmptyRowPolicy::kMeanV}) {
          if (pl == Placement::kPostSoftmax && sdc != SdcMode::kNone) continue;
          cs.push_back({AttentionMode::kTopTheta, pl, sdc, vmc, er});
        }
    }
  }
  return cs;
}

template <class T>
T nonfinite(int which) {
  const float v[3] = {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()};
  return static_cast<T>(v[which % 3]);
}

template <class T>
void run_case(bool prefill_call, const Config& c, std::uint64_t seed) {
  using Acc = acc_t<T>;
  SCOPED_TRACE(std::string(dtype_name<T>()) + (prefill_call ? " prefill " : " decode ") + name(c) +
               " seed " + std::to_string(seed));
  ProblemSpec sp;
  sp.T = prefill_call ? 12 : 1;
  sp.P = prefill_call ? 36 : 59;
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 16;
  sp.q_sigma = 2.0;
  sp.layout = seed % 2 ? Layout::kHeadMajor : Layout::kTokenMajor;
  sp.seed = seed;
  Problem<T> p = make_problem<T>(sp);
  const Index L = p.length(), P = sp.P;
  // Masked columns: every 7th key, and one of the new tokens (a future key for earlier rows).
  std::set<Index> masked;
  for (Index j = 3; j < L; j += 7) masked.insert(j);
  masked.insert(L - 2);
  p.set_bias([&](Index, Index j) {
    return masked.count(j) ? -std::numeric_limits<float>::infinity() : 0.0f;
  });
  const bool uses_vbar =
      c.mode != AttentionMode::kDense &&
      (c.vmc == VmcMode::kOn || c.empty == EmptyRowPolicy::kMeanV);
  if (uses_vbar) p.set_vsum(prefill_call);  // from the finite values

  Rng rng(seed * 7 + 1);
  ThetaPlan plan;
  plan.with_sdc = true;
  plan.target_hi = 12;
  const Index k = 6;
  const ThresholdTable table = make_margin_table(p, c.placement, k, plan, rng);
  CalibrationOptions co;
  co.num_layers = 2;
  co.num_heads = sp.Hq;
  co.default_k = k;
  co.placement = c.placement;
  AttentionOptions o;
  o.mode = c.mode;
  o.k = k;
  o.placement = c.placement;
  o.sdc = c.sdc;
  o.vmc = c.vmc;
  // The running sum of the finite values (set_vsum above) when a V mean is used.
  o.vbar = uses_vbar ? VbarSource::kRunningSum : VbarSource::kSumCache;
  o.empty_row = c.empty;
  o.thresholds = &table;

  auto run = [&](Calibrator& cal) {
    o.calibrator = &cal;
    p.clear_out();
    const auto args = p.args();
    WorkspaceBuffer ws(workspace_size(args, o));
    const Status st = prefill_call ? prefill(args, o, ws.get()) : decode(args, o, ws.get());
    EXPECT_TRUE(st.ok()) << st.to_string();
    return snapshot(p.out.view);
  };
  Calibrator cal_clean(co), cal_injected(co);
  const std::vector<Acc> clean = run(cal_clean);
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const reference::Result ref_clean = reference::attention(p.args(), o, ro);
  ASSERT_TRUE(ref_clean.status.ok());

  // Zero-weight V rows per KV group: kept by no head of the group in any row of the call.
  std::vector<std::vector<bool>> read(2, std::vector<bool>(std::size_t(L), false));
  for (Index t = 0; t < sp.T; ++t)
    for (Index h = 0; h < sp.Hq; ++h)
      for (std::int32_t j : ref_clean.row(t, h).kept) read[std::size_t(h / 2)][std::size_t(j)] = true;
  // With a V mean the running sum must cover the injected rows: it covers the rows before the
  // new tokens, 0..P-1 (the kernel adds the new rows itself).
  const Index v_limit = uses_vbar ? P : L;
  int which = 0, injected_v = 0;
  for (Index j = 0; j < L; ++j)
    for (Index g = 0; g < sp.Hkv; ++g) {
      if (masked.count(j))
        for (Index i = 0; i < sp.d; ++i) p.k.view(j, g, i) = nonfinite<T>(which++);
      const bool zero_weight = masked.count(j) || !read[std::size_t(g)][std::size_t(j)];
      if (zero_weight && j < v_limit) {
        for (Index i = 0; i < sp.d; ++i) p.v.view(j, g, i) = nonfinite<T>(which++);
        ++injected_v;
      }
    }
  ASSERT_GT(injected_v, 0);
  const std::vector<Acc> injected = run(cal_injected);
  ASSERT_EQ(clean.size(), injected.size());
  for (std::size_t i = 0; i < clean.size(); ++i) {
    ASSERT_TRUE(std::isfinite(double(injected[i]))) << "element " << i << " is non-finite";
    ASSERT_EQ(std::memcmp(&clean[i], &injected[i], sizeof(Acc)), 0)
        << "element " << i << ": " << clean[i] << " (finite inputs) vs " << injected[i];
  }
  const reference::Result ref = reference::attention(p.args(), o, ro);
  ASSERT_TRUE(ref.status.ok());
  for (double x : ref.out) ASSERT_TRUE(std::isfinite(x)) << "the oracle lets a NaN through";
  for (std::size_t i = 0; i < ref.out.size(); ++i)
    ASSERT_EQ(ref.out[i], ref_clean.out[i]) << "oracle element " << i;
  const double tol = output_tolerance<T>(L, problem_score_error(p) + 1e-6, p.max_abs_v()) + 1e-5;
  EXPECT_TRUE(outputs_close(ref, p.out.view, tol));
}

template <class T>
class NonFinite : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(NonFinite, StorageTypes);

TYPED_TEST(NonFinite, DecodeZeroWeightRowsNeverReachTheOutput) {
  std::uint64_t seed = 1;
  for (const Config& c : configs()) run_case<TypeParam>(false, c, seed++);
}

TYPED_TEST(NonFinite, PrefillZeroWeightRowsNeverReachTheOutput) {
  std::uint64_t seed = 100;
  for (const Config& c : configs()) run_case<TypeParam>(true, c, seed++);
}

// Handed case prefill_masked_nan_v: key 0 masked by a -inf bias, its V row NaN. Decode and
// prefill both give the value of the only unmasked key, 2.
TEST(NonFiniteHanded, PrefillMaskedNanV) {
  float q[1] = {1.f}, k[2] = {1.f, 0.5f}, v[2] = {std::numeric_limits<float>::quiet_NaN(), 2.f};
  float bias[2] = {-std::numeric_limits<float>::infinity(), 0.f};
  for (bool use_prefill : {false, true}) {
    float out[1] = {-1.f};
    AttentionArgs<float> a;
    a.q = HeadsView<const float>::token_major(q, 1, 1, 1);
    a.k = HeadsView<const float>::token_major(k, 2, 1, 1);
    a.v = HeadsView<const float>::token_major(v, 2, 1, 1);
    a.out = HeadsView<float>::token_major(out, 1, 1, 1);
    a.bias = MatrixView<const float>{bias, 1, 2, 2};
    const AttentionOptions o;  // dense
    const Status s = use_prefill ? prefill(a, o) : decode(a, o);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(out[0], 2.f) << (use_prefill ? "prefill" : "decode");
    const reference::Result ref = reference::attention(a, o);
    ASSERT_TRUE(ref.status.ok());
    EXPECT_EQ(ref.out[0], 2.0) << "oracle";
  }
}

// The oracle follows semantics §2 / §7 in the cases where double arithmetic would not (the
// kernels compute in float, §11); each case is by hand, kernel and oracle:
// - a +inf score (bias +inf; a key element +inf) is the largest finite float, so that key takes
//   all the weight (the oracle gave NaN from inf - inf);
// - scores beyond the float range overflow to +inf in the kernels and both become FLT_MAX: equal
//   weights (the oracle, in double, weighed them 0 and 1);
// - a weight whose exponential underflows in float is exactly 0, so its NaN V row is not read
//   (the oracle's double exp(-200) weighed the NaN);
// - pre-softmax Top-θ without SDC renormalises (weights sum to 1 by definition), so VMC's
//   coefficient is 0 and a NaN V row that is dropped stays out of the output through vbar too.
TEST(NonFiniteHanded, OracleSanitizesAndUnderflowsAsTheKernels) {
  const float inf = std::numeric_limits<float>::infinity(),
              nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    const char* name;
    std::vector<float> q, k, v, bias;  // d = 2, L = k.size() / 2
    std::vector<double> want;
    bool toptheta_vmc = false;  // Top-θ pre, SDC none, VMC on, theta 0.5
  };
  const std::vector<Case> cases = {
      {"+inf bias", {1, 0}, {0, 0, 0, 0, 0, 0}, {1, 0, 0, 1, 0, 1}, {inf, 0, 0}, {1, 0}},
      {"+inf key element", {1, 0}, {inf, 0, 0, 0, 0, 0}, {1, 0, 0, 1, 0, 1}, {}, {1, 0}},
      {"scores beyond float", {1e20f, 0}, {1e20f, 0, 2e20f, 0}, {1, 0, 0, 1}, {}, {0.5, 0.5}},
      {"underflowed weight, NaN V", {1, 0}, {0, 0, -200, 0}, {1, 2, nan, inf}, {}, {1, 2}},
      {"NaN V dropped, VMC", {1, 0}, {1, 0, 0, 0, 0, 0}, {1, 0, nan, 0, 0, 1}, {}, {1, 0}, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Index d = 2, L = Index(c.k.size()) / d;
    std::vector<float> out(2, -1.0f);
    AttentionArgs<float> a;
    a.q = HeadsView<const float>::token_major(c.q.data(), 1, 1, d);
    a.k = HeadsView<const float>::token_major(c.k.data(), L, 1, d);
    a.v = HeadsView<const float>::token_major(c.v.data(), L, 1, d);
    a.out = HeadsView<float>::token_major(out.data(), 1, 1, d);
    a.scale = 1.0;
    if (!c.bias.empty()) a.bias = MatrixView<const float>{c.bias.data(), 1, L, L};
    ThresholdTable t(1, 1, 1);
    AttentionOptions o;  // dense
    if (c.toptheta_vmc) {
      ThresholdEntry e;
      e.length = L;
      e.theta = 0.5;  // keeps key 0 (score 1) only
      ASSERT_TRUE(t.set(0, 0, e).ok());
      o.mode = AttentionMode::kTopTheta;
      o.thresholds = &t;
      o.vmc = VmcMode::kOn;
      o.vbar = VbarSource::kSumCache;
    }
    for (bool use_prefill : {false, true}) {
      ASSERT_TRUE((use_prefill ? prefill(a, o) : decode(a, o)).ok());
      for (Index i = 0; i < d; ++i)
        EXPECT_EQ(double(out[std::size_t(i)]), c.want[std::size_t(i)])
            << (use_prefill ? "prefill " : "decode ") << i;
    }
    const reference::Result ref = reference::attention(a, o);
    ASSERT_TRUE(ref.status.ok());
    for (Index i = 0; i < d; ++i)
      EXPECT_NEAR(ref.out[std::size_t(i)], c.want[std::size_t(i)], 1e-12) << "oracle " << i;
  }
}

// A head declared dense in the table (theta = -inf) keeps every unmasked key (pre-softmax) or
// every key (post-softmax), so its weights sum to 1 by definition and VMC's coefficient is 0
// (semantics §6): a NaN V row of a bias-masked key stays out of the output through vbar too, on
// every path, and the output is dense attention's. Before, the coefficient 1 - sum p was 0 only
// up to rounding: the post-softmax row came out NaN on the scalar decode path and finite on the
// others (found by a spec-conformance probe).
TEST(NonFiniteHanded, DenseHeadWithVmcKeepsAMaskedNanVRowOut) {
  const float inf = std::numeric_limits<float>::infinity(),
              nan = std::numeric_limits<float>::quiet_NaN();
  const Index L = 4, d = 2;
  std::vector<float> q{1, 0}, k{1, 0, 0, 0, 2, 0, 0.5f, 0}, v{1, 2, 3, 4, 5, 6, nan, nan};
  std::vector<float> bias{0, 0, 0, -inf}, out(d), dense(d);
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), 1, 1, d);
  a.k = HeadsView<const float>::token_major(k.data(), L, 1, d);
  a.v = HeadsView<const float>::token_major(v.data(), L, 1, d);
  a.bias = MatrixView<const float>{bias.data(), 1, L, L};
  a.scale = 1.0;
  a.out = HeadsView<float>::token_major(dense.data(), 1, 1, d);
  ASSERT_TRUE(decode(a, AttentionOptions{}).ok());
  a.out = HeadsView<float>::token_major(out.data(), 1, 1, d);
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    ThresholdTable t(1, 1, 1);
    t.metadata().placement = pl;
    ASSERT_TRUE(t.set_dense(0, 0).ok());
    for (SdcMode sdc : {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold}) {
      if (pl == Placement::kPostSoftmax && sdc != SdcMode::kNone) continue;
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
        if (!isa_supported(isa)) continue;
        for (bool use_prefill : {false, true}) {
          SCOPED_TRACE(std::string(to_string(pl)) + " sdc " + to_string(sdc) + " " +
                       to_string(isa) + (use_prefill ? " prefill" : " decode"));
          AttentionOptions o;
          o.mode = AttentionMode::kTopTheta;
          o.placement = pl;
          o.thresholds = &t;
          o.sdc = sdc;
          o.vmc = VmcMode::kOn;
          o.vbar = VbarSource::kSumCache;  // vbar holds the NaN row
          o.isa = isa;
          ASSERT_TRUE((use_prefill ? prefill(a, o) : decode(a, o)).ok());
          for (Index i = 0; i < d; ++i)
            EXPECT_NEAR(out[std::size_t(i)], dense[std::size_t(i)], 1e-6) << i;
          const reference::Result ref = reference::attention(a, o);
          ASSERT_TRUE(ref.status.ok());
          for (Index i = 0; i < d; ++i)
            EXPECT_NEAR(ref.out[std::size_t(i)], dense[std::size_t(i)], 1e-6) << "oracle " << i;
        }
      }
    }
  }
}

// The same on rows long enough for the SIMD sums (L = 40 > k = 8, 4 query heads per KV head,
// d = 32, 20 random inputs): the single-pass decode took D~ as the chunk's total minus its kept
// sum, whose vector and sequential roundings differ, so D~ came out non-zero although only the
// masked key was dropped; exact SDC then changed the denominator and VMC added the NaN V mean.
// 18 (AVX2) and 20 (AVX-512) of 80 decode rows were NaN; scalar, prefill and the oracle had none.
TEST(NonFiniteHanded, DenseHeadsOfLongRowsKeepAMaskedNanVRowOut) {
  const Index L = 40, Hq = 4, d = 32;
  const float inf = std::numeric_limits<float>::infinity(),
              nan = std::numeric_limits<float>::quiet_NaN();
  ThresholdTable t(1, Hq, 8);  // pre-softmax, every head declared dense
  for (Index h = 0; h < Hq; ++h) ASSERT_TRUE(t.set_dense(0, h).ok());
  for (int seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng{std::uint32_t(seed)};
    std::normal_distribution<float> nd;
    std::vector<float> q(std::size_t(Hq * d)), k(std::size_t(L * d)), v(std::size_t(L * d));
    for (float& x : q) x = nd(rng);
    for (float& x : k) x = 2 * nd(rng);
    for (float& x : v) x = nd(rng);
    for (Index i = 0; i < d; ++i) v[std::size_t(i)] = nan;  // V row 0, masked by the bias
    std::vector<float> bias(std::size_t(L), 0.0f), out(std::size_t(Hq * d)),
        dense(std::size_t(Hq * d));
    bias[0] = -inf;
    RunningVSum<float> vsum(1, d);
    ASSERT_TRUE(vsum.add(HeadsView<const float>::token_major(v.data(), L - 1, 1, d)).ok());
    AttentionArgs<float> a;
    a.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
    a.k = HeadsView<const float>::token_major(k.data(), L, 1, d);
    a.v = HeadsView<const float>::token_major(v.data(), L, 1, d);
    a.bias = MatrixView<const float>{bias.data(), 1, L, L};
    a.v_sum = vsum.data();
    a.out = HeadsView<float>::token_major(dense.data(), 1, Hq, d);
    ASSERT_TRUE(decode(a, AttentionOptions{}).ok());
    a.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);
    for (SdcMode sdc : {SdcMode::kExact, SdcMode::kExpThreshold}) {
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
        if (!isa_supported(isa)) continue;
        for (bool use_prefill : {false, true}) {
          SCOPED_TRACE("seed " + std::to_string(seed) + " sdc " + to_string(sdc) + " " +
                       to_string(isa) + (use_prefill ? " prefill" : " decode"));
          AttentionOptions o = toptheta_options(t);
          o.sdc = sdc;
          o.isa = isa;
          ASSERT_TRUE((use_prefill ? prefill(a, o) : decode(a, o)).ok());
          for (std::size_t i = 0; i < out.size(); ++i)
            ASSERT_NEAR(out[i], dense[i], 1e-5f * (1 + std::fabs(dense[i]))) << i;
        }
      }
    }
  }
}

// A top-k row with fewer than k unmasked keys keeps masked ones (semantics §9); cap_k keeping the
// most recent kept keys can leave only masked ones. Their weights are all 0 and sum to 0: output
// 0, and with VMC the V mean (coefficient 1), for every SDC mode (semantics §5, §6). The oracle
// renormalised around Mk = -inf and gave NaN (a 200000-configuration differential sweep, seeds
// 1000-3000, found it on every path); the kernels were right.
TEST(NonFiniteHanded, TopKCapKeepingOnlyMaskedKeys) {
  const Index L = 5, d = 2;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> q = {0.3f, -0.2f}, k(std::size_t(L * d)), v(std::size_t(L * d)), out(2);
  for (Index j = 0; j < L; ++j) {
    k[std::size_t(j * d)] = 0.1f * float(j);
    k[std::size_t(j * d + 1)] = -0.05f * float(j);
    v[std::size_t(j * d)] = float(j + 1);
    v[std::size_t(j * d + 1)] = -float(j + 1);
  }
  // Keys 3 and 4 masked: the top 4 are keys 0, 1, 2 and key 3 (-inf, the lower index of the
  // tie); cap_k = 1 keeps the most recent of them, key 3.
  std::vector<float> bias = {0, 0, 0, -inf, -inf};
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), 1, 1, d);
  a.k = HeadsView<const float>::token_major(k.data(), L, 1, d);
  a.v = HeadsView<const float>::token_major(v.data(), L, 1, d);
  a.out = HeadsView<float>::token_major(out.data(), 1, 1, d);
  a.bias = MatrixView<const float>{bias.data(), 1, L, L};
  for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn})
    for (SdcMode sdc : {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold})
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
        if (!isa_supported(isa)) continue;
        for (bool use_prefill : {false, true}) {
          SCOPED_TRACE(std::string("vmc ") + (vmc == VmcMode::kOn ? "on" : "off") + " sdc " +
                       to_string(sdc) + " " + to_string(isa) +
                       (use_prefill ? " prefill" : " decode"));
          AttentionOptions o;
          o.mode = AttentionMode::kTopK;
          o.k = 4;
          o.cap_k = 1;
          o.sdc = sdc;
          o.vmc = vmc;
          o.vbar = VbarSource::kSumCache;
          o.isa = isa;
          std::fill(out.begin(), out.end(), 99.f);
          ASSERT_TRUE((use_prefill ? prefill(a, o) : decode(a, o)).ok());
          // The mean of V rows 1..5: (3, -3).
          const std::vector<float> want =
              vmc == VmcMode::kOn ? std::vector<float>{3.f, -3.f} : std::vector<float>{0.f, 0.f};
          EXPECT_EQ(out, want);
          reference::ReferenceOptions ro;
          ro.prefill_call = use_prefill;
          const reference::Result r = reference::attention(a, o, ro);
          ASSERT_TRUE(r.status.ok());
          EXPECT_EQ(r.rows[0].kept, std::vector<std::int32_t>{3});
          EXPECT_EQ(r.rows[0].weight_sum, 0.0);
          EXPECT_EQ(r.out[0], double(want[0]));
          EXPECT_EQ(r.out[1], double(want[1]));
        }
      }
}

// A causal prefill: the V row of the last new token is NaN; every earlier row must stay finite
// (for them it is a future token), only the last row sees it.
TEST(NonFiniteHanded, FutureTokenNanVOnlyReachesTheRowsThatSeeIt) {
  const Index T = 5, d = 4;
  std::vector<float> q(T * d, 0.5f), k(T * d, 0.25f), v(T * d, 1.f), out(T * d, -1.f);
  for (Index i = 0; i < d; ++i) v[std::size_t((T - 1) * d + i)] = std::numeric_limits<float>::quiet_NaN();
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), T, 1, d);
  a.k = HeadsView<const float>::token_major(k.data(), T, 1, d);
  a.v = HeadsView<const float>::token_major(v.data(), T, 1, d);
  a.out = HeadsView<float>::token_major(out.data(), T, 1, d);
  ASSERT_TRUE(prefill(a, AttentionOptions{}).ok());
  for (Index t = 0; t + 1 < T; ++t)
    for (Index i = 0; i < d; ++i) EXPECT_EQ(out[std::size_t(t * d + i)], 1.f) << "row " << t;
  EXPECT_TRUE(std::isnan(out[std::size_t((T - 1) * d)])) << "the last row does read the NaN row";
}

}  // namespace
