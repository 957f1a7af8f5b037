#pragma once
/// \file calibrator.hpp
/// `Calibrator`: streaming per-(layer, head, length) threshold calibration (DESIGN.md section 2,
/// "Calibration").
///
/// For every observed row of length L > k_l it takes tau = the (k_l + 1)-th largest value a_j
/// and folds it into a Welford accumulator of (layer, head, L); `finalize()` turns the
/// accumulators into theta = mean + lambda * std (population std). Memory is O(layers * heads *
/// max L), independent of the number of rows observed. Optionally it also accumulates the offline
/// SDC term C(l, h, L) = mean over rows of sum_{j not kept} exp(s_j - M) for thresholds from an
/// earlier pass (`CalibrationOptions::sdc_thresholds`).
///
/// Thread safety: observing different (layer, head) pairs concurrently is safe; the same pair must
/// be observed by one thread at a time. Results do not depend on how heads are spread over threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "detail/select.hpp"
#include "detail/softmax_math.hpp"
#include "options.hpp"
#include "status.hpp"
#include "threshold_table.hpp"
#include "types.hpp"

namespace toptheta {

/// Top-k at calibration: whether a kCalibrate attention call outputs exact top-k (on, the paper's
/// setting) or dense attention (off) for thresholded rows.
enum class TacMode { kOff, kOn };

struct CalibrationOptions {
  Index num_layers = 0;
  Index num_heads = 0;                 ///< query heads per layer
  Index default_k = 64;                ///< k_l for layers without an override
  std::vector<Index> layer_k;          ///< optional per-layer k (size num_layers), overrides default_k
  Placement placement = Placement::kPostSoftmax;  ///< the library's default (docs/results.md)
  double lambda = 0.1;                 ///< theta = mean + lambda * std ("sigma" in the paper)
  double sample_fraction = 1.0;        ///< in (0, 1]: fraction of eligible rows used (seeded)
  std::uint64_t seed = 0;              ///< seed of the row sampling
  TacMode tac = TacMode::kOn;
  /// When set, also accumulate C(l, h, L) using the thresholds of this table (a previous pass).
  const ThresholdTable* sdc_thresholds = nullptr;
  std::string model_id;                ///< copied into the finalized table's metadata
};

class Calibrator {
 public:
  Calibrator() = default;
  explicit Calibrator(CalibrationOptions options) : opts_(std::move(options)) {
    if (shape_ok()) heads_.resize(static_cast<std::size_t>(opts_.num_layers * opts_.num_heads));
  }

  /// Largest num_layers x num_heads a calibrator accepts.
  static constexpr Index kMaxPairs = Index(1) << 24;

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

  const CalibrationOptions& options() const { return opts_; }
  Placement placement() const { return opts_.placement; }
  /// Budget k_l of a layer.
  Index k(Index layer) const {
    return opts_.layer_k.empty() ? opts_.default_k : opts_.layer_k[static_cast<std::size_t>(layer)];
  }

  /// Observes one row of placement values `a[0..L)` (scores for pre-softmax, probabilities for
  /// post-softmax) of (layer, head). `scores` (the raw scores s_j, may equal `a`) and `row_max`
  /// (max_j s_j) are used only for the SDC term. `scratch` holds at least L values and is
  /// clobbered. Rows with L <= k_l are ignored (they are never thresholded).
  template <class Acc>
  void observe_row(Index layer, Index head, const Acc* a, Index L, const Acc* scores, Acc row_max,
                   Acc* scratch) {
    TOPTHETA_ASSERT(layer >= 0 && layer < opts_.num_layers && head >= 0 && head < opts_.num_heads,
                    "layer/head out of range");
    const Index kl = k(layer);
    if (L <= kl) return;
    HeadAcc& ha = heads_[slot(layer, head)];
    const std::uint64_t row_id = ha.rows_seen++;
    if (opts_.sample_fraction < 1.0 && !sampled(layer, head, L, row_id)) return;
    if (Index(ha.per_length.size()) <= L) ha.per_length.resize(static_cast<std::size_t>(L) + 1);
    LengthAcc& acc = ha.per_length[static_cast<std::size_t>(L)];
    // tau = (k+1)-th largest: exactly k values are strictly greater (absent ties).
    const double tau = double(detail::kth_largest(a, L, kl + 1, scratch));
    // A row with at most k finite values (masked padding) has no threshold to learn from.
    if (!std::isfinite(tau)) return;
    acc.add(tau);
    if (opts_.sdc_thresholds) {
      const double theta = opts_.sdc_thresholds->lookup(layer, head, L).theta;
      double dropped = 0.0;
      Index kept = 0, argmax = 0;
      for (Index j = 0; j < L; ++j) {
        if (double(a[j]) > theta) ++kept;
        else dropped += double(detail::exp_shifted(scores[j], row_max));
        if (a[j] > a[argmax]) argmax = j;
      }
      // keep-max empty-row policy: the row maximum is kept, so it is not part of the sum.
      if (kept == 0) dropped -= double(detail::exp_shifted(scores[argmax], row_max));
      acc.sdc_sum += std::max(dropped, 0.0);
    }
  }

  /// Convenience: observe a row of raw scores `s[0..L)` (applies the placement). Allocates
  /// scratch on every call; use the kernels' kCalibrate mode or observe_row() in hot loops.
  void observe_scores(Index layer, Index head, const float* s, Index L) {
    std::vector<float> a(s, s + L), scratch(static_cast<std::size_t>(L));
    float m = detail::row_max(s, L);
    if (opts_.placement == Placement::kPostSoftmax) detail::softmax_probs(s, L, m, a.data());
    observe_row<float>(layer, head, a.data(), L, s, m, scratch.data());
  }

  /// Convenience: observe the rows of a causal score block `(T x cols)`: row i has length
  /// `past + i + 1` (entries beyond it are ignored).
  void observe_causal_block(Index layer, Index head, MatrixView<const float> scores, Index past) {
    for (Index i = 0; i < scores.rows; ++i) observe_scores(layer, head, scores.row(i), past + i + 1);
  }

  /// Adds the observations of `other` (same options). Equivalent, up to rounding, to having
  /// observed both streams with one calibrator.
  Status merge(const Calibrator& other) {
    if (other.opts_.num_layers != opts_.num_layers || other.opts_.num_heads != opts_.num_heads)
      return Status::invalid_argument("cannot merge calibrators of shapes " +
                                      shape_string(opts_.num_layers, opts_.num_heads) + " and " +
                                      shape_string(other.opts_.num_layers, other.opts_.num_heads));
    for (Index l = 0; l < opts_.num_layers; ++l)
      if (k(l) != other.k(l))
        return Status::invalid_argument("cannot merge calibrators with different k at layer " +
                                        std::to_string(l));
    if (other.opts_.placement != opts_.placement)
      return Status::invalid_argument("cannot merge calibrators with different placements");
    if ((other.opts_.sdc_thresholds == nullptr) != (opts_.sdc_thresholds == nullptr))
      return Status::invalid_argument("cannot merge a calibrator with SDC terms and one without");
    for (std::size_t i = 0; i < heads_.size(); ++i) {
      HeadAcc& a = heads_[i];
      const HeadAcc& b = other.heads_[i];
      a.rows_seen += b.rows_seen;
      if (a.per_length.size() < b.per_length.size()) a.per_length.resize(b.per_length.size());
      for (std::size_t L = 0; L < b.per_length.size(); ++L) a.per_length[L].merge(b.per_length[L]);
    }
    return {};
  }

  /// Rows that contributed a tau (after sampling), over all layers and heads.
  std::uint64_t rows_used() const {
    std::uint64_t n = 0;
    for (const auto& h : heads_)
      for (const auto& a : h.per_length) n += a.count;
    return n;
  }

  /// The calibrated table, checked: validate() of the options, and every (layer, head) must have
  /// received at least one eligible row. Otherwise fails (kFailedPrecondition) naming the pairs
  /// that got none, and `*out` is untouched. Heads meant to keep every score can be declared
  /// dense on the result of finalize() with ThresholdTable::set_dense() instead.
  Status finalize(ThresholdTable* out) const {
    TOPTHETA_RETURN_IF_ERROR(validate());
    ThresholdTable t = finalize();
    const std::size_t missing = t.num_missing_heads();
    if (missing > 0)
      return Status::failed_precondition(
          "calibration gave no thresholds for " + std::to_string(missing) + " of " +
          std::to_string(opts_.num_layers * opts_.num_heads) + " (layer, head) pairs of the " +
          shape_string(opts_.num_layers, opts_.num_heads) + " (layers x heads) calibrator: " +
          t.describe_heads(false) +
          " (no eligible rows: a row counts when its length L > k_l, its (k_l+1)-th largest value "
          "is finite and it is sampled; observe longer or more rows, or use a smaller k)");
    *out = std::move(t);
    return {};
  }

  /// The calibrated table, unchecked: one entry per (layer, head, L) with at least one sample. A
  /// (layer, head) that received no eligible row has no entries, so the table is incomplete and
  /// fails validate(), saving and the kernels' check; prefer finalize(ThresholdTable*), which
  /// reports such pairs.
  ThresholdTable finalize() const {
    ThresholdTable t(opts_.num_layers, opts_.num_heads, opts_.default_k);
    for (Index l = 0; l < opts_.num_layers; ++l) (void)t.set_k(l, k(l));
    t.metadata().placement = opts_.placement;
    t.metadata().lambda = opts_.lambda;
    t.metadata().calibration_rows = rows_used();
    t.metadata().model_id = opts_.model_id;
    for (Index l = 0; l < opts_.num_layers; ++l)
      for (Index h = 0; h < opts_.num_heads; ++h) {
        const HeadAcc& ha = heads_[slot(l, h)];
        for (std::size_t L = 0; L < ha.per_length.size(); ++L) {
          const LengthAcc& a = ha.per_length[L];
          if (a.count == 0) continue;
          ThresholdEntry e;
          e.length = Index(L);
          e.samples = a.count;
          e.theta = a.mean + opts_.lambda * std::sqrt(std::max(a.m2 / double(a.count), 0.0));
          if (opts_.sdc_thresholds) e.sdc = a.sdc_sum / double(a.count);
          (void)t.set(l, h, e);
        }
      }
    return t;
  }

 private:
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
    std::uint64_t rows_seen = 0;       // eligible rows offered, sampled or not
    std::vector<LengthAcc> per_length;  // indexed by L
  };

  std::size_t slot(Index layer, Index head) const {
    return static_cast<std::size_t>(layer * opts_.num_heads + head);
  }
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
  std::vector<HeadAcc> heads_;  // [layer * heads + head]
};

}  // namespace toptheta
