#pragma once
/// \file io/native_format_v2.hpp
/// Native threshold format version 2: compact curves, several tables (one per budget k) in one
/// file (docs/threshold-format.md, "Native format, version 2"):
///
///     toptheta-thresholds 2
///     placement post
///     layers 2
///     heads 2
///     lambda 0.1
///     model my-model                 (optional)
///     notes free text                (optional)
///     head_dim 128                   (optional: recorded by the calibrator)
///     score_scale 0.08838834764831843 (optional: recorded by the calibrator)
///     buckets_per_octave 2
///     tables 2
///     table 32                       (a table: its k, the smallest of its layer budgets)
///     k 32 32
///     calibration_rows 5000
///     dense_heads 1 1                (optional, as in version 1)
///     sdc off                        (on: every knot carries an SDC term)
///     curves 3
///     0 0 -0.12 0.25 2 45 1.5 800 64 1.62 900 max_calibrated_length 80
///     ...                            (layer head slope_below slope_above knots, then per knot:
///                                     length value samples [sdc], then optionally
///                                     'max_calibrated_length M': the longest calibrated row)
///     table 64
///     ...
///     end
///
/// Values and slopes are floats written as the shortest text that reads back to the same float.
/// Use the functions of io/native_format.hpp / io/threshold_file.hpp; this header holds the
/// version-2 details.

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

/// First word of a native threshold file, both versions (public: kNativeThresholdMagic).
inline constexpr const char* kNativeMagicV2 = "toptheta-thresholds";
/// Keyword before a curve line's optional longest calibrated row length (version 2).
inline constexpr const char* kLongestKey = "max_calibrated_length";

// Reader and writer pieces shared by versions 1 (native_format.hpp) and 2.

/// The value of a free-text line ('model', 'notes'): the rest of `line` after its key and one
/// blank, verbatim.
inline std::string free_text_value(std::string_view line, std::size_t key_size) {
  std::size_t p = 0;
  while (p < line.size() && is_blank(line[p])) ++p;
  p += key_size;
  if (p < line.size()) ++p;
  return std::string(line.substr(p));
}

/// Parses the value of a 'placement' line into `*out`. Errors, without file and line:
/// kDataLoss for an unknown name, kInvalidArgument when it contradicts opts.expected_placement.
inline Status parse_placement_value(std::string_view tok, const LoadOptions& opts,
                                    Placement* out) {
  if (!parse(tok, *out))
    return Status::data_loss("unknown placement " + quote_token(tok) + " (expected " +
                             names_list<Placement>(" or ") + ")");
  if (opts.expected_placement && *opts.expected_placement != *out)
    return Status::invalid_argument(std::string("placement '") + to_string(*out) +
                                    "' contradicts the expected placement '" +
                                    to_string(*opts.expected_placement) + "'");
  return {};
}

/// Checks that the metadata's free texts (model, notes) fit one line of the format.
inline Status check_metadata_texts(const ThresholdMetadata& md) {
  const std::pair<const char*, const std::string*> texts[] = {{"model", &md.model_id},
                                                              {"notes", &md.notes}};
  for (const auto& kv : texts) {
    const std::string problem = check_line_bytes(std::string(kv.first) + " " + *kv.second);
    if (!problem.empty())
      return Status::invalid_argument(std::string(kv.first) + " text cannot be written: " + problem);
  }
  return {};
}

/// Appends the optional 'model' and 'notes' lines.
inline void append_metadata_texts(std::string* s, const ThresholdMetadata& md) {
  if (!md.model_id.empty()) *s += "model " + md.model_id + "\n";
  if (!md.notes.empty()) *s += "notes " + md.notes + "\n";
}

/// Appends the optional 'head_dim' and 'score_scale' lines: the geometry the calibrator
/// recorded (metadata; absent when not recorded, i.e. 0).
inline void append_geometry(std::string* s, const ThresholdMetadata& md) {
  if (md.head_dim != 0) *s += "head_dim " + std::to_string(md.head_dim) + "\n";
  if (md.score_scale != 0) {
    *s += "score_scale ";
    append_double(s, md.score_scale);
    *s += "\n";
  }
}

/// Parses the value of a 'head_dim' line (an integer in [1, kMaxRecordedHeadDim]) into `*out`.
/// Errors, without file and line: kDataLoss.
inline Status parse_head_dim_value(std::string_view tok, Index* out) {
  std::uint64_t v = 0;
  if (!parse_uint(tok, std::uint64_t(kMaxRecordedHeadDim), &v) || v < 1)
    return Status::data_loss("'head_dim' must be an integer in [1, " +
                             std::to_string(kMaxRecordedHeadDim) + "], got " + quote_token(tok));
  *out = Index(v);
  return {};
}

/// Parses the value of a 'score_scale' line (a finite double > 0) into `*out`. Errors, without
/// file and line: kDataLoss.
inline Status parse_score_scale_value(std::string_view tok, double* out) {
  double v = 0;
  if (parse_double(tok, &v) != NumberParse::kOk || !std::isfinite(v) || !(v > 0))
    return Status::data_loss("'score_scale' must be a finite number > 0, got " + quote_token(tok));
  *out = v;
  return {};
}

/// Appends one 'dense_heads <layer> <head>|<first>-<last> ...' line per layer of `t` that has
/// heads declared dense.
inline void append_dense_heads(std::string* s, const ThresholdTable& t) {
  for (Index l = 0; l < t.num_layers(); ++l) {
    std::string heads;
    for (Index h = 0; h < t.num_heads(); ++h) {
      if (!t.is_dense(l, h) || (h > 0 && t.is_dense(l, h - 1))) continue;
      Index last = h;
      while (last + 1 < t.num_heads() && t.is_dense(l, last + 1)) ++last;
      heads += " " + std::to_string(h);
      if (last > h) heads += "-" + std::to_string(last);
    }
    if (!heads.empty()) *s += "dense_heads " + std::to_string(l) + heads + "\n";
  }
}

/// Serialises a set of compact tables (version 2). Every table must be compact, valid and
/// writable; they share shape, placement, lambda, model and notes (the first table's), and
/// their recorded head_dim and score scale must be the same (the file holds one of each).
inline Status format_native_v2(const ThresholdSet& set, std::string* out) {
  if (set.empty()) return Status::invalid_argument("no tables to write");
  for (const ThresholdTable& t : set.tables()) {
    if (!t.is_compact())
      return Status::invalid_argument(
          "native version 2 holds compact tables; convert with to_compact() (threshold_fit.hpp) "
          "or save per-length tables one at a time (version 1)");
    TOPTHETA_RETURN_IF_ERROR(check_writable(t));
    const ThresholdMetadata &m0 = set.tables().front().metadata(), &m = t.metadata();
    if (m.head_dim != m0.head_dim || m.score_scale != m0.score_scale)
      return Status::invalid_argument(
          "the tables of a version-2 file share one head_dim and score scale: table k = " +
          std::to_string(t.nominal_k()) + " records head_dim " + std::to_string(m.head_dim) +
          ", score scale " + format_double(m.score_scale) +
          ", table k = " + std::to_string(set.tables().front().nominal_k()) + " head_dim " +
          std::to_string(m0.head_dim) + ", score scale " + format_double(m0.score_scale) +
          " (0: not recorded)");
  }
  const ThresholdTable& first = set.tables().front();
  const ThresholdMetadata& md = first.metadata();
  TOPTHETA_RETURN_IF_ERROR(check_metadata_texts(md));
  std::string s;
  s += kNativeMagicV2;
  s += " 2\n# Top-theta attention thresholds, compact curves; format: docs/threshold-format.md\n";
  s += "placement ";
  s += to_string(md.placement);
  s += "\nlayers " + std::to_string(first.num_layers());
  s += "\nheads " + std::to_string(first.num_heads());
  s += "\nlambda ";
  append_double(&s, md.lambda);
  s += "\n";
  append_metadata_texts(&s, md);
  append_geometry(&s, md);
  s += "buckets_per_octave " + std::to_string(md.buckets_per_octave) + "\n";
  s += "tables " + std::to_string(set.size()) + "\n";
  for (const ThresholdTable& t : set.tables()) {
    s += "table " + std::to_string(t.nominal_k()) + "\nk";
    for (Index l = 0; l < t.num_layers(); ++l) s += " " + std::to_string(t.k(l));
    s += "\ncalibration_rows " + std::to_string(t.metadata().calibration_rows) + "\n";
    append_dense_heads(&s, t);
    const bool sdc = t.has_sdc();
    s += sdc ? "sdc on\n" : "sdc off\n";
    std::size_t curves = 0;
    for (Index l = 0; l < t.num_layers(); ++l)
      for (Index h = 0; h < t.num_heads(); ++h) curves += t.has_thresholds(l, h);
    s += "curves " + std::to_string(curves) + "\n";
    bool any_longest = false;
    for (Index l = 0; l < t.num_layers(); ++l)
      for (Index h = 0; h < t.num_heads(); ++h)
        any_longest |= t.curve(l, h).max_calibrated_length > 0;
    s += "# layer head slope_below slope_above knots, then per knot: length value samples";
    s += sdc ? " sdc" : "";
    s += any_longest ? ", then max_calibrated_length M\n" : "\n";
    for (Index l = 0; l < t.num_layers(); ++l)
      for (Index h = 0; h < t.num_heads(); ++h) {
        const ThresholdCurve& c = t.curve(l, h);
        if (c.empty()) continue;
        s += std::to_string(l) + ' ' + std::to_string(h) + ' ';
        append_float(&s, c.slope_below);
        s += ' ';
        append_float(&s, c.slope_above);
        s += ' ' + std::to_string(c.knots.size());
        for (const CurveKnot& k : c.knots) {
          s += ' ' + std::to_string(k.length) + ' ';
          append_float(&s, k.value);
          s += ' ' + std::to_string(k.samples);
          if (sdc) {
            s += ' ';
            append_float(&s, k.sdc);
          }
        }
        if (c.max_calibrated_length > 0)
          s += std::string(" ") + kLongestKey + ' ' + std::to_string(c.max_calibrated_length);
        s += '\n';
      }
  }
  s += "end\n";
  *out = std::move(s);
  return {};
}

/// Parses a version-2 file (the format line already checked by the caller is read again here).
/// Every table is validated and completed as LoadOptions says (missing_heads); `opts.k` is not
/// applied here (see select_table()).
inline Status parse_native_v2(std::string_view text, const std::string& name, ThresholdSet* out,
                              const LoadOptions& opts) {
  LineScanner sc(text);
  std::string_view line;
  Index ln = 0;
  const bool unterminated = !text.empty() && text.back() != '\n';
  const auto fail = [&](StatusCode code, Index at, std::string m) {
    if (unterminated && at == ln && at == sc.line_no() && sc.next_offset() >= text.size())
      m += " (the file ends inside this line without a line break: truncated?)";
    return file_error(code, name, at, m);
  };
  const auto bad = [&](Index at, std::string m) { return fail(StatusCode::kDataLoss, at, std::move(m)); };
  std::vector<std::string_view> f;
  // Next meaningful line into f; false at the end of the text; errors through *st.
  Status st;
  const auto next = [&]() -> bool {
    while (sc.next(&line, &ln)) {
      const std::string problem = check_line_bytes(line);
      if (!problem.empty()) {
        st = bad(ln, problem);
        return false;
      }
      if (is_blank_or_comment(line)) continue;
      split_fields(line, &f);
      return true;
    }
    return false;
  };
  // An integer in [min, max]; the message gives that range.
  const auto uint_field = [&](std::string_view tok, std::uint64_t max, const std::string& what,
                              std::uint64_t* v, std::uint64_t min = 0) -> bool {
    std::uint64_t x = 0;
    if (parse_uint(tok, max, &x) && x >= min) {
      *v = x;
      return true;
    }
    st = bad(ln, "malformed or out-of-range " + what + " " + quote_token(tok) + " (an integer in [" +
                     std::to_string(min) + ", " + std::to_string(max) + "])");
    return false;
  };
  const auto float_field = [&](std::string_view tok, const std::string& what, double* v) -> bool {
    const NumberParse r = parse_double(tok, v);
    if (r == NumberParse::kOk && to_finite_float(*v, v)) return true;  // rounds to a finite float
    st = bad(ln, "malformed or non-finite " + what + " " + quote_token(tok) +
                     " (a finite float)");
    return false;
  };
  if (!next()) return st.ok() ? bad(0, "empty file") : st;  // format line (checked by the caller)

  // --- header
  Placement placement = Placement::kPreSoftmax;
  std::uint64_t layers = 0, heads = 0, bpo = 0, ntables = 0;
  double lambda = 0.0;
  std::string model, notes;
  Index head_dim = 0;
  double score_scale = 0.0;
  constexpr int kKeys = 10;
  bool seen[kKeys] = {};
  static const char* const keys[kKeys] = {
      "placement",          "layers", "heads",    "lambda",     "model", "notes",
      "buckets_per_octave", "tables", "head_dim", "score_scale"};
  while (true) {
    if (!next()) {
      if (!st.ok()) return st;
      return bad(ln, "truncated file: the header ends before 'tables'");
    }
    int key = 0;
    while (key < kKeys && f[0] != keys[key]) ++key;
    if (key == kKeys)
      return bad(ln, "unknown header key " + quote_token(f[0]) + " (version 2 header)");
    if (seen[key]) return bad(ln, "duplicate header key '" + std::string(keys[key]) + "'");
    seen[key] = true;
    if (key == 4 || key == 5) {
      (key == 4 ? model : notes) = free_text_value(line, f[0].size());
      continue;
    }
    if (f.size() != 2) return bad(ln, "'" + std::string(keys[key]) + "' takes exactly one value");
    if (key == 0) {
      const Status e = parse_placement_value(f[1], opts, &placement);
      if (!e.ok()) return fail(e.code(), ln, e.message());
    } else if (key == 1 || key == 2) {
      std::uint64_t& v = key == 1 ? layers : heads;
      const Index limit = key == 1 ? kMaxThresholdLayers : kMaxThresholdHeads;
      if (!uint_field(f[1], std::uint64_t(limit), "'" + std::string(keys[key]) + "'", &v, 1)) return st;
      const Index expect = key == 1 ? opts.expected_layers : opts.expected_heads;
      if (expect > 0 && Index(v) != expect)
        return fail(StatusCode::kInvalidArgument, ln,
                    "the file has " + std::to_string(v) + " " + keys[key] + " but " +
                        std::to_string(expect) + " are expected");
    } else if (key == 3) {
      const NumberParse r = parse_double(f[1], &lambda);
      if (r != NumberParse::kOk || !std::isfinite(lambda))  // as version 1: any finite value
        return bad(ln, "'lambda' must be finite, got " + quote_token(f[1]));
    } else if (key == 6) {
      if (!uint_field(f[1], 16, "'buckets_per_octave'", &bpo, 1)) return st;
    } else if (key == 7) {
      if (!uint_field(f[1], 4096, "'tables'", &ntables, 1)) return st;
      break;
    } else {
      const Status e = key == 8 ? parse_head_dim_value(f[1], &head_dim)
                                : parse_score_scale_value(f[1], &score_scale);
      if (!e.ok()) return fail(e.code(), ln, e.message());
    }
  }
  for (int key : {0, 1, 2, 6})
    if (!seen[key]) return bad(ln, "missing header key '" + std::string(keys[key]) + "' before 'tables'");
  if (layers * heads > std::uint64_t(kMaxThresholdSlots))
    return bad(ln, "layers x heads exceeds " + std::to_string(kMaxThresholdSlots));

  // --- tables
  ThresholdSet set;
  const Index L = Index(layers), H = Index(heads);
  bool have = next();
  if (!st.ok()) return st;
  for (std::uint64_t ti = 0; ti < ntables; ++ti) {
    if (!have) return bad(ln, "truncated file: " + std::to_string(ti) + " of " + std::to_string(ntables) + " tables");
    if (f[0] != "table" || f.size() != 2)
      return bad(ln, "expected 'table <k>' (table " + std::to_string(ti + 1) + " of " +
                         std::to_string(ntables) + ")");
    std::uint64_t tk = 0;
    if (!uint_field(f[1], std::uint64_t(kMaxThresholdLength), "table k", &tk, 1)) return st;
    const Index table_line = ln;
    ThresholdTable t = ThresholdTable::compact(L, H);
    t.metadata().placement = placement;
    t.metadata().lambda = lambda;
    t.metadata().model_id = model;
    t.metadata().notes = notes;
    t.metadata().buckets_per_octave = int(bpo);
    t.metadata().head_dim = head_dim;
    t.metadata().score_scale = score_scale;
    bool have_k = false, have_rows = false, have_sdc = false, sdc = false;
    std::uint64_t ncurves = 0;
    // table header
    while (true) {
      if (!next()) return st.ok() ? bad(ln, "truncated file: table header without 'curves'") : st;
      const std::string_view key = f[0];
      if (key == "k") {
        if (have_k) return bad(ln, "duplicate 'k' line in the table");
        if (f.size() != std::size_t(L) + 1)
          return bad(ln, "'k' needs one budget per layer (" + std::to_string(L) + "), got " +
                             std::to_string(f.size() - 1));
        for (Index l = 0; l < L; ++l) {
          std::uint64_t v = 0;
          if (!uint_field(f[std::size_t(l) + 1], std::uint64_t(kMaxThresholdLength), "k", &v, 1)) return st;
          (void)t.set_k(l, Index(v));
        }
        have_k = true;
      } else if (key == "calibration_rows") {
        std::uint64_t v = 0;
        if (f.size() != 2 || !uint_field(f[1], ~std::uint64_t(0), "'calibration_rows'", &v))
          return st.ok() ? bad(ln, "'calibration_rows' takes one value") : st;
        t.metadata().calibration_rows = v;
        have_rows = true;
      } else if (key == "sdc") {
        if (f.size() != 2 || (f[1] != "on" && f[1] != "off")) return bad(ln, "'sdc' is 'on' or 'off'");
        sdc = f[1] == "on";
        have_sdc = true;
      } else if (key == "dense_heads") {
        if (f.size() < 3) return bad(ln, "'dense_heads' takes a layer and heads or ranges");
        Index l = 0;
        if (!parse_int(f[1], &l) || l < 0 || l >= L)
          return fail(StatusCode::kOutOfRange, ln, "'dense_heads': layer " + quote_token(f[1]) + " out of range");
        for (std::size_t i = 2; i < f.size(); ++i) {
          const std::string_view tok = f[i];
          const std::size_t dash = tok.find('-', 1);
          Index a = 0, b = 0;
          if (dash == std::string_view::npos) {
            if (!parse_int(tok, &a)) return bad(ln, "malformed head " + quote_token(tok));
            b = a;
          } else if (!parse_int(tok.substr(0, dash), &a) || !parse_int(tok.substr(dash + 1), &b) || b < a) {
            return bad(ln, "malformed head range " + quote_token(tok));
          }
          if (a < 0 || b >= H)
            return fail(StatusCode::kOutOfRange, ln, "'dense_heads': head out of range [0, " + std::to_string(H) + ")");
          for (Index h = a; h <= b; ++h) {
            if (t.is_dense(l, h)) return bad(ln, "'dense_heads' lists head " + std::to_string(h) + " twice");
            (void)t.set_dense(l, h);
          }
        }
      } else if (key == "curves") {
        if (f.size() != 2 || !uint_field(f[1], std::uint64_t(L * H), "'curves'", &ncurves))
          return st.ok() ? bad(ln, "'curves' takes one value") : st;
        break;
      } else {
        return bad(ln, "unknown table key " + quote_token(key) +
                           " (expected k, calibration_rows, dense_heads, sdc, curves)");
      }
    }
    if (!have_k || !have_rows || !have_sdc)
      return bad(ln, "table on line " + std::to_string(table_line) +
                         " needs 'k', 'calibration_rows' and 'sdc' before 'curves'");
    if (t.nominal_k() != Index(tk))
      return bad(table_line, "'table " + std::to_string(tk) + "' but its smallest layer budget is " +
                                 std::to_string(t.nominal_k()));
    if (set.find(Index(tk))) return bad(table_line, "duplicate table for k = " + std::to_string(tk));
    const std::size_t per_knot = sdc ? 4 : 3;
    for (std::uint64_t ci = 0; ci < ncurves; ++ci) {
      if (!next()) return st.ok() ? bad(ln, "truncated file: " + std::to_string(ci) + " of " + std::to_string(ncurves) + " curves") : st;
      if (f.size() < 5) return bad(ln, "a curve is 'layer head slope_below slope_above knots ...'");
      Index l = 0, h = 0;
      if (!parse_int(f[0], &l) || !parse_int(f[1], &h)) return bad(ln, "malformed layer or head");
      if (l < 0 || l >= L || h < 0 || h >= H)
        return fail(StatusCode::kOutOfRange, ln, "(layer, head) = " + shape_string(l, h) +
                                                     " outside " + shape_string(L, H));
      if (t.has_thresholds(l, h)) return bad(ln, "second curve for layer " + std::to_string(l) + " head " + std::to_string(h));
      if (t.is_dense(l, h)) return bad(ln, "curve for a head declared dense");
      ThresholdCurve c;
      if (!float_field(f[2], "slope_below", &c.slope_below)) return st;
      if (!float_field(f[3], "slope_above", &c.slope_above)) return st;
      std::uint64_t nk = 0;
      if (!uint_field(f[4], 65536, "knot count", &nk, 1)) return st;
      const std::size_t nf = 5 + std::size_t(nk) * per_knot;
      if (f.size() != nf && f.size() != nf + 2)
        return bad(ln, std::to_string(nk) + " knots of " + std::to_string(per_knot) +
                           " fields need " + std::to_string(nf) + " fields (" +
                           std::to_string(nf + 2) + " with '" + kLongestKey + " M'), got " +
                           std::to_string(f.size()));
      if (f.size() == nf + 2 && f[nf] != kLongestKey)
        return bad(ln, "expected '" + std::string(kLongestKey) + " M' after the " +
                           std::to_string(nk) + " knots, got " + quote_token(f[nf]));
      for (std::uint64_t i = 0; i < nk; ++i) {
        const std::size_t o = 5 + std::size_t(i) * per_knot;
        CurveKnot k;
        std::uint64_t len = 0;
        if (!uint_field(f[o], std::uint64_t(kMaxThresholdLength), "knot length", &len, 1)) return st;
        k.length = Index(len);
        if (!float_field(f[o + 1], "knot value", &k.value)) return st;
        if (!uint_field(f[o + 2], ~std::uint64_t(0), "knot samples", &k.samples)) return st;
        if (sdc && !float_field(f[o + 3], "knot SDC term", &k.sdc)) return st;
        c.knots.push_back(k);
      }
      if (f.size() == nf + 2) {
        std::uint64_t longest = 0;
        if (!uint_field(f[nf + 1], std::uint64_t(kMaxThresholdLength), kLongestKey, &longest, 1))
          return st;
        c.max_calibrated_length = Index(longest);
      }
      const Status cs = t.set_curve(l, h, std::move(c));
      if (!cs.ok()) return bad(ln, cs.message());
    }
    have = next();
    if (!st.ok()) return st;
    TOPTHETA_RETURN_IF_ERROR(finish_loaded_table(&t, opts, name, " (table k = " + std::to_string(tk) + ")"));
    if (opts.missing_heads != MissingHeads::kKeepEmpty) {
      const Status as = set.add(std::move(t));
      if (!as.ok()) return bad(table_line, as.message());
    } else {
      set.tables().push_back(std::move(t));
    }
  }
  if (!have) return bad(ln, "truncated file: no 'end' line");
  if (f[0] != "end" || f.size() != 1) return bad(ln, "expected 'end' after the last table");
  if (next()) return bad(ln, "unexpected content after the 'end' line");
  if (!st.ok()) return st;
  *out = std::move(set);
  return {};
}

/// The table of `k` from a set (k = 0: the only table).
inline Status select_table(const ThresholdSet& set, Index k, const std::string& name,
                           ThresholdTable* out) {
  if (set.empty()) return Status::data_loss(name + ": no tables");
  if (k == 0) {
    if (set.size() > 1)
      return Status::invalid_argument(name + ": the file holds tables for k = " + set.ks_text() +
                                      ": choose one (LoadOptions::k, --k)");
    *out = set.tables().front();
    return {};
  }
  const ThresholdTable* t = set.find(k);
  if (!t)
    return Status::invalid_argument(name + ": no table for k = " + std::to_string(k) +
                                    " (the file holds k = " + set.ks_text() + ")");
  *out = *t;
  return {};
}

}  // namespace detail
}  // namespace toptheta
