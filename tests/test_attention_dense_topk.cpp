// Dense and top-k attention (decode and prefill) against the double-precision oracle
// (reference/attention.hpp) over the foundation grid:
//   L in {1, 2, 3, 17, 64, 255, 1024}, d in {8, 64, 128},
//   (Hq, Hkv) in {(1,1), (4,1), (8,4), (32,8)}, k in {1, 4, 64, >= L},
//   storage f32 / f64 / f16 / bf16, token-major and head-major caches with padding.
// Every L x d x heads combination runs once; k, storage type, layout (and the prefill shape)
// cycle over the combinations so that every value of every axis appears many times while the
// suite stays fast (the oracle is O(T L Hq d)).
//
// Dense cases use continuous N(0,1) data and the default scale 1/sqrt(d). Top-k cases use
// discrete data with a power-of-two scale: scores are then exact in float, so kernel and oracle
// select the same keys even with (frequent, exact) ties, which must go to the lower index.
// Tolerances: tests/test_util.hpp (derivation next to output_tolerance).

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


struct GridCase {
  Index L = 1, d = 8, Hq = 1, Hkv = 1;
  Index k = 1;
  Dtype dtype = Dtype::kF32;
  Layout layout = Layout::kTokenMajor;
  Index T = 1;  // prefill: new tokens (decode: 1)
  std::uint64_t seed = 1;
};

std::string case_name(const GridCase& c) {
  return "L" + std::to_string(c.L) + "_d" + std::to_string(c.d) + "_Hq" + std::to_string(c.Hq) +
         "_Hkv" + std::to_string(c.Hkv) + "_k" + std::to_string(c.k) + "_T" + std::to_string(c.T) +
         "_" + to_string(c.dtype) + "_" + to_string(c.layout);
}

// k in {1, 4, 64, >= L} cycled; ">= L" alternates between L and L + 3.
Index k_value(int which, Index L, int i) {
  switch (which % 4) {
    case 0:
      return 1;
    case 1:
      return 4;
    case 2:
      return 64;
    default:
      return (i % 2) ? L : L + 3;
  }
}

// Prefill size: as many new tokens as a budget of oracle work allows (T * L * Hq * d); every
// third case with P = 0 when T reaches L, else some earlier tokens.
Index prefill_tokens(Index L, Index Hq, Index d, int i) {
  const double budget = 12e6;
  Index T = Index(budget / double(std::max<Index>(L * Hq * d, 1)));
  T = std::clamp<Index>(T, 1, L);
  if (T == L && i % 3 != 0 && L > 1) T = std::max<Index>(1, L - 1 - (L / 3));  // P > 0
  return T;
}

std::vector<GridCase> make_grid(bool prefill) {
  std::vector<GridCase> g;
  int i = 0;
  for (Index L : kLs)
    for (Index d : kDs)
      for (const auto& hk : kHeads) {
        GridCase c;
        c.L = L;
        c.d = d;
        c.Hq = hk[0];
        c.Hkv = hk[1];
        c.k = k_value(i + (prefill ? 1 : 0), L, i / 4);
        c.dtype = kAllDtypes[(i + (prefill ? 2 : 0)) % 4];
        c.layout = ((i / 4) % 2 == (prefill ? 1 : 0)) ? Layout::kTokenMajor : Layout::kHeadMajor;
        c.T = prefill ? prefill_tokens(L, c.Hq, d, i) : 1;
        c.seed = 1000 + std::uint64_t(i) + (prefill ? 500 : 0);
        g.push_back(c);
        ++i;
      }
  return g;
}

template <class T>
void check_call(Problem<T>& p, const AttentionOptions& opt_in, bool prefill_call,
                const std::string& what) {
  SCOPED_TRACE(what + " " + p.spec.name());
  AttentionStats stats;
  stats.enable_per_head(p.spec.Hq);
  AttentionOptions opt = opt_in;
  opt.stats = &stats;
  const auto args = p.args();
  WorkspaceBuffer ws(workspace_size(args, opt));
  p.clear_out();
  const Status st = prefill_call ? prefill(args, opt, ws.get()) : decode(args, opt, ws.get());
  ASSERT_TRUE(st.ok()) << st.to_string();
  reference::ReferenceOptions ro;
  ro.prefill_call = prefill_call;
  const reference::Result ref = reference::attention(args, opt, ro);
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  EXPECT_TRUE(outputs_close(ref, p.out.view, problem_tolerance(p)));
  EXPECT_TRUE(stats_equal(ref.stats, stats));
  EXPECT_TRUE(p.out_padding_intact()) << "kernel wrote outside the output view";
}

template <class T>
void run_grid_case(const GridCase& c, bool prefill_call) {
  ProblemSpec sp;
  sp.T = c.T;
  sp.P = c.L - c.T;
  sp.Hq = c.Hq;
  sp.Hkv = c.Hkv;
  sp.d = c.d;
  sp.layout = c.layout;
  sp.seed = c.seed;
  {  // dense: continuous data, default scale
    Problem<T> p = make_problem<T>(sp);
    AttentionOptions opt;
    opt.mode = AttentionMode::kDense;
    opt.k = c.k;  // only feeds the elements_topk statistic
    check_call(p, opt, prefill_call, "dense");
  }
  {  // top-k: discrete data, power-of-two scale (default 1/8 for d = 64)
    sp.discrete = true;
    sp.scale = c.d == 64 ? 0.0 : pow2_scale(c.d);
    sp.seed += 77;
    Problem<T> p = make_problem<T>(sp);
    AttentionOptions opt;
    opt.mode = AttentionMode::kTopK;
    opt.k = c.k;
    check_call(p, opt, prefill_call, "topk k=" + std::to_string(c.k));
  }
}

class DenseTopkDecodeGrid : public ::testing::TestWithParam<GridCase> {};
TEST_P(DenseTopkDecodeGrid, MatchesOracle) {
  const GridCase c = GetParam();
  dispatch(c.dtype, [&](auto tag) { run_grid_case<typename decltype(tag)::type>(c, false); });
}
INSTANTIATE_TEST_SUITE_P(Grid, DenseTopkDecodeGrid, ::testing::ValuesIn(make_grid(false)),
                         [](const auto& info) { return case_name(info.param); });

class DenseTopkPrefillGrid : public ::testing::TestWithParam<GridCase> {};
TEST_P(DenseTopkPrefillGrid, MatchesOracle) {
  const GridCase c = GetParam();
  dispatch(c.dtype, [&](auto tag) { run_grid_case<typename decltype(tag)::type>(c, true); });
}
INSTANTIATE_TEST_SUITE_P(Grid, DenseTopkPrefillGrid, ::testing::ValuesIn(make_grid(true)),
                         [](const auto& info) { return case_name(info.param); });

// The grid covers every value of every axis (guards the sampling scheme above).
TEST(DenseTopkGridCoverage, EveryAxisValueAppears) {
  for (bool pre : {false, true}) {
    const auto g = make_grid(pre);
    for (Index k_which = 0; k_which < 4; ++k_which) {
      bool found = false;
      for (const auto& c : g)
        found = found || (k_which == 0   ? c.k == 1
                          : k_which == 1 ? c.k == 4
                          : k_which == 2 ? c.k == 64
                                         : c.k >= c.L);
      EXPECT_TRUE(found) << "k class " << k_which;
    }
    for (Dtype dt : kAllDtypes) {
      bool found = false;
      for (const auto& c : g) found = found || c.dtype == dt;
      EXPECT_TRUE(found) << to_string(dt);
    }
    for (Layout l : {Layout::kTokenMajor, Layout::kHeadMajor}) {
      bool found = false;
      for (const auto& c : g) found = found || c.layout == l;
      EXPECT_TRUE(found);
    }
    EXPECT_EQ(g.size(), 7u * 3u * 4u);
    if (pre) {
      bool p0 = false, pp = false, t_big = false;
      for (const auto& c : g) {
        p0 = p0 || (c.T == c.L && c.L > 64);
        pp = pp || (c.T < c.L && c.T > 1);
        t_big = t_big || c.T > 128;
      }
      EXPECT_TRUE(p0 && pp && t_big);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Prefill equals the sequence of decodes (each decode over the cache prefix, via KvCache).
// ---------------------------------------------------------------------------------------------

template <class T>
void prefill_vs_decodes(AttentionMode mode, Index P, Index Tn, Index Hq, Index Hkv, Index d,
                        Index k, Layout layout, std::uint64_t seed) {
  using Acc = acc_t<T>;
  ProblemSpec sp;
  sp.T = Tn;
  sp.P = P;
  sp.Hq = Hq;
  sp.Hkv = Hkv;
  sp.d = d;
  sp.layout = layout;
  sp.seed = seed;
  sp.discrete = mode != AttentionMode::kDense;
  sp.scale = sp.discrete ? pow2_scale(d) : 0.0;
  Problem<T> p = make_problem<T>(sp);
  AttentionOptions opt;
  opt.mode = mode;
  opt.k = k;
  AttentionStats pre_stats, dec_stats;
  opt.stats = &pre_stats;
  ASSERT_TRUE(prefill(p.args(), opt).ok());

  KvCacheOptions co;
  co.num_kv_heads = Hkv;
  co.head_dim = d;
  co.capacity = P + Tn;
  co.layout = layout == Layout::kTokenMajor ? KvLayout::kTokenMajor : KvLayout::kHeadMajor;
  KvCache<T> cache(co);
  if (P > 0) {
    ASSERT_TRUE(cache.append(p.k.cview().slice_tokens(0, P), p.v.cview().slice_tokens(0, P)).ok());
  }
  HeadsBuffer<Acc> out2 = make_heads<Acc>(Tn, Hq, d, Layout::kTokenMajor, Acc(0));
  opt.stats = &dec_stats;
  for (Index t = 0; t < Tn; ++t) {
    ASSERT_TRUE(
        cache.append(p.k.cview().slice_tokens(P + t, 1), p.v.cview().slice_tokens(P + t, 1)).ok());
    AttentionArgs<T> a;
    a.q = p.q.cview().slice_tokens(t, 1);
    a.k = cache.keys();
    a.v = cache.values();
    a.out = out2.view.slice_tokens(t, 1);
    a.v_sum = cache.v_sum();
    a.scale = sp.scale;
    const Status st = decode(a, opt);
    ASSERT_TRUE(st.ok()) << st.to_string();
  }
  EXPECT_TRUE(views_close(p.out.view, out2.view, 2 * problem_tolerance(p)))
      << "mode " << to_string(mode) << " " << sp.name();
  EXPECT_TRUE(stats_equal(pre_stats, dec_stats));
}

TEST(DenseTopkPrefillVsDecodes, DenseFloatTokenMajor) {
  prefill_vs_decodes<float>(AttentionMode::kDense, 0, 70, 4, 1, 64, 4, Layout::kTokenMajor, 11);
}
TEST(DenseTopkPrefillVsDecodes, TopkHalfHeadMajor) {
  prefill_vs_decodes<Eigen::half>(AttentionMode::kTopK, 13, 80, 8, 4, 8, 4, Layout::kHeadMajor, 12);
}
TEST(DenseTopkPrefillVsDecodes, TopkBfloat16TokenMajor) {
  prefill_vs_decodes<Eigen::bfloat16>(AttentionMode::kTopK, 100, 30, 4, 1, 128, 17,
                                      Layout::kTokenMajor, 13);
}
TEST(DenseTopkPrefillVsDecodes, DenseDoubleHeadMajor) {
  prefill_vs_decodes<double>(AttentionMode::kDense, 5, 140, 8, 4, 8, 1, Layout::kHeadMajor, 14);
}
TEST(DenseTopkPrefillVsDecodes, TopkFloatManyBlocks) {
  prefill_vs_decodes<float>(AttentionMode::kTopK, 0, 200, 1, 1, 8, 64, Layout::kHeadMajor, 15);
}

// ---------------------------------------------------------------------------------------------
// Edge cases.
// ---------------------------------------------------------------------------------------------

template <class T>
class DenseTopkEdge : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(DenseTopkEdge, StorageTypes);

template <class T>
Problem<T> edge_problem(Index Tn, Index P, Index Hq, Index Hkv, Index d, bool discrete,
                        std::uint64_t seed, Layout layout = Layout::kTokenMajor) {
  ProblemSpec sp;
  sp.T = Tn;
  sp.P = P;
  sp.Hq = Hq;
  sp.Hkv = Hkv;
  sp.d = d;
  sp.layout = layout;
  sp.discrete = discrete;
  sp.scale = discrete ? pow2_scale(d) : 0.0;
  sp.seed = seed;
  return make_problem<T>(sp);
}

AttentionOptions mode_options(AttentionMode m, Index k) {
  AttentionOptions o;
  o.mode = m;
  o.k = k;
  return o;
}

TYPED_TEST(DenseTopkEdge, LengthOneReturnsTheOnlyValueRow) {
  using T = TypeParam;
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    auto p = edge_problem<T>(1, 0, 4, 1, 8, false, 21);
    check_call(p, mode_options(m, 1), false, "decode L=1");
    for (Index h = 0; h < 4; ++h)
      for (Index i = 0; i < 8; ++i)
        EXPECT_EQ(double(p.out.view(0, h, i)), reference::to_double(p.v.view(0, 0, i)));
    auto p2 = edge_problem<T>(1, 0, 4, 1, 8, false, 22, Layout::kHeadMajor);
    check_call(p2, mode_options(m, 1), true, "prefill L=1");
  }
}

TYPED_TEST(DenseTopkEdge, AllEqualScoresTiesGoToTheLowerIndex) {
  using T = TypeParam;
  using Acc = acc_t<T>;
  // q = 0: every score is 0. Top-k keeps keys 0..k-1, so out = mean(v_0..v_{k-1}).
  for (Index k : {1, 4, 16}) {
    auto p = edge_problem<T>(1, 39, 8, 4, 64, true, 23);
    fill_view(p.q, [](Index, Index, Index) { return 0.0; });
    check_call(p, mode_options(AttentionMode::kTopK, k), false, "all equal decode");
    for (Index h = 0; h < 8; ++h)
      for (Index i = 0; i < 64; ++i) {
        double m = 0;
        for (Index j = 0; j < k; ++j) m += reference::to_double(p.v.view(j, h / 2, i));
        m /= double(k);
        EXPECT_NEAR(double(p.out.view(0, h, i)), m, 64 * unit_roundoff<T>() * (1 + std::abs(m)));
      }
    (void)sizeof(Acc);
    auto p2 = edge_problem<T>(30, 10, 4, 1, 8, true, 24, Layout::kHeadMajor);
    fill_view(p2.q, [](Index, Index, Index) { return 0.0; });
    check_call(p2, mode_options(AttentionMode::kTopK, k), true, "all equal prefill");
  }
  // Equal keys (not only equal scores): every key row identical.
  auto p3 = edge_problem<T>(5, 60, 4, 2, 8, true, 25);
  fill_view(p3.k, [](Index, Index, Index i) { return 0.25 * double(i % 3); });
  check_call(p3, mode_options(AttentionMode::kTopK, 4), true, "equal keys prefill");
}

TYPED_TEST(DenseTopkEdge, NegativeInfinityBiasMasksKeys) {
  using T = TypeParam;
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    auto p = edge_problem<T>(20, 40, 8, 4, 8, true, 26);
    Rng rng(27);
    std::bernoulli_distribution masked(0.4);
    // Exact bias values (multiples of 1/8) so that discrete scores stay exact.
    p.set_bias(
        [&](Index, Index j) {
          return masked(rng) ? -std::numeric_limits<float>::infinity()
                             : float(0.125 * double(j % 5));
        },
        true);
    check_call(p, mode_options(m, 4), true, std::string("masked prefill ") + to_string(m));
    auto pd = edge_problem<T>(1, 99, 4, 1, 64, true, 28);
    pd.set_bias(
        [&](Index, Index j) {
          return (j % 3 == 1) ? -std::numeric_limits<float>::infinity() : 0.0f;
        },
        true);
    check_call(pd, mode_options(m, 64), false, std::string("masked decode ") + to_string(m));
  }
}

// Fully masked rows (every key -inf): output 0, nothing kept, no V rows read, never "empty",
// and still "thresholded" when L_t > k_l (docs/semantics.md), which the stats comparison checks.
TYPED_TEST(DenseTopkEdge, FullyMaskedRowsOutputZero) {
  using T = TypeParam;
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    auto p = edge_problem<T>(12, 20, 8, 4, 8, true, 29);
    // Rows 3 and 7 fully masked; the others partially.
    p.set_bias(
        [&](Index t, Index j) {
          return (t == 3 || t == 7 || j % 4 == 0) ? -std::numeric_limits<float>::infinity() : 0.0f;
        },
        true);
    check_call(p, mode_options(m, 4), true, std::string("fully masked rows ") + to_string(m));
    for (Index t : {3, 7})
      for (Index h = 0; h < 8; ++h)
        for (Index i = 0; i < 8; ++i) EXPECT_EQ(double(p.out.view(t, h, i)), 0.0);
  }
}

TYPED_TEST(DenseTopkEdge, LogitsAroundTenThousand) {
  using T = TypeParam;
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    // (a) through the bias: s = exact small score +-1e4 (+ multiples of 1/2): exact in float.
    auto p = edge_problem<T>(9, 30, 4, 1, 64, true, 30);
    p.set_bias(
        [&](Index t, Index j) {
          return float(((j + t) % 3 == 0 ? 1e4 : -1e4) + 0.5 * double(j % 5));
        },
        true);
    p.score_err_override = 0.0;
    check_call(p, mode_options(m, 4), true, std::string("bias 1e4 ") + to_string(m));
    // (b) through the queries: q entries up to 1024 (exact in every type), logits ~ +-1e3..1e4.
    auto p2 = edge_problem<T>(1, 255, 8, 4, 64, true, 31, Layout::kHeadMajor);
    fill_view(p2.q, [&](Index t, Index h, Index i) {
      return 256.0 * double(int((t + h * 7 + i * 3) % 9) - 4);
    });
    p2.score_err_override = 0.0;
    check_call(p2, mode_options(m, 4), false, std::string("q 1e4 ") + to_string(m));
    // Large logits through continuous data (score error ~ u * 1e4, tolerance derived from it).
    auto p3 = edge_problem<T>(7, 20, 4, 2, 8, false, 32);
    p3.set_bias([&](Index t, Index j) { return float((t + j) % 2 ? -1e4 : 1e4); });
    check_call(p3, mode_options(AttentionMode::kDense, 4), true, "continuous bias 1e4 dense");
  }
}

TYPED_TEST(DenseTopkEdge, NaNKeysAreMasked) {
  using T = TypeParam;
  const T nan = quiet_nan<T>();
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    auto p = edge_problem<T>(10, 30, 8, 4, 8, true, 33);
    // One NaN element in some key rows of KV head 1 and in key 0 of every head.
    for (Index j = 0; j < 40; j += 3) p.k.view(j, 1, j % 8) = nan;
    for (Index g = 0; g < 4; ++g) p.k.view(0, g, 5) = nan;
    check_call(p, mode_options(m, 4), true, std::string("NaN keys prefill ") + to_string(m));
    for (Index t = 0; t < 10; ++t)
      for (Index h = 0; h < 8; ++h)
        for (Index i = 0; i < 8; ++i) EXPECT_TRUE(std::isfinite(double(p.out.view(t, h, i))));
    // Every key NaN: fully masked, output 0.
    auto pd = edge_problem<T>(1, 16, 4, 1, 8, true, 34);
    fill_view(pd.k, [](Index, Index, Index) { return std::numeric_limits<double>::quiet_NaN(); });
    check_call(pd, mode_options(m, 4), false, std::string("all-NaN keys decode ") + to_string(m));
    for (Index h = 0; h < 4; ++h)
      for (Index i = 0; i < 8; ++i) EXPECT_EQ(double(pd.out.view(0, h, i)), 0.0);
  }
}

// A caller-sized workspace larger than needed and an unaligned one both work.
TYPED_TEST(DenseTopkEdge, WorkspaceAnyAlignment) {
  using T = TypeParam;
  auto p = edge_problem<T>(1, 63, 8, 4, 64, true, 35);
  AttentionOptions opt = mode_options(AttentionMode::kTopK, 4);
  const auto args = p.args();
  const std::size_t need = workspace_size(args, opt);
  ASSERT_GT(need, 0u);
  WorkspaceBuffer ws(need + 64);
  for (std::size_t off : {0, 1, 3, 17}) {
    p.clear_out();
    ASSERT_TRUE(decode(args, opt, Workspace{ws.bytes.data() + off, need}).ok());
    const auto ref = reference::attention(args, opt);
    EXPECT_TRUE(outputs_close(ref, p.out.view, problem_tolerance(p))) << "offset " << off;
  }
}

}  // namespace
