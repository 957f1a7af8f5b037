// Post-softmax Top-theta on the tile walks (kernels/prefill.hpp `post_item`: pass 1 computes every
// row's maximum and softmax denominator, pass 2 selects p_j > theta and gathers the kept V
// rows) and the decode fallback for calls whose every head keeps every key
// (kernels/decode.hpp `keeps_every_key`), against the oracle (include/toptheta/reference/):
//  - random shapes (several query blocks and key tiles, GQA groups up to 64 query heads per KV
//    head, earlier cache tokens), storage types, masks, VMC, empty-row policies, running V sum
//    or not, 1 or 2 threads, thresholds with empty and all-kept rows;
//  - thresholds that keep everything (-inf, a negative finite value, heads declared dense),
//    exactly 0, and above every probability;
//  - agreement with the stored-block path (cap_k above every row length routes the same call
//    there) and bit-identical results for 1 and 2 threads;
//  - NaN / Inf in K and V rows of keys that every row masks: the output does not change;
//  - the selection is bit-identical to the stored path's and the calibrator's: thresholds
//    calibrated on the call's own rows (one sample per row length) keep exactly k per row.
//  - walks 2 and 3 reading the score tiles back and recomputing them
//    (options.post_score_tile_bytes) give the same bits.
// test_post_prefill_recompute.cpp compiles this file with a zero score-tile budget, so that
// walks 2 and 3 of every case recompute the score tiles instead of reading them back.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/reference/attention.hpp"

#ifndef TT_POST_SUITE
#define TT_POST_SUITE PostSoftmaxTiles
#endif
#define TT_POST_TEST_(suite, name) TEST(suite, name)
#define TT_POST_TEST(name) TT_POST_TEST_(TT_POST_SUITE, name)
// AttentionOptions::post_score_tile_bytes of every call the suite checks.
#ifndef TT_POST_SCORE_TILE_BYTES
#define TT_POST_SCORE_TILE_BYTES (AttentionOptions{}.post_score_tile_bytes)
#endif

namespace {

using namespace toptheta;
using namespace toptheta::testing;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Case {
  Index T = 1, P = 0, Hkv = 1, G = 1, d = 8;
  Layout layout = Layout::kTokenMajor;
  int bias = 0;  // 0 none, 1 random key mask, 2 some rows fully masked + random mask
  VmcMode vmc = VmcMode::kOn;
  EmptyRowPolicy empty = EmptyRowPolicy::kKeepMax;
  bool vsum = true;
  int threads = 1;
  double p_empty = 0.1, p_neg_inf = 0.05;
  std::uint64_t seed = 1;
  std::string describe() const {
    std::ostringstream os;
    os << "T=" << T << " P=" << P << " Hkv=" << Hkv << " G=" << G << " d=" << d << " "
       << to_string(layout) << " bias=" << bias << " vmc=" << (vmc == VmcMode::kOn) << " "
       << to_string(empty) << " vsum=" << vsum << " threads=" << threads
       << " p_empty=" << p_empty << " p_all=" << p_neg_inf << " seed=" << seed;
    return os.str();
  }
};

template <class T>
Problem<T> problem_of(const Case& c) {
  ProblemSpec sp;
  sp.T = c.T;
  sp.P = c.P;
  sp.Hq = c.Hkv * c.G;
  sp.Hkv = c.Hkv;
  sp.d = c.d;
  sp.layout = c.layout;
  sp.q_sigma = 2.0;
  sp.seed = c.seed;
  Problem<T> p = make_problem<T>(sp);
  Rng rng(c.seed ^ 0xb1a5ull);
  if (c.bias == 1) {
    std::vector<char> masked(std::size_t(c.P + c.T));
    for (auto& m : masked) m = rng() % 4 == 0;
    p.set_bias([&](Index, Index j) { return masked[std::size_t(j)] ? kNegInf : 0.0f; }, true);
  } else if (c.bias == 2) {
    std::vector<std::uint64_t> bits(std::size_t(c.T));
    for (auto& b : bits) b = rng();
    p.set_bias([&](Index t, Index j) {
      const std::uint64_t b = bits[std::size_t(t)];
      return b % 4 == 0 || ((b >> (j % 53)) & 1) ? kNegInf : 0.0f;
    }, true);
  }
  if (c.vsum) p.set_vsum(true);
  return p;
}

AttentionOptions post_options(const Case& c, const ThresholdTable* table) {
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.placement = Placement::kPostSoftmax;
  o.thresholds = table;
  o.vmc = c.vmc;
  o.empty_row = c.empty;
  // The caller's running sum when the case gives one, else the kernel sums V itself.
  o.vbar = c.vsum ? VbarSource::kRunningSum : VbarSource::kSumCache;
  o.threads = c.threads;
  o.post_score_tile_bytes = TT_POST_SCORE_TILE_BYTES;
  return o;
}

template <class T>
double tolerance_of(const Problem<T>& p) {
  const double u = unit_roundoff<T>();
  const double serr = problem_score_error(p) + 8 * u * (p.score_magnitude() + 1);
  return output_tolerance<T>(p.length(), serr, p.max_abs_v());
}

template <class T>
std::vector<acc_t<T>> run(Problem<T>& p, const AttentionOptions& o, bool prefill_call,
                          AttentionStats* stats) {
  AttentionOptions oo = o;
  oo.stats = stats;
  p.clear_out();
  const auto args = p.args();
  WorkspaceBuffer ws(workspace_size(args, oo));
  const Status st = prefill_call ? prefill(args, oo, ws.get()) : decode(args, oo, ws.get());
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_TRUE(p.out_padding_intact()) << "kernel wrote outside the output view";
  std::vector<acc_t<T>> r;
  for (Index t = 0; t < p.out.view.tokens; ++t)
    for (Index h = 0; h < p.out.view.heads; ++h)
      for (Index i = 0; i < p.out.view.dim; ++i) r.push_back(p.out.view(t, h, i));
  return r;
}

/// The call against the oracle: outputs within tolerance, statistics equal.
template <class T>
void check_oracle(Problem<T>& p, const AttentionOptions& o, bool prefill_call) {
  AttentionStats stats;
  stats.enable_per_head(p.spec.Hq);
  run(p, o, prefill_call, &stats);
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const reference::Result ref = reference::attention(p.args(), o, ro);
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  EXPECT_TRUE(outputs_close(ref, p.out.view, tolerance_of(p)));
  EXPECT_TRUE(stats_equal(ref.stats, stats));
}

template <class T>
void run_case(const Case& c) {
  SCOPED_TRACE(c.describe());
  Problem<T> p = problem_of<T>(c);
  Rng rng(c.seed ^ 0x7ab1eull);
  ThetaPlan plan;
  plan.p_empty = c.p_empty;
  plan.p_neg_inf = c.p_neg_inf;
  plan.target_hi = 24;
  const ThresholdTable table = make_margin_table(p, Placement::kPostSoftmax, 4, plan, rng);
  const AttentionOptions o = post_options(c, &table);
  check_oracle(p, o, true);

  // The stored-block path (cap_k above every row length changes nothing) agrees, statistics
  // included, and two threads give the same bits as one.
  AttentionStats s_tiles, s_stored;
  const std::vector<acc_t<T>> tiles = run(p, o, true, &s_tiles);
  AttentionOptions stored = o;
  stored.cap_k = p.length() + 1;
  const std::vector<acc_t<T>> blocks = run(p, stored, true, &s_stored);
  EXPECT_TRUE(stats_equal(s_stored, s_tiles));
  const double tol = tolerance_of(p);
  for (std::size_t i = 0; i < tiles.size(); ++i)
    ASSERT_LE(std::abs(double(tiles[i]) - double(blocks[i])), 2 * tol) << "element " << i;
  AttentionOptions other = o;
  other.threads = 3 - c.threads;
  const std::vector<acc_t<T>> again = run(p, other, true, nullptr);
  ASSERT_EQ(0, std::memcmp(tiles.data(), again.data(), tiles.size() * sizeof(acc_t<T>)))
      << "results depend on the thread count";
  // The other way of walks 2 and 3 (recomputing the score tiles where this run reads them back,
  // or the reverse) gives the same bits.
  AttentionOptions flipped = o;
  flipped.post_score_tile_bytes =
      o.post_score_tile_bytes == 0 ? AttentionOptions{}.post_score_tile_bytes : 0;
  const std::vector<acc_t<T>> flip = run(p, flipped, true, nullptr);
  ASSERT_EQ(0, std::memcmp(tiles.data(), flip.data(), tiles.size() * sizeof(acc_t<T>)))
      << "results depend on post_score_tile_bytes";
}

Case draw(int i) {
  std::mt19937_64 r(0x9057ull * 1000003ull + std::uint64_t(i));
  auto pick = [&](auto... xs) {
    const std::vector<std::common_type_t<decltype(xs)...>> v{xs...};
    return v[std::size_t(r() % v.size())];
  };
  Case c;
  c.seed = r();
  c.Hkv = pick(Index(1), Index(2), Index(3));
  c.G = pick(Index(1), Index(2), Index(3), Index(4), Index(8), Index(64));
  c.d = pick(Index(1), Index(5), Index(8), Index(17), Index(32));
  c.P = pick(Index(0), Index(0), Index(1), Index(63), Index(100));
  const Index budget = std::max<Index>(1, Index(2e5 / double(c.Hkv * c.G * c.d * (c.P + 150))));
  c.T = std::max<Index>(1, std::min<Index>(1 + Index(r() % 200), budget));
  c.layout = r() % 2 ? Layout::kTokenMajor : Layout::kHeadMajor;
  c.bias = int(r() % 3);
  c.vmc = r() % 3 ? VmcMode::kOn : VmcMode::kOff;
  c.empty = r() % 2 ? EmptyRowPolicy::kKeepMax : EmptyRowPolicy::kMeanV;
  c.vsum = r() % 2;
  c.threads = 1 + int(r() % 2);
  c.p_empty = pick(0.0, 0.1, 0.5, 1.0);
  c.p_neg_inf = pick(0.0, 0.05, 0.3, 1.0);
  return c;
}

TT_POST_TEST(RandomCasesMatchOracleAndStoredPath) {
  for (int i = 0; i < 60; ++i) {
    const Case c = draw(i);
    const Dtype dt = kAllDtypes[std::size_t(i) % 4];
    dispatch(dt, [&](auto tag) { run_case<typename decltype(tag)::type>(c); });
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "case " << i << " (" << to_string(dt) << ")";
      return;
    }
  }
}

template <class T>
void special_thresholds(bool prefill_call) {
  for (int bias : {0, 1, 2})
    for (VmcMode vmc : {VmcMode::kOff, VmcMode::kOn})
      for (EmptyRowPolicy er : {EmptyRowPolicy::kKeepMax, EmptyRowPolicy::kMeanV})
        for (int variant = 0; variant < 6; ++variant) {
          Case c;
          c.T = prefill_call ? 37 : 1;
          c.P = prefill_call ? 20 : 300;
          c.Hkv = 2;
          c.G = 3;
          c.d = 12;
          c.bias = bias;
          c.vmc = vmc;
          c.empty = er;
          c.seed = std::uint64_t(100 + 7 * bias + variant);
          Problem<T> p = problem_of<T>(c);
          const double thetas[6] = {-std::numeric_limits<double>::infinity(), -0.5, 0.0, 2.0,
                                    0.0, 0.01};
          const ThresholdTable table =
              constant_table(p.spec.Hq, 4, thetas[variant], /*dense=*/variant == 4);
          SCOPED_TRACE(c.describe() + " theta variant " + std::to_string(variant));
          check_oracle(p, post_options(c, &table), prefill_call);
          if (::testing::Test::HasFailure()) return;
        }
}

TT_POST_TEST(ThresholdsKeepingEverythingOrNothingPrefill) {
  special_thresholds<float>(true);
  special_thresholds<Eigen::half>(true);
  special_thresholds<double>(true);
}

TT_POST_TEST(ThresholdsKeepingEverythingOrNothingDecode) {
  special_thresholds<float>(false);
  special_thresholds<Eigen::bfloat16>(false);
  special_thresholds<double>(false);
}

/// A score-tile budget between "nothing" and "the whole block": the walk takes fewer query rows
/// per block so that their tiles fit (kernels/prefill.hpp); the outputs match the oracle and
/// the whole-block walks (to rounding: the block size may change the order of the V sums), and
/// the workspace grows with the budget.
TT_POST_TEST(ScoreTileBudgetBetweenNoneAndAll) {
  Case c;
  c.T = 40;
  c.P = 1000;  // long rows: the kept tiles outweigh the smaller per-block buffers
  c.Hkv = 2;
  c.G = 8;
  c.d = 24;
  c.bias = 1;
  c.vsum = true;
  Problem<float> p = problem_of<float>(c);
  Rng rng(c.seed ^ 0x7ab1eull);
  ThetaPlan plan;
  plan.target_hi = 24;
  const ThresholdTable table = make_margin_table(p, Placement::kPostSoftmax, 4, plan, rng);
  AttentionOptions o = post_options(c, &table);
  const auto args = p.args();
  o.post_score_tile_bytes = AttentionOptions{}.post_score_tile_bytes;
  const std::size_t ws_all = workspace_size(args, o);
  o.post_score_tile_bytes = 0;
  const std::size_t ws_none = workspace_size(args, o);
  // Two rows of a block's G = 8 heads: 16 score rows of L + 64 keys.
  o.post_score_tile_bytes = std::size_t(p.length() + 64) * 2 * std::size_t(c.G) * sizeof(float);
  const std::size_t ws_some = workspace_size(args, o);
  EXPECT_LT(ws_none, ws_some);
  EXPECT_LT(ws_some, ws_all);
  check_oracle(p, o, true);
  // Smaller blocks against the whole-block walks (recomputing or reading back).
  const std::vector<float> some = run(p, o, true, nullptr);
  const double tol = tolerance_of(p);
  for (std::size_t budget : {std::size_t(0), AttentionOptions{}.post_score_tile_bytes}) {
    AttentionOptions other = o;
    other.post_score_tile_bytes = budget;
    const std::vector<float> r = run(p, other, true, nullptr);
    for (std::size_t i = 0; i < r.size(); ++i)
      ASSERT_LE(std::abs(double(some[i]) - double(r[i])), 2 * tol)
          << "budget " << budget << ", element " << i;
  }
}

/// A decode whose every head keeps every key (dense heads) runs the dense single pass: the
/// output agrees with dense attention, the statistics are those of thresholded rows.
TT_POST_TEST(DecodeKeepingEveryKeyMatchesDense) {
  for (int bias : {0, 1}) {
    Case c;
    c.P = 700;
    c.Hkv = 2;
    c.G = 4;
    c.d = 40;
    c.bias = bias;
    c.vmc = VmcMode::kOn;
    Problem<float> p = problem_of<float>(c);
    const ThresholdTable table = constant_table(p.spec.Hq, 16, 0.0, /*dense=*/true);
    check_oracle(p, post_options(c, &table), false);
    AttentionStats s;
    const std::vector<float> fallback = run(p, post_options(c, &table), false, &s);
    EXPECT_EQ(s.thresholded_rows, std::uint64_t(p.spec.Hq));
    EXPECT_EQ(s.elements_kept, std::uint64_t(p.spec.Hq * p.length()));
    AttentionOptions dense;
    const std::vector<float> want = run(p, dense, false, nullptr);
    const double tol = tolerance_of(p);
    for (std::size_t i = 0; i < want.size(); ++i)
      ASSERT_LE(std::abs(double(fallback[i]) - double(want[i])), 2 * tol) << "element " << i;
  }
}

/// NaN / Inf in the K and V rows of keys that every row masks never reach the output (the V rows
/// only where no V mean covers them: the running sum is given and they precede the new tokens).
template <class T>
void masked_nonfinite(const Case& c) {
  using Acc = acc_t<T>;
  SCOPED_TRACE(c.describe());
  Problem<T> p = problem_of<T>(c);
  Rng rng(c.seed ^ 0x7ab1eull);
  ThetaPlan plan;
  plan.target_hi = 24;
  const ThresholdTable table = make_margin_table(p, Placement::kPostSoftmax, 4, plan, rng);
  const AttentionOptions o = post_options(c, &table);
  const std::vector<Acc> clean = run(p, o, true, nullptr);
  std::set<Index> masked;
  for (Index j = 0; j < p.length(); ++j) {
    bool all = true;
    for (Index t = 0; t < c.T && all; ++t)
      all = p.bias[std::size_t(t * p.bias_stride + j)] == kNegInf;
    if (all) masked.insert(j);
  }
  ASSERT_FALSE(masked.empty());
  const float bad[3] = {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity(), kNegInf};
  int which = 0;
  for (Index j : masked)
    for (Index g = 0; g < c.Hkv; ++g) {
      for (Index i = 0; i < c.d; ++i) p.k.view(j, g, i) = T(bad[which++ % 3]);
      if (j < c.P)
        for (Index i = 0; i < c.d; ++i) p.v.view(j, g, i) = T(bad[which++ % 3]);
    }
  const std::vector<Acc> injected = run(p, o, true, nullptr);
  for (std::size_t i = 0; i < clean.size(); ++i)
    ASSERT_EQ(0, std::memcmp(&clean[i], &injected[i], sizeof(Acc)))
        << "element " << i << ": " << clean[i] << " -> " << injected[i];
}

TT_POST_TEST(NonfiniteInMaskedKeysNeverReachesOutputs) {
  for (int i = 0; i < 8; ++i) {
    Case c;
    c.T = 40 + 9 * i;
    c.P = 70;
    c.Hkv = 2;
    c.G = 1 + i % 4;
    c.d = 9 + 4 * i;
    c.bias = 1;
    c.vmc = i % 2 ? VmcMode::kOn : VmcMode::kOff;
    c.empty = i % 4 < 2 ? EmptyRowPolicy::kKeepMax : EmptyRowPolicy::kMeanV;
    c.vsum = true;
    c.p_neg_inf = i < 4 ? 0.3 : 0.0;  // thresholds below 0 keep masked keys (weight 0)
    c.seed = std::uint64_t(5000 + i);
    masked_nonfinite<float>(c);
    masked_nonfinite<Eigen::half>(c);
    if (::testing::Test::HasFailure()) return;
  }
}

/// Thresholds calibrated (post-softmax, one row per length) on the same call keep exactly k keys
/// per row: theta is one of the row's own p_j, so only a bit-identical p_j keeps exactly the k
/// larger ones.
template <class T>
void calibrated_rows_keep_k(Index Tn, Index P, Index Hkv, Index G, Index d, std::uint64_t seed) {
  const Index k = 8;
  ProblemSpec sp;
  sp.T = Tn;
  sp.P = P;
  sp.Hq = Hkv * G;
  sp.Hkv = Hkv;
  sp.d = d;
  sp.q_sigma = 1.5;
  sp.seed = seed;
  Problem<T> p = make_problem<T>(sp);
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = sp.Hq;
  co.default_k = k;
  co.placement = Placement::kPostSoftmax;
  co.tac = TacMode::kOn;
  co.lambda = 0.1;
  Calibrator cal(co);
  AttentionOptions o;
  o.mode = AttentionMode::kCalibrate;
  o.calibrator = &cal;
  const auto args = p.args();
  ASSERT_TRUE(prefill(args, o).ok());
  const ThresholdTable table = cal.finalize();
  for (int threads : {1, 2}) {
    AttentionOptions t;
    t.mode = AttentionMode::kTopTheta;
    t.placement = Placement::kPostSoftmax;
    t.thresholds = &table;
    t.threads = threads;
    t.post_score_tile_bytes = TT_POST_SCORE_TILE_BYTES;
    AttentionStats st;
    t.stats = &st;
    ASSERT_TRUE(prefill(args, t).ok());
    const Index rows_thr = Tn - std::max<Index>(0, k - P);  // rows with L_t > k
    EXPECT_EQ(st.empty_rows, 0u);
    EXPECT_EQ(st.thresholded_rows, std::uint64_t(sp.Hq * rows_thr));
    EXPECT_EQ(st.elements_kept_thresholded, std::uint64_t(k) * st.thresholded_rows)
        << "T=" << Tn << " P=" << P << " G=" << G << " d=" << d << " threads=" << threads;
  }
}

TT_POST_TEST(CalibratedThresholdsKeepExactlyK) {
  calibrated_rows_keep_k<float>(70, 20, 2, 3, 64, 71);
  calibrated_rows_keep_k<float>(33, 150, 1, 8, 17, 72);
  calibrated_rows_keep_k<Eigen::half>(90, 0, 2, 4, 40, 73);
  calibrated_rows_keep_k<Eigen::bfloat16>(30, 20, 4, 2, 64, 74);
  calibrated_rows_keep_k<double>(40, 5, 1, 2, 24, 75);
}

}  // namespace
