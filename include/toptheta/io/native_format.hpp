#pragma once
/// \file io/native_format.hpp
/// The native, versioned threshold text format (docs/threshold-format.md, "Native format"):
///
///     toptheta-thresholds 1
///     placement pre
///     layers 2
///     heads 2
///     k 64 64
///     lambda 0.1
///     calibration_rows 1000
///     model my-model            (optional)
///     notes free text           (optional)
///     head_dim 128              (optional: recorded by the calibrator)
///     score_scale 0.08838834764831843  (optional: recorded by the calibrator)
///     dense_heads 1 1           (optional, one line per layer: heads declared dense)
///     entries 3
///     0 0 65 0.8125 12
///     0 1 65 -inf 12 0.25       (layer head length theta samples [sdc])
///     1 0 70 1.5 3
///     end
///
/// Every (layer, head) needs entries or a `dense_heads` declaration (see ThresholdTable).
///
/// Version 1 holds one per-length table; version 2 (io/native_format_v2.hpp) holds compact
/// tables, one per budget k. Per-length tables are written as version 1, compact ones as
/// version 2; both versions load.
///
/// Doubles are written as the shortest decimal that reads back bit-identically.
/// Parsing is O(file size) for entries sorted by length within each (layer, head), which is how
/// the writer emits them, O(n log n) otherwise; it never reads outside the given text.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../options.hpp"
#include "../status.hpp"
#include "../threshold_table.hpp"
#include "format_options.hpp"
#include "native_format_v2.hpp"
#include "text_codec.hpp"

namespace toptheta {

/// First word of a native threshold file.
inline constexpr const char* kNativeThresholdMagic = detail::kNativeMagicV2;
/// The newest native format version this library writes and reads (2: compact curves).
inline constexpr int kNativeThresholdVersion = 2;
/// The version of per-length tables (still written for them, and read).
inline constexpr int kNativeThresholdVersionPerLength = 1;

/// Serialises `table` in the native format (after `table.validate()` and the file limits):
/// version 1 for a per-length table, version 2 for a compact one. `out` is untouched on error.
/// Errors (kInvalidArgument / validate()'s codes): what the readers would reject, so every
/// written text parses back identically (detail::check_writable(): validate() failures, shapes,
/// lengths and k beyond the limits, a compact table's buckets_per_octave outside [1, 16],
/// model / notes text that does not fit a line).
inline Status format_native_thresholds(const ThresholdTable& table, std::string* out) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "format_native_thresholds", "out"));
  TOPTHETA_RETURN_IF_ERROR(detail::check_writable(table));
  if (table.is_compact()) {
    ThresholdSet set;
    TOPTHETA_RETURN_IF_ERROR(set.add(table));
    return detail::format_native_v2(set, out);
  }
  const ThresholdMetadata& md = table.metadata();
  TOPTHETA_RETURN_IF_ERROR(detail::check_metadata_texts(md));
  std::string s;
  s.reserve(256 + table.size() * 40);
  s += kNativeThresholdMagic;
  s += " " + std::to_string(kNativeThresholdVersionPerLength) + "\n";
  s += "# Top-theta attention thresholds; format: docs/threshold-format.md\n";
  s += "placement ";
  s += to_string(md.placement);
  s += "\nlayers " + std::to_string(table.num_layers());
  s += "\nheads " + std::to_string(table.num_heads());
  s += "\nk";
  for (Index l = 0; l < table.num_layers(); ++l) s += " " + std::to_string(table.k(l));
  s += "\nlambda ";
  detail::append_double(&s, md.lambda);
  s += "\ncalibration_rows " + std::to_string(md.calibration_rows) + "\n";
  detail::append_metadata_texts(&s, md);
  detail::append_geometry(&s, md);
  detail::append_dense_heads(&s, table);
  s += "entries " + std::to_string(table.size()) + "\n";
  s += "# layer head length theta samples [sdc]\n";
  for (Index l = 0; l < table.num_layers(); ++l)
    for (Index h = 0; h < table.num_heads(); ++h)
      for (const ThresholdEntry& e : table.entries(l, h)) {
        s += std::to_string(l);
        s += ' ';
        s += std::to_string(h);
        s += ' ';
        s += std::to_string(e.length);
        s += ' ';
        detail::append_double(&s, e.theta);
        s += ' ';
        s += std::to_string(e.samples);
        if (e.has_sdc()) {
          s += ' ';
          detail::append_double(&s, e.sdc);
        }
        s += '\n';
      }
  s += "end\n";
  *out = std::move(s);
  return {};
}

/// Parses a native threshold file held in `text`; `name` prefixes error messages
/// (`name:line: problem`). Validates everything (docs/threshold-format.md, "Validation"),
/// checks `opts.expected_placement` / `expected_layers` / `expected_heads`, and applies
/// `opts.missing_heads` to (layer, head) pairs without entries that 'dense_heads' does not declare
/// (an error by default). A leading UTF-8 byte-order mark is skipped. On success `*out` holds the
/// table; on error `*out` is untouched.
inline Status parse_native_thresholds(std::string_view text, const std::string& name,
                                      ThresholdTable* out, const LoadOptions& opts = {}) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "parse_native_thresholds", "out"));
  using detail::NumberParse;
  using detail::quote_token;
  detail::LineScanner sc(text);
  std::string_view line;
  Index ln = 0;
  const bool unterminated = !text.empty() && text.back() != '\n';
  const auto fail = [&](StatusCode code, Index at, std::string m) {
    if (unterminated && at == ln && at == sc.line_no() && sc.next_offset() >= text.size())
      m += " (the file ends inside this line without a line break: truncated?)";
    return detail::file_error(code, name, at, m);
  };
  const auto bad = [&](Index at, std::string m) { return fail(StatusCode::kDataLoss, at, std::move(m)); };
  const auto num_error = [&](NumberParse r, std::string_view tok, const std::string& what) {
    return bad(ln, std::string(r == NumberParse::kOverflow ? "number out of range "
                                                           : "malformed number ") +
                       quote_token(tok) + " for " + what);
  };
  std::vector<std::string_view> f;

  // --- format line
  if (!sc.next(&line, &ln))
    return bad(0, "empty file: expected '" + std::string(kNativeThresholdMagic) + " " +
                      std::to_string(kNativeThresholdVersionPerLength) + "' or '" + std::string(kNativeThresholdMagic) + " " + std::to_string(kNativeThresholdVersion) + "' as the first line");
  std::string problem = detail::check_line_bytes(line);
  if (!problem.empty()) return bad(ln, problem);
  detail::split_fields(line, &f);
  if (f.empty() || f[0] != kNativeThresholdMagic)
    return bad(ln, "missing format line: expected '" + std::string(kNativeThresholdMagic) + " " +
                       std::to_string(kNativeThresholdVersionPerLength) + "' or '" + std::string(kNativeThresholdMagic) + " " + std::to_string(kNativeThresholdVersion) + "' as the first line");
  if (f.size() != 2)
    return bad(ln, "the format line must be '" + std::string(kNativeThresholdMagic) + " <version>'");
  std::uint64_t version = 0;
  if (!detail::parse_uint(f[1], std::uint64_t(1) << 62, &version))
    return bad(ln, "malformed format version " + quote_token(f[1]));
  if (version == 2) {
    ThresholdSet set;
    TOPTHETA_RETURN_IF_ERROR(detail::parse_native_v2(text, name, &set, opts));
    ThresholdTable t;
    TOPTHETA_RETURN_IF_ERROR(detail::select_table(set, opts.k, name, &t));
    *out = std::move(t);
    return {};
  }
  if (version != 1)
    return bad(ln, "unsupported format version " + std::to_string(version) +
                       " (this library reads versions 1 and 2)");

  // --- header
  enum Key {
    kPlacement,
    kLayers,
    kHeads,
    kK,
    kLambda,
    kRows,
    kModel,
    kNotes,
    kHeadDim,
    kScoreScale,
    kNumKeys
  };
  static const char* const key_names[kNumKeys] = {"placement", "layers",           "heads", "k",
                                                  "lambda",    "calibration_rows", "model", "notes",
                                                  "head_dim",  "score_scale"};
  Index key_line[kNumKeys] = {};
  Placement placement = Placement::kPreSoftmax;
  Index layers = 0, heads = 0;
  std::vector<Index> ks;
  double lambda = 0.0;
  std::uint64_t rows = 0;
  std::string model, notes;
  Index head_dim = 0;
  double score_scale = 0.0;
  std::uint64_t declared = 0;
  Index entries_line = 0;
  struct DenseRange {
    Index layer, first, last, line;
  };
  std::vector<DenseRange> dense;  // from 'dense_heads' lines, checked once the shape is known
  while (sc.next(&line, &ln)) {
    problem = detail::check_line_bytes(line);
    if (!problem.empty()) return bad(ln, problem);
    if (detail::is_blank_or_comment(line)) continue;
    detail::split_fields(line, &f);
    const std::string_view key = f[0];
    if (key == "entries") {
      if (f.size() != 2) return bad(ln, "'entries' takes one value: the number of entry lines");
      if (!detail::parse_uint(f[1], std::uint64_t(1) << 62, &declared)) {
        if (detail::is_digits(f[1]))
          return bad(ln, "number " + quote_token(f[1]) + " for 'entries' is too large (at most 2^62)");
        return num_error(NumberParse::kMalformed, f[1], "'entries'");
      }
      entries_line = ln;
      break;
    }
    if (key == "dense_heads") {
      // dense_heads <layer> <head>|<first>-<last> ...
      if (f.size() < 3)
        return bad(ln, "'dense_heads' takes a layer and at least one head or range "
                       "'<first>-<last>' of heads declared dense");
      Index l = 0;
      if (!detail::parse_int(f[1], &l))
        return num_error(detail::integer_failure(f[1]), f[1], "layer");
      for (std::size_t i = 2; i < f.size(); ++i) {
        const std::string_view tok = f[i];
        const std::size_t dash = tok.find('-', 1);
        Index a = 0, b = 0;
        if (dash == std::string_view::npos) {
          if (!detail::parse_int(tok, &a))
            return num_error(detail::integer_failure(tok), tok, "head");
          b = a;
        } else if (!detail::parse_int(tok.substr(0, dash), &a) ||
                   !detail::parse_int(tok.substr(dash + 1), &b) || b < a) {
          return bad(ln, "malformed head range " + quote_token(tok) +
                             " in 'dense_heads' (expected <head> or <first>-<last>, first <= last)");
        }
        dense.push_back({l, a, b, ln});
      }
      continue;
    }
    int k = 0;
    while (k < kNumKeys && key != key_names[k]) ++k;
    if (k == kNumKeys) {
      if (key == "end") return bad(ln, "'end' before the 'entries' line");
      if ((key[0] >= '0' && key[0] <= '9') || key[0] == '-')
        return bad(ln, "entry line before the 'entries' line (the header is incomplete)");
      return bad(ln, "unknown header key " + quote_token(key));
    }
    if (key_line[k] != 0)
      return bad(ln, "duplicate header key '" + std::string(key_names[k]) + "' (first on line " +
                         std::to_string(key_line[k]) + ")");
    key_line[k] = ln;
    const std::string kname = key_names[k];
    if (k == kModel || k == kNotes) {
      (k == kModel ? model : notes) = detail::free_text_value(line, key.size());
      continue;
    }
    if (k != kK && f.size() != 2) return bad(ln, "'" + kname + "' takes exactly one value");
    if (k == kPlacement) {
      const Status e = detail::parse_placement_value(f[1], opts, &placement);
      if (!e.ok()) return fail(e.code(), ln, e.message());
    } else if (k == kLayers || k == kHeads) {
      const Index limit = k == kLayers ? kMaxThresholdLayers : kMaxThresholdHeads;
      std::uint64_t v = 0;
      const bool parsed = detail::parse_uint(f[1], ~std::uint64_t(0), &v);
      if (!parsed && !detail::is_digits(f[1]))
        return num_error(NumberParse::kMalformed, f[1], "'" + kname + "'");
      if (!parsed || v < 1 || v > std::uint64_t(limit))  // digits beyond 2^64 - 1 too
        return bad(ln, "'" + kname + "' must be in [1, " + std::to_string(limit) + "], got " +
                           std::string(f[1]));
      (k == kLayers ? layers : heads) = Index(v);
      const Index expected = k == kLayers ? opts.expected_layers : opts.expected_heads;
      if (expected > 0 && expected != Index(v))
        return fail(StatusCode::kInvalidArgument, ln,
                    "the file has " + std::to_string(v) + " " + kname + " but " +
                        std::to_string(expected) + " are expected");
    } else if (k == kK) {
      if (f.size() < 2) return bad(ln, "'k' needs one value per layer");
      for (std::size_t i = 1; i < f.size(); ++i) {
        std::uint64_t v = 0;
        const bool parsed = detail::parse_uint(f[i], ~std::uint64_t(0), &v);
        if (!parsed && !detail::is_digits(f[i]))
          return num_error(NumberParse::kMalformed, f[i], "k of layer " + std::to_string(i - 1));
        if (!parsed || v < 1 || v > std::uint64_t(kMaxThresholdLength))
          return bad(ln, "k of layer " + std::to_string(i - 1) + " must be in [1, " +
                             std::to_string(kMaxThresholdLength) + "], got " + std::string(f[i]));
        ks.push_back(Index(v));
      }
    } else if (k == kLambda) {
      const NumberParse r = detail::parse_double(f[1], &lambda);
      if (r != NumberParse::kOk) return num_error(r, f[1], "'lambda'");
      if (!std::isfinite(lambda)) return bad(ln, "'lambda' must be finite, got " + quote_token(f[1]));
    } else if (k == kRows) {
      if (!detail::parse_uint(f[1], ~std::uint64_t(0), &rows))
        return num_error(detail::integer_failure(f[1]), f[1], "'calibration_rows'");
    } else if (k == kHeadDim || k == kScoreScale) {
      const Status e = k == kHeadDim ? detail::parse_head_dim_value(f[1], &head_dim)
                                     : detail::parse_score_scale_value(f[1], &score_scale);
      if (!e.ok()) return fail(e.code(), ln, e.message());
    }
  }
  if (entries_line == 0)
    return bad(ln > 0 ? ln : 1, "truncated file: the header has no 'entries' line");
  for (int k = kPlacement; k <= kRows; ++k)
    if (key_line[k] == 0)
      return bad(entries_line, "missing header line '" + std::string(key_names[k]) +
                                   "' before 'entries'");
  if (Index(ks.size()) != layers)
    return bad(key_line[kK], "'k' has " + std::to_string(ks.size()) + " values but 'layers' is " +
                                 std::to_string(layers));
  if (layers * heads > kMaxThresholdSlots)
    return bad(key_line[kHeads], "layers x heads = " + std::to_string(layers * heads) +
                                     " exceeds the limit " + std::to_string(kMaxThresholdSlots));

  ThresholdTable t(layers, heads, 1);
  for (Index l = 0; l < layers; ++l) (void)t.set_k(l, ks[static_cast<std::size_t>(l)]);
  std::vector<Index> dense_line(static_cast<std::size_t>(layers), 0);  // per layer, 0 = none
  for (const DenseRange& d : dense) {
    if (d.layer < 0 || d.layer >= layers)
      return fail(StatusCode::kOutOfRange, d.line,
                  "'dense_heads': layer " + std::to_string(d.layer) + " out of range [0, " +
                      std::to_string(layers) + ")");
    Index& first_line = dense_line[static_cast<std::size_t>(d.layer)];
    if (first_line != 0 && first_line != d.line)
      return bad(d.line, "duplicate 'dense_heads' line for layer " + std::to_string(d.layer) +
                             " (first on line " + std::to_string(first_line) + ")");
    first_line = d.line;
    if (d.first < 0 || d.last >= heads)
      return fail(StatusCode::kOutOfRange, d.line,
                  "'dense_heads': head " + std::to_string(d.first < 0 ? d.first : d.last) +
                      " out of range [0, " + std::to_string(heads) + ")");
    for (Index h = d.first; h <= d.last; ++h) {
      if (t.is_dense(d.layer, h))
        return bad(d.line, "'dense_heads' lists head " + std::to_string(h) + " of layer " +
                               std::to_string(d.layer) + " twice");
      (void)t.set_dense(d.layer, h);
    }
  }
  t.metadata().placement = placement;
  t.metadata().lambda = lambda;
  t.metadata().calibration_rows = rows;
  t.metadata().model_id = std::move(model);
  t.metadata().notes = std::move(notes);
  t.metadata().head_dim = head_dim;
  t.metadata().score_scale = score_scale;

  // --- entries
  detail::EntryCollector entries(layers * heads);
  const auto duplicate_message = [](Index l, Index h, Index L, Index first) {
    return "duplicate entry for layer " + std::to_string(l) + ", head " + std::to_string(h) +
           ", length " + std::to_string(L) + " (first on line " + std::to_string(first) + ")";
  };
  std::uint64_t seen = 0;
  bool ended = false;
  while (sc.next(&line, &ln)) {
    problem = detail::check_line_bytes(line);
    if (!problem.empty()) return bad(ln, problem);
    if (detail::is_blank_or_comment(line)) continue;
    detail::split_fields(line, &f);
    if (ended) return bad(ln, "unexpected content after the 'end' line");
    if (f[0] == "end") {
      if (f.size() != 1) return bad(ln, "'end' takes no values");
      if (seen != declared)
        return bad(ln, "truncated entries: 'entries' on line " + std::to_string(entries_line) +
                           " declares " + std::to_string(declared) + " but " +
                           std::to_string(seen) + " precede 'end'");
      ended = true;
      continue;
    }
    if (seen == declared)
      return bad(ln, "more entry lines than the " + std::to_string(declared) +
                         " declared by 'entries' on line " + std::to_string(entries_line));
    if (f.size() != 5 && f.size() != 6)
      return bad(ln, "an entry is 'layer head length theta samples [sdc]', got " +
                         std::to_string(f.size()) + " fields");
    Index l = 0, h = 0, L = 0;
    if (!detail::parse_int(f[0], &l))
      return num_error(detail::integer_failure(f[0]), f[0], "layer");
    if (!detail::parse_int(f[1], &h)) return num_error(detail::integer_failure(f[1]), f[1], "head");
    if (!detail::parse_int(f[2], &L))
      return num_error(detail::integer_failure(f[2]), f[2], "length");
    if (l < 0 || l >= layers)
      return fail(StatusCode::kOutOfRange, ln,
                  "layer " + std::to_string(l) + " out of range [0, " + std::to_string(layers) + ")");
    if (h < 0 || h >= heads)
      return fail(StatusCode::kOutOfRange, ln,
                  "head " + std::to_string(h) + " out of range [0, " + std::to_string(heads) + ")");
    if (L <= 0) return bad(ln, "non-positive length " + std::to_string(L));
    if (L > kMaxThresholdLength)
      return bad(ln, "length " + std::to_string(L) + " exceeds " + std::to_string(kMaxThresholdLength));
    ThresholdEntry e;
    e.length = L;
    NumberParse r = detail::parse_double(f[3], &e.theta);
    if (r != NumberParse::kOk) return num_error(r, f[3], "theta");
    if (std::isnan(e.theta) || (std::isinf(e.theta) && e.theta > 0))
      return bad(ln, "non-finite theta " + quote_token(f[3]) + " (only -inf is allowed)");
    if (!detail::parse_uint(f[4], ~std::uint64_t(0), &e.samples))
      return num_error(detail::integer_failure(f[4]), f[4], "samples");
    if (f.size() == 6) {
      r = detail::parse_double(f[5], &e.sdc);
      if (r != NumberParse::kOk) return num_error(r, f[5], "sdc");
      if (!std::isfinite(e.sdc) || e.sdc < 0)
        return bad(ln, "SDC term must be finite and non-negative, got " + quote_token(f[5]));
    }
    if (t.is_dense(l, h))
      return bad(ln, "entry for layer " + std::to_string(l) + " head " + std::to_string(h) +
                         ", which 'dense_heads' on line " +
                         std::to_string(dense_line[static_cast<std::size_t>(l)]) +
                         " declares dense (a dense head has no thresholds)");
    const Index first = entries.add(l * heads + h, e, ln);
    if (first != 0) return bad(ln, duplicate_message(l, h, L, first));
    ++seen;
  }
  if (!ended)
    return bad(ln, "truncated file: no 'end' line (" + std::to_string(seen) + " of " +
                       std::to_string(declared) + " declared entries read)");
  Index dslot = 0, dlen = 0, dline = 0, dfirst = 0;
  if (entries.find_duplicate(&dslot, &dlen, &dline, &dfirst))
    return bad(dline, duplicate_message(dslot / heads, dslot % heads, dlen, dfirst));
  entries.install(&t);
  const Status s = t.validate_entries();
  if (!s.ok()) return detail::file_error(StatusCode::kDataLoss, name, 0, s.message());
  TOPTHETA_RETURN_IF_ERROR(detail::finish_loaded_table(&t, opts, name, std::string()));
  if (opts.k != 0 && t.nominal_k() != opts.k)
    return Status::invalid_argument(name + ": no table for k = " + std::to_string(opts.k) +
                                    " (the file holds k = " + std::to_string(t.nominal_k()) + ")");
  *out = std::move(t);
  return {};
}

/// Serialises a set: version 2 for compact tables (all in one file); a set of one per-length
/// table as version 1 (per-length tables cannot share a file).
inline Status format_native_threshold_set(const ThresholdSet& set, std::string* out) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "format_native_threshold_set", "out"));
  if (set.size() == 1 && !set.tables().front().is_compact())
    return format_native_thresholds(set.tables().front(), out);
  return detail::format_native_v2(set, out);
}

/// Parses a native file into a set: every table of a version-2 file (`opts.k` ignored), or the
/// one table of a version-1 file. The format line is checked as parse_native_thresholds() checks
/// it, with the same errors (kDataLoss `name:1: ...`, e.g. "the format line must be
/// 'toptheta-thresholds <version>'" for extra fields); then the errors of that version's reader.
inline Status parse_native_threshold_set(std::string_view text, const std::string& name,
                                         ThresholdSet* out, const LoadOptions& opts = {}) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "parse_native_threshold_set", "out"));
  // Version 2 exactly when parse_native_thresholds() would take the format line as version 2
  // (two fields, the magic and the number 2); any other first line goes through it for the
  // same errors (e.g. "the format line must be 'toptheta-thresholds <version>'").
  {
    detail::LineScanner sc(text);
    std::string_view line;
    Index ln = 0;
    std::vector<std::string_view> f;
    std::uint64_t version = 0;
    if (sc.next(&line, &ln) && detail::check_line_bytes(line).empty()) {
      detail::split_fields(line, &f);
      if (f.size() == 2 && f[0] == kNativeThresholdMagic &&
          detail::parse_uint(f[1], std::uint64_t(1) << 62, &version) && version == 2)
        return detail::parse_native_v2(text, name, out, opts);
    }
  }
  LoadOptions o = opts;
  o.k = 0;
  ThresholdTable t;
  TOPTHETA_RETURN_IF_ERROR(parse_native_thresholds(text, name, &t, o));
  return detail::single_table_set(std::move(t), opts, out);
}

}  // namespace toptheta
