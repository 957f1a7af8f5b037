// A workspace smaller than a call needs is rejected before a byte is written: not a byte of the
// workspace, of the caller's K/V cache, of the output, nor anything next to the workspace. Every
// entry point (decode, prefill), every mode, 1 and 2 threads, workspace sizes from 0 to need - 1
// (sampled), including the case that caught us: a workspace sized for L = 256 reused after the
// cache grew to 4096 and 16384 tokens. Under ASan (the dev preset) the exact-size heap
// allocation of the too-small workspace also catches any write past its end.
// max_workspace_size: equal to the largest workspace_size of every call within its limits (by
// brute force over every cache length and query count), for every mode, contiguous and paged
// caches; one buffer of that size serves every call. The task interface's maxima
// (max_plan_decode_workspace_size, max_decode_batch_workspace_size,
// max_plan_prefill_workspace_size): equal to the largest plan of every batch or call within the
// limits, by brute force over every batch of up to 3 sequences.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/plan.hpp"

namespace {

using namespace toptheta;
using namespace toptheta::testing;

constexpr std::byte kPattern{0xA5};

struct ModeCase {
  const char* name;
  AttentionMode mode;
  Placement placement;
  SdcMode sdc;
  VmcMode vmc;
};

const ModeCase kModes[] = {
    {"dense", AttentionMode::kDense, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOff},
    {"topk", AttentionMode::kTopK, Placement::kPreSoftmax, SdcMode::kExact, VmcMode::kOn},
    {"toptheta-pre", AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kExact,
     VmcMode::kOn},
    {"toptheta-post", AttentionMode::kTopTheta, Placement::kPostSoftmax, SdcMode::kNone,
     VmcMode::kOn},
    {"calibrate", AttentionMode::kCalibrate, Placement::kPostSoftmax, SdcMode::kNone,
     VmcMode::kOff},
};

/// Options of mode `mc` (`pre` / `post`: the Top-θ table of each placement). The kernel sums V
/// (VbarSource::kSumCache), so no v_sum is read.
AttentionOptions mode_options(const ModeCase& mc, int threads, Index k, const ThresholdTable& pre,
                              const ThresholdTable& post, Calibrator& cal) {
  AttentionOptions o;
  o.mode = mc.mode;
  o.k = k;
  o.placement = mc.placement;
  o.sdc = mc.sdc;
  o.vmc = mc.vmc;
  o.vbar = VbarSource::kSumCache;
  o.thresholds = mc.placement == Placement::kPreSoftmax ? &pre : &post;
  o.calibrator = &cal;
  o.threads = threads;
  return o;
}

/// Workspace sizes to try below `need`: the edges and a seeded sample in between.
std::vector<std::size_t> sizes_below(std::size_t need, std::uint64_t seed) {
  std::vector<std::size_t> s = {0, 1, 63, 64, need / 2, need - 64, need - 1};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::size_t> u(0, need - 1);
  for (int i = 0; i < 6; ++i) s.push_back(u(rng));
  s.erase(std::remove_if(s.begin(), s.end(), [&](std::size_t x) { return x >= need; }), s.end());
  std::sort(s.begin(), s.end());
  s.erase(std::unique(s.begin(), s.end()), s.end());
  return s;
}

template <class T>
std::vector<T> snapshot(const HeadsBuffer<T>& b) {
  return b.buf;
}
template <class T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Runs every mode with every sampled too-small workspace and checks the call fails, names the
/// size, and leaves the workspace, a guard zone after it, K, V and out untouched; then that
/// the exact size works.
template <class T>
void check_problem(Problem<T>& p, bool prefill_call, const char* what) {
  const AttentionArgs<T> args = p.args();
  Rng rng(11);
  ThetaPlan plan;
  const ThresholdTable pre = make_margin_table(p, Placement::kPreSoftmax, 8, plan, rng, 1);
  const ThresholdTable post = make_margin_table(p, Placement::kPostSoftmax, 8, plan, rng, 1);
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = p.spec.Hq;
  co.default_k = 8;
  Calibrator cal(co);
  const auto k0 = snapshot(p.k), v0 = snapshot(p.v);
  for (const ModeCase& mc : kModes)
    for (int threads : {1, 2}) {
      const AttentionOptions o = mode_options(mc, threads, 8, pre, post, cal);
      const std::size_t need =
          prefill_call ? workspace_size(args, o) : decode_workspace_size(args, o);
      EXPECT_LE(need, workspace_size(args, o));
      ASSERT_GT(need, 64u);
      for (std::size_t n : sizes_below(need, need)) {
        SCOPED_TRACE(std::string(what) + " " + mc.name + " threads " + std::to_string(threads) +
                     " workspace " + std::to_string(n) + " of " + std::to_string(need));
        p.clear_out();
        const auto out0 = snapshot(p.out);
        // Exact-size heap block (ASan reports any write past it) ...
        std::unique_ptr<std::byte[]> exact(new std::byte[std::max<std::size_t>(n, 1)]);
        std::fill_n(exact.get(), std::max<std::size_t>(n, 1), kPattern);
        Status s = prefill_call ? prefill(args, o, Workspace{exact.get(), n})
                                : decode(args, o, Workspace{exact.get(), n});
        ASSERT_FALSE(s.ok());
        EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
        // The message names what this call needs (workspace_size() covers decode and prefill
        // for T = 1, so it may be more): a size above the given one, at most workspace_size().
        const auto at = s.message().find("needs (");
        ASSERT_NE(at, std::string::npos) << s.message();
        const std::size_t named = std::stoull(s.message().substr(at + 7));
        EXPECT_GT(named, n) << s.message();
        EXPECT_LE(named, need) << s.message();
        EXPECT_NE(s.message().find("workspace"), std::string::npos) << s.message();
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(exact[i], kPattern) << "byte " << i;
        // ... and a block with a guard zone after the workspace (no ASan needed to see a write).
        std::vector<std::byte> guarded(n + 4096, kPattern);
        s = prefill_call ? prefill(args, o, Workspace{guarded.data(), n})
                         : decode(args, o, Workspace{guarded.data(), n});
        ASSERT_FALSE(s.ok());
        for (std::size_t i = 0; i < guarded.size(); ++i)
          ASSERT_EQ(guarded[i], kPattern) << "byte " << i << " of workspace + guard written";
        EXPECT_TRUE(same_bytes(snapshot(p.out), out0)) << "out written despite the error";
        EXPECT_TRUE(same_bytes(snapshot(p.k), k0)) << "K cache changed";
        EXPECT_TRUE(same_bytes(snapshot(p.v), v0)) << "V cache changed";
      }
      WorkspaceBuffer ws(need);
      EXPECT_TRUE((prefill_call ? prefill(args, o, ws.get(need)) : decode(args, o, ws.get(need)))
                      .ok())
          << what << " " << mc.name << " with the exact size";
    }
}

template <class T>
class WorkspaceBounds : public ::testing::Test {};
using StorageTypes = ::testing::Types<float, double, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(WorkspaceBounds, StorageTypes);

TYPED_TEST(WorkspaceBounds, DecodeEveryMode) {
  ProblemSpec sp;
  sp.T = 1;
  sp.P = 300;
  sp.Hq = 8;
  sp.Hkv = 2;
  sp.d = 32;
  auto p = make_problem<TypeParam>(sp);
  check_problem(p, false, "decode");
}

TYPED_TEST(WorkspaceBounds, PrefillEveryMode) {
  ProblemSpec sp;
  sp.T = 70;
  sp.P = 20;
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 16;
  auto p = make_problem<TypeParam>(sp);
  check_problem(p, true, "prefill");
}

// The reported failure: a workspace sized for a 256-token cache, reused after the cache grew.
// The workspace is the first bytes of a block laid out like an engine's arena, with the K/V
// cache right after it: the call must fail and leave the cache intact.
TEST(WorkspaceBoundsGrowth, SizedForShortCacheReusedAfterGrowth) {
  for (Index L : {Index(4096), Index(16384)})
    for (int threads : {1, 2})
      for (bool prefill_call : {false, true}) {
        SCOPED_TRACE("L " + std::to_string(L) + " threads " + std::to_string(threads) +
                     (prefill_call ? " prefill" : " decode"));
        const Index Hq = 8, Hkv = 2, d = 64, T = prefill_call ? 4 : 1;
        AttentionOptions o;
        o.mode = AttentionMode::kTopK;
        o.k = 16;
        o.threads = threads;
        // Sized for 256 tokens.
        std::vector<float> q(std::size_t(T * Hq * d), 0.25f), out(q.size(), -1.f);
        std::vector<float> k_small(std::size_t(256 * Hkv * d)), v_small(k_small.size());
        AttentionArgs<float> a;
        a.q = HeadsView<const float>::token_major(q.data(), T, Hq, d);
        a.out = HeadsView<float>::token_major(out.data(), T, Hq, d);
        a.k = HeadsView<const float>::token_major(k_small.data(), 256, Hkv, d);
        a.v = HeadsView<const float>::token_major(v_small.data(), 256, Hkv, d);
        const std::size_t small = workspace_size(a, o);
        ASSERT_GT(small, 0u);
        // One block: [workspace sized for 256 | K cache of L tokens | V cache of L tokens].
        const std::size_t cache_floats = std::size_t(L * Hkv * d);
        std::vector<float> block(small / sizeof(float) + 1 + 2 * cache_floats);
        std::byte* ws = reinterpret_cast<std::byte*>(block.data());
        float* kc = block.data() + small / sizeof(float) + 1;
        float* vc = kc + cache_floats;
        std::mt19937 rng(3);
        std::normal_distribution<float> nd;
        for (std::size_t i = 0; i < 2 * cache_floats; ++i) kc[i] = nd(rng);
        const std::vector<float> cache0(kc, kc + 2 * cache_floats);
        a.k = HeadsView<const float>::token_major(kc, L, Hkv, d);
        a.v = HeadsView<const float>::token_major(vc, L, Hkv, d);
        const Status s = prefill_call ? prefill(a, o, Workspace{ws, small})
                                      : decode(a, o, Workspace{ws, small});
        ASSERT_FALSE(s.ok());
        EXPECT_NE(s.message().find("workspace"), std::string::npos) << s.message();
        EXPECT_TRUE(std::equal(cache0.begin(), cache0.end(), kc)) << "KV cache overwritten";
        for (float x : out) ASSERT_EQ(x, -1.f) << "out written despite the error";
      }
}

// ------------------------------------------------------------------------------------------
// max_workspace_size
// ------------------------------------------------------------------------------------------

/// Options of mode `mc` with `threads` threads (the tables and calibrator outlive them).
struct ModeOptions {
  ThresholdTable pre, post;
  Calibrator cal;
  ModeOptions(Index Hq, Index k)
      : pre(constant_table(Hq, k, 0.5, false, Placement::kPreSoftmax)),
        post(constant_table(Hq, k, 0.01, false)),
        cal([&] {
          CalibrationOptions co;
          co.num_layers = 1;
          co.num_heads = Hq;
          co.default_k = k;
          return co;
        }()) {}
  AttentionOptions get(const ModeCase& mc, int threads, Index k) {
    return mode_options(mc, threads, k, pre, post, cal);
  }
};

/// `a` with a cache of L tokens and T query tokens (prefixes of its views).
AttentionArgs<float> with_lengths(AttentionArgs<float> a, Index L, Index T) {
  if (a.paged.empty())
    a.k.tokens = a.v.tokens = L;
  else
    a.paged.tokens = L;
  a.q.tokens = a.out.tokens = T;
  return a;
}

/// The largest workspace_size over every L <= Lmax and T <= min(Tmax, L), by brute force, and
/// (in `*worst`) where it is. Also checks what max_workspace_size relies on: for a fixed L, the
/// prefill size never decreases with T (from T = 2: the size at T = 1 also covers decode).
std::size_t largest_call(const AttentionArgs<float>& a, const AttentionOptions& o, Index Lmax,
                         Index Tmax, std::pair<Index, Index>* worst = nullptr) {
  std::size_t n = 0;
  for (Index L = 1; L <= Lmax; ++L) {
    std::size_t prev = 0;
    for (Index T = 1; T <= std::min(Tmax, L); ++T) {
      const std::size_t s = workspace_size(with_lengths(a, L, T), o);
      EXPECT_GT(s, 0u) << "L " << L << " T " << T;
      EXPECT_GE(s, prev) << "L " << L << ": T = " << T << " needs less than T = " << T - 1
                         << "; max_workspace_size measures only the largest T";
      if (T >= 2) prev = s;
      if (s > n && worst) *worst = {L, T};
      n = std::max(n, s);
    }
  }
  return n;
}

struct MaxCase {
  const char* name;
  Index Hq, Hkv, d, Lmax, Tmax;
  std::size_t post_score_tile_bytes;  // small: the post walk's block height changes with L
  bool paged = false;
  Layout layout = Layout::kTokenMajor;
  Isa isa = Isa::kAuto;
  bool per_head_stats = false;
  Index head_offset = 0, model_heads = 0, model_kv_heads = 0;  // a shard of a larger model
};

// G = 64: top-k and calibration take the stored prefill walk, whose rows per block fall from 64
// as L grows past 192; G = 128 takes it in every mode. A 64 KiB post-softmax score budget makes
// the post walk's block height and its stored-score switch change with L. Tmax = 7 stops below
// the flash walk's block height of G = 4 (16 rows), 20 above it.
const MaxCase kMaxCases[] = {
    {"G4", 8, 2, 32, 160, 160, std::size_t(4) << 20},
    {"G4-T7", 8, 2, 32, 160, 7, std::size_t(4) << 20},
    {"G4-small-post-budget", 8, 2, 16, 240, 20, std::size_t(64) << 10},
    {"G64", 64, 1, 16, 260, 260, std::size_t(4) << 20},
    {"G128", 128, 1, 16, 90, 90, std::size_t(4) << 20},
    {"G2-paged", 4, 2, 16, 150, 150, std::size_t(4) << 20, true},
    {"G4-head-major-scalar-stats", 8, 2, 16, 130, 130, std::size_t(4) << 20, false,
     Layout::kHeadMajor, Isa::kScalar, true},
    {"G2-shard", 4, 2, 16, 120, 40, std::size_t(4) << 20, false, Layout::kTokenMajor, Isa::kAuto,
     false, 4, 8, 4},
};

/// The problem of case `c`: its args (paged: blocks of 16 tokens in reverse order, the pools
/// kept alive here) and per-head statistics for its options.
struct CaseArgs {
  ProblemSpec sp;
  Problem<float> p;
  std::vector<float> kpool, vpool;
  std::vector<std::int32_t> table;
  AttentionArgs<float> a;
  AttentionStats stats;
  explicit CaseArgs(const MaxCase& c) : sp(spec_of(c)), p(make_problem<float>(sp)) {
    a = p.args();
    a.head_offset = c.head_offset;
    a.model_heads = c.model_heads;
    a.model_kv_heads = c.model_kv_heads;
    stats.enable_per_head(c.model_heads ? c.model_heads : c.Hq);
    if (!c.paged) return;
    const Index B = 16, nb = (c.Lmax + B - 1) / B;  // blocks of 16 tokens in reverse order
    kpool.resize(std::size_t(nb * B * c.Hkv * c.d));
    vpool.resize(kpool.size());
    table.resize(std::size_t(nb));
    for (Index b = 0; b < nb; ++b) table[std::size_t(b)] = std::int32_t(nb - 1 - b);
    a.paged = PagedKv<float>::token_major(kpool.data(), vpool.data(), nb, table.data(), c.Lmax,
                                          c.Hkv, c.d, B);
    a.k = {};
    a.v = {};
  }
  static ProblemSpec spec_of(const MaxCase& c) {
    ProblemSpec s;
    s.T = c.Tmax;
    s.P = c.Lmax - c.Tmax;
    s.Hq = c.Hq;
    s.Hkv = c.Hkv;
    s.d = c.d;
    s.layout = c.layout;
    return s;
  }
  AttentionOptions options(ModeOptions& mo, const ModeCase& mc, int threads, Index k,
                           const MaxCase& c) {
    AttentionOptions o = mo.get(mc, threads, k);
    o.post_score_tile_bytes = c.post_score_tile_bytes;
    o.isa = c.isa;
    if (c.per_head_stats) o.stats = &stats;
    return o;
  }
};

/// Decode args (T = 1) over zeroed contiguous caches of Lmax tokens, for sizing long caches.
struct DecodeBuffers {
  std::vector<float> q, out, k, v;
  AttentionArgs<float> a;
  DecodeBuffers(Index Hq, Index Hkv, Index d, Index Lmax, Layout layout)
      : q(std::size_t(Hq * d)), out(q.size()), k(std::size_t(Lmax * Hkv * d)), v(k.size()) {
    using View = HeadsView<const float>;
    a.q = View::token_major(q.data(), 1, Hq, d);
    a.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);
    a.k = layout == Layout::kHeadMajor ? View::head_major(k.data(), Lmax, Hkv, d)
                                       : View::token_major(k.data(), Lmax, Hkv, d);
    a.v = layout == Layout::kHeadMajor ? View::head_major(v.data(), Lmax, Hkv, d)
                                       : View::token_major(v.data(), Lmax, Hkv, d);
  }
};

/// Runs body(c, ca, o, n) for every case of `cases`, every mode and every count n of `counts`,
/// traced, with k = 8: `o` runs on n threads when `counts_threads`, else on 1 (n is then the
/// plan's workers).
template <std::size_t N, class Body>
void for_each_case(const MaxCase (&cases)[N], std::initializer_list<int> counts,
                   bool counts_threads, Body&& body) {
  const Index k = 8;
  for (const MaxCase& c : cases) {
    CaseArgs ca(c);
    ModeOptions mo(c.model_heads ? c.model_heads : c.Hq, k);
    for (const ModeCase& mc : kModes)
      for (int n : counts) {
        SCOPED_TRACE(std::string(c.name) + " " + mc.name +
                     (counts_threads ? " threads " : " workers ") + std::to_string(n));
        body(c, ca, ca.options(mo, mc, counts_threads ? n : 1, k, c), n);
      }
  }
}

TEST(WorkspaceMax, EqualsTheLargestWorkspaceOfEveryCallWithinTheLimits) {
  int non_monotone = 0;  // cases whose largest call is not the one at (Lmax, Tmax)
  for_each_case(kMaxCases, {1, 2}, true,
                [&](const MaxCase& c, const CaseArgs& ca, const AttentionOptions& o, int) {
                  const AttentionArgs<float>& a = ca.a;
                  ASSERT_GT(workspace_size(a, o), 0u) << "the case does not validate";
                  const std::size_t want = largest_call(a, o, c.Lmax, c.Tmax);
                  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{c.Lmax, c.Tmax}), want);
                  // The args' own L and T do not matter.
                  EXPECT_EQ(
                      max_workspace_size(with_lengths(a, 3, 2), o, WorkspaceLimits{c.Lmax, c.Tmax}),
                      want);
                  if (want > workspace_size(a, o)) ++non_monotone;
                });
  // The test would also pass for "the size at (Lmax, Tmax)" if no case had a larger call below.
  EXPECT_GT(non_monotone, 0);
}

// Decode sizes fall where the key chunk count drops (9 to 8 chunks of L/8 tokens between 2k and
// 8k tokens): a workspace for the longest cache is too small for a shorter one. The maximum
// covers every shorter cache.
TEST(WorkspaceMax, DecodeCoversShorterCachesThatNeedMore) {
  const Index Hq = 32, Hkv = 8, d = 128, Lmax = 6000;
  const DecodeBuffers buf(Hq, Hkv, d, Lmax, Layout::kTokenMajor);
  const AttentionArgs<float>& a = buf.a;
  ModeOptions mo(Hq, 64);
  for (const ModeCase& mc : kModes)
    for (int threads : {1, 2}) {
      SCOPED_TRACE(std::string(mc.name) + " threads " + std::to_string(threads));
      const AttentionOptions o = mo.get(mc, threads, 64);
      std::size_t running = 0;
      int shorter_needs_more = 0;
      for (Index L = 1; L <= Lmax; ++L) {
        const std::size_t s = workspace_size(with_lengths(a, L, 1), o);
        ASSERT_GT(s, 0u) << "L " << L;
        const bool drop = s < running;
        if (drop) ++shorter_needs_more;
        running = std::max(running, s);
        // Sampled (each check measures every L up to it): the first drops and every 500th L.
        if ((drop && shorter_needs_more <= 4) || L % 500 == 0 || L == Lmax) {
          ASSERT_EQ(max_workspace_size(a, o, WorkspaceLimits{L, 1}), running) << "L " << L;
        }
      }
      EXPECT_GT(shorter_needs_more, 0);
    }
}

// One buffer of max_workspace_size bytes runs every call within the limits, with the results
// of the allocating calls.
TEST(WorkspaceMax, OneBufferServesEveryCall) {
  ProblemSpec sp;
  sp.T = 48;
  sp.P = 400 - 48;
  sp.Hq = 8;
  sp.Hkv = 2;
  sp.d = 32;
  auto p = make_problem<float>(sp);
  const AttentionArgs<float> a = p.args();
  ModeOptions mo(sp.Hq, 8);
  std::mt19937_64 rng(5);
  for (const ModeCase& mc : kModes)
    for (int threads : {1, 2}) {
      SCOPED_TRACE(std::string(mc.name) + " threads " + std::to_string(threads));
      const AttentionOptions o = mo.get(mc, threads, 8);
      const std::size_t n = max_workspace_size(a, o, WorkspaceLimits{400, 48});
      ASSERT_GT(n, 0u);
      std::vector<std::byte> buf(n);
      std::pair<Index, Index> worst{0, 0};
      EXPECT_EQ(largest_call(a, o, 400, 48, &worst), n);
      for (int i = 0; i < 12; ++i) {
        Index L = std::uniform_int_distribution<Index>(1, 400)(rng);
        Index T =
            i % 3 == 0 ? 1 : std::uniform_int_distribution<Index>(1, std::min<Index>(48, L))(rng);
        if (i == 0) std::tie(L, T) = worst;  // the call that needs all of it
        SCOPED_TRACE("L " + std::to_string(L) + " T " + std::to_string(T));
        const AttentionArgs<float> c = with_lengths(a, L, T);
        p.clear_out();
        ASSERT_TRUE((T == 1 ? decode(c, o, Workspace{buf.data(), n})
                            : prefill(c, o, Workspace{buf.data(), n}))
                        .ok());
        const std::vector<float> got = snapshot(p.out);
        p.clear_out();
        ASSERT_TRUE((T == 1 ? decode(c, o) : prefill(c, o)).ok());
        EXPECT_TRUE(same_bytes(got, snapshot(p.out)));
      }
    }
}

TEST(WorkspaceMax, BadLimitsOrArgumentsGiveZero) {
  ProblemSpec sp;
  sp.T = 4;
  sp.P = 60;
  sp.Hq = 4;
  sp.Hkv = 2;
  sp.d = 16;
  auto p = make_problem<float>(sp);
  const AttentionArgs<float> a = p.args();
  AttentionOptions o;
  EXPECT_GT(max_workspace_size(a, o, WorkspaceLimits{64, 4}), 0u);
  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{0, 4}), 0u);
  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{64, 0}), 0u);
  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{-1, 1}), 0u);
  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{Index(INT32_MAX) + 1, 1}), 0u);
  // A query count above the longest cache is clamped to it, per L.
  EXPECT_EQ(max_workspace_size(a, o, WorkspaceLimits{64, 1000}),
            max_workspace_size(a, o, WorkspaceLimits{64, 64}));
  AttentionArgs<float> bad = a;
  bad.out.heads = 3;
  EXPECT_EQ(max_workspace_size(bad, o, WorkspaceLimits{64, 4}), 0u);
  AttentionOptions topt;
  topt.mode = AttentionMode::kTopTheta;  // no threshold table
  EXPECT_EQ(max_workspace_size(a, topt, WorkspaceLimits{64, 4}), 0u);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    AttentionOptions forced;
    forced.isa = isa;
    EXPECT_EQ(max_workspace_size(a, forced, WorkspaceLimits{64, 4}) > 0, isa_supported(isa))
        << to_string(isa);
  }
  // The task interface's maxima (plan.hpp).
  const WorkspaceLimits ok{64, 4, 2};
  EXPECT_GT(max_plan_decode_workspace_size(a, o, ok, 2), 0u);
  EXPECT_GT(max_decode_batch_workspace_size(a, o, ok), 0u);
  EXPECT_GT(max_plan_prefill_workspace_size(a, o, ok, 2), 0u);
  for (const WorkspaceLimits& lim :
       {WorkspaceLimits{0, 4, 2}, WorkspaceLimits{64, 0, 2}, WorkspaceLimits{-1, 1, 1},
        WorkspaceLimits{Index(INT32_MAX) + 1, 1, 1}}) {
    EXPECT_EQ(max_plan_decode_workspace_size(a, o, lim, 2), 0u);
    EXPECT_EQ(max_decode_batch_workspace_size(a, o, lim), 0u);
    EXPECT_EQ(max_plan_prefill_workspace_size(a, o, lim, 2), 0u);
  }
  // Decode batches need a sequence count (the default 0 is none, never one); prefill does not
  // use it.
  EXPECT_EQ(max_plan_decode_workspace_size(a, o, WorkspaceLimits{64, 4}, 2), 0u);
  EXPECT_EQ(max_decode_batch_workspace_size(a, o, WorkspaceLimits{64, 4}), 0u);
  EXPECT_EQ(max_plan_prefill_workspace_size(a, o, WorkspaceLimits{64, 4}, 2),
            max_plan_prefill_workspace_size(a, o, ok, 2));
  // Workers below 1.
  EXPECT_EQ(max_plan_decode_workspace_size(a, o, ok, 0), 0u);
  EXPECT_EQ(max_plan_prefill_workspace_size(a, o, ok, -1), 0u);
  // A size that does not fit in size_t.
  EXPECT_EQ(max_plan_decode_workspace_size(a, o, WorkspaceLimits{64, 1, Index(1) << 62}, 2), 0u);
  // Arguments or options that do not validate (`bad` and `topt` above).
  EXPECT_EQ(max_plan_decode_workspace_size(bad, o, ok, 2), 0u);
  EXPECT_EQ(max_decode_batch_workspace_size(bad, o, ok), 0u);
  EXPECT_EQ(max_plan_prefill_workspace_size(bad, o, ok, 2), 0u);
  EXPECT_EQ(max_plan_decode_workspace_size(a, topt, ok, 2), 0u);
  EXPECT_EQ(max_plan_prefill_workspace_size(a, topt, ok, 2), 0u);
}

// ------------------------------------------------------------------------------------------
// The task interface's maxima (plan.hpp)
// ------------------------------------------------------------------------------------------

/// A batch of sequences shaped like `a`, with cache lengths `lens`; each writes its own output
/// (a batch's outputs must not overlap), for sizing only.
std::vector<AttentionArgs<float>> batch_of(const AttentionArgs<float>& a,
                                           const std::vector<Index>& lens) {
  static std::vector<float> outs;
  const Index per = a.out.heads * a.out.dim;
  if (outs.size() < lens.size() * std::size_t(per)) outs.resize(lens.size() * std::size_t(per));
  std::vector<AttentionArgs<float>> seqs;
  for (std::size_t i = 0; i < lens.size(); ++i) {
    seqs.push_back(with_lengths(a, lens[i], 1));
    seqs.back().out = HeadsView<float>::token_major(outs.data() + i * std::size_t(per), 1,
                                                    a.out.heads, a.out.dim);
  }
  return seqs;
}

std::size_t plan_size(const std::vector<AttentionArgs<float>>& seqs, const AttentionOptions& o,
                      int workers) {
  const DecodeBatch<float> b{seqs.data(), Index(seqs.size()), nullptr};
  return plan_decode_workspace_size(b, o, workers);
}

/// The largest plan_decode_workspace_size over every batch of 1..N (N <= 3) sequences with
/// lengths 1..Lmax (every multiset), by brute force.
std::size_t largest_batch(const AttentionArgs<float>& a, const AttentionOptions& o, Index Lmax,
                          int N, int workers) {
  std::size_t n = 0;
  for (Index x = 1; x <= Lmax; ++x) {
    n = std::max(n, plan_size(batch_of(a, {x}), o, workers));
    for (Index y = x; N >= 2 && y <= Lmax; ++y) {
      n = std::max(n, plan_size(batch_of(a, {x, y}), o, workers));
      for (Index z = y; N >= 3 && z <= Lmax; ++z)
        n = std::max(n, plan_size(batch_of(a, {x, y, z}), o, workers));
    }
  }
  return n;
}

// Head-major G4 with 2 KV heads: 2 workers take one task per KV group, 3 take chunks of tokens
// (a different task count). Lmax 40 gives up to 3 sequences every multiset of lengths.
const MaxCase kBatchCases[] = {
    {"G4", 8, 2, 16, 40, 1, std::size_t(4) << 20},
    {"G4-head-major", 8, 2, 16, 40, 1, std::size_t(4) << 20, false, Layout::kHeadMajor},
    {"G2-paged", 4, 2, 16, 34, 1, std::size_t(4) << 20, true},
    {"G4-head-major-scalar-stats", 8, 2, 16, 30, 1, std::size_t(4) << 20, false, Layout::kHeadMajor,
     Isa::kScalar, true},
    {"G2-shard", 4, 2, 16, 30, 1, std::size_t(4) << 20, false, Layout::kTokenMajor, Isa::kAuto,
     false, 4, 8, 4},
};

TEST(WorkspaceMax, PlanDecodeEqualsTheLargestBatchWithinTheLimits) {
  for_each_case(
      kBatchCases, {1, 2, 3}, false,
      [](const MaxCase& c, const CaseArgs& ca, const AttentionOptions& o, int workers) {
        for (int N : {1, 2, 3}) {
          const std::size_t want = largest_batch(ca.a, o, c.Lmax, N, workers);
          ASSERT_GT(want, 0u);
          EXPECT_EQ(max_plan_decode_workspace_size(ca.a, o, WorkspaceLimits{c.Lmax, 1, N}, workers),
                    want)
              << "N " << N;
        }
        // The args' own lengths and the query limit do not matter.
        EXPECT_EQ(max_plan_decode_workspace_size(with_lengths(ca.a, 5, 1), o,
                                                 WorkspaceLimits{c.Lmax, 9, 3}, workers),
                  largest_batch(ca.a, o, c.Lmax, 3, workers));
      });
}

// Long caches (the decode chunk count changes with L, so a shorter cache can need more) and
// many sequences. A batch of n > 1 keeps one scratch set per worker, as large as its calls'
// largest, so its size is A + (n - 1) D + max(own + sets) + (n - 1) max(own) over its lengths.
// Measured per length from batches of two and three copies (3 - 2 copies: D + own; 2 * two -
// three: A + own + sets), the oracle is max(2 * two - three) + (N - 1) max(three - two); a
// batch of N sequences reaches it, and no sampled batch needs more.
TEST(WorkspaceMax, PlanDecodeCoversLongCachesAndManySequences) {
  const Index Hq = 8, Hkv = 2, d = 32, Lmax = 5000;
  const DecodeBuffers buf(Hq, Hkv, d, Lmax, Layout::kHeadMajor);
  const AttentionArgs<float>& a = buf.a;
  ModeOptions mo(Hq, 64);
  std::mt19937_64 rng(17);
  for (const ModeCase& mc : kModes)
    for (int workers : {1, 2}) {
      SCOPED_TRACE(std::string(mc.name) + " workers " + std::to_string(workers));
      const AttentionOptions o = mo.get(mc, 1, 64);
      const bool calibrate = mc.mode == AttentionMode::kCalibrate;
      const Index N = calibrate ? 1 : 48;
      std::size_t one = 0, running = 0, best_all = 0, best_own = 0;
      Index la = 0, lo = 0;
      int shorter_needs_more = 0;
      for (Index L = 1; L <= Lmax; ++L) {
        const std::size_t s = plan_size(batch_of(a, {L}), o, workers);
        if (s < running) ++shorter_needs_more;
        running = std::max(running, s);
        one = std::max(one, s);
        if (calibrate) continue;
        const std::size_t two = plan_size(batch_of(a, {L, L}), o, workers);
        const std::size_t three = plan_size(batch_of(a, {L, L, L}), o, workers);
        ASSERT_GT(three, two);
        ASSERT_GT(2 * two, three);
        if (2 * two - three > best_all) {
          best_all = 2 * two - three;
          la = L;
        }
        if (three - two > best_own) {
          best_own = three - two;
          lo = L;
        }
      }
      EXPECT_GT(shorter_needs_more, 0);
      const std::size_t got =
          max_plan_decode_workspace_size(a, o, WorkspaceLimits{Lmax, 1, 48}, workers);
      if (calibrate) {
        EXPECT_EQ(got, one);
      } else {
        EXPECT_EQ(got, best_all + std::size_t(N - 1) * best_own);
        std::vector<Index> lens(std::size_t(N), lo);
        lens[0] = la;
        EXPECT_EQ(plan_size(batch_of(a, lens), o, workers), got) << "La " << la << " Lo " << lo;
      }
      for (int i = 0; i < 20; ++i) {
        std::vector<Index> lens(std::size_t(std::uniform_int_distribution<Index>(1, N)(rng)));
        for (Index& L : lens) L = std::uniform_int_distribution<Index>(1, Lmax)(rng);
        EXPECT_LE(plan_size(batch_of(a, lens), o, workers), got);
      }
    }
}

// The sequences of a batch share the workers' scratch sets: in every mode (single- and
// two-pass), a worker added to a batch of two or three calls costs about what it costs one call
// (its statistics sinks are per call), not two or three times as much.
TEST(WorkspaceMax, BatchSharesTheWorkersScratch) {
  const Index Hq = 8, Hkv = 2, d = 32, L = 2000;
  const DecodeBuffers buf(Hq, Hkv, d, L, Layout::kHeadMajor);
  ModeOptions mo(Hq, 64);
  for (const ModeCase& mc : kModes) {
    if (mc.mode == AttentionMode::kCalibrate) continue;
    SCOPED_TRACE(mc.name);
    const AttentionOptions o = mo.get(mc, 1, 64);
    const auto added = [&](const std::vector<Index>& lens) {
      return plan_size(batch_of(buf.a, lens), o, 4) - plan_size(batch_of(buf.a, lens), o, 1);
    };
    const std::size_t one = added({L}), two = added({L, L}), three = added({L, L - 900, 17});
    EXPECT_LT(two, one + one / 4);
    EXPECT_LT(three, one + one / 4);
    // The sets are as large as the largest set of any call, wherever that call is in the batch.
    EXPECT_EQ(plan_size(batch_of(buf.a, {17, L}), o, 3), plan_size(batch_of(buf.a, {L, 17}), o, 3));
  }
}

// A batch's shared worker sets are one block of workers x the largest set: with a long cache, a
// large GQA group and many workers it passes what a pointer difference holds. The size
// saturates (no workspace has it) instead of wrapping to a small one that a plan would overrun.
// The cache is 2^31 - 1 tokens of one physical block repeated through the block table (a
// measure reads shapes only).
TEST(WorkspaceMax, HugeSharedScratchSaturatesInsteadOfWrapping) {
  const Index Hq = 256, Hkv = 1, d = 4, B = Index(1) << 16, L = (Index(1) << 31) - 1;
  const Index nb = (L + B - 1) / B;
  std::vector<float> pool(std::size_t(B * Hkv * d)), q(std::size_t(Hq * d)), out(2 * q.size());
  const std::vector<std::int32_t> table(std::size_t(nb), 0);
  AttentionArgs<float> seqs[2];
  for (int i = 0; i < 2; ++i) {
    seqs[i].q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);
    seqs[i].out = HeadsView<float>::token_major(out.data() + i * Hq * d, 1, Hq, d);
    seqs[i].paged =
        PagedKv<float>::token_major(pool.data(), pool.data(), 1, table.data(), L, Hkv, d, B);
  }
  AttentionOptions o;
  o.mode = AttentionMode::kTopK;  // two-pass: a set holds G rows of L weights and indices
  o.k = 64;
  const int workers = 1 << 21;  // 2^21 sets of about 2^42 bytes
  const DecodeBatch<float> batch{seqs, 2, nullptr};
  const std::size_t one = plan_decode_workspace_size(DecodeBatch<float>{seqs, 1, nullptr}, o, 1);
  ASSERT_GT(one, std::size_t(L) * std::size_t(Hq) * sizeof(float));
  EXPECT_GE(plan_decode_workspace_size(batch, o, workers), std::size_t(1) << 61);
  std::vector<std::byte> small(1 << 12);
  AttentionPlan plan;
  EXPECT_EQ(plan_decode(batch, o, workers, Workspace{small.data(), small.size()}, &plan).code(),
            StatusCode::kInvalidArgument);
  // A call of its own carves a set per worker: 2^26 of them pass 2^64 bytes. The measure counts
  // one worker's takes 2^26 times at once (carve_workers) and saturates instead of wrapping.
  const DecodeBatch<float> alone{seqs, 1, nullptr};
  const int many = 1 << 26;
  EXPECT_GE(plan_decode_workspace_size(alone, o, many), std::size_t(1) << 61);
  EXPECT_EQ(plan_decode(alone, o, many, Workspace{small.data(), small.size()}, &plan).code(),
            StatusCode::kInvalidArgument);
}

// A measuring arena counts the workers' buffers by measuring one worker and multiplying
// (carve_workers): the count equals that of carving each worker, a real carve into a buffer of
// the measured size fits, and a count past what a pointer difference holds saturates.
TEST(WorkspaceMax, MeasuredWorkersEqualEachWorkerCarved) {
  const auto carve_one = [](detail::Arena& a, int i) {
    (void)i;  // as in the kernels, no take depends on the worker's index
    a.take<float>(37);
    a.take<std::uint8_t>(3);
    a.take<double>(5);
  };
  for (const int workers : {0, 1, 2, 3, 64, 1000}) {
    SCOPED_TRACE(workers);
    detail::Arena fast, each;
    fast.take<char>(11);
    each.take<char>(11);
    detail::carve_workers(fast, workers, carve_one);
    for (int i = 0; i < workers; ++i) carve_one(each, i);
    EXPECT_EQ(fast.used(), each.used());
    std::vector<std::byte> buf(fast.used() + 1);
    detail::Arena real(Workspace{buf.data() + 1, fast.used()});  // an odd address
    real.take<char>(11);
    int carved = 0;
    detail::carve_workers(real, workers, [&](detail::Arena& a, int i) {
      EXPECT_EQ(i, carved++);
      carve_one(a, i);
    });
    EXPECT_EQ(carved, workers);
    EXPECT_FALSE(real.overflowed());
    EXPECT_LE(real.used(), fast.used());
  }
  detail::Arena huge;
  detail::carve_workers(huge, 1 << 30,
                        [](detail::Arena& a, int) { a.take<double>(Index(1) << 40); });
  EXPECT_EQ(huge.used(), detail::kSaturatedBytes);
  huge.take<char>(1);  // later takes add to the saturated count without wrapping
  EXPECT_GT(huge.used(), detail::kSaturatedBytes);
}

// decode_batch picks its thread count from the batch's work: one buffer of
// max_decode_batch_workspace_size runs every batch, with the results of the allocating calls.
TEST(WorkspaceMax, DecodeBatchBufferServesEveryBatch) {
  const Index Hq = 8, Hkv = 2, d = 32, Lmax = 3000, N = 4;
  Rng data_rng(3);
  auto k = make_heads<float>(Lmax, Hkv, d, Layout::kHeadMajor, 0.0f);
  auto v = make_heads<float>(Lmax, Hkv, d, Layout::kHeadMajor, 0.0f);
  fill_normal(k, data_rng);
  fill_normal(v, data_rng);
  auto q = make_heads<float>(N, Hq, d, Layout::kTokenMajor, 0.0f);
  fill_normal(q, data_rng);
  std::vector<float> out(std::size_t(N * Hq * d));
  ModeOptions mo(Hq, 16);
  std::mt19937_64 rng(23);
  for (const ModeCase& mc : kModes)
    for (int threads : {1, 2}) {
      SCOPED_TRACE(std::string(mc.name) + " threads " + std::to_string(threads));
      const AttentionOptions o = mo.get(mc, threads, 16);
      const Index n_max = mc.mode == AttentionMode::kCalibrate ? 1 : N;
      std::vector<AttentionArgs<float>> seqs(static_cast<std::size_t>(n_max));
      for (Index i = 0; i < n_max; ++i) {
        AttentionArgs<float>& s = seqs[std::size_t(i)];
        s.q = q.view.slice_tokens(i, 1);
        s.out = HeadsView<float>::token_major(out.data() + i * Hq * d, 1, Hq, d);
        s.k = k.view;
        s.v = v.view;
      }
      const WorkspaceLimits lim{Lmax, 1, N};
      const std::size_t n = max_decode_batch_workspace_size(seqs[0], o, lim);
      std::size_t over_workers = 0;
      for (int w = 1; w <= threads; ++w)
        over_workers = std::max(over_workers, max_plan_decode_workspace_size(seqs[0], o, lim, w));
      EXPECT_EQ(n, over_workers);
      std::vector<std::byte> buf(n);
      for (int i = 0; i < 10; ++i) {
        const Index count = std::uniform_int_distribution<Index>(1, n_max)(rng);
        std::vector<AttentionArgs<float>> b(seqs.begin(), seqs.begin() + count);
        for (auto& s : b) {
          const Index L = std::uniform_int_distribution<Index>(1, Lmax)(rng);
          s.k = k.view.slice_tokens(0, L);
          s.v = v.view.slice_tokens(0, L);
        }
        const DecodeBatch<float> batch{b.data(), count, nullptr};
        EXPECT_LE(decode_batch_workspace_size(batch, o), n);
        std::fill(out.begin(), out.end(), 0.0f);
        ASSERT_TRUE(decode_batch(batch, o, Workspace{buf.data(), n}).ok());
        const std::vector<float> got = out;
        std::fill(out.begin(), out.end(), 0.0f);
        ASSERT_TRUE(decode_batch(batch, o).ok());
        EXPECT_EQ(std::memcmp(got.data(), out.data(), out.size() * sizeof(float)), 0);
      }
    }
}

// max_decode_batch_workspace_size measures two worker counts, the cap and the largest count
// below it that does not divide the KV heads; here against every count up to the cap, for
// caches whose KV heads 1..12 workers divide and do not divide, one sequence and 48.
TEST(WorkspaceMax, DecodeBatchEqualsTheLargestOverEveryWorkerCount) {
  const Index Hq = 12, d = 16, Lmax = 1800;
  const int kMaxCap = 12;
  for (const Index Hkv : {3, 4, 6})
    for (const Layout layout : {Layout::kHeadMajor, Layout::kTokenMajor}) {
      const DecodeBuffers buf(Hq, Hkv, d, Lmax, layout);
      ModeOptions mo(Hq, 8);
      for (const ModeCase& mc : kModes)
        for (const Index seqs : {Index(1), Index(48)}) {
          SCOPED_TRACE(std::string(mc.name) + " Hkv " + std::to_string(Hkv) +
                       (layout == Layout::kHeadMajor ? " head-major" : " token-major") +
                       " sequences " + std::to_string(seqs));
          const WorkspaceLimits lim{Lmax, 1, seqs};
          std::vector<std::size_t> at(kMaxCap + 1, 0);  // at[w]: the plan size for w workers
          for (int w = 1; w <= kMaxCap; ++w) {
            at[std::size_t(w)] = max_plan_decode_workspace_size(buf.a, mo.get(mc, 1, 8), lim, w);
            ASSERT_GT(at[std::size_t(w)], 0u) << "workers " << w;
          }
          for (int cap = 1; cap <= kMaxCap; ++cap) {
            const int threads = resolve_threads(cap);  // 1 without OpenMP
            const std::size_t want = *std::max_element(at.begin() + 1, at.begin() + threads + 1);
            EXPECT_EQ(max_decode_batch_workspace_size(buf.a, mo.get(mc, cap, 8), lim), want)
                << "cap " << cap;
          }
        }
    }
}

TEST(WorkspaceMax, PlanPrefillEqualsTheLargestCallWithinTheLimits) {
  for_each_case(
      kMaxCases, {1, 3}, false,
      [](const MaxCase& c, const CaseArgs& ca, const AttentionOptions& o, int workers) {
        std::size_t want = 0;
        std::pair<Index, Index> worst{0, 0};
        for (Index L = 1; L <= c.Lmax; ++L) {
          std::size_t prev = 0;
          for (Index T = 1; T <= std::min(c.Tmax, L); ++T) {
            const std::size_t s = plan_prefill_workspace_size(with_lengths(ca.a, L, T), o, workers);
            ASSERT_GT(s, 0u) << "L " << L << " T " << T;
            EXPECT_GE(s, prev) << "L " << L << ": T = " << T << " needs less than T = " << T - 1;
            prev = s;
            if (s > want) {
              want = s;
              worst = {L, T};
            }
          }
        }
        const std::size_t got = max_plan_prefill_workspace_size(
            with_lengths(ca.a, 3, 2), o, WorkspaceLimits{c.Lmax, c.Tmax, 0}, workers);
        EXPECT_EQ(got, want);
        // The worst call runs on the engine's threads in a buffer of exactly that size.
        const AttentionArgs<float> w = with_lengths(ca.a, worst.first, worst.second);
        std::vector<std::byte> buf(got);
        AttentionPlan plan;
        ASSERT_TRUE(plan_prefill(w, o, workers, Workspace{buf.data(), got}, &plan).ok());
        for (int s = 0; s < plan.num_stages(); ++s)
          for (Index t = 0; t < plan.num_tasks(s); ++t) plan.run_task(s, t, int(t % workers));
        EXPECT_TRUE(plan.finish().ok());
      });
}

}  // namespace
