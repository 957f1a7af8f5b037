#pragma once
/// \file io/threshold_file.hpp
/// Loading and saving `ThresholdTable`s, the artefact shipped next to the model weights (the
/// formats are specified in docs/threshold-format.md):
/// - the native, versioned text format with metadata (io/native_format.hpp);
/// - the authors' `th.txt` / `sdc.txt` of `kostyanoob/top-theta-attention` (io/reference_format.hpp).
///
/// Loading validates everything and fails with a Status whose message is
/// `<file>:<line>: <problem>` (`<file>: <problem>` for whole-file problems); it never reads
/// outside its input. Codes: kDataLoss for malformed content, kOutOfRange for a layer/head index
/// outside the declared or expected shape, kInvalidArgument for a file that contradicts
/// LoadOptions, kNotFound / kIoError from the file system. Saving is atomic (io/atomic_write.hpp).
///
/// Example:
///
///     toptheta::ThresholdTable table = calibrator.finalize();
///     TOPTHETA_RETURN_IF_ERROR(toptheta::save_thresholds("model.thresholds", table));
///     toptheta::LoadOptions opts;
///     opts.expected_placement = toptheta::Placement::kPreSoftmax;
///     opts.expected_layers = 32;
///     opts.expected_heads = 32;
///     TOPTHETA_RETURN_IF_ERROR(toptheta::load_thresholds("model.thresholds", &table, opts));

#include <cstring>
#include <string>
#include <string_view>

#include "../status.hpp"
#include "../threshold_table.hpp"
#include "atomic_write.hpp"
#include "format_options.hpp"
#include "native_format.hpp"
#include "reference_format.hpp"
#include "text_codec.hpp"

namespace toptheta {

/// kNative when `text` starts with `toptheta-thresholds`, kReference when its first non-blank,
/// non-comment line starts with `L<digit>`, otherwise kAuto (not recognised). A leading UTF-8
/// byte-order mark is skipped.
inline ThresholdFormat detect_threshold_format(std::string_view text) {
  text = detail::strip_utf8_bom(text);
  const std::string_view magic = kNativeThresholdMagic;
  if (text.substr(0, magic.size()) == magic) return ThresholdFormat::kNative;
  if (detail::looks_like_reference(text)) return ThresholdFormat::kReference;
  return ThresholdFormat::kAuto;
}

/// Parses a threshold file held in memory (`name` prefixes error messages), in `opts.format` or
/// the detected format (a leading UTF-8 byte-order mark is skipped in every format). For the authors' format only th.txt content is parsed here
/// (`opts.sdc_path` is ignored; see parse_reference_thresholds() to merge an sdc.txt text).
/// On error `*out` is untouched. A null `out` is kInvalidArgument ("<function>: out is
/// null").
inline Status parse_thresholds(std::string_view text, const std::string& name, ThresholdTable* out,
                               const LoadOptions& opts = {}) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "parse_thresholds", "out"));
  ThresholdFormat fmt = opts.format;
  if (fmt == ThresholdFormat::kAuto) fmt = detect_threshold_format(text);
  if (fmt == ThresholdFormat::kNative) return parse_native_thresholds(text, name, out, opts);
  if (fmt == ThresholdFormat::kReference) return parse_reference_thresholds(text, name, out, opts);
  // Not recognised: report UTF-16, binary data or the first meaningful line.
  if (text.size() >= 2 && ((text[0] == '\xff' && text[1] == '\xfe') ||
                           (text[0] == '\xfe' && text[1] == '\xff')))
    return detail::file_error(StatusCode::kDataLoss, name, 1,
                              std::string("binary data: UTF-16 byte-order mark 0x") +
                                  (text[0] == '\xff' ? "fffe" : "feff") +
                                  " (threshold files are UTF-8 text; re-save the file as UTF-8)");
  detail::LineScanner sc(text);
  std::string_view line;
  Index ln = 0;
  while (sc.next(&line, &ln)) {
    const std::string problem = detail::check_line_bytes(line);
    if (!problem.empty()) return detail::file_error(StatusCode::kDataLoss, name, ln, problem);
    if (detail::is_blank_or_comment(line)) continue;
    return detail::file_error(StatusCode::kDataLoss, name, ln,
                              "unrecognised format: expected '" + std::string(kNativeThresholdMagic) +
                                  " <version>' as the first line (native) or lines "
                                  "'L<layer>_H<head>:<length> theta n_samples k' (authors' th.txt)");
  }
  return detail::file_error(StatusCode::kDataLoss, name, 0, "empty file: no thresholds");
}

namespace detail {
/// kInvalidArgument when `sdc_path` is set for a file of format `format` kNative: an sdc.txt
/// belongs to the authors' format, and a native file carries its SDC terms inline, so the path
/// would go unused.
inline Status check_no_sdc_file(const std::string& path, ThresholdFormat format,
                                const std::string& sdc_path) {
  if (format == ThresholdFormat::kNative && !sdc_path.empty())
    return Status::invalid_argument(path +
                                    ": an SDC file applies only to the authors' format; "
                                    "native files carry their SDC terms inline");
  return {};
}
}  // namespace detail

/// Loads the threshold file at `path` in `opts.format` or the detected format (see
/// parse_thresholds(); for the authors' format `opts.sdc_path`, when set, names an sdc.txt to
/// merge, and it is an error for a native file). `*format`, when given, receives the format
/// used (kAuto when it was not recognised). On error `*out` is untouched. A null `out` is
/// kInvalidArgument ("<function>: out is null").
inline Status load_thresholds(const std::string& path, ThresholdTable* out,
                              const LoadOptions& opts = {}, ThresholdFormat* format = nullptr) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "load_thresholds", "out"));
  if (format) *format = opts.format;
  std::string text;
  TOPTHETA_RETURN_IF_ERROR(read_file(path, &text, kMaxThresholdFileBytes, FileContent::kText));
  LoadOptions o = opts;
  if (o.format == ThresholdFormat::kAuto) o.format = detect_threshold_format(text);
  if (format) *format = o.format;
  if (o.format == ThresholdFormat::kReference) {
    std::string sdc;
    if (!o.sdc_path.empty())
      TOPTHETA_RETURN_IF_ERROR(
          read_file(o.sdc_path, &sdc, kMaxThresholdFileBytes, FileContent::kText));
    return parse_reference_thresholds(text, path, out, o, sdc, o.sdc_path);
  }
  TOPTHETA_RETURN_IF_ERROR(detail::check_no_sdc_file(path, o.format, o.sdc_path));
  return parse_thresholds(text, path, out, o);
}

/// Where save_thresholds() puts sdc.txt for the authors' format: `opts.sdc_path`, or `sdc.txt`
/// in the directory of `path`.
inline std::string reference_sdc_path(const std::string& path, const SaveOptions& opts = {}) {
  if (!opts.sdc_path.empty()) return opts.sdc_path;
  const std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string("sdc.txt") : path.substr(0, slash + 1) + "sdc.txt";
}

/// Saves `table` atomically. Native (default, also for kAuto): one file at `path`. Authors'
/// format: th.txt at `path`, and when any entry has an SDC term, sdc.txt at
/// reference_sdc_path(path, opts); each file is replaced atomically, and both are written before
/// either is replaced (write_files_atomic(): a failed sdc.txt leaves th.txt untouched). A table the
/// format cannot hold (invalid, incomplete or empty; dense heads in the authors' format) is
/// refused with `path: cannot save: <reason>` and nothing is written; so is an SDC path naming the
/// same file as `path` under any spelling (`./x/th.txt`, `x/../x/th.txt`, a symbolic link):
/// kInvalidArgument `path: th.txt and sdc.txt would be the same file (<sdc path> names <path>)`.
/// kIoError means the file system refused the write, including an existing `path` that is not a
/// regular file or symbolic link (a device, a FIFO, a directory; left untouched), and a file size
/// limit when the process ignores SIGXFSZ (otherwise the signal kills it; see
/// io/atomic_write.hpp).
inline Status save_thresholds(const std::string& path, const ThresholdTable& table,
                              const SaveOptions& opts = {}) {
  // A table the format cannot hold: `path: cannot save: <reason>`, nothing written.
  const auto cannot = [&](const Status& s) {
    return s.ok() ? s : Status(s.code(), path + ": cannot save: " + s.message());
  };
  if (opts.format == ThresholdFormat::kReference) {
    std::string th, sdc;
    TOPTHETA_RETURN_IF_ERROR(cannot(format_reference_thresholds(table, &th, &sdc)));
    const std::string sdc_path = reference_sdc_path(path, opts);
    if (!sdc.empty() && detail::same_file_path(sdc_path, path))
      return Status::invalid_argument(path + ": th.txt and sdc.txt would be the same file (" +
                                      sdc_path + " names " + path + ")");
    if (sdc.empty()) return write_file_atomic(path, th);
    return write_files_atomic(path, th, sdc_path, sdc);
  }
  std::string text;
  TOPTHETA_RETURN_IF_ERROR(cannot(format_native_thresholds(table, &text)));
  return write_file_atomic(path, text);
}

/// save_thresholds() in format `format` with default options.
inline Status save_thresholds(const std::string& path, const ThresholdTable& table,
                              ThresholdFormat format) {
  SaveOptions o;
  o.format = format;
  return save_thresholds(path, table, o);
}

/// Loads every table of a threshold file: all tables of a native version-2 file, or the one
/// table of a version-1 or authors' file (`opts.k` is ignored; pick with ThresholdSet::find()).
/// `opts.sdc_path` as in load_thresholds(): merged into an authors' table, kInvalidArgument
/// for a native file.
/// A null `out` is kInvalidArgument ("<function>: out is null").
inline Status load_threshold_set(const std::string& path, ThresholdSet* out,
                                 const LoadOptions& opts = {}) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "load_threshold_set", "out"));
  std::string text;
  TOPTHETA_RETURN_IF_ERROR(read_file(path, &text, kMaxThresholdFileBytes, FileContent::kText));
  ThresholdFormat fmt = opts.format;
  if (fmt == ThresholdFormat::kAuto) fmt = detect_threshold_format(text);
  if (fmt == ThresholdFormat::kNative) {
    TOPTHETA_RETURN_IF_ERROR(detail::check_no_sdc_file(path, fmt, opts.sdc_path));
    return parse_native_threshold_set(text, path, out, opts);
  }
  LoadOptions o = opts;
  o.k = 0;
  ThresholdTable t;
  TOPTHETA_RETURN_IF_ERROR(load_thresholds(path, &t, o));
  return detail::single_table_set(std::move(t), opts, out);
}

/// Saves a set atomically in the native format (format_native_threshold_set()).
inline Status save_threshold_set(const std::string& path, const ThresholdSet& set) {
  std::string text;
  const Status s = format_native_threshold_set(set, &text);
  if (!s.ok()) return Status(s.code(), path + ": cannot save: " + s.message());
  return write_file_atomic(path, text);
}

/// True when `a` and `b` hold the same shape, budgets, metadata, dense heads and entries, comparing doubles
/// by bit pattern (so -0 != 0, and NaN SDC terms of the same pattern are equal).
inline bool thresholds_identical(const ThresholdTable& a, const ThresholdTable& b) {
  const auto same = [](double x, double y) { return std::memcmp(&x, &y, sizeof x) == 0; };
  if (a.num_layers() != b.num_layers() || a.num_heads() != b.num_heads()) return false;
  if (a.layer_k() != b.layer_k()) return false;
  const ThresholdMetadata &ma = a.metadata(), &mb = b.metadata();
  if (ma.placement != mb.placement || !same(ma.lambda, mb.lambda) ||
      ma.calibration_rows != mb.calibration_rows || ma.model_id != mb.model_id ||
      ma.notes != mb.notes || ma.head_dim != mb.head_dim || !same(ma.score_scale, mb.score_scale))
    return false;
  if (a.form() != b.form() || ma.buckets_per_octave != mb.buckets_per_octave) return false;
  for (Index l = 0; l < a.num_layers(); ++l)
    for (Index h = 0; h < a.num_heads(); ++h) {
      if (a.is_dense(l, h) != b.is_dense(l, h)) return false;
      const ThresholdCurve &ca = a.curve(l, h), &cb = b.curve(l, h);
      if (ca.knots.size() != cb.knots.size() || !same(ca.slope_below, cb.slope_below) ||
          !same(ca.slope_above, cb.slope_above) ||
          ca.max_calibrated_length != cb.max_calibrated_length)
        return false;
      for (std::size_t i = 0; i < ca.knots.size(); ++i)
        if (ca.knots[i].length != cb.knots[i].length || !same(ca.knots[i].value, cb.knots[i].value) ||
            ca.knots[i].samples != cb.knots[i].samples || !same(ca.knots[i].sdc, cb.knots[i].sdc))
          return false;
      const auto &va = a.entries(l, h), &vb = b.entries(l, h);
      if (va.size() != vb.size()) return false;
      for (std::size_t i = 0; i < va.size(); ++i)
        if (va[i].length != vb[i].length || !same(va[i].theta, vb[i].theta) ||
            va[i].samples != vb[i].samples || !same(va[i].sdc, vb[i].sdc))
          return false;
    }
  return true;
}

}  // namespace toptheta
