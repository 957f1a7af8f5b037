// ThresholdTable: lookup rules (nearest with ties to the smaller length, clamping below and
// beyond the calibrated range, opt-in linear interpolation), set / replace, per-layer k,
// validate() and shape errors, completeness (missing heads listed compactly, empty tables,
// dense heads declared on purpose) and the kernels' per-call check_layer().

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "counting_allocator.hpp"
#include "toptheta/threshold_table.hpp"

namespace {

using namespace toptheta;
using toptheta::testing::allocation_count;

ThresholdEntry entry(Index L, double theta, double sdc = std::numeric_limits<double>::quiet_NaN()) {
  ThresholdEntry e;
  e.length = L;
  e.theta = theta;
  e.samples = 3;
  e.sdc = sdc;
  return e;
}

ThresholdTable three_entries() {
  ThresholdTable t(2, 3, 8);
  EXPECT_TRUE(t.set(1, 2, entry(10, 1.0, 0.5)).ok());
  EXPECT_TRUE(t.set(1, 2, entry(20, 2.0, 1.5)).ok());
  EXPECT_TRUE(t.set(1, 2, entry(30, 4.0, 3.5)).ok());
  return t;
}

TEST(ThresholdTableLookup, ExactLengths) {
  const ThresholdTable t = three_entries();
  EXPECT_EQ(t.lookup(1, 2, 10).theta, 1.0);
  EXPECT_EQ(t.lookup(1, 2, 20).theta, 2.0);
  EXPECT_EQ(t.lookup(1, 2, 30).theta, 4.0);
  EXPECT_EQ(t.lookup(1, 2, 20).sdc, 1.5);
  for (auto pol : {LookupPolicy::kNearest, LookupPolicy::kLinear})
    EXPECT_EQ(t.lookup(1, 2, 20, pol).theta, 2.0);
}

TEST(ThresholdTableLookup, NearestTiesGoToTheSmallerLength) {
  const ThresholdTable t = three_entries();
  EXPECT_EQ(t.lookup(1, 2, 14).theta, 1.0);
  EXPECT_EQ(t.lookup(1, 2, 15).theta, 1.0);  // equidistant from 10 and 20
  EXPECT_EQ(t.lookup(1, 2, 16).theta, 2.0);
  EXPECT_EQ(t.lookup(1, 2, 25).theta, 2.0);  // equidistant from 20 and 30
  EXPECT_EQ(t.lookup(1, 2, 26).theta, 4.0);
  EXPECT_EQ(t.lookup(1, 2, 26).sdc, 3.5);
}

TEST(ThresholdTableLookup, ClampsBelowAndBeyondTheRange) {
  const ThresholdTable t = three_entries();
  for (auto pol : {LookupPolicy::kNearest, LookupPolicy::kLinear}) {
    EXPECT_EQ(t.lookup(1, 2, 1, pol).theta, 1.0);
    EXPECT_EQ(t.lookup(1, 2, 9, pol).theta, 1.0);
    EXPECT_EQ(t.lookup(1, 2, 31, pol).theta, 4.0);
    EXPECT_EQ(t.lookup(1, 2, 100000, pol).theta, 4.0);
    EXPECT_EQ(t.lookup(1, 2, 100000, pol).sdc, 3.5);
  }
}

TEST(ThresholdTableLookup, LinearInterpolation) {
  const ThresholdTable t = three_entries();
  EXPECT_DOUBLE_EQ(t.lookup(1, 2, 15, LookupPolicy::kLinear).theta, 1.5);
  EXPECT_DOUBLE_EQ(t.lookup(1, 2, 12, LookupPolicy::kLinear).theta, 1.2);
  EXPECT_DOUBLE_EQ(t.lookup(1, 2, 27, LookupPolicy::kLinear).theta, 2.0 + 0.7 * 2.0);
  EXPECT_DOUBLE_EQ(t.lookup(1, 2, 27, LookupPolicy::kLinear).sdc, 1.5 + 0.7 * 2.0);
}

// Linear interpolation next to a theta of -inf (which keeps every score) gives -inf strictly
// between the two entries, and the entries' own values at their lengths (before: -inf + t * inf
// was NaN, and a NaN theta kept nothing: 1 key per row, no error).
TEST(ThresholdTableLookup, LinearNextToMinusInfinityKeepsEverything) {
  const double ninf = -std::numeric_limits<double>::infinity();
  ThresholdTable t(1, 1, 4);
  ASSERT_TRUE(t.set(0, 0, entry(10, ninf)).ok());
  ASSERT_TRUE(t.set(0, 0, entry(20, 2.0)).ok());
  ASSERT_TRUE(t.set(0, 0, entry(40, ninf)).ok());
  ASSERT_TRUE(t.set(0, 0, entry(50, ninf)).ok());
  ASSERT_TRUE(t.validate().ok());
  for (Index L : {11, 15, 19, 21, 30, 39, 45}) {
    EXPECT_EQ(t.lookup(0, 0, L, LookupPolicy::kLinear).theta, ninf) << L;
    EXPECT_FALSE(std::isnan(t.lookup(0, 0, L, LookupPolicy::kLinear).theta)) << L;
  }
  EXPECT_EQ(t.lookup(0, 0, 20, LookupPolicy::kLinear).theta, 2.0);
  EXPECT_EQ(t.lookup(0, 0, 10, LookupPolicy::kLinear).theta, ninf);
  EXPECT_EQ(t.lookup(0, 0, 5, LookupPolicy::kLinear).theta, ninf);
}

// Neighbours of opposite sign near DBL_MAX: hi - lo overflows to +inf, and lo + t * inf was +inf
// (a threshold that keeps nothing) halfway between -1.7e308 and 1.7e308, where theta is 0.
TEST(ThresholdTableLookup, LinearBetweenHugeThresholdsOfOppositeSign) {
  ThresholdTable t(1, 1, 2);
  ASSERT_TRUE(t.set(0, 0, entry(4, -1.7e308)).ok());
  ASSERT_TRUE(t.set(0, 0, entry(8, 1.7e308)).ok());
  EXPECT_EQ(t.lookup(0, 0, 6, LookupPolicy::kLinear).theta, 0.0);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 5, LookupPolicy::kLinear).theta, -0.85e308);
  EXPECT_DOUBLE_EQ(t.lookup(0, 0, 7, LookupPolicy::kLinear).theta, 0.85e308);
}

TEST(ThresholdTableLookup, SingleEntryServesEveryLength) {
  ThresholdTable t(1, 1, 4);
  ASSERT_TRUE(t.set(0, 0, entry(50, -0.25)).ok());
  for (Index L : {1, 49, 50, 51, 4096})
    for (auto pol : {LookupPolicy::kNearest, LookupPolicy::kLinear})
      EXPECT_EQ(t.lookup(0, 0, L, pol).theta, -0.25);
}

TEST(ThresholdTableLookup, DenseHeadKeepsEverything) {
  ThresholdTable t = three_entries();
  ASSERT_TRUE(t.set_dense(0, 0).ok());
  EXPECT_EQ(t.lookup(0, 0, 10).theta, -std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(t.lookup(0, 0, 10).sdc));
}

TEST(ThresholdTableLookup, HeadsAndLayersAreIndependent) {
  ThresholdTable t(2, 2, 4);
  ASSERT_TRUE(t.set(0, 0, entry(8, 0.0)).ok());
  ASSERT_TRUE(t.set(0, 1, entry(8, 1.0)).ok());
  ASSERT_TRUE(t.set(1, 0, entry(8, 2.0)).ok());
  ASSERT_TRUE(t.set(1, 1, entry(8, 3.0)).ok());
  EXPECT_EQ(t.lookup(0, 0, 8).theta, 0.0);
  EXPECT_EQ(t.lookup(0, 1, 8).theta, 1.0);
  EXPECT_EQ(t.lookup(1, 0, 8).theta, 2.0);
  EXPECT_EQ(t.lookup(1, 1, 8).theta, 3.0);
}

TEST(ThresholdTableSet, InsertKeepsLengthsSortedAndReplaces) {
  ThresholdTable t(1, 1, 4);
  for (Index L : {30, 10, 20, 5, 25}) ASSERT_TRUE(t.set(0, 0, entry(L, double(L))).ok());
  const auto& e = t.entries(0, 0);
  ASSERT_EQ(e.size(), 5u);
  for (std::size_t i = 1; i < e.size(); ++i) EXPECT_LT(e[i - 1].length, e[i].length);
  ASSERT_TRUE(t.set(0, 0, entry(20, -7.0)).ok());  // replace
  EXPECT_EQ(t.size(), 5u);
  EXPECT_EQ(t.lookup(0, 0, 20).theta, -7.0);
  EXPECT_TRUE(t.contains(0, 0, 20));
  EXPECT_FALSE(t.contains(0, 0, 21));
  EXPECT_FALSE(t.contains(3, 0, 20));
  EXPECT_TRUE(t.validate().ok());
}

TEST(ThresholdTableSet, RejectsBadEntries) {
  ThresholdTable t(2, 2, 4);
  EXPECT_EQ(t.set(2, 0, entry(8, 0.0)).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(t.set(0, 2, entry(8, 0.0)).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(t.set(-1, 0, entry(8, 0.0)).code(), StatusCode::kOutOfRange);
  EXPECT_FALSE(t.set(0, 0, entry(0, 0.0)).ok());
  EXPECT_FALSE(t.set(0, 0, entry(-3, 0.0)).ok());
  EXPECT_FALSE(t.set(0, 0, entry(8, std::numeric_limits<double>::quiet_NaN())).ok());
  EXPECT_FALSE(t.set(0, 0, entry(8, std::numeric_limits<double>::infinity())).ok());
  EXPECT_TRUE(t.set(0, 0, entry(8, -std::numeric_limits<double>::infinity())).ok());  // keep all
  EXPECT_TRUE(t.empty() == false);
  // The out-of-range message names the table's shape.
  const Status s = t.set(5, 0, entry(8, 0.0));
  EXPECT_NE(s.message().find("(2 x 2)"), std::string::npos) << s.message();
}

TEST(ThresholdTableK, PerLayerBudgets) {
  ThresholdTable t(3, 1, 64);
  EXPECT_EQ(t.k(0), 64);
  EXPECT_EQ(t.k(2), 64);
  ASSERT_TRUE(t.set_k(0, 512).ok());
  ASSERT_TRUE(t.set_k(1, 512).ok());
  EXPECT_EQ(t.k(0), 512);
  EXPECT_EQ(t.k(1), 512);
  EXPECT_EQ(t.k(2), 64);
  EXPECT_EQ(t.set_k(3, 1).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(t.set_k(0, 0).code(), StatusCode::kInvalidArgument);
}

/// three_entries() with one entry in every other (layer, head): complete.
ThresholdTable complete_table() {
  ThresholdTable t = three_entries();
  for (Index l = 0; l < 2; ++l)
    for (Index h = 0; h < 3; ++h)
      if (t.entries(l, h).empty()) {
        EXPECT_TRUE(t.set(l, h, entry(12, 0.5, 0.25)).ok());
      }
  return t;
}

TEST(ThresholdTableValidate, Errors) {
  EXPECT_FALSE(ThresholdTable().validate().ok());
  EXPECT_FALSE(ThresholdTable(0, 4).validate().ok());
  ThresholdTable t = complete_table();
  EXPECT_TRUE(t.validate().ok());
  EXPECT_TRUE(t.has_sdc());
  t.metadata().lambda = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(t.validate().ok());
  t.metadata().lambda = 0.1;
  EXPECT_TRUE(t.validate().ok());
  // A negative or infinite SDC term never enters the table: set() rejects it, as validate()
  // does for the tables the file readers build (a negative term reached the kernels, which
  // shrank the softmax denominator with it).
  for (double bad : {-1.0, -1e-300, std::numeric_limits<double>::infinity(),
                     -std::numeric_limits<double>::infinity()}) {
    const Status s = t.set(0, 1, entry(7, 0.0, bad));
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(s.message().find("SDC term must be finite and >= 0, or NaN (none)"),
              std::string::npos)
        << s.message();
    EXPECT_FALSE(t.contains(0, 1, 7));
  }
  EXPECT_TRUE(t.validate().ok());
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, 0.0)).ok());
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, -0.0)).ok());  // -0 is zero
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, 0.25)).ok());
  EXPECT_TRUE(t.validate().ok());
  // An entry without SDC term: the table as a whole no longer "has SDC".
  ASSERT_TRUE(t.set(0, 1, entry(9, 0.0)).ok());
  EXPECT_TRUE(t.validate().ok());
  EXPECT_FALSE(t.has_sdc());
}

TEST(ThresholdTableValidate, CheckShapeNamesBothShapes) {
  const ThresholdTable t = complete_table();
  EXPECT_TRUE(t.check_shape(2, 3).ok());
  const Status s = t.check_shape(4, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("(2 x 3)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("(4 x 3)"), std::string::npos) << s.message();
}

// ---------------------------------------------------------------------------------------------
// Completeness: a (layer, head) without entries is an error unless declared dense.
// ---------------------------------------------------------------------------------------------

/// A layers x heads table with one entry for each (layer, head) where `has(l, h)`.
template <class Pred>
ThresholdTable table_where(Index layers, Index heads, Pred has) {
  ThresholdTable t(layers, heads, 4);
  for (Index l = 0; l < layers; ++l)
    for (Index h = 0; h < heads; ++h)
      if (has(l, h)) {
        EXPECT_TRUE(t.set(l, h, entry(16, 0.5)).ok());
      }
  return t;
}

TEST(ThresholdTableComplete, EmptyTableNeverValidates) {
  const ThresholdTable t(2, 4, 8);
  const Status s = t.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("threshold table (layers x heads) (2 x 4) is empty: all 8 (layer, "
                             "head) pairs have no thresholds: layer 0 heads 0-3; layer 1 heads 0-3"),
            std::string::npos)
      << s.message();
  EXPECT_FALSE(t.check_shape(2, 4).ok());
  EXPECT_FALSE(t.check_complete().ok());
  EXPECT_TRUE(t.validate_entries().ok());  // nothing wrong besides completeness
  EXPECT_EQ(t.num_missing_heads(), 8u);
}

TEST(ThresholdTableComplete, MissingHeadsAreNamedWithCountAndShape) {
  // The handed case: thresholds for query head 0 only.
  const ThresholdTable t = table_where(2, 8, [](Index, Index h) { return h == 0; });
  const Status s = t.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("threshold table (layers x heads) (2 x 8) is incomplete: 14 of 16 "
                             "(layer, head) pairs have no thresholds: layer 0 heads 1-7; layer 1 "
                             "heads 1-7 ("),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("set_dense()"), std::string::npos) << s.message();  // the remedy
  // check_shape() adds the model's shape.
  const Status m = t.check_shape(2, 8);
  EXPECT_NE(m.message().find("heads 1-7; the model has (layers x heads) (2 x 8)"),
            std::string::npos)
      << m.message();
  // Gaps, single heads, one layer complete.
  const ThresholdTable g = table_where(
      2, 8, [](Index l, Index h) { return l == 1 || !(h == 1 || (h >= 3 && h <= 5) || h == 7); });
  EXPECT_NE(g.validate().message().find("5 of 16 (layer, head) pairs have no thresholds: layer 0 "
                                        "heads 1, 3-5, 7 ("),
            std::string::npos)
      << g.validate().message();
  const ThresholdTable one = table_where(3, 4, [](Index l, Index h) { return l != 2 || h != 3; });
  EXPECT_NE(one.validate().message().find("1 of 12 (layer, head) pairs have no thresholds: layer 2 "
                                          "head 3 ("),
            std::string::npos)
      << one.validate().message();
}

TEST(ThresholdTableComplete, HugeListsAreTruncated) {
  // 40 layers x 64 heads, odd heads missing: 1280 pairs in 32 ranges per layer.
  const ThresholdTable t = table_where(40, 64, [](Index, Index h) { return h % 2 == 0; });
  const std::string m = t.validate().message();
  EXPECT_NE(m.find("1280 of 2560 (layer, head) pairs have no thresholds: layer 0 heads 1, 3, 5, 7, "
                   "9, 11, 13, 15 (+24 more heads); layer 1 heads 1, 3,"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("layer 7 heads 1, 3, 5, 7, 9, 11, 13, 15 (+24 more heads); ... and 32 more layers"),
            std::string::npos)
      << m;
  EXPECT_EQ(m.find("layer 8 "), std::string::npos) << m;
  EXPECT_LT(m.size(), 1200u);
}

TEST(ThresholdTableComplete, DenseHeadsAreExplicit) {
  ThresholdTable t = table_where(2, 4, [](Index, Index h) { return h < 2; });
  EXPECT_FALSE(t.validate().ok());
  EXPECT_FALSE(t.set_dense(0, 0).ok()) << "a head with entries cannot be declared dense";
  EXPECT_EQ(t.set_dense(2, 0).code(), StatusCode::kOutOfRange);
  for (Index l = 0; l < 2; ++l)
    for (Index h = 2; h < 4; ++h) ASSERT_TRUE(t.set_dense(l, h).ok());
  const Status s = t.validate();
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(t.check_shape(2, 4).ok());
  EXPECT_TRUE(t.is_dense(1, 3));
  EXPECT_FALSE(t.is_dense(1, 1));
  EXPECT_FALSE(t.is_dense(5, 0));
  EXPECT_EQ(t.num_dense_heads(), 4u);
  EXPECT_EQ(t.num_missing_heads(), 0u);
  EXPECT_EQ(t.describe_heads(true), "layer 0 heads 2-3; layer 1 heads 2-3");
  EXPECT_EQ(t.describe_heads(false), "");
  EXPECT_EQ(t.lookup(1, 3, 100).theta, -std::numeric_limits<double>::infinity());
  // Adding thresholds to a dense head needs the declaration removed first.
  const Status add = t.set(1, 3, entry(16, 0.5));
  EXPECT_FALSE(add.ok());
  EXPECT_NE(add.message().find("layer 1 head 3 is declared dense"), std::string::npos)
      << add.message();
  ASSERT_TRUE(t.set_dense(1, 3, false).ok());
  EXPECT_FALSE(t.validate().ok());
  ASSERT_TRUE(t.set(1, 3, entry(16, 0.5)).ok());
  EXPECT_TRUE(t.validate().ok());
  // A table whose every head is declared dense is valid (nothing is silent about it).
  ThresholdTable all(1, 2, 4);
  ASSERT_TRUE(all.set_dense(0, 0).ok());
  ASSERT_TRUE(all.set_dense(0, 1).ok());
  EXPECT_TRUE(all.validate().ok());
}

TEST(ThresholdTableComplete, CheckLayerForTheKernels) {
  ThresholdTable t = table_where(3, 8, [](Index l, Index h) { return l != 1 || h < 5; });
  ASSERT_TRUE(t.set_dense(1, 7).ok());
  EXPECT_TRUE(t.check_layer(0, 8).ok());
  EXPECT_TRUE(t.check_layer(2, 8).ok());
  const Status s = t.check_layer(1, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "threshold table (layers x heads) (3 x 8) has no thresholds for layer 1 heads 5-6 (2 of "
            "the layer's 8 query heads; none is declared dense)");
  for (const auto& [layer, heads] : {std::pair<Index, Index>{3, 8}, {-1, 8}, {0, 4}}) {
    const Status w = t.check_layer(layer, heads);
    EXPECT_EQ(w.code(), StatusCode::kInvalidArgument) << layer << " " << heads;
    EXPECT_NE(w.message().find("(3 x 8) does not cover layer " + std::to_string(layer) + " with " +
                               std::to_string(heads) + " query heads"),
              std::string::npos)
        << w.message();
  }
  // A layer budget below 1 (a table constructed with default_k = 0) does not reach the kernels.
  ThresholdTable z(1, 2, /*default_k=*/0);
  ASSERT_TRUE(z.set_dense(0, 0).ok());
  ASSERT_TRUE(z.set_dense(0, 1).ok());
  EXPECT_FALSE(z.validate().ok());
  const Status zk = z.check_layer(0, 2);
  EXPECT_EQ(zk.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(zk.message(), "threshold table: layer 0 has budget k = 0 (k must be >= 1)");
  // Success allocates nothing (the kernels call it on every call).
  const long long before = allocation_count();
  for (int i = 0; i < 1000; ++i) {
    if (!t.check_layer(0, 8).ok()) ADD_FAILURE();
    if (!t.check_layer(2, 8).ok()) ADD_FAILURE();
  }
  EXPECT_EQ(allocation_count() - before, 0);
}

// set_curve() stores values, slopes and SDC terms rounded to float (the file's precision) and
// refuses what a float cannot hold; compact() gives a valid buckets_per_octave.
TEST(ThresholdCurveTable, SetCurveRoundsToFloatAndRefusesWhatAFloatCannotHold) {
  ThresholdTable t = ThresholdTable::compact(1, 1, 4);
  EXPECT_EQ(t.metadata().buckets_per_octave, 2);
  EXPECT_EQ(ThresholdTable::compact(1, 1, 4, 5).metadata().buckets_per_octave, 5);
  ThresholdCurve c;
  c.knots.push_back({10, 0.1, 3, 0.3});
  c.slope_above = 0.7;
  ASSERT_TRUE(t.set_curve(0, 0, c).ok());
  EXPECT_EQ(t.curve(0, 0).knots[0].value, double(0.1f));
  EXPECT_NE(t.curve(0, 0).knots[0].value, 0.1);
  EXPECT_EQ(t.curve(0, 0).knots[0].sdc, double(0.3f));
  EXPECT_EQ(t.curve(0, 0).slope_above, double(0.7f));
  EXPECT_EQ(t.lookup(0, 0, 10).theta, double(0.1f));
  // FLT_MAX itself is fine.
  c.slope_above = double(std::numeric_limits<float>::max());
  EXPECT_TRUE(t.set_curve(0, 0, c).ok());

  const auto expect_refused = [&](ThresholdTable& table, ThresholdCurve curve, const std::string& m) {
    const Status s = table.set_curve(0, 0, std::move(curve));
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.message(), m);
  };
  ThresholdCurve big = c;
  big.slope_above = 1e300;
  expect_refused(t, big, "layer 0 head 0: slope_above 1e+300 is beyond the float range of the threshold file");
  big = c;
  big.knots[0].value = -1e300;
  expect_refused(t, big, "layer 0 head 0 knot length 10: value -1e+300 is beyond the float range of the threshold file");
  big = c;
  big.knots[0].sdc = 1e300;
  expect_refused(t, big, "layer 0 head 0 knot length 10: SDC term 1e+300 is beyond the float range of the threshold file");
  EXPECT_EQ(t.curve(0, 0).slope_above, double(std::numeric_limits<float>::max()));  // unchanged

  ThresholdTable post = ThresholdTable::compact(1, 1, 4);
  post.metadata().placement = Placement::kPostSoftmax;
  ThresholdCurve tiny;
  tiny.knots.push_back({10, 1e-50, 3, std::nan("")});
  expect_refused(post, tiny, "layer 0 head 0 knot length 10: post-softmax value 1e-50 rounds to 0 as a float (L * theta must be > 0)");
  tiny.knots[0].value = 1e-40;  // a float subnormal: kept
  EXPECT_TRUE(post.set_curve(0, 0, tiny).ok());
  EXPECT_EQ(post.curve(0, 0).knots[0].value, double(1e-40f));
}

}  // namespace
