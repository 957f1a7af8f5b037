// Rounding of the SIMD primitives (detail/simd_kernels.inl, detail/vec_*.hpp): a value's bits
// depend only on its own inputs, never on where in a tile it is computed or which micro-kernel
// the tile shape routes it through, on every SIMD path the machine runs and for both
// accumulation types. Each multiply-add is fused exactly when the path's code says so (the SIMD
// float vectors and the one-lane double of the AVX2 / AVX-512 paths always; the scalar path
// when the build targets FMA hardware), never where the compiler chooses to contract a * b + c.
// The exact-k guarantee of calibrated thresholds and the bit-identity of the prefill walks rely
// on this (semantics.md §11). Run in every build configuration: the portable one (no -mfma, but
// FMA enabled inside the AVX functions) is where a compiler's choice would differ.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#include "isa_util.hpp"

namespace {

using toptheta::Index;
using toptheta::Isa;
namespace detail = toptheta::detail;

/// True when path `isa` rounds a multiply-add of Acc once.
bool fused(Isa isa) { return isa != Isa::kScalar || detail::kBuildTargetsFma; }

template <class Acc>
Acc chain_step(bool fuse, Acc a, Acc b, Acc c) {
  return fuse ? detail::mul_add<true>(a, b, c) : detail::mul_add<false>(a, b, c);
}

template <class Acc>
bool same_bits(Acc a, Acc b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

template <class Acc>
std::vector<Acc> random_values(std::mt19937_64& rng, std::size_t n) {
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<Acc> v(n);
  for (Acc& x : v) x = Acc(nd(rng));
  return v;
}

/// Head dims `extra`, then v * W and v * W + 1 for v = 1 .. vmax: every column-vector count
/// up to vmax of a path of width W, whole and with a partial last vector.
std::vector<Index> column_dims(Index W, Index vmax, std::vector<Index> extra) {
  for (Index v = 1; v <= vmax; ++v) extra.insert(extra.end(), {v * W, v * W + 1});
  return extra;
}

/// Q K^T tiles (qk_tile): every score equals the multiply-add chain over d in index order, for
/// tile widths that route it through every query-vector block the path uses (qk_keys<4>, <2>,
/// <1>, as its registers allow) and key counts that route it through the full key block and
/// each remainder block (qk_micro<r> for every r below it); and one score computed alone (a tile
/// of one vector of rows and one key) has the same bits.
template <class Acc>
void qk_scores_do_not_depend_on_the_tile_position() {
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    constexpr Index W = Ops::template Vec<Acc>::W;
    const bool fuse = fused(Ops::kIsa);
    std::mt19937_64 rng(0x5eedull + sizeof(Acc));
    for (Index d : {Index(1), Index(5), Index(17), Index(64)})
      for (Index n = 1; n <= 13; ++n) {
        SCOPED_TRACE("d=" + std::to_string(d) + " n=" + std::to_string(n));
        const Index Mp = 7 * W;  // 4W + 2W + W (or 2W + 2W + 2W + W): every query block
        const std::vector<Acc> Qt = random_values<Acc>(rng, std::size_t(d * Mp));
        const std::vector<Acc> K = random_values<Acc>(rng, std::size_t(n * d));
        std::vector<Acc> St(std::size_t(n * Mp));
        Ops::qk_tile(Qt.data(), Mp, d, K.data(), d, n, St.data());
        for (Index u = 0; u < n; ++u)
          for (Index m = 0; m < Mp; ++m) {
            Acc want = 0;
            for (Index i = 0; i < d; ++i)
              want = chain_step(fuse, K[u * d + i], Qt[i * Mp + m], want);
            ASSERT_TRUE(same_bits(want, St[u * Mp + m]))
                << "key " << u << " row " << m << ": " << St[u * Mp + m] << " vs chain " << want;
          }
        // One vector of rows against one key, through qk_keys<1> and the single-key kernel.
        for (Index m0 = 0; m0 < Mp; m0 += W)
          for (Index u = 0; u < n; ++u) {
            std::vector<Acc> q(std::size_t(d * W));
            for (Index i = 0; i < d; ++i)
              for (Index l = 0; l < W; ++l) q[i * W + l] = Qt[i * Mp + m0 + l];
            std::vector<Acc> s(static_cast<std::size_t>(W));
            Ops::qk_tile(q.data(), W, d, K.data() + u * d, d, 1, s.data());
            for (Index l = 0; l < W; ++l)
              ASSERT_TRUE(same_bits(s[l], St[u * Mp + m0 + l])) << "key " << u << " row " << m0 + l;
          }
      }
  });
}

/// P V tiles (pv_tile): every output element equals its initial value followed by the
/// multiply-add chain over the keys in order, whether its row goes through the full row block
/// (4 or 6 rows) or a remainder block of any smaller row count, for head dims that use every
/// column-vector count up to the path's block (at most 8 vectors, whole and with a partial last
/// vector) and more than one block.
template <class Acc>
void pv_outputs_do_not_depend_on_the_tile_position() {
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    constexpr Index W = Ops::template Vec<Acc>::W;
    const bool fuse = fused(Ops::kIsa);
    std::mt19937_64 rng(0xb00cull + sizeof(Acc));
    for (Index d : column_dims(W, 8, {1, 100}))
      for (Index M = 1; M <= 13; ++M) {
        SCOPED_TRACE("d=" + std::to_string(d) + " M=" + std::to_string(M));
        const Index n = 9;
        const Index Mp = (M + W - 1) / W * W;
        const Index ldv = (d + W - 1) / W * W;
        const std::vector<Acc> Pt = random_values<Acc>(rng, std::size_t(n * Mp));
        const std::vector<Acc> Vf = random_values<Acc>(rng, std::size_t(n * ldv));
        const std::vector<Acc> O0 = random_values<Acc>(rng, std::size_t(M * d));
        std::vector<Acc> O = O0;
        Ops::pv_tile(O.data(), d, M, d, Pt.data(), Mp, Vf.data(), ldv, n);
        for (Index m = 0; m < M; ++m) {
          std::vector<Acc> row(O0.begin() + m * d, O0.begin() + (m + 1) * d);
          Ops::pv_tile(row.data(), d, 1, d, Pt.data() + m, Mp, Vf.data(), ldv, n);
          for (Index c = 0; c < d; ++c) {
            Acc want = O0[m * d + c];
            for (Index u = 0; u < n; ++u)
              want = chain_step(fuse, Pt[u * Mp + m], Vf[u * ldv + c], want);
            ASSERT_TRUE(same_bits(want, O[m * d + c])) << "row " << m << " column " << c;
            ASSERT_TRUE(same_bits(want, row[c])) << "row " << m << " alone, column " << c;
          }
        }
      }
  });
}

/// Decode dot products (dot_rows): every score equals the same head and key computed alone
/// (G = 1, n = 1), for group sizes and key counts that route it through every head batch the
/// path uses (4 heads and the 3, 2 or 1 left over) and every key batch (KB keys for each head
/// count, the 2 + 2 split of KB + 1 = 4 keys, the batches of 2 and 1 left over), head dims with
/// and without a partial last vector, and output strides wider than n.
template <class Acc>
void decode_dots_do_not_depend_on_the_batch() {
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    constexpr Index W = Ops::template Vec<Acc>::W;
    std::mt19937_64 rng(0xd07ull + sizeof(Acc));
    for (Index d : {Index(1), Index(5), W, 4 * W + 3, Index(128)})
      for (Index G = 1; G <= 9; ++G)
        for (Index n = 1; n <= 17; ++n) {
          SCOPED_TRACE("d=" + std::to_string(d) + " G=" + std::to_string(G) +
                       " n=" + std::to_string(n));
          const std::vector<Acc> q = random_values<Acc>(rng, std::size_t(G * d));
          const std::vector<Acc> K = random_values<Acc>(rng, std::size_t(n * d));
          std::vector<const Acc*> keys(static_cast<std::size_t>(n));
          for (Index u = 0; u < n; ++u) keys[std::size_t(u)] = K.data() + u * d;
          const Index stride = n + 3;
          const Acc sentinel = Acc(-7.25);
          std::vector<Acc> out(std::size_t(G * stride), sentinel);
          Ops::dot_rows(q.data(), G, d, keys.data(), n, out.data(), stride);
          for (Index h = 0; h < G; ++h) {
            for (Index u = 0; u < n; ++u) {
              Acc alone = 0;
              Ops::dot_rows(q.data() + h * d, 1, d, keys.data() + u, 1, &alone, 1);
              ASSERT_TRUE(same_bits(alone, out[std::size_t(h * stride + u)]))
                  << "head " << h << " key " << u << ": " << out[std::size_t(h * stride + u)]
                  << " vs alone " << alone;
              Acc exact = 0;
              for (Index i = 0; i < d; ++i) exact += q[std::size_t(h * d + i)] * K[std::size_t(u * d + i)];
              ASSERT_NEAR(double(alone), double(exact), 1e-4 * double(d)) << "head " << h << " key " << u;
            }
            for (Index u = n; u < stride; ++u)
              ASSERT_TRUE(same_bits(sentinel, out[std::size_t(h * stride + u)])) << "wrote past n";
          }
        }
  });
}

/// Decode value sums (accumulate_rows): every output element equals its initial value followed
/// by the multiply-add chain over the rows in order, skipping exactly the (row, head) pairs of
/// weight 0, for group sizes that use every head block (4, 3, 2, 1), head dims that use every
/// column-vector count (whole and with a partial last vector) and both weight layouts the walks
/// pass (w_u = 1: one run per head; w_h = 1: one run per row). With no zero weight the call runs
/// the blocks without the per-pair test; with one (a single 0 or -0 anywhere, or several) it
/// runs the skipping blocks: the same bits, and the inf and NaN of a row of weight 0 never reach
/// that head's sum (while they do reach the other heads').
template <class Acc>
void decode_value_sums_do_not_depend_on_the_block() {
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    constexpr Index W = Ops::template Vec<Acc>::W;
    const bool fuse = fused(Ops::kIsa);
    std::mt19937_64 rng(0xacc5ull + sizeof(Acc));
    for (Index d : column_dims(W, 7, {1, 100, 128}))
      for (Index G = 1; G <= 9; ++G)
        for (int zeros = 0; zeros < 4; ++zeros)
          for (int by_row = 0; by_row < 2; ++by_row) {
            SCOPED_TRACE("d=" + std::to_string(d) + " G=" + std::to_string(G) + " zeros=" +
                         std::to_string(zeros) + (by_row ? " w_h=1" : " w_u=1"));
            const Index n = 11;
            std::vector<Acc> rows_data = random_values<Acc>(rng, std::size_t(n * d));
            std::vector<Acc> w = random_values<Acc>(rng, std::size_t(n * G));
            const Index w_u = by_row ? G : 1, w_h = by_row ? 1 : n;
            // The one row whose weight is zero for some head (`zero_head`, -1: none) holds inf
            // and NaN: it must not reach that head's sum, and does reach the others'.
            Index zero_row = -1, zero_head = -1;
            const Acc inf = std::numeric_limits<Acc>::infinity();
            const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
            if (zeros == 1) {
              // Row 2 weighs 0 for head 0; row 7 weighs 0 for every head.
              zero_row = 2;
              zero_head = 0;
              w[std::size_t(2 * w_u)] = 0;
              for (Index h = 0; h < G; ++h) w[std::size_t(7 * w_u + h * w_h)] = 0;
              rows_data[std::size_t(7 * d)] = nan;
            } else if (zeros == 2) {
              // A single zero, for the last head of row 9 (past the first vector of a head's
              // run of weights when w_u = 1: the check's scalar tail on AVX2).
              zero_row = 9;
              zero_head = G - 1;
              w[std::size_t(9 * w_u + (G - 1) * w_h)] = 0;
            } else if (zeros == 3) {
              // A single -0, for head G / 2 of row 4.
              zero_row = 4;
              zero_head = G / 2;
              w[std::size_t(4 * w_u + (G / 2) * w_h)] = -Acc(0);
            }
            if (zero_row >= 0) {
              rows_data[std::size_t(zero_row * d)] = inf;
              rows_data[std::size_t(zero_row * d + d - 1)] = nan;
            }
            std::vector<const Acc*> rows(static_cast<std::size_t>(n));
            for (Index u = 0; u < n; ++u) rows[std::size_t(u)] = rows_data.data() + u * d;
            const std::vector<Acc> acc0 = random_values<Acc>(rng, std::size_t(G * d));
            std::vector<Acc> acc = acc0;
            Ops::accumulate_rows(acc.data(), G, d, rows.data(), w.data(), w_u, w_h, n);
            for (Index h = 0; h < G; ++h)
              for (Index c = 0; c < d; ++c) {
                Acc want = acc0[std::size_t(h * d + c)];
                for (Index u = 0; u < n; ++u) {
                  const Acc wv = w[std::size_t(u * w_u + h * w_h)];
                  if (wv != Acc(0)) want = chain_step(fuse, wv, rows_data[std::size_t(u * d + c)], want);
                }
                ASSERT_TRUE(same_bits(want, acc[std::size_t(h * d + c)]))
                    << "head " << h << " column " << c << ": " << acc[std::size_t(h * d + c)]
                    << " vs chain " << want;
                // The reference itself: the zero pair's row kept out of its head only.
                if (zero_head >= 0 && (c == 0 || c == d - 1)) {
                  ASSERT_EQ(h != zero_head, !std::isfinite(double(want)))
                      << "head " << h << " column " << c;
                }
              }
          }
  });
}

/// Prefill key-by-key gathers (scatter_row: one V row into several outputs): after a sequence
/// of calls, every output element equals its initial value followed by the multiply-add chain
/// over the rows it was given, in call order, for head dims that use every column-vector count
/// (whole and with a partial last vector) and 0 to 9 outputs per call (all 9 for the first row);
/// an output a call does not name is left as it was (bit for bit), and a weight of 0 given to a
/// call is added (0 x row).
template <class Acc>
void prefill_scatter_is_the_chain_in_call_order() {
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    constexpr Index W = Ops::template Vec<Acc>::W;
    const bool fuse = fused(Ops::kIsa);
    std::mt19937_64 rng(0x5ca7ull + sizeof(Acc));
    const Index n_out = 9, n_rows = 13;
    for (Index d : column_dims(W, 9, {1, 100, 128})) {
      SCOPED_TRACE("d=" + std::to_string(d));
      const std::vector<Acc> rows = random_values<Acc>(rng, std::size_t(n_rows * d));
      const std::vector<Acc> out0 = random_values<Acc>(rng, std::size_t(n_out * d));
      std::vector<Acc> out = out0, want = out0;
      std::uniform_int_distribution<int> coin(0, 1);
      for (Index u = 0; u < n_rows; ++u) {
        // Row u goes to a random subset of the outputs (every output for row 0), in index
        // order, with random weights; one weight of 0 on row 5.
        std::vector<Acc*> ptrs;
        std::vector<Acc> wts;
        for (Index i = 0; i < n_out; ++i) {
          if (u > 0 && coin(rng) == 0) continue;
          ptrs.push_back(out.data() + i * d);
          const Acc wv = (u == 5 && ptrs.size() == 1) ? Acc(0) : random_values<Acc>(rng, 1)[0];
          wts.push_back(wv);
          for (Index c = 0; c < d; ++c) {
            Acc& x = want[std::size_t(i * d + c)];
            x = chain_step(fuse, wv, rows[std::size_t(u * d + c)], x);
          }
        }
        Ops::scatter_row(ptrs.data(), wts.data(), Index(ptrs.size()), rows.data() + u * d, d);
      }
      for (Index i = 0; i < n_out; ++i)
        for (Index c = 0; c < d; ++c)
          ASSERT_TRUE(same_bits(want[std::size_t(i * d + c)], out[std::size_t(i * d + c)]))
              << "output " << i << " column " << c << ": " << out[std::size_t(i * d + c)]
              << " vs chain " << want[std::size_t(i * d + c)];
    }
  });
}

TEST(Rounding, PrefillScatterIsTheChainInCallOrderFloat) {
  prefill_scatter_is_the_chain_in_call_order<float>();
}
TEST(Rounding, PrefillScatterIsTheChainInCallOrderDouble) {
  prefill_scatter_is_the_chain_in_call_order<double>();
}

TEST(Rounding, DecodeDotsDoNotDependOnTheBatchFloat) { decode_dots_do_not_depend_on_the_batch<float>(); }
TEST(Rounding, DecodeDotsDoNotDependOnTheBatchDouble) {
  decode_dots_do_not_depend_on_the_batch<double>();
}
TEST(Rounding, DecodeValueSumsDoNotDependOnTheBlockFloat) {
  decode_value_sums_do_not_depend_on_the_block<float>();
}
TEST(Rounding, DecodeValueSumsDoNotDependOnTheBlockDouble) {
  decode_value_sums_do_not_depend_on_the_block<double>();
}

TEST(Rounding, QkScoresDoNotDependOnTheTilePositionFloat) {
  qk_scores_do_not_depend_on_the_tile_position<float>();
}
TEST(Rounding, QkScoresDoNotDependOnTheTilePositionDouble) {
  qk_scores_do_not_depend_on_the_tile_position<double>();
}
TEST(Rounding, PvOutputsDoNotDependOnTheTilePositionFloat) {
  pv_outputs_do_not_depend_on_the_tile_position<float>();
}
TEST(Rounding, PvOutputsDoNotDependOnTheTilePositionDouble) {
  pv_outputs_do_not_depend_on_the_tile_position<double>();
}

/// exp of the float paths (exp_shifted with m = 0): the same bits as exp_poly with the path's
/// rounding, at any position in a row (vector body or tail), over the whole input range
/// including the clamps, -inf, +inf and NaN. So the scalar path of an FMA build and every SIMD
/// path give one exp, lane for lane.
TEST(Rounding, ExpIsThePolynomialOnEveryPath) {
  std::vector<float> x;
  for (float v = -90.0f; v <= 90.0f; v += 0.173f) x.push_back(v);
  for (float v : {-87.3f, std::nextafter(-87.3f, 0.0f), std::nextafter(-87.3f, -100.0f), 88.7f,
                  std::nextafter(88.7f, 100.0f), 0.0f, -0.0f, 1e-30f, -1e-30f,
                  std::numeric_limits<float>::denorm_min(), 0.34657359f, -0.34657359f,
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN()})
    x.push_back(v);
  std::mt19937_64 rng(0xe4bull);
  std::uniform_real_distribution<float> ud(-88.0f, 89.0f);
  for (int i = 0; i < 4096; ++i) x.push_back(ud(rng));
  x.push_back(0.5f);  // an odd count: the last call below ends in a tail
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    const bool fuse = fused(Ops::kIsa);
    std::vector<float> out(x.size());
    Ops::exp_shifted(x.data(), Index(x.size()), 0.0f, out.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float want = fuse ? detail::exp_poly<true>(x[i]) : detail::exp_poly<false>(x[i]);
      ASSERT_TRUE(same_bits(want, out[i])) << "exp(" << x[i] << ") = " << out[i] << " vs " << want;
    }
    // The same values one at a time (always the tail of a one-element row).
    for (std::size_t i = 0; i < x.size(); i += 37) {
      float one = 0;
      Ops::exp_shifted(&x[i], 1, 0.0f, &one);
      ASSERT_TRUE(same_bits(out[i], one)) << "exp(" << x[i] << ") alone";
    }
  });
}

/// Half and bfloat16 loads (ld and ld_n of simd_kernels.inl, through convert_row): every value
/// is the storage type's own conversion, for every row length 1..40 (each length of a partial
/// last vector, after whole ones or alone), subnormal, infinite and NaN values included. Each
/// row ends where a readable page does, before an unreadable one: a load that read at or past
/// the row's end would fault.
template <class T>
void half_loads_are_the_scalar_values() {
  const long page = sysconf(_SC_PAGESIZE);
  ASSERT_GT(page, 0);
  void* mem = mmap(nullptr, std::size_t(2 * page), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(mem, MAP_FAILED);
  char* base = static_cast<char*>(mem);
  ASSERT_EQ(mprotect(base + page, std::size_t(page), PROT_NONE), 0);
  T* end = reinterpret_cast<T*>(base + page);
  std::mt19937_64 rng(0x4a1full + sizeof(T));
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const float special[] = {6.0e-8f, -0.0f, std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN(), 1.0e-40f, 60000.0f};
  constexpr float kUntouched = 12345.0f;
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    for (Index n = 1; n <= 40; ++n) {
      T* row = end - n;
      for (Index i = 0; i < n; ++i)
        row[i] = T(i % 5 == 3 ? special[std::size_t(i / 5) % std::size(special)] : nd(rng));
      std::vector<float> out(std::size_t(n) + 1, kUntouched);
      Ops::convert_row(static_cast<const T*>(row), n, out.data());
      for (Index l = 0; l < n; ++l) {
        const float want = float(row[l]);
        if (std::isnan(want)) {
          ASSERT_TRUE(std::isnan(out[std::size_t(l)])) << "n = " << n << ", value " << l;
        } else {
          ASSERT_TRUE(same_bits(want, out[std::size_t(l)]))
              << "n = " << n << ", value " << l << ": " << out[std::size_t(l)] << " vs " << want;
        }
      }
      ASSERT_EQ(out[std::size_t(n)], kUntouched) << "n = " << n << ": stored past n";
    }
  });
  munmap(mem, std::size_t(2 * page));
}

TEST(Rounding, HalfLoadsAreTheScalarValues) { half_loads_are_the_scalar_values<Eigen::half>(); }
TEST(Rounding, BFloat16LoadsAreTheScalarValues) {
  half_loads_are_the_scalar_values<Eigen::bfloat16>();
}

/// q8_0 loads (ld and ld_n of simd_kernels.inl, through convert_row: the test body is compiled
/// for the build's baseline and must not take a path's vectors by value): every value is d * q_i
/// (exact in float: an fp16 scale times an 8-bit integer), the bits of value_at (the scalar
/// definition), for rows of every length up to 5 blocks, so whole vectors at every offset and a
/// partial one of every length; nothing is stored past the row. Scales of both signs, a
/// subnormal, a large one, zero, and the extreme quantised values; on every path.
TEST(Rounding, Q8LoadsAreTheScalarValues) {
  using toptheta::BlockQ8_0;
  std::mt19937_64 rng(0x98ull);
  std::uniform_int_distribution<int> q(-128, 127);
  const float scales[] = {0.0123f, -3.5f, 6.0e-8f /* fp16 subnormal */, 60000.0f, 0.0f};
  std::vector<BlockQ8_0> row(std::size(scales));
  for (std::size_t b = 0; b < row.size(); ++b) {
    row[b].d = Eigen::half(scales[b]);
    for (int i = 0; i < 32; ++i) row[b].qs[i] = static_cast<std::int8_t>(q(rng));
    row[b].qs[0] = -128;
    row[b].qs[31] = 127;
  }
  const Index n_values = Index(row.size()) * 32;
  constexpr float kUntouched = 12345.0f;
  toptheta::testing::for_each_isa([&](auto ops) {
    using Ops = decltype(ops);
    std::vector<float> out(std::size_t(n_values) + 1);
    for (Index n = 1; n <= n_values; ++n) {
      std::fill(out.begin(), out.end(), kUntouched);
      ASSERT_TRUE(Ops::convert_row(row.data(), n, out.data())) << "n = " << n;
      for (Index l = 0; l < n; ++l)
        ASSERT_TRUE(same_bits(float(toptheta::value_at(row.data(), l)), out[std::size_t(l)]))
            << "n = " << n << ", value " << l << ": " << out[std::size_t(l)];
      for (Index l = n; l <= n_values; ++l)
        ASSERT_EQ(out[std::size_t(l)], kUntouched) << "n = " << n << ": stored at " << l;
    }
  });
}

}  // namespace
