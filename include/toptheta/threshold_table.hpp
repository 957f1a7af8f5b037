#pragma once
/// \file threshold_table.hpp
/// `ThresholdTable`: calibrated thresholds theta(layer, query head, row length) with per-layer
/// budgets k_l, optional SDC terms C(l, h, L) and the metadata that travels with them. What the
/// kernels do with them: docs/semantics.md §3 (budgets), §4 (a_j > theta), §5 (calibrated SDC);
/// how the calibrator makes them: §8; the file formats: docs/threshold-format.md.
///
/// Two forms (`ThresholdForm`):
/// - per-length (format version 1): one entry per calibrated (layer, head, L), sorted by length;
///   lookup is a binary search, O(log n) and allocation-free;
/// - compact (format version 2, threshold_fit.hpp builds it): per (layer, head) a curve of a few
///   knots at log-spaced lengths; theta(L) interpolates between knots in log L and extrapolates
///   past both ends with the fitted slope (ThresholdCurve). O(log knots) and allocation-free.
///
/// `ThresholdSet` holds several tables of one calibration pass, one per budget k.
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
#include <cstdio>
#include <cstdlib>
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
  /// True when the entry carries an offline SDC term (sdc is not NaN).
  bool has_sdc() const { return !std::isnan(sdc); }
};

/// Result of a lookup: the threshold and the SDC term (NaN when the table has none).
struct ThresholdLookup {
  /// theta in the placement's domain (score or probability); -inf for a head declared dense.
  double theta = 0.0;
  /// Offline SDC term C(l, h, L) (semantics §5, §8); NaN when the table has none.
  double sdc = std::numeric_limits<double>::quiet_NaN();
};

// Length buckets of compact tables (threshold_fit.hpp describes them).

/// Bucket index of row length L >= 2 with `b` buckets per octave: j = ceil(b * log2 L) - 1.
inline int length_bucket(Index L, int b) {
  const double v = double(b) * std::log2(double(L));
  int j = int(std::ceil(v - 1e-9)) - 1;
  // Guard the rounding at exact bucket edges: L must satisfy 2^(j/b) < L <= 2^((j+1)/b).
  while (j >= 0 && !(std::exp2(double(j) / b) < double(L))) --j;
  while (std::exp2(double(j + 1) / b) < double(L)) ++j;
  return std::max(j, 0);
}
/// ln of the lower edge of bucket j: (j / b) ln 2.
inline double bucket_log_edge(int j, int b) { return double(j) / double(b) * std::log(2.0); }
/// Smallest and largest integer length of bucket j (lo > hi when it holds none).
inline void bucket_lengths(int j, int b, Index* lo, Index* hi) {
  *lo = Index(std::floor(std::exp2(double(j) / b))) + 1;
  *hi = Index(std::floor(std::exp2(double(j + 1) / b) + 1e-9));
  while (*lo > 1 && length_bucket(*lo - 1, b) == j) --*lo;
  while (length_bucket(*lo, b) < j) ++*lo;
  while (*hi > *lo && length_bucket(*hi, b) > j) --*hi;
}

/// How a table represents theta as a function of the row length.
enum class ThresholdForm {
  kPerLength,  ///< one entry per calibrated length (native format version 1, authors' format)
  kCompact,    ///< one ThresholdCurve per (layer, head) (native format version 2)
};
/// "per-length" or "compact" (as `toptheta-thresholds info` prints it).
inline const char* to_string(ThresholdForm f) {
  return f == ThresholdForm::kPerLength ? "per-length" : "compact";
}

/// One knot of a compact curve.
struct CurveKnot {
  Index length = 0;           ///< representative row length of the knot's bucket (> 0)
  double value = 0.0;         ///< pre-softmax: theta; post-softmax: L * theta (> 0)
  std::uint64_t samples = 0;  ///< calibration rows behind the knot (its own bucket)
  double sdc = std::numeric_limits<double>::quiet_NaN();  ///< C(l,h,L) at the knot, NaN if absent
  /// True when the knot carries an offline SDC term (sdc is not NaN).
  bool has_sdc() const { return !std::isnan(sdc); }
};

/// theta(L) of one (layer, head) in the compact form. With x = ln L and
/// g(v) = v (pre-softmax) or ln v (post-softmax, where v = L * theta > 0):
/// - between two knots, g(v) is linear in x (so post-softmax theta follows a power law of L
///   between knots, pre-softmax theta is a + b ln L);
/// - below the first knot g(v) = g(v_first) + slope_below * (x - x_first), past the last knot
///   g(v) = g(v_last) + slope_above * (x - x_last): the slopes are least-squares fits of g(v)
///   over the knots of the first / last calibrated octaves (threshold_fit.hpp), so lengths past
///   the calibrated range follow the fit, not the last knot;
/// - SDC terms are interpolated linearly in x between knots and clamped to the end knots.
struct ThresholdCurve {
  std::vector<CurveKnot> knots;  ///< ascending, distinct lengths
  double slope_below = 0.0;      ///< d g(v) / d ln L below the first knot
  double slope_above = 0.0;      ///< d g(v) / d ln L past the last knot
  /// Longest row length the curve was calibrated on (ThresholdTable::max_calibrated_length());
  /// 0 = not recorded (files written before it was, hand-built curves): the table then assumes
  /// the end of the last knot's length bucket. At least the last knot's length when recorded.
  Index max_calibrated_length = 0;
  /// True without knots: the pair has no thresholds (or is declared dense).
  bool empty() const { return knots.empty(); }
};

/// Metadata stored with a table and written to its file (docs/threshold-format.md).
struct ThresholdMetadata {
  /// Domain the thresholds were calibrated in (semantics §2); a call's options must match it.
  Placement placement = Placement::kPreSoftmax;
  double lambda = 0.0;                   ///< theta = mean + lambda * std
  std::uint64_t calibration_rows = 0;    ///< rows observed in total
  std::string model_id;                  ///< optional free text, no newlines
  std::string notes;                     ///< optional free text, no newlines
  int buckets_per_octave = 0;            ///< compact tables: length buckets per octave (else 0)
  /// head_dim d of the calls the thresholds were calibrated on; 0 = not recorded. Recorded by
  /// the calibrator from its kernel calls (kCalibrate); a Top-θ call with another head_dim is
  /// refused (semantics §8).
  Index head_dim = 0;
  /// Score scale of the calibration calls: the factor applied to q·k before the §2 rules
  /// (`AttentionArgs::scale`, or 1/sqrt(d) when that is 0); 0 = not recorded. Thresholds are
  /// in units of the scaled scores (pre-softmax) or of the probabilities they give
  /// (post-softmax), so a Top-θ call whose effective scale differs by more than a relative
  /// kScoreScaleTolerance is refused (semantics §8).
  double score_scale = 0.0;
};

/// Largest head_dim a table records (and its files hold).
inline constexpr Index kMaxRecordedHeadDim = Index(1) << 20;

/// Relative difference between a table's recorded score scale and a call's effective scale
/// above which the call is refused (float rounding of 1/sqrt(d) is far below it).
inline constexpr double kScoreScaleTolerance = 1e-6;

namespace detail {

/// True when thresholds recorded at score scale `recorded` (0 = not recorded) may serve calls
/// of effective score scale `scale`: equal within a relative kScoreScaleTolerance.
inline bool score_scale_matches(double recorded, double scale) {
  return recorded == 0 || std::fabs(scale - recorded) <= kScoreScaleTolerance * recorded;
}

/// Ok when thresholds recorded with geometry (`head_dim`, `score_scale`; 0 = not recorded) may
/// serve calls with head_dim `d` and effective score scale `scale`; else kInvalidArgument
/// naming both values. `what` names the thresholds in the message. Allocates only on error.
inline Status check_geometry(Index head_dim, double score_scale, Index d, double scale,
                             const char* what) {
  if (head_dim != 0 && head_dim != d)
    return Status::invalid_argument(std::string(what) + " recorded head_dim " +
                                    std::to_string(head_dim) + ", the call has head_dim " +
                                    std::to_string(d));
  if (!score_scale_matches(score_scale, scale)) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), "%.9g, the call's effective score scale is %.9g", score_scale,
                  scale);
    return Status::invalid_argument(std::string(what) + " recorded score scale " + buf +
                                    " (args.scale, or 1/sqrt(head_dim) when it is 0): thresholds "
                                    "are in units of the scaled scores");
  }
  return {};
}

}  // namespace detail

namespace detail {

/// Rounds `v` to the nearest float into `*out` (as a double) when that float is finite; false
/// (and `*out` untouched) for NaN, infinities and magnitudes that round to a float infinity.
inline bool to_finite_float(double v, double* out) {
  if (!std::isfinite(v) || std::fabs(v) >= 0x1.ffffffp+127) return false;  // FLT_MAX + ulp/2
  *out = double(static_cast<float>(v));
  return true;
}

/// `v` as printed in error messages: the shortest "%g" text that reads back as `v`.
inline std::string float_range_text(double v) {
  char buf[40];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

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

/// Calibrated thresholds of one model: theta(l, h, L) for `num_layers()` layers x `num_heads()`
/// query heads, the budget k_l of each layer, optional SDC terms and metadata (see the file
/// comment for the two forms and the completeness rule). Built by `Calibrator::finalize()` or
/// loaded with `load_thresholds()` (io/threshold_file.hpp); read by the kernels through
/// `lookup()`. Copyable value type; lookups are const and thread-safe.
class ThresholdTable {
 public:
  /// An empty table of shape (0 x 0); it never validates.
  ThresholdTable() = default;
  /// A table for `num_layers` layers and `num_heads` query heads per layer, every layer with
  /// budget `default_k`.
  ThresholdTable(Index num_layers, Index num_heads, Index default_k = 64)
      : num_layers_(num_layers),
        num_heads_(num_heads),
        layer_k_(static_cast<std::size_t>(std::max<Index>(num_layers, 0)), default_k),
        entries_(static_cast<std::size_t>(std::max<Index>(num_layers * num_heads, 0))),
        dense_(entries_.size(), 0) {}

  /// A compact table (ThresholdForm::kCompact) of the given shape: fill it with set_curve().
  /// metadata().buckets_per_octave is set to `buckets_per_octave` (the version-2 file needs it in
  /// [1, 16]; the default 2 is CompactFitOptions' default).
  static ThresholdTable compact(Index num_layers, Index num_heads, Index default_k = 64,
                                int buckets_per_octave = 2) {
    ThresholdTable t(num_layers, num_heads, default_k);
    t.metadata_.buckets_per_octave = buckets_per_octave;
    t.form_ = ThresholdForm::kCompact;
    t.curves_.resize(t.entries_.size());
    t.log_len_.resize(t.entries_.size());
    t.last_bucket_.resize(t.entries_.size());
    return t;
  }

  /// Per-length entries or compact curves (fixed at construction).
  ThresholdForm form() const { return form_; }
  /// True for ThresholdForm::kCompact.
  bool is_compact() const { return form_ == ThresholdForm::kCompact; }

  /// The smallest budget over the layers: the k a ThresholdSet files this table under.
  Index nominal_k() const {
    Index k = 0;
    for (Index v : layer_k_) k = (k == 0 || v < k) ? v : k;
    return k;
  }

  /// Number of layers of the table.
  Index num_layers() const { return num_layers_; }
  /// Number of query heads per layer (the model's, not a shard's).
  Index num_heads() const { return num_heads_; }

  /// Metadata (placement, lambda, model id, ...), writable.
  ThresholdMetadata& metadata() { return metadata_; }
  /// Metadata (placement, lambda, model id, ...).
  const ThresholdMetadata& metadata() const { return metadata_; }
  /// The placement the thresholds were calibrated for (metadata().placement).
  Placement placement() const { return metadata_.placement; }

  /// Budget k_l of a layer.
  Index k(Index layer) const {
    TOPTHETA_ASSERT(layer >= 0 && layer < num_layers_, "layer out of range");
    return layer_k_[static_cast<std::size_t>(layer)];
  }
  /// Budgets k_l of all layers, indexed by layer.
  const std::vector<Index>& layer_k() const { return layer_k_; }
  /// Sets the budget k_l of `layer`. Errors: kOutOfRange for a layer outside the table,
  /// kInvalidArgument for k < 1.
  Status set_k(Index layer, Index k) {
    if (layer < 0 || layer >= num_layers_)
      return Status::out_of_range("layer " + std::to_string(layer) + " not in [0, " +
                                  std::to_string(num_layers_) + ")");
    if (k < 1) return Status::invalid_argument("k must be >= 1, got " + std::to_string(k));
    layer_k_[static_cast<std::size_t>(layer)] = k;
    return {};
  }

  /// Insert or replace the entry for (layer, head, entry.length). Errors (kInvalidArgument): a
  /// length < 1, theta NaN or +inf, an SDC term that is neither NaN (none) nor finite and
  /// >= 0 (validate() rejects the same; a negative term would shrink the softmax denominator
  /// below the kept keys' sum), a head declared dense; kOutOfRange for (layer, head) outside the
  /// table; kFailedPrecondition on a compact table.
  Status set(Index layer, Index head, const ThresholdEntry& entry) {
    TOPTHETA_RETURN_IF_ERROR(check_index(layer, head));
    if (is_compact())
      return Status::failed_precondition("set(): a compact table holds curves (set_curve())");
    if (entry.length <= 0)
      return Status::invalid_argument("length must be positive, got " +
                                      std::to_string(entry.length));
    if (!std::isfinite(entry.theta) && !(std::isinf(entry.theta) && entry.theta < 0))
      return Status::invalid_argument("theta must be finite or -inf");
    if (entry.has_sdc() && (!std::isfinite(entry.sdc) || entry.sdc < 0))
      return Status::invalid_argument("SDC term must be finite and >= 0, or NaN (none); got " +
                                      std::to_string(entry.sdc));
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

  /// Compact tables: installs the curve of (layer, head) (replacing any). Knots need ascending,
  /// distinct positive lengths, finite values (> 0 for post-softmax tables: set the placement
  /// first), finite slopes and finite non-negative SDC terms or NaN; `max_calibrated_length` is
  /// 0 or at least the last knot's length (0 without knots).
  /// Knot values, slopes and SDC terms are stored rounded to float, the precision of the file
  /// (version 2), so lookups give the same theta before and after a save and load.
  /// Errors (kInvalidArgument, naming the layer, head and knot length): the rules above; a
  /// value, slope or SDC term whose magnitude is beyond the float range (e.g. 1e300); a
  /// post-softmax value that rounds to 0 as a float (e.g. 1e-50).
  /// kFailedPrecondition for a per-length table; kOutOfRange for a bad (layer, head).
  Status set_curve(Index layer, Index head, ThresholdCurve curve) {
    TOPTHETA_RETURN_IF_ERROR(check_index(layer, head));
    if (!is_compact())
      return Status::failed_precondition("set_curve(): a per-length table holds entries (set())");
    const std::size_t s = slot(layer, head);
    if (dense_[s] && !curve.empty())
      return Status::invalid_argument("layer " + std::to_string(layer) + " head " +
                                      std::to_string(head) + " is declared dense");
    const std::string where = "layer " + std::to_string(layer) + " head " + std::to_string(head);
    TOPTHETA_RETURN_IF_ERROR(check_curve(curve, where));
    TOPTHETA_RETURN_IF_ERROR(round_curve_to_float(&curve, where));
    TOPTHETA_RETURN_IF_ERROR(check_curve(curve, where));
    std::vector<double> logs(curve.knots.size());
    for (std::size_t i = 0; i < logs.size(); ++i) logs[i] = std::log(double(curve.knots[i].length));
    curves_[s] = std::move(curve);
    log_len_[s] = std::move(logs);
    last_bucket_[s] = last_bucket_end(curves_[s], metadata_.buckets_per_octave);
    return {};
  }
  /// The curve of (layer, head) (compact tables; empty for per-length ones).
  const ThresholdCurve& curve(Index layer, Index head) const {
    TOPTHETA_ASSERT(check_index(layer, head).ok(), "layer/head out of range");
    static const ThresholdCurve kNone;
    return is_compact() ? curves_[slot(layer, head)] : kNone;
  }

  /// Declares (layer, head) dense on purpose (`dense` = true): it has no thresholds and keeps every
  /// score (lookup gives theta = -inf). This is the only way a pair without entries is accepted.
  /// Fails when the pair already has entries. `dense` = false removes the declaration.
  Status set_dense(Index layer, Index head, bool dense = true) {
    TOPTHETA_RETURN_IF_ERROR(check_index(layer, head));
    const std::size_t s = slot(layer, head);
    if (dense && has_data(s))
      return Status::invalid_argument("layer " + std::to_string(layer) + " head " +
                                      std::to_string(head) + " has " +
                                      std::to_string(data_count(s)) +
                                      " threshold entries and cannot be declared dense");
    dense_[s] = dense ? 1 : 0;
    return {};
  }
  /// True when (layer, head) has entries (per-length) or a curve with knots (compact).
  bool has_thresholds(Index layer, Index head) const {
    return check_index(layer, head).ok() && has_data(slot(layer, head));
  }
  /// Largest row length (layer, head) was calibrated at: a per-length table's last entry; a
  /// compact table's recorded ThresholdCurve::max_calibrated_length (the calibrator, to_compact()
  /// and files that hold it record it). A compact curve without it (older files, hand-built
  /// curves) gives the largest length of its last knot's length bucket (rows of every length in
  /// a bucket pool into its knot, threshold_fit.hpp; the knot's own length when
  /// metadata().buckets_per_octave is not in [1, 16]): rows up to 2^(1/b) times (b buckets per
  /// octave) longer than the longest calibrated row may then pass as calibrated. 0 when the pair
  /// has no thresholds (declared dense or missing) or is outside the table. Longer rows of a
  /// Top-θ call run on a clamped (per-length, lookup()) or extrapolated (compact) θ;
  /// AttentionStats::extrapolated_rows counts them (semantics §9). No allocation; O(1) unless
  /// the curve records no length and metadata().buckets_per_octave changed since set_curve()
  /// (compact(), the calibrator, the fit and the file reader all set it first): then about 20
  /// log2/exp2 calls per pair.
  Index max_calibrated_length(Index layer, Index head) const {
    if (layer < 0 || layer >= num_layers_ || head < 0 || head >= num_heads_) return 0;
    const std::size_t s = slot(layer, head);
    if (form_ == ThresholdForm::kPerLength)
      return entries_[s].empty() ? 0 : entries_[s].back().length;
    if (curves_[s].max_calibrated_length > 0) return curves_[s].max_calibrated_length;
    const LastBucket& lb = last_bucket_[s];  // computed by set_curve()
    return lb.buckets_per_octave == metadata_.buckets_per_octave
               ? lb.end
               : last_bucket_end(curves_[s], metadata_.buckets_per_octave).end;
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
    for (std::size_t s = 0; s < entries_.size(); ++s) n += !has_data(s) && !dense_[s];
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
        if (dense ? dense_[s] != 0 : (!has_data(s) && !dense_[s])) {
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
  /// Total number of entries (per-length) or knots (compact).
  std::size_t size() const {
    std::size_t n = 0;
    for (std::size_t s = 0; s < entries_.size(); ++s) n += data_count(s);
    return n;
  }
  /// True when the table has no entries (knots) at all.
  bool empty() const { return size() == 0; }
  /// True when every entry (knot) carries an SDC term.
  bool has_sdc() const {
    for (const auto& v : entries_)
      for (const auto& e : v)
        if (!e.has_sdc()) return false;
    for (const auto& c : curves_)
      for (const auto& k : c.knots)
        if (!k.has_sdc()) return false;
    return !empty();
  }

  /// theta and SDC term for a row of length `length` (semantics §4.2 uses it for Top-θ, §5 for
  /// calibrated SDC).
  /// kNearest: nearest calibrated length, ties to the smaller, clamped to the calibrated range.
  /// kLinear: linear interpolation between the two neighbours, clamped outside the range; a
  /// length strictly between a neighbour of theta = -inf and another gets -inf (keeps every
  /// score).
  /// A (layer, head) without entries yields theta = -inf (keeps everything): that is how a pair
  /// declared dense runs. An undeclared pair without entries makes the table incomplete; callers
  /// must reject such tables first (validate(), check_layer()).
  ///
  /// Compact tables ignore `policy`: theta follows the curve (ThresholdCurve), interpolated in
  /// log L between knots and extrapolated with the fitted slopes outside them.
  ThresholdLookup lookup(Index layer, Index head, Index length,
                         LookupPolicy policy = LookupPolicy::kNearest) const {
    TOPTHETA_ASSERT(check_index(layer, head).ok(), "layer/head out of range");
    if (form_ == ThresholdForm::kCompact) return lookup_curve(slot(layer, head), length);
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
    // Next to a theta of -inf (keeps every score) the interpolation's limit is -inf, not the
    // NaN that -inf + t * inf would give (a NaN theta would keep nothing).
    // hi - lo overflows for neighbours of opposite sign near DBL_MAX: then the weighted sum.
    const double span = hi.theta - lo.theta;
    r.theta = std::isinf(lo.theta) || std::isinf(hi.theta)
                  ? -std::numeric_limits<double>::infinity()
              : std::isfinite(span) ? lo.theta + t * span
                                    : lo.theta * (1 - t) + hi.theta * t;
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
    if (metadata_.head_dim < 0 || metadata_.head_dim > kMaxRecordedHeadDim)
      return Status::invalid_argument("metadata head_dim " + std::to_string(metadata_.head_dim) +
                                      " must be in [0, " + std::to_string(kMaxRecordedHeadDim) +
                                      "] (0: not recorded)");
    if (!(std::isfinite(metadata_.score_scale) && metadata_.score_scale >= 0))
      return Status::invalid_argument(
          "metadata score_scale must be finite and >= 0 (0: not recorded)");
    if (is_compact()) {
      for (Index l = 0; l < num_layers_; ++l)
        for (Index h = 0; h < num_heads_; ++h)
          TOPTHETA_RETURN_IF_ERROR(check_curve(curves_[slot(l, h)], "layer " + std::to_string(l) +
                                                                        " head " + std::to_string(h)));
      return {};
    }
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
  /// it succeeds. Errors: kInvalidArgument for a shape mismatch or a layer budget k < 1 (a
  /// table constructed with default_k < 1: validate() rejects it too), kFailedPrecondition for
  /// heads without thresholds (listed, with the table shape and the call's layer and heads).
  Status check_layer(Index layer, Index num_heads) const {
    if (layer < 0 || layer >= num_layers_ || num_heads != num_heads_)
      return Status::invalid_argument("threshold table (layers x heads) " +
                                      shape_string(num_layers_, num_heads_) +
                                      " does not cover layer " + std::to_string(layer) + " with " +
                                      std::to_string(num_heads) + " query heads");
    if (layer_k_[static_cast<std::size_t>(layer)] < 1)
      return Status::invalid_argument("threshold table: layer " + std::to_string(layer) +
                                      " has budget k = " +
                                      std::to_string(layer_k_[static_cast<std::size_t>(layer)]) +
                                      " (k must be >= 1)");
    const std::size_t base = slot(layer, 0);
    bool ok = true;
    for (std::size_t s = base; s < base + static_cast<std::size_t>(num_heads_); ++s)
      ok = ok && (has_data(s) || dense_[s] != 0);
    if (ok) return {};
    detail::HeadListText text(1, 16);
    Index n = 0;
    for (Index h = 0; h < num_heads_; ++h) {
      const std::size_t s = base + static_cast<std::size_t>(h);
      if (!has_data(s) && !dense_[s]) {
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
  /// The end of the length bucket of a curve's last knot, for `b` buckets per octave.
  struct LastBucket {
    Index end = 0;               ///< 0 without knots
    int buckets_per_octave = 0;  ///< the b it was computed for
  };
  static LastBucket last_bucket_end(const ThresholdCurve& c, int b) {
    LastBucket r;
    r.buckets_per_octave = b;
    if (c.knots.empty()) return r;
    const Index last = c.knots.back().length;
    r.end = last;
    if (b < 1 || b > 16 || last < 2 || last > (Index(1) << 40)) return r;  // 2^40: files' limit
    Index lo = 0, hi = 0;
    bucket_lengths(length_bucket(last, b), b, &lo, &hi);
    r.end = std::max(hi, last);
    return r;
  }
  bool has_data(std::size_t s) const {
    return form_ == ThresholdForm::kCompact ? !curves_[s].knots.empty() : !entries_[s].empty();
  }
  std::size_t data_count(std::size_t s) const {
    return form_ == ThresholdForm::kCompact ? curves_[s].knots.size() : entries_[s].size();
  }
  Status check_curve(const ThresholdCurve& c, const std::string& where) const {
    if (!std::isfinite(c.slope_below) || !std::isfinite(c.slope_above))
      return Status::invalid_argument(where + ": curve slopes must be finite");
    const bool post = metadata_.placement == Placement::kPostSoftmax;
    for (std::size_t i = 0; i < c.knots.size(); ++i) {
      const CurveKnot& k = c.knots[i];
      const std::string w = where + " knot length " + std::to_string(k.length);
      if (k.length <= 0) return Status::invalid_argument(w + ": non-positive length");
      if (i > 0 && c.knots[i - 1].length >= k.length)
        return Status::invalid_argument(w + ": duplicate or unsorted length");
      if (!std::isfinite(k.value))
        return Status::invalid_argument(w + ": value is not finite");
      if (post && !(k.value > 0))
        return Status::invalid_argument(w + ": post-softmax value L * theta must be > 0");
      if (k.has_sdc() && (!std::isfinite(k.sdc) || k.sdc < 0))
        return Status::invalid_argument(w + ": SDC term is not a finite non-negative value");
    }
    const Index longest = c.max_calibrated_length;
    if (longest < 0 || (longest > 0 && c.knots.empty()))
      return Status::invalid_argument(where + ": max_calibrated_length " + std::to_string(longest) +
                                      (longest < 0 ? " is negative" : " given without knots"));
    if (longest > 0 && longest < c.knots.back().length)
      return Status::invalid_argument(where + ": max_calibrated_length " + std::to_string(longest) +
                                      " is below the last knot's length " +
                                      std::to_string(c.knots.back().length));
    return {};
  }
  // Rounds the values, slopes and SDC terms of a checked curve to float (see set_curve()).
  Status round_curve_to_float(ThresholdCurve* c, const std::string& where) {
    const auto round = [](double* v, const std::string& what) -> Status {
      if (std::isnan(*v)) return {};
      if (!detail::to_finite_float(*v, v))
        return Status::invalid_argument(what + " " + detail::float_range_text(*v) +
                                        " is beyond the float range of the threshold file");
      return {};
    };
    TOPTHETA_RETURN_IF_ERROR(round(&c->slope_below, where + ": slope_below"));
    TOPTHETA_RETURN_IF_ERROR(round(&c->slope_above, where + ": slope_above"));
    for (CurveKnot& k : c->knots) {
      const std::string w = where + " knot length " + std::to_string(k.length);
      const double value = k.value;
      TOPTHETA_RETURN_IF_ERROR(round(&k.value, w + ": value"));
      if (metadata_.placement == Placement::kPostSoftmax && !(k.value > 0))
        return Status::invalid_argument(w + ": post-softmax value " +
                                        detail::float_range_text(value) +
                                        " rounds to 0 as a float (L * theta must be > 0)");
      TOPTHETA_RETURN_IF_ERROR(round(&k.sdc, w + ": SDC term"));
    }
    return {};
  }
  ThresholdLookup lookup_curve(std::size_t s, Index length) const {
    const ThresholdCurve& c = curves_[s];
    ThresholdLookup r;
    const std::size_t n = c.knots.size();
    if (n == 0) {
      r.theta = -std::numeric_limits<double>::infinity();
      return r;
    }
    const bool post = metadata_.placement == Placement::kPostSoftmax;
    const std::vector<double>& lx = log_len_[s];
    const double x = std::log(double(std::max<Index>(length, 1)));
    const auto g = [post](double v) { return post ? std::log(v) : v; };
    double gv;
    if (length <= c.knots.front().length) {
      gv = g(c.knots.front().value) + c.slope_below * (x - lx.front());
      r.sdc = c.knots.front().sdc;
    } else if (length >= c.knots.back().length) {
      gv = g(c.knots.back().value) + c.slope_above * (x - lx.back());
      r.sdc = c.knots.back().sdc;
    } else {
      auto it = std::upper_bound(c.knots.begin(), c.knots.end(), length,
                                 [](Index L, const CurveKnot& k) { return L < k.length; });
      const std::size_t i = std::size_t(it - c.knots.begin());  // knots[i-1] < length < knots[i]
      const double t = (x - lx[i - 1]) / (lx[i] - lx[i - 1]);
      gv = g(c.knots[i - 1].value) + t * (g(c.knots[i].value) - g(c.knots[i - 1].value));
      r.sdc = c.knots[i - 1].sdc + t * (c.knots[i].sdc - c.knots[i - 1].sdc);
    }
    r.theta = post ? std::exp(gv) / double(std::max<Index>(length, 1)) : gv;
    return r;
  }

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
  ThresholdForm form_ = ThresholdForm::kPerLength;
  std::vector<ThresholdCurve> curves_;        // compact: [layer * heads + head]
  std::vector<std::vector<double>> log_len_;  // compact: ln(knot length), per slot
  std::vector<LastBucket> last_bucket_;       // compact: per slot, see max_calibrated_length()
  ThresholdMetadata metadata_;
};

/// Several tables of one calibration pass, one per budget (their nominal_k(), distinct), sorted
/// by k; all of one shape, placement and form. Files hold a set (native format version 2); the
/// user picks k at load time (LoadOptions::k).
class ThresholdSet {
 public:
  /// The tables, sorted by ascending nominal_k().
  const std::vector<ThresholdTable>& tables() const { return tables_; }
  /// The tables, writable (keep them sorted by k and of one shape; add() checks that).
  std::vector<ThresholdTable>& tables() { return tables_; }
  /// True when the set holds no table.
  bool empty() const { return tables_.empty(); }
  /// Number of tables (budgets).
  std::size_t size() const { return tables_.size(); }
  /// The budgets, ascending.
  std::vector<Index> ks() const {
    std::vector<Index> v;
    for (const auto& t : tables_) v.push_back(t.nominal_k());
    return v;
  }
  /// The budgets as text, e.g. "16, 32, 64" (for messages).
  std::string ks_text() const {
    std::string s;
    for (Index k : ks()) s += (s.empty() ? "" : ", ") + std::to_string(k);
    return s;
  }
  /// The table of budget k, or nullptr.
  const ThresholdTable* find(Index k) const {
    for (const auto& t : tables_)
      if (t.nominal_k() == k) return &t;
    return nullptr;
  }
  /// Adds a table (validated); its shape, placement, form and recorded head_dim must match the
  /// set's, its recorded score scale too within kScoreScaleTolerance (it then takes the set's,
  /// so that the set saves as one file), its k be new.
  Status add(ThresholdTable t) {
    TOPTHETA_RETURN_IF_ERROR(t.validate());
    if (!tables_.empty()) {
      const ThresholdTable& f = tables_.front();
      if (f.num_layers() != t.num_layers() || f.num_heads() != t.num_heads())
        return Status::invalid_argument("ThresholdSet: table of shape " +
                                        shape_string(t.num_layers(), t.num_heads()) +
                                        " added to a set of shape " +
                                        shape_string(f.num_layers(), f.num_heads()));
      if (f.placement() != t.placement() || f.form() != t.form())
        return Status::invalid_argument(
            "ThresholdSet: tables of one set share placement and form");
      // One recorded geometry per set (a file holds one): the same head_dim, and scales equal
      // within kScoreScaleTolerance, stored as the set's so that the set saves.
      ThresholdMetadata& m = t.metadata();
      const ThresholdMetadata& m0 = f.metadata();
      if (m.head_dim != m0.head_dim || (m.score_scale == 0) != (m0.score_scale == 0) ||
          !detail::score_scale_matches(m0.score_scale, m.score_scale)) {
        char buf[160];
        std::snprintf(buf, sizeof(buf),
                      "head_dim %lld, score scale %.9g added to a set of head_dim %lld, score "
                      "scale %.9g (0: not recorded)",
                      static_cast<long long>(m.head_dim), m.score_scale,
                      static_cast<long long>(m0.head_dim), m0.score_scale);
        return Status::invalid_argument(std::string("ThresholdSet: tables of one set share the "
                                                    "recorded geometry: ") +
                                        buf);
      }
      m.score_scale = m0.score_scale;
      if (find(t.nominal_k()))
        return Status::invalid_argument("ThresholdSet: k = " + std::to_string(t.nominal_k()) +
                                        " is already in the set");
    }
    const Index k = t.nominal_k();
    auto it = std::find_if(tables_.begin(), tables_.end(),
                           [k](const ThresholdTable& x) { return x.nominal_k() > k; });
    tables_.insert(it, std::move(t));
    return {};
  }

 private:
  std::vector<ThresholdTable> tables_;
};

}  // namespace toptheta
