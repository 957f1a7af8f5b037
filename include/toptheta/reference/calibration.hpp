#pragma once
/// \file reference/calibration.hpp
/// Deliberately naive double-precision calibration oracle (docs/semantics.md §8, "Calibration"). Test-only: not included by the umbrella header.
///
/// Unlike the streaming `toptheta::Calibrator`, this stores every tau (and every per-row SDC
/// term) in a map of vectors keyed by (layer, head, L), and computes
/// theta = mean(tau) + lambda * std(tau) (population std) in two passes at `finalize()`.
/// Row sampling is not modelled: use `sample_fraction == 1` with this oracle.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <tuple>
#include <vector>

#include "../calibrator.hpp"
#include "../options.hpp"
#include "../threshold_table.hpp"
#include "../types.hpp"

namespace toptheta::reference {

class Calibration {
 public:
  using Key = std::tuple<Index, Index, Index>;  // (layer, head, L)

  Calibration() = default;
  explicit Calibration(CalibrationOptions options) : opts_(std::move(options)) {}

  const CalibrationOptions& options() const { return opts_; }
  Placement placement() const { return opts_.placement; }
  Index k(Index layer) const {
    return opts_.layer_k.empty() ? opts_.default_k : opts_.layer_k[static_cast<std::size_t>(layer)];
  }

  /// Observes one row: `a` = placement values (scores or dense probabilities), `s` = the scores
  /// of the same row after the §2 rules (no NaN, no +inf). A row with at most k_l unmasked keys
  /// (s_j > -inf; so also L <= k_l) has no tau and is ignored, for both placements.
  void observe(Index layer, Index head, const std::vector<double>& a,
               const std::vector<double>& s) {
    const Index L = Index(a.size());
    const Index kl = k(layer);
    if (L <= kl) return;
    Index unmasked = 0;
    for (double x : s) unmasked += x > -std::numeric_limits<double>::infinity();
    if (unmasked <= kl) return;  // at most k unmasked keys: nothing to learn
    // tau: the (k_l + 1)-th largest a_j.
    std::vector<double> sorted = a;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    const double tau = sorted[static_cast<std::size_t>(kl)];
    if (!std::isfinite(tau)) return;
    const Key key{layer, head, L};
    taus_[key].push_back(tau);
    if (opts_.sdc_thresholds) {
      // C = sum over the elements a Top-theta row would drop, exp(s_j - M), with the thresholds of
      // the earlier pass; an empty row keeps its first maximum (keep-max, the default policy).
      const double theta = opts_.sdc_thresholds->lookup(layer, head, L).theta;
      double M = -std::numeric_limits<double>::infinity();
      for (double x : s) M = std::max(M, x);
      std::vector<bool> keep(a.size());
      bool any = false;
      for (std::size_t j = 0; j < a.size(); ++j) {
        keep[j] = a[j] > theta;
        any = any || keep[j];
      }
      if (!any) {
        std::size_t am = 0;
        for (std::size_t j = 1; j < s.size(); ++j)
          if (s[j] > s[am]) am = j;
        keep[am] = true;
      }
      double c = 0.0;
      if (M != -std::numeric_limits<double>::infinity())
        for (std::size_t j = 0; j < s.size(); ++j)
          if (!keep[j]) c += std::exp(s[j] - M);
      sdc_[key].push_back(c);
    }
  }

  /// Observes a row of raw scores: the §2 rules (NaN is -inf, +inf the largest finite double),
  /// then the calibration placement.
  void observe_scores(Index layer, Index head, std::vector<double> s) {
    for (double& x : s) {
      if (std::isnan(x)) x = -std::numeric_limits<double>::infinity();
      else if (x == std::numeric_limits<double>::infinity()) x = std::numeric_limits<double>::max();
    }
    observe(layer, head, placement_values(s), s);
  }

  std::vector<double> placement_values(const std::vector<double>& s) const {
    if (opts_.placement == Placement::kPreSoftmax) return s;
    double M = -std::numeric_limits<double>::infinity();
    for (double x : s) M = std::max(M, x);
    std::vector<double> p(s.size(), 0.0);
    if (M == -std::numeric_limits<double>::infinity()) return p;
    double z = 0.0;
    for (std::size_t j = 0; j < s.size(); ++j) z += (p[j] = std::exp(s[j] - M));
    for (double& x : p) x /= z;
    return p;
  }

  /// Appends the observations of `other`.
  void merge(const Calibration& other) {
    for (const auto& [key, v] : other.taus_)
      taus_[key].insert(taus_[key].end(), v.begin(), v.end());
    for (const auto& [key, v] : other.sdc_) sdc_[key].insert(sdc_[key].end(), v.begin(), v.end());
  }

  std::uint64_t rows_used() const {
    std::uint64_t n = 0;
    for (const auto& kv : taus_) n += kv.second.size();
    return n;
  }
  const std::map<Key, std::vector<double>>& taus() const { return taus_; }
  const std::map<Key, std::vector<double>>& sdc_terms() const { return sdc_; }

  /// theta = mean + lambda * population std of the stored taus, per (layer, head, L).
  ThresholdTable finalize() const {
    ThresholdTable t(opts_.num_layers, opts_.num_heads, opts_.default_k);
    for (Index l = 0; l < opts_.num_layers; ++l) (void)t.set_k(l, k(l));
    t.metadata().placement = opts_.placement;
    t.metadata().lambda = opts_.lambda;
    t.metadata().calibration_rows = rows_used();
    t.metadata().model_id = opts_.model_id;
    for (const auto& [key, v] : taus_) {
      const double n = double(v.size());
      double mean = 0.0;
      for (double x : v) mean += x;
      mean /= n;
      double var = 0.0;
      for (double x : v) var += (x - mean) * (x - mean);
      var /= n;
      ThresholdEntry e;
      e.length = std::get<2>(key);
      e.samples = v.size();
      e.theta = mean + opts_.lambda * std::sqrt(var);
      if (opts_.sdc_thresholds) {
        const auto& c = sdc_.at(key);
        double m = 0.0;
        for (double x : c) m += x;
        e.sdc = m / double(c.size());
      }
      (void)t.set(std::get<0>(key), std::get<1>(key), e);
    }
    return t;
  }

 private:
  CalibrationOptions opts_;
  std::map<Key, std::vector<double>> taus_;
  std::map<Key, std::vector<double>> sdc_;
};

}  // namespace toptheta::reference
