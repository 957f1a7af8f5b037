// The running V sum (kv_cache.hpp): RunningVSum adds and removes rows at O(d) per token with
// clear errors; KvCache keeps the sum of the rows before its last append, exactly what
// AttentionArgs::v_sum means, through appends, truncations and clears; a decode and a prefill
// fed from a KvCache match the oracle with VMC and mean-V rows.
//
// Half and q8_0 caches: appending float rows stores exactly Eigen::half(x) / quantize_row_q8_0
// of each row; the running sum adds the values as stored (dequantised for q8_0); a decode with
// float queries over a KvCache<BlockQ8_0> matches the oracle on the dequantised cache; a head dim
// that is not a multiple of 32 is a clear error, and non-finite values give NaN blocks.

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/kv_cache.hpp"
#include "toptheta/quantize.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

std::vector<float> rows_sum(const HeadsView<const float>& v, Index first, Index last) {
  std::vector<float> s(std::size_t(v.heads * v.dim), 0.f);
  for (Index t = first; t < last; ++t)
    for (Index g = 0; g < v.heads; ++g)
      for (Index i = 0; i < v.dim; ++i) s[std::size_t(g * v.dim + i)] += v(t, g, i);
  return s;
}

TEST(RunningVSum, AddRemoveAndErrors) {
  const Index Hkv = 2, d = 3;
  std::vector<float> buf(5 * Hkv * d);
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = float(i % 7) - 2.f;
  const auto rows = HeadsView<const float>::token_major(buf.data(), 5, Hkv, d);
  RunningVSum<float> s(Hkv, d);
  ASSERT_TRUE(s.add(rows.slice_tokens(0, 3)).ok());
  ASSERT_TRUE(s.add(rows.slice_tokens(3, 2)).ok());
  EXPECT_EQ(s.rows(), 5);
  const auto want = rows_sum(rows, 0, 5);
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(s.data()[i], want[i]);
  ASSERT_TRUE(s.remove(rows.slice_tokens(3, 2)).ok());
  const auto want3 = rows_sum(rows, 0, 3);
  for (std::size_t i = 0; i < want3.size(); ++i) EXPECT_FLOAT_EQ(s.data()[i], want3[i]);
  // Wrong shape: named, nothing changed.
  std::vector<float> other(4 * 3 * d);
  const Status bad = s.add(HeadsView<const float>::token_major(other.data(), 4, 3, d));
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("RunningVSum"), std::string::npos);
  EXPECT_EQ(s.rows(), 3);
  // Removing more rows than were added.
  EXPECT_EQ(s.remove(rows).code(), StatusCode::kOutOfRange);
  ASSERT_TRUE(s.remove(rows.slice_tokens(0, 3)).ok());
  for (Index i = 0; i < Hkv * d; ++i) EXPECT_EQ(s.data()[i], 0.f) << "exact zero once empty";
}

// A row holding a non-finite value (an fp16 overflow in a rejected speculative token) makes
// the sum non-finite while it is in it, and removing it restores the sum of the other rows:
// before, inf - inf left NaN for good. A large finite row leaves no float rounding residue.
TEST(RunningVSum, RemovingNonFiniteAndLargeRowsRestoresTheSum) {
  const Index Hkv = 1, d = 4;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  std::vector<float> ones(3 * d, 1.f);
  RunningVSum<float> s(Hkv, d);
  ASSERT_TRUE(s.add(HeadsView<const float>::token_major(ones.data(), 3, Hkv, d)).ok());
  const std::vector<std::vector<float>> rows = {
      {inf, -inf, nan, 3e8f}, {inf, inf, 1.f, -3e8f}, {-inf, nan, nan, 1e12f}};
  for (const auto& r : rows) {
    const auto view = HeadsView<const float>::token_major(r.data(), 1, Hkv, d);
    ASSERT_TRUE(s.add(view).ok());
    for (Index i = 0; i < d; ++i) {
      const float x = r[std::size_t(i)];
      if (std::isnan(x)) EXPECT_TRUE(std::isnan(s.data()[i])) << i;
      else if (std::isinf(x)) EXPECT_EQ(s.data()[i], x) << i;
      else EXPECT_EQ(s.data()[i], float(3.0 + double(x))) << i;
    }
    ASSERT_TRUE(s.remove(view).ok());
    for (Index i = 0; i < d; ++i) EXPECT_EQ(s.data()[i], 3.f) << "after removing, element " << i;
  }
  // +inf and -inf in one element is NaN (IEEE), and removing one of them leaves the other.
  std::vector<float> p{inf, 0, 0, 0}, m{-inf, 0, 0, 0};
  const auto pv = HeadsView<const float>::token_major(p.data(), 1, Hkv, d);
  const auto mv = HeadsView<const float>::token_major(m.data(), 1, Hkv, d);
  ASSERT_TRUE(s.add(pv).ok());
  ASSERT_TRUE(s.add(mv).ok());
  EXPECT_TRUE(std::isnan(s.data()[0]));
  ASSERT_TRUE(s.remove(pv).ok());
  EXPECT_EQ(s.data()[0], -inf);
  ASSERT_TRUE(s.remove(mv).ok());
  EXPECT_EQ(s.data()[0], 3.f);
  EXPECT_EQ(s.rows(), 3);
}

// A large finite row removed next to small ones leaves their sum (double-double sums): with a
// double accumulator add(1), add(1e20), remove(1e20) left 0, so after KvCache::truncate rolled
// back a speculative outlier row, VMC's vbar was 0 for good.
TEST(RunningVSum, RemovingALargeFiniteRowLeavesTheSmallOnes) {
  RunningVSum<float> s(1, 1);
  const float one = 1.f, big = 1e20f;
  ASSERT_TRUE(s.add(HeadsView<const float>::token_major(&one, 1, 1, 1)).ok());
  ASSERT_TRUE(s.add(HeadsView<const float>::token_major(&big, 1, 1, 1)).ok());
  EXPECT_EQ(s.data()[0], 1e20f);
  ASSERT_TRUE(s.remove(HeadsView<const float>::token_major(&big, 1, 1, 1)).ok());
  EXPECT_EQ(s.data()[0], 1.f);
  RunningVSum<Eigen::bfloat16> b(1, 1);
  const Eigen::bfloat16 three(3.f), bbig(1e20f);
  ASSERT_TRUE(b.add(HeadsView<const Eigen::bfloat16>::token_major(&three, 1, 1, 1)).ok());
  ASSERT_TRUE(b.add(HeadsView<const Eigen::bfloat16>::token_major(&bbig, 1, 1, 1)).ok());
  ASSERT_TRUE(b.remove(HeadsView<const Eigen::bfloat16>::token_major(&bbig, 1, 1, 1)).ok());
  EXPECT_EQ(b.data()[0], 3.f);
  // KvCache: rows {1,2,3,4}, {1e20 x4}, {1,2,3,4}; truncate to 1 row, append one more.
  KvCache<float> c(KvCacheOptions{1, 4, 8});
  ASSERT_TRUE(c.status().ok());
  const float k[4] = {0, 0, 0, 0}, v1[4] = {1, 2, 3, 4}, v2[4] = {1e20f, 1e20f, 1e20f, 1e20f};
  const auto kv = HeadsView<const float>::token_major(k, 1, 1, 4);
  ASSERT_TRUE(c.append(kv, HeadsView<const float>::token_major(v1, 1, 1, 4)).ok());
  ASSERT_TRUE(c.append(kv, HeadsView<const float>::token_major(v2, 1, 1, 4)).ok());
  ASSERT_TRUE(c.append(kv, HeadsView<const float>::token_major(v1, 1, 1, 4)).ok());
  ASSERT_TRUE(c.truncate(1).ok());
  ASSERT_TRUE(c.append(kv, HeadsView<const float>::token_major(v1, 1, 1, 4)).ok());
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(c.v_sum()[i], v1[i]) << "the rows before the new one: row 0";
}

// Bad row views are errors that add nothing (before: tokens < 0 gave rows() < 0, a null data
// pointer was dereferenced).
TEST(RunningVSum, BadViewsAreErrors) {
  RunningVSum<float> s(2, 4);
  HeadsView<const float> neg{nullptr, -3, 2, 4, 8, 4};
  const Status a = s.add(neg);
  EXPECT_EQ(a.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.message(), "RunningVSum::add: rows have -3 tokens");
  HeadsView<const float> null_rows{nullptr, 2, 2, 4, 8, 4};
  const Status b = s.add(null_rows);
  EXPECT_EQ(b.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(b.message().find("null data pointer"), std::string::npos) << b.message();
  EXPECT_EQ(s.remove(null_rows).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.rows(), 0);
  for (Index i = 0; i < 8; ++i) EXPECT_EQ(s.data()[i], 0.f);
}

// KvCache::append of a negative token count, a null data pointer or a count that overflows
// size + n: errors that append nothing (before: n = -1 set size() to -1 and the next append
// wrote before the buffer; a null pointer was dereferenced; n = PTRDIFF_MAX after one row
// overflowed the capacity check and wrote past the buffer).
TEST(KvCacheAppend, BadCountsAndNullRowsAreErrors) {
  KvCache<float> c(KvCacheOptions{1, 4, 8});
  ASSERT_TRUE(c.status().ok());
  const float row[4] = {1, 2, 3, 4};
  const auto one = HeadsView<const float>::token_major(row, 1, 1, 4);
  ASSERT_TRUE(c.append(one, one).ok());
  HeadsView<const float> neg{row, -1, 1, 4, 4, 4};
  Status s = c.append(neg, neg);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("-1 tokens"), std::string::npos) << s.message();
  HeadsView<const float> null_rows{nullptr, 1, 1, 4, 4, 4};
  s = c.append(null_rows, one);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("null data pointer"), std::string::npos) << s.message();
  EXPECT_EQ(c.append(one, null_rows).code(), StatusCode::kInvalidArgument);
  HeadsView<const float> huge{row, std::numeric_limits<Index>::max(), 1, 4, 0, 4};
  s = c.append(huge, huge);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("do not fit (size 1, capacity 8)"), std::string::npos) << s.message();
  EXPECT_EQ(c.size(), 1);
  ASSERT_TRUE(c.append(one, one).ok());  // the cache still works
  EXPECT_EQ(c.size(), 2);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(c.v_sum()[i], row[i]) << "the rows before the last append";
}

// RunningVSum<double>: rows whose double sum overflows give IEEE's inf (not NaN: the TwoSum's
// error term was inf - inf), and removing them gives the other rows' sum back exactly.
TEST(RunningVSum, DoubleSumsThatOverflowStayInfAndRecover) {
  RunningVSum<double> s(1, 1);
  const double one = 1.0, big = 1e308, nbig = -1e308;
  const auto v = [](const double* x) { return HeadsView<const double>::token_major(x, 1, 1, 1); };
  ASSERT_TRUE(s.add(v(&one)).ok());
  ASSERT_TRUE(s.add(v(&big)).ok());
  EXPECT_EQ(s.data()[0], 1e308);
  ASSERT_TRUE(s.add(v(&big)).ok());
  EXPECT_EQ(s.data()[0], std::numeric_limits<double>::infinity());
  ASSERT_TRUE(s.add(v(&nbig)).ok());  // 1 + 1e308 + 1e308 - 1e308: finite again
  EXPECT_EQ(s.data()[0], 1e308);
  ASSERT_TRUE(s.remove(v(&big)).ok());
  ASSERT_TRUE(s.remove(v(&big)).ok());
  ASSERT_TRUE(s.remove(v(&nbig)).ok());
  EXPECT_EQ(s.data()[0], 1.0);
  EXPECT_EQ(s.rows(), 1);
}

// KvCache<half>: a rejected speculative token whose V overflowed fp16 (inf) is truncated; the
// running sum then equals the sum of the rows that remain, and a VMC decode is finite.
TEST(KvCacheVSum, TruncatingAnOverflowedRowLeavesAFiniteSum) {
  const Index Hkv = 1, d = 8;
  KvCacheOptions co;
  co.num_kv_heads = Hkv;
  co.head_dim = d;
  co.capacity = 8;
  KvCache<Eigen::half> cache(co);
  std::vector<float> k(d, 0.5f), v(d, 1.f), big(d, 1e6f);  // 1e6 overflows fp16: inf
  const auto rows = [&](const std::vector<float>& x) {
    return HeadsView<const float>::token_major(x.data(), 1, Hkv, d);
  };
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(cache.append(rows(k), rows(v)).ok());
  ASSERT_TRUE(cache.append(rows(k), rows(big)).ok());  // speculative
  ASSERT_TRUE(cache.append(rows(k), rows(v)).ok());    // folds the inf row into the sum
  EXPECT_TRUE(std::isinf(cache.v_sum()[0]));
  ASSERT_TRUE(cache.truncate(3).ok());                 // both rejected
  ASSERT_TRUE(cache.append(rows(k), rows(v)).ok());
  for (Index i = 0; i < d; ++i) EXPECT_EQ(cache.v_sum()[i], 3.f) << i;
}

// Sizes whose product cannot be addressed are an invalid option (before: the product wrapped,
// to 0 for 2^57 x 128 x 1, and the first append wrote through a null buffer; or the
// constructor threw std::bad_alloc).
TEST(KvCacheOptions, UnaddressableSizesAreRejected) {
  for (const auto& [cap, heads, dim] :
       {std::tuple<Index, Index, Index>{Index(1) << 57, 128, 1},
        {Index(1) << 40, Index(1) << 30, 128}, {std::numeric_limits<Index>::max(), 2, 2}}) {
    KvCacheOptions co;
    co.capacity = cap;
    co.num_kv_heads = heads;
    co.head_dim = dim;
    KvCache<float> cache(co);
    EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument) << cap;
    EXPECT_NE(cache.status().message().find("too large"), std::string::npos)
        << cache.status().message();
    EXPECT_EQ(cache.capacity(), 0);
    std::vector<float> x(std::size_t(heads * dim > 0 && heads * dim < 1024 ? heads * dim : 1));
    if (heads * dim < 1024) {
      const auto r = HeadsView<const float>::token_major(x.data(), 1, heads, dim);
      EXPECT_EQ(cache.append(r, r).code(), StatusCode::kInvalidArgument);
    }
  }
}

// Sizes whose product cannot be addressed are an error, not an exception from std::vector
// (before: RunningVSum(2^40, 2^40) formed heads x dim in Index, which overflowed). KvCache
// bounds capacity x Hkv x d but not Hkv x d alone (capacity 0), so it reports its sum's error.
TEST(RunningVSum, UnaddressableSizesAreErrors) {
  const Index big = Index(1) << 40;
  RunningVSum<float> s(big, big);
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message(),
            "RunningVSum: num_kv_heads 1099511627776 x head_dim 1099511627776 values is too "
            "large to address");
  EXPECT_EQ(s.data(), nullptr);
  float x[4] = {1, 2, 3, 4};
  const HeadsView<const float> r{x, 1, big, big, 4, 2};  // never read
  EXPECT_EQ(s.add(r).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.remove(r).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.rows(), 0);
  RunningVSum<float> ok(2, 2);
  EXPECT_TRUE(ok.status().ok());

  KvCacheOptions co;
  co.capacity = 0;
  co.num_kv_heads = big;
  co.head_dim = big;
  KvCache<float> cache(co);
  EXPECT_EQ(cache.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cache.status().message().find("RunningVSum"), std::string::npos)
      << cache.status().message();
}

TEST(KvCacheVSum, CoversTheRowsBeforeTheLastAppend) {
  const Index Hkv = 2, d = 4;
  for (KvLayout layout : {KvLayout::kTokenMajor, KvLayout::kHeadMajor}) {
    KvCacheOptions co;
    co.num_kv_heads = Hkv;
    co.head_dim = d;
    co.capacity = 20;
    co.layout = layout;
    KvCache<float> cache(co);
    std::mt19937 rng(1);
    std::normal_distribution<float> nd;
    std::vector<float> k(7 * Hkv * d), v(k.size());
    Index size = 0;
    for (Index n : {Index(3), Index(1), Index(2), Index(1)}) {
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      ASSERT_TRUE(cache
                      .append(HeadsView<const float>::token_major(k.data(), n, Hkv, d),
                              HeadsView<const float>::token_major(v.data(), n, Hkv, d))
                      .ok());
      size += n;
      EXPECT_EQ(cache.pending(), n);
      const auto want = rows_sum(cache.values(), 0, size - n);
      for (std::size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(cache.v_sum()[i], want[i], 1e-5f) << "after appending " << n;
    }
    // Truncating into the summed rows removes them; truncating only pending rows does not.
    ASSERT_TRUE(cache.truncate(size - 1).ok());  // drops the pending row
    EXPECT_EQ(cache.pending(), 0);
    auto want = rows_sum(cache.values(), 0, cache.size());
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(cache.v_sum()[i], want[i], 1e-5f);
    ASSERT_TRUE(cache.truncate(2).ok());
    want = rows_sum(cache.values(), 0, 2);
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(cache.v_sum()[i], want[i], 1e-5f);
    EXPECT_EQ(cache.truncate(5).code(), StatusCode::kOutOfRange);
    cache.clear();
    EXPECT_EQ(cache.size(), 0);
    for (Index i = 0; i < Hkv * d; ++i) EXPECT_EQ(cache.v_sum()[i], 0.f);
  }
}

// Decode step by step from a KvCache with VMC and mean-V rows matches the oracle with the
// cache.s own sum.
TEST(KvCacheVSum, FeedsDecode) {
  const Index Hq = 4, Hkv = 2, d = 8, steps = 40;
  KvCacheOptions co;
  co.num_kv_heads = Hkv;
  co.head_dim = d;
  co.capacity = 64;
  KvCache<float> cache(co);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  ThresholdTable table(1, Hq, 4);
  table.metadata().placement = Placement::kPostSoftmax;
  for (Index h = 0; h < Hq; ++h)
    for (Index L = 1; L <= 64; ++L) {
      ThresholdEntry e;
      e.length = L;
      e.theta = h == 3 ? 2.0 : 1.2 / double(L);  // head 3: every row empty -> mean-V
      e.samples = 1;
      ASSERT_TRUE(table.set(0, h, e).ok());
    }
  AttentionOptions o = toptheta_options(table);
  o.empty_row = EmptyRowPolicy::kMeanV;
  std::vector<float> q(Hq * d), k(Hkv * d), v(Hkv * d), out(Hq * d);
  for (Index s = 0; s < steps; ++s) {
    for (auto& x : q) x = nd(rng);
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
    ASSERT_TRUE(cache
                    .append(HeadsView<const float>::token_major(k.data(), 1, Hkv, d),
                            HeadsView<const float>::token_major(v.data(), 1, Hkv, d))
                    .ok());
    AttentionArgs<float> a;
    a.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
    a.k = cache.keys();
    a.v = cache.values();
    a.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);
    a.v_sum = cache.v_sum();
    ASSERT_TRUE(decode(a, o).ok());
    const reference::Result ref = reference::attention(a, o);
    ASSERT_TRUE(ref.status.ok());
    EXPECT_TRUE(outputs_close(ref, a.out, 2e-5)) << "step " << s;
    // The oracle, summing V itself instead of the running sum, agrees too.
    auto b = a;
    b.v_sum = nullptr;
    AttentionOptions ob = o;
    ob.vbar = VbarSource::kSumCache;
    const reference::Result ref2 = reference::attention(b, ob);
    EXPECT_TRUE(outputs_close(ref2, a.out, 2e-5)) << "step " << s;
  }
  // Missing running sum with the default VbarSource: an error that says what to do.
  AttentionArgs<float> a;
  a.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
  a.k = cache.keys();
  a.v = cache.values();
  a.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);
  const Status s = decode(a, o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("v_sum"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("kSumCache"), std::string::npos) << s.message();
}

// ---------------------------------------------------------------------------------------------
// Half, bfloat16 and q8_0 caches.

bool same_block(const BlockQ8_0& a, const BlockQ8_0& b) {
  return std::memcmp(&a, &b, sizeof(BlockQ8_0)) == 0;
}

/// n token-major float rows (n, Hkv, d) with magnitudes varying by row and block.
std::vector<float> random_rows(std::mt19937& rng, Index n, Index Hkv, Index d) {
  std::normal_distribution<float> nd;
  std::vector<float> r(std::size_t(n * Hkv * d));
  for (std::size_t i = 0; i < r.size(); ++i)
    r[i] = nd(rng) * std::ldexp(1.0f, int((i / 32) % 7) - 3);
  return r;
}

TEST(KvCacheQ8_0, AppendQuantisesEachRowAndSumsDequantisedValues) {
  const Index Hkv = 2, d = 64, rb = d / 32;
  for (KvLayout layout : {KvLayout::kTokenMajor, KvLayout::kHeadMajor}) {
    KvCacheOptions co;
    co.num_kv_heads = Hkv;
    co.head_dim = d;
    co.capacity = 16;
    co.layout = layout;
    KvCache<BlockQ8_0> cache(co);
    ASSERT_TRUE(cache.status().ok());
    std::mt19937 rng(5);
    std::vector<float> all_k, all_v;  // every appended row, token-major
    for (Index n : {Index(3), Index(1), Index(4), Index(2)}) {
      const std::vector<float> k = random_rows(rng, n, Hkv, d), v = random_rows(rng, n, Hkv, d);
      const Index before = cache.size();
      ASSERT_TRUE(cache
                      .append(HeadsView<const float>::token_major(k.data(), n, Hkv, d),
                              HeadsView<const float>::token_major(v.data(), n, Hkv, d))
                      .ok());
      all_k.insert(all_k.end(), k.begin(), k.end());
      all_v.insert(all_v.end(), v.begin(), v.end());
      const HeadsView<const BlockQ8_0> keys = cache.keys(), vals = cache.values();
      ASSERT_EQ(keys.tokens, before + n);
      EXPECT_EQ(keys.dim, d);
      // Byte-identical to quantize_row_q8_0 of each row.
      for (Index t = 0; t < keys.tokens; ++t)
        for (Index g = 0; g < Hkv; ++g) {
          BlockQ8_0 qk[rb], qv[rb];
          ASSERT_TRUE(quantize_row_q8_0(&all_k[std::size_t((t * Hkv + g) * d)], qk, d).ok());
          ASSERT_TRUE(quantize_row_q8_0(&all_v[std::size_t((t * Hkv + g) * d)], qv, d).ok());
          for (Index b = 0; b < rb; ++b) {
            EXPECT_TRUE(same_block(keys.row(t, g)[b], qk[b])) << "k t=" << t << " g=" << g;
            EXPECT_TRUE(same_block(vals.row(t, g)[b], qv[b])) << "v t=" << t << " g=" << g;
          }
        }
      // v_sum: the dequantised rows before this append, summed in token order (exactly).
      std::vector<float> want(std::size_t(Hkv * d), 0.f), deq(static_cast<std::size_t>(d));
      for (Index t = 0; t < before; ++t)
        for (Index g = 0; g < Hkv; ++g) {
          ASSERT_TRUE(dequantize_row_q8_0(vals.row(t, g), deq.data(), d).ok());
          for (Index i = 0; i < d; ++i) want[std::size_t(g * d + i)] += deq[std::size_t(i)];
        }
      for (std::size_t i = 0; i < want.size(); ++i)
        ASSERT_EQ(cache.v_sum()[i], want[i]) << "after appending " << n << ", element " << i;
    }
    // Truncation removes the dequantised rows again.
    ASSERT_TRUE(cache.truncate(3).ok());
    std::vector<float> want(std::size_t(Hkv * d), 0.f), deq(static_cast<std::size_t>(d));
    for (Index t = 0; t < 3; ++t)
      for (Index g = 0; g < Hkv; ++g) {
        ASSERT_TRUE(dequantize_row_q8_0(cache.values().row(t, g), deq.data(), d).ok());
        for (Index i = 0; i < d; ++i) want[std::size_t(g * d + i)] += deq[std::size_t(i)];
      }
    for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(cache.v_sum()[i], want[i], 1e-4f);
    // Appending q8_0 blocks copies them as they are.
    KvCache<BlockQ8_0> copy(co);
    ASSERT_TRUE(copy.append(cache.keys(), cache.values()).ok());
    for (Index t = 0; t < 3; ++t)
      for (Index g = 0; g < Hkv; ++g)
        for (Index b = 0; b < rb; ++b) {
          EXPECT_TRUE(same_block(copy.keys().row(t, g)[b], cache.keys().row(t, g)[b]));
          EXPECT_TRUE(same_block(copy.values().row(t, g)[b], cache.values().row(t, g)[b]));
        }
  }
}

template <class T>
void half_cache_rounds_float_rows() {
  const Index Hkv = 3, d = 5;
  KvCacheOptions co;
  co.num_kv_heads = Hkv;
  co.head_dim = d;
  co.capacity = 8;
  KvCache<T> cache(co);
  std::mt19937 rng(9);
  const std::vector<float> k = random_rows(rng, 4, Hkv, d), v = random_rows(rng, 4, Hkv, d);
  ASSERT_TRUE(cache
                  .append(HeadsView<const float>::token_major(k.data(), 4, Hkv, d),
                          HeadsView<const float>::token_major(v.data(), 4, Hkv, d))
                  .ok());
  ASSERT_TRUE(cache
                  .append(HeadsView<const float>::token_major(k.data(), 1, Hkv, d),
                          HeadsView<const float>::token_major(v.data(), 1, Hkv, d))
                  .ok());
  std::vector<float> want(std::size_t(Hkv * d), 0.f);
  for (Index t = 0; t < 4; ++t)
    for (Index g = 0; g < Hkv; ++g)
      for (Index i = 0; i < d; ++i) {
        const std::size_t j = std::size_t((t * Hkv + g) * d + i);
        EXPECT_EQ(float(cache.keys()(t, g, i)), float(T(k[j])));
        EXPECT_EQ(float(cache.values()(t, g, i)), float(T(v[j])));
        want[std::size_t(g * d + i)] += float(T(v[j]));  // the stored (rounded) values
      }
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_EQ(cache.v_sum()[i], want[i]);
}
TEST(KvCacheHalf, AppendRoundsFloatRowsAndSumsStoredValues) {
  half_cache_rounds_float_rows<Eigen::half>();
  half_cache_rounds_float_rows<Eigen::bfloat16>();
}

// Decode step by step with f32 queries over a q8_0 KvCache (dense, top-k + VMC, Top-theta + VMC
// with mean-V rows) matches the oracle run on a float cache holding the dequantised values, and
// the oracle run on the q8_0 cache itself.
TEST(KvCacheQ8_0, DecodeMatchesTheOracleOnTheDequantisedCache) {
  const Index Hq = 4, Hkv = 2, d = 64, steps = 48;
  KvCacheOptions co;
  co.num_kv_heads = Hkv;
  co.head_dim = d;
  co.capacity = 64;
  ThresholdTable table(1, Hq, 4);
  table.metadata().placement = Placement::kPostSoftmax;
  for (Index h = 0; h < Hq; ++h)
    for (Index L = 1; L <= 64; ++L) {
      ThresholdEntry e;
      e.length = L;
      e.theta = h == 3 ? 2.0 : 1.2 / double(L);  // head 3: every row empty -> mean-V
      e.samples = 1;
      ASSERT_TRUE(table.set(0, h, e).ok());
    }
  AttentionOptions dense;
  AttentionOptions topk;
  topk.mode = AttentionMode::kTopK;
  topk.k = 6;
  topk.vmc = VmcMode::kOn;
  AttentionOptions tt = toptheta_options(table);
  tt.empty_row = EmptyRowPolicy::kMeanV;
  int mode_i = 0;
  for (const AttentionOptions& o : {dense, topk, tt}) {
    SCOPED_TRACE(mode_i++);
    KvCache<BlockQ8_0> cache(co);
    std::mt19937 rng(17);
    std::normal_distribution<float> nd;
    std::vector<float> q(Hq * d), out(Hq * d), kd(std::size_t(co.capacity * Hkv * d)),
        vd(kd.size());
    for (Index s = 0; s < steps; ++s) {
      for (auto& x : q) x = nd(rng);
      const std::vector<float> k = random_rows(rng, 1, Hkv, d), v = random_rows(rng, 1, Hkv, d);
      ASSERT_TRUE(cache
                      .append(HeadsView<const float>::token_major(k.data(), 1, Hkv, d),
                              HeadsView<const float>::token_major(v.data(), 1, Hkv, d))
                      .ok());
      AttentionArgs<BlockQ8_0, float> a;
      a.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
      a.k = cache.keys();
      a.v = cache.values();
      a.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);
      a.v_sum = cache.v_sum();
      ASSERT_TRUE(decode(a, o).ok());
      // The dequantised cache as float rows.
      for (Index t = 0; t <= s; ++t)
        for (Index g = 0; g < Hkv; ++g) {
          ASSERT_TRUE(dequantize_row_q8_0(a.k.row(t, g), &kd[std::size_t((t * Hkv + g) * d)], d).ok());
          ASSERT_TRUE(dequantize_row_q8_0(a.v.row(t, g), &vd[std::size_t((t * Hkv + g) * d)], d).ok());
        }
      AttentionArgs<float> f;
      f.q = a.q;
      f.k = HeadsView<const float>::token_major(kd.data(), s + 1, Hkv, d);
      f.v = HeadsView<const float>::token_major(vd.data(), s + 1, Hkv, d);
      f.out = a.out;
      AttentionOptions of = o;
      of.vbar = VbarSource::kSumCache;  // the oracle sums the dequantised V itself
      const reference::Result ref = reference::attention(f, of);
      ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
      EXPECT_TRUE(outputs_close(ref, a.out, 2e-5)) << "step " << s;
      const reference::Result ref_q8 = reference::attention(a, o);
      ASSERT_TRUE(ref_q8.status.ok()) << ref_q8.status.to_string();
      EXPECT_TRUE(outputs_close(ref_q8, a.out, 2e-5)) << "step " << s;
    }
  }
}

TEST(KvCacheQ8_0, HeadDimNotAMultipleOf32IsAClearError) {
  KvCacheOptions co;
  co.num_kv_heads = 2;
  co.head_dim = 8;
  co.capacity = 4;
  KvCache<BlockQ8_0> cache(co);
  const Status& st = cache.status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("q8_0"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("multiple of 32"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("head_dim 8"), std::string::npos) << st.message();
  EXPECT_EQ(KvCache<BlockQ8_0>::validate(co).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.capacity(), 0);
  std::vector<float> rows(2 * 8, 1.0f);
  const Status a = cache.append(HeadsView<const float>::token_major(rows.data(), 1, 2, 8),
                                HeadsView<const float>::token_major(rows.data(), 1, 2, 8));
  EXPECT_EQ(a.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.message(), st.message());
  EXPECT_EQ(cache.size(), 0);
  EXPECT_EQ(cache.keys().tokens, 0);
  // The same options are fine for a float cache; a negative size is not, for any type.
  EXPECT_TRUE(KvCache<float>(co).status().ok());
  co.capacity = -1;
  EXPECT_EQ(KvCache<float>(co).status().code(), StatusCode::kInvalidArgument);
  // RunningVSum of q8_0 rows: the same rule.
  RunningVSum<BlockQ8_0> sum(1, 8);
  std::vector<BlockQ8_0> blk(1);
  const Status r = sum.add(HeadsView<const BlockQ8_0>{blk.data(), 1, 1, 8, 1, 1});
  EXPECT_EQ(r.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.message().find("multiple of 32"), std::string::npos) << r.message();
}

// quantize.hpp: a block holding a non-finite value reads back as NaN (the whole block), the
// other blocks of the row are unaffected; the running sum of such a V row becomes NaN there.
TEST(KvCacheQ8_0, NonFiniteValuesGiveNanBlocks) {
  const Index d = 64;
  KvCacheOptions co;
  co.num_kv_heads = 1;
  co.head_dim = d;
  co.capacity = 4;
  KvCache<BlockQ8_0> cache(co);
  std::vector<float> k(d, 0.5f), v(d, 0.25f);
  k[3] = std::numeric_limits<float>::quiet_NaN();
  v[40] = std::numeric_limits<float>::infinity();
  for (int i = 0; i < 2; ++i)
    ASSERT_TRUE(cache
                    .append(HeadsView<const float>::token_major(k.data(), 1, 1, d),
                            HeadsView<const float>::token_major(v.data(), 1, 1, d))
                    .ok());
  for (Index i = 0; i < d; ++i) {
    EXPECT_EQ(std::isnan(value_at(cache.keys().row(0, 0), i)), i < 32) << i;
    EXPECT_EQ(std::isnan(value_at(cache.values().row(0, 0), i)), i >= 32) << i;
    EXPECT_EQ(std::isnan(cache.v_sum()[i]), i >= 32) << i;
  }
}

}  // namespace
