#pragma once
// Shared helpers of the attention tests: strided, padded caches in both layouts; seeded random
// fills; tolerances per scalar type (derivation below); comparison with the reference oracle;
// threshold tables whose thetas keep a safety margin from every placement value.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "toptheta/attention_args.hpp"
#include "toptheta/reference/attention.hpp"
#include "toptheta/threshold_table.hpp"
#include "toptheta/types.hpp"
#include "toptheta/workspace.hpp"

namespace toptheta::testing {

/// The foundation issue's grid: row lengths, head dims and (Hq, Hkv) pairs.
constexpr Index kLs[] = {1, 2, 3, 17, 64, 255, 1024};
constexpr Index kDs[] = {8, 64, 128};
constexpr Index kHeads[][2] = {{1, 1}, {4, 1}, {8, 4}, {32, 8}};

using Rng = std::mt19937_64;

enum class Layout { kTokenMajor, kHeadMajor };
inline const char* to_string(Layout l) { return l == Layout::kTokenMajor ? "tm" : "hm"; }

template <class T>
T quiet_nan() {
  return static_cast<T>(std::numeric_limits<float>::quiet_NaN());
}

// ------------------------------------------------------------------------------------------
// Padded strided buffers.
// ------------------------------------------------------------------------------------------

/// A (tokens, heads, dim) view into a larger buffer: a leading guard, padding between heads and
/// between tokens, spare capacity (head-major), all filled with `fill` (NaN for inputs, so that a
/// kernel reading padding produces NaN and fails the comparison; a sentinel for outputs, checked
/// afterwards).
template <class T>
struct HeadsBuffer {
  std::vector<T> buf;
  HeadsView<T> view;
  std::vector<char> inside;  // 1 where an element belongs to the view

  HeadsView<const T> cview() const { return view; }
  std::size_t offset_of(const T* p) const { return static_cast<std::size_t>(p - buf.data()); }
  /// True when every element outside the view still holds `fill` (bitwise).
  bool padding_is(T fill) const {
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!inside[i] && std::memcmp(&buf[i], &fill, sizeof(T)) != 0) return false;
    return true;
  }
};

/// Token-major: `[token][head][dim + pad]` + `pad_token` between tokens.
/// Head-major: `[head][capacity][dim + pad]` with capacity = tokens + extra_capacity, + pad between
/// heads. Both with `guard` elements in front.
template <class T>
HeadsBuffer<T> make_heads(Index tokens, Index heads, Index dim, Layout layout, T fill,
                          Index pad = 3, Index extra_capacity = 2, Index guard = 7) {
  HeadsBuffer<T> b;
  Index token_stride, head_stride, total;
  if (layout == Layout::kTokenMajor) {
    head_stride = dim + pad;
    token_stride = heads * head_stride + pad + 1;
    total = tokens * token_stride;
  } else {
    token_stride = dim + pad;
    head_stride = (tokens + extra_capacity) * token_stride + pad + 2;
    total = heads * head_stride;
  }
  total += guard + 2 * pad + 8;
  b.buf.assign(static_cast<std::size_t>(total), fill);
  b.inside.assign(b.buf.size(), 0);
  b.view = HeadsView<T>{b.buf.data() + guard, tokens, heads, dim, token_stride, head_stride};
  for (Index t = 0; t < tokens; ++t)
    for (Index h = 0; h < heads; ++h)
      for (Index i = 0; i < dim; ++i) b.inside[b.offset_of(&b.view(t, h, i))] = 1;
  return b;
}

template <class T, class F>
void fill_view(HeadsBuffer<T>& b, F&& f) {
  for (Index t = 0; t < b.view.tokens; ++t)
    for (Index h = 0; h < b.view.heads; ++h)
      for (Index i = 0; i < b.view.dim; ++i) b.view(t, h, i) = static_cast<T>(f(t, h, i));
}

/// N(0, sigma^2) entries.
template <class T>
void fill_normal(HeadsBuffer<T>& b, Rng& rng, double sigma = 1.0) {
  std::normal_distribution<double> nd(0.0, sigma);
  fill_view(b, [&](Index, Index, Index) { return nd(rng); });
}

/// Entries n * step, n uniform in [-levels, levels]. With step a power of two and levels <= 8 the
/// values are exact in every storage type, so dot products are exact in float: scores (with a
/// power-of-two scale) then agree bit-for-bit between kernel and oracle, and exact ties are
/// exact in both (tests of "ties to the lower index" need that).
template <class T>
void fill_discrete(HeadsBuffer<T>& b, Rng& rng, int levels = 4, double step = 0.25) {
  std::uniform_int_distribution<int> ud(-levels, levels);
  fill_view(b, [&](Index, Index, Index) { return step * ud(rng); });
}

/// A power-of-two scale close to 1/sqrt(d) (exact in every type, keeps discrete scores exact).
inline double pow2_scale(Index d) {
  return std::ldexp(1.0, -int(std::lround(std::log2(std::sqrt(double(d))))));
}

// ------------------------------------------------------------------------------------------
// A complete attention problem.
// ------------------------------------------------------------------------------------------

struct ProblemSpec {
  Index T = 1;  // new tokens (1 = decode)
  Index P = 0;  // earlier tokens
  Index Hq = 1;
  Index Hkv = 1;
  Index d = 8;
  Layout layout = Layout::kTokenMajor;
  bool packed_kv = false;  // K / V rows without padding (head-major: one head's rows adjacent)
  bool discrete = false;  // discrete q/k (exact scores; needs a power-of-two scale)
  double q_sigma = 1.0;   // continuous q spread (larger: peakier softmax)
  double scale = 0.0;     // 0: 1/sqrt(d)
  std::uint64_t seed = 1;
  Index L() const { return P + T; }
  std::string name() const {
    std::ostringstream os;
    os << "T" << T << "_P" << P << "_Hq" << Hq << "_Hkv" << Hkv << "_d" << d << "_"
       << to_string(layout) << (packed_kv ? "_packed" : "") << (discrete ? "_disc" : "_cont")
       << "_seed" << seed;
    return os.str();
  }
};

template <class T>
struct Problem {
  using Acc = acc_t<T>;
  ProblemSpec spec;
  HeadsBuffer<T> q, k, v;
  HeadsBuffer<Acc> out;
  Acc out_fill = Acc(-12345.25);
  std::vector<float> bias;  // (T x bias_stride), empty = no bias
  Index bias_stride = 0;
  std::vector<Acc> vsum;  // (Hkv x vsum_stride), empty = kernel sums V itself
  Index vsum_stride = 0;
  Index layer = 0;
  /// >= 0: a known bound on the kernel's absolute score error (0 for discrete data with a
  /// power-of-two scale and no bias: every score is exact in float); < 0: derive it from
  /// score_magnitude().
  double score_err_override = -1.0;

  Index tokens() const { return spec.T; }
  Index length() const { return spec.L(); }

  AttentionArgs<T> args() const {
    AttentionArgs<T> a;
    a.q = q.view;
    a.k = k.view;
    a.v = v.view;
    a.out = out.view;
    if (!vsum.empty()) {
      a.v_sum = vsum.data();
      a.v_sum_stride = vsum_stride;
    }
    if (!bias.empty()) a.bias = MatrixView<const float>{bias.data(), spec.T, spec.L(), bias_stride};
    a.layer = layer;
    a.scale = spec.scale;
    return a;
  }

  /// Adds a (T x L) bias (row stride L + 5), every entry from `f(t, j)`. Unless the caller
  /// knows that score + bias is exact in float (`exact`), the score error bound is re-derived.
  template <class F>
  void set_bias(F&& f, bool exact = false) {
    if (!exact) score_err_override = -1.0;
    bias_stride = spec.L() + 5;
    bias.assign(static_cast<std::size_t>(spec.T * bias_stride),
                std::numeric_limits<float>::quiet_NaN());
    for (Index t = 0; t < spec.T; ++t)
      for (Index j = 0; j < spec.L(); ++j)
        bias[static_cast<std::size_t>(t * bias_stride + j)] = f(t, j);
  }

  /// Fills the running V sum the way the kernels expect it: the rows before the call's new
  /// tokens, 0..P-1 (decode and prefill alike). Row stride d + 3 (strided on purpose).
  void set_vsum(bool /*prefill_call*/ = false) {
    const Index d = spec.d, Hkv = spec.Hkv;
    vsum_stride = d + 3;
    vsum.assign(static_cast<std::size_t>(Hkv * vsum_stride), Acc(0));
    const Index rows = spec.P;
    for (Index g = 0; g < Hkv; ++g)
      for (Index i = 0; i < d; ++i) {
        double s = 0;
        for (Index j = 0; j < rows; ++j) s += reference::to_double(v.view(j, g, i));
        vsum[static_cast<std::size_t>(g * vsum_stride + i)] = Acc(s);
      }
  }

  void clear_out() {
    fill_view(out, [&](Index, Index, Index) { return out_fill; });
  }
  bool out_padding_intact() const { return out.padding_is(out_fill); }

  double max_abs_v() const {
    double m = 0;
    for (Index t = 0; t < v.view.tokens; ++t)
      for (Index g = 0; g < v.view.heads; ++g)
        for (Index i = 0; i < v.view.dim; ++i) {
          const double x = reference::to_double(v.view(t, g, i));
          if (std::isfinite(x)) m = std::max(m, std::abs(x));
        }
    return m;
  }

  /// Cauchy-Schwarz bound on |scale * q . k| + |bias|: max ||q|| * max ||k|| * scale + max|bias|.
  double score_magnitude() const {
    auto max_norm = [](const auto& b) {
      double m = 0;
      for (Index t = 0; t < b.view.tokens; ++t)
        for (Index h = 0; h < b.view.heads; ++h) {
          double s = 0;
          for (Index i = 0; i < b.view.dim; ++i) {
            const double x = reference::to_double(b.view(t, h, i));
            if (std::isfinite(x)) s += x * x;
          }
          m = std::max(m, std::sqrt(s));
        }
      return m;
    };
    const double scale = spec.scale == 0 ? 1.0 / std::sqrt(double(spec.d)) : spec.scale;
    double bmax = 0;
    for (float b : bias)
      if (std::isfinite(b)) bmax = std::max(bmax, double(std::abs(b)));
    return scale * max_norm(q) * max_norm(k) + bmax;
  }
};

/// Builds a problem: K/V/Q/out as padded strided views in the requested layout (queries always
/// token-major with padding; the output in the same layout as the cache).
template <class T>
Problem<T> make_problem(const ProblemSpec& spec) {
  using Acc = acc_t<T>;
  Problem<T> p;
  p.spec = spec;
  Rng rng(spec.seed);
  const T nan = quiet_nan<T>();
  p.q = make_heads<T>(spec.T, spec.Hq, spec.d, Layout::kTokenMajor, nan, 2);
  p.k = make_heads<T>(spec.L(), spec.Hkv, spec.d, spec.layout, nan, spec.packed_kv ? 0 : 3);
  p.v = make_heads<T>(spec.L(), spec.Hkv, spec.d, spec.layout, nan, spec.packed_kv ? 0 : 1, 4);
  p.out = make_heads<Acc>(spec.T, spec.Hq, spec.d, spec.layout, p.out_fill, 2, 1, 3);
  if (spec.discrete) {
    fill_discrete(p.q, rng);
    fill_discrete(p.k, rng);
    // Quarter-step entries: q . k is a multiple of 1/16 below 2^20, exact in float in any
    // summation order; times a power-of-two scale (pre-multiplied into q or not) still exact.
    const double sc = spec.scale == 0 ? 1.0 / std::sqrt(double(spec.d)) : spec.scale;
    if (std::exp2(std::round(std::log2(sc))) == sc) p.score_err_override = 0.0;
  } else {
    fill_normal(p.q, rng, spec.q_sigma);
    fill_normal(p.k, rng);
  }
  fill_normal(p.v, rng);
  p.clear_out();
  return p;
}

// ------------------------------------------------------------------------------------------
// Tolerances.
// ------------------------------------------------------------------------------------------
//
// The oracle reads the same stored inputs (half / bfloat16 rounded to float exactly like the
// kernels), so storage rounding cancels; what is left is the kernel's arithmetic in
// Acc = float (double for double storage), unit roundoff u = 2^-24 (2^-53), gamma_n = n u / (1 - n
// u):
//  * scores: a d-term dot product, one multiply by the scale, one bias add:
//      |ds| <= gamma_{d+2} * mag,   mag = scale * max||q|| * max||k|| + max|bias| (Cauchy-Schwarz).
//  * weights w_j = exp(s_j - M) / Z: the shift and the numerator both move with ds, exp and the
//    division cost a few ulp (vectorised exp: <= 4 ulp), Z sums L terms:
//      |dw_j| / w_j <= 2|ds| + 8u + gamma_L.
//  * output o = sum_j w_j v_j (L terms; the online softmax of prefill rescales partial sums once
//    per key block, one more rounding each) plus VMC (1 - sum w) * vbar with vbar from a running
//    sum of L rows:  |do| <= max|v| * (sum_j w_j) * (2|ds| + 8u + gamma_L) + 2 gamma_L max|v| + ...
//    With sum_j w_j <= 1 (<= 2 counting the VMC term):
//      tol = max|v| * (4 |ds| + 16 u + 4 gamma_L).
// These are worst-case (not probabilistic sqrt(n)) bounds; measured errors are ~10-100x smaller.
// For float at L = 1024, d = 128, N(0,1) data this is ~5e-4 * max|v|; for double ~1e-12 * max|v|.
template <class T>
constexpr double unit_roundoff() {
  return std::is_same_v<std::remove_const_t<T>, double> ? 0x1p-53 : 0x1p-24;
}
inline double gamma_n(double n, double u) { return n * u / (1.0 - n * u); }

template <class T>
double score_error_bound(Index d, double mag) {
  return gamma_n(double(d + 2), unit_roundoff<T>()) * mag;
}

template <class T>
double output_tolerance(Index L, double score_err, double vmax) {
  const double u = unit_roundoff<T>();
  return std::max(vmax, 1e-30) * (4.0 * score_err + 16.0 * u + 4.0 * gamma_n(double(L), u));
}

template <class T>
double problem_score_error(const Problem<T>& p) {
  return p.score_err_override >= 0 ? p.score_err_override
                                   : score_error_bound<T>(p.spec.d, p.score_magnitude());
}

template <class T>
double problem_tolerance(const Problem<T>& p) {
  return output_tolerance<T>(p.length(), problem_score_error(p), p.max_abs_v());
}

// ------------------------------------------------------------------------------------------
// Comparison.
// ------------------------------------------------------------------------------------------

/// Compares a kernel output view with the oracle; `skip(t, h)` excludes rows (borderline ones).
template <class Acc, class Skip>
::testing::AssertionResult outputs_close(const reference::Result& ref, HeadsView<Acc> out,
                                         double tol, Skip&& skip) {
  double worst = 0;
  Index wt = -1, wh = -1, wi = -1;
  Index bad = 0;
  for (Index t = 0; t < ref.tokens; ++t)
    for (Index h = 0; h < ref.heads; ++h) {
      if (skip(t, h)) continue;
      for (Index i = 0; i < ref.dim; ++i) {
        const double got = double(out(t, h, i));
        const double want = ref.at(t, h, i);
        // A NaN on either side is an infinite error, so the worst element reported is a
        // non-finite one (a NaN err would compare false with everything after it).
        const double diff = std::abs(got - want);
        const double err = std::isfinite(got) && !std::isnan(diff)
                               ? diff
                               : std::numeric_limits<double>::infinity();
        if (!(err <= tol)) ++bad;
        if (err > worst || wt < 0) {
          worst = err;
          wt = t, wh = h, wi = i;
        }
      }
    }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << bad << " elements differ beyond tol " << tol << "; worst at (t=" << wt << ", h=" << wh
     << ", i=" << wi << "): kernel " << double(out(wt, wh, wi)) << " vs oracle "
     << ref.at(wt, wh, wi) << " (err " << worst << ")";
  if (!ref.rows.empty()) {
    const auto& r = ref.row(wt, wh);
    os << "; oracle row: L=" << r.length << " thresholded=" << r.thresholded << " empty=" << r.empty
       << " mean_v=" << r.mean_v << " masked=" << r.masked << " theta=" << r.theta
       << " kept=" << r.kept.size() << " wsum=" << r.weight_sum;
  }
  return ::testing::AssertionFailure() << os.str();
}

template <class Acc>
::testing::AssertionResult outputs_close(const reference::Result& ref, HeadsView<Acc> out,
                                         double tol) {
  return outputs_close(ref, out, tol, [](Index, Index) { return false; });
}

/// Two kernel outputs (same shapes) agree within tol.
template <class Acc>
::testing::AssertionResult views_close(HeadsView<Acc> a, HeadsView<Acc> b, double tol) {
  for (Index t = 0; t < a.tokens; ++t)
    for (Index h = 0; h < a.heads; ++h)
      for (Index i = 0; i < a.dim; ++i) {
        const double x = double(a(t, h, i)), y = double(b(t, h, i));
        if (!(std::abs(x - y) <= tol))
          return ::testing::AssertionFailure()
                 << "differ at (t=" << t << ", h=" << h << ", i=" << i << "): " << x << " vs " << y
                 << " (tol " << tol << ")";
      }
  return ::testing::AssertionSuccess();
}

/// All kernel statistics counters equal the oracle's (per-head vectors when both enabled).
inline ::testing::AssertionResult stats_equal(const AttentionStats& want,
                                              const AttentionStats& got) {
  std::ostringstream os;
  auto cmp = [&](const char* n, std::uint64_t w, std::uint64_t g) {
    if (w != g) os << " " << n << ": oracle " << w << " kernel " << g << ";";
  };
  cmp("rows", want.rows, got.rows);
  cmp("thresholded_rows", want.thresholded_rows, got.thresholded_rows);
  cmp("empty_rows", want.empty_rows, got.empty_rows);
  cmp("elements_total", want.elements_total, got.elements_total);
  cmp("elements_kept", want.elements_kept, got.elements_kept);
  cmp("elements_topk", want.elements_topk, got.elements_topk);
  cmp("elements_kept_thresholded", want.elements_kept_thresholded, got.elements_kept_thresholded);
  cmp("extrapolated_rows", want.extrapolated_rows, got.extrapolated_rows);
  cmp("vrows_total", want.vrows_total, got.vrows_total);
  cmp("vrows_read", want.vrows_read, got.vrows_read);
  if (!got.kept_per_head.empty() && got.kept_per_head.size() == want.kept_per_head.size())
    for (std::size_t h = 0; h < got.kept_per_head.size(); ++h) {
      cmp(("kept_per_head[" + std::to_string(h) + "]").c_str(), want.kept_per_head[h],
          got.kept_per_head[h]);
      cmp(("total_per_head[" + std::to_string(h) + "]").c_str(), want.total_per_head[h],
          got.total_per_head[h]);
    }
  if (os.str().empty()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "stats differ:" << os.str();
}

/// True when no output element is NaN or infinite.
template <class Acc>
bool all_finite(HeadsView<Acc> out) {
  for (Index t = 0; t < out.tokens; ++t)
    for (Index h = 0; h < out.heads; ++h)
      for (Index i = 0; i < out.dim; ++i)
        if (!std::isfinite(double(out(t, h, i)))) return false;
  return true;
}

// ------------------------------------------------------------------------------------------
// Storage types at run time.
// ------------------------------------------------------------------------------------------

enum class Dtype { kF32, kF64, kF16, kBF16 };
inline constexpr Dtype kAllDtypes[] = {Dtype::kF32, Dtype::kF64, Dtype::kF16, Dtype::kBF16};
inline const char* to_string(Dtype t) {
  switch (t) {
    case Dtype::kF32:
      return "f32";
    case Dtype::kF64:
      return "f64";
    case Dtype::kF16:
      return "f16";
    case Dtype::kBF16:
      return "bf16";
  }
  return "?";
}
template <class T>
struct Tag {
  using type = T;
};
/// Calls f(Tag<T>{}) with the storage type named by `dt`.
template <class F>
void dispatch(Dtype dt, F&& f) {
  switch (dt) {
    case Dtype::kF32:
      f(Tag<float>{});
      break;
    case Dtype::kF64:
      f(Tag<double>{});
      break;
    case Dtype::kF16:
      f(Tag<Eigen::half>{});
      break;
    case Dtype::kBF16:
      f(Tag<Eigen::bfloat16>{});
      break;
  }
}

// ------------------------------------------------------------------------------------------
// Workspace.
// ------------------------------------------------------------------------------------------

struct WorkspaceBuffer {
  std::vector<std::byte> bytes;
  explicit WorkspaceBuffer(std::size_t n = 0) : bytes(n + 1) {}  // +1: never a null pointer
  Workspace get(std::size_t n) { return Workspace{bytes.data(), n}; }
  Workspace get() { return Workspace{bytes.data(), bytes.size() - 1}; }
};

// ------------------------------------------------------------------------------------------
// Threshold tables with a safety margin.
// ------------------------------------------------------------------------------------------

struct ThetaPlan {
  double p_empty = 0.1;     // probability that a row's theta is above every value (empty row)
  double p_neg_inf = 0.05;  // probability of theta = -inf (keeps every unmasked key)
  Index target_lo = 1;      // wanted kept count range (before margin search)
  Index target_hi = 8;
  bool with_sdc = false;  // also store a calibrated SDC term in every entry
};

/// Picks theta for one row of placement values `a` so that no |a_j - theta| is within the
/// kernel's rounding of a_j: theta is the midpoint of two consecutive distinct values whose gap
/// is at least `rel_margin` (relative to max(|upper|, floor)), with about `target` values above.
/// Pre-softmax uses an absolute margin `abs_margin`; post-softmax a relative one and values above
/// 1e-30 (float underflows exp(-87)). Returns NaN when the row has no usable gap.
inline double pick_theta(const std::vector<double>& a, Placement pl, Index target,
                         double abs_margin, double rel_margin) {
  std::vector<double> u;
  for (double x : a)
    if (std::isfinite(x) && (pl == Placement::kPreSoftmax || x > 1e-30)) u.push_back(x);
  std::sort(u.begin(), u.end(), std::greater<double>());
  u.erase(std::unique(u.begin(), u.end()), u.end());
  auto ok = [&](std::size_t i) {  // gap between u[i] and u[i+1]
    const double gap = u[i] - u[i + 1];
    return pl == Placement::kPreSoftmax ? gap > 2 * abs_margin : gap > 2 * rel_margin * u[i];
  };
  // Search outward from the index with ~target values above theta.
  const std::size_t n = u.size();
  if (n < 2) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t start = std::min<std::size_t>(std::max<Index>(target, 1) - 1, n - 2);
  for (std::size_t off = 0; off < n; ++off) {
    for (int sgn : {1, -1}) {
      const long i = long(start) + sgn * long(off);
      if (i < 0 || i + 1 >= long(n)) continue;
      if (ok(std::size_t(i))) return 0.5 * (u[std::size_t(i)] + u[std::size_t(i) + 1]);
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

/// A table for `layers` layers and p's query heads with entries for every row length of the
/// problem (each (t, h) row gets its own theta for length L_t; decode: one row per head).
/// Layer `p.layer` has budget `k`, the others `k + 3`.
template <class T>
ThresholdTable make_margin_table(const Problem<T>& p, Placement pl, Index k, const ThetaPlan& plan,
                                 Rng& rng, Index layers = 2) {
  ThresholdTable tab(layers, p.spec.Hq, k + 3);
  EXPECT_TRUE(tab.set_k(p.layer, k).ok());
  tab.metadata().placement = pl;
  const auto args = p.args();
  const double serr = problem_score_error(p);
  // a_j is off by at most serr (pre) or relatively by 2 serr + gamma_L (post); keep 8x that.
  const double abs_margin = std::max(8 * serr, 1e-9);
  const double rel_margin =
      8 * (2 * serr + gamma_n(double(p.length()), unit_roundoff<T>())) + 1e-12;
  std::uniform_real_distribution<double> uni(0, 1);
  std::uniform_int_distribution<Index> tgt(plan.target_lo,
                                           std::max(plan.target_lo, plan.target_hi));
  std::uniform_real_distribution<double> sdc_term(0.0, 3.0);
  for (Index t = 0; t < p.tokens(); ++t)
    for (Index h = 0; h < p.spec.Hq; ++h) {
      const std::vector<double> a = reference::placement_values(args, t, h, pl);
      double theta;
      const double r = uni(rng);
      double amax = -std::numeric_limits<double>::infinity();
      for (double x : a) amax = std::max(amax, x);
      if (r < plan.p_neg_inf) {
        theta = -std::numeric_limits<double>::infinity();
      } else if (r < plan.p_neg_inf + plan.p_empty || !std::isfinite(amax)) {
        theta = std::isfinite(amax) ? amax + std::max(std::abs(amax) * 0.01, 0.01) : 0.5;
      } else {
        theta = pick_theta(a, pl, tgt(rng), abs_margin, rel_margin);
        if (std::isnan(theta)) theta = amax + std::max(std::abs(amax) * 0.01, 0.01);  // empty
      }
      ThresholdEntry e;
      e.length = p.spec.P + t + 1;
      e.theta = theta;
      e.samples = 1;
      if (plan.with_sdc) e.sdc = sdc_term(rng);
      EXPECT_TRUE(tab.set(p.layer, h, e).ok());
      // The other layer gets a decoy that would keep everything: a kernel using the wrong
      // layer's entry shows up.
      ThresholdEntry decoy = e;
      decoy.theta = -std::numeric_limits<double>::infinity();
      EXPECT_TRUE(tab.set((p.layer + 1) % layers, h, decoy).ok());
    }
  return tab;
}

/// A view's values in (token, head, dim) order, for bit-for-bit comparisons.
template <class Acc>
std::vector<Acc> snapshot(const HeadsView<Acc>& v) {
  std::vector<Acc> s;
  for (Index t = 0; t < v.tokens; ++t)
    for (Index h = 0; h < v.heads; ++h)
      for (Index i = 0; i < v.dim; ++i) s.push_back(v(t, h, i));
  return s;
}

/// Whether two snapshots hold the same bits.
template <class Acc>
bool same_bits(const std::vector<Acc>& a, const std::vector<Acc>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Acc)) == 0;
}

/// Whether two threshold tables hold the same entries bit for bit (length, samples, theta, sdc).
inline bool same_tables(const ThresholdTable& a, const ThresholdTable& b) {
  if (a.size() != b.size()) return false;
  for (Index l = 0; l < a.num_layers(); ++l)
    for (Index h = 0; h < a.num_heads(); ++h) {
      const auto& x = a.entries(l, h);
      const auto& y = b.entries(l, h);
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (x[i].length != y[i].length || x[i].samples != y[i].samples ||
            std::memcmp(&x[i].theta, &y[i].theta, sizeof(double)) != 0 ||
            std::memcmp(&x[i].sdc, &y[i].sdc, sizeof(double)) != 0)
          return false;
    }
  return true;
}

/// A table giving every head of layer 0 the threshold `theta` at every length (one entry,
/// nearest lookup), or declaring every head dense (`dense`); placement `pl`.
inline ThresholdTable constant_table(Index Hq, Index k, double theta, bool dense,
                                     Placement pl = Placement::kPostSoftmax) {
  ThresholdTable tab(1, Hq, k);
  tab.metadata().placement = pl;
  for (Index h = 0; h < Hq; ++h) {
    if (dense) {
      EXPECT_TRUE(tab.set_dense(0, h).ok());
      continue;
    }
    ThresholdEntry e;
    e.length = 16;
    e.theta = theta;
    e.samples = 1;
    EXPECT_TRUE(tab.set(0, h, e).ok());
  }
  return tab;
}

}  // namespace toptheta::testing
