// Compact thresholds (threshold_fit.hpp, ThresholdCurve, native format version 2):
//  - length buckets: (2^(j/b), 2^((j+1)/b)], a power of two closes its bucket;
//  - fit_curve recovers a known trend and extrapolates with the fitted slope;
//  - lookup: between knots in log L (power law for post-softmax), past the ends by the slopes;
//  - the calibrator: several k in one pass equal single-k passes, constant-memory buckets,
//    sparse-bucket warnings, pooled thresholds stable with few sequences where per-length ones
//    are noisy;
//  - calibrate_two_pass: SDC terms on the compact tables, a mismatching second pass is refused;
//  - version-2 files: bit-identical round trip, k chosen at load, version 1 still loads and
//    converts; a 32 x 32-head table calibrated to 32k tokens is under 1 MB.

#include <gtest/gtest.h>

#include <toptheta/toptheta.hpp>
#include <toptheta/io/threshold_file.hpp>
#include <toptheta/threshold_fit.hpp>

#include "counting_allocator.hpp"
#include "threshold_file_test_util.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace toptheta;

TEST(LengthBucket, EdgesArePowersOfTheBucketRatio) {
  for (int b : {1, 2, 4}) {
    int prev = length_bucket(2, b);
    for (Index L = 3; L <= 70000; ++L) {
      const int j = length_bucket(L, b);
      EXPECT_GE(j, prev) << L;  // buckets skipped here hold no integer length (e.g. (2, 2.83])
      for (int skipped = prev + 1; skipped < j; ++skipped)
        EXPECT_LT(std::floor(std::exp2(double(skipped + 1) / b) + 1e-9), double(L)) << L;
      EXPECT_LT(std::exp2(double(j) / b), double(L) + 1e-9) << L;
      EXPECT_LE(double(L), std::exp2(double(j + 1) / b) + 1e-6) << L;
      prev = j;
    }
  }
  // 2048 closes its bucket (1448, 2048]; 2049 starts the next.
  EXPECT_EQ(length_bucket(2048, 2), length_bucket(1449, 2));
  EXPECT_EQ(length_bucket(2049, 2), length_bucket(2048, 2) + 1);
  Index lo = 0, hi = 0;
  bucket_lengths(length_bucket(2048, 2), 2, &lo, &hi);
  EXPECT_EQ(lo, 1449);
  EXPECT_EQ(hi, 2048);
}

// Bucket sums of exact y = a + b ln L, one row per length in [first, last].
std::vector<BucketStats> linear_buckets(double a, double b, Index first, Index last, int bpo) {
  std::vector<BucketStats> v;
  for (Index L = first; L <= last; ++L) {
    const int j = length_bucket(L, bpo);
    if (int(v.size()) <= j) v.resize(std::size_t(j) + 1);
    v[std::size_t(j)].add(std::log(double(L)) - bucket_log_edge(j, bpo), a + b * std::log(double(L)));
    v[std::size_t(j)].note_length(L);
  }
  return v;
}

ThresholdTable one_curve_table(Placement p, const ThresholdCurve& c) {
  ThresholdTable t = ThresholdTable::compact(1, 1, 8);
  t.metadata().placement = p;
  const Status s = t.set_curve(0, 0, c);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return t;
}

TEST(FitCurve, RecoversALinearTrendAndExtrapolatesWithItsSlope) {
  CompactFitOptions o;
  o.min_bucket_samples = 4;
  const double a = 0.5, b = 0.25;
  const ThresholdCurve c = fit_curve(linear_buckets(a, b, 33, 2048, 2), /*post=*/false, 0.0, false, o);
  ASSERT_GE(c.knots.size(), 10u);
  for (const auto& k : c.knots) EXPECT_NEAR(k.value, a + b * std::log(double(k.length)), 1e-5);
  EXPECT_NEAR(c.slope_above, b, 1e-5);
  EXPECT_NEAR(c.slope_below, b, 1e-5);
  EXPECT_EQ(c.knots.back().length <= 2048, true);
  const ThresholdTable t = one_curve_table(Placement::kPreSoftmax, c);
  for (Index L : {20, 40, 100, 1000, 2048, 4096, 32768})
    EXPECT_NEAR(t.lookup(0, 0, L).theta, a + b * std::log(double(L)), 1e-4) << L;
}

TEST(FitCurve, PostSoftmaxFollowsAPowerLawBetweenAndBeyondKnots) {
  // L * theta = 3 L^0.2: theta = 3 L^-0.8. Knots at two lengths; ln(L theta) is linear in ln L.
  ThresholdCurve c;
  c.knots = {{100, 3 * std::pow(100.0, 0.2), 10}, {1000, 3 * std::pow(1000.0, 0.2), 10}};
  c.slope_above = c.slope_below = 0.2;
  const ThresholdTable t = one_curve_table(Placement::kPostSoftmax, c);
  // set_curve() stores the knot values and slopes as floats (the file's precision): relative
  // error of a few float epsilons, growing slowly with the distance in ln L from the knots.
  for (Index L : {10, 50, 100, 316, 999, 1000, 4096, 100000})
    EXPECT_NEAR(t.lookup(0, 0, L).theta / (3 * std::pow(double(L), -0.8)), 1.0, 1e-6) << L;
  // The lookup policy does not matter for compact tables.
  EXPECT_EQ(t.lookup(0, 0, 500, LookupPolicy::kNearest).theta,
            t.lookup(0, 0, 500, LookupPolicy::kLinear).theta);
}

TEST(FitCurve, ZeroSlopesClampAndSdcTermsClampOutsideTheKnots) {
  ThresholdCurve c;
  c.knots = {{100, 1.0, 5, 0.5}, {200, 2.0, 5, 1.5}};
  const ThresholdTable t = one_curve_table(Placement::kPreSoftmax, c);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 50).theta, 1.0);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 400).theta, 2.0);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 50).sdc, 0.5);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 400).sdc, 1.5);
  const double mid = t.lookup(0, 0, 141).theta;  // sqrt(100 * 200) = 141.4: halfway in ln L
  EXPECT_NEAR(mid, 1.0 + (std::log(141.0) - std::log(100.0)) / std::log(2.0), 1e-12);
  EXPECT_TRUE(t.has_sdc());
}

TEST(CompactTable, LookupDoesNotAllocate) {
  CompactFitOptions o;
  o.min_bucket_samples = 4;
  ThresholdTable t = one_curve_table(Placement::kPostSoftmax,
                                     fit_curve(linear_buckets(2.0, 0.2, 33, 2048, 2), true, 0.1, false, o));
  double sum = 0;
  const long long before = toptheta::testing::allocation_count();
  for (Index L = 1; L <= 8192; ++L) sum += t.lookup(0, 0, L, LookupPolicy::kLinear).theta;
  EXPECT_EQ(toptheta::testing::allocation_count(), before);
  EXPECT_GT(sum, 0.0);
}

TEST(CompactTable, RejectsBadCurves) {
  ThresholdTable t = ThresholdTable::compact(1, 1);
  t.metadata().placement = Placement::kPostSoftmax;
  ThresholdCurve c;
  c.knots = {{100, -1.0, 1}};
  EXPECT_FALSE(t.set_curve(0, 0, c).ok());  // post-softmax values are L * theta > 0
  c.knots = {{100, 1.0, 1}, {100, 2.0, 1}};
  EXPECT_FALSE(t.set_curve(0, 0, c).ok());  // duplicate length
  c.knots = {{100, 1.0, 1}};
  c.slope_above = std::nan("");
  EXPECT_FALSE(t.set_curve(0, 0, c).ok());
  EXPECT_FALSE(t.validate().ok());  // no curve: incomplete
  EXPECT_FALSE(t.set(0, 0, ThresholdEntry{100, 0.5, 1}).ok());  // entries are per-length only
  ThresholdTable per_length(1, 1);
  EXPECT_FALSE(per_length.set_curve(0, 0, ThresholdCurve()).ok());
}

// Rows of random scores whose (k+1)-th largest probability falls like 1/L with noise.
void observe_sequences(Calibrator* cal, int sequences, Index max_len, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.5f);
  std::vector<float> s(static_cast<std::size_t>(max_len));
  const auto& o = cal->options();
  for (int q = 0; q < sequences; ++q)
    for (Index L = 2; L <= max_len; ++L)
      for (Index l = 0; l < o.num_layers; ++l)
        for (Index h = 0; h < o.num_heads; ++h) {
          for (Index j = 0; j < L; ++j) s[std::size_t(j)] = nd(rng) + (j == 0 ? 4.0f : 0.0f);
          cal->observe_scores(l, h, s.data(), L);
        }
}

CalibrationOptions options(std::vector<Index> ks, Placement p = Placement::kPostSoftmax) {
  CalibrationOptions o;
  o.num_layers = 2;
  o.num_heads = 2;
  if (ks.size() == 1) o.default_k = ks[0];
  else o.k_values = ks;
  o.placement = p;
  o.compact.min_bucket_samples = 8;
  return o;
}

TEST(CalibratorCompact, SeveralKFromOnePassEqualSingleKPasses) {
  Calibrator multi(options({4, 8, 16}));
  ASSERT_TRUE(multi.validate().ok());
  EXPECT_EQ(multi.k(0), 4);
  observe_sequences(&multi, 2, 200, 7);
  ThresholdSet compact, per_length;
  ASSERT_TRUE(multi.finalize_compact(&compact).ok());
  ASSERT_TRUE(multi.finalize_per_length(&per_length).ok());
  ASSERT_EQ(compact.ks(), (std::vector<Index>{4, 8, 16}));
  for (Index k : {4, 8, 16}) {
    Calibrator single(options({k}));
    observe_sequences(&single, 2, 200, 7);
    ThresholdSet c1, p1;
    ASSERT_TRUE(single.finalize_compact(&c1).ok());
    ASSERT_TRUE(single.finalize_per_length(&p1).ok());
    EXPECT_TRUE(thresholds_identical(*compact.find(k), c1.tables()[0])) << k;
    EXPECT_TRUE(thresholds_identical(*per_length.find(k), p1.tables()[0])) << k;
  }
}

TEST(CalibratorCompact, BucketsOnlyNeedNoPerLengthMemoryAndReportSparseBuckets) {
  CalibrationOptions o = options({8});
  o.per_length = false;
  o.compact.min_bucket_samples = 50;
  Calibrator cal(o);
  observe_sequences(&cal, 3, 300, 1);
  ThresholdTable t;
  EXPECT_EQ(cal.finalize(&t).code(), StatusCode::kFailedPrecondition);  // per-length is off
  ThresholdSet set;
  CalibrationReport rep;
  ASSERT_TRUE(cal.finalize_compact(&set, &rep).ok());
  // Rows of lengths 9..300, 3 per length: the short buckets hold fewer than 50.
  ASSERT_FALSE(rep.sparse.empty());
  const std::vector<std::string> w = rep.warnings();
  ASSERT_FALSE(w.empty());
  EXPECT_NE(w[0].find("fewer than 50 samples"), std::string::npos) << w[0];
  EXPECT_NE(w[0].find("k = 8: lengths 9..11"), std::string::npos) << w[0];
  // Every reported count is a real bucket count.
  const auto summary = rep.summary(0);
  ASSERT_FALSE(summary.empty());
  EXPECT_EQ(summary.back().length_hi, 362);  // 300 lies in (256, 362]
  EXPECT_EQ(summary.back().min_samples, 3u * (300 - 256));
  for (const auto& k : set.tables()[0].curve(0, 0).knots) EXPECT_GE(k.samples, 50u);
}

// When no bucket of a head reaches min_bucket_samples, fit_curve gives every non-empty bucket a
// knot (its fallback); the warnings said "pooled into the neighbouring buckets, no knot of their
// own" for each of them all the same (found through toptheta-llama2c calibrate
// --min-bucket-samples 100000). Now those buckets are marked own_knot and reported in one line
// per k that says what happened.
TEST(CalibratorCompact, WarningsSayWhenNoBucketReachesTheMinimum) {
  // k = 8 over 3 sequences of 300 tokens (rows of lengths 9..300), compact only.
  const auto calibrate = [](std::uint64_t min_samples, ThresholdSet* set, CalibrationReport* rep) {
    CalibrationOptions o = options({8});
    o.per_length = false;
    o.compact.min_bucket_samples = min_samples;
    Calibrator cal(o);
    observe_sequences(&cal, 3, 300, 1);
    ASSERT_TRUE(cal.finalize_compact(set, rep).ok());
  };
  ThresholdSet set;
  CalibrationReport rep;
  calibrate(100000, &set, &rep);
  ASSERT_FALSE(rep.sparse.empty());
  for (const SparseBucket& b : rep.sparse) EXPECT_TRUE(b.own_knot);
  const std::vector<std::string> w = rep.warnings();
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(
      w[0].find("(layer, head) pairs have no length bucket with 100000 samples (the fullest has"),
      std::string::npos)
      << w[0];
  EXPECT_NE(w[0].find("every non-empty length bucket got a knot of its own"), std::string::npos)
      << w[0];
  EXPECT_EQ(w[0].find("no knot of their own"), std::string::npos) << w[0];
  std::size_t knots = 0;
  for (const SparseBucket& b : rep.sparse) knots += (b.layer == 0 && b.head == 0);
  EXPECT_EQ(set.tables()[0].curve(0, 0).knots.size(), knots);  // one knot per bucket
  // With a minimum some buckets reach, the sparse ones pool and are not own_knot.
  CalibrationReport rep2;
  calibrate(50, &set, &rep2);
  ASSERT_FALSE(rep2.sparse.empty());
  for (const SparseBucket& b : rep2.sparse) EXPECT_FALSE(b.own_knot);
}

TEST(CalibratorCompact, PooledThresholdsAreStableWithFewSequences) {
  // theta at the longest lengths from 4 vs 32 sequences: the compact form agrees within a few
  // percent; the per-length form, one sample per length and sequence, scatters far more.
  const auto thetas = [](int sequences, bool compact) {
    Calibrator cal(options({8}));
    observe_sequences(&cal, sequences, 400, 100 + std::uint64_t(sequences));
    ThresholdSet s;
    EXPECT_TRUE((compact ? cal.finalize_compact(&s) : cal.finalize_per_length(&s)).ok());
    std::vector<double> v;
    for (Index L = 300; L <= 400; ++L) v.push_back(s.tables()[0].lookup(0, 0, L).theta);
    return v;
  };
  const auto spread = [](const std::vector<double>& a, const std::vector<double>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(std::log(a[i] / b[i])));
    return worst;
  };
  const double compact = spread(thetas(4, true), thetas(32, true));
  const double per_length = spread(thetas(4, false), thetas(32, false));
  EXPECT_LT(compact, 0.1);
  EXPECT_GT(per_length, 2 * compact);
}

TEST(CalibrateTwoPass, SdcTermsOnCompactTablesAndSameRowsRequired) {
  CalibrationOptions o = options({4, 8}, Placement::kPreSoftmax);
  const auto feed = [](Calibrator& c) {
    observe_sequences(&c, 2, 120, 3);
    return Status();
  };
  CalibrationResult r;
  ASSERT_TRUE(calibrate_two_pass(o, /*sdc_terms=*/true, feed, &r).ok());
  ASSERT_EQ(r.compact.size(), 2u);
  ASSERT_EQ(r.per_length.size(), 2u);
  for (const auto& t : r.compact.tables()) EXPECT_TRUE(t.has_sdc());
  for (const auto& t : r.per_length.tables()) EXPECT_TRUE(t.has_sdc());
  // The thresholds equal a pass without SDC terms.
  CalibrationResult plain;
  ASSERT_TRUE(calibrate_two_pass(o, false, feed, &plain).ok());
  EXPECT_FALSE(plain.compact.tables()[0].has_sdc());
  for (Index L : {10, 50, 119})
    EXPECT_EQ(plain.compact.tables()[1].lookup(1, 1, L).theta, r.compact.tables()[1].lookup(1, 1, L).theta);
  int calls = 0;
  const auto drifting = [&calls](Calibrator& c) {
    observe_sequences(&c, 2, 120, std::uint64_t(++calls));
    return Status();
  };
  EXPECT_EQ(calibrate_two_pass(o, true, drifting, &r).code(), StatusCode::kFailedPrecondition);
}

// A file in this process's own temporary directory (mkdtemp, removed at exit): fixed names in
// the shared temp dir collide between concurrent runs and other users' leftovers.
std::string temp_path(const std::string& name) {
  static const toptheta::testing::TempDir dir;
  return dir.file(name);
}

// to_compact() fits the thresholds a per-length table observed. A theta at or below -FLT_MAX
// keeps every key, like -inf (rounded toward -inf into float), and observes no curve: the
// authors' files write -FLT_MAX for fully masked rows, and the fit of one such entry among 69
// pulled head (0, 3) of tests/data/thresholds/valid/authors/th.txt to about -5.5e36 at every
// length, a head that silently ran dense.
TEST(ToCompact, ThresholdsThatKeepEveryKeyAreNotFitted) {
  const double lowest = -double(std::numeric_limits<float>::max());
  ThresholdTable clean(1, 1, 4), with(1, 1, 4);
  for (ThresholdTable* t : {&clean, &with}) t->metadata().placement = Placement::kPreSoftmax;
  for (Index L = 8; L <= 200; L += 3) {
    ThresholdEntry e;
    e.length = L;
    e.theta = 0.5 + 0.1 * std::log(double(L));
    e.samples = 4;
    ASSERT_TRUE(clean.set(0, 0, e).ok());
    ASSERT_TRUE(with.set(0, 0, e).ok());
  }
  for (const auto& [L, theta] :
       {std::pair<Index, double>{9, lowest}, {100, lowest}, {130, 2 * lowest}, {400, lowest}}) {
    ThresholdEntry e;
    e.length = L;
    e.theta = theta;
    e.samples = 4;
    ASSERT_TRUE(with.set(0, 0, e).ok());
  }
  ThresholdTable a, b;
  ASSERT_TRUE(to_compact(clean, &a).ok());
  ASSERT_TRUE(to_compact(with, &b).ok());
  for (Index L : {5, 9, 50, 100, 130, 200, 400, 5000})
    EXPECT_EQ(a.lookup(0, 0, L).theta, b.lookup(0, 0, L).theta) << L;
  // The longest calibrated row is the longest fitted entry: an entry that keeps every key (400)
  // is no observation of the curve, although the per-length table ends there.
  EXPECT_EQ(a.max_calibrated_length(0, 0), 200);
  EXPECT_EQ(b.max_calibrated_length(0, 0), 200);
  EXPECT_EQ(with.max_calibrated_length(0, 0), 400);
  // The authors' file: every head's curve stays near its finite thresholds' range (within the
  // range's width of it: a least-squares line may overshoot the noisy values a little).
  ThresholdTable per_length, compact;
  LoadOptions lo;
  lo.sdc_path = std::string(TOPTHETA_TEST_DATA_DIR) + "/thresholds/valid/authors/sdc.txt";
  ASSERT_TRUE(
      load_thresholds(std::string(TOPTHETA_TEST_DATA_DIR) + "/thresholds/valid/authors/th.txt",
                      &per_length, lo)
          .ok());
  ASSERT_TRUE(to_compact(per_length, &compact).ok());
  for (Index l = 0; l < per_length.num_layers(); ++l)
    for (Index h = 0; h < per_length.num_heads(); ++h) {
      double lo_theta = INFINITY, hi_theta = -INFINITY;
      for (const ThresholdEntry& e : per_length.entries(l, h))
        if (e.theta > lowest) {
          lo_theta = std::min(lo_theta, e.theta);
          hi_theta = std::max(hi_theta, e.theta);
        }
      const double width = hi_theta - lo_theta;
      for (const ThresholdEntry& e : per_length.entries(l, h)) {
        const double got = compact.lookup(l, h, e.length).theta;
        EXPECT_GE(got, lo_theta - width) << l << " " << h << " " << e.length;
        EXPECT_LE(got, hi_theta + width) << l << " " << h << " " << e.length;
      }
    }
}

// The compact curves record the longest row they were calibrated on, so a table calibrated to
// 300 tokens reports 300, not the end of its last length bucket (362 at 2 buckets per octave):
// rows of 301..362 count as extrapolated (AttentionCounts::extrapolated_rows). Merging
// calibrators keeps the longer of the two; per-length conversions record their last entry.
TEST(CalibratorCompact, CurvesRecordTheLongestCalibratedRow) {
  Calibrator a(options({8})), b(options({8}));
  observe_sequences(&a, 1, 300, 1);
  observe_sequences(&b, 1, 120, 2);
  ThresholdSet set;
  ASSERT_TRUE(a.finalize_compact(&set).ok());
  const ThresholdTable& t = set.tables()[0];
  for (Index l = 0; l < 2; ++l)
    for (Index h = 0; h < 2; ++h) {
      EXPECT_EQ(t.curve(l, h).max_calibrated_length, 300) << l << " " << h;
      EXPECT_EQ(t.max_calibrated_length(l, h), 300) << l << " " << h;
      EXPECT_LT(t.curve(l, h).knots.back().length, 300);
    }
  ThresholdSet short_set;
  ASSERT_TRUE(b.finalize_compact(&short_set).ok());
  EXPECT_EQ(short_set.tables()[0].max_calibrated_length(1, 1), 120);
  ASSERT_TRUE(b.merge(a).ok());
  ThresholdSet merged;
  ASSERT_TRUE(b.finalize_compact(&merged).ok());
  EXPECT_EQ(merged.tables()[0].max_calibrated_length(1, 1), 300);
  // The file keeps it; a curve line without it (files written before) falls back to the end
  // of the last knot's bucket.
  const std::string path = temp_path("longest.toptheta");
  ASSERT_TRUE(save_threshold_set(path, set).ok());
  ThresholdSet back;
  ASSERT_TRUE(load_threshold_set(path, &back).ok());
  EXPECT_TRUE(thresholds_identical(back.tables()[0], t));
  EXPECT_EQ(back.tables()[0].max_calibrated_length(0, 1), 300);
  // Per-length tables convert with their last entry's length.
  ThresholdSet per_length;
  ASSERT_TRUE(a.finalize_per_length(&per_length).ok());
  ThresholdTable c;
  ASSERT_TRUE(to_compact(per_length.tables()[0], &c).ok());
  EXPECT_EQ(per_length.tables()[0].max_calibrated_length(0, 0), 300);
  EXPECT_EQ(c.curve(0, 0).max_calibrated_length, 300);
  // fit_curve: the largest noted length of the non-empty buckets, at least the last knot's;
  // 0 when no bucket noted one.
  std::vector<BucketStats> buckets(2);
  for (int i = 0; i < 40; ++i) buckets[1].add(0.1, 2.0);
  EXPECT_EQ(fit_curve(buckets, false, 0.0, false, CompactFitOptions()).max_calibrated_length, 0);
  buckets[1].note_length(2);  // below the knot (a length the caller got wrong): the knot's
  const ThresholdCurve low = fit_curve(buckets, false, 0.0, false, CompactFitOptions());
  EXPECT_EQ(low.max_calibrated_length, low.knots.back().length);
  buckets[0].note_length(1000);  // an empty bucket's note does not count
  EXPECT_EQ(fit_curve(buckets, false, 0.0, false, CompactFitOptions()).max_calibrated_length,
            low.knots.back().length);
  // A sparse bucket counts when it pools into a knot (pool_radius 1: the next bucket) and not
  // when it lies beyond every knot's pool: its rows fed no theta.
  buckets.resize(6);
  buckets[2].add(0.1, 2.0);  // 1 row (below min_bucket_samples): pooled into bucket 1's knot
  buckets[2].note_length(3);
  buckets[5].add(0.1, 2.0);  // 1 row, 3 buckets past the knot: fed nothing
  buckets[5].note_length(7);
  EXPECT_EQ(fit_curve(buckets, false, 0.0, false, CompactFitOptions()).max_calibrated_length, 3);
  CompactFitOptions wide;
  wide.pool_radius = 4;
  EXPECT_EQ(fit_curve(buckets, false, 0.0, false, wide).max_calibrated_length, 7);
}

TEST(NativeV2, RoundTripChooseKAndConvertVersion1) {
  Calibrator cal(options({4, 16}));
  observe_sequences(&cal, 2, 150, 5);
  ThresholdSet set, per_length;
  ASSERT_TRUE(cal.finalize_compact(&set).ok());
  ASSERT_TRUE(cal.finalize_per_length(&per_length).ok());
  const std::string path = temp_path("set.toptheta");
  ASSERT_TRUE(save_threshold_set(path, set).ok());
  ThresholdSet back;
  ASSERT_TRUE(load_threshold_set(path, &back).ok());
  ASSERT_EQ(back.size(), 2u);
  // An sdc.txt path is the authors' format's: for a native file both loaders refuse it (the
  // set loader ignored it) and leave the output as it was.
  {
    LoadOptions with_sdc;
    with_sdc.sdc_path = temp_path("sdc.txt");
    ThresholdSet untouched;
    const Status s = load_threshold_set(path, &untouched, with_sdc);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("an SDC file applies only to the authors' format"),
              std::string::npos)
        << s.message();
    EXPECT_EQ(untouched.size(), 0u);
    ThresholdTable t16;
    with_sdc.k = 16;
    EXPECT_EQ(load_thresholds(path, &t16, with_sdc).code(), StatusCode::kInvalidArgument);
  }
  for (std::size_t i = 0; i < 2; ++i) EXPECT_TRUE(thresholds_identical(set.tables()[i], back.tables()[i]));
  ThresholdTable t;
  const Status none = load_thresholds(path, &t);
  EXPECT_EQ(none.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(none.message().find("k = 4, 16: choose one"), std::string::npos) << none.message();
  LoadOptions lo;
  lo.k = 16;
  ASSERT_TRUE(load_thresholds(path, &t, lo).ok());
  EXPECT_EQ(t.k(0), 16);
  EXPECT_TRUE(t.is_compact());
  lo.k = 8;
  EXPECT_NE(load_thresholds(path, &t, lo).message().find("no table for k = 8"), std::string::npos);
  // A per-length table still saves as version 1, loads, and converts.
  const std::string v1 = temp_path("v1.toptheta");
  ASSERT_TRUE(save_thresholds(v1, per_length.tables()[0]).ok());
  ThresholdTable p;
  ASSERT_TRUE(load_thresholds(v1, &p).ok());
  EXPECT_FALSE(p.is_compact());
  ThresholdTable c;
  ASSERT_TRUE(to_compact(p, &c).ok());
  EXPECT_TRUE(c.is_compact());
  EXPECT_LT(c.size(), p.size() / 4);
  // The conversion smooths the per-length noise (one row per length and sequence here): it lands
  // within 25% of the compact table fitted to the rows themselves, in range and past it.
  for (Index L = 40; L <= 150; L += 10)
    EXPECT_NEAR(std::log(c.lookup(0, 0, L).theta / set.tables()[0].lookup(0, 0, L).theta), 0.0, 0.25) << L;
  EXPECT_NEAR(std::log(c.lookup(0, 0, 1000).theta / set.tables()[0].lookup(0, 0, 1000).theta), 0.0, 0.25);
  // Compact tables cannot go to the authors' format.
  EXPECT_FALSE(save_thresholds(temp_path("th.txt"), c, ThresholdFormat::kReference).ok());
}

TEST(NativeV2, MalformedFilesNameTheLine) {
  const std::string head =
      "toptheta-thresholds 2\nplacement pre\nlayers 1\nheads 1\nlambda 0\nbuckets_per_octave 2\n"
      "tables 1\ntable 4\nk 4\ncalibration_rows 1\nsdc off\ncurves 1\n";
  ThresholdTable t;
  EXPECT_TRUE(parse_thresholds(head + "0 0 0 0 1 10 1.5 3\nend\n", "f", &t).ok());
  EXPECT_EQ(t.curve(0, 0).max_calibrated_length, 0);  // not recorded: the end of 10's bucket
  EXPECT_EQ(t.max_calibrated_length(0, 0), 11);       // (8, 11.3] at 2 buckets per octave
  ASSERT_TRUE(
      parse_thresholds(head + "0 0 0 0 1 10 1.5 3 max_calibrated_length 10\nend\n", "f", &t).ok());
  EXPECT_EQ(t.max_calibrated_length(0, 0), 10);
  ASSERT_TRUE(
      parse_thresholds(head + "0 0 0 0 1 10 1.5 3 max_calibrated_length 4096\nend\n", "f", &t)
          .ok());
  EXPECT_EQ(t.max_calibrated_length(0, 0), 4096);
  const std::pair<std::string, std::string> bad[] = {
      {"0 0 0 0 2 10 1.5 3\nend\n", "f:13: 2 knots of 3 fields need 11 fields"},
      {"0 0 0 0 2 10 1.5 3 9 2 3\nend\n",
       "f:13: layer 0 head 0 knot length 9: duplicate or unsorted"},
      {"0 0 0 nan 1 10 1.5 3\nend\n", "f:13: malformed or non-finite slope_above"},
      {"0 1 0 0 1 10 1.5 3\nend\n", "f:13: (layer, head) = (0 x 1) outside (1 x 1)"},
      {"0 0 0 0 1 10 1.5 3\n", "no 'end' line"},
      {"0 0 0 0 1 10 1.5 3\nend\nx\n", "f:15: unexpected content after the 'end' line"},
      // The optional longest calibrated row length after the knots.
      {"0 0 0 0 1 10 1.5 3 max_calibrated_length 9\nend\n",
       "f:13: layer 0 head 0: max_calibrated_length 9 is below the last knot's length 10"},
      {"0 0 0 0 1 10 1.5 3 max_calibrated_length 0\nend\n",
       "f:13: malformed or out-of-range max_calibrated_length '0'"},
      {"0 0 0 0 1 10 1.5 3 max_calibrated_length 12.5\nend\n",
       "f:13: malformed or out-of-range max_calibrated_length '12.5'"},
      // A field lost from a line that carries the length, or a bare number after the knots
      // (e.g. an SDC term under 'sdc off'), is a field count error, not a shifted read.
      {"0 0 0 0 2 10 1.5 20 1.7 3 max_calibrated_length 30\nend\n",
       "f:13: 2 knots of 3 fields need 11 fields (13 with 'max_calibrated_length M'), got 12"},
      {"0 0 0 0 1 10 1.5 3 12\nend\n", "f:13: 1 knots of 3 fields need 8 fields"},
      {"0 0 0 0 1 10 1.5 3 longest 12\nend\n",
       "f:13: expected 'max_calibrated_length M' after the 1 knots, got 'longest'"},
      {"0 0 0 0 1 10 1.5 3 max_calibrated_length 1099511627777\nend\n",
       "f:13: malformed or out-of-range max_calibrated_length '1099511627777' (an integer "
       "in [1, 1099511627776])"},
      {"0 0 0 0 1 10 1.5 3 max_calibrated_length 12 13\nend\n",
       "f:13: 1 knots of 3 fields need 8 fields (10 with 'max_calibrated_length M'), got 11"},
  };
  for (const auto& [body, want] : bad) {
    const Status s = parse_thresholds(head + body, "f", &t);
    EXPECT_FALSE(s.ok()) << body;
    EXPECT_NE(s.message().find(want), std::string::npos) << s.message();
  }
}

TEST(NativeV2, A32x32HeadTableCalibratedTo32kTokensIsUnder1MB) {
  // Bucket sums of one row per length from k+1 to 32768, for 32 layers x 32 heads at k = 32:
  // what the calibrator holds after a 32k-token calibration (the per-length form has 33.5M
  // entries, about 1.2 GB as text).
  const Index layers = 32, heads = 32, k = 32, context = 32768;
  ThresholdTable t = ThresholdTable::compact(layers, heads);
  for (Index l = 0; l < layers; ++l) ASSERT_TRUE(t.set_k(l, k).ok());
  t.metadata().placement = Placement::kPostSoftmax;
  t.metadata().buckets_per_octave = 2;
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const std::vector<BucketStats> base = linear_buckets(2.0, 0.3, k + 1, context, 2);
  for (Index l = 0; l < layers; ++l)
    for (Index h = 0; h < heads; ++h) {
      std::vector<BucketStats> b = base;
      for (auto& x : b) x.sy *= 1.0 + 0.01 * u(rng), x.sxy *= 1.0 + 0.01 * u(rng);
      ASSERT_TRUE(t.set_curve(l, h, fit_curve(b, true, 0.1, false, CompactFitOptions())).ok());
    }
  std::string text;
  ASSERT_TRUE(format_native_thresholds(t, &text).ok());
  EXPECT_LT(text.size(), std::size_t(1) << 20);
  const std::string path = temp_path("32x32.toptheta");
  ASSERT_TRUE(save_thresholds(path, t).ok());
  ThresholdTable back;
  ASSERT_TRUE(load_thresholds(path, &back).ok());
  EXPECT_TRUE(thresholds_identical(t, back));
  EXPECT_GT(back.lookup(31, 31, 65536).theta, 0.0);  // past the calibrated range: by the fit
}

// The writers refuse what the version-2 reader rejects, and every table they write loads
// identically: buckets_per_octave, lambda (any finite value, both versions), values at the ends
// of the float range, knot values held as floats (set_curve rounds them).
TEST(NativeV2, EveryWrittenCompactTableLoadsIdentically) {
  const auto one_curve = [](ThresholdTable* t, double value, double slope, double sdc) {
    ThresholdCurve c;
    c.knots.push_back({10, value, 3, sdc});
    c.slope_above = slope;
    return t->set_curve(0, 0, c);
  };
  const auto round_trip = [](const ThresholdTable& t) {
    std::string text;
    const Status w = format_native_thresholds(t, &text);
    EXPECT_TRUE(w.ok()) << w.to_string();
    ThresholdTable back;
    const Status r = parse_thresholds(text, "f", &back);
    EXPECT_TRUE(r.ok()) << r.to_string() << "\n" << text;
    EXPECT_TRUE(r.ok() && thresholds_identical(t, back));
    return back;
  };
  // compact() without further metadata: buckets_per_octave 2 is written and read.
  ThresholdTable t = ThresholdTable::compact(1, 1, 4);
  ASSERT_TRUE(one_curve(&t, 0.1, 0.0, std::nan("")).ok());
  ThresholdTable back = round_trip(t);
  ASSERT_EQ(back.num_layers(), 1);  // loaded (was: ':7: 'buckets_per_octave' must be in [1, 16]')
  EXPECT_EQ(back.metadata().buckets_per_octave, 2);
  // 0.1 is held as float(0.1): the in-memory table and the file give the same theta.
  EXPECT_EQ(t.lookup(0, 0, 10).theta, double(0.1f));
  EXPECT_EQ(back.lookup(0, 0, 10).theta, t.lookup(0, 0, 10).theta);
  EXPECT_EQ(back.lookup(0, 0, 1000).theta, t.lookup(0, 0, 1000).theta);
  // An invalid buckets_per_octave: refused, nothing written.
  std::string text = "untouched";
  for (int bpo : {0, 17, -1}) {
    t.metadata().buckets_per_octave = bpo;
    const Status s = format_native_thresholds(t, &text);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), "buckets_per_octave " + std::to_string(bpo) +
                               " must be in [1, 16] (metadata().buckets_per_octave of a compact table)");
    EXPECT_EQ(text, "untouched");
  }
  t.metadata().buckets_per_octave = 16;
  round_trip(t);
  // lambda: any finite value, as in version 1 (was: validate ok, the version-2 reader refused -0.5).
  t.metadata().lambda = -0.5;
  EXPECT_EQ(round_trip(t).metadata().lambda, -0.5);
  ThresholdTable v1;
  ASSERT_TRUE(parse_thresholds("toptheta-thresholds 1\nplacement pre\nlayers 1\nheads 1\nk 4\n"
                               "lambda -0.5\ncalibration_rows 1\nentries 1\n0 0 10 0.5 3\nend\n",
                               "v1", &v1).ok());
  ThresholdTable v1c;
  ASSERT_TRUE(to_compact(v1, &v1c).ok());  // toptheta-thresholds convert --to compact
  EXPECT_EQ(round_trip(v1c).metadata().lambda, -0.5);
  // Values at the ends of the float range (FLT_MAX is written as 3.4028235e+38, above FLT_MAX as
  // a double: it still reads as FLT_MAX).
  const double fmax = double(std::numeric_limits<float>::max());
  ThresholdTable ends = ThresholdTable::compact(1, 1, 4);
  ASSERT_TRUE(one_curve(&ends, -fmax, fmax, fmax).ok());
  round_trip(ends);
  ThresholdTable post = ThresholdTable::compact(1, 1, 4);
  post.metadata().placement = Placement::kPostSoftmax;
  ASSERT_TRUE(one_curve(&post, double(std::numeric_limits<float>::denorm_min()), 0.0, 0.0).ok());
  round_trip(post);
  // What a float cannot hold never reaches a writer (set_curve refuses it).
  EXPECT_FALSE(one_curve(&ends, 1e300, 0.0, std::nan("")).ok());
  EXPECT_FALSE(one_curve(&ends, 0.5, 1e300, std::nan("")).ok());
  EXPECT_FALSE(one_curve(&ends, 0.5, 0.0, 1e300).ok());
  EXPECT_FALSE(one_curve(&post, 1e-50, 0.0, std::nan("")).ok());
  // The longest calibrated row length: written and read back up to 2^40, refused past it.
  for (Index longest : {Index(10), Index(11), Index(1) << 40, (Index(1) << 40) + 1}) {
    ThresholdTable m = ThresholdTable::compact(1, 1, 4);
    ThresholdCurve c;
    c.knots.push_back({10, 0.5, 3, std::nan("")});
    c.max_calibrated_length = longest;
    ASSERT_TRUE(m.set_curve(0, 0, c).ok());
    if (longest <= (Index(1) << 40)) {
      EXPECT_EQ(round_trip(m).max_calibrated_length(0, 0), longest);
      continue;
    }
    std::string out = "untouched";
    const Status s = format_native_thresholds(m, &out);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(),
              "max_calibrated_length 1099511627777 of layer 0 head 0 exceeds 1099511627776");
    EXPECT_EQ(out, "untouched");
  }
}

// The version-2 reader's ranges are the real ones, and the version-1 'entries' count that does
// not fit is "too large", not malformed.
TEST(NativeV2, RangeMessagesGiveTheRealRange) {
  const std::string v2 = "toptheta-thresholds 2\nplacement pre\nlayers 1\nheads 1\nlambda 0\n";
  ThresholdTable t;
  for (const char* bpo : {"0", "17"}) {
    const Status s = parse_thresholds(v2 + "buckets_per_octave " + bpo + "\ntables 1\n", "f", &t);
    EXPECT_EQ(s.message(), std::string("f:6: malformed or out-of-range 'buckets_per_octave' '") +
                               bpo + "' (an integer in [1, 16])");
  }
  const Status s = parse_thresholds(
      "toptheta-thresholds 1\nplacement pre\nlayers 1\nheads 1\nk 4\nlambda 0\n"
      "calibration_rows 1\nentries 18446744073709551615\n0 0 10 0.5 3\nend\n", "F", &t);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "F:8: number '18446744073709551615' for 'entries' is too large (at most 2^62)");
}

// The set parser takes a version-2 file only from the format line parse_thresholds accepts.
TEST(NativeV2, SetParserRejectsTheFormatLinesParseThresholdsRejects) {
  const std::string body =
      "placement post\nlayers 1\nheads 1\nlambda 0\nbuckets_per_octave 2\ntables 1\ntable 4\n"
      "k 4\ncalibration_rows 5\nsdc off\ncurves 1\n0 0 0 0 1 10 1.5 3\nend\n";
  for (const char* first : {"toptheta-thresholds 2 junk here", "toptheta-thresholds 2\tv3",
                            "toptheta-thresholds 2 # comment"}) {
    ThresholdTable t;
    ThresholdSet set;
    const Status a = parse_thresholds(first + std::string("\n") + body, "F", &t);
    const Status b = parse_native_threshold_set(first + std::string("\n") + body, "F", &set);
    EXPECT_EQ(b.code(), StatusCode::kDataLoss) << first;
    EXPECT_EQ(b.message(), "F:1: the format line must be 'toptheta-thresholds <version>'") << first;
    EXPECT_EQ(a.message(), b.message()) << first;
  }
  for (const char* first : {"toptheta-thresholds 2", "toptheta-thresholds  02"}) {
    ThresholdSet set;
    const Status b = parse_native_threshold_set(first + std::string("\n") + body, "F", &set);
    EXPECT_TRUE(b.ok()) << first << ": " << b.to_string();
    EXPECT_EQ(set.size(), 1u);
  }
}

}  // namespace
