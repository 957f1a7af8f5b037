#pragma once
/// \file threshold_table.hpp
/// `ThresholdTable`: calibrated thresholds theta(layer, query head, row length) with per-layer
/// budgets k_l, optional SDC terms C(l, h, L) and the metadata that travels with them
/// (DESIGN.md sections 2 and 7).
///
/// Entries of one (layer, head) are kept sorted by length; lookup is a binary search,
/// O(log n) and allocation-free.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "options.hpp"
#include "status.hpp"
#include "types.hpp"

namespace toptheta {

/// One calibrated (layer, head, length) entry.
struct ThresholdEntry {
  Index length = 0;            ///< row length L (> 0)
  double theta = 0.0;          ///< threshold compared with a_j (strict >)
  std::uint64_t samples = 0;   ///< number of calibration rows behind theta
  double sdc = std::numeric_limits<double>::quiet_NaN();  ///< C(l,h,L), NaN when absent
  bool has_sdc() const { return !std::isnan(sdc); }
};

/// Result of a lookup: the threshold and the SDC term (NaN when the table has none).
struct ThresholdLookup {
  double theta = 0.0;
  double sdc = std::numeric_limits<double>::quiet_NaN();
};

/// Metadata stored with a table (DESIGN.md section 7).
struct ThresholdMetadata {
  Placement placement = Placement::kPreSoftmax;
  double lambda = 0.0;                   ///< theta = mean + lambda * std
  std::uint64_t calibration_rows = 0;    ///< rows observed in total
  std::string model_id;                  ///< optional free text, no newlines
  std::string notes;                     ///< optional free text, no newlines
};

class ThresholdTable {
 public:
  ThresholdTable() = default;
  /// A table for `num_layers` layers and `num_heads` query heads per layer, every layer with
  /// budget `default_k`.
  ThresholdTable(Index num_layers, Index num_heads, Index default_k = 64)
      : num_layers_(num_layers),
        num_heads_(num_heads),
        layer_k_(static_cast<std::size_t>(std::max<Index>(num_layers, 0)), default_k),
        entries_(static_cast<std::size_t>(std::max<Index>(num_layers * num_heads, 0))) {}

  Index num_layers() const { return num_layers_; }
  Index num_heads() const { return num_heads_; }

  ThresholdMetadata& metadata() { return metadata_; }
  const ThresholdMetadata& metadata() const { return metadata_; }
  Placement placement() const { return metadata_.placement; }

  /// Budget k_l of a layer.
  Index k(Index layer) const {
    TOPTHETA_ASSERT(layer >= 0 && layer < num_layers_, "layer out of range");
    return layer_k_[static_cast<std::size_t>(layer)];
  }
  const std::vector<Index>& layer_k() const { return layer_k_; }
  Status set_k(Index layer, Index k) {
    if (layer < 0 || layer >= num_layers_)
      return Status::out_of_range("layer " + std::to_string(layer) + " not in [0, " +
                                  std::to_string(num_layers_) + ")");
    if (k < 1) return Status::invalid_argument("k must be >= 1, got " + std::to_string(k));
    layer_k_[static_cast<std::size_t>(layer)] = k;
    return {};
  }

  /// Insert or replace the entry for (layer, head, entry.length).
  Status set(Index layer, Index head, const ThresholdEntry& entry) {
    TOPTHETA_RETURN_IF_ERROR(check_index(layer, head));
    if (entry.length <= 0)
      return Status::invalid_argument("length must be positive, got " +
                                      std::to_string(entry.length));
    if (!std::isfinite(entry.theta) && !(std::isinf(entry.theta) && entry.theta < 0))
      return Status::invalid_argument("theta must be finite or -inf");
    auto& v = entries_[slot(layer, head)];
    auto it = std::lower_bound(v.begin(), v.end(), entry.length,
                               [](const ThresholdEntry& e, Index L) { return e.length < L; });
    if (it != v.end() && it->length == entry.length) *it = entry;
    else v.insert(it, entry);
    return {};
  }
  /// True when (layer, head, length) has an entry.
  bool contains(Index layer, Index head, Index length) const {
    if (!check_index(layer, head).ok()) return false;
    const auto& v = entries_[slot(layer, head)];
    auto it = std::lower_bound(v.begin(), v.end(), length,
                               [](const ThresholdEntry& e, Index L) { return e.length < L; });
    return it != v.end() && it->length == length;
  }

  /// Entries of one (layer, head), sorted by length.
  const std::vector<ThresholdEntry>& entries(Index layer, Index head) const {
    TOPTHETA_ASSERT(check_index(layer, head).ok(), "layer/head out of range");
    return entries_[slot(layer, head)];
  }
  /// Total number of entries.
  std::size_t size() const {
    std::size_t n = 0;
    for (const auto& v : entries_) n += v.size();
    return n;
  }
  bool empty() const { return size() == 0; }
  /// True when every entry carries an SDC term.
  bool has_sdc() const {
    for (const auto& v : entries_)
      for (const auto& e : v)
        if (!e.has_sdc()) return false;
    return !empty();
  }

  /// theta and SDC term for a row of length `length` (DESIGN.md section 2, "Lookup").
  /// kNearest: nearest calibrated length, ties to the smaller, clamped to the calibrated range.
  /// kLinear: linear interpolation between the two neighbours, clamped outside the range.
  /// A (layer, head) without entries yields theta = -inf (keeps everything).
  ThresholdLookup lookup(Index layer, Index head, Index length,
                         LookupPolicy policy = LookupPolicy::kNearest) const {
    TOPTHETA_ASSERT(check_index(layer, head).ok(), "layer/head out of range");
    const auto& v = entries_[slot(layer, head)];
    ThresholdLookup r;
    if (v.empty()) {
      r.theta = -std::numeric_limits<double>::infinity();
      return r;
    }
    auto it = std::lower_bound(v.begin(), v.end(), length,
                               [](const ThresholdEntry& e, Index L) { return e.length < L; });
    if (it == v.end()) return {v.back().theta, v.back().sdc};
    if (it->length == length || it == v.begin()) return {it->theta, it->sdc};
    const ThresholdEntry& hi = *it;
    const ThresholdEntry& lo = *(it - 1);
    if (policy == LookupPolicy::kNearest) {
      const Index dlo = length - lo.length, dhi = hi.length - length;
      const ThresholdEntry& e = (dlo <= dhi) ? lo : hi;
      return {e.theta, e.sdc};
    }
    const double t = double(length - lo.length) / double(hi.length - lo.length);
    r.theta = lo.theta + t * (hi.theta - lo.theta);
    r.sdc = lo.sdc + t * (hi.sdc - lo.sdc);
    return r;
  }

  /// Checks shapes, budgets, finiteness, ordering and uniqueness of all entries.
  Status validate() const {
    if (num_layers_ <= 0 || num_heads_ <= 0)
      return Status::invalid_argument("table has no layers or heads: " +
                                      shape_string(num_layers_, num_heads_));
    for (Index l = 0; l < num_layers_; ++l)
      if (layer_k_[static_cast<std::size_t>(l)] < 1)
        return Status::invalid_argument("layer " + std::to_string(l) + " has k < 1");
    if (!std::isfinite(metadata_.lambda)) return Status::invalid_argument("lambda is not finite");
    for (Index l = 0; l < num_layers_; ++l)
      for (Index h = 0; h < num_heads_; ++h) {
        const auto& v = entries_[slot(l, h)];
        for (std::size_t i = 0; i < v.size(); ++i) {
          const auto& e = v[i];
          const std::string where = "layer " + std::to_string(l) + " head " + std::to_string(h) +
                                    " length " + std::to_string(e.length);
          if (e.length <= 0) return Status::invalid_argument(where + ": non-positive length");
          if (!std::isfinite(e.theta) && !(std::isinf(e.theta) && e.theta < 0))
            return Status::invalid_argument(where + ": theta is not finite");
          if (e.has_sdc() && (!std::isfinite(e.sdc) || e.sdc < 0))
            return Status::invalid_argument(where + ": SDC term is not a finite non-negative value");
          if (i > 0 && v[i - 1].length >= e.length)
            return Status::invalid_argument(where + ": duplicate or unsorted length");
        }
      }
    return {};
  }

  /// Checks that the table can serve a model with the given shape.
  Status check_shape(Index num_layers, Index num_heads) const {
    if (num_layers != num_layers_ || num_heads != num_heads_)
      return Status::invalid_argument("threshold table has (layers x heads) " +
                                      shape_string(num_layers_, num_heads_) +
                                      " but the model has " + shape_string(num_layers, num_heads));
    return {};
  }

 private:
  std::size_t slot(Index layer, Index head) const {
    return static_cast<std::size_t>(layer * num_heads_ + head);
  }
  Status check_index(Index layer, Index head) const {
    if (layer < 0 || layer >= num_layers_ || head < 0 || head >= num_heads_)
      return Status::out_of_range("(layer, head) = " + shape_string(layer, head) +
                                  " outside the table's " + shape_string(num_layers_, num_heads_));
    return {};
  }

  Index num_layers_ = 0;
  Index num_heads_ = 0;
  std::vector<Index> layer_k_;
  std::vector<std::vector<ThresholdEntry>> entries_;  // [layer * heads + head], sorted by length
  ThresholdMetadata metadata_;
};

}  // namespace toptheta
