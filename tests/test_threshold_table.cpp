// ThresholdTable: lookup rules (nearest with ties to the smaller length, clamping below and
// beyond the calibrated range, opt-in linear interpolation), set / replace, per-layer k,
// validate() and shape errors.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "toptheta/threshold_table.hpp"

namespace {

using namespace toptheta;

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

TEST(ThresholdTableLookup, SingleEntryServesEveryLength) {
  ThresholdTable t(1, 1, 4);
  ASSERT_TRUE(t.set(0, 0, entry(50, -0.25)).ok());
  for (Index L : {1, 49, 50, 51, 4096})
    for (auto pol : {LookupPolicy::kNearest, LookupPolicy::kLinear})
      EXPECT_EQ(t.lookup(0, 0, L, pol).theta, -0.25);
}

TEST(ThresholdTableLookup, EmptyHeadKeepsEverything) {
  const ThresholdTable t = three_entries();
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

TEST(ThresholdTableValidate, Errors) {
  EXPECT_FALSE(ThresholdTable().validate().ok());
  EXPECT_FALSE(ThresholdTable(0, 4).validate().ok());
  ThresholdTable t = three_entries();
  EXPECT_TRUE(t.validate().ok());
  EXPECT_TRUE(t.has_sdc());
  t.metadata().lambda = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(t.validate().ok());
  t.metadata().lambda = 0.1;
  EXPECT_TRUE(t.validate().ok());
  // A negative SDC term is rejected and the message names where.
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, -1.0)).ok());
  const Status s = t.validate();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layer 0 head 1 length 7"), std::string::npos) << s.message();
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, std::numeric_limits<double>::infinity())).ok());
  EXPECT_FALSE(t.validate().ok());
  ASSERT_TRUE(t.set(0, 1, entry(7, 0.0, 0.25)).ok());
  EXPECT_TRUE(t.validate().ok());
  // An entry without SDC term: the table as a whole no longer "has SDC".
  ASSERT_TRUE(t.set(0, 1, entry(9, 0.0)).ok());
  EXPECT_TRUE(t.validate().ok());
  EXPECT_FALSE(t.has_sdc());
}

TEST(ThresholdTableValidate, CheckShapeNamesBothShapes) {
  const ThresholdTable t(2, 3, 8);
  EXPECT_TRUE(t.check_shape(2, 3).ok());
  const Status s = t.check_shape(4, 3);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("(2 x 3)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("(4 x 3)"), std::string::npos) << s.message();
}

}  // namespace
