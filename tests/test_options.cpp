// toptheta_options(): the recommended Top-θ variant follows the table's placement. Name tables:
// every enumeration's names round-trip through to_string / parse and are distinct.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include <toptheta/toptheta.hpp>

using namespace toptheta;

TEST(RecommendedOptions, PostSoftmaxTableGetsVmcWithoutSdc) {
  ThresholdTable t(2, 4, 16);
  t.metadata().placement = Placement::kPostSoftmax;
  const AttentionOptions o = toptheta_options(t);
  EXPECT_EQ(o.mode, AttentionMode::kTopTheta);
  EXPECT_EQ(o.thresholds, &t);
  EXPECT_EQ(o.placement, Placement::kPostSoftmax);
  EXPECT_EQ(o.sdc, SdcMode::kNone);
  EXPECT_EQ(o.vmc, VmcMode::kOn);
  EXPECT_EQ(o.empty_row, EmptyRowPolicy::kKeepMax);
}

TEST(RecommendedOptions, PreSoftmaxTableGetsExactSdcAndVmc) {
  ThresholdTable t(1, 2, 8);
  t.metadata().placement = Placement::kPreSoftmax;
  const AttentionOptions o = toptheta_options(t);
  EXPECT_EQ(o.placement, Placement::kPreSoftmax);
  EXPECT_EQ(o.sdc, SdcMode::kExact);
  EXPECT_EQ(o.vmc, VmcMode::kOn);
}

TEST(RecommendedOptions, CalibratorDefaultsMatchTheRecommendation) {
  // A table from a default-configured calibrator runs with toptheta_options() unchanged.
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = 2;
  co.default_k = 2;
  Calibrator cal(co);
  ASSERT_TRUE(cal.validate().ok());
  const float row[6] = {0.5f, 3.f, -1.f, 2.f, 0.f, 1.f};
  cal.observe_scores(0, 0, row, 6);
  cal.observe_scores(0, 1, row, 6);
  const ThresholdTable t = cal.finalize();
  EXPECT_EQ(t.placement(), Placement::kPostSoftmax);

  const Index L = 6, d = 4;
  std::vector<float> q(2 * d, 0.5f), k(L * d), v(L * d), out(2 * d);
  for (Index j = 0; j < L; ++j)
    for (Index i = 0; i < d; ++i) {
      k[std::size_t(j * d + i)] = row[j] * 0.5f;
      v[std::size_t(j * d + i)] = float(j);
    }
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), 1, 2, d);
  a.k = HeadsView<const float>::token_major(k.data(), L, 1, d);
  a.v = HeadsView<const float>::token_major(v.data(), L, 1, d);
  a.out = HeadsView<float>::token_major(out.data(), 1, 2, d);
  RunningVSum<float> vsum(1, d);  // the V rows before the new token, as VMC needs
  ASSERT_TRUE(vsum.add(a.v.slice_tokens(0, L - 1)).ok());
  a.v_sum = vsum.data();
  AttentionStats st;
  AttentionOptions o = toptheta_options(t);
  o.stats = &st;
  ASSERT_TRUE(decode(a, o).ok());
  EXPECT_EQ(st.thresholded_rows, 2u);
  EXPECT_LT(st.kept_fraction(), 1.0);
}

template <class E>
void ExpectNamesRoundTrip() {
  std::set<std::string> seen;
  for (const auto& n : EnumNames<E>::table) {
    EXPECT_TRUE(seen.insert(n.name).second) << "duplicate name " << n.name;
    EXPECT_STREQ(to_string(n.value), n.name);
    E back{};
    ASSERT_TRUE(parse(n.name, back)) << n.name;
    EXPECT_EQ(back, n.value) << n.name;
    EXPECT_EQ(name_map<E>().at(n.name), n.value);
  }
  E untouched = EnumNames<E>::table[0].value;
  EXPECT_FALSE(parse("no-such-name", untouched));
  EXPECT_EQ(untouched, EnumNames<E>::table[0].value);
}

TEST(EnumNameTables, EveryNameRoundTrips) {
  ExpectNamesRoundTrip<AttentionMode>();
  ExpectNamesRoundTrip<Placement>();
  ExpectNamesRoundTrip<SdcMode>();
  ExpectNamesRoundTrip<VmcMode>();
  ExpectNamesRoundTrip<EmptyRowPolicy>();
  ExpectNamesRoundTrip<LookupPolicy>();
  ExpectNamesRoundTrip<Isa>();
  ExpectNamesRoundTrip<VbarSource>();
  ExpectNamesRoundTrip<ThresholdFormat>();
  ExpectNamesRoundTrip<MissingHeads>();
}

TEST(EnumNameTables, FileFormatNamesAreTheDocumentedOnes) {
  EXPECT_EQ(names_list<ThresholdFormat>(), "auto|native|reference");
  EXPECT_EQ(names_list<MissingHeads>(), "error|dense|keep-empty");
}
