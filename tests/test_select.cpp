// detail/select.hpp and the SIMD primitives: exact top-k with ties to the lower index, k-th
// largest, strict threshold compaction, first argmax. Compared with brute force (stable sort) on
// seeded random rows, on every SIMD path the machine runs.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "isa_util.hpp"
#include "toptheta/detail/select.hpp"

namespace {

using toptheta::Index;
namespace detail = toptheta::detail;

template <class Acc>
std::vector<std::int32_t> brute_topk(const std::vector<Acc>& a, Index k) {
  std::vector<std::int32_t> idx(a.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::int32_t x, std::int32_t y) { return a[x] > a[y]; });
  idx.resize(std::size_t(k));
  std::sort(idx.begin(), idx.end());
  return idx;
}

template <class Acc>
std::vector<std::int32_t> run_topk(const std::vector<Acc>& a, Index k, Acc* kth, Acc* next) {
  std::vector<std::int32_t> result;
  Acc k0 = 0, n0 = 0;
  bool first = true;
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    std::vector<Acc> scratch(a.size());
    std::vector<std::int32_t> out(a.size(), -1);
    const Index n = detail::select_topk<Ops>(a.data(), Index(a.size()), k, scratch.data(),
                                             out.data(), kth, next);
    out.resize(std::size_t(n));
    if (first) {
      result = out, k0 = *kth, n0 = *next, first = false;
    } else {  // every path selects the same keys
      EXPECT_EQ(out, result);
      EXPECT_EQ(*kth, k0);
      EXPECT_EQ(*next, n0);
    }
  });
  return result;
}

/// indices_above on every path; all paths agree.
template <class Acc>
Index select_above(const Acc* a, Index L, Acc theta, std::int32_t* out) {
  Index count = -1;
  std::vector<std::int32_t> first;
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    std::vector<std::int32_t> buf(std::size_t(L) + 1, -7);
    const Index n = Ops::indices_above(a, L, theta, buf.data());
    EXPECT_EQ(buf[std::size_t(L)], -7) << "wrote past L";
    if (count < 0) {
      count = n;
      first.assign(buf.begin(), buf.begin() + n);
    } else {
      EXPECT_EQ(n, count);
      EXPECT_TRUE(std::equal(first.begin(), first.end(), buf.begin()));
    }
    EXPECT_EQ(Ops::count_above(a, L, theta), n);
  });
  std::copy(first.begin(), first.end(), out);
  return count;
}

TEST(SelectTopk, AllEqualKeepsTheLowestIndices) {
  const std::vector<float> a(10, 0.5f);
  for (Index k = 1; k <= 10; ++k) {
    float kth, next;
    const auto got = run_topk(a, k, &kth, &next);
    std::vector<std::int32_t> want(static_cast<std::size_t>(k));
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(got, want) << "k=" << k;
    EXPECT_EQ(kth, 0.5f);
    if (k < 10)
      EXPECT_EQ(next, 0.5f);
    else
      EXPECT_EQ(next, -std::numeric_limits<float>::infinity());
  }
}

TEST(SelectTopk, TiesAtTheBoundaryGoToTheLowerIndex) {
  //                          0  1  2  3  4  5  6  7
  const std::vector<float> a{1, 3, 2, 3, 2, 2, 0, 2};
  float kth, next;
  EXPECT_EQ(run_topk(a, 3, &kth, &next), (std::vector<std::int32_t>{1, 2, 3}));
  EXPECT_EQ(kth, 2.0f);
  EXPECT_EQ(next, 2.0f);
  EXPECT_EQ(run_topk(a, 4, &kth, &next), (std::vector<std::int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(run_topk(a, 2, &kth, &next), (std::vector<std::int32_t>{1, 3}));
  EXPECT_EQ(kth, 3.0f);
  EXPECT_EQ(next, 2.0f);
  EXPECT_EQ(run_topk(a, 5, &kth, &next), (std::vector<std::int32_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(run_topk(a, 6, &kth, &next), (std::vector<std::int32_t>{1, 2, 3, 4, 5, 7}));
  EXPECT_EQ(kth, 2.0f);
  EXPECT_EQ(next, 1.0f);
  EXPECT_EQ(run_topk(a, 7, &kth, &next), (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 7}));
  EXPECT_EQ(kth, 1.0f);
  EXPECT_EQ(next, 0.0f);
}

TEST(SelectTopk, NegativeInfinityEntries) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> a{ninf, 1, ninf, ninf, 0};
  float kth, next;
  EXPECT_EQ(run_topk(a, 2, &kth, &next), (std::vector<std::int32_t>{1, 4}));
  EXPECT_EQ(next, ninf);
  // More than the finite entries: -inf ones are taken lowest index first.
  EXPECT_EQ(run_topk(a, 3, &kth, &next), (std::vector<std::int32_t>{0, 1, 4}));
  EXPECT_EQ(kth, ninf);
}

TEST(SelectTopk, SingleElement) {
  float kth, next;
  EXPECT_EQ(run_topk(std::vector<float>{7.0f}, 1, &kth, &next), (std::vector<std::int32_t>{0}));
  EXPECT_EQ(kth, 7.0f);
  EXPECT_EQ(next, -std::numeric_limits<float>::infinity());
}

template <class Acc>
void random_topk_case(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (Index L : {1, 2, 3, 17, 64, 255, 1024}) {
    for (int levels : {2, 1000}) {  // few distinct values (many ties) and nearly distinct
      std::uniform_int_distribution<int> ud(0, levels);
      std::vector<Acc> a(static_cast<std::size_t>(L));
      for (auto& x : a) x = Acc(ud(rng)) / Acc(7);
      for (Index k : {Index(1), Index(4), Index(64), L}) {
        if (k > L) continue;
        Acc kth, next;
        const auto got = run_topk(a, k, &kth, &next);
        const auto want = brute_topk(a, k);
        ASSERT_EQ(got, want) << "L=" << L << " k=" << k << " levels=" << levels;
        std::vector<Acc> sorted = a;
        std::sort(sorted.begin(), sorted.end(), std::greater<Acc>());
        EXPECT_EQ(kth, sorted[std::size_t(k - 1)]);
        EXPECT_EQ(next, k < L ? sorted[std::size_t(k)] : -std::numeric_limits<Acc>::infinity());
        std::vector<Acc> scratch(a.size());
        EXPECT_EQ(detail::kth_largest(a.data(), L, k, scratch.data()), sorted[std::size_t(k - 1)]);
      }
    }
  }
}

TEST(SelectTopk, RandomFloatMatchesStableSort) { random_topk_case<float>(1); }
TEST(SelectTopk, RandomDoubleMatchesStableSort) { random_topk_case<double>(2); }

TEST(KthLargest, Duplicates) {
  const std::vector<double> a{5, 1, 5, 3, 3, 3, 0};
  std::vector<double> scratch(a.size(), -1);
  const double want[] = {5, 5, 3, 3, 3, 1, 0};
  for (Index k = 1; k <= 7; ++k)
    EXPECT_EQ(detail::kth_largest(a.data(), 7, k, scratch.data()), want[k - 1]) << "k=" << k;
  // The input is not modified.
  EXPECT_EQ(a, (std::vector<double>{5, 1, 5, 3, 3, 3, 0}));
}

TEST(SelectAbove, IsStrictAndAscending) {
  const std::vector<float> a{0.5f, 1.0f, 2.0f, 1.0f, -3.0f, 1.5f};
  std::vector<std::int32_t> out(a.size() + 1, -7);
  Index n = select_above(a.data(), Index(a.size()), 1.0f, out.data());
  ASSERT_EQ(n, 2);
  EXPECT_EQ(out[0], 2);
  EXPECT_EQ(out[1], 5);
  n = select_above(a.data(), Index(a.size()), 2.0f, out.data());
  EXPECT_EQ(n, 0);
  n = select_above(a.data(), Index(a.size()), -std::numeric_limits<float>::infinity(),
                           out.data());
  ASSERT_EQ(n, 6);
  for (Index i = 0; i < 6; ++i) EXPECT_EQ(out[std::size_t(i)], i);
  EXPECT_EQ(out[6], -7) << "wrote past L";
}

TEST(SelectAbove, NegativeInfinityAndNaNNeverPass) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const std::vector<float> a{ninf, std::numeric_limits<float>::quiet_NaN(), 0.0f};
  std::vector<std::int32_t> out(3);
  const Index n = select_above(a.data(), 3, ninf, out.data());
  ASSERT_EQ(n, 1);
  EXPECT_EQ(out[0], 2);
}

TEST(SelectAbove, RandomMatchesBruteForce) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> nd;
  for (Index L : {1, 17, 1024}) {
    std::vector<double> a(static_cast<std::size_t>(L));
    for (auto& x : a) x = nd(rng);
    for (double theta : {-10.0, -0.3, 0.0, 0.7, 10.0}) {
      std::vector<std::int32_t> out(static_cast<std::size_t>(L));
      const Index n = select_above(a.data(), L, theta, out.data());
      std::vector<std::int32_t> want;
      for (Index j = 0; j < L; ++j)
        if (a[std::size_t(j)] > theta) want.push_back(std::int32_t(j));
      out.resize(std::size_t(n));
      EXPECT_EQ(out, want) << "L=" << L << " theta=" << theta;
    }
  }
}

TEST(ArgmaxFirst, TiesGoToTheFirst) {
  EXPECT_EQ(detail::argmax_first(std::vector<float>{1, 3, 3, 2}.data(), 4), 1);
  EXPECT_EQ(detail::argmax_first(std::vector<float>{4, 4, 4}.data(), 3), 0);
  EXPECT_EQ(detail::argmax_first(std::vector<float>{0}.data(), 1), 0);
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(detail::argmax_first(std::vector<float>{ninf, ninf, -1e30f}.data(), 3), 2);
}

}  // namespace
