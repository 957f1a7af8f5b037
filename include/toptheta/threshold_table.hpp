#pragma once
/// \file threshold_table.hpp
/// `ThresholdTable`: calibrated thresholds theta(layer, query head, row length) with per-layer
/// budgets k_l, optional SDC terms C(l, h, L) and the metadata that travels with them
/// (DESIGN.md sections 2 and 7).
///
/// Entries of one (layer, head) are kept sorted by length; lookup is a binary search,
/// O(log n) and allocation-free.
///
/// Completeness: every (layer, head) pair needs at least one entry, or must be declared dense
/// with `set_dense()` (it then keeps every score: lookup gives theta = -inf). A table with a pair
/// that has neither is incomplete: `validate()`, `check_shape()`, the file writers and loaders
/// reject it with a message naming the pairs, and `check_layer()` is the cheap per-call form of
/// the same check for the kernels. An empty table (no entries, nothing declared dense) is never
/// valid. Nothing ever runs dense silently.

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

namespace detail {

/// Builds a compact description of (layer, head) pairs given in ascending order, e.g.
/// "layer 0 heads 1-7; layer 1 heads 1-3, 5". At most `max_layers` layers and `max_ranges` head
/// ranges per layer are spelled out; the rest is summarised ("(+N more heads)", "; ... and N more
/// layers"). Allocates; used only to build error messages.
class HeadListText {
 public:
  explicit HeadListText(std::size_t max_layers = 8, std::size_t max_ranges = 8)
      : max_layers_(max_layers), max_ranges_(max_ranges) {}

  void add(Index layer, Index head) {
    if (layer == layer_ && head == last_ + 1) {
      last_ = head;
      ++layer_heads_;
      return;
    }
    if (layer != layer_) {
      finish_layer();
      layer_ = layer;
      layer_heads_ = 0;
      ranges_ = 0;
      omitted_heads_ = 0;
      body_.clear();
    } else {
      flush_range();
    }
    first_ = last_ = head;
    ++layer_heads_;
  }

  std::string str() {
    finish_layer();
    layer_ = -1;
    std::string s = out_;
    if (omitted_layers_ > 0)
      s += "; ... and " + std::to_string(omitted_layers_) + " more layer" +
           (omitted_layers_ == 1 ? "" : "s");
    return s;
  }

 private:
  void flush_range() {
    if (first_ < 0) return;
    if (ranges_ < max_ranges_) {
      if (ranges_ > 0) body_ += ", ";
      body_ += std::to_string(first_);
      if (last_ > first_) body_ += "-" + std::to_string(last_);
    } else {
      omitted_heads_ += std::size_t(last_ - first_ + 1);
    }
    ++ranges_;
    first_ = last_ = -1;
  }
  void finish_layer() {
    if (layer_ < 0) return;
    flush_range();
    if (layers_ < max_layers_) {
      if (!out_.empty()) out_ += "; ";
      out_ += "layer " + std::to_string(layer_) + (layer_heads_ == 1 ? " head " : " heads ") + body_;
      if (omitted_heads_ > 0) out_ += " (+" + std::to_string(omitted_heads_) + " more heads)";
    } else {
      ++omitted_layers_;
    }
    ++layers_;
    layer_ = -1;
  }

  std::size_t max_layers_, max_ranges_;
  Index layer_ = -1, first_ = -1, last_ = -1;
  std::size_t layer_heads_ = 0, ranges_ = 0, omitted_heads_ = 0, layers_ = 0, omitted_layers_ = 0;
  std::string body_, out_;
};

}  // namespace detail

class ThresholdTable {
 public:
  ThresholdTable() = default;
  /// A table for `num_layers` layers and `num_heads` query heads per layer, every layer with
  /// budget `default_k`.
  ThresholdTable(Index num_layers, Index num_heads, Index default_k = 64)
      : num_layers_(num_layers),
        num_heads_(num_heads),
        layer_k_(static_cast<std::size_t>(std::max<Index>(num_layers, 0)), default_k),
        entries_(static_cast<std::size_t>(std::max<Index>(num_layers * num_heads, 0))),
        dense_(entries_.size(), 0) {}

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
    if (dense_[slot(layer, head)])
      return Status::invalid_argument("layer " + std::to_string(layer) + " head " +
                                      std::to_string(head) +
                                      " is declared dense; undeclare it with set_dense(" +
                                      std::to_string(layer) + ", " + std::to_string(head) +
                                      ", false) before adding thresholds");
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

  /// Declares (layer, head) dense on purpose (`dense` = true): it has no thresholds and keeps every
  /// score (lookup gives theta = -inf). This is the only way a pair without entries is accepted.
  /// Fails when the pair already has entries. `dense` = false removes the declaration.
  Status set_dense(Index layer, Index head, bool dense = true) {
    TOPTHETA_RETURN_IF_ERROR(check_index(layer, head));
    const std::size_t s = slot(layer, head);
    if (dense && !entries_[s].empty())
      return Status::invalid_argument("layer " + std::to_string(layer) + " head " +
                                      std::to_string(head) + " has " +
                                      std::to_string(entries_[s].size()) +
                                      " threshold entries and cannot be declared dense");
    dense_[s] = dense ? 1 : 0;
    return {};
  }
  /// True when (layer, head) is declared dense (false outside the table).
  bool is_dense(Index layer, Index head) const {
    return check_index(layer, head).ok() && dense_[slot(layer, head)] != 0;
  }
  /// Number of (layer, head) pairs declared dense.
  std::size_t num_dense_heads() const {
    std::size_t n = 0;
    for (std::uint8_t d : dense_) n += d;
    return n;
  }
  /// Number of (layer, head) pairs with no entries that are not declared dense (0 when complete).
  std::size_t num_missing_heads() const {
    std::size_t n = 0;
    for (std::size_t s = 0; s < entries_.size(); ++s) n += entries_[s].empty() && !dense_[s];
    return n;
  }
  /// Compact text listing the pairs declared dense (`dense` = true) or the pairs missing
  /// thresholds (false), e.g. "layer 0 heads 1-7; layer 1 heads 1-7"; empty when there are none.
  std::string describe_heads(bool dense) const {
    detail::HeadListText text;
    bool any = false;
    for (Index l = 0; l < num_layers_; ++l)
      for (Index h = 0; h < num_heads_; ++h) {
        const std::size_t s = slot(l, h);
        if (dense ? dense_[s] != 0 : (entries_[s].empty() && !dense_[s])) {
          text.add(l, h);
          any = true;
        }
      }
    return any ? text.str() : std::string();
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
  /// A (layer, head) without entries yields theta = -inf (keeps everything): that is how a pair
  /// declared dense runs. An undeclared pair without entries makes the table incomplete; callers
  /// must reject such tables first (validate(), check_layer()).
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

  /// Checks shapes, budgets, finiteness, ordering and uniqueness of all entries, and completeness
  /// (check_complete()): an incomplete or empty table does not validate.
  Status validate() const {
    TOPTHETA_RETURN_IF_ERROR(validate_entries());
    return check_complete();
  }

  /// validate() without the completeness check: for tools that inspect incomplete tables.
  Status validate_entries() const {
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

  /// Every (layer, head) has at least one entry or is declared dense. The error
  /// (kFailedPrecondition) gives the table shape, the number of pairs without thresholds and
  /// lists them compactly ("layer 0 heads 1-7; layer 1 heads 1-7", at most 8 layers and 8 head
  /// ranges per layer spelled out). `context`, when given, is inserted after the list (e.g. where
  /// the shape came from).
  Status check_complete(const std::string& context = std::string()) const {
    return complete_status(context);
  }

  /// Checks that the table can serve a model with the given shape: same (layers x heads), and
  /// complete (check_complete(), with the model's shape in the message).
  Status check_shape(Index num_layers, Index num_heads) const {
    if (num_layers != num_layers_ || num_heads != num_heads_)
      return Status::invalid_argument("threshold table has (layers x heads) " +
                                      shape_string(num_layers_, num_heads_) +
                                      " but the model has " + shape_string(num_layers, num_heads));
    return complete_status("; the model has (layers x heads) " + shape_string(num_layers, num_heads));
  }

  /// The per-call check for the kernels: the table covers `layer` with `num_heads` query heads
  /// and each of those heads has entries or is declared dense. O(num_heads), no allocation when
  /// it succeeds. Errors: kInvalidArgument for a shape mismatch, kFailedPrecondition for heads
  /// without thresholds (listed, with the table shape and the call's layer and heads).
  Status check_layer(Index layer, Index num_heads) const {
    if (layer < 0 || layer >= num_layers_ || num_heads != num_heads_)
      return Status::invalid_argument("threshold table (layers x heads) " +
                                      shape_string(num_layers_, num_heads_) +
                                      " does not cover layer " + std::to_string(layer) + " with " +
                                      std::to_string(num_heads) + " query heads");
    const std::size_t base = slot(layer, 0);
    bool ok = true;
    for (std::size_t s = base; s < base + static_cast<std::size_t>(num_heads_); ++s)
      ok = ok && (!entries_[s].empty() || dense_[s] != 0);
    if (ok) return {};
    detail::HeadListText text(1, 16);
    Index n = 0;
    for (Index h = 0; h < num_heads_; ++h) {
      const std::size_t s = base + static_cast<std::size_t>(h);
      if (entries_[s].empty() && !dense_[s]) {
        text.add(layer, h);
        ++n;
      }
    }
    return Status::failed_precondition(
        "threshold table (layers x heads) " + shape_string(num_layers_, num_heads_) +
        " has no thresholds for " + text.str() + " (" + std::to_string(n) + " of the layer's " +
        std::to_string(num_heads_) + " query heads; none is declared dense)");
  }

 private:
  Status complete_status(const std::string& context) const {
    const std::size_t missing = num_missing_heads();
    if (missing == 0) return {};
    const std::size_t pairs = entries_.size();
    std::string m = "threshold table (layers x heads) " + shape_string(num_layers_, num_heads_);
    if (missing == pairs)
      m += " is empty: all " + std::to_string(pairs);
    else
      m += " is incomplete: " + std::to_string(missing) + " of " + std::to_string(pairs);
    m += " (layer, head) pairs have no thresholds: " + describe_heads(false);
    m += context;
    m += " (every pair needs thresholds; declare pairs meant to keep every score dense: "
         "ThresholdTable::set_dense(), 'dense_heads' in the native format, "
         "LoadOptions::missing_heads)";
    return Status::failed_precondition(std::move(m));
  }
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
  std::vector<std::uint8_t> dense_;  // [layer * heads + head]: 1 = declared dense (no entries)
  ThresholdMetadata metadata_;
};

}  // namespace toptheta
