// The running V sum (kv_cache.hpp): RunningVSum adds and removes rows at O(d) per token with
// clear errors; KvCache keeps the sum of the rows before its last append, exactly what
// AttentionArgs::v_sum means, through appends, truncations and clears; a decode and a prefill
// fed from a KvCache match the oracle with VMC and mean-V rows.

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/kv_cache.hpp"

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

}  // namespace
