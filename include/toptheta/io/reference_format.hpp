#pragma once
/// \file io/reference_format.hpp
/// The authors' threshold files (`kostyanoob/top-theta-attention`, `topk_llama.py`), see
/// docs/threshold-format.md, "Authors' format":
///
///     th.txt   one line per entry:  L{layer}_H{head}:{length} {theta} {n_samples} {k}
///     sdc.txt  one line per entry:  L{layer}_H{head}:{length} {C} {n_samples}
///
/// e.g. `L31_H31:1219 0.0002257227897644043 4 64`. Fields are separated by one space, lines end
/// with '\n'; all layers share one file. The files carry no placement, lambda or row count: the
/// placement comes from `LoadOptions::expected_placement` (default pre-softmax: callers should
/// say so when they assume it), lambda and calibration_rows load as 0, and so does the recorded
/// geometry (ThresholdMetadata::head_dim, score_scale: not checked by the kernels).
///
/// The writer emits exactly the authors' layout (single spaces, no comments, entries sorted by
/// layer, head, length) with shortest round-trip decimals, which Python's `float()` reads back
/// bit-identically. The reader also accepts runs of blanks, CRLF line ends, blank lines and
/// '#' comment lines.

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../options.hpp"
#include "../status.hpp"
#include "../threshold_table.hpp"
#include "format_options.hpp"
#include "text_codec.hpp"

namespace toptheta {

namespace detail {

/// Parses `L<layer>_H<head>:<length>` (decimal digits only).
inline bool parse_reference_key(std::string_view tok, Index* layer, Index* head, Index* length) {
  if (tok.size() < 6 || tok[0] != 'L') return false;
  const std::size_t us = tok.find("_H");
  const std::size_t colon = tok.find(':');
  if (us == std::string_view::npos || colon == std::string_view::npos || colon < us) return false;
  std::uint64_t l = 0, h = 0, L = 0;
  const std::uint64_t max = std::uint64_t(1) << 62;
  if (!parse_uint(tok.substr(1, us - 1), max, &l) ||
      !parse_uint(tok.substr(us + 2, colon - us - 2), max, &h) ||
      !parse_uint(tok.substr(colon + 1), max, &L))
    return false;
  *layer = Index(l);
  *head = Index(h);
  *length = Index(L);
  return true;
}

/// True when the first non-blank, non-comment line of `text` starts with `L<digit>`.
inline bool looks_like_reference(std::string_view text) {
  LineScanner sc(text);
  std::string_view line;
  Index ln = 0;
  while (sc.next(&line, &ln)) {
    if (is_blank_or_comment(line)) continue;
    std::size_t p = 0;
    while (p < line.size() && is_blank(line[p])) ++p;
    return p + 1 < line.size() && line[p] == 'L' && line[p + 1] >= '0' && line[p + 1] <= '9';
  }
  return false;
}

}  // namespace detail

/// Serialises `table` as the authors' th.txt text into `*th` and sdc.txt text into `*sdc` (empty
/// when no entry has an SDC term; entries without one are left out of sdc.txt). Fails for an
/// invalid (incomplete, empty) table and for a table with dense heads (the format cannot declare
/// them). Every other valid table has entries in its last (layer, head), so its shape reads back
/// without `LoadOptions::expected_layers/heads`. The format stores no placement: load a
/// post-softmax table with `expected_placement`. Outputs are untouched on error.
inline Status format_reference_thresholds(const ThresholdTable& table, std::string* th,
                                          std::string* sdc) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(th, "format_reference_thresholds", "th"));
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(sdc, "format_reference_thresholds", "sdc"));
  TOPTHETA_RETURN_IF_ERROR(detail::check_writable(table));
  if (table.is_compact())
    return Status::invalid_argument(
        "the authors' format holds per-length thresholds, not compact curves: save in the native "
        "format (version 2)");
  if (table.num_dense_heads() > 0)
    return Status::invalid_argument(
        "the authors' format cannot declare dense heads (" + table.describe_heads(true) +
        "): save in the native format, or load the exported file with missing heads as dense");
  // A complete table without dense heads has entries for every (layer, head): every layer's k
  // and the shape are representable.
  std::string t, c;
  t.reserve(table.size() * 40);
  for (Index l = 0; l < table.num_layers(); ++l)
    for (Index h = 0; h < table.num_heads(); ++h)
      for (const ThresholdEntry& e : table.entries(l, h)) {
        std::string key = "L" + std::to_string(l) + "_H" + std::to_string(h) + ":" +
                          std::to_string(e.length) + " ";
        t += key;
        detail::append_double(&t, e.theta);
        t += " " + std::to_string(e.samples) + " " + std::to_string(table.k(l)) + "\n";
        if (e.has_sdc()) {
          c += key;
          detail::append_double(&c, e.sdc);
          c += " " + std::to_string(e.samples) + "\n";
        }
      }
  *th = std::move(t);
  *sdc = std::move(c);
  return {};
}

/// Parses the authors' th.txt held in `th_text` (`th_name` prefixes messages) and, when
/// `sdc_text` is not empty, their sdc.txt (`sdc_name`). Shape: `opts.expected_layers/heads` when
/// given (larger indices are errors), else one more than the largest index seen. Every layer
/// needs at least one entry and one consistent k; every (layer, head) needs entries unless
/// `opts.missing_heads` says otherwise (the format cannot declare dense heads). A leading UTF-8
/// byte-order mark is skipped in both texts. Each sdc.txt line must match a th.txt entry;
/// th.txt entries without one keep a NaN SDC term. sdc.txt sample counts are read but not kept.
/// On error `*out` is untouched.
inline Status parse_reference_thresholds(std::string_view th_text, const std::string& th_name,
                                         ThresholdTable* out, const LoadOptions& opts = {},
                                         std::string_view sdc_text = {},
                                         const std::string& sdc_name = "sdc.txt") {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "parse_reference_thresholds", "out"));
  using detail::NumberParse;
  using detail::quote_token;
  struct Row {
    Index layer, head;
    ThresholdEntry e;
    Index line;
  };
  if (opts.expected_layers > kMaxThresholdLayers || opts.expected_heads > kMaxThresholdHeads)
    return Status::invalid_argument(th_name + ": expected shape " +
                                    shape_string(opts.expected_layers, opts.expected_heads) +
                                    " exceeds the loader limits (" +
                                    std::to_string(kMaxThresholdLayers) + " layers, " +
                                    std::to_string(kMaxThresholdHeads) + " heads)");
  const Index max_layers = opts.expected_layers > 0 ? opts.expected_layers : kMaxThresholdLayers;
  const Index max_heads = opts.expected_heads > 0 ? opts.expected_heads : kMaxThresholdHeads;
  std::vector<Row> rows;
  std::vector<Index> layer_k, layer_k_line;
  Index max_l = -1, max_h = -1;
  std::vector<std::string_view> f;

  // Shared per-line checks of both files: bytes, key, ranges. Returns false after setting *err.
  const auto scan_key = [&](const std::string& name, Index ln, std::string_view line,
                            std::size_t nfields, const char* layout, Index* l, Index* h, Index* L,
                            Status* err) {
    const auto bad = [&](std::string m) {
      *err = detail::file_error(StatusCode::kDataLoss, name, ln, std::move(m));
      return false;
    };
    const std::string problem = detail::check_line_bytes(line);
    if (!problem.empty()) return bad(problem);
    detail::split_fields(line, &f);
    if (!detail::parse_reference_key(f[0], l, h, L))
      return bad("malformed key " + quote_token(f[0]) + ": expected L<layer>_H<head>:<length>");
    if (f.size() != nfields)
      return bad(std::string("expected '") + layout + "', got " + std::to_string(f.size()) +
                 " fields");
    if (*l >= max_layers || *h >= max_heads) {
      const bool lay = *l >= max_layers;
      const Index v = lay ? *l : *h, lim = lay ? max_layers : max_heads;
      const bool expected = lay ? opts.expected_layers > 0 : opts.expected_heads > 0;
      *err = detail::file_error(
          StatusCode::kOutOfRange, name, ln,
          std::string(lay ? "layer " : "head ") + std::to_string(v) + " out of range [0, " +
              std::to_string(lim) + ")" +
              (expected ? std::string(" (the expected ") + (lay ? "layer" : "head") + " count)"
                        : std::string(" (the loader's limit)")));
      return false;
    }
    if (*L <= 0) return bad("non-positive length " + std::to_string(*L));
    if (*L > kMaxThresholdLength)
      return bad("length " + std::to_string(*L) + " exceeds " + std::to_string(kMaxThresholdLength));
    return true;
  };

  // --- th.txt
  {
    detail::LineScanner sc(th_text);
    std::string_view line;
    Index ln = 0;
    Status err;
    while (sc.next(&line, &ln)) {
      const auto bad = [&](std::string m) {
        return detail::file_error(StatusCode::kDataLoss, th_name, ln, std::move(m));
      };
      const auto num_error = [&](NumberParse r, std::string_view tok, const char* what) {
        return bad(std::string(r == NumberParse::kOverflow ? "number out of range "
                                                           : "malformed number ") +
                   quote_token(tok) + " for " + what);
      };
      if (detail::is_blank_or_comment(line) && detail::check_line_bytes(line).empty()) continue;
      Row r{};
      if (!scan_key(th_name, ln, line, 4, "L<layer>_H<head>:<length> theta n_samples k", &r.layer,
                    &r.head, &r.e.length, &err))
        return err;
      const NumberParse p = detail::parse_double(f[1], &r.e.theta);
      if (p != NumberParse::kOk) return num_error(p, f[1], "theta");
      if (std::isnan(r.e.theta) || (std::isinf(r.e.theta) && r.e.theta > 0))
        return bad("non-finite theta " + quote_token(f[1]) + " (only -inf is allowed)");
      if (!detail::parse_uint(f[2], ~std::uint64_t(0), &r.e.samples))
        return num_error(detail::integer_failure(f[2]), f[2], "n_samples");
      std::uint64_t k = 0;
      const bool parsed = detail::parse_uint(f[3], ~std::uint64_t(0), &k);
      if (!parsed && !detail::is_digits(f[3])) return num_error(NumberParse::kMalformed, f[3], "k");
      if (!parsed || k < 1 || k > std::uint64_t(kMaxThresholdLength))  // digits beyond 2^64 - 1 too
        return bad("k must be in [1, " + std::to_string(kMaxThresholdLength) + "], got " +
                   std::string(f[3]));
      const std::size_t li = static_cast<std::size_t>(r.layer);
      if (layer_k.size() <= li) {
        layer_k.resize(li + 1, 0);
        layer_k_line.resize(li + 1, 0);
      }
      if (layer_k[li] == 0) {
        layer_k[li] = Index(k);
        layer_k_line[li] = ln;
      } else if (layer_k[li] != Index(k)) {
        return bad("inconsistent k for layer " + std::to_string(r.layer) + ": " +
                   std::to_string(k) + " here but " + std::to_string(layer_k[li]) + " on line " +
                   std::to_string(layer_k_line[li]));
      }
      r.line = ln;
      max_l = std::max(max_l, r.layer);
      max_h = std::max(max_h, r.head);
      rows.push_back(r);
    }
  }
  if (rows.empty())
    return detail::file_error(StatusCode::kDataLoss, th_name, 0,
                              "no threshold entries (empty th.txt)");
  const Index layers = opts.expected_layers > 0 ? opts.expected_layers : max_l + 1;
  const Index heads = opts.expected_heads > 0 ? opts.expected_heads : max_h + 1;
  if (layers * heads > kMaxThresholdSlots)
    return detail::file_error(StatusCode::kDataLoss, th_name, 0,
                              "layers x heads = " + std::to_string(layers * heads) +
                                  " exceeds the limit " + std::to_string(kMaxThresholdSlots));
  layer_k.resize(static_cast<std::size_t>(layers), 0);
  for (Index l = 0; l < layers; ++l)
    if (layer_k[static_cast<std::size_t>(l)] == 0)
      return detail::file_error(StatusCode::kDataLoss, th_name, 0,
                                "layer " + std::to_string(l) +
                                    " has no entries, so its k is unknown (the authors' format "
                                    "stores k only on entry lines)");

  ThresholdTable t(layers, heads, 1);
  for (Index l = 0; l < layers; ++l) (void)t.set_k(l, layer_k[static_cast<std::size_t>(l)]);
  t.metadata().placement = opts.expected_placement.value_or(Placement::kPreSoftmax);
  {
    detail::EntryCollector entries(layers * heads);
    const auto duplicate = [&](Index l, Index h, Index L, Index line, Index first) {
      return detail::file_error(StatusCode::kDataLoss, th_name, line,
                                "duplicate entry for layer " + std::to_string(l) + ", head " +
                                    std::to_string(h) + ", length " + std::to_string(L) +
                                    " (first on line " + std::to_string(first) + ")");
    };
    const Row* dup = nullptr;  // earliest duplicate seen by add()
    Index dup_first = 0;
    for (const Row& r : rows) {
      const Index first = entries.add(r.layer * heads + r.head, r.e, r.line);
      if (first != 0 && dup == nullptr) {
        dup = &r;
        dup_first = first;
      }
    }
    Index dslot = 0, dlen = 0, dline = 0, dfirst = 0;
    const bool late = entries.find_duplicate(&dslot, &dlen, &dline, &dfirst);
    if (late && (dup == nullptr || dline < dup->line))
      return duplicate(dslot / heads, dslot % heads, dlen, dline, dfirst);
    if (dup != nullptr) return duplicate(dup->layer, dup->head, dup->e.length, dup->line, dup_first);
    rows = {};
    entries.install(&t);
  }

  // --- sdc.txt
  detail::LineScanner sc(sdc_text);
  std::string_view line;
  Index ln = 0;
  Status err;
  while (sc.next(&line, &ln)) {
    const auto bad = [&](std::string m) {
      return detail::file_error(StatusCode::kDataLoss, sdc_name, ln, std::move(m));
    };
    if (detail::is_blank_or_comment(line) && detail::check_line_bytes(line).empty()) continue;
    Index l = 0, h = 0, L = 0;
    if (!scan_key(sdc_name, ln, line, 3, "L<layer>_H<head>:<length> C n_samples", &l, &h, &L, &err))
      return err;
    double c = 0.0;
    const NumberParse p = detail::parse_double(f[1], &c);
    if (p != NumberParse::kOk)
      return bad(std::string(p == NumberParse::kOverflow ? "number out of range "
                                                         : "malformed number ") +
                 quote_token(f[1]) + " for the SDC term");
    if (!std::isfinite(c) || c < 0)
      return bad("SDC term must be finite and non-negative, got " + quote_token(f[1]));
    std::uint64_t n = 0;
    if (!detail::parse_uint(f[2], ~std::uint64_t(0), &n))
      return bad(std::string(detail::integer_failure(f[2]) == NumberParse::kOverflow
                                 ? "number out of range "
                                 : "malformed number ") +
                 quote_token(f[2]) + " for n_samples");
    if (l >= layers || h >= heads || !t.contains(l, h, L))
      return detail::file_error(StatusCode::kOutOfRange, sdc_name, ln,
                                "SDC term for layer " + std::to_string(l) + ", head " +
                                    std::to_string(h) + ", length " + std::to_string(L) +
                                    ", which has no threshold in " + th_name);
    const auto& v = t.entries(l, h);
    auto it = std::lower_bound(v.begin(), v.end(), L,
                               [](const ThresholdEntry& e, Index len) { return e.length < len; });
    ThresholdEntry e = *it;
    if (e.has_sdc())
      return bad("duplicate SDC entry for layer " + std::to_string(l) + ", head " +
                 std::to_string(h) + ", length " + std::to_string(L));
    e.sdc = c;
    (void)t.set(l, h, e);
  }
  const Status s = t.validate_entries();
  if (!s.ok()) return detail::file_error(StatusCode::kDataLoss, th_name, 0, s.message());
  std::string shape_note;
  if (opts.expected_layers <= 0 || opts.expected_heads <= 0)
    shape_note = std::string("; the ") +
                 (opts.expected_layers <= 0 && opts.expected_heads <= 0 ? "layer and head counts are"
                  : opts.expected_layers <= 0                            ? "layer count is"
                                                                         : "head count is") +
                 " inferred from the largest indices in the file";
  TOPTHETA_RETURN_IF_ERROR(detail::finish_loaded_table(&t, opts, th_name, shape_note));
  *out = std::move(t);
  return {};
}

}  // namespace toptheta
