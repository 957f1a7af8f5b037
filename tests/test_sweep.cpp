// Randomized differential sweep: seeded random configurations of the whole kernel surface
// against the oracle (include/toptheta/reference/). Every configuration draws:
//   storage type, decode or prefill, head_dim (many not multiples of 8), KV heads and GQA group,
//   cache length and new tokens, token- or head-major layout (always padded and strided), mode
//   (dense, top-k, Top-theta, calibration with TAC on/off), placement, SDC mode and sdc_scale,
//   VMC, empty-row policy, cap_k, lookup policy, a bias (none, random masks, fully masked rows),
//   the running V sum or not, 1 or 2 threads, the score scale, thresholds with empty and
//   all-kept rows, and non-finite injections (NaN / +-Inf into K and V rows of masked keys and
//   into V rows that no head keeps).
// Checks: status ok; output within the derived tolerance of the oracle; statistics equal; nothing
// written outside the output view; with injections, the output bit-identical to the same call
// on finite values.
//
// TOPTHETA_SWEEP_CONFIGS (default 2000) and TOPTHETA_SWEEP_SEED (default 1) change the sweep; a
// failure prints the configuration index and its description, and TOPTHETA_SWEEP_ONLY=<index>
// reruns just that one.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
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

namespace {

using namespace toptheta;
using namespace toptheta::testing;

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtol(v, nullptr, 10) : fallback;
}

enum class BiasKind { kNone, kRandomMask, kMaskedRows, kAdditive };
const char* to_string(BiasKind b) {
  switch (b) {
    case BiasKind::kNone: return "none";
    case BiasKind::kRandomMask: return "random-mask";
    case BiasKind::kMaskedRows: return "masked-rows";
    case BiasKind::kAdditive: return "additive";
  }
  return "?";
}

struct SweepConfig {
  int index = 0;
  Dtype dtype = Dtype::kF32;
  bool prefill = false;
  Index d = 8, Hkv = 1, G = 1, L = 1, T = 1;
  Layout layout = Layout::kTokenMajor;
  AttentionMode mode = AttentionMode::kDense;
  TacMode tac = TacMode::kOn;
  Placement placement = Placement::kPreSoftmax;
  SdcMode sdc = SdcMode::kNone;
  double sdc_scale = 1.0;
  VmcMode vmc = VmcMode::kOff;
  EmptyRowPolicy empty = EmptyRowPolicy::kKeepMax;
  LookupPolicy lookup = LookupPolicy::kNearest;
  Index k = 1, cap_k = 0;
  BiasKind bias = BiasKind::kNone;
  bool vsum = false;
  int threads = 1;
  bool discrete = false;
  bool custom_scale = false;
  double p_empty = 0.1, p_neg_inf = 0.05;
  bool inject = false;
  std::uint64_t seed = 0;

  std::string describe() const {
    std::ostringstream os;
    os << "#" << index << " " << to_string(dtype) << (prefill ? " prefill" : " decode") << " d=" << d
       << " Hkv=" << Hkv << " G=" << G << " L=" << L << " T=" << T << " " << toptheta::testing::to_string(layout)
       << " " << toptheta::to_string(mode) << (mode == AttentionMode::kCalibrate
                                                   ? (tac == TacMode::kOn ? "(tac)" : "(no-tac)")
                                                   : "")
       << " " << toptheta::to_string(placement) << " sdc=" << toptheta::to_string(sdc) << "x"
       << sdc_scale << " vmc=" << (vmc == VmcMode::kOn) << " " << toptheta::to_string(empty) << " "
       << toptheta::to_string(lookup) << " k=" << k << " cap_k=" << cap_k
       << " bias=" << to_string(bias) << " vsum=" << vsum << " threads=" << threads
       << (discrete ? " discrete" : " continuous") << (custom_scale ? " custom-scale" : "")
       << " p_empty=" << p_empty << " p_all=" << p_neg_inf << " inject=" << inject
       << " seed=" << seed;
    return os.str();
  }
};

SweepConfig draw(int index, std::uint64_t base_seed) {
  std::mt19937_64 r(base_seed * 1000003ull + std::uint64_t(index));
  auto pick = [&](auto... xs) {
    const std::vector<std::common_type_t<decltype(xs)...>> v{xs...};
    return v[std::uniform_int_distribution<std::size_t>(0, v.size() - 1)(r)];
  };
  auto coin = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(r) < p; };
  SweepConfig c;
  c.index = index;
  c.seed = r();
  c.dtype = kAllDtypes[r() % 4];
  c.prefill = coin(0.5);
  c.d = pick(Index(1), Index(3), Index(5), Index(8), Index(12), Index(17), Index(24), Index(31),
             Index(40), Index(64), Index(72), Index(100), Index(128));
  c.Hkv = pick(Index(1), Index(2), Index(3), Index(4));
  c.G = pick(Index(1), Index(2), Index(3), Index(4), Index(8));
  c.L = coin(0.15) ? 1 + Index(r() % 8) : 1 + Index(r() % 400);
  // Keep the oracle's work bounded: T * Hq * L * d <= ~3e5.
  const double budget = 3e5 / double(c.Hkv * c.G * c.L * c.d);
  c.T = c.prefill ? std::clamp<Index>(1 + Index(r() % std::max<Index>(1, Index(budget))), 1, c.L) : 1;
  c.layout = coin(0.5) ? Layout::kTokenMajor : Layout::kHeadMajor;
  c.mode = pick(AttentionMode::kDense, AttentionMode::kTopK, AttentionMode::kTopTheta,
                AttentionMode::kTopTheta, AttentionMode::kCalibrate);
  c.tac = coin(0.7) ? TacMode::kOn : TacMode::kOff;
  c.placement = coin(0.5) ? Placement::kPreSoftmax : Placement::kPostSoftmax;
  c.sdc = pick(SdcMode::kNone, SdcMode::kExact, SdcMode::kExpThreshold, SdcMode::kCalibrated);
  if (c.mode != AttentionMode::kTopTheta && c.sdc == SdcMode::kCalibrated) c.sdc = SdcMode::kExact;
  c.sdc_scale = pick(1.0, 1.0, 0.5, 0.0, 2.0);
  c.vmc = coin(0.5) ? VmcMode::kOn : VmcMode::kOff;
  c.empty = coin(0.5) ? EmptyRowPolicy::kKeepMax : EmptyRowPolicy::kMeanV;
  c.lookup = coin(0.8) ? LookupPolicy::kNearest : LookupPolicy::kLinear;
  c.k = 1 + Index(r() % std::max<Index>(1, std::min<Index>(c.L + 2, 48)));
  c.cap_k = coin(0.2) ? 1 + Index(r() % 8) : 0;
  c.bias = pick(BiasKind::kNone, BiasKind::kNone, BiasKind::kRandomMask, BiasKind::kMaskedRows,
                BiasKind::kAdditive);
  c.vsum = coin(0.5);
  c.threads = coin(0.5) ? 1 : 2;
  // Top-k selection (top-k, calibration with TAC) needs exact scores so that ties and the k-th
  // element agree bit for bit with the oracle: discrete data and a power-of-two scale.
  c.discrete = c.mode == AttentionMode::kTopK || c.mode == AttentionMode::kCalibrate || coin(0.3);
  c.custom_scale = !c.discrete && coin(0.3);
  c.p_empty = pick(0.0, 0.1, 0.5, 1.0);
  c.p_neg_inf = pick(0.0, 0.05, 0.3, 1.0);
  c.inject = coin(0.4);
  return c;
}

template <class T>
T nonfinite(std::uint64_t which) {
  const float v[3] = {std::numeric_limits<float>::quiet_NaN(),
                      std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()};
  return static_cast<T>(v[which % 3]);
}

template <class T>
void run_config(const SweepConfig& c) {
  using Acc = acc_t<T>;
  SCOPED_TRACE(c.describe());
  ProblemSpec sp;
  sp.T = c.T;
  sp.P = c.L - c.T;
  sp.Hq = c.Hkv * c.G;
  sp.Hkv = c.Hkv;
  sp.d = c.d;
  sp.layout = c.layout;
  sp.discrete = c.discrete;
  sp.scale = c.discrete ? pow2_scale(c.d) : (c.custom_scale ? 0.37 : 0.0);
  sp.q_sigma = c.discrete ? 1.0 : 2.0;
  sp.seed = c.seed;
  Problem<T> p = make_problem<T>(sp);
  p.layer = Index(c.seed % 2);
  Rng rng(c.seed ^ 0x5eedull);
  std::set<Index> masked_cols;
  switch (c.bias) {
    case BiasKind::kNone: break;
    case BiasKind::kRandomMask: {
      for (Index j = 0; j < c.L; ++j)
        if (rng() % 5 == 0) masked_cols.insert(j);
      p.set_bias([&](Index, Index j) {
        return masked_cols.count(j) ? -std::numeric_limits<float>::infinity() : 0.0f;
      }, /*exact=*/true);
      break;
    }
    case BiasKind::kMaskedRows: {  // some rows fully masked, the others a random mask
      std::vector<std::uint64_t> row_bits(std::size_t(c.T));
      for (auto& b : row_bits) b = rng();
      p.set_bias([&](Index t, Index j) {
        const std::uint64_t b = row_bits[std::size_t(t)];
        const bool row_masked = b % 3 == 0;
        const bool key_masked = ((b >> (j % 61)) & 1) && (b >> 62) == 0;
        return row_masked || key_masked ? -std::numeric_limits<float>::infinity() : 0.0f;
      }, /*exact=*/true);
      break;
    }
    case BiasKind::kAdditive: {  // quarter steps keep discrete scores exact
      std::uniform_int_distribution<int> u(-8, 8);
      std::vector<float> vals(std::size_t(c.T * c.L));
      for (auto& v : vals) v = 0.25f * float(u(rng));
      p.set_bias([&](Index t, Index j) { return vals[std::size_t(t * c.L + j)]; },
                 /*exact=*/c.discrete);
      break;
    }
  }
  if (c.vsum) p.set_vsum(c.prefill);

  AttentionOptions o;
  o.mode = c.mode;
  o.k = c.k;
  o.placement = c.placement;
  o.sdc = c.sdc;
  o.sdc_scale = c.sdc_scale;
  o.vmc = c.vmc;
  // The caller's running sum when the case gives one, else the kernel sums V itself.
  o.vbar = c.vsum ? VbarSource::kRunningSum : VbarSource::kSumCache;
  o.empty_row = c.empty;
  o.lookup = c.lookup;
  o.cap_k = c.cap_k;
  o.threads = c.threads;
  ThresholdTable table;
  if (c.mode == AttentionMode::kTopTheta) {
    ThetaPlan plan;
    plan.p_empty = c.p_empty;
    plan.p_neg_inf = c.p_neg_inf;
    plan.target_hi = 2 * c.k + 2;
    plan.with_sdc = true;
    table = make_margin_table(p, c.placement, c.k, plan, rng);
    o.thresholds = &table;
  }
  CalibrationOptions co;
  co.num_layers = 2;
  co.num_heads = sp.Hq;
  co.default_k = c.k;
  co.placement = c.placement;
  co.tac = c.tac;
  Calibrator cal_a(co), cal_b(co);
  o.calibrator = &cal_a;

  AttentionStats stats;
  stats.enable_per_head(sp.Hq);
  o.stats = &stats;
  auto call = [&] {
    p.clear_out();
    const auto args = p.args();
    WorkspaceBuffer ws(workspace_size(args, o));
    return c.prefill ? prefill(args, o, ws.get()) : decode(args, o, ws.get());
  };
  const Status st = call();
  ASSERT_TRUE(st.ok()) << st.to_string();
  reference::ReferenceOptions ro;
  ro.prefill_call = c.prefill;
  const reference::Result ref = reference::attention(p.args(), o, ro);
  ASSERT_TRUE(ref.status.ok()) << ref.status.to_string();
  const double u = unit_roundoff<T>();
  // Score error plus the rounding of theta and exp(theta - M) (exp-threshold SDC) to float, and
  // of a custom scale.
  const double serr = problem_score_error(p) + 8 * u * (p.score_magnitude() + 1);
  const double tol = output_tolerance<T>(p.length(), serr, p.max_abs_v()) *
                     (c.sdc_scale > 1 ? c.sdc_scale : 1.0);
  // Where the oracle is finite, the kernel matches it; where the oracle is not (V means of rows
  // holding non-finite values cannot occur here: inputs are finite before injection), fail.
  ASSERT_TRUE(outputs_close(ref, p.out.view, tol));
  EXPECT_TRUE(stats_equal(ref.stats, stats));
  EXPECT_TRUE(p.out_padding_intact()) << "kernel wrote outside the output view";
  if (!c.inject) return;

  // Non-finite injection into zero-weight positions (see test_nonfinite.cpp for the rule).
  const std::vector<Acc> clean = snapshot(p.out.view);
  const bool uses_vbar = c.mode != AttentionMode::kDense &&
                         (c.vmc == VmcMode::kOn || c.empty == EmptyRowPolicy::kMeanV);
  std::vector<std::vector<bool>> read(std::size_t(c.Hkv), std::vector<bool>(std::size_t(c.L)));
  for (Index t = 0; t < c.T; ++t)
    for (Index h = 0; h < sp.Hq; ++h)
      for (std::int32_t j : ref.row(t, h).kept) read[std::size_t(h / c.G)][std::size_t(j)] = true;
  // Keys masked in every row of the call.
  std::vector<bool> masked_all(std::size_t(c.L), !p.bias.empty());
  if (!p.bias.empty())
    for (Index t = 0; t < c.T; ++t)
      for (Index j = 0; j < c.L; ++j)
        if (p.bias[std::size_t(t * p.bias_stride + j)] != -std::numeric_limits<float>::infinity())
          masked_all[std::size_t(j)] = false;
  // A V row read into a V mean must be covered by the caller's running sum.
  const Index v_limit = !uses_vbar ? c.L : (c.vsum ? c.L - c.T : 0);
  std::uint64_t which = c.seed;
  Index n_injected = 0;
  for (Index j = 0; j < c.L; ++j)
    for (Index g = 0; g < c.Hkv; ++g) {
      if (masked_all[std::size_t(j)]) {
        for (Index i = 0; i < c.d; ++i) p.k.view(j, g, i) = nonfinite<T>(which++);
        ++n_injected;
      }
      const bool zero_weight = masked_all[std::size_t(j)] || !read[std::size_t(g)][std::size_t(j)];
      if (zero_weight && j < v_limit) {
        for (Index i = 0; i < c.d; ++i) p.v.view(j, g, i) = nonfinite<T>(which++);
        ++n_injected;
      }
    }
  if (n_injected == 0) return;
  o.calibrator = &cal_b;
  const Status st2 = call();
  ASSERT_TRUE(st2.ok()) << st2.to_string();
  const std::vector<Acc> injected = snapshot(p.out.view);
  for (std::size_t i = 0; i < clean.size(); ++i)
    ASSERT_EQ(std::memcmp(&clean[i], &injected[i], sizeof(Acc)), 0)
        << "element " << i << " changed after injecting non-finite values into zero-weight rows: "
        << clean[i] << " -> " << injected[i];
}

TEST(DifferentialSweep, RandomConfigurationsMatchTheOracle) {
  const long n = env_long("TOPTHETA_SWEEP_CONFIGS", 2000);
  const std::uint64_t base = std::uint64_t(env_long("TOPTHETA_SWEEP_SEED", 1));
  const long only = env_long("TOPTHETA_SWEEP_ONLY", -1);
  std::vector<int> counts(8, 0);
  int failures = 0;
  // Failed parts so far: HasFailure() stays true after the first failing configuration.
  const auto failed_parts = [] {
    const ::testing::TestResult* r =
        ::testing::UnitTest::GetInstance()->current_test_info()->result();
    int n_failed = 0;
    for (int j = 0; j < r->total_part_count(); ++j) n_failed += r->GetTestPartResult(j).failed();
    return n_failed;
  };
  for (int i = 0; i < n; ++i) {
    if (only >= 0 && i != only) continue;
    const SweepConfig c = draw(i, base);
    const int before = failed_parts();
    dispatch(c.dtype, [&](auto tag) { run_config<typename decltype(tag)::type>(c); });
    counts[std::size_t(c.mode)]++;
    if (failed_parts() > before && ++failures >= 5) {
      ADD_FAILURE() << "stopping after 5 failing configurations";
      break;
    }
  }
  std::printf("sweep: %ld configurations (seed %llu): dense %d, top-k %d, Top-theta %d, "
              "calibrate %d\n",
              only >= 0 ? 1L : n, static_cast<unsigned long long>(base), counts[0], counts[1],
              counts[2], counts[3]);
}

// The sweep covers what it claims: every axis value appears in the default 2000 draws.
TEST(DifferentialSweep, CoversEveryAxis) {
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    const SweepConfig c = draw(i, 1);
    seen.insert(std::string("dtype:") + to_string(c.dtype));
    seen.insert(std::string("mode:") + toptheta::to_string(c.mode));
    seen.insert(std::string("sdc:") + toptheta::to_string(c.sdc));
    seen.insert(std::string("bias:") + to_string(c.bias));
    seen.insert("d:" + std::to_string(c.d));
    seen.insert("G:" + std::to_string(c.G));
    seen.insert(c.prefill ? "prefill" : "decode");
    if (c.inject) seen.insert("inject");
    if (c.d % 8) seen.insert("d-not-multiple-of-8");
    if (c.cap_k) seen.insert("cap_k");
    if (c.threads == 2) seen.insert("threads:2");
    if (c.p_empty == 1.0) seen.insert("all-empty");
    if (c.p_neg_inf == 1.0) seen.insert("all-kept");
  }
  for (const char* want :
       {"dtype:f32", "dtype:f64", "dtype:f16", "dtype:bf16", "mode:dense", "mode:topk",
        "mode:toptheta", "mode:calibrate", "sdc:none", "sdc:exact", "sdc:exp-threshold",
        "sdc:calibrated", "bias:none", "bias:random-mask", "bias:masked-rows", "bias:additive",
        "d:100", "d:72", "d:1", "G:8", "prefill", "decode", "inject", "d-not-multiple-of-8",
        "cap_k", "threads:2", "all-empty", "all-kept"})
    EXPECT_TRUE(seen.count(want)) << want;
}

}  // namespace
