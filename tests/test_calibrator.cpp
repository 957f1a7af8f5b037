// Calibration: the kernels' kCalibrate mode (TAC on / off) against the reference calibration
// (reference/calibration.hpp: every tau stored, two-pass mean / population std), and the
// properties of semantics §8:
//  - calibrating on a single row keeps exactly k on that row;
//  - theta = -inf reproduces dense attention;
//  - pre-softmax + exact SDC yields the dense probabilities of the kept elements;
//  - VMC with all V rows equal returns that row;
//  - a table calibrated on rows from fixed per-head distributions keeps k +- 15% on fresh rows;
//  - merge(calibrate(A), calibrate(B)) == calibrate(A u B) (theta within 1e-12 relative);
//  - the sampling fraction is seeded and reproducible;
//  - memory does not grow with the number of rows observed (counting global operator new).

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/io/native_format_v2.hpp"
#include "toptheta/reference/attention.hpp"
#include "toptheta/reference/calibration.hpp"

#include "counting_allocator.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

/// Same shape, k, placement, lengths and sample counts; theta (and SDC terms) within
/// abs_tol + rel_tol * |value|.
::testing::AssertionResult tables_close(const ThresholdTable& want, const ThresholdTable& got,
                                        double rel_tol, double abs_tol) {
  if (want.num_layers() != got.num_layers() || want.num_heads() != got.num_heads())
    return ::testing::AssertionFailure() << "shapes differ";
  if (want.placement() != got.placement())
    return ::testing::AssertionFailure() << "placements differ";
  if (want.metadata().calibration_rows != got.metadata().calibration_rows)
    return ::testing::AssertionFailure() << "calibration_rows " << want.metadata().calibration_rows
                                         << " vs " << got.metadata().calibration_rows;
  for (Index l = 0; l < want.num_layers(); ++l) {
    if (want.k(l) != got.k(l)) return ::testing::AssertionFailure() << "k differs at layer " << l;
    for (Index h = 0; h < want.num_heads(); ++h) {
      const auto& a = want.entries(l, h);
      const auto& b = got.entries(l, h);
      if (a.size() != b.size())
        return ::testing::AssertionFailure() << "layer " << l << " head " << h << ": " << a.size()
                                             << " vs " << b.size() << " entries";
      for (std::size_t i = 0; i < a.size(); ++i) {
        const std::string where = "layer " + std::to_string(l) + " head " + std::to_string(h) +
                                  " L " + std::to_string(a[i].length);
        if (a[i].length != b[i].length || a[i].samples != b[i].samples)
          return ::testing::AssertionFailure()
                 << where << ": length/samples " << a[i].length << "/" << a[i].samples << " vs "
                 << b[i].length << "/" << b[i].samples;
        if (!(std::abs(a[i].theta - b[i].theta) <= abs_tol + rel_tol * std::abs(a[i].theta)))
          return ::testing::AssertionFailure()
                 << where << ": theta " << a[i].theta << " vs " << b[i].theta;
        if (a[i].has_sdc() != b[i].has_sdc())
          return ::testing::AssertionFailure() << where << ": SDC presence";
        if (a[i].has_sdc() &&
            !(std::abs(a[i].sdc - b[i].sdc) <= abs_tol + rel_tol * std::abs(a[i].sdc)))
          return ::testing::AssertionFailure()
                 << where << ": sdc " << a[i].sdc << " vs " << b[i].sdc;
      }
    }
  }
  return ::testing::AssertionSuccess();
}

CalibrationOptions cal_options(Index layers, Index heads, Index k, Placement pl, TacMode tac,
                               double lambda = 0.1) {
  CalibrationOptions c;
  c.num_layers = layers;
  c.num_heads = heads;
  c.default_k = k;
  c.placement = pl;
  c.tac = tac;
  c.lambda = lambda;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Kernel kCalibrate vs reference calibration.
// ---------------------------------------------------------------------------------------------

struct CalCase {
  Placement placement;
  TacMode tac;
  Dtype dtype;
  bool discrete;
  bool with_sdc;  // second pass accumulating SDC terms with the first pass's table
  std::string name;
};

template <class T>
void calibrate_vs_reference(const CalCase& c) {
  const Index Hq = 8, Hkv = 2, d = 64, k = 6;
  CalibrationOptions co = cal_options(2, Hq, k, c.placement, c.tac, 0.1);
  co.layer_k = {k, k + 10};  // layer 1 (used below) has k_l = k + 10
  Calibrator cal(co);
  ASSERT_TRUE(cal.validate().ok());
  reference::Calibration rcal(co);
  const Index kl = k + 10;
  // Several calls: prefills with P = 0 and P > 0, decodes at repeated lengths (several samples
  // per (h, L), so std > 0).
  struct CallShape {
    Index tokens, past;
  };
  const CallShape calls[] = {{40, 0}, {25, 10}, {1, 30}, {1, 30},
                             {1, 30}, {1, 63},  {1, 63}, {12, 28}};
  double serr = 0;
  std::uint64_t seed = 500;
  auto run_call = [&](Calibrator& kc, reference::Calibration& rc, const CallShape& cs,
                      std::uint64_t sd) {
    ProblemSpec sp;
    sp.T = cs.tokens;
    sp.P = cs.past;
    sp.Hq = Hq;
    sp.Hkv = Hkv;
    sp.d = d;
    sp.discrete = c.discrete;
    sp.q_sigma = 1.5;
    sp.layout = sd % 2 ? Layout::kHeadMajor : Layout::kTokenMajor;
    sp.seed = sd;
    Problem<T> p = make_problem<T>(sp);
    p.layer = 1;
    serr = std::max(serr, problem_score_error(p));
    AttentionOptions o;
    o.mode = AttentionMode::kCalibrate;
    o.calibrator = &kc;
    o.vmc = VmcMode::kOn;
    o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
    o.sdc = SdcMode::kExact;
    AttentionStats st;
    o.stats = &st;
    const bool pre = cs.tokens > 1;
    const auto args = p.args();
    const Status s = pre ? prefill(args, o) : decode(args, o);
    ASSERT_TRUE(s.ok()) << s.to_string();
    reference::ReferenceOptions ro;
    ro.calibration = &rc;
    ro.prefill_call = pre;
    const auto ref = reference::attention(args, o, ro);
    // Output: exact top-k (TAC on) or dense (TAC off), with the options' SDC / VMC.
    EXPECT_TRUE(outputs_close(ref, p.out.view, problem_tolerance(p))) << c.name << " " << sp.name();
    EXPECT_TRUE(stats_equal(ref.stats, st)) << c.name;
  };
  for (const auto& cs : calls) run_call(cal, rcal, cs, seed++);
  const ThresholdTable got = cal.finalize();
  const ThresholdTable want = rcal.finalize();
  // Only layer 1 was observed: layer 0 got no eligible rows, so the table is incomplete and the
  // checked finalize() says which heads.
  EXPECT_TRUE(got.validate_entries().ok());
  EXPECT_NE(got.validate().message().find("layer 0 heads 0-7 ("), std::string::npos)
      << got.validate().message();
  ThresholdTable checked(1, 1, 123);
  const Status fs = cal.finalize(&checked);
  EXPECT_EQ(fs.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(fs.message().find("calibration gave no thresholds for 8 of 16 (layer, head) pairs of "
                              "the (2 x 8) (layers x heads) calibrator: layer 0 heads 0-7 (no "
                              "eligible rows"),
            std::string::npos)
      << fs.message();
  EXPECT_EQ(checked.k(0), 123) << "output modified on error";
  // Rows with L <= k_l are never observed.
  for (Index h = 0; h < Hq; ++h)
    for (const auto& e : got.entries(1, h)) EXPECT_GT(e.length, kl);
  EXPECT_EQ(got.size(), want.size());
  EXPECT_GT(got.size(), 0u);
  EXPECT_EQ(got.metadata().lambda, 0.1);
  // theta tolerance: taus are placement values computed in float; pre: |d tau| <= serr (0 for
  // discrete data: taus exact and equal; then only mean/std rounding, ~1e-15 relative);
  // post: relative 2 serr + gamma_L + exp/division ulps. The std term can amplify by (1 + lambda).
  const double u = unit_roundoff<T>();
  const double rel =
      c.placement == Placement::kPreSoftmax ? 1e-12 : 4 * (2 * serr + gamma_n(80, u) + 8 * u);
  const double abs_tol = c.placement == Placement::kPreSoftmax ? 4 * serr + 1e-12 : 0.0;
  EXPECT_TRUE(tables_close(want, got, rel, abs_tol)) << c.name;

  if (c.with_sdc) {
    // Second pass: SDC terms C(l, h, L) with the first pass's thresholds (the same table object
    // for kernel and oracle, so keep decisions agree).
    // Layer 0 (never observed) is declared dense so that the SDC table is complete.
    ThresholdTable sdc_table = got;
    for (Index h = 0; h < Hq; ++h) ASSERT_TRUE(sdc_table.set_dense(0, h).ok());
    CalibrationOptions co2 = co;
    co2.sdc_thresholds = &sdc_table;
    Calibrator cal2(co2);
    const Status v2 = cal2.validate();
    ASSERT_TRUE(v2.ok()) << v2.message();
    reference::Calibration rcal2(co2);
    seed = 500;
    for (const auto& cs : calls) run_call(cal2, rcal2, cs, seed++);
    const ThresholdTable got2 = cal2.finalize();
    const ThresholdTable want2 = rcal2.finalize();
    EXPECT_TRUE(got2.has_sdc());
    // SDC terms are sums of up to L exp() in float: relative gamma_L + 2 serr + exp ulps.
    const double rel2 = std::max(rel, 4 * (2 * serr + gamma_n(80, u) + 8 * u));
    EXPECT_TRUE(tables_close(want2, got2, rel2, abs_tol + 1e-12)) << c.name << " (SDC pass)";
  }
}

class CalibrateMode : public ::testing::TestWithParam<CalCase> {};
TEST_P(CalibrateMode, MatchesReferenceCalibration) {
  const CalCase c = GetParam();
  dispatch(c.dtype, [&](auto tag) { calibrate_vs_reference<typename decltype(tag)::type>(c); });
}
INSTANTIATE_TEST_SUITE_P(
    All, CalibrateMode,
    ::testing::Values(
        CalCase{Placement::kPreSoftmax, TacMode::kOn, Dtype::kF32, true, true, "pre_tac_f32"},
        CalCase{Placement::kPreSoftmax, TacMode::kOff, Dtype::kF16, true, true, "pre_notac_f16"},
        CalCase{Placement::kPostSoftmax, TacMode::kOn, Dtype::kBF16, true, true, "post_tac_bf16"},
        CalCase{Placement::kPostSoftmax, TacMode::kOff, Dtype::kF64, false, true, "post_notac_f64"},
        CalCase{Placement::kPreSoftmax, TacMode::kOn, Dtype::kF64, false, true, "pre_tac_f64_cont"},
        CalCase{Placement::kPostSoftmax, TacMode::kOn, Dtype::kF32, false, false,
                "post_tac_f32_cont"}),
    [](const auto& info) { return info.param.name; });

// The convenience observers follow the same rules as the oracle.
TEST(CalibratorObserve, ScoresAndCausalBlockMatchReference) {
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    const CalibrationOptions co = cal_options(1, 2, 3, pl, TacMode::kOn, 0.5);
    Calibrator cal(co);
    reference::Calibration rc(co);
    Rng rng(5);
    std::normal_distribution<double> nd;
    const Index T = 20, P = 5, cols = P + T;
    std::vector<float> block(std::size_t(T * (cols + 2)));
    for (int rep = 0; rep < 3; ++rep) {
      for (auto& x : block) x = float(nd(rng));
      for (Index h = 0; h < 2; ++h) {
        ASSERT_TRUE(
            cal.observe_causal_block(0, h, MatrixView<const float>{block.data(), T, cols, cols + 2}, P)
                .ok());
        for (Index i = 0; i < T; ++i) {
          std::vector<double> s(std::size_t(P + i + 1));
          for (Index j = 0; j <= P + i; ++j)
            s[std::size_t(j)] = block[std::size_t(i * (cols + 2) + j)];
          rc.observe_scores(0, h, s);
        }
      }
      std::vector<float> row(40);
      for (auto& x : row) x = float(nd(rng));
      cal.observe_scores(0, 1, row.data(), 40);
      rc.observe_scores(0, 1, std::vector<double>(row.begin(), row.end()));
    }
    const double rel = pl == Placement::kPreSoftmax ? 1e-12 : 1e-5;
    EXPECT_TRUE(tables_close(rc.finalize(), cal.finalize(), rel, 1e-12)) << to_string(pl);
  }
}

// Semantics §8: a row with at most k_l unmasked keys has no tau, for BOTH placements. Masked
// (-inf) keys have p_j = 0 in post-softmax, a finite value, but they do not make a row eligible.
TEST(CalibratorEligibility, MaskedKeysDoNotCountForEitherPlacement) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const float full[6] = {5, 4, 3, 2, 1, 0};
  const float padded[6] = {5, 4, ninf, ninf, ninf, ninf};   // 2 real keys, k = 2: no tau
  const float masked[6] = {ninf, ninf, ninf, ninf, ninf, ninf};  // fully masked row
  const float three[6] = {ninf, 1, ninf, 2, ninf, 0.5f};    // 3 real keys > k: eligible
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    const CalibrationOptions co = cal_options(1, 1, 2, pl, TacMode::kOn, 0.0);
    Calibrator cal(co), only_full(co);
    reference::Calibration rc(co);
    for (const float* r : {full, padded, masked}) {
      cal.observe_scores(0, 0, r, 6);
      rc.observe_scores(0, 0, std::vector<double>(r, r + 6));
    }
    only_full.observe_scores(0, 0, full, 6);
    EXPECT_EQ(cal.rows_used(), 1u) << to_string(pl);
    EXPECT_EQ(rc.rows_used(), 1u) << to_string(pl);
    ThresholdTable t;
    ASSERT_TRUE(cal.finalize(&t).ok());
    ASSERT_EQ(t.entries(0, 0).size(), 1u);
    EXPECT_EQ(t.entries(0, 0)[0].samples, 1u) << to_string(pl);
    EXPECT_TRUE(tables_close(only_full.finalize(), t, 0.0, 0.0)) << to_string(pl);
    EXPECT_TRUE(tables_close(rc.finalize(), t, 1e-6, 0.0)) << to_string(pl);
    if (pl == Placement::kPreSoftmax) {
      EXPECT_EQ(t.entries(0, 0)[0].theta, 3.0);
    }
    // k_l + 1 unmasked keys: eligible, tau is the smallest real one (never a masked key's 0).
    Calibrator c3(co);
    c3.observe_scores(0, 0, three, 6);
    ASSERT_EQ(c3.rows_used(), 1u) << to_string(pl);
    const double tau = c3.finalize().entries(0, 0)[0].theta;
    const double want_tau = pl == Placement::kPreSoftmax
                                ? 0.5
                                : std::exp(0.5 - 2.0) / (1 + std::exp(-1.0) + std::exp(-1.5));
    EXPECT_NEAR(tau, want_tau, 1e-7) << to_string(pl);
  }
  // Several budgets: each budget has its own rule (3 real keys: k = 2 eligible, k = 4 not).
  CalibrationOptions co = cal_options(1, 1, 2, Placement::kPostSoftmax, TacMode::kOn, 0.0);
  co.k_values = {2, 4};
  Calibrator multi(co);
  multi.observe_scores(0, 0, three, 6);
  EXPECT_EQ(multi.rows_used_of(0), 1u);
  EXPECT_EQ(multi.rows_used_of(1), 0u);
}

// A prefill of T = 16 tokens after P = 8 over 2 query heads of one KV head, d = 16: rows of
// 9 to 24 keys.
ProblemSpec small_prefill_spec(std::uint64_t seed) {
  ProblemSpec sp;
  sp.T = 16;
  sp.P = 8;
  sp.Hq = 2;
  sp.Hkv = 1;
  sp.d = 16;
  sp.seed = seed;
  return sp;
}

// The kernels' kCalibrate path follows the same rule (rows masked by the bias, fully masked
// rows), and agrees with the oracle.
TEST(CalibratorEligibility, KernelCalibrationSkipsRowsWithAtMostKUnmaskedKeys) {
  const Index k = 4;
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    const ProblemSpec sp = small_prefill_spec(91);
    Problem<float> p = make_problem<float>(sp);
    const float ninf = -std::numeric_limits<float>::infinity();
    // t % 4 == 0: only keys j % 3 == 0 unmasked; t % 4 == 1: fully masked; else no mask.
    p.set_bias([&](Index t, Index j) {
      if (t % 4 == 1) return ninf;
      return (t % 4 == 0 && j % 3 != 0) ? ninf : 0.0f;
    });
    std::uint64_t want_rows = 0;
    for (Index t = 0; t < sp.T; ++t) {
      Index unmasked = 0;
      for (Index j = 0; j <= sp.P + t; ++j)
        unmasked += t % 4 == 1 ? 0 : (t % 4 == 0 && j % 3 != 0) ? 0 : 1;
      if (unmasked > k) want_rows += std::uint64_t(sp.Hq);
    }
    ASSERT_LT(want_rows, std::uint64_t(sp.T * sp.Hq));  // some rows are not eligible
    const CalibrationOptions co = cal_options(1, sp.Hq, k, pl, TacMode::kOn, 0.1);
    Calibrator cal(co);
    reference::Calibration rc(co);
    AttentionOptions o;
    o.mode = AttentionMode::kCalibrate;
    o.calibrator = &cal;
    const auto args = p.args();
    ASSERT_TRUE(prefill(args, o).ok());
    reference::ReferenceOptions ro;
    ro.calibration = &rc;
    ro.prefill_call = true;
    (void)reference::attention(args, o, ro);
    EXPECT_EQ(cal.rows_used(), want_rows) << to_string(pl);
    EXPECT_EQ(rc.rows_used(), want_rows) << to_string(pl);
    const double serr = problem_score_error(p);
    const double u = unit_roundoff<float>();
    const double rel =
        pl == Placement::kPreSoftmax ? 1e-12 : 4 * (2 * serr + gamma_n(40, u) + 8 * u);
    const double abs_tol = pl == Placement::kPreSoftmax ? 4 * serr + 1e-12 : 0.0;
    EXPECT_TRUE(tables_close(rc.finalize(), cal.finalize(), rel, abs_tol)) << to_string(pl);
  }
}

// Semantics §2 in the convenience observers: NaN is -inf (masked), +inf the largest finite
// float. The result equals that of the sanitised row, whatever the order of the keys (NaN used
// to reach std::nth_element, which needs a strict weak order).
TEST(CalibratorNonFinite, ObserveScoresAppliesTheScoreRules) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const float big = std::numeric_limits<float>::max();
  const auto sanitised = [&](std::vector<float> r) {
    for (float& x : r) x = std::isnan(x) ? -inf : x == inf ? big : x;
    return r;
  };
  const std::vector<std::vector<float>> rows = {
      {nan, 5, nan, 4, 3, nan, 1, 0, nan, -1},      // pre k = 2: theta 3
      {inf, inf, 1, 2, -inf, 0.5f, nan, 3, 2, 1},   // two +inf
      {inf, 1, 2, 3, 4, 5, -inf, -inf, 0, 7},       // one +inf
      {nan, nan, nan, nan, 2, 1, -inf, nan, 0, nan},  // 3 unmasked keys (k = 2): eligible
      {nan, nan, nan, nan, 2, 1, -inf, nan, nan, nan},  // 2 unmasked keys: no tau
  };
  Rng rng(17);
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (int shuffle = 0; shuffle < 40; ++shuffle) {
        std::vector<float> row = rows[r];
        if (shuffle > 0) std::shuffle(row.begin(), row.end(), rng);
        const std::vector<float> clean = sanitised(row);
        const CalibrationOptions co = cal_options(1, 1, 2, pl, TacMode::kOn, 0.0);
        Calibrator got(co), want(co), direct(co), block(co);
        got.observe_scores(0, 0, row.data(), Index(row.size()));
        want.observe_scores(0, 0, clean.data(), Index(clean.size()));
        ASSERT_TRUE(block.observe_causal_block(
                             0, 0, MatrixView<const float>{row.data(), 1, 10, 10}, 9).ok());
        // observe_row with NaN in its input (its precondition broken): NaN is a masked key.
        std::vector<float> a = row, scratch(row.size());
        if (pl == Placement::kPostSoftmax) {
          const float m = toptheta::detail::row_max(clean.data(), 10);
          toptheta::detail::softmax_probs(clean.data(), 10, m, a.data());
          for (std::size_t j = 0; j < a.size(); ++j)
            if (std::isnan(row[j])) a[j] = nan;
        }
        direct.observe_row<float>(0, 0, a.data(), 10, row.data(), 0.0f, scratch.data());
        const std::string what = std::string(to_string(pl)) + " row " + std::to_string(r) +
                                 " shuffle " + std::to_string(shuffle);
        EXPECT_EQ(got.rows_used(), r == 4 ? 0u : 1u) << what;
        for (const Calibrator* c : {&got, &block, &direct}) {
          EXPECT_EQ(c->rows_used(), want.rows_used()) << what;
          EXPECT_TRUE(tables_close(want.finalize(), c->finalize(), 0.0, 0.0)) << what;
        }
        // Third largest: {NaN.., 5, 4, 3, ..}: 3; {big, big, 3, ..}: 3 (pre), p = 0 (post);
        // {big, 7, 5, ..}: 5 (pre), p = 0 (post).
        const double want_theta[3][2] = {{3.0, -1.0}, {3.0, 0.0}, {5.0, 0.0}};
        if (r < 3 && want_theta[r][pl == Placement::kPreSoftmax ? 0 : 1] >= 0) {
          EXPECT_EQ(got.finalize().entries(0, 0)[0].theta,
                    want_theta[r][pl == Placement::kPreSoftmax ? 0 : 1])
              << what;
        }
      }
  // k = 1, {+inf, +inf, 1, 2}: pre tau = FLT_MAX, post tau = 0.5 (two equal largest scores).
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    Calibrator c(cal_options(1, 1, 1, pl, TacMode::kOn, 0.0));
    const float s[4] = {inf, inf, 1, 2};
    c.observe_scores(0, 0, s, 4);
    ThresholdTable t;
    ASSERT_TRUE(c.finalize(&t).ok()) << to_string(pl);
    EXPECT_EQ(t.entries(0, 0)[0].theta, pl == Placement::kPreSoftmax ? double(big) : 0.5);
  }
}

// The SDC pass of observe_row (pre-softmax, a table of thresholds): a NaN in `a` or `scores` is
// a masked key, whichever position it holds. A NaN at key 0 was taken as the row maximum (every
// a[j] > NaN is false) and made the row's SDC term NaN: the per-length table lost its terms
// (has_sdc() false) and finalize_compact() failed with "no eligible rows".
TEST(CalibratorNonFinite, SdcPassMasksANaNAtAnyKey) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // theta = 10 keeps nothing: keep-max keeps the maximum, the SDC term sums the other keys.
  // {NaN, 1, 2, 3, 0}, max 3: e^-2 + e^-1 + e^-3; {4, 1, 2, 3, 0}, max 4: e^-3 + e^-2 + e^-1 +
  // e^-4.
  const double row1 = std::exp(-1.0) + std::exp(-2.0) + std::exp(-3.0);
  const double row2 = row1 + std::exp(-4.0);
  for (int pos = 0; pos < 5; ++pos)
    for (const bool compact : {false, true}) {
      ThresholdTable per_length(1, 1, 2);
      per_length.metadata().placement = Placement::kPreSoftmax;
      ThresholdEntry e;
      e.length = 5;
      e.theta = 10;
      e.samples = 1;
      ASSERT_TRUE(per_length.set(0, 0, e).ok());
      CalibrationOptions co = cal_options(1, 1, 2, Placement::kPreSoftmax, TacMode::kOn, 0.0);
      co.sdc_thresholds = &per_length;
      co.compact.min_bucket_samples = 1;
      Calibrator cal(co);
      std::vector<float> a = {3, 1, 2, 3, 0}, scratch(5);
      a[std::size_t(pos)] = nan;
      std::vector<float> s = a;
      // The row has two 3s: its maximum is 3 wherever the NaN is.
      cal.observe_row<float>(0, 0, a.data(), 5, s.data(), 3.0f, scratch.data());
      const float clean[5] = {4, 1, 2, 3, 0};
      cal.observe_row<float>(0, 0, clean, 5, clean, 4.0f, scratch.data());
      ASSERT_EQ(cal.rows_used(), 2u);
      // The dropped keys of row 1 are the unmasked ones other than its maximum (a 3).
      double want1 = 0;
      std::vector<float> rest;
      for (int j = 0; j < 5; ++j)
        if (j != pos) rest.push_back(a[std::size_t(j)]);
      const auto top = std::max_element(rest.begin(), rest.end());
      for (auto it = rest.begin(); it != rest.end(); ++it)
        if (it != top) want1 += std::exp(double(*it) - 3.0);
      if (pos == 0) {
        EXPECT_NEAR(want1, row1, 1e-12);
      }
      const double want = (want1 + row2) / 2;
      if (!compact) {
        ThresholdTable t;
        ASSERT_TRUE(cal.finalize(&t).ok());
        ASSERT_TRUE(t.has_sdc()) << "NaN at key " << pos;
        EXPECT_NEAR(t.entries(0, 0)[0].sdc, want, 1e-6) << "NaN at key " << pos;
      } else {
        ThresholdSet set;
        const Status st = cal.finalize_compact(&set);
        ASSERT_TRUE(st.ok()) << "NaN at key " << pos << ": " << st.message();
        EXPECT_NEAR(set.tables()[0].lookup(0, 0, 5).sdc, want, 1e-6) << "NaN at key " << pos;
      }
    }
}

// Bad input never reaches memory: a block with cols < past + rows, a (layer, head) out of range,
// L < 0, null pointers, and a calibrator whose options do not validate.
TEST(CalibratorBadInput, ObserveRejectsWhatItCannotRead) {
  const CalibrationOptions co = cal_options(1, 2, 2, Placement::kPreSoftmax, TacMode::kOn, 0.0);
  const std::vector<float> s(16, 1.0f);  // exactly 4 x 4: any read past it is out of bounds
  {
    Calibrator cal(co);
    const Status st = cal.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 10);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("observe_causal_block(): scores has cols = 4 but past + rows = 10 + 4"),
              std::string::npos)
        << st.message();
    EXPECT_EQ(cal.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 1).code(),
              StatusCode::kInvalidArgument);  // needs cols >= 5
    EXPECT_TRUE(cal.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 0).ok());
    EXPECT_TRUE(cal.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 2, 8, 8}, 6).ok());
    EXPECT_TRUE(cal.observe_causal_block(0, 0, MatrixView<const float>{nullptr, 0, 4, 4}, 7).ok());
    const std::pair<MatrixView<const float>, Index> bad[] = {
        {{s.data(), 4, 4, 4}, -1},   // past < 0
        {{nullptr, 2, 4, 4}, 0},     // null data
        {{s.data(), 2, 4, 3}, 0},    // row_stride < cols
        {{s.data(), -1, 4, 4}, 0},   // negative rows
    };
    for (const auto& b : bad)
      EXPECT_EQ(cal.observe_causal_block(0, 0, b.first, b.second).code(),
                StatusCode::kInvalidArgument);
    const Status hs = cal.observe_causal_block(0, 2, MatrixView<const float>{s.data(), 4, 4, 4}, 0);
    EXPECT_NE(hs.message().find("(layer, head) = (0, 2) is out of range for the (1 x 2)"),
              std::string::npos)
        << hs.message();
    EXPECT_FALSE(cal.observe_causal_block(-1, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 0).ok());
    EXPECT_EQ(cal.rows_used(), 2u + 2u) << "only the valid blocks are observed";
    EXPECT_TRUE(cal.observe_status().ok()) << "observe_causal_block reports its errors itself";
  }
  {
    // observe_scores / observe_row are void: rejected rows are recorded and fail finalize*().
    Calibrator cal(co);
    cal.observe_scores(0, 7, s.data(), 8);  // head 7 of a 2-head calibrator
    cal.observe_scores(1, 0, s.data(), 8);
    cal.observe_scores(0, 0, s.data(), -3);
    cal.observe_scores(0, 0, nullptr, 8);
    std::vector<float> scratch(8);
    cal.observe_row<float>(0, -1, s.data(), 8, s.data(), 1.0f, scratch.data());
    cal.observe_row<float>(0, 0, s.data(), 8, nullptr, 1.0f, scratch.data());
    cal.observe_row<float>(0, 0, s.data(), 8, s.data(), 1.0f, nullptr);
    // A null pointer is recorded for a row too short to observe too (L <= k = 2).
    cal.observe_scores(0, 0, nullptr, 2);
    cal.observe_row<float>(0, 0, nullptr, 1, s.data(), 1.0f, scratch.data());
    EXPECT_EQ(cal.rows_used(), 0u);
    cal.observe_scores(0, 0, s.data(), 8);
    cal.observe_scores(0, 1, s.data(), 8);
    EXPECT_EQ(cal.rows_used(), 2u);
    const Status os = cal.observe_status();
    EXPECT_EQ(os.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(os.message(),
              "the calibrator rejected 9 observed rows; the first: observe_scores(): (layer, head) "
              "= (0, 7) is out of range for the (1 x 2) (layers x heads) calibrator");
    ThresholdTable t(1, 1, 99);
    EXPECT_EQ(cal.finalize(&t).message(), os.message());
    EXPECT_EQ(t.k(0), 99) << "output modified on error";
    ThresholdSet set;
    EXPECT_EQ(cal.finalize_per_length(&set).message(), os.message());
    EXPECT_EQ(cal.finalize_compact(&set).message(), os.message());
    // merge() carries the rejections; copies keep them.
    Calibrator clean(co);
    clean.observe_scores(0, 0, s.data(), 8);
    clean.observe_scores(0, 1, s.data(), 8);
    EXPECT_TRUE(clean.finalize(&t).ok());
    Calibrator copy = cal;
    EXPECT_EQ(copy.observe_status().message(), os.message());
    ASSERT_TRUE(clean.merge(cal).ok());
    EXPECT_EQ(clean.observe_status().message(), os.message());
  }
  {
    // Options that do not validate: nothing is observed (default_k = -1 used to index
    // scratch[-1]), observe_causal_block and finalize*() return the validate() error.
    CalibrationOptions bad = co;
    bad.default_k = -1;
    Calibrator cal(bad);
    const std::string want = "CalibrationOptions::default_k must be >= 1, got -1";
    cal.observe_scores(0, 0, s.data(), 8);
    std::vector<float> scratch(8);
    cal.observe_row<float>(0, 0, s.data(), 8, s.data(), 1.0f, scratch.data());
    EXPECT_EQ(cal.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 0).message(),
              want);
    EXPECT_EQ(cal.rows_used(), 0u);
    ThresholdTable t;
    EXPECT_EQ(cal.finalize(&t).message(), want);
    // A default-constructed calibrator (no layers) observes nothing either.
    Calibrator none;
    none.observe_scores(0, 0, s.data(), 8);
    none.observe_row<float>(0, 0, s.data(), 8, s.data(), 1.0f, scratch.data());
    EXPECT_EQ(none.observe_causal_block(0, 0, MatrixView<const float>{s.data(), 4, 4, 4}, 0).code(),
              StatusCode::kInvalidArgument);
    EXPECT_FALSE(none.finalize(&t).ok());
  }
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

// Calibrating on a single row (lambda irrelevant: std = 0) and running Top-theta on the same row
// keeps exactly k per head (continuous data: no ties).
template <class T>
void single_row_keeps_k(Placement pl, bool prefill_call) {
  const Index k = 8;
  ProblemSpec sp;
  sp.T = prefill_call ? 30 : 1;
  sp.P = prefill_call ? 20 : 199;
  sp.Hq = 8;
  sp.Hkv = 4;
  sp.d = 64;
  sp.q_sigma = 1.5;
  sp.seed = 71;
  Problem<T> p = make_problem<T>(sp);
  Calibrator cal(cal_options(1, sp.Hq, k, pl, TacMode::kOn, 0.1));
  AttentionOptions o;
  o.mode = AttentionMode::kCalibrate;
  o.calibrator = &cal;
  const auto args = p.args();
  ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
  const ThresholdTable table = cal.finalize();
  AttentionOptions t;
  t.mode = AttentionMode::kTopTheta;
  t.placement = pl;
  t.thresholds = &table;
  AttentionStats st;
  st.enable_per_head(sp.Hq);
  t.stats = &st;
  ASSERT_TRUE((prefill_call ? prefill(args, t) : decode(args, t)).ok());
  EXPECT_EQ(st.empty_rows, 0u);
  EXPECT_EQ(st.thresholded_rows, std::uint64_t(sp.Hq * sp.T));
  EXPECT_EQ(st.elements_kept_thresholded, std::uint64_t(k) * st.thresholded_rows) << to_string(pl);
  if (!prefill_call) {
    for (Index h = 0; h < sp.Hq; ++h)
      EXPECT_EQ(st.kept_per_head[std::size_t(h)], std::uint64_t(k)) << "head " << h;
  }
}
TEST(CalibratorProperty, SingleRowKeepsExactlyKPreDecode) {
  single_row_keeps_k<float>(Placement::kPreSoftmax, false);
}
TEST(CalibratorProperty, SingleRowKeepsExactlyKPostDecode) {
  single_row_keeps_k<Eigen::half>(Placement::kPostSoftmax, false);
}
TEST(CalibratorProperty, SingleRowKeepsExactlyKPrePrefill) {
  single_row_keeps_k<double>(Placement::kPreSoftmax, true);
}
TEST(CalibratorProperty, SingleRowKeepsExactlyKPostPrefill) {
  single_row_keeps_k<Eigen::bfloat16>(Placement::kPostSoftmax, true);
}

// theta = -inf keeps every key: Top-theta equals dense for every compensation variant.
template <class T>
void neg_inf_is_dense(bool prefill_call) {
  ProblemSpec sp;
  sp.T = prefill_call ? 33 : 1;
  sp.P = prefill_call ? 40 : 120;
  sp.Hq = 8;
  sp.Hkv = 2;
  sp.d = 128;
  sp.seed = 72;
  sp.layout = Layout::kHeadMajor;
  Problem<T> p = make_problem<T>(sp);
  const auto args = p.args();
  AttentionOptions dense;
  ASSERT_TRUE((prefill_call ? prefill(args, dense) : decode(args, dense)).ok());
  HeadsBuffer<acc_t<T>> dense_out =
      make_heads<acc_t<T>>(sp.T, sp.Hq, sp.d, Layout::kTokenMajor, acc_t<T>(0));
  for (Index t = 0; t < sp.T; ++t)
    for (Index h = 0; h < sp.Hq; ++h)
      for (Index i = 0; i < sp.d; ++i) dense_out.view(t, h, i) = p.out.view(t, h, i);
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
    for (bool explicit_entries : {true, false}) {
      ThresholdTable table(1, sp.Hq, 4);
      table.metadata().placement = pl;
      if (!explicit_entries) {  // heads declared dense look up -inf
        for (Index h = 0; h < sp.Hq; ++h) ASSERT_TRUE(table.set_dense(0, h).ok());
      }
      if (explicit_entries)
        for (Index h = 0; h < sp.Hq; ++h)
          for (Index L = 1; L <= sp.L(); ++L) {
            ThresholdEntry e;
            e.length = L;
            e.theta = -std::numeric_limits<double>::infinity();
            e.sdc = 0.0;
            ASSERT_TRUE(table.set(0, h, e).ok());
          }
      for (SdcMode sdc :
           {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated})
        for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn}) {
          if (sdc == SdcMode::kCalibrated && (!explicit_entries || pl == Placement::kPostSoftmax))
            continue;
          AttentionOptions o;
          o.mode = AttentionMode::kTopTheta;
          o.placement = pl;
          o.sdc = sdc;
          o.vmc = vmc;
          o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
          o.thresholds = &table;
          AttentionStats st;
          o.stats = &st;
          p.clear_out();
          ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
          EXPECT_TRUE(views_close(HeadsView<acc_t<T>>(p.out.view), dense_out.view,
                                  2 * problem_tolerance(p)))
              << to_string(pl) << " " << to_string(sdc) << " vmc " << (vmc == VmcMode::kOn);
          EXPECT_EQ(st.elements_kept, st.elements_total);
        }
    }
}
TEST(CalibratorProperty, NegInfThetaIsDenseDecode) { neg_inf_is_dense<float>(false); }
TEST(CalibratorProperty, NegInfThetaIsDensePrefill) { neg_inf_is_dense<Eigen::half>(true); }

// Pre-softmax + exact SDC: weights are the dense probabilities of the kept keys. With V rows
// e_j (identity, L <= d) the output is the weight vector.
template <class T>
void exact_sdc_is_dense_probabilities(bool prefill_call, AttentionMode mode) {
  using Acc = acc_t<T>;
  ProblemSpec sp;
  sp.T = prefill_call ? 40 : 1;
  sp.P = prefill_call ? 60 : 99;  // L = 100 <= d
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 128;
  sp.discrete = true;
  sp.scale = pow2_scale(128);
  sp.seed = 73;
  Problem<T> p = make_problem<T>(sp);
  fill_view(p.v, [](Index j, Index, Index i) { return j == i ? 1.0 : 0.0; });
  const auto args = p.args();
  AttentionOptions dense;
  ASSERT_TRUE((prefill_call ? prefill(args, dense) : decode(args, dense)).ok());
  std::vector<double> probs;
  for (Index t = 0; t < sp.T; ++t)
    for (Index h = 0; h < sp.Hq; ++h)
      for (Index i = 0; i < sp.d; ++i) probs.push_back(double(p.out.view(t, h, i)));
  Rng rng(74);
  ThetaPlan plan;
  plan.target_hi = 20;
  const ThresholdTable table = make_margin_table(p, Placement::kPreSoftmax, 8, plan, rng, 1);
  AttentionOptions o;
  o.mode = mode;
  o.k = 8;
  o.sdc = SdcMode::kExact;
  o.thresholds = &table;
  p.clear_out();
  ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const auto ref = reference::attention(args, o, ro);
  const double tol = 64 * unit_roundoff<T>();
  Index checked = 0;
  for (Index t = 0; t < sp.T; ++t)
    for (Index h = 0; h < sp.Hq; ++h) {
      const auto& rec = ref.row(t, h);
      std::vector<char> kept(std::size_t(sp.d), 0);
      for (auto j : rec.kept) kept[std::size_t(j)] = 1;
      for (Index i = 0; i < sp.d; ++i) {
        const double want =
            kept[std::size_t(i)] ? probs[std::size_t((t * sp.Hq + h) * sp.d + i)] : 0.0;
        EXPECT_NEAR(double(p.out.view(t, h, i)), want, tol)
            << "t " << t << " h " << h << " i " << i;
      }
      checked += rec.thresholded && !rec.empty;
    }
  EXPECT_GT(checked, 0);
  (void)sizeof(Acc);
}
TEST(CalibratorProperty, PreExactSdcGivesDenseProbabilitiesDecode) {
  exact_sdc_is_dense_probabilities<float>(false, AttentionMode::kTopTheta);
}
TEST(CalibratorProperty, PreExactSdcGivesDenseProbabilitiesPrefill) {
  exact_sdc_is_dense_probabilities<double>(true, AttentionMode::kTopTheta);
}
TEST(CalibratorProperty, PreExactSdcGivesDenseProbabilitiesTopk) {
  exact_sdc_is_dense_probabilities<Eigen::half>(true, AttentionMode::kTopK);
}

// VMC with all V rows equal returns that row, for every selection / compensation variant.
template <class T>
void vmc_equal_rows(bool prefill_call) {
  ProblemSpec sp;
  sp.T = prefill_call ? 24 : 1;
  sp.P = prefill_call ? 40 : 80;
  sp.Hq = 8;
  sp.Hkv = 4;
  sp.d = 8;
  sp.discrete = true;
  sp.scale = pow2_scale(8);
  sp.seed = 75;
  Problem<T> p = make_problem<T>(sp);
  std::vector<double> c(std::size_t(4 * 8));
  Rng rng(76);
  std::normal_distribution<double> nd;
  for (auto& x : c) x = double(T(nd(rng)));
  fill_view(p.v, [&](Index, Index g, Index i) { return c[std::size_t(g * 8 + i)]; });
  const auto args = p.args();
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    Rng trng(77);
    ThetaPlan plan;
    plan.with_sdc = true;
    plan.p_empty = 0.2;
    const ThresholdTable table = make_margin_table(p, pl, 4, plan, trng, 1);
    for (AttentionMode mode : {AttentionMode::kTopK, AttentionMode::kTopTheta})
      for (SdcMode sdc :
           {SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated})
        for (EmptyRowPolicy er : {EmptyRowPolicy::kKeepMax, EmptyRowPolicy::kMeanV})
          for (Index cap : {Index(0), Index(2)}) {
            if (mode == AttentionMode::kTopK && sdc == SdcMode::kCalibrated &&
                pl == Placement::kPreSoftmax)
              continue;
            AttentionOptions o;
            o.mode = mode;
            o.k = 4;
            o.placement = pl;
            o.sdc = sdc;
            o.sdc_scale = 1.5;
            o.vmc = VmcMode::kOn;
            o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
            o.empty_row = er;
            o.cap_k = cap;
            o.thresholds = &table;
            p.clear_out();
            ASSERT_TRUE((prefill_call ? prefill(args, o) : decode(args, o)).ok());
            for (Index t = 0; t < sp.T; ++t)
              for (Index h = 0; h < sp.Hq; ++h)
                for (Index i = 0; i < 8; ++i)
                  ASSERT_NEAR(
                      double(p.out.view(t, h, i)), c[std::size_t((h / 2) * 8 + i)],
                      64 * unit_roundoff<T>() * (1 + std::abs(c[std::size_t((h / 2) * 8 + i)])))
                      << to_string(mode) << " " << to_string(pl) << " " << to_string(sdc) << " "
                      << to_string(er) << " cap " << cap << " t " << t << " h " << h;
          }
  }
}
TEST(CalibratorProperty, VmcWithEqualVRowsReturnsThatRowDecode) { vmc_equal_rows<float>(false); }
TEST(CalibratorProperty, VmcWithEqualVRowsReturnsThatRowPrefill) {
  vmc_equal_rows<Eigen::bfloat16>(true);
}

// Rows from fixed per-head distributions: head h has queries q = mu_h + N(0, I) * sigma_h, keys
// N(0, I). A table calibrated on such rows keeps k +- 15% on average on fresh rows.
TEST(CalibratorProperty, KeepsAboutKOnFreshRowsFromTheSameDistributions) {
  const Index Hq = 4, Hkv = 2, d = 64, k = 16;
  const Index lengths[] = {96, 200, 384};
  const int rows_per_length = 40;
  const double mu[] = {0.0, 0.3, 0.0, -0.2};
  const double sig[] = {1.0, 1.5, 2.5, 0.7};
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    Calibrator cal(cal_options(1, Hq, k, pl, TacMode::kOn, 0.1));
    Rng rng(80);
    std::normal_distribution<double> nd;
    auto run = [&](AttentionOptions o, Index L) {
      ProblemSpec sp;
      sp.T = 1;
      sp.P = L - 1;
      sp.Hq = Hq;
      sp.Hkv = Hkv;
      sp.d = d;
      sp.seed = rng();
      Problem<float> p = make_problem<float>(sp);
      o.threads = 1;  // many tiny calls: keep OpenMP start-up out of the runtime
      fill_view(p.q, [&](Index, Index h, Index) { return mu[h] + sig[h] * nd(rng); });
      ASSERT_TRUE(decode(p.args(), o).ok());
    };
    AttentionOptions co;
    co.mode = AttentionMode::kCalibrate;
    co.calibrator = &cal;
    for (Index L : lengths)
      for (int r = 0; r < rows_per_length; ++r) run(co, L);
    const ThresholdTable table = cal.finalize();
    AttentionStats st;
    st.enable_per_head(Hq);
    AttentionOptions to;
    to.mode = AttentionMode::kTopTheta;
    to.placement = pl;
    to.thresholds = &table;
    to.stats = &st;
    for (Index L : lengths)
      for (int r = 0; r < rows_per_length; ++r) run(to, L);
    const double rows = double(rows_per_length) * 3;
    for (Index h = 0; h < Hq; ++h) {
      const double mean_kept = double(st.kept_per_head[std::size_t(h)]) / rows;
      EXPECT_GT(mean_kept, 0.85 * k) << to_string(pl) << " head " << h;
      EXPECT_LT(mean_kept, 1.15 * k) << to_string(pl) << " head " << h;
    }
    EXPECT_NEAR(st.kept_per_thresholded_row(), double(k), 0.15 * k);
  }
}

// merge(calibrate(A), calibrate(B)) == calibrate(A u B): theta and SDC terms within 1e-12 relative.
TEST(CalibratorMerge, EqualsCalibratingTheUnion) {
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax})
    for (bool with_sdc : {false, true}) {
      ThresholdTable sdc_table(2, 4, 5);
      sdc_table.metadata().placement = pl;
      for (Index l = 0; l < 2; ++l)
        for (Index h = 0; h < 4; ++h) {
          ThresholdEntry e;
          e.length = 30;
          e.theta = pl == Placement::kPreSoftmax ? 0.5 : 0.03;
          ASSERT_TRUE(sdc_table.set(l, h, e).ok());
        }
      CalibrationOptions co = cal_options(2, 4, 5, pl, TacMode::kOn, 0.3);
      if (with_sdc) co.sdc_thresholds = &sdc_table;
      Calibrator a(co), b(co), all(co);
      auto feed = [&](Calibrator& c1, Calibrator& c2, std::uint64_t seed, Index T, Index P,
                      Index layer) {
        ProblemSpec sp;
        sp.T = T;
        sp.P = P;
        sp.Hq = 4;
        sp.Hkv = 1;
        sp.d = 8;
        sp.seed = seed;
        Problem<float> p = make_problem<float>(sp);
        p.layer = layer;
        AttentionOptions o;
        o.mode = AttentionMode::kCalibrate;
        o.calibrator = &c1;
        ASSERT_TRUE((T > 1 ? prefill(p.args(), o) : decode(p.args(), o)).ok());
        o.calibrator = &c2;
        ASSERT_TRUE((T > 1 ? prefill(p.args(), o) : decode(p.args(), o)).ok());
      };
      for (std::uint64_t s = 0; s < 6; ++s) feed(a, all, 100 + s, s % 2 ? 1 : 20, 25, Index(s % 2));
      for (std::uint64_t s = 0; s < 9; ++s)
        feed(b, all, 200 + s, s % 3 ? 1 : 15, 25 + Index(s % 2), Index(s % 2));
      ASSERT_TRUE(a.merge(b).ok());
      EXPECT_EQ(a.rows_used(), all.rows_used());
      EXPECT_TRUE(tables_close(all.finalize(), a.finalize(), 1e-12, 1e-300))
          << to_string(pl) << " sdc " << with_sdc;
    }
}

TEST(CalibratorMerge, RejectsIncompatibleCalibrators) {
  Calibrator a(cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn));
  EXPECT_FALSE(
      a.merge(Calibrator(cal_options(3, 4, 5, Placement::kPreSoftmax, TacMode::kOn))).ok());
  EXPECT_FALSE(
      a.merge(Calibrator(cal_options(2, 8, 5, Placement::kPreSoftmax, TacMode::kOn))).ok());
  EXPECT_FALSE(
      a.merge(Calibrator(cal_options(2, 4, 6, Placement::kPreSoftmax, TacMode::kOn))).ok());
  EXPECT_FALSE(
      a.merge(Calibrator(cal_options(2, 4, 5, Placement::kPostSoftmax, TacMode::kOn))).ok());
  ThresholdTable t(2, 4, 5);
  CalibrationOptions with = cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn);
  with.sdc_thresholds = &t;
  EXPECT_FALSE(a.merge(Calibrator(with)).ok());
  // Rows sampled at another fraction stand for another share of the stream.
  CalibrationOptions half = cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn);
  half.sample_fraction = 0.5;
  const Status hs = a.merge(Calibrator(half));
  EXPECT_EQ(hs.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(hs.message().find("different sample fractions (1 and 0.5)"), std::string::npos)
      << hs.message();
  EXPECT_TRUE(
      a.merge(Calibrator(cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOff))).ok());
}

// Thresholds are in units of the scaled scores, so a table is only valid for the head_dim and
// score scale it was calibrated with (semantics §8): the kernels' kCalibrate calls record both,
// finalize*() write them into the tables, and a Top-θ call of another head_dim or effective
// scale is refused instead of keeping another set of keys. Clearing the metadata is the explicit
// way to apply a table anyway.
TEST(CalibratorGeometry, KernelCallsRecordItAndTopThetaCallsMustMatchIt) {
  const ProblemSpec sp = small_prefill_spec(17);
  const Problem<float> p = make_problem<float>(sp);
  for (Placement pl : {Placement::kPreSoftmax, Placement::kPostSoftmax}) {
    Calibrator cal(cal_options(1, sp.Hq, 4, pl, TacMode::kOn));
    EXPECT_EQ(cal.recorded_head_dim(), 0);
    EXPECT_EQ(cal.recorded_score_scale(), 0.0);
    AttentionOptions co;
    co.mode = AttentionMode::kCalibrate;
    co.calibrator = &cal;
    const auto args = p.args();
    ASSERT_TRUE(prefill(args, co).ok());
    EXPECT_EQ(cal.recorded_head_dim(), 16);
    EXPECT_EQ(cal.recorded_score_scale(), 0.25);  // 1/sqrt(16): args.scale is 0
    // An explicit scale equal to the default agrees; another one is refused before any row is
    // observed, and leaves the calibrator usable.
    auto same = args;
    same.scale = 0.25;
    ASSERT_TRUE(prefill(same, co).ok());
    const std::uint64_t rows = cal.rows_used();
    auto other = args;
    other.scale = 0.3;
    const Status cs = prefill(other, co);
    EXPECT_EQ(cs.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(cs.message().find("the calibrator's earlier calls recorded score scale 0.25, the "
                                "call's effective score scale is 0.3"),
              std::string::npos)
        << cs.message();
    EXPECT_EQ(cal.rows_used(), rows);
    ThresholdTable t;
    ASSERT_TRUE(cal.finalize(&t).ok());
    EXPECT_EQ(t.metadata().head_dim, 16);
    EXPECT_EQ(t.metadata().score_scale, 0.25);

    // Top-θ with the table: the calibration geometry runs, another one is refused.
    const auto with_table = [](const ThresholdTable& table) {
      AttentionOptions r = toptheta_options(table);
      r.vbar = VbarSource::kSumCache;  // the problem keeps no running V sum
      return r;
    };
    const AttentionOptions o = with_table(t);
    EXPECT_TRUE(prefill(args, o).ok());
    EXPECT_TRUE(prefill(same, o).ok());
    const Status ss = prefill(other, o);
    EXPECT_EQ(ss.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(ss.message().find("the threshold table recorded score scale 0.25, the call's "
                                "effective score scale is 0.3"),
              std::string::npos)
        << ss.message();
    // Within kScoreScaleTolerance (float rounding of 1/sqrt(d)) is the same scale.
    auto rounded = args;
    rounded.scale = double(1.0f / std::sqrt(16.0f)) * (1 + 1e-7);
    EXPECT_TRUE(prefill(rounded, o).ok());
    ProblemSpec sp8 = sp;
    sp8.d = 8;
    const Problem<float> p8 = make_problem<float>(sp8);
    const Status ds = prefill(p8.args(), o);
    EXPECT_EQ(ds.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(
        ds.message().find("the threshold table recorded head_dim 16, the call has head_dim 8"),
        std::string::npos)
        << ds.message();
    // Decode checks the same.
    ProblemSpec one = sp8;
    one.T = 1;
    const Problem<float> d8 = make_problem<float>(one);
    EXPECT_EQ(decode(d8.args(), o).code(), StatusCode::kInvalidArgument);
    // Clearing the recorded geometry applies the table anyway: the caller's explicit choice.
    ThresholdTable any = t;
    any.metadata().head_dim = 0;
    any.metadata().score_scale = 0;
    EXPECT_TRUE(prefill(other, with_table(any)).ok());
    EXPECT_TRUE(prefill(p8.args(), with_table(any)).ok());

    // A call of another geometry that reaches the calibrator anyway (another thread recorded
    // first) is recorded as rejected, so finalize*() fail.
    Calibrator raced(cal_options(1, sp.Hq, 4, pl, TacMode::kOn));
    raced.record_call_geometry(16, 0.25);
    raced.record_call_geometry(16, 0.25);
    EXPECT_TRUE(raced.observe_status().ok());
    raced.record_call_geometry(8, 1 / std::sqrt(8.0));
    const Status rs = raced.observe_status();
    EXPECT_EQ(rs.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(rs.message().find("recorded head_dim 16, the call has head_dim 8"), std::string::npos)
        << rs.message();
    ThresholdTable rt;
    EXPECT_FALSE(raced.finalize(&rt).ok());

    // Merging: calibrators of different geometry are refused; one fed through observe_scores()
    // (no geometry) merges and takes the other's.
    Calibrator small(cal_options(1, sp.Hq, 4, pl, TacMode::kOn));
    AttentionOptions so = co;
    so.calibrator = &small;
    ASSERT_TRUE(prefill(p8.args(), so).ok());
    Calibrator copy = cal;
    const Status ms = copy.merge(small);
    EXPECT_EQ(ms.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(ms.message().find("head_dim 16, score scale 0.25 and head_dim 8"), std::string::npos)
        << ms.message();
    EXPECT_EQ(copy.rows_used(), cal.rows_used()) << "a refused merge adds nothing";
    Calibrator fresh(cal_options(1, sp.Hq, 4, pl, TacMode::kOn));
    ASSERT_TRUE(fresh.merge(cal).ok());
    EXPECT_EQ(fresh.recorded_head_dim(), 16);
    EXPECT_EQ(fresh.recorded_score_scale(), 0.25);

    // The SDC pass's thresholds carry the geometry of the first pass.
    CalibrationOptions second = cal_options(1, sp.Hq, 4, pl, TacMode::kOn);
    second.sdc_thresholds = &t;
    Calibrator pass2(second);
    AttentionOptions o2 = co;
    o2.calibrator = &pass2;
    EXPECT_TRUE(prefill(args, o2).ok());
    const Status s2 = prefill(p8.args(), o2);
    EXPECT_EQ(s2.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s2.message().find("CalibrationOptions::sdc_thresholds recorded head_dim 16"),
              std::string::npos)
        << s2.message();

    // No table records a head_dim beyond kMaxRecordedHeadDim: such calls do not calibrate.
    EXPECT_EQ(cal.check_call_geometry(kMaxRecordedHeadDim + 1, 1.0).code(),
              StatusCode::kInvalidArgument);

    // Tables of one set share the geometry: a scale within kScoreScaleTolerance (another
    // rounding of 1/sqrt(d)) joins and takes the set's; another scale, an unrecorded one or
    // another head_dim is refused, naming both.
    ThresholdSet set;
    ASSERT_TRUE(set.add(t).ok());
    ThresholdTable t2 = t;
    for (Index l = 0; l < t2.num_layers(); ++l) ASSERT_TRUE(t2.set_k(l, 8).ok());
    t2.metadata().score_scale = 0.5;
    const Status as = set.add(t2);
    EXPECT_EQ(as.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(as.message().find("head_dim 16, score scale 0.5 added to a set of head_dim 16, "
                                "score scale 0.25"),
              std::string::npos)
        << as.message();
    t2.metadata().score_scale = 0;
    EXPECT_EQ(set.add(t2).code(), StatusCode::kInvalidArgument);
    t2.metadata().score_scale = 0.25;
    t2.metadata().head_dim = 32;
    EXPECT_EQ(set.add(t2).code(), StatusCode::kInvalidArgument);
    t2.metadata().head_dim = 16;
    t2.metadata().score_scale = 0.25 * (1 + 4e-8);
    ASSERT_TRUE(set.add(t2).ok());
    EXPECT_EQ(set.tables()[1].metadata().score_scale, 0.25);
    // A version-2 file holds one geometry: a set whose tables were changed apart does not save
    // (it would load back with the first table's).
    ThresholdSet two;
    for (Index k : {4, 8}) {
      ThresholdTable c = ThresholdTable::compact(1, sp.Hq, k);
      c.metadata().placement = pl;
      c.metadata().head_dim = 16;
      c.metadata().score_scale = 0.25;
      ThresholdCurve curve;
      curve.knots.push_back({20, 0.5, 3});
      for (Index h = 0; h < sp.Hq; ++h) ASSERT_TRUE(c.set_curve(0, h, curve).ok());
      ASSERT_TRUE(two.add(c).ok());
    }
    std::string text;
    ASSERT_TRUE(detail::format_native_v2(two, &text).ok());
    two.tables()[1].metadata().head_dim = 0;
    two.tables()[1].metadata().score_scale = 0;
    const Status fs = detail::format_native_v2(two, &text);
    EXPECT_EQ(fs.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(fs.message().find("share one head_dim and score scale: table k = 8 records "
                                "head_dim 0, score scale 0, table k = 4 head_dim 16"),
              std::string::npos)
        << fs.message();
    t2.metadata().score_scale = std::nan("");
    EXPECT_EQ(t2.validate().code(), StatusCode::kInvalidArgument);
    t2.metadata().score_scale = 0.25;
    t2.metadata().head_dim = -1;
    EXPECT_EQ(t2.validate().code(), StatusCode::kInvalidArgument);
  }
}

// The sampling fraction is seeded: the same seed reproduces the table bit for bit, another seed
// samples other rows, and about the requested fraction of rows is used.
TEST(CalibratorSampling, SeededAndReproducible) {
  auto calibrate = [](double fraction, std::uint64_t seed) {
    CalibrationOptions co = cal_options(1, 4, 4, Placement::kPreSoftmax, TacMode::kOn, 0.1);
    co.sample_fraction = fraction;
    co.seed = seed;
    Calibrator cal(co);
    EXPECT_TRUE(cal.validate().ok());
    for (std::uint64_t s = 0; s < 40; ++s) {
      ProblemSpec sp;
      sp.T = 30;
      sp.P = 10;
      sp.Hq = 4;
      sp.Hkv = 2;
      sp.d = 8;
      sp.seed = 900 + s;
      Problem<float> p = make_problem<float>(sp);
      AttentionOptions o;
      o.mode = AttentionMode::kCalibrate;
      o.calibrator = &cal;
      o.threads = 1;
      EXPECT_TRUE(prefill(p.args(), o).ok());
    }
    return cal;
  };
  const Calibrator full = calibrate(1.0, 1);
  const Calibrator a1 = calibrate(0.5, 7), a2 = calibrate(0.5, 7), b = calibrate(0.5, 8);
  const std::uint64_t eligible = full.rows_used();
  EXPECT_EQ(eligible, 40u * 30u * 4u);  // every row has L >= 11 > k = 4
  EXPECT_TRUE(tables_close(a1.finalize(), a2.finalize(), 0.0, 0.0));
  EXPECT_EQ(a1.rows_used(), a2.rows_used());
  // ~Binomial(4800, 0.5): +-6 sigma = +-208.
  EXPECT_NEAR(double(a1.rows_used()), 0.5 * double(eligible), 208.0);
  EXPECT_NEAR(double(b.rows_used()), 0.5 * double(eligible), 208.0);
  EXPECT_FALSE(tables_close(a1.finalize(), b.finalize(), 0.0, 0.0))
      << "another seed samples the same rows";
  const Calibrator c = calibrate(0.1, 7);
  EXPECT_NEAR(double(c.rows_used()), 0.1 * double(eligible),
              6 * std::sqrt(0.09 * double(eligible)));
  // Invalid fractions are rejected.
  for (double f : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    CalibrationOptions co = cal_options(1, 4, 4, Placement::kPreSoftmax, TacMode::kOn);
    co.sample_fraction = f;
    EXPECT_FALSE(Calibrator(co).validate().ok()) << f;
  }
}

// Memory does not grow with the rows observed: after the first row of each length, 100k more
// rows allocate nothing and the table has one entry per (head, distinct length).
TEST(CalibratorMemory, ConstantInTheNumberOfRows) {
  const Index heads = 2;
  Calibrator cal(cal_options(1, heads, 8, Placement::kPreSoftmax, TacMode::kOn, 0.1));
  const Index lengths[] = {16, 40, 64, 65};
  std::vector<float> row(64 + 1), scratch(64 + 1);
  Rng rng(3);
  std::normal_distribution<float> nd;
  for (auto& x : row) x = nd(rng);
  for (Index h = 0; h < heads; ++h)
    for (Index L : lengths)
      cal.observe_row<float>(0, h, row.data(), L, row.data(), 3.0f, scratch.data());
  const long long before = allocation_count();
  for (int r = 0; r < 100000; ++r) {
    row[std::size_t(r % 64)] = nd(rng);
    const Index L = lengths[r % 4];
    cal.observe_row<float>(0, r % heads, row.data(), L, row.data(), 3.0f, scratch.data());
  }
  EXPECT_EQ(allocation_count() - before, 0) << "observe_row allocated";
  EXPECT_EQ(cal.rows_used(), 100000u + 8u);
  const ThresholdTable t = cal.finalize();
  EXPECT_EQ(t.size(), std::size_t(heads) * 4u);
  // The kernels' calibration mode does not allocate either once a workspace is given.
  ProblemSpec sp;
  sp.T = 1;
  sp.P = 63;
  sp.Hq = heads;
  sp.Hkv = 1;
  sp.d = 8;
  Problem<float> p = make_problem<float>(sp);
  AttentionOptions o;
  o.mode = AttentionMode::kCalibrate;
  o.calibrator = &cal;
  o.threads = 1;
  WorkspaceBuffer ws(workspace_size(p.args(), o));
  ASSERT_TRUE(decode(p.args(), o, ws.get()).ok());
  const long long before2 = allocation_count();
  for (int r = 0; r < 1000; ++r) ASSERT_TRUE(decode(p.args(), o, ws.get()).ok());
  EXPECT_EQ(allocation_count() - before2, 0) << "kCalibrate decode allocated";
  EXPECT_EQ(cal.finalize().size(), std::size_t(heads) * 4u);
}

// ---------------------------------------------------------------------------------------------
// Options validation and the checked finalize().
// ---------------------------------------------------------------------------------------------

/// A complete 2 x 4 table for the SDC pass (one entry per head).
ThresholdTable sdc_pass_table(Placement pl) {
  ThresholdTable t(2, 4, 5);
  t.metadata().placement = pl;
  for (Index l = 0; l < 2; ++l)
    for (Index h = 0; h < 4; ++h) {
      ThresholdEntry e;
      e.length = 30;
      e.theta = 0.5;
      EXPECT_TRUE(t.set(l, h, e).ok());
    }
  return t;
}

// Each option a caller can get wrong is rejected with a message naming the field and the value.
TEST(CalibratorOptions, EveryFieldIsValidatedByName) {
  const CalibrationOptions good = cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn, 0.1);
  ASSERT_TRUE(Calibrator(good).validate().ok());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const ThresholdTable sdc_ok = sdc_pass_table(Placement::kPreSoftmax);
  const ThresholdTable sdc_post = sdc_pass_table(Placement::kPostSoftmax);
  const ThresholdTable sdc_shape(3, 4, 5);
  ThresholdTable sdc_incomplete(2, 4, 5);
  {
    ThresholdEntry e;
    e.length = 30;
    for (Index h = 0; h < 4; ++h) ASSERT_TRUE(sdc_incomplete.set(0, h, e).ok());
    ASSERT_TRUE(sdc_incomplete.set(1, 0, e).ok());
  }
  struct Case {
    std::function<void(CalibrationOptions&)> change;
    std::string want;
  };
  const std::vector<Case> cases = {
      {[](auto& o) { o.num_layers = 0; }, "CalibrationOptions::num_layers must be >= 1, got 0"},
      {[](auto& o) { o.num_layers = -3; }, "CalibrationOptions::num_layers must be >= 1, got -3"},
      {[](auto& o) { o.num_heads = 0; }, "CalibrationOptions::num_heads must be >= 1, got 0"},
      {[](auto& o) {
         o.num_layers = Index(1) << 40;
         o.num_heads = Index(1) << 40;
       },
       "CalibrationOptions::num_layers x num_heads = 1099511627776 x 1099511627776 exceeds"},
      {[](auto& o) { o.default_k = 0; }, "CalibrationOptions::default_k must be >= 1, got 0"},
      {[](auto& o) { o.layer_k = {5, 5, 5}; },
       "CalibrationOptions::layer_k has 3 values but num_layers is 2"},
      {[](auto& o) { o.layer_k = {5}; }, "CalibrationOptions::layer_k has 1 values but num_layers is 2"},
      {[](auto& o) { o.layer_k = {5, 0}; }, "CalibrationOptions::layer_k[1] must be >= 1, got 0"},
      {[](auto& o) { o.layer_k = {-2, 5}; }, "CalibrationOptions::layer_k[0] must be >= 1, got -2"},
      {[&](auto& o) { o.lambda = nan; }, "CalibrationOptions::lambda must be finite and >= 0, got nan"},
      {[&](auto& o) { o.lambda = -0.5; },
       "CalibrationOptions::lambda must be finite and >= 0, got -0.5"},
      {[&](auto& o) { o.lambda = inf; }, "CalibrationOptions::lambda must be finite and >= 0, got inf"},
      {[&](auto& o) { o.sample_fraction = nan; },
       "CalibrationOptions::sample_fraction must be in (0, 1], got nan"},
      {[](auto& o) { o.sample_fraction = 0.0; },
       "CalibrationOptions::sample_fraction must be in (0, 1], got 0"},
      {[](auto& o) { o.sample_fraction = -0.25; },
       "CalibrationOptions::sample_fraction must be in (0, 1], got -0.25"},
      {[](auto& o) { o.sample_fraction = 1.5; },
       "CalibrationOptions::sample_fraction must be in (0, 1], got 1.5"},
      {[&](auto& o) { o.sdc_thresholds = &sdc_shape; },
       "CalibrationOptions::sdc_thresholds has (layers x heads) (3 x 4) but the calibrator has (2 x "
       "4)"},
      {[&](auto& o) { o.sdc_thresholds = &sdc_post; },
       "CalibrationOptions::sdc_thresholds holds post-softmax thresholds but the calibrator's "
       "placement is pre-softmax"},
      {[&](auto& o) { o.sdc_thresholds = &sdc_incomplete; },
       "CalibrationOptions::sdc_thresholds: threshold table (layers x heads) (2 x 4) is "
       "incomplete: 3 of 8 (layer, head) pairs have no thresholds: layer 1 heads 1-3"},
  };
  for (const Case& c : cases) {
    CalibrationOptions o = good;
    c.change(o);
    const Status s = Calibrator(o).validate();
    EXPECT_FALSE(s.ok()) << c.want;
    EXPECT_EQ(s.message().rfind(c.want, 0), 0u) << "want: " << c.want << "\ngot:  " << s.message();
  }
  // Valid variations: layer_k overrides an unused default_k; lambda 0; fraction 1; a complete
  // SDC table of the same placement.
  CalibrationOptions o = good;
  o.layer_k = {3, 9};
  o.default_k = 0;
  o.lambda = 0.0;
  o.sample_fraction = 1.0;
  o.sdc_thresholds = &sdc_ok;
  EXPECT_TRUE(Calibrator(o).validate().ok()) << Calibrator(o).validate().message();
}

TEST(CalibratorFinalize, CheckedFinalizeReportsHeadsWithoutEligibleRows) {
  // Rows of length 6 with k = 5: eligible. Head 2 of layer 1 sees only rows of length 5 (never
  // thresholded), head 3 of layer 1 nothing.
  Calibrator cal(cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn, 0.1));
  ThresholdTable out(1, 1, 99);
  Status s = cal.finalize(&out);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("calibration gave no thresholds for 8 of 8 (layer, head) pairs of the "
                             "(2 x 4) (layers x heads) calibrator: layer 0 heads 0-3; layer 1 "
                             "heads 0-3 (no eligible rows: a row counts when its length L > k_l"),
            std::string::npos)
      << s.message();
  EXPECT_FALSE(cal.finalize().validate().ok()) << "an empty table never validates";
  const float row[6] = {0.5f, -1.0f, 2.0f, 0.25f, 1.0f, -0.5f};
  for (Index l = 0; l < 2; ++l)
    for (Index h = 0; h < 4; ++h) {
      if (l == 1 && h == 3) continue;
      cal.observe_scores(l, h, row, (l == 1 && h == 2) ? 5 : 6);
    }
  s = cal.finalize(&out);
  EXPECT_NE(s.message().find("no thresholds for 2 of 8 (layer, head) pairs of the (2 x 4) (layers "
                             "x heads) calibrator: layer 1 heads 2-3 ("),
            std::string::npos)
      << s.message();
  EXPECT_EQ(out.k(0), 99) << "output modified on error";
  // The unchecked finalize() gives the same table, which fails validate() naming the heads.
  const ThresholdTable t = cal.finalize();
  EXPECT_NE(t.validate().message().find("layer 1 heads 2-3"), std::string::npos);
  // Feeding the missing heads completes it.
  cal.observe_scores(1, 2, row, 6);
  cal.observe_scores(1, 3, row, 6);
  s = cal.finalize(&out);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(out.validate().ok());
  EXPECT_EQ(out.size(), 8u);
  EXPECT_TRUE(tables_close(cal.finalize(), out, 0.0, 0.0));
  // Invalid options are reported before anything else.
  CalibrationOptions bad = cal_options(2, 4, 5, Placement::kPreSoftmax, TacMode::kOn, -1.0);
  EXPECT_NE(Calibrator(bad).finalize(&out).message().find("CalibrationOptions::lambda"),
            std::string::npos);
}

// With several budgets there is one table per k: finalize(ThresholdTable*) is an error that names
// the ThresholdSet forms (it used to return the smallest k's table as if it were the only one).
TEST(CalibratorFinalize, SeveralBudgetsNeedAThresholdSet) {
  CalibrationOptions co = cal_options(1, 1, 2, Placement::kPreSoftmax, TacMode::kOn, 0.0);
  co.k_values = {8, 2, 4};
  Calibrator cal(co);
  const float s[10] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0};
  cal.observe_scores(0, 0, s, 10);
  ThresholdTable t(1, 1, 99);
  const Status st = cal.finalize(&t);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(),
            "finalize(ThresholdTable*): the calibration has 3 budgets (CalibrationOptions::k_values, "
            "k = 2, 4, 8), one table each; use finalize_per_length() or finalize_compact(), which "
            "return a ThresholdSet");
  EXPECT_EQ(t.k(0), 99) << "output modified on error";
  ThresholdSet set;
  ASSERT_TRUE(cal.finalize_per_length(&set).ok());
  ASSERT_EQ(set.ks(), (std::vector<Index>{2, 4, 8}));
  for (Index k : {2, 4, 8}) EXPECT_EQ(set.find(k)->lookup(0, 0, 10).theta, double(9 - k)) << k;
  // One budget given as k_values is a single table.
  co.k_values = {4};
  Calibrator one(co);
  one.observe_scores(0, 0, s, 10);
  ASSERT_TRUE(one.finalize(&t).ok());
  EXPECT_EQ(t.k(0), 4);
  EXPECT_EQ(t.lookup(0, 0, 10).theta, 5.0);
}

}  // namespace
