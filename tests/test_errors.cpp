// Data-dependent errors come back as a non-ok Status (never an abort): shape and stride
// mismatches name both the offending and the required shape; bad option combinations (Top-theta
// without a table, placement mismatch, calibrated SDC without SDC terms, ...) and a workspace that
// is too small are rejected. A rejected call writes nothing.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/plan.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

Problem<float> base_problem(Index T = 3, Index P = 5) {
  ProblemSpec sp;
  sp.T = T;
  sp.P = P;
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 8;
  sp.seed = 1;
  return make_problem<float>(sp);
}

bool contains(const std::string& s, const std::string& sub) {
  return s.find(sub) != std::string::npos;
}

/// Runs both entry points (decode only when T == 1) and checks they fail with a message
/// containing every string in `needles`, without touching the output.
void expect_rejected(Problem<float>& p, const AttentionArgs<float>& args, const AttentionOptions& o,
                     std::initializer_list<std::string> needles, const char* what) {
  SCOPED_TRACE(what);
  p.clear_out();
  const Status s = prefill(args, o);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  for (const auto& n : needles)
    EXPECT_TRUE(contains(s.message(), n)) << "message '" << s.message() << "' lacks '" << n << "'";
  EXPECT_EQ(workspace_size(args, o), 0u);
  if (args.q.tokens == 1) {
    const Status d = decode(args, o);
    EXPECT_FALSE(d.ok());
  }
  // Nothing was written (out may be a wrong-shaped view; check the buffer of p).
  EXPECT_TRUE(p.out_padding_intact());
  for (Index t = 0; t < p.out.view.tokens; ++t)
    for (Index h = 0; h < p.out.view.heads; ++h)
      for (Index i = 0; i < p.out.view.dim; ++i) ASSERT_EQ(p.out.view(t, h, i), p.out_fill);
}

TEST(ErrorsShape, KeyDimMismatchNamesBothShapes) {
  auto p = base_problem();
  auto a = p.args();
  a.k.dim = 7;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.k), shape_string(8, 2, 8)}, "k dim");
}

TEST(ErrorsShape, ValueTokensMismatchNamesBothShapes) {
  auto p = base_problem();
  auto a = p.args();
  a.v.tokens = 7;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.v), shape_string(8, 2, 8)}, "v tokens");
}

TEST(ErrorsShape, ValueHeadsMismatchNamesBothShapes) {
  auto p = base_problem();
  auto a = p.args();
  a.v.heads = 1;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.v), shape_string(8, 2, 8)}, "v heads");
}

TEST(ErrorsShape, OutputShapeMismatchNamesBothShapes) {
  auto p = base_problem();
  auto a = p.args();
  a.out.heads = 2;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.out), shape_string(3, 4, 8)},
                  "out heads");
  a = p.args();
  a.out.tokens = 2;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.out), shape_string(3, 4, 8)},
                  "out tokens");
}

TEST(ErrorsShape, QueryHeadsNotAMultipleOfKvHeads) {
  auto p = base_problem();
  auto a = p.args();
  a.q.heads = 3;
  a.out.heads = 3;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.q), shape_string(a.k)}, "Hq % Hkv");
}

// The kernels keep per-head arrays of kMaxKvHeads / kMaxGqaGroup entries on the stack:
// validate() itself refuses more (it accepted them, and only decode / prefill refused), and the
// largest accepted shapes run.
TEST(ErrorsShape, HeadLimitsAreCheckedByValidate) {
  const struct {
    Index Hq, Hkv;
    bool ok;
  } cases[] = {{2 * kMaxGqaGroup, 1, false},
               {kMaxKvHeads + 1, kMaxKvHeads + 1, false},
               {kMaxGqaGroup, 1, true},
               {kMaxKvHeads, kMaxKvHeads, true}};
  for (const auto& c : cases) {
    ProblemSpec sp;
    sp.T = 1;
    sp.P = 3;
    sp.Hq = c.Hq;
    sp.Hkv = c.Hkv;
    sp.d = 8;
    sp.seed = 2;
    auto p = make_problem<float>(sp);
    const auto a = p.args();
    const std::string what = std::to_string(c.Hq) + " over " + std::to_string(c.Hkv);
    const Status v = validate(a, AttentionOptions{});
    if (c.ok) {
      EXPECT_TRUE(v.ok()) << what << ": " << v.to_string();
      EXPECT_TRUE(decode(a, AttentionOptions{}).ok()) << what;
      continue;
    }
    EXPECT_EQ(v.code(), StatusCode::kInvalidArgument) << what;
    EXPECT_TRUE(contains(
        v.message(),
        "at most 256 KV heads and 256 query heads per KV head, got q " + shape_string(a.q)))
        << v.message();
    expect_rejected(p, a, AttentionOptions{}, {shape_string(a.q), shape_string(a.k)}, what.c_str());
  }
}

TEST(ErrorsShape, FewerKeysThanQueries) {
  auto p = base_problem(3, 5);
  auto a = p.args();
  a.k.tokens = 2;
  a.v.tokens = 2;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(a.k), shape_string(a.q)}, "L < T");
}

TEST(ErrorsShape, BiasShapeMismatchNamesBothShapes) {
  auto p = base_problem();
  p.set_bias([](Index, Index) { return 0.0f; });
  auto a = p.args();
  a.bias.cols = 5;  // < L = 8
  expect_rejected(p, a, AttentionOptions{}, {shape_string(3, 5), shape_string(3, 8)}, "bias cols");
  a = p.args();
  a.bias.rows = 2;
  expect_rejected(p, a, AttentionOptions{}, {shape_string(2, 8), shape_string(3, 8)}, "bias rows");
}

TEST(ErrorsShape, OverlappingStridesAndMissingData) {
  auto p = base_problem();
  auto a = p.args();
  a.k.token_stride = 4;  // < d, and head_stride < d as well
  a.k.head_stride = 4;
  expect_rejected(p, a, AttentionOptions{}, {"overlapping"}, "overlapping k");
  a = p.args();
  a.v.data = nullptr;
  expect_rejected(p, a, AttentionOptions{}, {"v"}, "null v");
  a = p.args();
  a.k.token_stride = -3;
  expect_rejected(p, a, AttentionOptions{}, {"negative"}, "negative stride");
}

TEST(ErrorsShape, DecodeTakesOneToken) {
  auto p = base_problem(3, 5);
  const Status s = decode(p.args(), AttentionOptions{});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), shape_string(p.args().q))) << s.message();
  // A 2-token q with a 1-token out is a decode mistake, not an output-shape mistake.
  auto p2 = base_problem(2, 5);
  auto a = p2.args();
  a.out.tokens = 1;
  const Status s2 = decode(a, AttentionOptions{});
  EXPECT_FALSE(s2.ok());
  EXPECT_TRUE(contains(s2.message(), "decode takes one query token")) << s2.message();
  EXPECT_TRUE(contains(s2.message(), "q has shape")) << s2.message();
}

// A wrong q is reported as q (the views that agree fix head_dim), not as out.
TEST(ErrorsShape, WrongQueryIsNamedAsQuery) {
  auto p = base_problem();
  auto a = p.args();
  a.q.dim = 6;
  expect_rejected(p, a, AttentionOptions{}, {"q has shape", shape_string(a.q), shape_string(3, 4, 8)},
                  "q dim");
  // k is the odd one out: named as k with the head_dim the others agree on.
  a = p.args();
  a.k.dim = 6;
  expect_rejected(p, a, AttentionOptions{}, {"k has shape", shape_string(8, 2, 8)}, "k dim");
  // A 2-2 split (k and v against q and out): no view is the odd one out, so the error gives
  // all four shapes (it used to name q, with the cache's head_dim as "of k, v, out").
  a = p.args();
  a.k.dim = 4;
  a.v.dim = 4;
  expect_rejected(p, a, AttentionOptions{},
                  {"q, k, v and out disagree on head_dim", "q has shape " + shape_string(a.q),
                   "k " + shape_string(a.k), "v " + shape_string(a.v), "out " + shape_string(a.out)},
                  "k and v dim");
  // out differs from q: named as out, with q's shape beside it.
  a = p.args();
  a.out.heads = 8;
  expect_rejected(p, a, AttentionOptions{}, {"out has shape", shape_string(a.q)}, "out heads");
}

TEST(ErrorsShape, InconsistentStrides) {
  auto p = base_problem();
  // Head-major cache whose capacity (head_stride / d) is smaller than its tokens: heads overlap.
  auto a = p.args();
  a.k = HeadsView<const float>::head_major(a.k.data, a.k.tokens, a.k.heads, a.k.dim, 5);
  expect_rejected(p, a, AttentionOptions{}, {"k has overlapping rows", "head_stride 40"},
                  "head-major capacity < tokens");
  // Token-major with a token stride that does not cover the heads.
  a = p.args();
  a.v.token_stride = a.v.head_stride;  // = dim + pad, < Hkv * head_stride
  expect_rejected(p, a, AttentionOptions{}, {"v has overlapping rows"}, "token stride too small");
  // Every head in the same place.
  a = p.args();
  a.q.head_stride = 0;
  expect_rejected(p, a, AttentionOptions{}, {"q has overlapping rows"}, "head stride 0");
  // A stride of a size-1 extent is never used and may be anything non-negative.
  auto p1 = base_problem(1, 5);
  a = p1.args();
  a.q.token_stride = 0;
  a.out.token_stride = 0;
  EXPECT_TRUE(prefill(a, AttentionOptions{}).ok());
}

TEST(ErrorsShape, OutputAliasingAnInputIsRejected) {
  auto p = base_problem(1, 5);
  auto a = p.args();
  // out pointing into the V cache.
  std::vector<float> kv(std::size_t(6 * 2 * 8 + 64), 0.5f);
  a.k = HeadsView<const float>::token_major(kv.data(), 6, 2, 8);
  a.v = HeadsView<const float>::token_major(kv.data(), 6, 2, 8);  // k == v is allowed (read-only)
  EXPECT_TRUE(decode(a, AttentionOptions{}).ok());
  auto b = a;
  b.out = HeadsView<float>::token_major(kv.data() + 8, 1, 4, 8);
  const Status s = decode(b, AttentionOptions{});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), "out overlaps k")) << s.message();
  std::vector<float> qbuf(64, 0.25f);
  b = a;
  b.q = HeadsView<const float>::token_major(qbuf.data(), 1, 4, 8);
  b.out = HeadsView<float>::token_major(qbuf.data() + 16, 1, 4, 8);
  const Status s2 = decode(b, AttentionOptions{});
  EXPECT_TRUE(contains(s2.message(), "out overlaps q")) << s2.message();
}

TEST(ErrorsShape, RunningSumAndBiasStrides) {
  auto p = base_problem();
  p.set_vsum(true);
  auto a = p.args();
  a.v_sum_stride = -1;
  expect_rejected(p, a, AttentionOptions{}, {"v_sum_stride"}, "negative v_sum stride");
  a.v_sum_stride = 4;  // < d with 2 KV heads: the heads' sums overlap
  expect_rejected(p, a, AttentionOptions{}, {"v_sum_stride 4"}, "short v_sum stride");
  // Strides whose extent overflows an Index: validate() passed them (the extent overflowed to a
  // small value in the aliasing check) and decode read v_sum out of bounds.
  const Index huge = std::numeric_limits<Index>::max() - 8;
  a.v_sum_stride = huge;
  expect_rejected(p, a, AttentionOptions{},
                  {"v_sum_stride " + std::to_string(huge) + " x 1 KV heads spans more memory"},
                  "v_sum stride beyond an index");
  p.set_bias([](Index, Index) { return 0.0f; });
  a = p.args();
  a.bias.row_stride = 3;
  expect_rejected(p, a, AttentionOptions{}, {"bias row_stride 3"}, "bias stride");
  a.bias.row_stride = huge;  // 3 rows: 2 x row_stride overflows
  expect_rejected(p, a, AttentionOptions{},
                  {"bias row_stride " + std::to_string(huge) + " x 2 rows spans more memory"},
                  "bias stride beyond an index");
  a = p.args();
  a.bias.data = nullptr;
  expect_rejected(p, a, AttentionOptions{}, {"bias", "no data"}, "bias without data");
}

TEST(ErrorsShape, EmptyQuery) {
  auto p = base_problem();
  auto a = p.args();
  a.q.tokens = 0;
  a.out.tokens = 0;
  EXPECT_FALSE(prefill(a, AttentionOptions{}).ok());
}

TEST(ErrorsOptions, BadScalars) {
  auto p = base_problem();
  auto a = p.args();
  for (double sc :
       {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    a.scale = sc;
    expect_rejected(p, a, AttentionOptions{}, {"scale"}, "scale");
  }
  a = p.args();
  AttentionOptions o;
  o.cap_k = -1;
  expect_rejected(p, a, o, {"cap_k"}, "cap_k");
  o = AttentionOptions{};
  o.sdc_scale = -0.5;
  expect_rejected(p, a, o, {"sdc_scale"}, "sdc_scale");
  o.sdc_scale = std::numeric_limits<double>::quiet_NaN();
  expect_rejected(p, a, o, {"sdc_scale"}, "sdc_scale NaN");
  o = AttentionOptions{};
  o.mode = AttentionMode::kTopK;
  o.k = 0;
  expect_rejected(p, a, o, {"k"}, "top-k k = 0");
}

TEST(ErrorsOptions, TopKWithCalibratedSdcIsRejected) {
  auto p = base_problem();
  AttentionOptions o;
  o.mode = AttentionMode::kTopK;
  o.sdc = SdcMode::kCalibrated;
  expect_rejected(p, p.args(), o, {"calibrated"}, "top-k calibrated SDC");
}

TEST(ErrorsOptions, TopThetaWithoutTable) {
  auto p = base_problem();
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  expect_rejected(p, p.args(), o, {"table"}, "no table");
}

TEST(ErrorsOptions, TopThetaPlacementMismatch) {
  auto p = base_problem();
  ThresholdTable t(1, 4, 2);
  for (Index h = 0; h < 4; ++h) ASSERT_TRUE(t.set_dense(0, h).ok());  // complete, no thresholds
  t.metadata().placement = Placement::kPostSoftmax;
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.placement = Placement::kPreSoftmax;
  o.thresholds = &t;
  expect_rejected(p, p.args(), o, {"post", "pre"}, "placement mismatch");
  o.placement = Placement::kPostSoftmax;
  EXPECT_TRUE(prefill(p.args(), o).ok());
}

TEST(ErrorsOptions, TopThetaTableShapeMismatch) {
  auto p = base_problem();
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  ThresholdTable wrong_heads(1, 8, 2);
  o.thresholds = &wrong_heads;
  expect_rejected(p, p.args(), o, {shape_string(1, 8)}, "table heads");
  ThresholdTable t(2, 4, 2);
  o.thresholds = &t;
  auto a = p.args();
  a.layer = 2;
  expect_rejected(p, a, o, {shape_string(2, 4), "layer 2"}, "table layer");
  a.layer = -1;
  expect_rejected(p, a, o, {"layer -1"}, "negative layer");
}

/// A (1 layer x 4 heads) table with budget `k` and the entry `e` (length 8, theta 0) for every
/// head.
ThresholdTable one_entry_table(Index k, const ThresholdEntry& e) {
  ThresholdTable t(1, 4, k);
  for (Index h = 0; h < 4; ++h) EXPECT_TRUE(t.set(0, h, e).ok());
  return t;
}

ThresholdEntry theta_zero_at_8() {
  ThresholdEntry e;
  e.length = 8;
  e.theta = 0.0;
  return e;
}

// A table whose layer budget is below 1 (constructed with default_k = 0; validate() rejects it)
// is rejected by the kernels too, rather than thresholding every row.
TEST(ErrorsOptions, TopThetaTableBudgetBelowOne) {
  auto p = base_problem();
  ThresholdTable t = one_entry_table(/*k=*/0, theta_zero_at_8());
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &t;
  expect_rejected(p, p.args(), o, {"layer 0 has budget k = 0"}, "k = 0");
  ASSERT_TRUE(t.set_k(0, 2).ok());
  EXPECT_TRUE(prefill(p.args(), o).ok());
}

TEST(ErrorsOptions, CalibratedSdcWithoutSdcTerms) {
  auto p = base_problem();
  ThresholdEntry e = theta_zero_at_8();
  ThresholdTable t = one_entry_table(2, e);
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.sdc = SdcMode::kCalibrated;
  o.thresholds = &t;
  expect_rejected(p, p.args(), o, {"SDC"}, "no SDC terms");
  // An empty table has no SDC terms either.
  ThresholdTable empty(1, 4, 2);
  for (Index h = 0; h < 4; ++h) ASSERT_TRUE(empty.set_dense(0, h).ok());  // complete, no entries
  o.thresholds = &empty;
  expect_rejected(p, p.args(), o, {"SDC"}, "empty table");
  // With terms it works; with post-softmax placement the SDC mode is ignored (no error).
  e.sdc = 0.5;
  for (Index h = 0; h < 4; ++h) ASSERT_TRUE(t.set(0, h, e).ok());
  o.thresholds = &t;
  EXPECT_TRUE(prefill(p.args(), o).ok());
}

TEST(ErrorsOptions, CalibrationModeErrors) {
  auto p = base_problem();
  AttentionOptions o;
  o.mode = AttentionMode::kCalibrate;
  expect_rejected(p, p.args(), o, {"calibrator"}, "no calibrator");
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = 2;  // the problem has 4 query heads
  Calibrator wrong(co);
  o.calibrator = &wrong;
  expect_rejected(p, p.args(), o, {shape_string(1, 2)}, "calibrator heads");
  co.num_heads = 4;
  Calibrator cal(co);
  o.calibrator = &cal;
  o.sdc = SdcMode::kCalibrated;
  expect_rejected(p, p.args(), o, {"calibrat"}, "calibrated SDC while calibrating");
  o.sdc = SdcMode::kExact;
  EXPECT_TRUE(prefill(p.args(), o).ok());
}

TEST(ErrorsWorkspace, TooSmallOrNullIsRejected) {
  auto p = base_problem(1, 30);
  for (AttentionMode m : {AttentionMode::kDense, AttentionMode::kTopK}) {
    AttentionOptions o;
    o.mode = m;
    o.k = 4;
    o.vmc = VmcMode::kOn;
    o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
    const auto a = p.args();
    const std::size_t need = workspace_size(a, o);
    ASSERT_GT(need, 0u);
    WorkspaceBuffer ws(need);
    p.clear_out();
    // workspace_size() is an upper bound (for T = 1 it covers decode and prefill); a workspace of
    // a few bytes is too small for either.
    Status s = decode(a, o, ws.get(16));
    EXPECT_FALSE(s.ok());
    EXPECT_TRUE(contains(s.message(), "workspace") && contains(s.message(), "16")) << s.message();
    EXPECT_TRUE(p.out_padding_intact());
    s = prefill(a, o, ws.get(0));
    EXPECT_FALSE(s.ok());
    s = decode(a, o, Workspace{nullptr, need});
    EXPECT_FALSE(s.ok());
    for (Index h = 0; h < 4; ++h)
      for (Index i = 0; i < 8; ++i)
        EXPECT_EQ(p.out.view(0, h, i), p.out_fill) << "written despite the error";
    EXPECT_TRUE(decode(a, o, ws.get(need)).ok());
    EXPECT_TRUE(prefill(a, o, ws.get(need)).ok());
  }
  // Prefill: workspace_size() is exactly what prefill measures, one byte less is rejected.
  auto pp = base_problem(20, 30);
  AttentionOptions o;
  o.mode = AttentionMode::kTopK;
  o.k = 4;
  const std::size_t need = workspace_size(pp.args(), o);
  WorkspaceBuffer ws(need);
  pp.clear_out();
  const Status s = prefill(pp.args(), o, ws.get(need / 2));
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message(), std::to_string(need)))
      << "names the required size: " << s.message();
  EXPECT_TRUE(pp.out_padding_intact());
  EXPECT_TRUE(prefill(pp.args(), o, ws.get(need)).ok());
}

// A paged cache whose K and V blocks alternate in one allocation (integration.md: v_pool =
// k_pool + one block, block_stride = two blocks) with the output right after the pools: the
// pools end one block before num_blocks x block_stride, so out does not overlap v (before:
// "out overlaps v"). A block_stride whose pool span overflows an index is an error (before:
// signed overflow in the overlap check, then a read far outside the pools).
TEST(ErrorsPaged, InterleavedPoolsAndHugeBlockStrides) {
  const Index Hkv = 2, Hq = 4, d = 8, B = 4, nb = 3, L = 10;
  const Index blk = B * Hkv * d;
  std::vector<float> mem(std::size_t(2 * nb * blk + Hq * d), 0.f);
  for (Index i = 0; i < 2 * nb * blk; ++i) mem[std::size_t(i)] = std::sin(0.37f * float(i));
  const std::int32_t table[3] = {2, 0, 1};
  auto kv = PagedKv<float>::token_major(mem.data(), mem.data() + blk, nb, table, L, Hkv, d, B);
  kv.block_stride = 2 * blk;
  std::vector<float> q(std::size_t(Hq * d));
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = std::cos(0.11f * float(i));
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
  a.paged = kv;
  a.out = HeadsView<float>::token_major(mem.data() + 2 * nb * blk, 1, Hq, d);
  const Status st = decode(a, AttentionOptions{});
  ASSERT_TRUE(st.ok()) << st.to_string();
  std::vector<float> sep(std::size_t(Hq * d));
  AttentionArgs<float> b = a;
  b.out = HeadsView<float>::token_major(sep.data(), 1, Hq, d);
  ASSERT_TRUE(decode(b, AttentionOptions{}).ok());
  for (Index i = 0; i < Hq * d; ++i) EXPECT_EQ(mem[std::size_t(2 * nb * blk + i)], sep[std::size_t(i)]);
  // One item further and out does overlap the last V block.
  a.out.data -= 1;
  EXPECT_TRUE(contains(decode(a, AttentionOptions{}).message(), "out overlaps v"));
  a.out.data += 1;
  for (Index stride : {Index(1) << 61, std::numeric_limits<Index>::max() / 2}) {
    a.paged.block_stride = stride;
    const Status s = decode(a, AttentionOptions{});
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << stride;
    EXPECT_TRUE(contains(s.message(), "span more memory than an index can address")) << s.message();
    EXPECT_EQ(workspace_size(a, AttentionOptions{}), 0u);
  }
}

// The block table is an input, and the workspace is written: neither may share memory with what
// the call writes or reads. An `out` over the block table passed validate(), the kernel wrote
// output rows over the table, read them back as block indices and loaded rows from outside the
// pool (a segfault in prefill); a workspace over the KV cache had the kernels write their
// scratch into the cache. Each is now kInvalidArgument, nothing written.
TEST(ErrorsPaged, OutputOrWorkspaceOverTheBlockTableOrTheCacheIsRejected) {
  const auto expect_error = [](const Status& s, const std::string& want) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(want), std::string::npos) << s.message();
  };
  const Index Hkv = 2, Hq = 4, d = 8, B = 4, nb = 3, L = 10, T = 2;
  const Index blk = B * Hkv * d;
  // k, v, q and two outputs 256 KiB apart in one allocation: a workspace of the call's size
  // placed at one of them reaches none of the others.
  const std::size_t region = std::size_t(1) << 16;  // floats
  std::vector<float> arena(5 * region, 0.0f);
  float* const kp = arena.data();
  float* const vp = kp + region;
  float* const qp = vp + region;
  float* const outp = qp + region;
  float* const out2p = outp + region;
  for (Index i = 0; i < nb * blk; ++i) {
    kp[i] = std::sin(0.37f * float(i));
    vp[i] = std::cos(0.23f * float(i));
  }
  for (Index i = 0; i < T * Hq * d; ++i) qp[i] = std::cos(0.11f * float(i));
  // Output rows and the block table in one buffer: the table sits inside out's extent.
  alignas(64) unsigned char buf[4 * T * Hq * d + 64];
  std::memset(buf, 0, sizeof buf);
  const std::int32_t entries[3] = {2, 0, 1};
  std::int32_t* table = reinterpret_cast<std::int32_t*>(buf + 64);
  std::memcpy(table, entries, sizeof entries);
  unsigned char before[sizeof buf];
  std::memcpy(before, buf, sizeof buf);
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(qp, T, Hq, d);
  a.paged = PagedKv<float>::token_major(kp, vp, nb, table, L, Hkv, d, B);
  a.out = HeadsView<float>::token_major(reinterpret_cast<float*>(buf), T, Hq, d);
  AttentionArgs<float> one = a;
  one.q.tokens = 1;
  one.out.tokens = 1;
  expect_error(prefill(a, AttentionOptions{}), "out overlaps paged.block_table");
  expect_error(decode(one, AttentionOptions{}), "out overlaps paged.block_table");
  EXPECT_EQ(std::memcmp(before, buf, sizeof buf), 0);
  // Away from the table, the same call runs.
  a.out = HeadsView<float>::token_major(outp, T, Hq, d);
  one.out = HeadsView<float>::token_major(outp, 1, Hq, d);
  ASSERT_TRUE(prefill(a, AttentionOptions{}).ok());
  // Workspaces over the cache, the block table, q and out; one beside them runs.
  const std::size_t need = workspace_size(a, AttentionOptions{});
  const std::size_t plan_need = plan_prefill_workspace_size(a, AttentionOptions{}, 1);
  ASSERT_GT(need, 0u);
  ASSERT_LT(std::max(need, plan_need), region * sizeof(float));
  const std::vector<float> before_arena = arena;
  const std::pair<std::byte*, const char*> cases[] = {
      {reinterpret_cast<std::byte*>(kp), "the workspace overlaps k"},
      {reinterpret_cast<std::byte*>(vp + blk), "the workspace overlaps v"},
      {reinterpret_cast<std::byte*>(buf), "the workspace overlaps paged.block_table"},
      {reinterpret_cast<std::byte*>(qp), "the workspace overlaps q"},
      {reinterpret_cast<std::byte*>(outp), "the workspace overlaps out"},
  };
  for (const auto& [at, want] : cases) {
    // The bytes the call would use decide; the buffer is exactly as large as the call needs.
    expect_error(prefill(a, AttentionOptions{}, Workspace{at, need}), want);
    expect_error(decode(one, AttentionOptions{}, Workspace{at, need}), want);
    AttentionPlan plan;
    expect_error(plan_prefill(a, AttentionOptions{}, 1, Workspace{at, plan_need}, &plan), want);
  }
  EXPECT_EQ(arena, before_arena);
  EXPECT_EQ(std::memcmp(before, buf, sizeof buf), 0);
  std::vector<std::byte> ws(need);
  EXPECT_TRUE(prefill(a, AttentionOptions{}, Workspace{ws.data(), need}).ok());
  // A batch names the sequence whose memory the workspace covers, and a workspace that is too
  // small names the function that sizes a batch.
  AttentionArgs<float> seqs[2] = {one, one};
  seqs[1].out = HeadsView<float>::token_major(out2p, 1, Hq, d);
  const DecodeBatch<float> batch{seqs, 2};
  const std::size_t bneed = decode_batch_workspace_size(batch, AttentionOptions{});
  ASSERT_GT(bneed, 0u);
  ASSERT_LT(bneed, region * sizeof(float));
  std::vector<std::byte> bws(bneed);
  expect_error(decode_batch(batch, AttentionOptions{}, Workspace{bws.data(), bneed - 1}),
               "size it with decode_batch_workspace_size() (decode_batch) or "
               "plan_decode_workspace_size() (plan_decode)");
  expect_error(decode_batch(batch, AttentionOptions{},
                            Workspace{reinterpret_cast<std::byte*>(out2p), bneed}),
               "sequence 1: the workspace overlaps out");
  EXPECT_TRUE(decode_batch(batch, AttentionOptions{}, Workspace{bws.data(), bneed}).ok());
}

// threads < 0 was taken as "the OpenMP default" without a word; the docs name 0 for that.
TEST(ErrorsOptions, NegativeThreads) {
  auto p = base_problem();
  AttentionOptions o;
  o.threads = -3;
  expect_rejected(p, p.args(), o, {"threads must be >= 0", "-3"}, "threads -3");
}

// An integer cast to an option enumeration (a value outside its name table) fell through the
// kernels' switches: mode 99 ran dense attention and returned ok, isa 99 said "the ? path is not
// compiled in this build" (kFailedPrecondition). Now kInvalidArgument naming the field and its
// values, for every enumeration of the options.
TEST(ErrorsOptions, EnumValuesOutsideTheirTables) {
  auto p = base_problem();
  const auto bad = [](auto e) { return static_cast<decltype(e)>(99); };
  struct Case {
    const char* field;
    std::function<void(AttentionOptions&)> set;
  };
  const std::vector<Case> cases = {
      {"mode", [&](AttentionOptions& o) { o.mode = bad(o.mode); }},
      {"placement", [&](AttentionOptions& o) { o.placement = bad(o.placement); }},
      {"sdc", [&](AttentionOptions& o) { o.sdc = bad(o.sdc); }},
      {"vmc", [&](AttentionOptions& o) { o.vmc = bad(o.vmc); }},
      {"empty_row", [&](AttentionOptions& o) { o.empty_row = bad(o.empty_row); }},
      {"lookup", [&](AttentionOptions& o) { o.lookup = bad(o.lookup); }},
      {"vbar", [&](AttentionOptions& o) { o.vbar = bad(o.vbar); }},
      {"isa", [&](AttentionOptions& o) { o.isa = bad(o.isa); }},
  };
  for (const Case& c : cases) {
    AttentionOptions o;
    c.set(o);
    const std::string field = std::string("options.") + c.field + " = 99 is not one of ";
    expect_rejected(p, p.args(), o, {field}, c.field);
  }
}

// Per-head statistics sized for another head count were skipped (the call returned ok and the
// breakdown stayed at zero, e.g. a shard sizing them to its own heads); now an error naming
// both counts, for the call's options and for decode_batch's per-sequence statistics.
TEST(ErrorsOptions, PerHeadStatisticsOfTheWrongSize) {
  auto p = base_problem(1, 6);
  AttentionStats st;
  AttentionOptions o;
  o.stats = &st;
  st.enable_per_head(3);
  expect_rejected(p, p.args(), o, {"options.stats", "3 (kept)", "model has 4", "enable_per_head(4)"},
                  "per-head 3 of 4");
  // A shard (heads 4..7 of 8) with statistics sized to its own 4 heads.
  auto sh = p.args();
  sh.head_offset = 4;
  sh.model_heads = 8;
  sh.model_kv_heads = 4;
  st.enable_per_head(4);
  expect_rejected(p, sh, o, {"model has 8", "enable_per_head(8)"}, "shard sized to its heads");
  st.enable_per_head(8);
  p.clear_out();
  ASSERT_TRUE(decode(sh, o).ok());
  std::uint64_t kept = 0;
  for (Index h = 0; h < 8; ++h) kept += st.kept_per_head[std::size_t(h)];
  EXPECT_EQ(kept, st.elements_kept);
  EXPECT_EQ(st.kept_per_head[0], 0u);
  EXPECT_GT(st.kept_per_head[4], 0u);
  // decode_batch: the sequence's statistics are checked too.
  AttentionArgs<float> seqs[1] = {p.args()};
  AttentionStats seq_st[1];
  seq_st[0].enable_per_head(2);
  DecodeBatch<float> batch{seqs, 1, seq_st};
  const Status bs = decode_batch(batch, AttentionOptions{});
  EXPECT_EQ(bs.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(bs.message(), "seq_stats[0]")) << bs.message();
  seq_st[0].enable_per_head(4);
  EXPECT_TRUE(decode_batch(batch, AttentionOptions{}).ok());
}

}  // namespace
