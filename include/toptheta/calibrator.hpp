#pragma once
/// \file calibrator.hpp
/// `Calibrator`: streaming threshold calibration (docs/semantics.md §8; the paper's offline
/// calibration of per-head thresholds, arXiv 2502.08363).
///
/// For every observed row with more than k_l unmasked keys (finite scores after the §2 rules)
/// it takes tau = the (k_l + 1)-th largest value a_j, for each budget of the calibration
/// (`CalibrationOptions::k_values`: several k from one pass), and folds it into
/// - the pooled statistics of its log-spaced length bucket (always; threshold_fit.hpp): constant
///   memory, O(budgets * layers * heads * log max L); `finalize_compact()` fits the compact
///   curves and reports buckets with too few samples (CalibrationReport);
/// - a Welford accumulator of (layer, head, L) when `CalibrationOptions::per_length` is on (the
///   default): memory O(budgets * layers * heads * max L); `finalize()` / `finalize_per_length()`
///   turn them into theta = mean + lambda * std (population std) per length.
/// Optionally it also accumulates the offline SDC term C(l, h, L) = mean over rows of
/// sum_{j not kept} exp(s_j - M) for thresholds from an earlier pass
/// (`CalibrationOptions::sdc_thresholds` / `sdc_threshold_set`; `calibrate_two_pass()` runs both
/// passes).
///
/// Thread safety: observing different (layer, head) pairs concurrently is safe; the same pair must
/// be observed by one thread at a time. Results do not depend on how heads are spread over threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "detail/select.hpp"
#include "detail/softmax_math.hpp"
#include "options.hpp"
#include "status.hpp"
#include "threshold_fit.hpp"
#include "threshold_table.hpp"
#include "types.hpp"

namespace toptheta {

/// Top-k at calibration: whether a kCalibrate attention call outputs exact top-k (on, the paper's
/// setting) or dense attention (off) for thresholded rows.
enum class TacMode { kOff, kOn };

/// What a Calibrator calibrates: the model's shape, the budgets k_l, the placement, lambda, row
/// sampling, TAC, the optional SDC pass and the output forms. `Calibrator::validate()` checks it.
struct CalibrationOptions {
  Index num_layers = 0;                ///< layers of the model (>= 1)
  Index num_heads = 0;                 ///< query heads per layer
  Index default_k = 64;                ///< k_l for layers without an override
  std::vector<Index> layer_k;          ///< optional per-layer k (size num_layers), overrides default_k
  Placement placement = Placement::kPostSoftmax;  ///< the library's default (docs/results.md)
  double lambda = 0.1;                 ///< theta = mean + lambda * std ("sigma" in the paper)
  double sample_fraction = 1.0;        ///< in (0, 1]: fraction of eligible rows used (seeded)
  std::uint64_t seed = 0;              ///< seed of the row sampling
  /// Top-k at calibration (semantics §8): thresholded rows of a kCalibrate call output exact
  /// top-k (on) or dense attention (off).
  TacMode tac = TacMode::kOn;
  /// When set, also accumulate C(l, h, L) using the thresholds of this table (a previous pass).
  const ThresholdTable* sdc_thresholds = nullptr;
  std::string model_id;                ///< copied into the finalized table's metadata
  /// Several budgets from one pass: one table per k (every layer at that k). Leave empty for the
  /// single budget of default_k / layer_k; excludes layer_k. With several k, k(layer) is the
  /// smallest (rows with L <= it are skipped, and TAC outputs top-k at it).
  std::vector<Index> k_values;
  /// With k_values: the SDC pass's thresholds, one table per k (instead of sdc_thresholds).
  const ThresholdSet* sdc_threshold_set = nullptr;
  /// Also keep per-length accumulators (finalize(), finalize_per_length()); memory grows with
  /// the longest row. Off: only the constant-memory buckets (finalize_compact()).
  bool per_length = true;
  CompactFitOptions compact;           ///< buckets and the fit of finalize_compact()
};

/// Per-(k, layer, head, bucket) sample counts of a calibration and the buckets with too few.
struct CalibrationReport {
  int buckets_per_octave = 0;            ///< CompactFitOptions::buckets_per_octave of the run
  std::uint64_t min_bucket_samples = 0;  ///< CompactFitOptions::min_bucket_samples of the run
  Index num_layers = 0;                  ///< layers of the calibration
  Index num_heads = 0;                   ///< query heads per layer
  std::vector<Index> ks;                        ///< one per table
  /// counts[(t * num_layers + layer) * num_heads + head][bucket]: rows in that bucket.
  std::vector<std::vector<std::uint64_t>> counts;
  std::vector<SparseBucket> sparse;             ///< cells below min_bucket_samples

  /// One line per (k, bucket) with sparse cells that pooled into their neighbours: how many
  /// heads, the fewest samples. Then one line per k for the heads none of whose buckets reached
  /// the minimum, where every non-empty bucket got a knot of its own instead (fit_curve's
  /// fallback; SparseBucket::own_knot): how many heads, the most samples of a bucket of theirs.
  std::vector<std::string> warnings() const {
    std::vector<std::string> w;
    for (Index k : ks) {
      std::vector<const SparseBucket*> v;
      std::set<std::pair<Index, Index>> fallback_heads;  // (layer, head)
      std::uint64_t fullest = 0;
      for (const auto& s : sparse) {
        if (s.k != k) continue;
        if (s.own_knot) {
          fallback_heads.emplace(s.layer, s.head);
          fullest = std::max(fullest, s.samples);
        } else {
          v.push_back(&s);
        }
      }
      std::sort(v.begin(), v.end(), [](const SparseBucket* a, const SparseBucket* b) {
        return a->length_lo < b->length_lo;
      });
      for (std::size_t i = 0; i < v.size();) {
        std::size_t j = i;
        std::uint64_t fewest = v[i]->samples;
        while (j < v.size() && v[j]->length_lo == v[i]->length_lo) fewest = std::min(fewest, v[j++]->samples);
        w.push_back("k = " + std::to_string(k) + ": lengths " + std::to_string(v[i]->length_lo) +
                    ".." + std::to_string(v[i]->length_hi) + ": " + std::to_string(j - i) + " of " +
                    std::to_string(num_layers * num_heads) +
                    " (layer, head) pairs have fewer than " + std::to_string(min_bucket_samples) +
                    " samples (fewest " + std::to_string(fewest) +
                    "); pooled into the neighbouring buckets, no knot of their own");
        i = j;
      }
      if (!fallback_heads.empty())
        w.push_back("k = " + std::to_string(k) + ": " + std::to_string(fallback_heads.size()) +
                    " of " + std::to_string(num_layers * num_heads) +
                    " (layer, head) pairs have no length bucket with " +
                    std::to_string(min_bucket_samples) + " samples (the fullest has " +
                    std::to_string(fullest) +
                    "): every non-empty length bucket got a knot of its own (none reaches the "
                    "minimum, so none was pooled)");
    }
    return w;
  }
  /// Samples per bucket, the minimum over (layer, head), for table t: (lo, hi, min, max) rows.
  struct BucketSummary {
    Index length_lo;           ///< smallest row length of the bucket
    Index length_hi;           ///< largest row length of the bucket
    std::uint64_t min_samples; ///< fewest rows any (layer, head) got in the bucket
    std::uint64_t max_samples; ///< most rows any (layer, head) got in the bucket
  };
  /// One BucketSummary per non-empty length bucket of table `t` (index into `ks`), ascending.
  std::vector<BucketSummary> summary(std::size_t t) const {
    std::vector<BucketSummary> out;
    const std::size_t pairs = std::size_t(num_layers * num_heads);
    std::size_t nb = 0;
    for (std::size_t p = 0; p < pairs; ++p) nb = std::max(nb, counts[t * pairs + p].size());
    for (std::size_t j = 0; j < nb; ++j) {
      std::uint64_t mn = ~std::uint64_t(0), mx = 0;
      for (std::size_t p = 0; p < pairs; ++p) {
        const auto& c = counts[t * pairs + p];
        const std::uint64_t v = j < c.size() ? c[j] : 0;
        mn = std::min(mn, v);
        mx = std::max(mx, v);
      }
      if (mx == 0) continue;
      BucketSummary b;
      bucket_lengths(int(j), buckets_per_octave, &b.length_lo, &b.length_hi);
      b.min_samples = mn;
      b.max_samples = mx;
      out.push_back(b);
    }
    return out;
  }
};

/// Streaming calibration of Top-θ thresholds (semantics §8): rows are observed through the
/// kernels' AttentionMode::kCalibrate (or observe_row()), then finalize() / finalize_compact()
/// build the ThresholdTable(s). Memory is constant per table entry (Welford and bucket sums);
/// rows are never stored. See the file comment for thread safety.
class Calibrator {
 public:
  /// An unusable calibrator (no layers); validate() fails.
  Calibrator() = default;
  /// A calibrator for `options`. The options (and the tables they point to, which must outlive
  /// the calibrator and not change) are checked once here with validate(): a calibrator whose
  /// options do not validate observes nothing (every observe_* call is a no-op, and
  /// observe_causal_block() returns the validate() error), and finalize*() return that error.
  explicit Calibrator(CalibrationOptions options) : opts_(std::move(options)) {
    init();
    ready_ = validate().ok();
  }

  /// Largest num_layers x num_heads a calibrator accepts.
  static constexpr Index kMaxPairs = Index(1) << 24;

 private:
  void init() {
    if (!shape_ok()) return;
    const std::size_t pairs = static_cast<std::size_t>(opts_.num_layers * opts_.num_heads);
    if (opts_.k_values.empty()) {
      set_k_.emplace_back();
      for (Index l = 0; l < opts_.num_layers; ++l)
        set_k_.back().push_back(opts_.layer_k.empty() || Index(opts_.layer_k.size()) != opts_.num_layers
                                    ? opts_.default_k
                                    : opts_.layer_k[static_cast<std::size_t>(l)]);
    } else {
      std::vector<Index> ks = opts_.k_values;
      std::sort(ks.begin(), ks.end());
      for (Index k : ks) set_k_.emplace_back(static_cast<std::size_t>(opts_.num_layers), k);
    }
    min_k_.assign(static_cast<std::size_t>(opts_.num_layers), 0);
    for (Index l = 0; l < opts_.num_layers; ++l)
      for (const auto& v : set_k_) {
        Index& m = min_k_[static_cast<std::size_t>(l)];
        m = (m == 0 || v[static_cast<std::size_t>(l)] < m) ? v[static_cast<std::size_t>(l)] : m;
      }
    rows_seen_.assign(pairs, 0);
    heads_.resize(pairs * set_k_.size());
    const std::vector<Index> ks = table_ks();
    for (std::size_t si = 0; si < set_k_.size(); ++si)
      sdc_tables_.push_back(opts_.sdc_threshold_set ? opts_.sdc_threshold_set->find(ks[si])
                                                    : opts_.sdc_thresholds);
  }

 public:
  /// Checks every option; the message names the field at fault (`CalibrationOptions::<field>`)
  /// and its value: num_layers / num_heads >= 1 (and layers x heads <= kMaxPairs); default_k >= 1
  /// when layer_k is empty, else layer_k has num_layers values, each >= 1; lambda finite and
  /// >= 0; sample_fraction in (0, 1]; sdc_thresholds, when set, a valid and complete table with
  /// the calibrator's shape and placement. Call it before observing rows.
  Status validate() const {
    const auto bad = [](const std::string& field, const std::string& m) {
      return Status::invalid_argument("CalibrationOptions::" + field + " " + m);
    };
    if (opts_.num_layers < 1)
      return bad("num_layers", "must be >= 1, got " + std::to_string(opts_.num_layers));
    if (opts_.num_heads < 1)
      return bad("num_heads", "must be >= 1, got " + std::to_string(opts_.num_heads));
    if (!shape_ok())
      return bad("num_layers", "x num_heads = " + std::to_string(opts_.num_layers) + " x " +
                                   std::to_string(opts_.num_heads) + " exceeds " +
                                   std::to_string(kMaxPairs) + " (layer, head) pairs");
    if (opts_.layer_k.empty()) {
      if (opts_.default_k < 1)
        return bad("default_k", "must be >= 1, got " + std::to_string(opts_.default_k));
    } else {
      if (Index(opts_.layer_k.size()) != opts_.num_layers)
        return bad("layer_k", "has " + std::to_string(opts_.layer_k.size()) +
                                  " values but num_layers is " + std::to_string(opts_.num_layers) +
                                  " (one k per layer, or leave it empty to use default_k)");
      for (std::size_t l = 0; l < opts_.layer_k.size(); ++l)
        if (opts_.layer_k[l] < 1)
          return bad("layer_k[" + std::to_string(l) + "]",
                     "must be >= 1, got " + std::to_string(opts_.layer_k[l]));
    }
    if (!opts_.k_values.empty()) {
      if (!opts_.layer_k.empty())
        return bad("k_values", "and layer_k exclude each other (several budgets, each for every layer)");
      for (std::size_t i = 0; i < opts_.k_values.size(); ++i) {
        if (opts_.k_values[i] < 1)
          return bad("k_values[" + std::to_string(i) + "]",
                     "must be >= 1, got " + std::to_string(opts_.k_values[i]));
        for (std::size_t j = 0; j < i; ++j)
          if (opts_.k_values[j] == opts_.k_values[i])
            return bad("k_values", "lists k = " + std::to_string(opts_.k_values[i]) + " twice");
      }
      if (opts_.sdc_thresholds)
        return bad("sdc_thresholds", "is for a single budget; with k_values use sdc_threshold_set");
    }
    if (opts_.sdc_threshold_set) {
      if (opts_.k_values.empty())
        return bad("sdc_threshold_set", "needs k_values (one table per k)");
      for (Index k : opts_.k_values) {
        const ThresholdTable* t = opts_.sdc_threshold_set->find(k);
        if (!t)
          return bad("sdc_threshold_set", "has no table for k = " + std::to_string(k) +
                                              " (it has k = " + opts_.sdc_threshold_set->ks_text() + ")");
        if (t->num_layers() != opts_.num_layers || t->num_heads() != opts_.num_heads ||
            t->placement() != opts_.placement)
          return bad("sdc_threshold_set", "table k = " + std::to_string(k) +
                                              " does not match the calibrator's shape or placement");
      }
    }
    {
      const Status c = toptheta::validate(opts_.compact);
      if (!c.ok()) return Status(c.code(), "CalibrationOptions::compact: " + c.message());
    }
    if (!(std::isfinite(opts_.lambda) && opts_.lambda >= 0.0))
      return bad("lambda", "must be finite and >= 0, got " + number(opts_.lambda));
    if (!(opts_.sample_fraction > 0.0 && opts_.sample_fraction <= 1.0))
      return bad("sample_fraction", "must be in (0, 1], got " + number(opts_.sample_fraction));
    if (opts_.sdc_thresholds) {
      const ThresholdTable& t = *opts_.sdc_thresholds;
      if (t.num_layers() != opts_.num_layers || t.num_heads() != opts_.num_heads)
        return bad("sdc_thresholds", "has (layers x heads) " +
                                         shape_string(t.num_layers(), t.num_heads()) +
                                         " but the calibrator has " +
                                         shape_string(opts_.num_layers, opts_.num_heads));
      if (t.placement() != opts_.placement)
        return bad("sdc_thresholds", std::string("holds ") + to_string(t.placement()) +
                                         "-softmax thresholds but the calibrator's placement is " +
                                         to_string(opts_.placement) +
                                         "-softmax (the SDC pass compares the same values with them)");
      const Status v = t.validate();
      if (!v.ok()) return Status(v.code(), "CalibrationOptions::sdc_thresholds: " + v.message());
    }
    return {};
  }

  /// The options the calibrator was built with.
  const CalibrationOptions& options() const { return opts_; }
  /// The placement whose values are calibrated (CalibrationOptions::placement).
  Placement placement() const { return opts_.placement; }
  /// Budget k_l of a layer; with several budgets (k_values), the smallest.
  Index k(Index layer) const {
    if (!min_k_.empty()) return min_k_[static_cast<std::size_t>(layer)];
    return opts_.layer_k.empty() ? opts_.default_k : opts_.layer_k[static_cast<std::size_t>(layer)];
  }
  /// The budgets of the tables this calibration produces (one per table), ascending.
  std::vector<Index> table_ks() const {
    std::vector<Index> v;
    for (const auto& s : set_k_) {
      Index m = s.empty() ? 0 : s[0];
      for (Index k : s) m = std::min(m, k);
      v.push_back(m);
    }
    return v;
  }

  /// Observes one row of (layer, head): `scores[0..L)` are its scores s_j after the §2 rules
  /// (NaN already -inf, +inf already the largest finite value: what the kernels pass), `a[0..L)`
  /// its placement values (`a` = `scores` for pre-softmax, the probabilities p_j for
  /// post-softmax), `row_max` = max_j s_j (used only for the SDC term). `scratch` holds at least
  /// L values and is clobbered.
  ///
  /// Eligibility (semantics §8), the same for both placements: a row with at most k_l unmasked
  /// keys (s_j > -inf) has no tau and is skipped for budget k_l; so are rows with L <= k_l
  /// (never thresholded). In particular masked keys (p_j = 0 in post-softmax) never make a row
  /// eligible.
  ///
  /// Robustness: a NaN in `a` or `scores` (a caller that did not apply §2) counts as a masked key
  /// (-inf) and never reaches the selection. A calibrator whose options did not validate observes
  /// nothing. A (layer, head) out of range, L < 0 or a null pointer is not observed and is
  /// recorded: finalize*() then fail with observe_status(). The sizes of the buffers cannot be
  /// checked: each must hold L values.
  template <class Acc>
  void observe_row(Index layer, Index head, const Acc* a, Index L, const Acc* scores, Acc row_max,
                   Acc* scratch) {
    if (!ready_) return;
    if (!row_ok("observe_row()", layer, head, L)) return;
    if (L > 0 && (!a || !scores || !scratch)) {  // recorded for rows too short to observe too
      reject("observe_row(): a, scores and scratch must not be null (L = " + std::to_string(L) + ")");
      return;
    }
    if (L <= k(layer)) return;
    // Unmasked keys: s_j > -inf (false for NaN, which §2 masks).
    Index unmasked = 0;
    for (Index j = 0; j < L; ++j) unmasked += scores[j] > -std::numeric_limits<Acc>::infinity();
    if (unmasked <= k(layer)) return;  // no budget has a tau (the smallest needs > k values)
    const std::size_t pair = slot(layer, head);
    const std::uint64_t row_id = rows_seen_[pair]++;
    if (opts_.sample_fraction < 1.0 && !sampled(layer, head, L, row_id)) return;
    const std::size_t ns = set_k_.size();
    // The (k+1)-th largest for every eligible budget, largest k first, each selection on the
    // front part left by the previous one: O(L + sum of k).
    Index prev = L;
    bool copied = false;
    const bool post = opts_.placement == Placement::kPostSoftmax;
    const int b = opts_.compact.buckets_per_octave;
    const int bucket = length_bucket(L, b);
    const double bx = std::log(double(L)) - bucket_log_edge(bucket, b);
    for (std::size_t si = ns; si-- > 0;) {
      const Index kl = set_k_[si][static_cast<std::size_t>(layer)];
      if (unmasked <= kl) continue;  // at most k_l unmasked keys (or L <= k_l): no tau
      if (!copied) {
        // §2 on the copy: NaN (unordered, UB for nth_element) becomes -inf, +inf the largest
        // finite value; a no-op for rows that follow the precondition.
        for (Index j = 0; j < L; ++j) scratch[j] = detail::sanitize_score(a[j]);
        copied = true;
      }
      std::nth_element(scratch, scratch + kl, scratch + prev, std::greater<Acc>());
      prev = kl;
      // tau = (k+1)-th largest: exactly k values are strictly greater (absent ties).
      const double tau = double(scratch[kl]);
      if (!std::isfinite(tau)) continue;  // only if `a` contradicts `scores`
      HeadAcc& ha = heads_[si * pair_count() + pair];
      double sdc = 0.0;
      const ThresholdTable* st = sdc_table(si);
      if (st) {
        const double theta = st->lookup(layer, head, L).theta;
        double dropped = 0.0;
        Index kept = 0, argmax = -1;
        for (Index j = 0; j < L; ++j) {
          // A NaN in either buffer is a masked key (§2): exp(s_j - M) = 0, and it is never the
          // row maximum (a NaN at key 0 made every a[j] > a[argmax] false: a NaN SDC term).
          if (std::isnan(scores[j]) || std::isnan(a[j])) continue;
          const Acc sj = detail::sanitize_score(scores[j]);  // +inf: the largest finite value
          if (double(a[j]) > theta) {
            ++kept;
          } else {
            dropped += double(detail::exp_shifted(sj, row_max));
          }
          if (argmax < 0 || a[j] > a[argmax]) argmax = j;
        }
        // keep-max empty-row policy: the row maximum is kept, so it is not part of the sum.
        if (kept == 0 && argmax >= 0)
          dropped -= double(detail::exp_shifted(detail::sanitize_score(scores[argmax]), row_max));
        sdc = dropped > 0.0 ? dropped : 0.0;
      }
      if (opts_.per_length) {
        if (Index(ha.per_length.size()) <= L) ha.per_length.resize(static_cast<std::size_t>(L) + 1);
        LengthAcc& acc = ha.per_length[static_cast<std::size_t>(L)];
        acc.add(tau);
        acc.sdc_sum += sdc;
      }
      if (int(ha.buckets.size()) <= bucket) ha.buckets.resize(static_cast<std::size_t>(bucket) + 1);
      BucketStats& bs = ha.buckets[static_cast<std::size_t>(bucket)];
      bs.add(bx, post ? double(L) * tau : tau);
      bs.note_length(L);
      if (st) bs.add_sdc(sdc);
      ++ha.rows_used;
    }
  }

  /// Convenience: observe a row of raw scores `s[0..L)` of (layer, head). Applies the §2 rules
  /// (NaN is -inf, a masked key; +inf the largest finite float), then the placement, then
  /// observe_row(). A calibrator whose options did not validate observes nothing; a (layer,
  /// head) out of range, L < 0 or a null `s` with L > 0 is not observed and is recorded
  /// (observe_status(), reported by finalize*()). Allocates on every call; use the kernels'
  /// kCalibrate mode or observe_row() in hot loops.
  void observe_scores(Index layer, Index head, const float* s, Index L) {
    if (!ready_) return;
    if (!row_ok("observe_scores()", layer, head, L)) return;
    if (L > 0 && !s) {  // recorded for rows too short to observe too
      reject("observe_scores(): s is null (L = " + std::to_string(L) + ")");
      return;
    }
    if (L <= k(layer)) return;
    const std::size_t n = static_cast<std::size_t>(L);
    std::vector<float> sv(n), scratch(n);
    for (std::size_t j = 0; j < n; ++j) sv[j] = detail::sanitize_score(s[j]);
    const float m = detail::row_max(sv.data(), L);
    if (opts_.placement == Placement::kPostSoftmax) {
      std::vector<float> p(n);
      detail::softmax_probs(sv.data(), L, m, p.data());
      observe_row<float>(layer, head, p.data(), L, sv.data(), m, scratch.data());
    } else {
      observe_row<float>(layer, head, sv.data(), L, sv.data(), m, scratch.data());
    }
  }

  /// Convenience: observe the rows of a causal score block `(T x cols)` of (layer, head): row i
  /// has length `past + i + 1`, so `cols` must be at least `past + T` (entries beyond a row's
  /// length are ignored). Each row as observe_scores(). Checks everything first and observes
  /// nothing on error: the validate() error of a calibrator whose options are invalid, or
  /// kInvalidArgument for a (layer, head) out of range, past < 0, a null or malformed view, or
  /// cols < past + T.
  Status observe_causal_block(Index layer, Index head, MatrixView<const float> scores, Index past) {
    if (!ready_) return validate();
    const auto bad = [](const std::string& m) {
      return Status::invalid_argument("observe_causal_block(): " + m);
    };
    if (!pair_ok(layer, head))
      return bad("(layer, head) = (" + std::to_string(layer) + ", " + std::to_string(head) +
                 ") is out of range for the " + shape_string(opts_.num_layers, opts_.num_heads) +
                 " (layers x heads) calibrator");
    if (past < 0) return bad("past must be >= 0, got " + std::to_string(past));
    if (scores.rows < 0 || scores.cols < 0)
      return bad("scores has negative shape (" + std::to_string(scores.rows) + " x " +
                 std::to_string(scores.cols) + ")");
    if (scores.rows == 0) return {};
    if (!scores.data) return bad("scores.data is null");
    if (scores.rows > 1 && scores.row_stride < scores.cols)
      return bad("scores.row_stride = " + std::to_string(scores.row_stride) + " is below cols = " +
                 std::to_string(scores.cols));
    if (scores.cols - scores.rows < past)
      return bad("scores has cols = " + std::to_string(scores.cols) + " but past + rows = " +
                 std::to_string(past) + " + " + std::to_string(scores.rows) +
                 " (row i has length past + i + 1, the last one past + rows)");
    for (Index i = 0; i < scores.rows; ++i) observe_scores(layer, head, scores.row(i), past + i + 1);
    return {};
  }

  /// Ok, or kInvalidArgument describing the first of the rows observe_row() / observe_scores()
  /// rejected (a (layer, head) out of range, L < 0, a null pointer) and how many there were.
  /// finalize*() return it: a calibration fed such rows has no trustworthy table.
  Status observe_status() const {
    std::lock_guard<std::mutex> g(call_log_.m);
    if (call_log_.rejected == 0) return {};
    return Status::invalid_argument(
        "the calibrator rejected " + std::to_string(call_log_.rejected) + " observed row" +
        (call_log_.rejected == 1 ? "" : "s") + "; the first: " + call_log_.first_rejection);
  }

  /// head_dim of the kernel calls observed so far (kCalibrate), 0 before the first call and for
  /// a calibrator fed only through observe_row() / observe_scores(). finalize*() write it into
  /// the tables' metadata, and Top-θ calls with the tables must match it (semantics §8).
  Index recorded_head_dim() const {
    std::lock_guard<std::mutex> g(call_log_.m);
    return call_log_.head_dim;
  }
  /// Effective score scale of the kernel calls observed so far (`AttentionArgs::scale`, or
  /// 1/sqrt(head_dim) when that is 0), 0 before the first call; as recorded_head_dim().
  double recorded_score_scale() const {
    std::lock_guard<std::mutex> g(call_log_.m);
    return call_log_.score_scale;
  }

  /// Ok when a kCalibrate call of head_dim `d` and effective score scale `scale` agrees with the
  /// geometry recorded so far and with the SDC pass's thresholds (sdc_thresholds /
  /// sdc_threshold_set, when they record one); else kInvalidArgument naming both. Also
  /// kInvalidArgument for d > kMaxRecordedHeadDim, which no table records. The kernels'
  /// validate() calls it, so a disagreeing call observes nothing.
  Status check_call_geometry(Index d, double scale) const {
    if (d > kMaxRecordedHeadDim)
      return Status::invalid_argument(
          "calibration calls need head_dim <= " + std::to_string(kMaxRecordedHeadDim) +
          " (the largest a threshold table records), got " + std::to_string(d));
    if (opts_.sdc_thresholds)
      TOPTHETA_RETURN_IF_ERROR(detail::check_geometry(
          opts_.sdc_thresholds->metadata().head_dim, opts_.sdc_thresholds->metadata().score_scale,
          d, scale, "CalibrationOptions::sdc_thresholds"));
    if (opts_.sdc_threshold_set)
      for (const ThresholdTable& t : opts_.sdc_threshold_set->tables())
        TOPTHETA_RETURN_IF_ERROR(detail::check_geometry(t.metadata().head_dim,
                                                        t.metadata().score_scale, d, scale,
                                                        "CalibrationOptions::sdc_threshold_set"));
    std::lock_guard<std::mutex> g(call_log_.m);
    return detail::check_geometry(call_log_.head_dim, call_log_.score_scale, d, scale,
                                  "the calibrator's earlier calls");
  }

  /// Records the geometry of a kCalibrate kernel call (the kernels call it once per call, before
  /// its rows): the first call's is kept; a call that disagrees with it (which validate() has
  /// refused unless another thread recorded first) is recorded as rejected (observe_status()),
  /// so finalize*() fail.
  void record_call_geometry(Index d, double scale) {
    std::string problem;
    {
      std::lock_guard<std::mutex> g(call_log_.m);
      if (call_log_.head_dim == 0) {
        call_log_.head_dim = d;
        call_log_.score_scale = scale;
        return;
      }
      const Status e = detail::check_geometry(call_log_.head_dim, call_log_.score_scale, d, scale,
                                              "the calibrator's earlier calls");
      if (e.ok()) return;
      problem = "kernel call: " + e.message();
    }
    reject(std::move(problem));
  }

  /// Adds the observations of `other` (same options; `lambda` and the compact fit's options are
  /// this calibrator's at finalize*()). With sample_fraction 1 it is equivalent, up to rounding,
  /// to having observed both streams with one calibrator. With sampling each calibrator draws its
  /// own coins (keyed on its own row count), so the merge keeps the same expected fraction of the
  /// rows but not the rows one calibrator would have kept; give shards different seeds, or their
  /// coins repeat row for row. kInvalidArgument for kernel calls of another head_dim or score
  /// scale (recorded_head_dim()), a different shape, budgets, per_length or
  /// buckets_per_octave, placement, sample_fraction, or SDC pass.
  Status merge(const Calibrator& other) {
    if (other.opts_.num_layers != opts_.num_layers || other.opts_.num_heads != opts_.num_heads)
      return Status::invalid_argument("cannot merge calibrators of shapes " +
                                      shape_string(opts_.num_layers, opts_.num_heads) + " and " +
                                      shape_string(other.opts_.num_layers, other.opts_.num_heads));
    if (other.set_k_ != set_k_)
      return Status::invalid_argument("cannot merge calibrators with different budgets");
    if (other.opts_.per_length != opts_.per_length ||
        other.opts_.compact.buckets_per_octave != opts_.compact.buckets_per_octave)
      return Status::invalid_argument(
          "cannot merge calibrators with different per_length or buckets_per_octave");
    if (other.opts_.placement != opts_.placement)
      return Status::invalid_argument("cannot merge calibrators with different placements");
    if (other.opts_.sample_fraction != opts_.sample_fraction)
      return Status::invalid_argument("cannot merge calibrators with different sample fractions (" +
                                      number(opts_.sample_fraction) + " and " +
                                      number(other.opts_.sample_fraction) + ")");
    if ((other.opts_.sdc_thresholds == nullptr) != (opts_.sdc_thresholds == nullptr) ||
        (other.opts_.sdc_threshold_set == nullptr) != (opts_.sdc_threshold_set == nullptr))
      return Status::invalid_argument("cannot merge a calibrator with SDC terms and one without");
    const CallLog theirs(other.call_log_);  // copied under other's lock
    {
      std::lock_guard<std::mutex> g(call_log_.m);
      if (theirs.head_dim != 0 && !detail::check_geometry(call_log_.head_dim, call_log_.score_scale,
                                                          theirs.head_dim, theirs.score_scale, "")
                                       .ok())
        return Status::invalid_argument(
            "cannot merge calibrators whose kernel calls had different geometry: head_dim " +
            std::to_string(call_log_.head_dim) + ", score scale " + number(call_log_.score_scale) +
            " and head_dim " + std::to_string(theirs.head_dim) + ", score scale " +
            number(theirs.score_scale));
      if (call_log_.rejected == 0) call_log_.first_rejection = theirs.first_rejection;
      call_log_.rejected += theirs.rejected;
      if (call_log_.head_dim == 0) {
        call_log_.head_dim = theirs.head_dim;
        call_log_.score_scale = theirs.score_scale;
      }
    }
    for (std::size_t i = 0; i < rows_seen_.size(); ++i) rows_seen_[i] += other.rows_seen_[i];
    for (std::size_t i = 0; i < heads_.size(); ++i) {
      HeadAcc& a = heads_[i];
      const HeadAcc& b = other.heads_[i];
      a.rows_used += b.rows_used;
      if (a.per_length.size() < b.per_length.size()) a.per_length.resize(b.per_length.size());
      for (std::size_t L = 0; L < b.per_length.size(); ++L) a.per_length[L].merge(b.per_length[L]);
      if (a.buckets.size() < b.buckets.size()) a.buckets.resize(b.buckets.size());
      for (std::size_t j = 0; j < b.buckets.size(); ++j) a.buckets[j].merge(b.buckets[j]);
    }
    return {};
  }

  /// Rows that contributed a tau (after sampling), over all layers and heads, for the first
  /// (smallest) budget.
  std::uint64_t rows_used() const { return rows_used_of(0); }
  /// Rows that contributed a tau for budget number `set` (index into table_ks()).
  std::uint64_t rows_used_of(std::size_t set) const {
    std::uint64_t n = 0;
    for (std::size_t p = 0; p < pair_count(); ++p) n += heads_[set * pair_count() + p].rows_used;
    return n;
  }

  /// The calibrated table of a single-budget calibration, checked: validate() of the options,
  /// observe_status(), and every (layer, head) must have received at least one eligible row
  /// (else kFailedPrecondition naming the pairs that got none). A calibration with several
  /// budgets (`CalibrationOptions::k_values` with more than one k) has one table per budget, so
  /// this fails with kFailedPrecondition: use finalize_per_length() or finalize_compact() (a
  /// ThresholdSet). On error `*out` is untouched. Heads meant to keep every score can be declared
  /// dense on the result of finalize() with ThresholdTable::set_dense() instead.
  Status finalize(ThresholdTable* out) const {
    TOPTHETA_RETURN_IF_ERROR(validate());
    TOPTHETA_RETURN_IF_ERROR(observe_status());
    if (set_k_.size() > 1)
      return Status::failed_precondition(
          "finalize(ThresholdTable*): the calibration has " + std::to_string(set_k_.size()) +
          " budgets (CalibrationOptions::k_values, k = " + ks_text() +
          "), one table each; use finalize_per_length() or finalize_compact(), which return a "
          "ThresholdSet");
    if (!opts_.per_length)
      return Status::failed_precondition(
          "finalize(): CalibrationOptions::per_length is off; use finalize_compact()");
    ThresholdTable t = finalize_set(0);
    TOPTHETA_RETURN_IF_ERROR(check_missing(t));
    *out = std::move(t);
    return {};
  }

  /// Per-length tables of every budget (per_length must be on), checked like finalize().
  Status finalize_per_length(ThresholdSet* out) const {
    TOPTHETA_RETURN_IF_ERROR(validate());
    TOPTHETA_RETURN_IF_ERROR(observe_status());
    if (!opts_.per_length)
      return Status::failed_precondition(
          "finalize_per_length(): CalibrationOptions::per_length is off; use finalize_compact()");
    ThresholdSet set;
    for (std::size_t si = 0; si < set_k_.size(); ++si) {
      ThresholdTable t = finalize_set(si);
      TOPTHETA_RETURN_IF_ERROR(check_missing(t));
      TOPTHETA_RETURN_IF_ERROR(set.add(std::move(t)));
    }
    *out = std::move(set);
    return {};
  }

  /// Compact tables of every budget (threshold_fit.hpp), checked like finalize(); `report`, when
  /// given, receives the per-(k, layer, head, bucket) sample counts and the buckets with fewer
  /// than `compact.min_bucket_samples` rows (CalibrationReport::warnings()).
  Status finalize_compact(ThresholdSet* out, CalibrationReport* report = nullptr) const {
    TOPTHETA_RETURN_IF_ERROR(validate());
    TOPTHETA_RETURN_IF_ERROR(observe_status());
    ThresholdSet set;
    CalibrationReport rep = make_report();
    const bool post = opts_.placement == Placement::kPostSoftmax;
    const bool sdc = sdc_table(0) != nullptr;
    const std::vector<Index> ks = table_ks();
    for (std::size_t si = 0; si < set_k_.size(); ++si) {
      ThresholdTable t = ThresholdTable::compact(opts_.num_layers, opts_.num_heads);
      fill_metadata(&t, si);
      t.metadata().buckets_per_octave = opts_.compact.buckets_per_octave;
      for (Index l = 0; l < opts_.num_layers; ++l)
        for (Index h = 0; h < opts_.num_heads; ++h) {
          SparseBucket where;
          where.k = ks[si];
          where.layer = l;
          where.head = h;
          ThresholdCurve c = fit_curve(heads_[si * pair_count() + slot(l, h)].buckets, post,
                                       opts_.lambda, sdc, opts_.compact, &rep.sparse, where);
          if (!c.empty()) TOPTHETA_RETURN_IF_ERROR(t.set_curve(l, h, std::move(c)));
        }
      TOPTHETA_RETURN_IF_ERROR(check_missing(t));
      TOPTHETA_RETURN_IF_ERROR(set.add(std::move(t)));
    }
    *out = std::move(set);
    if (report) *report = std::move(rep);
    return {};
  }

  /// The sample counts per (k, layer, head, bucket) so far (no sparse-bucket list: that comes
  /// with finalize_compact()).
  CalibrationReport make_report() const {
    CalibrationReport r;
    r.buckets_per_octave = opts_.compact.buckets_per_octave;
    r.min_bucket_samples = opts_.compact.min_bucket_samples;
    r.num_layers = opts_.num_layers;
    r.num_heads = opts_.num_heads;
    r.ks = table_ks();
    for (const HeadAcc& ha : heads_) {
      std::vector<std::uint64_t> c;
      for (const auto& b : ha.buckets) c.push_back(std::uint64_t(std::llround(b.n)));
      r.counts.push_back(std::move(c));
    }
    return r;
  }

 private:
  Status check_missing(const ThresholdTable& t) const {
    const std::size_t missing = t.num_missing_heads();
    if (missing > 0)
      return Status::failed_precondition(std::string(set_k_.size() > 1 ? "k = " + std::to_string(t.nominal_k()) + ": " : "") +
          "calibration gave no thresholds for " + std::to_string(missing) + " of " +
          std::to_string(opts_.num_layers * opts_.num_heads) + " (layer, head) pairs of the " +
          shape_string(opts_.num_layers, opts_.num_heads) + " (layers x heads) calibrator: " +
          t.describe_heads(false) +
          " (no eligible rows: a row counts when its length L > k_l, it has more than k_l unmasked "
          "keys (scores > -inf) and it is sampled; observe longer or more rows, or use a smaller "
          "k)");
    return {};
  }

 public:

  /// The calibrated table, unchecked: one entry per (layer, head, L) with at least one sample. A
  /// (layer, head) that received no eligible row has no entries, so the table is incomplete and
  /// fails validate(), saving and the kernels' check; prefer finalize(ThresholdTable*), which
  /// reports such pairs (and rejected rows). With several budgets (k_values) this is the table
  /// of the smallest k only (table_ks()[0]); finalize_per_length() gives all of them.
  ThresholdTable finalize() const { return finalize_set(0); }

 private:
  void fill_metadata(ThresholdTable* t, std::size_t si) const {
    for (Index l = 0; l < opts_.num_layers; ++l)
      (void)t->set_k(l, set_k_[si][static_cast<std::size_t>(l)]);
    t->metadata().placement = opts_.placement;
    t->metadata().lambda = opts_.lambda;
    t->metadata().calibration_rows = rows_used_of(si);
    t->metadata().model_id = opts_.model_id;
    std::lock_guard<std::mutex> g(call_log_.m);
    t->metadata().head_dim = call_log_.head_dim;
    t->metadata().score_scale = call_log_.score_scale;
  }
  ThresholdTable finalize_set(std::size_t si) const {
    ThresholdTable t(opts_.num_layers, opts_.num_heads, opts_.default_k);
    fill_metadata(&t, si);
    for (Index l = 0; l < opts_.num_layers; ++l)
      for (Index h = 0; h < opts_.num_heads; ++h) {
        const HeadAcc& ha = heads_[si * pair_count() + slot(l, h)];
        for (std::size_t L = 0; L < ha.per_length.size(); ++L) {
          const LengthAcc& a = ha.per_length[L];
          if (a.count == 0) continue;
          ThresholdEntry e;
          e.length = Index(L);
          e.samples = a.count;
          e.theta = a.mean + opts_.lambda * std::sqrt(std::max(a.m2 / double(a.count), 0.0));
          if (sdc_table(si)) e.sdc = a.sdc_sum / double(a.count);
          (void)t.set(l, h, e);
        }
      }
    return t;
  }

  struct LengthAcc {  // Welford accumulator of tau, plus the SDC sum
    std::uint64_t count = 0;
    double mean = 0.0;
    double m2 = 0.0;
    double sdc_sum = 0.0;
    void add(double x) {
      ++count;
      const double d = x - mean;
      mean += d / double(count);
      m2 += d * (x - mean);
    }
    void merge(const LengthAcc& o) {  // Chan et al. parallel update
      if (o.count == 0) return;
      if (count == 0) {
        *this = o;
        return;
      }
      const double n = double(count + o.count);
      const double d = o.mean - mean;
      mean += d * double(o.count) / n;
      m2 += o.m2 + d * d * double(count) * double(o.count) / n;
      count += o.count;
      sdc_sum += o.sdc_sum;
    }
  };
  struct HeadAcc {
    std::uint64_t rows_used = 0;        // rows that contributed a tau
    std::vector<LengthAcc> per_length;  // indexed by L (per_length on)
    std::vector<BucketStats> buckets;   // indexed by length bucket
  };
  std::size_t pair_count() const { return rows_seen_.size(); }
  const ThresholdTable* sdc_table(std::size_t si) const {
    return si < sdc_tables_.size() ? sdc_tables_[si] : nullptr;
  }

  std::size_t slot(Index layer, Index head) const {
    return static_cast<std::size_t>(layer * opts_.num_heads + head);
  }
  bool pair_ok(Index layer, Index head) const {
    return layer >= 0 && layer < opts_.num_layers && head >= 0 && head < opts_.num_heads;
  }
  std::string ks_text() const {
    std::string t;
    for (Index k : table_ks()) t += (t.empty() ? "" : ", ") + std::to_string(k);
    return t;
  }
  // A row an observe_* call can take: (layer, head) in range and L >= 0; else recorded.
  bool row_ok(const char* fn, Index layer, Index head, Index L) {
    if (TOPTHETA_LIKELY(pair_ok(layer, head) && L >= 0)) return true;
    if (!pair_ok(layer, head))
      reject(std::string(fn) + ": (layer, head) = (" + std::to_string(layer) + ", " +
             std::to_string(head) + ") is out of range for the " +
             shape_string(opts_.num_layers, opts_.num_heads) + " (layers x heads) calibrator");
    else
      reject(std::string(fn) + ": L must be >= 0, got " + std::to_string(L));
    return false;
  }
  void reject(std::string what) {
    std::lock_guard<std::mutex> g(call_log_.m);
    if (call_log_.rejected++ == 0) call_log_.first_rejection = std::move(what);
  }
  // What the calls into the calibrator leave behind: the rows observe_* rejected
  // (observe_status()) and the geometry of the kernel calls (record_call_geometry(); 0 = none
  // yet). Thread-safe, copied with the calibrator.
  struct CallLog {
    mutable std::mutex m;
    std::uint64_t rejected = 0;  // rows rejected
    std::string first_rejection;
    Index head_dim = 0;
    double score_scale = 0.0;
    CallLog() = default;
    CallLog(const CallLog& o) {
      std::lock_guard<std::mutex> g(o.m);
      rejected = o.rejected;
      first_rejection = o.first_rejection;
      head_dim = o.head_dim;
      score_scale = o.score_scale;
    }
    CallLog& operator=(const CallLog& o) {
      if (this != &o) {
        CallLog c(o);
        std::lock_guard<std::mutex> g(m);
        rejected = c.rejected;
        first_rejection = std::move(c.first_rejection);
        head_dim = c.head_dim;
        score_scale = c.score_scale;
      }
      return *this;
    }
  };
  bool shape_ok() const {
    return opts_.num_layers > 0 && opts_.num_heads > 0 && opts_.num_layers <= kMaxPairs &&
           opts_.num_heads <= kMaxPairs / opts_.num_layers;
  }
  static std::string number(double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
  }
  bool sampled(Index layer, Index head, Index L, std::uint64_t row_id) const {
    // SplitMix64 of (seed, layer, head, L, row): a deterministic, order-independent coin.
    std::uint64_t x = opts_.seed ^ (std::uint64_t(layer) << 48) ^ (std::uint64_t(head) << 32) ^
                      (std::uint64_t(L) << 1) ^ (row_id * 0x9E3779B97F4A7C15ull);
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    return double(x >> 11) * 0x1.0p-53 < opts_.sample_fraction;
  }

  CalibrationOptions opts_;
  std::vector<std::vector<Index>> set_k_;  // per table: k per layer
  std::vector<Index> min_k_;               // per layer: smallest k over the tables
  std::vector<std::uint64_t> rows_seen_;   // per (layer, head): eligible rows offered
  std::vector<HeadAcc> heads_;             // [table * pairs + layer * heads + head]
  std::vector<const ThresholdTable*> sdc_tables_;  // per table: the SDC pass's thresholds
  bool ready_ = false;    // validate() passed at construction: observe_* may index the state
  CallLog call_log_;      // rows observe_* rejected, the kernel calls' geometry
};


/// The tables of a calibration (calibrate_two_pass()).
struct CalibrationResult {
  ThresholdSet compact;     ///< compact tables, one per budget
  ThresholdSet per_length;  ///< per-length tables (when CalibrationOptions::per_length is on)
  CalibrationReport report;  ///< bucket sample counts and warnings of the compact fit
};

namespace detail {
inline bool same_thresholds(const ThresholdTable& a, const ThresholdTable& b) {
  for (Index l = 0; l < a.num_layers(); ++l)
    for (Index h = 0; h < a.num_heads(); ++h) {
      if (a.is_compact()) {
        const auto &x = a.curve(l, h).knots, &y = b.curve(l, h).knots;
        if (x.size() != y.size()) return false;
        for (std::size_t i = 0; i < x.size(); ++i)
          if (x[i].length != y[i].length || x[i].value != y[i].value) return false;
      } else {
        const auto &x = a.entries(l, h), &y = b.entries(l, h);
        if (x.size() != y.size()) return false;
        for (std::size_t i = 0; i < x.size(); ++i)
          if (x[i].length != y[i].length || x[i].theta != y[i].theta) return false;
      }
    }
  return true;
}
}  // namespace detail

/// Calibration in one or two passes over the same rows. `run_pass(Calibrator&)` (returning
/// Status) must feed the calibrator the same rows every time it is called, e.g. run the model over
/// the calibration sequences in AttentionMode::kCalibrate with that calibrator.
/// - Pass 1 calibrates the thresholds: compact tables for every budget, and per-length ones when
///   `opts.per_length` is on; `out->report` gets the bucket sample counts and warnings.
/// - With `sdc_terms`, pass 2 runs the rows again with the SDC accumulation against the tables
///   of pass 1 (`sdc_threshold_set` / `sdc_thresholds`) and stores the SDC terms C(l, h, L) in
///   them: one more pass for the compact tables, and one for the per-length tables when wanted.
///   The thresholds of pass 2 must equal those of pass 1 (the same rows), else
///   kFailedPrecondition.
/// `opts.sdc_thresholds` / `sdc_threshold_set` are ignored. On error `*out` is untouched.
template <class RunPass>
Status calibrate_two_pass(CalibrationOptions opts, bool sdc_terms, RunPass&& run_pass,
                          CalibrationResult* out) {
  opts.sdc_thresholds = nullptr;
  opts.sdc_threshold_set = nullptr;
  CalibrationResult r;
  {
    Calibrator cal(opts);
    TOPTHETA_RETURN_IF_ERROR(cal.validate());
    TOPTHETA_RETURN_IF_ERROR(run_pass(cal));
    TOPTHETA_RETURN_IF_ERROR(cal.finalize_compact(&r.compact, &r.report));
    if (opts.per_length) TOPTHETA_RETURN_IF_ERROR(cal.finalize_per_length(&r.per_length));
  }
  if (sdc_terms) {
    const auto sdc_pass = [&](ThresholdSet* set, bool compact) -> Status {
      CalibrationOptions o = opts;
      o.per_length = !compact;
      if (o.k_values.empty()) o.sdc_thresholds = &set->tables().front();
      else o.sdc_threshold_set = set;
      Calibrator cal(o);
      TOPTHETA_RETURN_IF_ERROR(cal.validate());
      TOPTHETA_RETURN_IF_ERROR(run_pass(cal));
      ThresholdSet got;
      if (compact) TOPTHETA_RETURN_IF_ERROR(cal.finalize_compact(&got));
      else TOPTHETA_RETURN_IF_ERROR(cal.finalize_per_length(&got));
      if (got.size() != set->size())
        return Status::failed_precondition("SDC pass gave a different number of tables");
      for (std::size_t i = 0; i < got.size(); ++i)
        if (!detail::same_thresholds(got.tables()[i], set->tables()[i]))
          return Status::failed_precondition(
              "SDC pass saw different rows than the threshold pass (run_pass must feed the same "
              "rows every time)");
      *set = std::move(got);
      return {};
    };
    TOPTHETA_RETURN_IF_ERROR(sdc_pass(&r.compact, true));
    if (opts.per_length) TOPTHETA_RETURN_IF_ERROR(sdc_pass(&r.per_length, false));
  }
  *out = std::move(r);
  return {};
}

}  // namespace toptheta
