#pragma once
/// \file threshold_fit.hpp
/// The compact threshold representation (ThresholdForm::kCompact): pooled statistics of
/// log-spaced length buckets, and the curve fitted from them (ThresholdCurve, threshold_table.hpp).
///
/// Buckets. With b buckets per octave, bucket j holds the row lengths L with
/// 2^(j/b) < L <= 2^((j+1)/b) (so a power-of-two context length closes a bucket). For each
/// bucket the calibrator keeps, in constant memory, the sums of a least-squares fit of
/// y = v(L, tau) over x = ln L, where tau is a row's (k+1)-th largest value and
/// v = tau (pre-softmax) or L * tau (post-softmax: probabilities fall roughly like 1/L, so L * tau
/// varies slowly). Rows of all lengths in a bucket pool into it: a handful of sequences gives
/// thousands of rows per bucket instead of one per length.
///
/// Knots. Every bucket with at least `min_bucket_samples` rows gives one knot at length
/// exp(mean ln L of its rows), rounded: a straight-line fit of y over x on the bucket pooled with
/// `pool_radius` neighbours on each side, evaluated at that length, plus lambda times the
/// residual standard deviation of the fit (the per-length calibration's "mean + lambda * std",
/// with the trend over L removed). Its `samples` are the bucket's own rows. Buckets with fewer
/// rows still pool into their neighbours but give no knot, and are reported
/// (CalibrationReport); when no bucket reaches the minimum, every non-empty bucket gives a knot.
///
/// Ends. The slopes past the last and below the first knot are weighted (by samples)
/// least-squares slopes of g(v) over ln L on the knots of the last / first `fit_octaves` octaves
/// (g = identity for pre-softmax, ln for post-softmax), 0 with fewer than two knots there.
///
/// Knot values and slopes are rounded to float (the kernels compare in float at most), which
/// keeps files short: a 32-layer x 32-head table calibrated to 32k tokens is about 0.38 MB
/// (`toptheta-thresholds synth --layers 32 --heads 32 --context 32768 --k 64`: 383,975 bytes).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "options.hpp"
#include "status.hpp"
#include "threshold_table.hpp"
#include "types.hpp"

namespace toptheta {

/// How bucket statistics become curves.
struct CompactFitOptions {
  int buckets_per_octave = 2;             ///< bucket width: 2^(1/b) in L; 1..16
  std::uint64_t min_bucket_samples = 32;  ///< fewer rows: no knot of its own, reported
  int pool_radius = 1;                    ///< neighbouring buckets pooled into each knot's fit
  double fit_octaves = 2.0;               ///< octaves at each end fitted for the slopes
};

/// Checks CompactFitOptions; the message names the field.
inline Status validate(const CompactFitOptions& o) {
  if (o.buckets_per_octave < 1 || o.buckets_per_octave > 16)
    return Status::invalid_argument("CompactFitOptions::buckets_per_octave must be in [1, 16], got " +
                                    std::to_string(o.buckets_per_octave));
  if (o.min_bucket_samples < 1)
    return Status::invalid_argument("CompactFitOptions::min_bucket_samples must be >= 1");
  if (o.pool_radius < 0 || o.pool_radius > 8)
    return Status::invalid_argument("CompactFitOptions::pool_radius must be in [0, 8], got " +
                                    std::to_string(o.pool_radius));
  if (!(o.fit_octaves > 0.0 && o.fit_octaves <= 64.0))
    return Status::invalid_argument("CompactFitOptions::fit_octaves must be in (0, 64]");
  return {};
}

// length_bucket(), bucket_log_edge() and bucket_lengths() are in threshold_table.hpp (a compact
// table knows the length bucket of its last knot: ThresholdTable::max_calibrated_length()).

/// Sums of one bucket: x = ln L - (bucket's lower edge), y = the fitted value; SDC sums.
struct BucketStats {
  double n = 0;    ///< sum of weights w (the row count when every w is 1)
  double sx = 0;   ///< sum of w x
  double sy = 0;   ///< sum of w y
  double sxx = 0;  ///< sum of w x^2
  double sxy = 0;  ///< sum of w x y
  double syy = 0;  ///< sum of w y^2
  double sdc_n = 0;    ///< sum of the weights of the SDC samples
  double sdc_sum = 0;  ///< sum of w times the dropped mass sum_{j not kept} exp(s_j - M) (§8)
  /// Longest row length noted (note_length()); 0 = none noted. fit_curve() records the largest
  /// over a head's buckets as the curve's max_calibrated_length.
  Index max_length = 0;
  /// Adds one row: x = ln L - (bucket's lower edge), y = v(L, tau), weight w.
  void add(double x, double y, double w = 1.0) {
    n += w;
    sx += w * x;
    sy += w * y;
    sxx += w * x * x;
    sxy += w * x * y;
    syy += w * y * y;
  }
  /// Adds one row's dropped softmax mass `v` (the offline SDC term's sample, semantics §8).
  void add_sdc(double v, double w = 1.0) {
    sdc_n += w;
    sdc_sum += w * v;
  }
  /// Notes that a row of length L was observed (the bucket's max_length).
  void note_length(Index L) { max_length = std::max(max_length, L); }
  /// Adds the sums of `o` (same origin of x); max_length is the larger of the two.
  void merge(const BucketStats& o) {
    n += o.n; sx += o.sx; sy += o.sy; sxx += o.sxx; sxy += o.sxy; syy += o.syy;
    sdc_n += o.sdc_n; sdc_sum += o.sdc_sum;
    note_length(o.max_length);
  }
  /// The same sums with x measured from an origin `shift` lower (x' = x + shift).
  BucketStats shifted(double shift) const {
    BucketStats r = *this;
    r.sx = sx + n * shift;
    r.sxx = sxx + 2 * shift * sx + n * shift * shift;
    r.sxy = sxy + shift * sy;
    return r;
  }
};

/// One bucket below the minimum sample count (reported). It pools into its neighbours with no
/// knot of its own, unless no bucket of its (k, layer, head) reaches the minimum: fit_curve
/// then gives every non-empty bucket a knot (`own_knot`).
struct SparseBucket {
  Index k = 0;      ///< the budget k_l the bucket was calibrated for
  Index layer = 0;  ///< layer l
  Index head = 0;   ///< query head h (the model's numbering)
  Index length_lo = 0;  ///< smallest row length of the bucket
  Index length_hi = 0;  ///< largest row length of the bucket
  std::uint64_t samples = 0;  ///< rows observed in the bucket (below min_bucket_samples)
  bool own_knot = false;      ///< no bucket of the head reached the minimum: this one got a knot
};

namespace detail {

inline float round_float(double v) {
  if (!(std::fabs(v) <= double(std::numeric_limits<float>::max())))
    return v > 0 ? std::numeric_limits<float>::max() : -std::numeric_limits<float>::max();
  return float(v);
}

/// Weighted least-squares slope of (x_i, y_i, w_i); 0 with fewer than 2 distinct x.
inline double wls_slope(const std::vector<double>& x, const std::vector<double>& y,
                        const std::vector<double>& w) {
  double sw = 0, sx = 0, sy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sw += w[i];
    sx += w[i] * x[i];
    sy += w[i] * y[i];
  }
  if (x.size() < 2 || sw <= 0) return 0.0;
  const double mx = sx / sw, my = sy / sw;
  double sxx = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxx += w[i] * (x[i] - mx) * (x[i] - mx);
    sxy += w[i] * (x[i] - mx) * (y[i] - my);
  }
  return sxx > 1e-12 * sw ? sxy / sxx : 0.0;
}

}  // namespace detail

/// Fits the curve of one (layer, head) from its buckets (index = bucket number, empty buckets
/// have n = 0). `post`: values are L * tau (knot values clamped to > 0). `lambda` adds lambda
/// times the residual std (0 when the bucket values are already thresholds, e.g. converting a
/// per-length table). `sdc` copies the buckets' mean SDC terms into the knots. Buckets below
/// `opts.min_bucket_samples` are appended to `*sparse` (with k, layer, head from `where`).
/// The curve's max_calibrated_length is the largest `max_length` of the buckets pooled into a
/// knot's fit (at least the last knot's length): a bucket far from every knot fed no θ, so its
/// rows are not calibrated. 0 when no such bucket noted a length.
inline ThresholdCurve fit_curve(const std::vector<BucketStats>& buckets, bool post, double lambda,
                                bool sdc, const CompactFitOptions& opts,
                                std::vector<SparseBucket>* sparse = nullptr,
                                const SparseBucket& where = SparseBucket()) {
  const int b = opts.buckets_per_octave;
  const int nb = int(buckets.size());
  bool any_full = false;
  for (int j = 0; j < nb; ++j)
    if (buckets[std::size_t(j)].n >= double(opts.min_bucket_samples) &&
        buckets[std::size_t(j)].n > 0)
      any_full = true;
  for (int j = 0; j < nb && sparse; ++j) {
    const double n = buckets[std::size_t(j)].n;
    if (n > 0 && n < double(opts.min_bucket_samples)) {
      SparseBucket s = where;
      bucket_lengths(j, b, &s.length_lo, &s.length_hi);
      s.samples = std::uint64_t(std::llround(n));
      s.own_knot = !any_full;  // the fallback below: every non-empty bucket gets a knot
      sparse->push_back(s);
    }
  }
  ThresholdCurve c;
  std::vector<double> kx, ky, kw;  // knots: ln L, g(value), weight
  Index longest = 0;               // longest noted row of the buckets pooled into a knot
  for (int j = 0; j < nb; ++j) {
    const BucketStats& own = buckets[std::size_t(j)];
    if (!(own.n > 0)) continue;
    if (any_full && own.n < double(opts.min_bucket_samples)) continue;
    const double e0 = bucket_log_edge(j, b);
    BucketStats pool;
    for (int i = std::max(0, j - opts.pool_radius); i <= std::min(nb - 1, j + opts.pool_radius); ++i)
      if (buckets[std::size_t(i)].n > 0)
        pool.merge(buckets[std::size_t(i)].shifted(bucket_log_edge(i, b) - e0));
    const double mx = pool.sx / pool.n, my = pool.sy / pool.n;
    const double vxx = pool.sxx / pool.n - mx * mx;
    const double cxy = pool.sxy / pool.n - mx * my;
    const double slope = vxx > 1e-12 ? cxy / vxx : 0.0;
    const double xj = own.sx / own.n;  // own mean x, from e0
    double var = pool.syy / pool.n - my * my - slope * cxy;
    var = std::max(var, 0.0);
    CurveKnot k;
    Index lo = 0, hi = 0;
    bucket_lengths(j, b, &lo, &hi);
    k.length = std::min(std::max(Index(std::llround(std::exp(xj + e0))), lo), std::max(lo, hi));
    // The fit at the knot's (rounded) length.
    const double xk = std::log(double(k.length)) - e0;
    double value = my + slope * (xk - mx) + lambda * std::sqrt(var);
    if (post) value = std::max(value, double(std::numeric_limits<float>::min()));
    if (!c.knots.empty() && k.length <= c.knots.back().length) continue;  // degenerate buckets
    k.value = double(detail::round_float(value));
    if (post && !(k.value > 0)) k.value = double(std::numeric_limits<float>::min());
    k.samples = std::uint64_t(std::llround(own.n));
    if (sdc && own.sdc_n > 0) k.sdc = double(detail::round_float(std::max(own.sdc_sum / own.sdc_n, 0.0)));
    c.knots.push_back(k);
    for (int i = std::max(0, j - opts.pool_radius); i <= std::min(nb - 1, j + opts.pool_radius);
         ++i)
      if (buckets[std::size_t(i)].n > 0)
        longest = std::max(longest, buckets[std::size_t(i)].max_length);
    kx.push_back(std::log(double(k.length)));
    ky.push_back(post ? std::log(k.value) : k.value);
    kw.push_back(own.n);
  }
  if (c.knots.size() >= 2) {
    const double span = opts.fit_octaves * std::log(2.0) + 1e-9;
    std::vector<double> x, y, w;
    for (std::size_t i = 0; i < kx.size(); ++i)
      if (kx[i] >= kx.back() - span) x.push_back(kx[i]), y.push_back(ky[i]), w.push_back(kw[i]);
    c.slope_above = double(detail::round_float(detail::wls_slope(x, y, w)));
    x.clear(), y.clear(), w.clear();
    for (std::size_t i = 0; i < kx.size(); ++i)
      if (kx[i] <= kx.front() + span) x.push_back(kx[i]), y.push_back(ky[i]), w.push_back(kw[i]);
    c.slope_below = double(detail::round_float(detail::wls_slope(x, y, w)));
  }
  if (longest > 0 && !c.knots.empty())
    c.max_calibrated_length = std::max(longest, c.knots.back().length);
  // If any knot lacks an SDC term, drop them all (a table has SDC terms everywhere or nowhere).
  if (sdc)
    for (const auto& k : c.knots)
      if (!k.has_sdc()) {
        for (auto& kk : c.knots) kk.sdc = std::numeric_limits<double>::quiet_NaN();
        break;
      }
  return c;
}

/// Converts a per-length table (native version 1, the authors' th.txt) to the compact form:
/// every entry is one observation of its theta (weighted by its samples, at least 1) in its
/// length bucket; knots are fitted as above without the lambda term (the entries are thresholds
/// already), so the compact curve smooths the per-length noise. Dense heads stay dense; SDC
/// terms carry over when every entry has one. Each curve's max_calibrated_length is the longest
/// fitted entry (entries that keep every key are not fitted, see below). A compact table is
/// copied as it is.
inline Status to_compact(const ThresholdTable& in, ThresholdTable* out,
                         CompactFitOptions opts = CompactFitOptions()) {
  TOPTHETA_RETURN_IF_ERROR(validate(opts));
  TOPTHETA_RETURN_IF_ERROR(in.validate());
  if (in.is_compact()) {
    *out = in;
    return {};
  }
  opts.min_bucket_samples = 1;  // every populated bucket of a per-length table is a knot
  const bool post = in.placement() == Placement::kPostSoftmax;
  const bool sdc = in.has_sdc();
  ThresholdTable t = ThresholdTable::compact(in.num_layers(), in.num_heads());
  for (Index l = 0; l < in.num_layers(); ++l) TOPTHETA_RETURN_IF_ERROR(t.set_k(l, in.k(l)));
  t.metadata() = in.metadata();
  t.metadata().buckets_per_octave = opts.buckets_per_octave;
  const int b = opts.buckets_per_octave;
  for (Index l = 0; l < in.num_layers(); ++l)
    for (Index h = 0; h < in.num_heads(); ++h) {
      if (in.is_dense(l, h)) {
        TOPTHETA_RETURN_IF_ERROR(t.set_dense(l, h));
        continue;
      }
      std::vector<BucketStats> buckets;
      for (const ThresholdEntry& e : in.entries(l, h)) {
        // -inf keeps every key, and so does a theta at or below -FLT_MAX (rounded toward -inf
        // into float, semantics §11): no observation of the curve. The authors' files write
        // -FLT_MAX for fully masked rows; fitted, it pulled the whole curve to about -5e36.
        if (e.length < 2 || !(e.theta > -double(std::numeric_limits<float>::max()))) continue;
        const int j = length_bucket(e.length, b);
        if (int(buckets.size()) <= j) buckets.resize(std::size_t(j) + 1);
        const double x = std::log(double(e.length)) - bucket_log_edge(j, b);
        const double v = post ? double(e.length) * e.theta : e.theta;
        if (post && !(v > 0)) continue;
        const double w = double(std::max<std::uint64_t>(e.samples, 1));
        buckets[std::size_t(j)].add(x, v, w);
        buckets[std::size_t(j)].note_length(e.length);
        if (sdc) buckets[std::size_t(j)].add_sdc(e.sdc, w);
      }
      ThresholdCurve c = fit_curve(buckets, post, 0.0, sdc, opts);
      if (c.empty())
        return Status::failed_precondition(
            "to_compact: layer " + std::to_string(l) + " head " + std::to_string(h) +
            " has no finite threshold above length 1 to fit (declare it dense instead)");
      TOPTHETA_RETURN_IF_ERROR(t.set_curve(l, h, std::move(c)));
    }
  TOPTHETA_RETURN_IF_ERROR(t.validate());
  *out = std::move(t);
  return {};
}

}  // namespace toptheta
