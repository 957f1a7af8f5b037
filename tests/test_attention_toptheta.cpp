// Top-theta and top-k with every compensation variant against the double-precision oracle:
//   placement pre / post x SDC none / exact / exp-threshold / calibrated x VMC off / on x
//   cap_k {0, small} x empty-row policy keep-max / mean-V, for decode and prefill.
// Each variant runs on one shape of the foundation grid (rotating L, d, heads, storage type,
// layout, k). Statistics are compared exactly.
//
// Thresholds: make_margin_table() (tests/test_util.hpp) gives every row its own theta, placed
// halfway between two consecutive distinct placement values a_j (computed by the oracle in
// double) whose gap is at least 16x the kernel's rounding of a_j; about 15% of the rows get a
// theta above every value (empty rows) and 5% theta = -inf. Without that margin, float-vs-double
// rounding of a_j would flip borderline keeps and the comparison would test nothing.
// The table covers two layers; the call's layer has budget k, the other one holds decoy entries
// (theta = -inf) so that a kernel reading the wrong layer fails.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/kv_cache.hpp"
#include "toptheta/reference/attention.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;


struct Variant {
  AttentionMode mode = AttentionMode::kTopTheta;
  Placement placement = Placement::kPreSoftmax;
  SdcMode sdc = SdcMode::kNone;
  VmcMode vmc = VmcMode::kOff;
  Index cap_k = 0;
  EmptyRowPolicy empty = EmptyRowPolicy::kKeepMax;
  bool prefill = false;
  // shape
  Index L = 64, d = 8, Hq = 1, Hkv = 1, k = 4, T = 1;
  Dtype dtype = Dtype::kF32;
  Layout layout = Layout::kTokenMajor;
  bool discrete = true;
  bool give_vsum = false;
  std::uint64_t seed = 1;
};

std::string variant_name(const Variant& v) {
  std::string s = std::string(to_string(v.mode)) + "_" + to_string(v.placement) + "_sdc" +
                  (v.sdc == SdcMode::kNone           ? "none"
                   : v.sdc == SdcMode::kExact        ? "exact"
                   : v.sdc == SdcMode::kExpThreshold ? "expth"
                                                     : "calib") +
                  (v.vmc == VmcMode::kOn ? "_vmc" : "_novmc") + "_cap" + std::to_string(v.cap_k) +
                  (v.empty == EmptyRowPolicy::kKeepMax ? "_keepmax" : "_meanv") +
                  (v.prefill ? "_prefill" : "_decode") + "_L" + std::to_string(v.L) + "_d" +
                  std::to_string(v.d) + "_Hq" + std::to_string(v.Hq) + "_Hkv" +
                  std::to_string(v.Hkv) + "_k" + std::to_string(v.k) + "_T" + std::to_string(v.T) +
                  "_" + to_string(v.dtype) + "_" + to_string(v.layout) +
                  (v.discrete ? "_disc" : "_cont");
  return s;
}

std::vector<Variant> make_variants() {
  std::vector<Variant> out;
  int i = 0;
  for (AttentionMode mode : {AttentionMode::kTopTheta, AttentionMode::kTopK})
    for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
      for (SdcMode sdc :
           {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated})
        for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn})
          for (Index cap : {Index(0), Index(3)})
            for (EmptyRowPolicy er : {EmptyRowPolicy::kKeepMax, EmptyRowPolicy::kMeanV})
              for (bool pre : {false, true}) {
                // Top-k has no calibrated SDC term (rejected by validate() for pre-softmax) and
                // never has empty rows (the policy is irrelevant).
                if (mode == AttentionMode::kTopK && pl == Placement::kPreSoftmax &&
                    sdc == SdcMode::kCalibrated)
                  continue;
                if (mode == AttentionMode::kTopK && er == EmptyRowPolicy::kMeanV) continue;
                Variant v;
                v.mode = mode;
                v.placement = pl;
                v.sdc = sdc;
                v.vmc = vmc;
                v.cap_k = cap;
                v.empty = er;
                v.prefill = pre;
                // Shape: walk the L x d x heads grid with a stride coprime to its size (84).
                const int g = (i * 37) % 84;
                v.L = kLs[g / 12];
                v.d = kDs[(g / 4) % 3];
                v.Hq = kHeads[g % 4][0];
                v.Hkv = kHeads[g % 4][1];
                const Index ks[] = {1, 4, 64, v.L};
                v.k = ks[(i / 3) % 4];
                if (v.k == 64 && v.L > 1000) v.k = 16;  // keep the rare non-empty check affordable
                v.dtype = kAllDtypes[i % 4];
                v.layout = (i / 2) % 2 ? Layout::kHeadMajor : Layout::kTokenMajor;
                v.discrete = mode == AttentionMode::kTopK || (i % 3 != 2);
                v.give_vsum = (i / 5) % 2 == 1;
                v.seed = 7000 + std::uint64_t(i);
                if (pre) {
                  const double budget = 6e6;
                  v.T = std::clamp<Index>(Index(budget / double(v.L * v.Hq * v.d)), 1, v.L);
                  if (v.T == v.L && i % 2 && v.L > 2) v.T = v.L / 2;
                }
                out.push_back(v);
                ++i;
              }
  return out;
}

template <class T>
void run_variant(const Variant& v) {
  ProblemSpec sp;
  sp.T = v.T;
  sp.P = v.L - v.T;
  sp.Hq = v.Hq;
  sp.Hkv = v.Hkv;
  sp.d = v.d;
  sp.layout = v.layout;
  sp.discrete = v.discrete;
  sp.scale = v.discrete ? (v.d == 64 ? 0.0 : pow2_scale(v.d)) : 0.0;
  sp.q_sigma = 2.0;  // peakier than N(0,1) scores: a realistic spread of probabilities
  sp.seed = v.seed;
  Problem<T> p = make_problem<T>(sp);
  p.layer = 1;
  if (v.give_vsum) p.set_vsum(v.prefill);

  AttentionOptions opt;
  opt.mode = v.mode;
  opt.placement = v.placement;
  opt.sdc = v.sdc;
  opt.sdc_scale = v.sdc == SdcMode::kCalibrated ? 0.75 : 1.0;
  opt.vmc = v.vmc;
  // The caller's running sum when the variant gives one, else the kernel sums V itself.
  opt.vbar = v.give_vsum ? VbarSource::kRunningSum : VbarSource::kSumCache;
  opt.cap_k = v.cap_k;
  opt.empty_row = v.empty;
  opt.k = v.k;
  ThresholdTable table;
  if (v.mode == AttentionMode::kTopTheta) {
    Rng rng(v.seed * 31 + 5);
    ThetaPlan plan;
    plan.p_empty = 0.15;
    plan.p_neg_inf = 0.05;
    plan.target_lo = 1;
    plan.target_hi = 2 * v.k + 2;
    plan.with_sdc = true;
    table = make_margin_table(p, v.placement, v.k, plan, rng);
    opt.thresholds = &table;
  }
  AttentionStats stats;
  stats.enable_per_head(v.Hq);
  opt.stats = &stats;
  const auto args = p.args();
  WorkspaceBuffer ws(workspace_size(args, opt));
  const Status st = v.prefill ? prefill(args, opt, ws.get()) : decode(args, opt, ws.get());
  ASSERT_TRUE(st.ok()) << st.to_string();
  reference::ReferenceOptions ro;
  ro.prefill_call = v.prefill;
  const reference::Result ref = reference::attention(args, opt, ro);
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  // Score error plus the rounding of theta and of exp(theta - M) (exp-threshold SDC) to float.
  const double u = unit_roundoff<T>();
  const double serr = problem_score_error(p) + 4 * u * (p.score_magnitude() + 1);
  const double tol = output_tolerance<T>(p.length(), serr, p.max_abs_v());
  EXPECT_TRUE(outputs_close(ref, p.out.view, tol));
  EXPECT_TRUE(stats_equal(ref.stats, stats));
  EXPECT_TRUE(p.out_padding_intact());
  // The variant exercised what it claims (over the whole suite: thresholded and empty rows).
  if (v.mode == AttentionMode::kTopTheta && v.L > v.k) {
    EXPECT_GT(ref.stats.thresholded_rows, 0u);
  }
}

class TopThetaVariants : public ::testing::TestWithParam<Variant> {};
TEST_P(TopThetaVariants, MatchesOracle) {
  const Variant v = GetParam();
  dispatch(v.dtype, [&](auto tag) { run_variant<typename decltype(tag)::type>(v); });
}
INSTANTIATE_TEST_SUITE_P(All, TopThetaVariants, ::testing::ValuesIn(make_variants()),
                         [](const auto& info) { return variant_name(info.param); });

TEST(TopThetaVariantCoverage, EveryAxisValueAppears) {
  const auto vs = make_variants();
  for (Dtype dt : kAllDtypes) {
    bool f = false;
    for (const auto& v : vs) f = f || (v.dtype == dt && v.mode == AttentionMode::kTopTheta);
    EXPECT_TRUE(f) << to_string(dt);
  }
  for (Index L : kLs) {
    bool f = false;
    for (const auto& v : vs) f = f || (v.L == L && v.mode == AttentionMode::kTopTheta);
    EXPECT_TRUE(f) << "L " << L;
  }
  for (Index d : kDs) {
    bool f = false;
    for (const auto& v : vs) f = f || v.d == d;
    EXPECT_TRUE(f) << "d " << d;
  }
  for (const auto& hk : kHeads) {
    bool f = false;
    for (const auto& v : vs) f = f || (v.Hq == hk[0] && v.Hkv == hk[1]);
    EXPECT_TRUE(f);
  }
  // 64 Top-theta variants x 2 calls; 14 top-k variants x 2 x 2.
  EXPECT_EQ(vs.size(), 128u + 56u);
}

// ---------------------------------------------------------------------------------------------
// Targeted cases: hand-checkable rows, lookups of absent lengths, KvCache and prefill = decodes.
// ---------------------------------------------------------------------------------------------

// A single row by hand: scores [2, 0, 1, -1] (q . k with d = 1 and scale 1), theta = 0.5 keeps
// {0, 2}; checks every weight formula of semantics §5-§6 and VMC / mean-V / keep-max.
TEST(TopThetaByHand, WeightFormulas) {
  const Index L = 4;
  std::vector<float> kbuf{2, 0, 1, -1}, qbuf{1};
  // V = identity rows padded to d = 4: output = weights (plus VMC * vbar with vbar = 1/4 each).
  std::vector<float> vbuf(16, 0.0f);
  for (Index j = 0; j < L; ++j) vbuf[std::size_t(j * 4 + j)] = 1.0f;
  // d must match between q/k and v, so embed: q = (1,0,0,0), k_j = (s_j,0,0,0).
  std::vector<float> q4{1, 0, 0, 0}, k4(16, 0.0f);
  for (Index j = 0; j < L; ++j) k4[std::size_t(j * 4)] = kbuf[std::size_t(j)];
  std::vector<float> out(4, -1);
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q4.data(), 1, 1, 4);
  a.k = HeadsView<const float>::token_major(k4.data(), L, 1, 4);
  a.v = HeadsView<const float>::token_major(vbuf.data(), L, 1, 4);
  a.out = HeadsView<float>::token_major(out.data(), 1, 1, 4);
  a.scale = 1.0;
  ThresholdTable t(1, 1, 1);
  t.metadata().placement = Placement::kPreSoftmax;
  ThresholdEntry e;
  e.length = L;
  e.theta = 0.5;
  e.sdc = 2.0;
  ASSERT_TRUE(t.set(0, 0, e).ok());
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  const double e2 = std::exp(2.0), e1 = std::exp(1.0), e0 = 1.0, em1 = std::exp(-1.0);
  auto expect_out = [&](std::vector<double> want, const char* what) {
    ASSERT_TRUE(decode(a, o).ok()) << what;
    for (int i = 0; i < 4; ++i)
      EXPECT_NEAR(out[std::size_t(i)], want[std::size_t(i)], 1e-6) << what << " i=" << i;
  };
  // pre, no SDC: renormalised over {0, 2}.
  expect_out({e2 / (e2 + e1), 0, e1 / (e2 + e1), 0}, "pre none");
  // pre, exact SDC: dense probabilities of the kept elements.
  const double Z = e2 + e0 + e1 + em1;
  o.sdc = SdcMode::kExact;
  expect_out({e2 / Z, 0, e1 / Z, 0}, "pre exact");
  // exp-threshold: D~ = 2 * exp(0.5 - 2) (in units of exp(-M), M = 2).
  o.sdc = SdcMode::kExpThreshold;
  {
    const double den = 1.0 + std::exp(-1.0) + 2.0 * std::exp(0.5 - 2.0);
    expect_out({1.0 / den, 0, std::exp(-1.0) / den, 0}, "pre exp-threshold");
  }
  // calibrated with sdc_scale 0.5: D~ = 0.5 * 2.0.
  o.sdc = SdcMode::kCalibrated;
  o.sdc_scale = 0.5;
  {
    const double den = 1.0 + std::exp(-1.0) + 1.0;
    expect_out({1.0 / den, 0, std::exp(-1.0) / den, 0}, "pre calibrated");
    // + VMC: (1 - sum w) * vbar, vbar = (1/4, 1/4, 1/4, 1/4).
    o.vmc = VmcMode::kOn;
    o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
    const double w0 = 1.0 / den, w2 = std::exp(-1.0) / den, r = (1 - w0 - w2) / 4;
    expect_out({w0 + r, r, w2 + r, r}, "pre calibrated + VMC");
  }
  // Empty row (theta above the max): keep-max keeps index 0 -> one-hot; mean-V -> vbar.
  e.theta = 3.0;
  ASSERT_TRUE(t.set(0, 0, e).ok());
  o.sdc = SdcMode::kNone;
  o.vmc = VmcMode::kOff;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  expect_out({1, 0, 0, 0}, "empty keep-max");
  o.empty_row = EmptyRowPolicy::kMeanV;
  expect_out({0.25, 0.25, 0.25, 0.25}, "empty mean-V");
  o.vmc = VmcMode::kOn;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  expect_out({0.25, 0.25, 0.25, 0.25}, "empty mean-V + VMC");
  // post placement: w = p for p > theta. p = (e2, e0, e1, em1) / Z.
  t.metadata().placement = Placement::kPostSoftmax;
  o.placement = Placement::kPostSoftmax;
  o.vmc = VmcMode::kOff;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  o.sdc = SdcMode::kExact;  // ignored for post
  e.theta = 0.2;            // keeps p0 = 0.64, p2 = 0.24
  ASSERT_TRUE(t.set(0, 0, e).ok());
  expect_out({e2 / Z, 0, e1 / Z, 0}, "post");
  o.vmc = VmcMode::kOn;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  {
    const double r = (1 - (e2 + e1) / Z) / 4;
    expect_out({e2 / Z + r, r, e1 / Z + r, r}, "post + VMC");
  }
  // cap_k = 1 keeps the most recent kept index (2), not the largest score.
  o.vmc = VmcMode::kOff;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  o.cap_k = 1;
  expect_out({0, 0, e1 / Z, 0}, "post cap_k 1");
}

// keep_j = a_j > theta is strict: with discrete (exact) scores and theta equal to a score that
// occurs in the row, the keys at theta are dropped. Also: keep-max on ties keeps the first max.
template <class T>
void strict_case(bool prefill_call) {
  ProblemSpec sp;
  sp.T = prefill_call ? 16 : 1;
  sp.P = 47;
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 64;
  sp.discrete = true;
  sp.seed = 61;
  Problem<T> p = make_problem<T>(sp);
  ThresholdTable t(1, 4, 2);
  const auto args = p.args();
  for (Index r = 0; r < sp.T; ++r)
    for (Index h = 0; h < 4; ++h) {
      std::vector<double> s = reference::scores(args, r, h);
      std::sort(s.begin(), s.end(), std::greater<double>());
      ThresholdEntry e;
      e.length = sp.P + r + 1;
      e.theta = s[std::size_t((r + h) % 6)];  // exactly a score of the row (ties likely)
      ASSERT_TRUE(t.set(0, h, e).ok());
    }
  for (SdcMode sdc : {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold}) {
    AttentionOptions o;
    o.mode = AttentionMode::kTopTheta;
    o.thresholds = &t;
    o.sdc = sdc;
    AttentionStats st;
    o.stats = &st;
    p.clear_out();
    ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
    reference::ReferenceOptions ro;
    ro.prefill_call = prefill_call;
    const auto ref = reference::attention(args, o, ro);
    EXPECT_TRUE(outputs_close(ref, p.out.view,
                              problem_tolerance(p) + 16 * unit_roundoff<T>() * p.max_abs_v()))
        << to_string(sdc);
    EXPECT_TRUE(stats_equal(ref.stats, st)) << to_string(sdc);
    // Rows whose theta is the maximum score are empty (keep-max keeps one element).
    EXPECT_GT(ref.stats.empty_rows, 0u);
  }
}
TEST(TopThetaStrict, ThetaEqualToAScoreIsNotKeptDecode) { strict_case<float>(false); }
TEST(TopThetaStrict, ThetaEqualToAScoreIsNotKeptPrefill) { strict_case<Eigen::half>(true); }

// A threshold between two floats: keep_j = a_j > theta compares the float a_j with the table's
// double theta exactly (semantics §4.2, §11), so a score just above theta is kept even where
// float(theta) rounds up past it. theta = 1 - 1e-12 (float(theta) = 1) with scores (1, 3, 0, 0)
// keeps keys 0 and 1; post-softmax theta = 0.25 - 1e-12 with four equal scores (p_j = 0.25)
// keeps all four. Rounding theta to nearest dropped key 0 (pre) and made the post row empty.
// Every ISA path, decode and prefill (T = 1), each a different kernel site: decode's single
// pass (pre) and its row pipeline (post), prefill's flash (pre) and post-softmax walks.
TEST(TopThetaStrict, ThetaBetweenFloatsKeepsTheScoresAboveIt) {
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    const bool pre = pl == Placement::kPreSoftmax;
    const Index L = 4, d = 4;
    std::vector<float> q{1, 0, 0, 0}, k(L * d, 0.0f), v(L * d, 0.0f), out(d, -1.0f);
    const float sc[L] = {1, 3, 0, 0};
    for (Index j = 0; j < L; ++j) {
      if (pre) k[std::size_t(j * d)] = sc[j];
      v[std::size_t(j * d + j)] = 1.0f;  // V row j = e_j: out_j = w_j
    }
    AttentionArgs<float> a;
    a.q = HeadsView<const float>::token_major(q.data(), 1, 1, d);
    a.k = HeadsView<const float>::token_major(k.data(), L, 1, d);
    a.v = HeadsView<const float>::token_major(v.data(), L, 1, d);
    a.out = HeadsView<float>::token_major(out.data(), 1, 1, d);
    a.scale = 1.0;
    ThresholdTable t(1, 1, 1);
    t.metadata().placement = pl;
    ThresholdEntry e;
    e.length = L;
    e.theta = pre ? 1.0 - 1e-12 : 0.25 - 1e-12;
    ASSERT_GT(double(float(e.theta)), e.theta);  // the case needs float(theta) above theta
    ASSERT_TRUE(t.set(0, 0, e).ok());
    const double e1 = std::exp(1.0), e3 = std::exp(3.0);
    const std::vector<double> want = pre ? std::vector<double>{e1 / (e1 + e3), e3 / (e1 + e3), 0, 0}
                                         : std::vector<double>{0.25, 0.25, 0.25, 0.25};
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
      if (!isa_supported(isa)) continue;
      for (bool use_prefill : {false, true}) {
        SCOPED_TRACE(std::string(to_string(pl)) + " " + to_string(isa) +
                     (use_prefill ? " prefill" : " decode"));
        AttentionOptions o;
        o.mode = AttentionMode::kTopTheta;
        o.placement = pl;
        o.thresholds = &t;
        o.isa = isa;
        AttentionStats st;
        o.stats = &st;
        std::fill(out.begin(), out.end(), -1.0f);
        ASSERT_TRUE((use_prefill ? prefill(a, o) : decode(a, o)).ok());
        EXPECT_EQ(st.elements_kept, pre ? 2u : 4u);
        EXPECT_EQ(st.empty_rows, 0u);
        for (Index i = 0; i < d; ++i)
          EXPECT_NEAR(out[std::size_t(i)], want[std::size_t(i)], 1e-6) << i;
        const reference::Result ref = reference::attention(a, o);
        ASSERT_TRUE(ref.status.ok());
        EXPECT_EQ(ref.stats.elements_kept, st.elements_kept) << "oracle";
      }
    }
  }
}

TEST(TopThetaStrict, KeepMaxTiesKeepTheFirstMaximum) {
  // Scores [1, 2, 2, 0, 2]: theta = 5 empties the row; keep-max keeps index 1.
  const Index L = 5;
  std::vector<double> q{1, 0, 0, 0, 0}, k(25, 0.0), v(25, 0.0), out(5, -1.0);
  const double sc[] = {1, 2, 2, 0, 2};
  for (Index j = 0; j < L; ++j) {
    k[std::size_t(j * 5)] = sc[j];
    v[std::size_t(j * 5 + j)] = 1.0;
  }
  AttentionArgs<double> a;
  a.q = HeadsView<const double>::token_major(q.data(), 1, 1, 5);
  a.k = HeadsView<const double>::token_major(k.data(), L, 1, 5);
  a.v = HeadsView<const double>::head_major(v.data(), L, 1, 5);
  a.out = HeadsView<double>::token_major(out.data(), 1, 1, 5);
  a.scale = 1.0;
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    ThresholdTable t(1, 1, 1);
    t.metadata().placement = pl;
    ThresholdEntry e;
    e.length = L;
    e.theta = 5.0;
    ASSERT_TRUE(t.set(0, 0, e).ok());
    AttentionOptions o;
    o.mode = AttentionMode::kTopTheta;
    o.placement = pl;
    o.thresholds = &t;
    AttentionStats st;
    o.stats = &st;
    ASSERT_TRUE(decode(a, o).ok());
    const double want1 = pl == Placement::kPreSoftmax
                             ? 1.0
                             : std::exp(2.0) / (std::exp(1.0) + 3 * std::exp(2.0) + 1.0);
    for (Index i = 0; i < 5; ++i)
      EXPECT_NEAR(out[std::size_t(i)], i == 1 ? want1 : 0.0, 1e-12) << to_string(pl);
    EXPECT_EQ(st.empty_rows, 1u);
    EXPECT_EQ(st.elements_kept, 1u);
    EXPECT_EQ(st.vrows_read, 1u);
  }
}

// Lookups of lengths absent from the table (nearest, ties to the smaller, clamping; linear).
// Pre-softmax discrete scores are multiples of D = scale / 16; thetas at (n + 1/2) D are never
// borderline, and entries on a line of slope D interpolate onto that half-lattice too.
template <class T>
void absent_lengths_case(LookupPolicy pol, bool prefill_call) {
  ProblemSpec sp;
  sp.T = prefill_call ? 40 : 1;
  sp.P = prefill_call ? 60 : 99;
  sp.Hq = 8;
  sp.Hkv = 4;
  sp.d = 64;  // scale 1/8, D = 1/128
  sp.discrete = true;
  sp.seed = 91;
  Problem<T> p = make_problem<T>(sp);
  const double D = 1.0 / 128;
  ThresholdTable t(1, 8, 4);
  Rng rng(92);
  std::uniform_int_distribution<int> off(-30, 150);
  for (Index h = 0; h < 8; ++h) {
    const int c = off(rng);  // theta(L) = (c - L + 1/2) D on the line; only some lengths present
    for (Index L : {5, 50, 64, 70, 90, 98, 130}) {
      ThresholdEntry e;
      e.length = L;
      e.theta = (double(c) - double(L) + 0.5) * D;
      ASSERT_TRUE(t.set(0, h, e).ok());
    }
  }
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  o.lookup = pol;
  o.vmc = VmcMode::kOn;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  o.sdc = SdcMode::kExact;
  AttentionStats st;
  o.stats = &st;
  const auto args = p.args();
  ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const auto ref = reference::attention(args, o, ro);
  EXPECT_TRUE(outputs_close(ref, p.out.view,
                            problem_tolerance(p) + 8 * unit_roundoff<T>() * p.max_abs_v()));
  EXPECT_TRUE(stats_equal(ref.stats, st));
}

TEST(TopThetaLookup, NearestDecode) { absent_lengths_case<float>(LookupPolicy::kNearest, false); }
TEST(TopThetaLookup, NearestPrefill) {
  absent_lengths_case<Eigen::half>(LookupPolicy::kNearest, true);
}
TEST(TopThetaLookup, LinearDecode) { absent_lengths_case<double>(LookupPolicy::kLinear, false); }
TEST(TopThetaLookup, LinearPrefill) {
  absent_lengths_case<Eigen::bfloat16>(LookupPolicy::kLinear, true);
}

// Rows longer than every length their (layer, head) was calibrated at run on an extrapolated
// theta; AttentionStats::extrapolated_rows counts them (semantics §9): by hand and against the
// oracle. Heads declared dense have no threshold to extrapolate.
template <class T>
void extrapolated_rows_case(bool prefill_call, int threads) {
  ProblemSpec sp;
  sp.T = prefill_call ? 40 : 1;
  sp.P = prefill_call ? 60 : 99;  // rows of lengths 61..100, or one row of length 100
  sp.Hq = 8;
  sp.Hkv = 4;
  sp.d = 64;
  sp.discrete = true;
  sp.seed = 93;
  Problem<T> p = make_problem<T>(sp);
  ThresholdTable t(1, 8, 4);
  const Index last[8] = {130, 100, 99, 80, 61, 60, 5, 0};  // 0: declared dense
  for (Index h = 0; h < 8; ++h) {
    if (last[h] == 0) {
      ASSERT_TRUE(t.set_dense(0, h).ok());
      continue;
    }
    for (Index L : {Index(5), Index(50), last[h]}) {
      if (L > last[h]) continue;  // set() replaces an entry of the same length
      ThresholdEntry e;
      e.length = L;
      e.theta = 0.05 * double(h + 1);
      ASSERT_TRUE(t.set(0, h, e).ok());
    }
    EXPECT_EQ(t.max_calibrated_length(0, h), last[h]);
  }
  EXPECT_EQ(t.max_calibrated_length(1, 0), 0);  // outside the table
  EXPECT_EQ(t.max_calibrated_length(0, 8), 0);
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  o.threads = threads;
  AttentionStats st;
  o.stats = &st;
  const auto args = p.args();
  ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
  // Prefill: per head, the rows of lengths 61..100 above last[h]: 0 + 0 + 1 + 20 + 39 + 40 + 40
  // (+ 0 for the dense head). Decode (L = 100): the heads calibrated below 100.
  const std::uint64_t want = prefill_call ? 140 : 5;
  EXPECT_EQ(st.extrapolated_rows, want);
  EXPECT_DOUBLE_EQ(st.extrapolated_fraction(), double(want) / double(st.thresholded_rows));
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const auto ref = reference::attention(args, o, ro);
  EXPECT_EQ(ref.stats.extrapolated_rows, want);
  EXPECT_TRUE(stats_equal(ref.stats, st));
  // Outside Top-θ nothing is extrapolated; statistics add up over calls.
  o.mode = AttentionMode::kTopK;
  o.k = 4;
  ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
  EXPECT_EQ(st.extrapolated_rows, want);
}

TEST(TopThetaExtrapolation, DecodeCountsRowsPastTheCalibratedLengths) {
  extrapolated_rows_case<float>(false, 1);
  extrapolated_rows_case<Eigen::half>(false, 2);
}
TEST(TopThetaExtrapolation, PrefillCountsRowsPastTheCalibratedLengths) {
  extrapolated_rows_case<float>(true, 1);
  extrapolated_rows_case<Eigen::bfloat16>(true, 2);
}

// Rows of every length in a bucket pool into its knot (threshold_fit.hpp), so a compact table's
// calibrated range ends with its last knot's length bucket: with 2 buckets per octave a knot at
// 50 covers (45.3, 64] and one at 20 covers (16, 22.6]. Without a valid buckets_per_octave the
// knot's own length is the limit.
TEST(TopThetaExtrapolation, CompactTablesCoverTheLastKnotsBucket) {
  ThresholdTable t = ThresholdTable::compact(1, 3, 4, 2);
  ThresholdCurve c;
  for (Index L : {Index(20), Index(50)}) {
    CurveKnot kn;
    kn.length = L;
    kn.value = 1e3;  // pre-softmax: keeps nothing; the count does not depend on it
    kn.samples = 10;
    c.knots.push_back(kn);
  }
  ASSERT_TRUE(t.set_curve(0, 0, c).ok());
  c.knots.resize(1);  // one knot, at 20
  ASSERT_TRUE(t.set_curve(0, 1, c).ok());
  ASSERT_TRUE(t.set_dense(0, 2).ok());
  EXPECT_EQ(t.max_calibrated_length(0, 0), 64);
  EXPECT_EQ(t.max_calibrated_length(0, 1), 22);
  EXPECT_EQ(t.max_calibrated_length(0, 2), 0);
  EXPECT_EQ(t.max_calibrated_length(-1, 0), 0);

  ProblemSpec sp;
  sp.T = 40;
  sp.P = 10;  // rows of lengths 11..50
  sp.Hq = 3;
  sp.Hkv = 1;
  sp.d = 16;
  sp.seed = 94;
  Problem<float> p = make_problem<float>(sp);
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  AttentionStats st;
  o.stats = &st;
  const auto args = p.args();
  reference::ReferenceOptions ro;
  ro.prefill_call = true;
  ASSERT_TRUE(prefill(args, o).ok());
  EXPECT_EQ(st.extrapolated_rows, 28u);  // head 1: lengths 23..50
  EXPECT_TRUE(stats_equal(reference::attention(args, o, ro).stats, st));

  t.metadata().buckets_per_octave = 0;  // buckets unknown: the knots' own lengths
  EXPECT_EQ(t.max_calibrated_length(0, 0), 50);
  EXPECT_EQ(t.max_calibrated_length(0, 1), 20);
  st.reset();
  ASSERT_TRUE(prefill(args, o).ok());
  EXPECT_EQ(st.extrapolated_rows, 30u);  // head 1: lengths 21..50
  EXPECT_TRUE(stats_equal(reference::attention(args, o, ro).stats, st));
  t.metadata().buckets_per_octave = 1;  // (16, 32] and (32, 64]
  EXPECT_EQ(t.max_calibrated_length(0, 1), 32);

  // A recorded longest row wins over the bucket end, whatever buckets_per_octave says.
  t.metadata().buckets_per_octave = 2;
  c.max_calibrated_length = 37;  // head 1: one knot at 20, rows calibrated up to 37
  ASSERT_TRUE(t.set_curve(0, 1, c).ok());
  EXPECT_EQ(t.max_calibrated_length(0, 1), 37);
  t.metadata().buckets_per_octave = 0;
  EXPECT_EQ(t.max_calibrated_length(0, 1), 37);
  t.metadata().buckets_per_octave = 2;
  st.reset();
  ASSERT_TRUE(prefill(args, o).ok());
  EXPECT_EQ(st.extrapolated_rows, 13u);  // head 1: lengths 38..50; head 0 covers up to 64
  EXPECT_TRUE(stats_equal(reference::attention(args, o, ro).stats, st));
}

TEST(TopThetaExtrapolation, RecordedLengthMustCoverTheLastKnot) {
  ThresholdTable t = ThresholdTable::compact(1, 1, 4, 2);
  ThresholdCurve c;
  CurveKnot kn;
  kn.length = 20;
  kn.value = 1.0;
  kn.samples = 10;
  c.knots.push_back(kn);
  c.max_calibrated_length = 19;
  Status s = t.set_curve(0, 0, c);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("max_calibrated_length 19 is below the last knot's length 20"),
            std::string::npos)
      << s.message();
  c.max_calibrated_length = -1;
  EXPECT_EQ(t.set_curve(0, 0, c).code(), StatusCode::kInvalidArgument);
  ThresholdCurve none;
  none.max_calibrated_length = 5;
  s = t.set_curve(0, 0, none);
  EXPECT_NE(s.message().find("given without knots"), std::string::npos) << s.message();
  EXPECT_FALSE(t.has_thresholds(0, 0));
  c.max_calibrated_length = 20;  // the knot's own length is the smallest allowed
  ASSERT_TRUE(t.set_curve(0, 0, c).ok());
  EXPECT_EQ(t.max_calibrated_length(0, 0), 20);
  EXPECT_EQ(t.curve(0, 0).max_calibrated_length, 20);
}

// Prefill equals the sequence of decodes with an owning KvCache supplying the running V sum.
template <class T>
void toptheta_prefill_vs_decodes(Placement pl, SdcMode sdc, EmptyRowPolicy er, Layout layout,
                                 std::uint64_t seed) {
  using Acc = acc_t<T>;
  ProblemSpec sp;
  sp.T = 50;
  sp.P = 30;
  sp.Hq = 8;
  sp.Hkv = 2;
  sp.d = 8;
  sp.layout = layout;
  sp.discrete = true;
  sp.scale = pow2_scale(8);
  sp.seed = seed;
  Problem<T> p = make_problem<T>(sp);
  Rng rng(seed + 1);
  ThetaPlan plan;
  plan.target_hi = 12;
  plan.with_sdc = true;
  ThresholdTable table = make_margin_table(p, pl, 6, plan, rng, 1);
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.placement = pl;
  o.sdc = sdc;
  o.vmc = VmcMode::kOn;
  o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
  o.empty_row = er;
  o.cap_k = 5;
  o.thresholds = &table;
  AttentionStats s1, s2;
  o.stats = &s1;
  ASSERT_TRUE(prefill(p.args(), o).ok());

  KvCacheOptions co;
  co.num_kv_heads = sp.Hkv;
  co.head_dim = sp.d;
  co.capacity = sp.L() + 10;
  co.layout = layout == Layout::kTokenMajor ? KvLayout::kTokenMajor : KvLayout::kHeadMajor;
  KvCache<T> cache(co);
  ASSERT_TRUE(
      cache.append(p.k.cview().slice_tokens(0, sp.P), p.v.cview().slice_tokens(0, sp.P)).ok());
  HeadsBuffer<Acc> out2 = make_heads<Acc>(sp.T, sp.Hq, sp.d, Layout::kHeadMajor, Acc(0));
  o.stats = &s2;
  for (Index t = 0; t < sp.T; ++t) {
    ASSERT_TRUE(
        cache.append(p.k.cview().slice_tokens(sp.P + t, 1), p.v.cview().slice_tokens(sp.P + t, 1))
            .ok());
    AttentionArgs<T> a;
    a.q = p.q.cview().slice_tokens(t, 1);
    a.k = cache.keys();
    a.v = cache.values();
    a.out = out2.view.slice_tokens(t, 1);
    a.v_sum = cache.v_sum();
    a.scale = sp.scale;
    ASSERT_TRUE(decode(a, o).ok());
  }
  EXPECT_TRUE(views_close(p.out.view, out2.view,
                          2 * problem_tolerance(p) + 16 * unit_roundoff<T>() * p.max_abs_v()));
  EXPECT_TRUE(stats_equal(s1, s2));
}

TEST(TopThetaPrefillVsDecodes, PreExactKeepMax) {
  toptheta_prefill_vs_decodes<float>(Placement::kPreSoftmax, SdcMode::kExact,
                                     EmptyRowPolicy::kKeepMax, Layout::kTokenMajor, 41);
}
TEST(TopThetaPrefillVsDecodes, PreExpThresholdMeanV) {
  toptheta_prefill_vs_decodes<Eigen::half>(Placement::kPreSoftmax, SdcMode::kExpThreshold,
                                           EmptyRowPolicy::kMeanV, Layout::kHeadMajor, 42);
}
TEST(TopThetaPrefillVsDecodes, PreCalibratedKeepMax) {
  toptheta_prefill_vs_decodes<double>(Placement::kPreSoftmax, SdcMode::kCalibrated,
                                      EmptyRowPolicy::kKeepMax, Layout::kHeadMajor, 43);
}
TEST(TopThetaPrefillVsDecodes, PostMeanV) {
  toptheta_prefill_vs_decodes<Eigen::bfloat16>(Placement::kPostSoftmax, SdcMode::kNone,
                                               EmptyRowPolicy::kMeanV, Layout::kTokenMajor, 44);
}

// A caller-supplied V sum is used as given (not recomputed): a deliberately shifted sum moves
// the mean-V output by shift / L.
TEST(TopThetaVSum, CallerSumIsUsed) {
  ProblemSpec sp;
  sp.T = 1;
  sp.P = 19;
  sp.Hq = 2;
  sp.Hkv = 1;
  sp.d = 8;
  sp.discrete = true;
  sp.scale = pow2_scale(8);
  Problem<float> p = make_problem<float>(sp);
  p.set_vsum(false);
  for (Index i = 0; i < 8; ++i) p.vsum[std::size_t(i)] += 20.0f;  // +1 on the mean (L = 20)
  ThresholdTable t(1, 2, 4);  // theta above everything: empty rows
  ThresholdEntry e;
  e.length = 20;
  e.theta = 1e6;
  ASSERT_TRUE(t.set(0, 0, e).ok());
  ASSERT_TRUE(t.set(0, 1, e).ok());
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  o.empty_row = EmptyRowPolicy::kMeanV;
  ASSERT_TRUE(decode(p.args(), o).ok());
  const auto ref = reference::attention(p.args(), o);
  EXPECT_TRUE(outputs_close(ref, p.out.view, 1e-5));
  for (Index i = 0; i < 8; ++i) {
    double m = 0;
    for (Index j = 0; j < 20; ++j) m += double(p.v.view(j, 0, i));
    EXPECT_NEAR(double(p.out.view(0, 0, i)), m / 20 + 1.0, 1e-5);
  }
}

// VbarSource::kSumCache means the kernel sums the V rows itself: a caller's v_sum, even a
// poisoned one, is not read (before, a set v_sum was used whatever the option said), and the
// oracle agrees.
TEST(TopThetaVSum, SumCacheIgnoresTheCallerSum) {
  for (const bool prefill_call : {false, true}) {
    ProblemSpec sp;
    sp.T = prefill_call ? 3 : 1;
    sp.P = 17;
    sp.Hq = 4;
    sp.Hkv = 2;
    sp.d = 16;
    sp.discrete = true;
    sp.scale = pow2_scale(16);
    Problem<float> p = make_problem<float>(sp);
    ThresholdTable t(1, 4, 4);
    for (Index h = 0; h < 4; ++h) {
      ThresholdEntry e;
      e.length = 20;
      e.theta = 1e6;  // empty rows: mean-V outputs vbar
      ASSERT_TRUE(t.set(0, h, e).ok());
    }
    AttentionOptions o;
    o.mode = AttentionMode::kTopTheta;
    o.thresholds = &t;
    o.empty_row = EmptyRowPolicy::kMeanV;
    o.vbar = VbarSource::kSumCache;
    auto run = [&] {
      const Status st = prefill_call ? prefill(p.args(), o) : decode(p.args(), o);
      EXPECT_TRUE(st.ok()) << st.to_string();
      return snapshot(p.out.view);
    };
    const std::vector<float> own = run();
    p.set_vsum(prefill_call);
    for (float& x : p.vsum) x = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> poisoned = run();
    EXPECT_TRUE(same_bits(own, poisoned)) << (prefill_call ? "prefill" : "decode");
    for (float x : poisoned) EXPECT_TRUE(std::isfinite(x));
    reference::ReferenceOptions ro;
    ro.prefill_call = prefill_call;
    EXPECT_TRUE(outputs_close(reference::attention(p.args(), o, ro), p.out.view, 1e-5));
  }
}

}  // namespace
