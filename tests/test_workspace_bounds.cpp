// A workspace smaller than a call needs is rejected before a byte is written: not a byte of the
// workspace, of the caller's K/V cache, of the output, nor anything next to the workspace. Every
// entry point (decode, prefill), every mode, 1 and 2 threads, workspace sizes from 0 to need - 1
// (sampled), including the case that caught us: a workspace sized for L = 256 reused after the
// cache grew to 4096 and 16384 tokens. Under ASan (the dev preset) the exact-size heap
// allocation of the too-small workspace also catches any write past its end.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "toptheta/attention.hpp"
#include "toptheta/calibrator.hpp"

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
      AttentionOptions o;
      o.mode = mc.mode;
      o.k = 8;
      o.placement = mc.placement;
      o.sdc = mc.sdc;
      o.vmc = mc.vmc;
      o.vbar = VbarSource::kSumCache;  // the kernel sums V (a v_sum is not read)
      o.thresholds = mc.placement == Placement::kPreSoftmax ? &pre : &post;
      o.calibrator = &cal;
      o.threads = threads;
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

}  // namespace
