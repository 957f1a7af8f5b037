#pragma once
/// \file io/format_options.hpp
/// Options of the threshold file readers and writers (docs/threshold-format.md). Users include
/// `io/threshold_file.hpp`, which includes this header.

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "../options.hpp"
#include "../status.hpp"
#include "../threshold_table.hpp"
#include "../types.hpp"
#include "text_codec.hpp"

namespace toptheta {

/// On-disk representation of a ThresholdTable.
enum class ThresholdFormat {
  kAuto,       ///< loading only: detect from the content (native magic line vs `L<l>_H<h>:` lines)
  kNative,     ///< versioned toptheta format with metadata (docs/threshold-format.md)
  kReference,  ///< the authors' th.txt (+ optional sdc.txt) of `kostyanoob/top-theta-attention`
};

/// Names of ThresholdFormat: auto, native, reference (`to_string`, `parse` and the `--from` /
/// `--to` options of toptheta-thresholds use them).
template <>
struct EnumNames<ThresholdFormat> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<ThresholdFormat> table[] = {{ThresholdFormat::kAuto, "auto"},
                                                        {ThresholdFormat::kNative, "native"},
                                                        {ThresholdFormat::kReference, "reference"}};
};

/// What a loader does with (layer, head) pairs that have no entries and are not declared dense.
enum class MissingHeads {
  kError,      ///< default: the load fails, naming the pairs (an incomplete table never loads)
  kDense,      ///< declare them dense in the loaded table (they keep every score): explicit opt-in
  kKeepEmpty,  ///< inspection only: load them as they are; the table then fails validate() and
               ///< the kernels' check_layer(), and the writers refuse it
};

/// Names of MissingHeads: error, dense, keep-empty.
template <>
struct EnumNames<MissingHeads> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<MissingHeads> table[] = {{MissingHeads::kError, "error"},
                                                     {MissingHeads::kDense, "dense"},
                                                     {MissingHeads::kKeepEmpty, "keep-empty"}};
};

/// What a loader checks, and what it assumes for the authors' format (which carries no metadata).
struct LoadOptions {
  /// Native format: the file's placement must equal it (error otherwise).
  /// Authors' format: the placement given to the loaded table (default: pre-softmax).
  std::optional<Placement> expected_placement;
  /// Native format: the file must declare exactly this many layers / heads (0 = don't check).
  /// Authors' format: the table's shape (indices beyond are errors); 0 = infer from the largest
  /// layer / head index in the file.
  Index expected_layers = 0;
  /// Query heads per layer, as `expected_layers` for layers (0 = don't check / infer).
  Index expected_heads = 0;
  /// kAuto detects the format from the content.
  ThresholdFormat format = ThresholdFormat::kAuto;
  /// Authors' format only: path of an sdc.txt to merge into the table (empty = no SDC terms).
  /// Native files carry their SDC terms inline: a path given for one is kInvalidArgument (in
  /// load_thresholds() and load_threshold_set()), not ignored.
  std::string sdc_path;
  /// (layer, head) pairs without entries and not declared dense: an error by default.
  MissingHeads missing_heads = MissingHeads::kError;
  /// Files holding several tables (native version 2: one per budget k): the table of this k;
  /// 0 = the only table (an error naming the file's k values when it holds several). For a
  /// file with one table, a non-zero k must equal that table's k (its smallest layer budget).
  Index k = 0;
};

/// How to save a table.
struct SaveOptions {
  ThresholdFormat format = ThresholdFormat::kNative;  ///< kAuto is treated as kNative
  /// Authors' format only: where sdc.txt goes when the table has SDC terms; empty = a file named
  /// `sdc.txt` in the directory of the th.txt path. Nothing is written when no entry has one.
  std::string sdc_path;
};

namespace detail {

/// Rejects tables a threshold file cannot represent faithfully (so that every saved file loads):
/// an invalid table (including an incomplete or empty one), shapes beyond the loader limits,
/// lengths, k or recorded longest calibrated rows beyond kMaxThresholdLength; compact tables whose
/// metadata().buckets_per_octave is outside [1, 16]. Knot values, slopes and SDC terms are floats
/// already (set_curve() rounds them), so they are written exactly. Errors are kInvalidArgument
/// naming the field and value; an incomplete or empty table gives t.validate()'s
/// kFailedPrecondition.
inline Status check_writable(const ThresholdTable& t) {
  TOPTHETA_RETURN_IF_ERROR(t.validate());
  if (t.is_compact() && (t.metadata().buckets_per_octave < 1 || t.metadata().buckets_per_octave > 16))
    return Status::invalid_argument("buckets_per_octave " +
                                    std::to_string(t.metadata().buckets_per_octave) +
                                    " must be in [1, 16] (metadata().buckets_per_octave of a "
                                    "compact table)");
  if (t.num_layers() > kMaxThresholdLayers || t.num_heads() > kMaxThresholdHeads ||
      t.num_layers() * t.num_heads() > kMaxThresholdSlots)
    return Status::invalid_argument("table shape " + shape_string(t.num_layers(), t.num_heads()) +
                                    " exceeds the file limits (" +
                                    std::to_string(kMaxThresholdLayers) + " layers, " +
                                    std::to_string(kMaxThresholdHeads) + " heads, " +
                                    std::to_string(kMaxThresholdSlots) + " layer-head pairs)");
  for (Index l = 0; l < t.num_layers(); ++l) {
    if (t.k(l) > kMaxThresholdLength)
      return Status::invalid_argument("k of layer " + std::to_string(l) + " exceeds " +
                                      std::to_string(kMaxThresholdLength));
    for (Index h = 0; h < t.num_heads(); ++h) {
      const auto& v = t.entries(l, h);
      if (!v.empty() && v.back().length > kMaxThresholdLength)
        return Status::invalid_argument("length " + std::to_string(v.back().length) +
                                        " exceeds " + std::to_string(kMaxThresholdLength));
      const auto& c = t.curve(l, h).knots;
      if (!c.empty() && c.back().length > kMaxThresholdLength)
        return Status::invalid_argument("knot length " + std::to_string(c.back().length) +
                                        " exceeds " + std::to_string(kMaxThresholdLength));
      const Index longest = t.curve(l, h).max_calibrated_length;
      if (longest > kMaxThresholdLength)
        return Status::invalid_argument(
            "max_calibrated_length " + std::to_string(longest) + " of layer " + std::to_string(l) +
            " head " + std::to_string(h) + " exceeds " + std::to_string(kMaxThresholdLength));
    }
  }
  return {};
}

/// The last step of every loader: applies `opts.missing_heads` to the parsed table `t` (whose
/// entries passed validate_entries()) and checks completeness. `shape_note` is appended to an
/// incompleteness message (e.g. where the shape came from). Errors are `name: ...` with the
/// code of ThresholdTable::check_complete() (kFailedPrecondition).
inline Status finish_loaded_table(ThresholdTable* t, const LoadOptions& opts,
                                  const std::string& name, const std::string& shape_note) {
  if (opts.missing_heads == MissingHeads::kKeepEmpty) return {};
  if (opts.missing_heads == MissingHeads::kDense) {
    for (Index l = 0; l < t->num_layers(); ++l)
      for (Index h = 0; h < t->num_heads(); ++h)
        if (!t->has_thresholds(l, h)) (void)t->set_dense(l, h);
    return {};
  }
  const Status s = t->check_complete(shape_note);
  if (s.ok()) return s;
  return Status(s.code(), name + ": " + s.message());
}

/// Collects the entries of a file before they go into a ThresholdTable: O(1) per entry for input
/// sorted by length within each (layer, head) (what every writer emits), O(n log n) otherwise,
/// so a crafted file cannot make loading quadratic. Duplicates are found immediately in sorted
/// input and by install() otherwise.
class EntryCollector {
 public:
  explicit EntryCollector(Index slots) : slots_(static_cast<std::size_t>(slots)) {}

  /// Adds an entry of line `line` to slot `slot` (layer * heads + head). Returns the line of an
  /// earlier entry with the same length when it is detected here, else 0.
  Index add(Index slot, const ThresholdEntry& e, Index line) {
    Slot& s = slots_[static_cast<std::size_t>(slot)];
    if (!s.items.empty() && s.sorted) {
      const Item& last = s.items.back();
      if (last.entry.length == e.length) return last.line;
      if (last.entry.length > e.length) s.sorted = false;
    }
    s.items.push_back({e, line});
    return 0;
  }

  /// Duplicate not detected by add(), if any: the one whose later occurrence has the smallest
  /// line number. Returns false when there is none.
  bool find_duplicate(Index* slot, Index* length, Index* line, Index* first_line) {
    bool found = false;
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (s.sorted) continue;
      std::sort(s.items.begin(), s.items.end(), [](const Item& a, const Item& b) {
        return a.entry.length != b.entry.length ? a.entry.length < b.entry.length : a.line < b.line;
      });
      s.sorted = true;
      for (std::size_t j = 1; j < s.items.size(); ++j)
        if (s.items[j].entry.length == s.items[j - 1].entry.length &&
            (!found || s.items[j].line < *line)) {
          found = true;
          *slot = Index(i);
          *length = s.items[j].entry.length;
          *line = s.items[j].line;
          *first_line = s.items[j - 1].line;
        }
    }
    return found;
  }

  /// Moves the entries into `t` (shape `slots` = layers * heads). Call after find_duplicate()
  /// returned false.
  void install(ThresholdTable* t) {
    const Index heads = t->num_heads();
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      if (!s.sorted)
        std::sort(s.items.begin(), s.items.end(),
                  [](const Item& a, const Item& b) { return a.entry.length < b.entry.length; });
      for (const Item& it : s.items)
        (void)t->set(Index(i) / heads, Index(i) % heads, it.entry);  // appends: O(log n)
      s.items = {};
    }
  }

 private:
  struct Item {
    ThresholdEntry entry;
    Index line;
  };
  struct Slot {
    std::vector<Item> items;
    bool sorted = true;
  };
  std::vector<Slot> slots_;
};

/// A file with one table loaded as a set: `t` validated into `*out` (kept as it is, incomplete,
/// under MissingHeads::kKeepEmpty, for inspection).
inline Status single_table_set(ThresholdTable t, const LoadOptions& opts, ThresholdSet* out) {
  ThresholdSet set;
  if (opts.missing_heads == MissingHeads::kKeepEmpty) set.tables().push_back(std::move(t));
  else TOPTHETA_RETURN_IF_ERROR(set.add(std::move(t)));
  *out = std::move(set);
  return {};
}

}  // namespace detail
}  // namespace toptheta
