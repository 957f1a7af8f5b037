#pragma once
/// \file tools/thresholds_cli.hpp
/// The `toptheta-thresholds` command line (inspect, convert and compare threshold files), as a
/// function so that tests can run it in-process. `toptheta_thresholds.cpp` is its `main`.
///
///     toptheta-thresholds info FILE [--sdc FILE] [--placement pre|post] [--layers N --heads N]
///     toptheta-thresholds convert IN OUT --to native|reference [--sdc FILE] [--sdc-out FILE]
///     toptheta-thresholds diff A B [--tolerance X] [--sdc-a FILE] [--sdc-b FILE]
///
/// Exit status: 0 success (also for `diff` of different files without --tolerance); 2 a usage or
/// input error (bad option, missing / unreadable / malformed / incomplete input file, a table the
/// output format cannot hold); 1 a runtime failure (the output cannot be written, out of memory);
/// 3 `diff` found differences beyond --tolerance. Errors are one line
/// `toptheta-thresholds: error: ...` on the error stream; warnings are lines
/// `toptheta-thresholds: warning: ...` there (exit status unchanged).
///
/// Unlike the library headers this file uses exceptions (CLI11 reports parse errors with them).

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "toptheta/io/threshold_file.hpp"
#include "toptheta/threshold_table.hpp"
#include "toptheta/version.hpp"

namespace toptheta::tools {

namespace cli_detail {

inline std::string fmt_g(double v, int digits = 6) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

inline std::string pad(std::string s, std::size_t width, bool right = true) {
  if (s.size() >= width) return s;
  return right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
}

/// Exit statuses.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntime = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitDiffers = 3;

/// Options shared by the subcommands that load files.
struct InputOptions {
  std::string placement;  // "" = not given
  Index layers = 0;
  Index heads = 0;
  std::string from = "auto";
  std::string missing_heads = "error";
};

inline void add_input_options(CLI::App* sub, InputOptions* o) {
  sub->add_option("--placement", o->placement,
                  "authors' files: the placement to assume (default pre); native files: the "
                  "placement the file must have")
      ->check(CLI::IsMember({"pre", "post"}));
  sub->add_option("--layers", o->layers,
                  "expected number of layers (authors' files: the table shape; default: inferred)")
      ->check(CLI::Range(Index(1), kMaxThresholdLayers));
  sub->add_option("--heads", o->heads,
                  "expected number of query heads per layer (authors' files: the table shape)")
      ->check(CLI::Range(Index(1), kMaxThresholdHeads));
  sub->add_option("--from", o->from, "input format (default: detected from the content)")
      ->check(CLI::IsMember({"auto", "native", "reference"}));
  sub->add_option("--missing-heads", o->missing_heads,
                  "(layer, head) pairs without thresholds that the file does not declare dense: "
                  "'error' (default) or 'dense' (declare them dense: they keep every score)")
      ->check(CLI::IsMember({"error", "dense"}));
}

/// Loads `path` (with an optional authors' sdc.txt); returns the detected format in `*fmt`.
/// `keep_empty` loads incomplete tables as they are (for `info`).
inline Status load(const std::string& path, const std::string& sdc, const InputOptions& in,
                   ThresholdTable* out, ThresholdFormat* fmt, bool keep_empty = false) {
  LoadOptions o;
  (void)parse(in.missing_heads, o.missing_heads);
  if (keep_empty && o.missing_heads == MissingHeads::kError) o.missing_heads = MissingHeads::kKeepEmpty;
  if (!in.placement.empty()) {
    Placement p = Placement::kPreSoftmax;
    (void)parse(in.placement, p);
    o.expected_placement = p;
  }
  o.expected_layers = in.layers;
  o.expected_heads = in.heads;
  (void)parse(in.from, o.format);
  o.sdc_path = sdc;
  return load_thresholds(path, out, o, fmt);
}

/// The warning for an authors' file whose placement was not given: the format does not store it.
inline std::string assumed_placement_warning(const std::string& path, const ThresholdTable& t) {
  return path + ": the authors' format stores no placement; assumed " + to_string(t.placement()) +
         "-softmax (pass --placement post for post-softmax thresholds)";
}

/// Value at index floor(p / 100 * (n - 1)) of the sorted values ("lower" percentile).
inline double percentile(const std::vector<double>& sorted, int p) {
  const std::size_t n = sorted.size();
  return sorted[static_cast<std::size_t>(std::floor(double(p) / 100.0 * double(n - 1)))];
}

inline void print_info(std::ostream& out, const std::string& path, ThresholdFormat fmt,
                       const ThresholdTable& t, const InputOptions& in) {
  const bool placement_given = !in.placement.empty();
  const ThresholdMetadata& md = t.metadata();
  const bool native = fmt == ThresholdFormat::kNative;
  Index min_len = std::numeric_limits<Index>::max(), max_len = 0;
  std::size_t with_sdc = 0;
  for (Index l = 0; l < t.num_layers(); ++l)
    for (Index h = 0; h < t.num_heads(); ++h)
      for (const auto& e : t.entries(l, h)) {
        min_len = std::min(min_len, e.length);
        max_len = std::max(max_len, e.length);
        with_sdc += e.has_sdc() ? 1 : 0;
      }
  const auto row = [&](const char* key, const std::string& v) {
    out << pad(std::string(key) + ":", 19, false) << v << "\n";
  };
  row("file", path);
  row("format", native ? "native (version " + std::to_string(kNativeThresholdVersion) + ")"
                       : std::string("reference (authors' th.txt)"));
  row("placement", std::string(to_string(md.placement)) +
                       (native || placement_given ? ""
                                                  : " (assumed: the authors' format does not "
                                                    "store it; see --placement)"));
  const auto inferred = [&](Index given, const char* option) {
    return native || given > 0 ? std::string()
                               : std::string(" (inferred from the largest index; see ") + option +
                                     ")";
  };
  row("layers", std::to_string(t.num_layers()) + inferred(in.layers, "--layers"));
  row("heads", std::to_string(t.num_heads()) + inferred(in.heads, "--heads"));
  row("entries", std::to_string(t.size()));
  const std::size_t pairs = std::size_t(t.num_layers()) * std::size_t(t.num_heads());
  const std::size_t n_dense = t.num_dense_heads(), n_empty = t.num_missing_heads();
  row("dense heads", n_dense == 0 ? std::string("none")
                                  : std::to_string(n_dense) + " of " + std::to_string(pairs) +
                                        " declared dense: " + t.describe_heads(true));
  row("empty heads", n_empty == 0 ? std::string("none")
                                  : std::to_string(n_empty) + " of " + std::to_string(pairs) +
                                        " have no thresholds (incomplete): " +
                                        t.describe_heads(false));
  row("lengths", t.empty() ? std::string("-")
                           : std::to_string(min_len) + ".." + std::to_string(max_len));
  row("lambda", native ? detail::format_double(md.lambda) : std::string("- (not stored)"));
  row("calibration rows",
      native ? std::to_string(md.calibration_rows) : std::string("- (not stored)"));
  if (native) {
    row("model", md.model_id.empty() ? "-" : md.model_id);
    row("notes", md.notes.empty() ? "-" : md.notes);
  }
  row("sdc terms", with_sdc == 0            ? std::string("none")
                   : with_sdc == t.size()   ? "all " + std::to_string(with_sdc) + " entries"
                                            : std::to_string(with_sdc) + " of " +
                                                  std::to_string(t.size()) + " entries");
  out << "\ntheta per layer over all heads and lengths "
         "(pN = element floor(N/100*(n-1)) of the sorted thetas)\n";
  out << pad("layer", 5) << pad("k", 8) << pad("entries", 9) << pad("lengths", 14);
  for (const char* p : {"p0", "p10", "p50", "p90", "p100"}) out << pad(p, 13);
  out << "\n";
  for (Index l = 0; l < t.num_layers(); ++l) {
    std::vector<double> th;
    Index lo = std::numeric_limits<Index>::max(), hi = 0;
    for (Index h = 0; h < t.num_heads(); ++h)
      for (const auto& e : t.entries(l, h)) {
        th.push_back(e.theta);
        lo = std::min(lo, e.length);
        hi = std::max(hi, e.length);
      }
    std::sort(th.begin(), th.end());
    out << pad(std::to_string(l), 5) << pad(std::to_string(t.k(l)), 8)
        << pad(std::to_string(th.size()), 9)
        << pad(th.empty() ? "-" : std::to_string(lo) + ".." + std::to_string(hi), 14);
    for (int p : {0, 10, 50, 90, 100}) out << pad(th.empty() ? "-" : fmt_g(percentile(th, p)), 13);
    out << "\n";
  }
}

struct DiffResult {
  std::size_t common = 0, only_a = 0, only_b = 0, samples_differ = 0;
  double max_abs = 0.0, max_rel = 0.0, max_sdc_abs = 0.0;
  std::string at_abs = "-", at_rel = "-", at_sdc = "-";
  std::size_t sdc_compared = 0, sdc_only_one = 0;
};

inline std::string where(Index l, Index h, Index L) {
  return "layer " + std::to_string(l) + " head " + std::to_string(h) + " length " +
         std::to_string(L);
}

inline DiffResult compare(const ThresholdTable& a, const ThresholdTable& b) {
  DiffResult r;
  const Index layers = std::max(a.num_layers(), b.num_layers());
  const Index heads = std::max(a.num_heads(), b.num_heads());
  static const std::vector<ThresholdEntry> none;
  for (Index l = 0; l < layers; ++l)
    for (Index h = 0; h < heads; ++h) {
      const bool in_a = l < a.num_layers() && h < a.num_heads();
      const bool in_b = l < b.num_layers() && h < b.num_heads();
      const auto& va = in_a ? a.entries(l, h) : none;
      const auto& vb = in_b ? b.entries(l, h) : none;
      std::size_t i = 0, j = 0;
      while (i < va.size() || j < vb.size()) {
        if (j == vb.size() || (i < va.size() && va[i].length < vb[j].length)) {
          ++r.only_a;
          ++i;
          continue;
        }
        if (i == va.size() || vb[j].length < va[i].length) {
          ++r.only_b;
          ++j;
          continue;
        }
        const ThresholdEntry &x = va[i++], &y = vb[j++];
        ++r.common;
        double abs = 0.0, rel = 0.0;
        if (x.theta != y.theta) {
          abs = std::fabs(x.theta - y.theta);
          const double m = std::max(std::fabs(x.theta), std::fabs(y.theta));
          rel = std::isinf(abs) ? abs : abs / m;
        }
        if (abs > r.max_abs || (r.at_abs == "-" && r.common == 1)) {
          r.max_abs = abs;
          r.at_abs = where(l, h, x.length);
        }
        if (rel > r.max_rel || (r.at_rel == "-" && r.common == 1)) {
          r.max_rel = rel;
          r.at_rel = where(l, h, x.length);
        }
        if (x.samples != y.samples) ++r.samples_differ;
        if (x.has_sdc() && y.has_sdc()) {
          const double d = std::fabs(x.sdc - y.sdc);
          if (r.sdc_compared == 0 || d > r.max_sdc_abs) {
            r.max_sdc_abs = d;
            r.at_sdc = where(l, h, x.length);
          }
          ++r.sdc_compared;
        } else if (x.has_sdc() != y.has_sdc()) {
          ++r.sdc_only_one;
        }
      }
    }
  return r;
}

inline std::string shape(const ThresholdTable& t) {
  return std::to_string(t.num_layers()) + " x " + std::to_string(t.num_heads());
}

}  // namespace cli_detail

/// Runs the tool with `argc`/`argv` (argv[0] is the program name). Writes results and help to
/// `out`, errors to `err`; returns the exit status.
inline int run_thresholds_cli(int argc, const char* const* argv, std::ostream& out,
                              std::ostream& err) {
  using namespace cli_detail;
  CLI::App app{"Inspect, convert and compare Top-theta threshold files (native format or the "
               "authors' th.txt/sdc.txt; see docs/threshold-format.md).",
               "toptheta-thresholds"};
  app.require_subcommand(1);
  app.footer("Exit status: 0 success; 1 runtime failure (e.g. the output cannot be written); 2 "
             "usage or input error (bad option; missing, unreadable, malformed or incomplete "
             "input); 3 diff --tolerance exceeded.");
  app.set_version_flag("--version", std::string(kVersionString));

  std::string info_file, info_sdc;
  InputOptions info_in;
  CLI::App* info = app.add_subcommand("info", "Summarise a threshold file");
  info->footer("Prints layers, heads, entries, dense heads, empty heads, length range, "
               "placement, lambda, calibration rows, SDC terms, and per layer: k, entries, length "
               "range and theta percentiles p0 p10 p50 p90 p100 over all heads and lengths (value at index floor(p/100*(n-1)) of "
               "the sorted thetas). A table with empty heads (no thresholds, not declared dense) "
               "is summarised, then reported as an error (exit 2).");
  info->add_option("file", info_file, "threshold file (native, or authors' th.txt)")->required();
  info->add_option("--sdc", info_sdc, "authors' sdc.txt to merge (authors' format only)");
  add_input_options(info, &info_in);

  std::string conv_in, conv_out, conv_to, conv_sdc, conv_sdc_out;
  InputOptions conv_opts;
  CLI::App* convert = app.add_subcommand(
      "convert", "Convert between the native format and the authors' th.txt/sdc.txt");
  convert->footer("Outputs are written atomically (temporary file + rename). The authors' format "
                  "keeps no placement, lambda, calibration rows, model, notes or dense heads: "
                  "converting post-softmax thresholds to it warns, and so does reading an "
                  "authors' file without --placement (pre-softmax is assumed).");
  convert->add_option("input", conv_in, "input threshold file")->required();
  convert->add_option("output", conv_out, "output file (the th.txt path for --to reference)")
      ->required();
  convert->add_option("--to", conv_to, "output format")
      ->required()
      ->check(CLI::IsMember({"native", "reference"}));
  convert->add_option("--sdc", conv_sdc, "authors' sdc.txt to merge into the input");
  convert->add_option("--sdc-out", conv_sdc_out,
                      "--to reference: where to write sdc.txt when the table has SDC terms "
                      "(default: sdc.txt next to the output)");
  add_input_options(convert, &conv_opts);

  std::string diff_a, diff_b, diff_sdc_a, diff_sdc_b;
  double tolerance = -1.0;
  InputOptions diff_in;
  CLI::App* diff = app.add_subcommand("diff", "Compare the thresholds of two files");
  diff->footer("Prints the max absolute and relative theta difference over the common (layer, "
               "head, length) entries (relative: |a-b| / max(|a|,|b|)), the number of entries "
               "only in A and only in B, and shape / k / placement / sample-count / SDC "
               "differences. Exits 0 even when the files differ, unless --tolerance is given (then 3).");
  diff->add_option("a", diff_a, "first threshold file")->required();
  diff->add_option("b", diff_b, "second threshold file")->required();
  diff->add_option("--sdc-a", diff_sdc_a, "authors' sdc.txt for A");
  diff->add_option("--sdc-b", diff_sdc_b, "authors' sdc.txt for B");
  diff->add_option("--tolerance", tolerance,
                   "exit with status 3 when the max absolute theta difference exceeds X, or when "
                   "shape, k, placement or the set of entries differ")
      ->check(CLI::NonNegativeNumber);
  add_input_options(diff, &diff_in);

  const auto one_line = [](std::string m) {
    std::replace(m.begin(), m.end(), '\n', ' ');
    return m;
  };
  // Usage and input errors: exit 2. Runtime failures: exit 1.
  const auto fail = [&](const std::string& msg, int status = kExitUsage) {
    err << "toptheta-thresholds: error: " << one_line(msg) << "\n";
    return status;
  };
  const auto warn = [&](const std::string& msg) {
    err << "toptheta-thresholds: warning: " << one_line(msg) << "\n";
  };
  // A failed save: the file system refusing the write is a runtime failure, anything else (a
  // table the format cannot hold, conflicting paths) an input error.
  const auto save_failed = [&](const Status& s) {
    return fail(s.message(), s.code() == StatusCode::kIoError ? kExitRuntime : kExitUsage);
  };

  if (argc > 1 && argv[1][0] != '-' && std::string(argv[1]) != "info" &&
      std::string(argv[1]) != "convert" && std::string(argv[1]) != "diff")
    return fail(std::string("unknown subcommand '") + argv[1] +
                "' (expected info, convert or diff; see --help)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e, out, err);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e, out, err);
  } catch (const CLI::ParseError& e) {
    return fail(std::string(e.what()) + " (see --help)");
  }

  try {
    if (info->parsed()) {
      // Incomplete tables are loaded as they are, summarised (their empty heads listed), and
      // then reported as the error a strict load gives.
      ThresholdTable t;
      ThresholdFormat fmt = ThresholdFormat::kAuto;
      const Status s = load(info_file, info_sdc, info_in, &t, &fmt, /*keep_empty=*/true);
      if (!s.ok()) return fail(s.message());
      print_info(out, info_file, fmt, t, info_in);
      if (t.num_missing_heads() > 0) {
        ThresholdTable strict;
        const Status e = load(info_file, info_sdc, info_in, &strict, &fmt);
        return fail(e.ok() ? info_file + ": " + t.check_complete().message() : e.message());
      }
      return kExitOk;
    }
    if (convert->parsed()) {
      SaveOptions so;
      (void)parse(conv_to, so.format);
      so.sdc_path = conv_sdc_out;
      if (so.format != ThresholdFormat::kReference && !conv_sdc_out.empty())
        return fail("--sdc-out applies only to --to reference");
      ThresholdTable t;
      ThresholdFormat fmt = ThresholdFormat::kAuto;
      Status s = load(conv_in, conv_sdc, conv_opts, &t, &fmt);
      if (!s.ok()) return fail(s.message());
      if (fmt == ThresholdFormat::kReference && conv_opts.placement.empty())
        warn(assumed_placement_warning(conv_in, t));
      s = save_thresholds(conv_out, t, so);
      if (!s.ok()) return save_failed(s);
      if (so.format == ThresholdFormat::kReference && t.placement() == Placement::kPostSoftmax)
        warn(conv_out + ": the authors' format cannot store the placement; these are post-softmax "
             "thresholds, so load the file with --placement post "
             "(LoadOptions::expected_placement) or it will be read as pre-softmax");
      out << "wrote " << conv_out << " (" << to_string(so.format) << ", " << t.size()
          << " entries)";
      bool any_sdc = false;
      for (Index l = 0; l < t.num_layers() && !any_sdc; ++l)
        for (Index h = 0; h < t.num_heads() && !any_sdc; ++h)
          for (const auto& e : t.entries(l, h)) any_sdc = any_sdc || e.has_sdc();
      if (so.format == ThresholdFormat::kReference && any_sdc)
        out << " and " << reference_sdc_path(conv_out, so);
      out << "\n";
      return kExitOk;
    }
    if (diff->parsed()) {
      ThresholdTable a, b;
      ThresholdFormat fa = ThresholdFormat::kAuto, fb = ThresholdFormat::kAuto;
      Status s = load(diff_a, diff_sdc_a, diff_in, &a, &fa);
      if (!s.ok()) return fail(s.message());
      s = load(diff_b, diff_sdc_b, diff_in, &b, &fb);
      if (!s.ok()) return fail(s.message());
      if (diff_in.placement.empty()) {
        if (fa == ThresholdFormat::kReference) warn(assumed_placement_warning(diff_a, a));
        if (fb == ThresholdFormat::kReference) warn(assumed_placement_warning(diff_b, b));
      }
      const DiffResult r = compare(a, b);
      const auto row = [&](const char* key, const std::string& v) {
        out << pad(std::string(key) + ":", 21, false) << v << "\n";
      };
      row("A", diff_a + " (" + to_string(fa) + ", " + shape(a) + ", " + std::to_string(a.size()) +
                   " entries)");
      row("B", diff_b + " (" + to_string(fb) + ", " + shape(b) + ", " + std::to_string(b.size()) +
                   " entries)");
      const bool same_shape = a.num_layers() == b.num_layers() && a.num_heads() == b.num_heads();
      row("shape", same_shape ? "same" : "differs (A " + shape(a) + ", B " + shape(b) + ")");
      std::string kdiff;
      std::size_t nk = 0;
      for (Index l = 0; l < std::min(a.num_layers(), b.num_layers()); ++l)
        if (a.k(l) != b.k(l)) {
          if (++nk <= 8)
            kdiff += (kdiff.empty() ? "" : ", ") + std::string("layer ") + std::to_string(l) +
                     ": " + std::to_string(a.k(l)) + " vs " + std::to_string(b.k(l));
        }
      if (nk > 8) kdiff += ", ...";
      row("k", nk == 0 ? "same" : "differs at " + std::to_string(nk) + " layer(s): " + kdiff);
      const bool same_placement = a.placement() == b.placement();
      row("placement", same_placement ? std::string("same (") + to_string(a.placement()) + ")"
                                      : std::string("differs (A ") + to_string(a.placement()) +
                                            ", B " + to_string(b.placement()) + ")");
      row("common entries", std::to_string(r.common));
      row("only in A", std::to_string(r.only_a));
      row("only in B", std::to_string(r.only_b));
      row("max abs theta diff", r.common ? fmt_g(r.max_abs, 17) + " (" + r.at_abs + ")" : "-");
      row("max rel theta diff", r.common ? fmt_g(r.max_rel, 17) + " (" + r.at_rel + ")" : "-");
      row("samples differ", std::to_string(r.samples_differ) + " entries");
      if (r.sdc_compared || r.sdc_only_one)
        row("max abs sdc diff", (r.sdc_compared ? fmt_g(r.max_sdc_abs, 17) + " (" + r.at_sdc + ")"
                                                : std::string("-")) +
                                    (r.sdc_only_one ? ", " + std::to_string(r.sdc_only_one) +
                                                          " entries have an SDC term in one file only"
                                                    : std::string()));
      const bool structural = !same_shape || nk != 0 || !same_placement || r.only_a || r.only_b;
      const bool identical = !structural && r.max_abs == 0.0 && r.samples_differ == 0 &&
                             r.max_sdc_abs == 0.0 && r.sdc_only_one == 0;
      row("result", identical ? "identical thresholds" : "different");
      if (tolerance >= 0.0 && (structural || r.max_abs > tolerance)) {
        out << "exceeds --tolerance " << fmt_g(tolerance, 17) << "\n";
        return kExitDiffers;
      }
      return kExitOk;
    }
  } catch (const std::exception& e) {  // e.g. std::bad_alloc
    return fail(e.what(), kExitRuntime);
  }
  return fail("no subcommand");
}

}  // namespace toptheta::tools
