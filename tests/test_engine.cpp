// The interfaces engines need (plan.hpp, PagedKv, AttentionArgs<T, Q>, quantize.hpp), tested
// against the contiguous single-sequence path (bit for bit) and the oracle:
//  * paged caches (block sizes 1, 7, 16, 256; token- and head-major blocks; shuffled block
//    tables, unused blocks full of NaN) == the same tokens in a contiguous cache, every mode,
//    decode and prefill, every storage type including q8_0;
//  * float queries over f16 / bf16 / q8_0 caches vs the oracle;
//  * head sharding: two shards == one full call, with the whole model's threshold table;
//  * batched ragged decode == N single decode calls (outputs, per-sequence and total statistics),
//    contiguous and paged, 1 and 2 threads;
//  * the task interface run on a std::thread pool == the OpenMP path, decode and prefill;
//  * errors: every bad input reported with the argument at fault, nothing written.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/plan.hpp"
#include "toptheta/quantize.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

// ------------------------------------------------------------------------------------------
// Paged copies of a contiguous cache.
// ------------------------------------------------------------------------------------------

/// K and V pools holding the rows of `k` / `v` in blocks of `B` tokens, in a shuffled order,
/// with `spare` unused blocks and padding between blocks, all filled with `fill`.
template <class T>
struct PagedCopy {
  std::vector<T> k_pool, v_pool;
  std::vector<std::int32_t> table;
  PagedKv<T> kv;
};

template <class T>
PagedCopy<T> make_paged(HeadsView<const T> k, HeadsView<const T> v, Index B, bool head_major,
                        std::uint64_t seed, T fill) {
  PagedCopy<T> pc;
  const Index L = k.tokens, H = k.heads, d = k.dim;
  const Index nb = (L + B - 1) / B, spare = 3, num_blocks = nb + spare;
  const Index r = HeadsView<const T>::row_items(d);
  const Index extent = B * H * r;
  const Index block_stride = extent + 5;  // padding between blocks
  pc.k_pool.assign(std::size_t(num_blocks * block_stride), fill);
  pc.v_pool.assign(pc.k_pool.size(), fill);
  std::vector<std::int32_t> order(static_cast<std::size_t>(num_blocks));
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  pc.table.assign(order.begin(), order.begin() + nb);
  PagedKv<T> p = head_major ? PagedKv<T>::head_major(nullptr, nullptr, num_blocks, nullptr, L, H, d, B)
                            : PagedKv<T>::token_major(nullptr, nullptr, num_blocks, nullptr, L, H, d, B);
  p.block_stride = block_stride;
  p.k_pool = pc.k_pool.data();
  p.v_pool = pc.v_pool.data();
  p.block_table = pc.table.data();
  pc.kv = p;
  auto rows = [&](bool values) { return detail::paged_rows(p, values); };
  for (Index t = 0; t < L; ++t)
    for (Index h = 0; h < H; ++h) {
      std::memcpy(const_cast<T*>(rows(false).row(t, h)), k.row(t, h), sizeof(T) * std::size_t(r));
      std::memcpy(const_cast<T*>(rows(true).row(t, h)), v.row(t, h), sizeof(T) * std::size_t(r));
    }
  return pc;
}

template <class T, class Q>
AttentionArgs<T, Q> as_paged(AttentionArgs<T, Q> a, const PagedKv<T>& kv) {
  a.k = {};
  a.v = {};
  a.paged = kv;
  return a;
}

// ------------------------------------------------------------------------------------------
// The modes every equivalence test runs.
// ------------------------------------------------------------------------------------------

struct Variant {
  AttentionMode mode;
  Placement pl;
  SdcMode sdc;
  VmcMode vmc;
  EmptyRowPolicy er;
  VbarSource vbar;
  Index cap_k = 0;
};

const Variant kVariants[] = {
    {AttentionMode::kDense, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOff,
     EmptyRowPolicy::kKeepMax, VbarSource::kRunningSum},
    {AttentionMode::kTopK, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOn,
     EmptyRowPolicy::kKeepMax, VbarSource::kRunningSum},
    {AttentionMode::kTopK, Placement::kPostSoftmax, SdcMode::kNone, VmcMode::kOn,
     EmptyRowPolicy::kKeepMax, VbarSource::kSumCache},
    {AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kExact, VmcMode::kOn,
     EmptyRowPolicy::kKeepMax, VbarSource::kRunningSum},
    {AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kCalibrated, VmcMode::kOn,
     EmptyRowPolicy::kMeanV, VbarSource::kSumCache},
    {AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kExact, VmcMode::kOff,
     EmptyRowPolicy::kMeanV, VbarSource::kRunningSum, 5},
    {AttentionMode::kTopTheta, Placement::kPostSoftmax, SdcMode::kNone, VmcMode::kOn,
     EmptyRowPolicy::kKeepMax, VbarSource::kRunningSum},
    {AttentionMode::kCalibrate, Placement::kPreSoftmax, SdcMode::kExpThreshold, VmcMode::kOn,
     EmptyRowPolicy::kKeepMax, VbarSource::kRunningSum},
};

std::string name_of(const Variant& v) {
  return std::string(to_string(v.mode)) + "/" + to_string(v.pl) + "/sdc " + to_string(v.sdc) +
         "/vmc " + to_string(v.vmc) + (v.cap_k ? "/cap" : "");
}

/// Options of a variant; the calibrator (when the variant calibrates) is made by the caller.
AttentionOptions options_of(const Variant& v, const ThresholdTable* pre, const ThresholdTable* post,
                            Calibrator* cal, AttentionStats* st, int threads = 1) {
  AttentionOptions o;
  o.mode = v.mode;
  o.k = 16;
  o.placement = v.pl;
  o.sdc = v.sdc;
  o.vmc = v.vmc;
  o.empty_row = v.er;
  o.vbar = v.vbar;
  o.cap_k = v.cap_k;
  o.thresholds = v.pl == Placement::kPreSoftmax ? pre : post;
  o.calibrator = cal;
  o.stats = st;
  o.threads = threads;
  return o;
}

CalibrationOptions calib_options(Index heads, Placement pl) {
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = heads;
  co.default_k = 16;
  co.placement = pl;
  co.seed = 3;
  return co;
}

/// One call's observable results: output bits, statistics, calibrated table.
template <class Acc>
struct Outcome {
  Status status;
  std::vector<Acc> out;
  AttentionStats stats;
  ThresholdTable table;
};

/// Runs `call(args, options)` for a variant with fresh statistics and calibrator.
template <class Args, class F>
Outcome<typename Args::Acc> run_variant(const Variant& v, const Args& args,
                                        const ThresholdTable& pre, const ThresholdTable& post,
                                        F&& call, int threads = 1) {
  Outcome<typename Args::Acc> r;
  Calibrator cal(calib_options(args.q.heads, v.pl));
  r.stats.enable_per_head(args.q.heads);
  const AttentionOptions o = options_of(v, &pre, &post, &cal, &r.stats, threads);
  r.status = call(args, o);
  r.out = snapshot(args.out);
  if (v.mode == AttentionMode::kCalibrate) r.table = cal.finalize();
  return r;
}

template <class Acc>
void expect_same(const Outcome<Acc>& want, const Outcome<Acc>& got, const std::string& what) {
  ASSERT_TRUE(want.status.ok()) << what << ": " << want.status.to_string();
  ASSERT_TRUE(got.status.ok()) << what << ": " << got.status.to_string();
  EXPECT_TRUE(same_bits(want.out, got.out)) << what << ": outputs differ";
  EXPECT_TRUE(stats_equal(want.stats, got.stats)) << what;
  EXPECT_TRUE(same_tables(want.table, got.table)) << what << ": calibrated tables differ";
}

auto decode_call = [](const auto& a, const AttentionOptions& o) { return decode(a, o); };
auto prefill_call = [](const auto& a, const AttentionOptions& o) { return prefill(a, o); };

/// A decode (T = 1) or prefill problem with a running V sum and two margin tables.
template <class T>
struct Fixture {
  Problem<T> p;
  ThresholdTable pre, post;
};

template <class T>
Fixture<T> make_fixture(bool prefill_call, std::uint64_t seed, Index Hq = 8, Index Hkv = 4,
                        Index d = 64) {
  ProblemSpec sp;
  sp.T = prefill_call ? 70 : 1;
  sp.P = prefill_call ? 230 : 700;
  sp.Hq = Hq;
  sp.Hkv = Hkv;
  sp.d = d;
  sp.seed = seed;
  Fixture<T> f{make_problem<T>(sp), {}, {}};
  f.p.set_vsum();
  Rng rng(seed + 1);
  ThetaPlan plan;
  plan.with_sdc = true;
  plan.target_hi = 40;
  f.pre = make_margin_table(f.p, Placement::kPreSoftmax, 16, plan, rng, 1);
  f.post = make_margin_table(f.p, Placement::kPostSoftmax, 16, plan, rng, 1);
  return f;
}

// ------------------------------------------------------------------------------------------
// Paged == contiguous.
// ------------------------------------------------------------------------------------------

template <class T>
void paged_equals_contiguous(bool prefill_mode) {
  Fixture<T> f = make_fixture<T>(prefill_mode, 21);
  const auto args = f.p.args();
  auto call = [&](const auto& a, const AttentionOptions& o) {
    return prefill_mode ? prefill(a, o) : decode(a, o);
  };
  for (const Variant& v : kVariants) {
    f.p.clear_out();
    const auto want = run_variant(v, args, f.pre, f.post, call);
    for (Index B : {Index(1), Index(7), Index(16), Index(256)})
      for (bool hm : {false, true}) {
        const PagedCopy<T> pc =
            make_paged<T>(f.p.k.cview(), f.p.v.cview(), B, hm, 100 + B, quiet_nan<T>());
        f.p.clear_out();
        const auto got = run_variant(v, as_paged(args, pc.kv), f.pre, f.post, call);
        expect_same(want, got,
                    name_of(v) + (prefill_mode ? " prefill" : " decode") + " B=" +
                        std::to_string(B) + (hm ? " head-major" : " token-major"));
      }
  }
}

TEST(Paged, DecodeEqualsContiguousF32) { paged_equals_contiguous<float>(false); }
TEST(Paged, DecodeEqualsContiguousF16) { paged_equals_contiguous<Eigen::half>(false); }
TEST(Paged, DecodeEqualsContiguousBF16) { paged_equals_contiguous<Eigen::bfloat16>(false); }
TEST(Paged, DecodeEqualsContiguousF64) { paged_equals_contiguous<double>(false); }
TEST(Paged, PrefillEqualsContiguousF32) { paged_equals_contiguous<float>(true); }
TEST(Paged, PrefillEqualsContiguousF16) { paged_equals_contiguous<Eigen::half>(true); }

/// The paged cache against the oracle too (the oracle reads rows through the block table).
TEST(Paged, DecodeMatchesOracle) {
  Fixture<float> f = make_fixture<float>(false, 23);
  const PagedCopy<float> pc = make_paged<float>(f.p.k.cview(), f.p.v.cview(), 16, false, 5,
                                                quiet_nan<float>());
  const auto args = as_paged(f.p.args(), pc.kv);
  for (const Variant& v : kVariants) {
    if (v.mode == AttentionMode::kCalibrate || v.cap_k) continue;
    const AttentionOptions o = options_of(v, &f.pre, &f.post, nullptr, nullptr);
    f.p.clear_out();
    ASSERT_TRUE(decode(args, o).ok()) << name_of(v);
    const auto ref = reference::attention(args, o);
    ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
    EXPECT_TRUE(outputs_close(ref, f.p.out.view, problem_tolerance(f.p))) << name_of(v);
  }
}

// ------------------------------------------------------------------------------------------
// q8_0 caches and float queries over half caches.
// ------------------------------------------------------------------------------------------

/// A q8_0 copy of a float cache: token-major rows of d / 32 blocks, quantised.
struct Q8Cache {
  std::vector<BlockQ8_0> buf;
  HeadsView<const BlockQ8_0> view;
};

Q8Cache quantize_cache(HeadsView<const float> x) {
  Q8Cache c;
  const Index r = x.dim / 32;
  c.buf.resize(std::size_t(x.tokens * x.heads * r));
  std::vector<float> row(std::size_t(x.dim));
  for (Index t = 0; t < x.tokens; ++t)
    for (Index h = 0; h < x.heads; ++h) {
      for (Index i = 0; i < x.dim; ++i) row[std::size_t(i)] = x(t, h, i);
      EXPECT_TRUE(quantize_row_q8_0(row.data(), &c.buf[std::size_t((t * x.heads + h) * r)], x.dim).ok());
    }
  c.view = HeadsView<const BlockQ8_0>::token_major(c.buf.data(), x.tokens, x.heads, x.dim);
  return c;
}

/// A table with, for every head of `args` (decode), a theta with ~`target` placement values
/// above it and a margin from all of them.
template <class T, class Q>
ThresholdTable margin_table_for(const AttentionArgs<T, Q>& args, Placement pl, Index target) {
  ThresholdTable tab(1, args.q.heads, 16);
  tab.metadata().placement = pl;
  for (Index h = 0; h < args.q.heads; ++h) {
    const auto a = reference::placement_values(args, 0, h, pl);
    double theta = pick_theta(a, pl, target, 1e-3, 1e-3);
    if (std::isnan(theta)) theta = -std::numeric_limits<double>::infinity();
    ThresholdEntry e;
    e.length = args.cache_tokens();
    e.theta = theta;
    e.samples = 1;
    e.sdc = 0.5;
    EXPECT_TRUE(tab.set(0, h, e).ok());
  }
  return tab;
}

BlockQ8_0 nan_block() {
  BlockQ8_0 b{};
  b.d = Eigen::half(std::numeric_limits<float>::quiet_NaN());
  return b;
}

TEST(Q8_0, DecodeMatchesOracleAndPagedIsBitIdentical) {
  for (bool prefill_mode : {false, true}) {
    Fixture<float> f = make_fixture<float>(prefill_mode, 31, 8, 2, 64);
    const Q8Cache k8 = quantize_cache(f.p.k.cview()), v8 = quantize_cache(f.p.v.cview());
    AttentionArgs<BlockQ8_0, float> a;
    a.q = f.p.q.cview();
    a.k = k8.view;
    a.v = v8.view;
    a.out = f.p.out.view;
    // The running sum of the dequantised rows before the new tokens.
    std::vector<float> vsum(std::size_t(2 * 64), 0.0f);
    for (Index g = 0; g < 2; ++g)
      for (Index j = 0; j < f.p.spec.P; ++j)
        for (Index i = 0; i < 64; ++i) vsum[std::size_t(g * 64 + i)] += value_at(v8.view.row(j, g), i);
    a.v_sum = vsum.data();
    const ThresholdTable pre = margin_table_for(a, Placement::kPreSoftmax, 12);
    const ThresholdTable post = margin_table_for(a, Placement::kPostSoftmax, 12);
    const double tol = 64 * problem_tolerance(f.p);  // float arithmetic on the dequantised values
    for (const Variant& v : kVariants) {
      const std::string what = name_of(v) + (prefill_mode ? " prefill" : " decode");
      auto call = [&](const auto& x, const AttentionOptions& o) {
        return prefill_mode ? prefill(x, o) : decode(x, o);
      };
      f.p.clear_out();
      const auto want = run_variant(v, a, pre, post, call);
      ASSERT_TRUE(want.status.ok()) << what << ": " << want.status.to_string();
      if (!prefill_mode && v.mode != AttentionMode::kCalibrate && !v.cap_k) {
        const auto ref = reference::attention(a, options_of(v, &pre, &post, nullptr, nullptr));
        ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
        EXPECT_TRUE(outputs_close(ref, f.p.out.view, tol)) << what;
      }
      for (Index B : {Index(7), Index(16)}) {
        const PagedCopy<BlockQ8_0> pc = make_paged<BlockQ8_0>(k8.view, v8.view, B, B == 7, 9, nan_block());
        f.p.clear_out();
        const auto got = run_variant(v, as_paged(a, pc.kv), pre, post, call);
        expect_same(want, got, what + " paged B=" + std::to_string(B));
      }
    }
  }
}

template <class T>
void float_queries_over(const char* name) {
  Fixture<T> f = make_fixture<T>(false, 41);
  // Queries as float: the same values (bit-identical to T queries) and then values T cannot hold.
  HeadsBuffer<float> qf = make_heads<float>(1, 8, 64, Layout::kTokenMajor, 0.0f, 1);
  fill_view(qf, [&](Index t, Index h, Index i) { return double(f.p.q.view(t, h, i)); });
  AttentionArgs<T, float> a;
  a.q = qf.cview();
  a.k = f.p.k.cview();
  a.v = f.p.v.cview();
  a.out = f.p.out.view;
  a.v_sum = f.p.vsum.data();
  a.v_sum_stride = f.p.vsum_stride;
  for (const Variant& v : kVariants) {
    f.p.clear_out();
    const auto same_q = run_variant(v, f.p.args(), f.pre, f.post, decode_call);
    f.p.clear_out();
    const auto float_q = run_variant(v, a, f.pre, f.post, decode_call);
    expect_same(same_q, float_q, std::string(name) + " " + name_of(v));
  }
  Rng rng(3);
  std::normal_distribution<double> nd(0, 1);
  fill_view(qf, [&](Index, Index, Index) { return nd(rng) * (1 + 1e-3); });
  const AttentionOptions o = options_of(kVariants[0], nullptr, nullptr, nullptr, nullptr);
  f.p.clear_out();
  ASSERT_TRUE(decode(a, o).ok());
  const auto ref = reference::attention(a, o);
  EXPECT_TRUE(outputs_close(ref, f.p.out.view, problem_tolerance(f.p))) << name;
}

TEST(FloatQueries, OverF16Cache) { float_queries_over<Eigen::half>("f16"); }
TEST(FloatQueries, OverBF16Cache) { float_queries_over<Eigen::bfloat16>("bf16"); }

TEST(Quantize, MatchesGgmlReferenceRule) {
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[std::size_t(i)] = float(i - 20) * 0.37f;
  x[63] = 0.0f;
  std::vector<BlockQ8_0> b(2);
  ASSERT_TRUE(quantize_row_q8_0(x.data(), b.data(), 64).ok());
  // Block 0: max |x| = 20 * 0.37 = 7.4, d = 7.4 / 127; q_i = round(x_i / d).
  const float d0 = 7.4f / 127.0f;
  EXPECT_EQ(static_cast<float>(b[0].d), static_cast<float>(Eigen::half(d0)));
  EXPECT_EQ(b[0].qs[0], -127);
  EXPECT_EQ(b[0].qs[20], 0);
  EXPECT_EQ(b[0].qs[1], std::int8_t(std::lround(-19 * 0.37f / d0)));
  std::vector<float> y(64);
  ASSERT_TRUE(dequantize_row_q8_0(b.data(), y.data(), 64).ok());
  for (int i = 0; i < 64; ++i)
    EXPECT_NEAR(y[std::size_t(i)], x[std::size_t(i)], 0.51 * 16.3 / 127 + 1e-6) << i;
  // All-zero block: scale 0, every q 0.
  std::vector<float> z(32, 0.0f);
  ASSERT_TRUE(quantize_row_q8_0(z.data(), b.data(), 32).ok());
  EXPECT_EQ(static_cast<float>(b[0].d), 0.0f);
  // Non-finite values make the whole block NaN.
  z[5] = std::numeric_limits<float>::infinity();
  ASSERT_TRUE(quantize_row_q8_0(z.data(), b.data(), 32).ok());
  EXPECT_TRUE(std::isnan(value_at(b.data(), 0)));
  z[5] = 1e9f;  // scale overflows fp16
  ASSERT_TRUE(quantize_row_q8_0(z.data(), b.data(), 32).ok());
  EXPECT_TRUE(std::isnan(value_at(b.data(), 5)));
  const Status bad = quantize_row_q8_0(x.data(), b.data(), 33);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("multiple of 32"), std::string::npos) << bad.message();
}

// ------------------------------------------------------------------------------------------
// Head sharding.
// ------------------------------------------------------------------------------------------

template <class T>
void shards_equal_full(bool prefill_mode) {
  Fixture<T> f = make_fixture<T>(prefill_mode, 51);
  const auto full = f.p.args();
  auto call = [&](const auto& a, const AttentionOptions& o) {
    return prefill_mode ? prefill(a, o) : decode(a, o);
  };
  for (const Variant& v : kVariants) {
    const std::string what = name_of(v) + (prefill_mode ? " prefill" : " decode");
    f.p.clear_out();
    const auto want = run_variant(v, full, f.pre, f.post, call);
    ASSERT_TRUE(want.status.ok()) << what << ": " << want.status.to_string();
    // Two shards of 4 query heads (2 KV heads) each, one statistics object and one calibrator
    // of the whole model.
    f.p.clear_out();
    Calibrator cal(calib_options(8, v.pl));
    AttentionStats st;
    st.enable_per_head(8);
    const AttentionOptions o = options_of(v, &f.pre, &f.post, &cal, &st);
    for (Index s = 0; s < 2; ++s) {
      auto a = full;
      a.q.data += 4 * s * full.q.head_stride;
      a.q.heads = 4;
      a.k.data += 2 * s * full.k.head_stride;
      a.k.heads = 2;
      a.v.data += 2 * s * full.v.head_stride;
      a.v.heads = 2;
      a.out.data += 4 * s * full.out.head_stride;
      a.out.heads = 4;
      a.v_sum += 2 * s * full.v_sum_stride;
      a.head_offset = 4 * s;
      a.model_heads = 8;
      a.model_kv_heads = 4;
      const Status stt = call(a, o);
      ASSERT_TRUE(stt.ok()) << what << " shard " << s << ": " << stt.to_string();
    }
    EXPECT_TRUE(same_bits(want.out, snapshot(f.p.out.view))) << what << ": outputs differ";
    EXPECT_TRUE(stats_equal(want.stats, st)) << what;
    if (v.mode == AttentionMode::kCalibrate) {
      EXPECT_TRUE(same_tables(want.table, cal.finalize())) << what << ": tables differ";
    }
  }
}

TEST(Sharding, DecodeShardsEqualFullCall) { shards_equal_full<float>(false); }
TEST(Sharding, PrefillShardsEqualFullCall) { shards_equal_full<Eigen::half>(true); }

TEST(Sharding, ErrorsNameTheShape) {
  Fixture<float> f = make_fixture<float>(false, 52);
  auto a = f.p.args();
  a.q.heads = 4;
  a.k.heads = 2;
  a.v.heads = 2;
  a.out.heads = 4;
  a.head_offset = 6;  // 6 + 4 > 8 heads of the table
  a.model_heads = 8;
  a.model_kv_heads = 4;
  AttentionOptions o = options_of(kVariants[6], &f.pre, &f.post, nullptr, nullptr);
  const Status s = decode(a, o);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("head"), std::string::npos) << s.message();
}

// A shard pairs its query heads with its KV heads by its own GQA group (Hq / Hkv); a slice whose
// groups straddle the model's ran with wrong outputs (up to 0.28 off, no error: helper-41). The
// model's KV heads are now required for a shard, and each of its groups must lie in one of the
// model's. Model: 8 query heads over 4 KV heads (groups of 2).
TEST(Sharding, SlicesMustKeepTheModelsGqaGroups) {
  Fixture<float> f = make_fixture<float>(false, 53);
  const auto full = f.p.args();
  ASSERT_EQ(full.q.heads, 8);
  ASSERT_EQ(full.k.heads, 4);
  const AttentionOptions o = options_of(kVariants[6], &f.pre, &f.post, nullptr, nullptr);
  const std::vector<float> want = [&] {
    f.p.clear_out();
    EXPECT_TRUE(decode(full, o).ok());
    return snapshot(f.p.out.view);
  }();
  std::vector<float> out(std::size_t(8 * full.q.dim), -1.f);
  // Query heads [hq0, hq0 + nq) over KV heads [hkv0, hkv0 + nkv) of the model.
  const auto slice = [&](Index hq0, Index nq, Index hkv0, Index nkv, Index model_kv) {
    auto a = full;
    a.q.data += hq0 * full.q.head_stride;
    a.q.heads = nq;
    a.k.data += hkv0 * full.k.head_stride;
    a.k.heads = nkv;
    a.v.data += hkv0 * full.v.head_stride;
    a.v.heads = nkv;
    a.v_sum += hkv0 * full.v_sum_stride;
    a.out = HeadsView<float>::token_major(out.data() + hq0 * full.q.dim, 1, nq, full.q.dim);
    a.head_offset = hq0;
    a.model_heads = 8;
    a.model_kv_heads = model_kv;
    return a;
  };
  const auto refused = [&](const AttentionArgs<float>& a, const std::string& what) {
    const Status s = decode(a, o);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
  };
  // helper-41's kinds: a group shifted by one head, a group of 4 over the model's groups of 2.
  refused(slice(1, 2, 0, 1, 4),
          "the call's KV head 0 serves model query heads [1, 3) (GQA groups of 2 = Hq / Hkv), "
          "which the model splits between its KV heads 0 and 1 (groups of 2 = model_heads / "
          "model_kv_heads)");
  refused(slice(0, 4, 0, 1, 4), "serves model query heads [0, 4)");
  // Model groups of 4 (8 query heads over 2 KV heads): query heads [0, 4) over two KV heads put
  // heads 2 and 3 on the model's KV head 1, which the model pairs with heads 4 to 7.
  refused(slice(0, 4, 0, 2, 2),
          "the call's KV head 1 serves model query heads [2, 4), which the model pairs with its "
          "KV head 0, but the call's KV heads are the model's KV heads 0..1 in order");
  refused(slice(4, 4, 2, 2, 0), "needs model_kv_heads > 0");
  refused(slice(4, 4, 2, 2, 3), "model_heads 8 is not a multiple of model_kv_heads 3");
  auto whole = full;
  whole.model_kv_heads = 2;
  refused(whole, "model_kv_heads 2 differs from the 4 KV heads");
  // Whole groups, and part of one group with its KV head (a KV head replicated on more ranks
  // than the model has KV heads), run.
  ASSERT_TRUE(decode(slice(2, 4, 1, 2, 4), o).ok());
  ASSERT_TRUE(decode(slice(7, 1, 3, 1, 4), o).ok());
  ASSERT_TRUE(decode(slice(0, 1, 0, 1, 4), o).ok());
  ASSERT_TRUE(decode(slice(1, 1, 0, 1, 4), o).ok());
  ASSERT_TRUE(decode(slice(6, 1, 3, 1, 4), o).ok());
  for (Index h : {0, 1, 2, 3, 4, 5, 6, 7})
    for (Index i = 0; i < full.q.dim; ++i) {
      const std::size_t at = std::size_t(h * full.q.dim + i);
      EXPECT_NEAR(out[at], want[at], 1e-5f * (1 + std::fabs(want[at]))) << "head " << h;
    }
}

// ------------------------------------------------------------------------------------------
// Batched ragged decode and the task interface.
// ------------------------------------------------------------------------------------------

/// N decode problems of different lengths with one threshold table covering all lengths.
template <class T>
struct Batch {
  std::vector<Problem<T>> problems;
  ThresholdTable pre, post;
  std::vector<AttentionArgs<T>> args;
};

template <class T>
Batch<T> make_batch(const std::vector<Index>& lengths, std::uint64_t seed) {
  Batch<T> b;
  b.problems.reserve(lengths.size());  // views point into the problems' buffers: never copied
  b.pre = ThresholdTable(1, 8, 16);
  b.post = ThresholdTable(1, 8, 16);
  b.pre.metadata().placement = Placement::kPreSoftmax;
  b.post.metadata().placement = Placement::kPostSoftmax;
  for (std::size_t i = 0; i < lengths.size(); ++i) {
    ProblemSpec sp;
    sp.T = 1;
    sp.P = lengths[i] - 1;
    sp.Hq = 8;
    sp.Hkv = 2;
    sp.d = 32;
    sp.seed = seed + i;
    sp.layout = i % 2 ? Layout::kHeadMajor : Layout::kTokenMajor;
    b.problems.push_back(make_problem<T>(sp));
    b.problems.back().set_vsum();
  }
  for (auto& p : b.problems) {
    Rng rng(seed);
    ThetaPlan plan;
    plan.with_sdc = true;
    plan.target_hi = 30;
    for (int which = 0; which < 2; ++which) {
      ThresholdTable* dst = which ? &b.post : &b.pre;
      const Placement pl = which ? Placement::kPostSoftmax : Placement::kPreSoftmax;
      const ThresholdTable t = make_margin_table(p, pl, 16, plan, rng, 1);
      for (Index h = 0; h < 8; ++h)
        for (const auto& e : t.entries(0, h)) EXPECT_TRUE(dst->set(0, h, e).ok());
    }
  }
  for (auto& p : b.problems) b.args.push_back(p.args());
  return b;
}

/// Runs a plan's tasks on `workers` std::threads: per stage, every thread takes tasks from a
/// shared counter; joining the threads ends the stage. (docs/integration.md shows a persistent
/// pool; here the simplest correct driver.)
void run_on_threads(AttentionPlan& plan, int workers) {
  for (int s = 0; s < plan.num_stages(); ++s) {
    std::atomic<Index> next{0};
    std::vector<std::thread> pool;
    for (int w = 0; w < workers; ++w)
      pool.emplace_back([&, w] {
        for (Index t = next++; t < plan.num_tasks(s); t = next++) plan.run_task(s, t, w);
      });
    for (auto& t : pool) t.join();
  }
}

template <class T>
void batch_equals_single_calls(bool paged) {
  using Acc = acc_t<T>;
  const std::vector<Index> lengths = {1, 9, 17, 300, 1500, 700, 2600};
  Batch<T> b = make_batch<T>(lengths, 61);
  std::vector<PagedCopy<T>> copies;
  if (paged)
    for (std::size_t i = 0; i < lengths.size(); ++i) {
      copies.push_back(make_paged<T>(b.problems[i].k.cview(), b.problems[i].v.cview(),
                                     i % 2 ? 16 : 7, i % 3 == 0, 70 + i, quiet_nan<T>()));
      b.args[i] = as_paged(b.args[i], copies.back().kv);
    }
  const Index n = Index(lengths.size());
  for (const Variant& v : kVariants) {
    if (v.mode == AttentionMode::kCalibrate) continue;  // one sequence per calibration call
    const std::string what = name_of(v) + (paged ? " paged" : " contiguous");
    // Single calls.
    std::vector<Outcome<Acc>> single;
    for (Index i = 0; i < n; ++i) {
      b.problems[std::size_t(i)].clear_out();
      single.push_back(run_variant(v, b.args[std::size_t(i)], b.pre, b.post, decode_call));
      ASSERT_TRUE(single.back().status.ok()) << what << ": " << single.back().status.to_string();
    }
    AttentionStats sum;
    sum.enable_per_head(8);
    for (const auto& s : single) sum.merge(s.stats);
    // The batch on OpenMP (1 and 2 threads) and on a std::thread pool (1 and 3 workers).
    for (int way = 0; way < 4; ++way) {
      for (auto& p : b.problems) p.clear_out();
      std::vector<AttentionStats> seq(static_cast<std::size_t>(n));
      for (auto& s : seq) s.enable_per_head(8);
      AttentionStats total;
      total.enable_per_head(8);
      DecodeBatch<T> batch{b.args.data(), n, seq.data()};
      AttentionOptions o = options_of(v, &b.pre, &b.post, nullptr, &total, way == 1 ? 2 : 1);
      std::string how;
      if (way < 2) {
        how = "decode_batch threads " + std::to_string(o.threads);
        const Status st = decode_batch(batch, o);
        ASSERT_TRUE(st.ok()) << what << " " << how << ": " << st.to_string();
      } else {
        const int workers = way == 2 ? 1 : 3;
        how = "plan_decode on " + std::to_string(workers) + " std::threads";
        std::vector<std::byte> ws(plan_decode_workspace_size(batch, o, workers));
        ASSERT_GT(ws.size(), 0u);
        AttentionPlan plan;
        ASSERT_TRUE(plan_decode(batch, o, workers, Workspace{ws.data(), ws.size()}, &plan).ok());
        EXPECT_EQ(plan.num_workers(), workers);
        run_on_threads(plan, workers);
        ASSERT_TRUE(plan.finish().ok());
        EXPECT_FALSE(plan.finish().ok()) << "a plan finishes once";
      }
      for (Index i = 0; i < n; ++i) {
        EXPECT_TRUE(same_bits(single[std::size_t(i)].out, snapshot(b.args[std::size_t(i)].out)))
            << what << " " << how << ": sequence " << i << " (L " << lengths[std::size_t(i)]
            << ") differs from its single call";
        EXPECT_TRUE(stats_equal(single[std::size_t(i)].stats, seq[std::size_t(i)]))
            << what << " " << how << " sequence " << i;
      }
      EXPECT_TRUE(stats_equal(sum, total)) << what << " " << how << ": total statistics";
    }
  }
}

TEST(Batch, EqualsSingleCallsF32) { batch_equals_single_calls<float>(false); }
TEST(Batch, EqualsSingleCallsF16) { batch_equals_single_calls<Eigen::half>(false); }
TEST(Batch, PagedEqualsSingleCallsBF16) { batch_equals_single_calls<Eigen::bfloat16>(true); }

TEST(TaskInterface, PrefillOnThreadsEqualsOpenMP) {
  Fixture<float> f = make_fixture<float>(true, 71);
  const auto args = f.p.args();
  for (const Variant& v : kVariants) {
    f.p.clear_out();
    const auto want = run_variant(v, args, f.pre, f.post, prefill_call, 2);
    for (int workers : {1, 2, 5}) {
      f.p.clear_out();
      auto call = [&](const auto& a, const AttentionOptions& o) {
        std::vector<std::byte> ws(plan_prefill_workspace_size(a, o, workers));
        AttentionPlan plan;
        TOPTHETA_RETURN_IF_ERROR(
            plan_prefill(a, o, workers, Workspace{ws.data(), ws.size()}, &plan));
        run_on_threads(plan, workers);
        return plan.finish();
      };
      const auto got = run_variant(v, args, f.pre, f.post, call);
      expect_same(want, got, name_of(v) + " prefill plan, workers " + std::to_string(workers));
    }
  }
}

// ------------------------------------------------------------------------------------------
// Errors.
// ------------------------------------------------------------------------------------------

void expect_error(const Status& s, const char* needle) {
  EXPECT_FALSE(s.ok()) << "expected an error mentioning '" << needle << "'";
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

TEST(EngineErrors, PagedCache) {
  Fixture<float> f = make_fixture<float>(false, 81, 4, 2, 32);
  PagedCopy<float> pc = make_paged<float>(f.p.k.cview(), f.p.v.cview(), 16, false, 1, 0.0f);
  const AttentionOptions o = options_of(kVariants[0], nullptr, nullptr, nullptr, nullptr);
  const std::vector<float> before = snapshot(f.p.out.view);
  auto a = as_paged(f.p.args(), pc.kv);
  // A table entry outside the pool.
  pc.table[3] = std::int32_t(pc.kv.num_blocks);
  expect_error(decode(a, o), "block_table[3]");
  pc.table[3] = -1;
  expect_error(decode(a, o), "block_table[3]");
  EXPECT_TRUE(same_bits(before, snapshot(f.p.out.view))) << "out written after an error";
  pc.table[3] = 0;
  // Both a contiguous and a paged cache.
  auto both = a;
  both.k = f.p.k.cview();
  expect_error(decode(both, o), "not both");
  // Blocks that overlap.
  auto overlap = a;
  overlap.paged.block_stride = 10;
  expect_error(decode(overlap, o), "block_stride");
  // Wrong head_dim, block size 0.
  auto dim = a;
  dim.paged.dim = 16;
  expect_error(decode(dim, o), "head_dim");
  // The pool's dim counts for k and v: against q and out that is a 2-2 split, and the error
  // names the paged cache with every shape rather than blaming q.
  expect_error(decode(dim, o), "disagree on head_dim");
  expect_error(decode(dim, o), "the paged cache's k");
  auto bs = a;
  bs.paged.block_size = 0;
  expect_error(decode(bs, o), "block_size");
  // q8_0 with a head_dim that is not a multiple of 32.
  std::vector<BlockQ8_0> blocks(64);
  AttentionArgs<BlockQ8_0, float> q8;
  HeadsBuffer<float> q = make_heads<float>(1, 2, 48, Layout::kTokenMajor, 0.0f, 0);
  HeadsBuffer<float> out = make_heads<float>(1, 2, 48, Layout::kTokenMajor, 0.0f, 0);
  q8.q = q.cview();
  q8.out = out.view;
  q8.k = HeadsView<const BlockQ8_0>{blocks.data(), 4, 1, 48, 2, 2};
  q8.v = q8.k;
  expect_error(decode(q8, o), "multiple of 32");
}

TEST(EngineErrors, BatchAndPlan) {
  Batch<float> b = make_batch<float>({5, 40}, 91);
  AttentionOptions o = options_of(kVariants[0], nullptr, nullptr, nullptr, nullptr);
  expect_error(decode_batch(DecodeBatch<float>{b.args.data(), 0}, o), "no sequences");
  // A sequence with two query tokens is named by its index.
  auto args = b.args;
  args[1].q.tokens = 2;
  expect_error(decode_batch(DecodeBatch<float>{args.data(), 2}, o), "sequence 1");
  // Mixed cache kinds.
  PagedCopy<float> pc = make_paged<float>(b.problems[1].k.cview(), b.problems[1].v.cview(), 16,
                                          false, 1, 0.0f);
  args = b.args;
  args[1] = as_paged(args[1], pc.kv);
  expect_error(decode_batch(DecodeBatch<float>{args.data(), 2}, o), "one kind of cache");
  // An output that shares memory with another sequence's cache or output: each sequence alone
  // is valid, so only the batch check can see it (sequences run in parallel). Nothing is written.
  for (auto& p : b.problems) p.clear_out();
  const std::vector<float> out0 = snapshot(b.args[0].out), out1 = snapshot(b.args[1].out);
  args = b.args;
  args[1].out = HeadsView<float>::token_major(b.problems[0].v.view.data, 1, 8, 32);  // 5 x 2 x 32
  expect_error(decode_batch(DecodeBatch<float>{args.data(), 2}, o),
               "sequence 1: out overlaps sequence 0's v");
  args = b.args;
  args[1].out = args[0].out;
  expect_error(decode_batch(DecodeBatch<float>{args.data(), 2}, o),
               "out overlaps sequence 1's out");
  EXPECT_TRUE(same_bits(out0, snapshot(b.args[0].out)));
  EXPECT_TRUE(same_bits(out1, snapshot(b.args[1].out)));
  {
    // Outputs sliced in order from one tensor (the O(n log n) path), a query read from inside
    // another sequence's output; and the same outputs with a shared (valid) query.
    Batch<float> b3 = make_batch<float>({5, 9, 7}, 17);
    std::vector<float> outs(3 * 8 * 32), q0(8 * 32, 0.5f);
    std::vector<AttentionArgs<float>> a3 = b3.args;
    for (int i = 0; i < 3; ++i)
      a3[std::size_t(i)].out = HeadsView<float>::token_major(outs.data() + i * 8 * 32, 1, 8, 32);
    a3[2].q = HeadsView<const float>::token_major(outs.data() + 8 * 32, 1, 8, 32);  // out 1
    expect_error(decode_batch(DecodeBatch<float>{a3.data(), 3}, o),
                 "sequence 1: out overlaps sequence 2's q");
    for (auto& a : a3) a.q = HeadsView<const float>::token_major(q0.data(), 1, 8, 32);
    EXPECT_TRUE(decode_batch(DecodeBatch<float>{a3.data(), 3}, o).ok());
    // Reversed order (the pairwise path) finds the same overlap.
    std::swap(a3[0].out, a3[2].out);
    a3[1].q = HeadsView<const float>::token_major(outs.data() + 2 * 8 * 32, 1, 8, 32);  // out 0
    expect_error(decode_batch(DecodeBatch<float>{a3.data(), 3}, o),
                 "sequence 0: out overlaps sequence 1's q");
  }
  // Calibration: one sequence per call.
  Calibrator cal(calib_options(8, Placement::kPreSoftmax));
  AttentionOptions oc = options_of(kVariants[7], nullptr, nullptr, &cal, nullptr);
  expect_error(decode_batch(DecodeBatch<float>{b.args.data(), 2}, oc), "one sequence per call");
  // Workers and workspace.
  const DecodeBatch<float> batch{b.args.data(), 2};
  AttentionPlan plan;
  std::vector<std::byte> ws(plan_decode_workspace_size(batch, o, 2));
  expect_error(plan_decode(batch, o, 0, Workspace{ws.data(), ws.size()}, &plan), "workers");
  EXPECT_EQ(plan_decode_workspace_size(batch, o, 0), 0u);
  for (auto& p : b.problems) p.clear_out();
  const std::vector<float> before = snapshot(b.args[1].out);
  expect_error(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size() - 1}, &plan),
               "workspace");
  EXPECT_TRUE(plan.empty());
  EXPECT_TRUE(same_bits(before, snapshot(b.args[1].out)));
  EXPECT_FALSE(plan.finish().ok()) << "an empty plan cannot finish";
  expect_error(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size()}, nullptr), "null");
  // finish() before every task ran is an error (the outputs are not written), and the plan
  // stays usable: run the tasks, then finish.
  ASSERT_TRUE(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size()}, &plan).ok());
  Index total = 0;
  for (int s = 0; s < plan.num_stages(); ++s) total += plan.num_tasks(s);
  const Status early = plan.finish();
  EXPECT_EQ(early.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(early.message(), "AttentionPlan::finish: 0 of the plan's " + std::to_string(total) +
                                 " tasks ran (the first missing: task 0 of stage 0); run every "
                                 "task of every stage before finish()");
  EXPECT_FALSE(plan.empty());
  for (int s = 0; s < plan.num_stages(); ++s)
    for (Index t = 0; t < plan.num_tasks(s); ++t) plan.run_task(s, t, 0);
  EXPECT_TRUE(plan.finish().ok());
  EXPECT_TRUE(plan.empty());
  // A task run twice is an error even when the count of runs matches (a pool that repeats one
  // task and skips another): the plan is discarded, and a new plan runs as usual.
  ASSERT_TRUE(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size()}, &plan).ok());
  const int last = plan.num_stages() - 1;
  ASSERT_GE(plan.num_tasks(last), 2);
  for (int s = 0; s < plan.num_stages(); ++s)
    for (Index t = 0; t < plan.num_tasks(s); ++t)
      plan.run_task(s, s == last && t == 1 ? 0 : t, 0);
  const Status twice = plan.finish();
  EXPECT_EQ(twice.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(twice.message(),
            "AttentionPlan::finish: task 0 of stage " + std::to_string(last) +
                " ran more than once (its outputs may be wrong); run each task exactly once; the "
                "plan is discarded: plan the call again");
  EXPECT_TRUE(plan.empty());
  EXPECT_FALSE(plan.finish().ok());
  ASSERT_TRUE(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size()}, &plan).ok());
  for (int s = 0; s < plan.num_stages(); ++s)
    for (Index t = 0; t < plan.num_tasks(s); ++t) plan.run_task(s, t, 1);
  EXPECT_TRUE(plan.finish().ok());
  // How a plan can be misrun (helper-41's cases). Each is refused by finish(), which discards
  // the plan; a plan run properly afterwards gives decode()'s bits (checked below).
  const auto plan_again = [&] {
    ASSERT_TRUE(plan_decode(batch, o, 2, Workspace{ws.data(), ws.size()}, &plan).ok());
  };
  const auto run_all = [&](int stage_from, int stage_to, int step) {
    for (int st = stage_from; st != stage_to; st += step)
      for (Index t = 0; t < plan.num_tasks(st); ++t) plan.run_task(st, t, 0);
  };
  const auto expect_discarded = [&](const std::string& what) {
    const Status st = plan.finish();
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << what;
    EXPECT_NE(st.message().find(what), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("the plan is discarded: plan the call again"), std::string::npos)
        << st.message();
    EXPECT_TRUE(plan.empty()) << what;
  };
  // Out-of-range arguments run nothing (they wrote through null or past the plan's arrays in
  // release builds: ASan/UBSan, helper-41), and discard the plan.
  plan_again();
  ASSERT_GE(plan.num_stages(), 2);
  for (const auto& bad : std::vector<std::array<Index, 3>>{{0, plan.num_tasks(0), 0},
                                                           {0, -1, 0},
                                                           {0, 0, plan.num_workers()},
                                                           {0, 0, -1},
                                                           {plan.num_stages(), 0, 0},
                                                           {-1, 0, 0}}) {
    plan_again();
    run_all(0, plan.num_stages(), 1);
    plan.run_task(int(bad[0]), bad[1], int(bad[2]));
    expect_discarded("run_task(" + std::to_string(bad[0]) + ", " + std::to_string(bad[1]) + ", " +
                     std::to_string(bad[2]) + ") was out of range");
  }
  // A finished (or empty) plan runs nothing.
  plan.run_task(0, 0, 0);
  // A skipped task of an early stage, its later stages run anyway, then the missing task:
  // finish() was ok and the output off by up to 0.16. Stages run in reverse likewise.
  plan_again();
  for (int st = 0; st < plan.num_stages(); ++st)
    for (Index t = 0; t < plan.num_tasks(st); ++t)
      if (!(st == 0 && t == 0)) plan.run_task(st, t, 0);
  plan.run_task(0, 0, 0);
  expect_discarded("task 0 of stage 1 started when " + std::to_string(plan.num_tasks(0) - 1) +
                   " of the " + std::to_string(plan.num_tasks(0)) +
                   " tasks of stage 0 had returned");
  plan_again();
  const int stages = plan.num_stages();
  run_all(stages - 1, -1, -1);
  expect_discarded("of stage " + std::to_string(stages - 1) + " started when 0 of the");
  // A task missing from the last stage only: nothing consumed its outputs, so it can still run.
  plan_again();
  for (int st = 0; st < stages; ++st)
    for (Index t = 0; t < plan.num_tasks(st); ++t)
      if (!(st == stages - 1 && t == 0)) plan.run_task(st, t, 0);
  const Status missing = plan.finish();
  EXPECT_NE(missing.message().find("(the first missing: task 0 of stage " +
                                   std::to_string(stages - 1) + ")"),
            std::string::npos)
      << missing.message();
  EXPECT_FALSE(plan.empty());
  plan.run_task(stages - 1, 0, 0);
  // A copy of the plan shares its call: finishing both merged the statistics twice.
  AttentionPlan copy = plan;
  EXPECT_TRUE(plan.finish().ok());
  {
    const Status st = copy.finish();
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(st.message().find("already finished (through a copy of it)"), std::string::npos)
        << st.message();
    EXPECT_TRUE(copy.empty());
  }
  std::vector<float> single(8 * 32);
  for (int i = 0; i < 2; ++i) {
    auto one = b.args[std::size_t(i)];
    one.out = HeadsView<float>::token_major(single.data(), 1, 8, 32);
    ASSERT_TRUE(decode(one, o).ok());
    EXPECT_TRUE(same_bits(single, snapshot(b.args[std::size_t(i)].out))) << "sequence " << i;
  }
}

}  // namespace
