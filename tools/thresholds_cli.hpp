#pragma once
/// \file tools/thresholds_cli.hpp
/// The `toptheta-thresholds` command line (inspect, convert and compare threshold files), as a
/// function so that tests can run it in-process. `toptheta_thresholds.cpp` is its `main`.
///
///     toptheta-thresholds info FILE [--k K] [--sdc FILE] [--placement pre|post] [--layers N --heads N]
///     toptheta-thresholds convert IN OUT --to native|compact|reference [--k K] [--sdc FILE]
///                                [--sdc-out FILE] [--buckets-per-octave B]
///     toptheta-thresholds diff A B [--k K] [--tolerance X] [--sdc-a FILE] [--sdc-b FILE]
///     toptheta-thresholds synth --layers N --heads N --context L --k K[,K...] --out FILE
///
/// Files with several tables (native version 2, one per k) need --k to pick one, except for
/// `info`, which lists them and summarises the smallest k unless --k is given.
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
#include <csignal>
#include <cstdio>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "cli_checks.hpp"
#include "toptheta/io/threshold_file.hpp"
#include "toptheta/threshold_fit.hpp"
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

/// The differences of one `diff` row: counts them all and lists the first `limit`.
struct DiffList {
  explicit DiffList(std::size_t max_listed) : limit(max_listed) {}
  std::size_t limit, count = 0;
  std::string listed;
  void add(const std::string& item) {
    if (++count <= limit) listed += (listed.empty() ? "" : ", ") + item;
  }
  /// "same", or "differs at <count> <what>: <first items>[, ...]".
  std::string summary(const std::string& what) const {
    if (count == 0) return "same";
    return "differs at " + std::to_string(count) + " " + what + ": " + listed +
           (count > limit ? ", ..." : "");
  }
};

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
  Index k = 0;  // --k: the table of a file holding several
};

inline void add_input_options(CLI::App* sub, InputOptions* o) {
  sub->add_option("--placement", o->placement,
                  "authors' files: the placement to assume (default pre); native files: the "
                  "placement the file must have")
      ->check(CLI::IsMember(name_map<Placement>()));
  sub->add_option("--layers", o->layers,
                  "expected number of layers (authors' files: the table shape; default: inferred)")
      ->transform(cli::integer_in<Index>(1, kMaxThresholdLayers));
  sub->add_option("--heads", o->heads,
                  "expected number of query heads per layer (authors' files: the table shape)")
      ->transform(cli::integer_in<Index>(1, kMaxThresholdHeads));
  sub->add_option("--from", o->from, "input format (default: detected from the content)")
      ->check(CLI::IsMember(name_map<ThresholdFormat>()));
  sub->add_option("--missing-heads", o->missing_heads,
                  "(layer, head) pairs without thresholds that the file does not declare dense: "
                  "'error' (default) or 'dense' (declare them dense: they keep every score)")
      ->check(CLI::IsMember({"error", "dense"}));
  sub->add_option("--k", o->k,
                  "files holding several tables (native version 2): the table of this k")
      ->transform(cli::integer_in<Index>(1));
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
  o.k = in.k;
  return load_thresholds(path, out, o, fmt);
}

/// Longest row length the diff evaluates a curve at (synth's largest --context).
inline constexpr Index kMaxLength = Index(1) << 40;

/// The sample count behind (l, h) at length L: the entry's or the knot's at exactly L, else 0.
/// Both lists ascend in length: a binary search (a linear one made diff quadratic in the number
/// of entries of a per-length table compared with a compact one).
inline std::uint64_t samples_at(const ThresholdTable& t, Index l, Index h, Index L) {
  const auto at = [L](const auto& v) -> std::uint64_t {
    const auto it = std::lower_bound(v.begin(), v.end(), L,
                                     [](const auto& x, Index n) { return x.length < n; });
    return it != v.end() && it->length == L ? it->samples : 0;
  };
  return t.is_compact() ? at(t.curve(l, h).knots) : at(t.entries(l, h));
}

/// A per-length view of `t` for diff, so that two compact tables, or a compact and a per-length
/// one, compare at the same lengths: theta, SDC term and samples of `t` at every length where
/// either table has an entry or a knot, and beyond them (a curve's end slopes). When neither
/// table is compact, `t` as it is.
inline ThresholdTable per_length_view(const ThresholdTable& t, const ThresholdTable& other) {
  if (!t.is_compact() && !other.is_compact()) return t;
  ThresholdTable v(t.num_layers(), t.num_heads());
  for (Index l = 0; l < t.num_layers(); ++l) (void)v.set_k(l, t.k(l));
  v.metadata() = t.metadata();
  for (Index l = 0; l < t.num_layers(); ++l)
    for (Index h = 0; h < t.num_heads(); ++h) {
      if (t.is_dense(l, h)) {
        (void)v.set_dense(l, h);
        continue;
      }
      std::vector<Index> lens;
      for (const ThresholdTable* x : {&t, &other}) {
        if (l >= x->num_layers() || h >= x->num_heads()) continue;
        for (const auto& k : x->curve(l, h).knots) lens.push_back(k.length);
        for (const auto& e : x->entries(l, h)) lens.push_back(e.length);
      }
      std::sort(lens.begin(), lens.end());
      lens.erase(std::unique(lens.begin(), lens.end()), lens.end());
      // A curve's end slopes act only outside its knots: compare there too, at half the first
      // length (or the shortest thresholded row, L = k + 1, when that is longer) and at 2 and 16
      // times the last. Without these, two curves that differed only in a slope diffed as
      // identical.
      if (!lens.empty()) {
        const Index k = l < other.num_layers() ? std::min(t.k(l), other.k(l)) : t.k(l);
        const Index lo = lens.front(), hi = lens.back();
        const Index below = std::max(k + 1, lo / 2);
        if (below < lo) lens.insert(lens.begin(), below);
        for (Index m : {Index(2), Index(16)})
          if (hi <= kMaxLength / m) lens.push_back(hi * m);
      }
      for (Index L : lens) {
        const ThresholdLookup r = t.lookup(l, h, L);
        ThresholdEntry e;
        e.length = L;
        e.theta = r.theta;
        e.sdc = r.sdc;
        e.samples = samples_at(t, l, h, L);
        (void)v.set(l, h, e);
      }
    }
  return v;
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
  // Per (layer, head): (length, theta, has sdc) of every entry or knot.
  const auto points = [&t](Index l, Index h) {
    std::vector<ThresholdEntry> v;
    if (!t.is_compact()) return t.entries(l, h);
    for (const auto& k : t.curve(l, h).knots) {
      ThresholdEntry e;
      e.length = k.length;
      e.theta = t.lookup(l, h, k.length).theta;
      e.samples = k.samples;
      e.sdc = k.sdc;
      v.push_back(e);
    }
    return v;
  };
  for (Index l = 0; l < t.num_layers(); ++l)
    for (Index h = 0; h < t.num_heads(); ++h)
      for (const auto& e : points(l, h)) {
        min_len = std::min(min_len, e.length);
        max_len = std::max(max_len, e.length);
        with_sdc += e.has_sdc() ? 1 : 0;
      }
  const auto row = [&](const char* key, const std::string& v) {
    out << pad(std::string(key) + ":", 19, false) << v << "\n";
  };
  row("file", path);
  row("format", native ? "native (version " +
                             std::to_string(t.is_compact() ? kNativeThresholdVersion
                                                           : kNativeThresholdVersionPerLength) +
                             ")"
                       : std::string("reference (authors' th.txt)"));
  row("form", t.is_compact() ? "compact (curves over " + std::to_string(md.buckets_per_octave) +
                                   " length buckets per octave; theta extrapolated by the fit "
                                   "outside the knots)"
                             : std::string("per-length (nearest or linear lookup, clamped outside)"));
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
  row(t.is_compact() ? "knots" : "entries", std::to_string(t.size()));
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
  {  // the rows a Top-θ call runs on a calibrated theta (AttentionCounts::extrapolated_rows)
    Index lo = std::numeric_limits<Index>::max(), hi = 0;
    std::size_t unrecorded = 0;
    for (Index l = 0; l < t.num_layers(); ++l)
      for (Index h = 0; h < t.num_heads(); ++h) {
        if (!t.has_thresholds(l, h)) continue;
        lo = std::min(lo, t.max_calibrated_length(l, h));
        hi = std::max(hi, t.max_calibrated_length(l, h));
        unrecorded += t.is_compact() && t.curve(l, h).max_calibrated_length == 0;
      }
    std::string v = hi == 0    ? std::string("-")
                    : lo == hi ? std::to_string(hi)
                               : std::to_string(lo) + ".." + std::to_string(hi);
    if (unrecorded > 0)
      v += " (" + std::to_string(unrecorded) +
           " curve(s) without a recorded length: the end of the last knot's length bucket)";
    row("calibrated to", v);
  }
  row("lambda", native ? detail::format_double(md.lambda) : std::string("- (not stored)"));
  row("calibration rows",
      native ? std::to_string(md.calibration_rows) : std::string("- (not stored)"));
  if (native) {
    row("model", md.model_id.empty() ? "-" : md.model_id);
    row("notes", md.notes.empty() ? "-" : md.notes);
    row("head_dim",
        md.head_dim == 0 ? std::string("- (not recorded)") : std::to_string(md.head_dim));
    row("score scale", md.score_scale == 0 ? std::string("- (not recorded)")
                                           : detail::format_double(md.score_scale));
  }
  row("sdc terms", with_sdc == 0            ? std::string("none")
                   : with_sdc == t.size()   ? "all " + std::to_string(with_sdc) + " entries"
                                            : std::to_string(with_sdc) + " of " +
                                                  std::to_string(t.size()) + " entries");
  out << "\ntheta per layer over all heads and " << (t.is_compact() ? "knots" : "lengths")
      << " (pN = element floor(N/100*(n-1)) of the sorted thetas)\n";
  out << pad("layer", 5) << pad("k", 8) << pad("entries", 9) << pad("lengths", 14);
  for (const char* p : {"p0", "p10", "p50", "p90", "p100"}) out << pad(p, 13);
  out << "\n";
  for (Index l = 0; l < t.num_layers(); ++l) {
    std::vector<double> th;
    Index lo = std::numeric_limits<Index>::max(), hi = 0;
    for (Index h = 0; h < t.num_heads(); ++h)
      for (const auto& e : points(l, h)) {
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
  int conv_bpo = 2;
  InputOptions conv_opts;
  CLI::App* convert = app.add_subcommand(
      "convert", "Convert between the native format and the authors' th.txt/sdc.txt, or to the "
                 "compact form (native version 2)");
  convert->footer(
      "Outputs are written atomically (temporary file + rename). The authors' format "
      "keeps no placement, lambda, calibration rows, model, notes, head_dim, score "
      "scale or dense heads: "
      "converting post-softmax thresholds to it warns, and so does reading an "
      "authors' file without --placement (pre-softmax is assumed).");
  convert->add_option("input", conv_in, "input threshold file")->required();
  convert->add_option("output", conv_out, "output file (the th.txt path for --to reference)")
      ->required();
  convert->add_option("--to", conv_to, "output format")
      ->required()
      ->check(CLI::IsMember({"native", "compact", "reference"}));
  convert
      ->add_option("--buckets-per-octave", conv_bpo,
                   "--to compact: length buckets per octave of the fitted curves")
      ->capture_default_str()
      ->transform(cli::integer_in<Index>(1, 16));
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
                   "shape, k, placement, the recorded head_dim or score scale, or the set of "
                   "entries differ")
      ->check(cli::finite_in(0.0));
  add_input_options(diff, &diff_in);

  Index syn_layers = 0, syn_heads = 0, syn_context = 0;
  std::string syn_k, syn_out;
  int syn_bpo = 2;
  CLI::App* synth = app.add_subcommand(
      "synth", "Write a synthetic compact table (for size and load checks): smooth random "
               "curves over every length bucket from k+1 to --context");
  synth->add_option("--layers", syn_layers)
      ->required()
      ->transform(cli::integer_in<Index>(1, kMaxThresholdLayers));
  synth->add_option("--heads", syn_heads)
      ->required()
      ->transform(cli::integer_in<Index>(1, kMaxThresholdHeads));
  synth->add_option("--context", syn_context, "longest calibrated row length")
      ->required()
      ->transform(cli::integer_in<Index>(2, kMaxLength));
  synth->add_option("--k", syn_k, "budgets, e.g. 16,32,64")->required();
  synth->add_option("--buckets-per-octave", syn_bpo)
      ->capture_default_str()
      ->transform(cli::integer_in<Index>(1, 16));
  synth->add_option("--out", syn_out, "output file (native version 2)")->required();

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
      std::string(argv[1]) != "convert" && std::string(argv[1]) != "diff" &&
      std::string(argv[1]) != "synth")
    return fail(std::string("unknown subcommand '") + argv[1] +
                "' (expected info, convert, diff or synth; see --help)");
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
      // A file with several tables: list their k, summarise --k or the smallest.
      std::string tables_line;
      if (info_in.k == 0 && info_sdc.empty()) {
        ThresholdSet set;
        LoadOptions lo;
        lo.missing_heads = MissingHeads::kKeepEmpty;
        if (load_threshold_set(info_file, &set, lo).ok() && set.size() > 1) {
          info_in.k = set.tables().front().nominal_k();
          tables_line = std::to_string(set.size()) + " (k = " + set.ks_text() +
                        "); this summary: k = " + std::to_string(info_in.k) + " (choose with --k)";
        }
      }
      const Status s = load(info_file, info_sdc, info_in, &t, &fmt, /*keep_empty=*/true);
      if (!s.ok()) return fail(s.message());
      if (!tables_line.empty()) out << pad("tables:", 19, false) << tables_line << "\n";
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
      const bool to_compact_form = conv_to == "compact";
      if (!to_compact_form) (void)parse(conv_to, so.format);
      so.sdc_path = conv_sdc_out;
      if (so.format != ThresholdFormat::kReference && !conv_sdc_out.empty())
        return fail("--sdc-out applies only to --to reference");
      const bool bpo_given = convert->count("--buckets-per-octave") > 0;
      if (bpo_given && !to_compact_form)
        return fail("--buckets-per-octave applies only to --to compact");
      ThresholdTable t;
      ThresholdFormat fmt = ThresholdFormat::kAuto;
      Status s = load(conv_in, conv_sdc, conv_opts, &t, &fmt);
      if (!s.ok()) return fail(s.message());
      if (fmt == ThresholdFormat::kReference && conv_opts.placement.empty())
        warn(assumed_placement_warning(conv_in, t));
      if (to_compact_form && bpo_given && t.is_compact() &&
          t.metadata().buckets_per_octave != conv_bpo)
        return fail(conv_in + " is compact already, with " +
                    std::to_string(t.metadata().buckets_per_octave) +
                    " buckets per octave: --buckets-per-octave " + std::to_string(conv_bpo) +
                    " refits per-length tables only (convert it from the per-length table)");
      if (to_compact_form) {
        CompactFitOptions fo;
        fo.buckets_per_octave = conv_bpo;
        ThresholdTable c;
        s = to_compact(t, &c, fo);
        if (!s.ok()) return fail(conv_in + ": " + s.message());
        t = std::move(c);
      }
      s = save_thresholds(conv_out, t, so);
      if (!s.ok()) return save_failed(s);
      if (so.format == ThresholdFormat::kReference && t.placement() == Placement::kPostSoftmax)
        warn(conv_out + ": the authors' format cannot store the placement; these are post-softmax "
             "thresholds, so load the file with --placement post "
             "(LoadOptions::expected_placement) or it will be read as pre-softmax");
      if (so.format == ThresholdFormat::kReference &&
          (t.metadata().head_dim != 0 || t.metadata().score_scale != 0))
        warn(conv_out +
             ": the authors' format cannot store the recorded head_dim and score scale; "
             "the kernels will not check a call's geometry against the converted table");
      out << "wrote " << conv_out << " (" << to_string(so.format)
          << (t.is_compact() ? " version 2, " : ", ") << t.size()
          << (t.is_compact() ? " knots)" : " entries)");
      bool any_sdc = false;
      for (Index l = 0; l < t.num_layers() && !any_sdc; ++l)
        for (Index h = 0; h < t.num_heads() && !any_sdc; ++h)
          for (const auto& e : t.entries(l, h)) any_sdc = any_sdc || e.has_sdc();
      if (so.format == ThresholdFormat::kReference && any_sdc)
        out << " and " << reference_sdc_path(conv_out, so);
      out << "\n";
      return kExitOk;
    }
    if (synth->parsed()) {
      std::vector<Index> ks;
      std::size_t start = 0;
      while (start <= syn_k.size()) {
        const std::size_t comma = syn_k.find(',', start);
        const std::string item = syn_k.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        char* e = nullptr;
        const long long k = std::strtoll(item.c_str(), &e, 10);
        if (item.empty() || *e != '\0' || k < 1 || k >= syn_context)
          return fail("--k: '" + item + "' is not a budget in [1, --context)");
        if (std::find(ks.begin(), ks.end(), Index(k)) != ks.end())
          return fail("--k: the budget " + item + " is given twice");
        ks.push_back(Index(k));
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
      ThresholdSet set;
      CompactFitOptions fo;
      fo.buckets_per_octave = syn_bpo;
      std::uint64_t seed = 0x9E3779B97F4A7C15ull;
      const auto rnd = [&seed] {  // SplitMix64 in [0, 1)
        std::uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
      };
      for (Index k : ks) {
        ThresholdTable t = ThresholdTable::compact(syn_layers, syn_heads);
        for (Index l = 0; l < syn_layers; ++l) (void)t.set_k(l, k);
        t.metadata().placement = Placement::kPostSoftmax;
        t.metadata().lambda = 0.1;
        t.metadata().buckets_per_octave = syn_bpo;
        t.metadata().notes = "synthetic (toptheta-thresholds synth)";
        const int last = length_bucket(syn_context, syn_bpo);
        for (Index l = 0; l < syn_layers; ++l)
          for (Index h = 0; h < syn_heads; ++h) {
            // Bucket sums of rows with L * tau = a + b ln L + noise, one row per length.
            std::vector<BucketStats> b(std::size_t(last) + 1);
            const double a0 = 1.0 + 4.0 * rnd(), b0 = 0.5 * rnd();
            for (int j = length_bucket(k + 1, syn_bpo); j <= last; ++j) {
              Index lo = 0, hi = 0;
              bucket_lengths(j, syn_bpo, &lo, &hi);
              lo = std::max(lo, k + 1);
              hi = std::min(hi, syn_context);
              if (hi < lo) continue;
              // Summarise the bucket's rows with a few representative points.
              const Index n = hi - lo + 1;
              for (int s = 0; s < 4; ++s) {
                const double L = double(lo) + (double(n) - 1.0) * (s + 0.5) / 4.0;
                const double x = std::log(L) - bucket_log_edge(j, syn_bpo);
                b[std::size_t(j)].add(x, a0 + b0 * std::log(L) + 0.2 * (rnd() - 0.5), double(n) / 4.0);
              }
              b[std::size_t(j)].note_length(hi);
            }
            (void)t.set_curve(l, h, fit_curve(b, true, 0.1, false, fo));
          }
        const Status st = set.add(std::move(t));
        if (!st.ok()) return fail(st.message());
      }
      const Status s = save_threshold_set(syn_out, set);
      if (!s.ok()) return save_failed(s);
      ThresholdSet back;
      const Status ls = load_threshold_set(syn_out, &back);
      if (!ls.ok()) return fail(ls.message(), kExitRuntime);
      bool same = back.size() == set.size();
      for (std::size_t i = 0; same && i < set.size(); ++i)
        same = thresholds_identical(set.tables()[i], back.tables()[i]);
      std::string text;
      (void)format_native_threshold_set(set, &text);
      std::size_t knots = 0;
      for (const auto& t : set.tables()) knots += t.size();
      out << "wrote " << syn_out << ": " << syn_layers << " layers x " << syn_heads
          << " heads, context " << syn_context << ", k " << syn_k << ": " << knots << " knots, "
          << text.size() << " bytes; loads back " << (same ? "identical" : "DIFFERENT") << "\n";
      return same ? kExitOk : kExitRuntime;
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
      const DiffResult r = compare(per_length_view(a, b), per_length_view(b, a));
      const auto row = [&](const char* key, const std::string& v) {
        out << pad(std::string(key) + ":", 21, false) << v << "\n";
      };
      row("A", diff_a + " (" + to_string(fa) + ", " + shape(a) + ", " + std::to_string(a.size()) +
                   " entries)");
      row("B", diff_b + " (" + to_string(fb) + ", " + shape(b) + ", " + std::to_string(b.size()) +
                   " entries)");
      const bool same_shape = a.num_layers() == b.num_layers() && a.num_heads() == b.num_heads();
      row("shape", same_shape ? "same" : "differs (A " + shape(a) + ", B " + shape(b) + ")");
      DiffList kdiff{8};
      for (Index l = 0; l < std::min(a.num_layers(), b.num_layers()); ++l)
        if (a.k(l) != b.k(l))
          kdiff.add("layer " + std::to_string(l) + ": " + std::to_string(a.k(l)) + " vs " +
                    std::to_string(b.k(l)));
      row("k", kdiff.summary("layer(s)"));
      const bool same_placement = a.placement() == b.placement();
      row("placement", same_placement ? std::string("same (") + to_string(a.placement()) + ")"
                                      : std::string("differs (A ") + to_string(a.placement()) +
                                            ", B " + to_string(b.placement()) + ")");
      // The recorded calibration geometry (head_dim, score scale): tables of different geometry
      // threshold different scores, so a conflict is a structural difference.
      const ThresholdMetadata &ma = a.metadata(), &mb = b.metadata();
      const auto geometry = [](const ThresholdMetadata& m) {
        if (m.head_dim == 0 && m.score_scale == 0) return std::string("not recorded");
        return "head_dim " + (m.head_dim ? std::to_string(m.head_dim) : std::string("-")) +
               ", score scale " + (m.score_scale ? detail::format_double(m.score_scale) : "-");
      };
      const bool geometry_conflict =
          (ma.head_dim != 0 && mb.head_dim != 0 && ma.head_dim != mb.head_dim) ||
          (ma.score_scale != 0 && mb.score_scale != 0 &&
           !detail::score_scale_matches(ma.score_scale, mb.score_scale));
      const std::string ga = geometry(ma), gb = geometry(mb);
      row("geometry", ga == gb ? "same (" + ga + ")"
                               : std::string(geometry_conflict ? "differs" : "recorded in one") +
                                     " (A " + ga + "; B " + gb + ")");
      row("common entries", std::to_string(r.common));
      row("only in A", std::to_string(r.only_a));
      row("only in B", std::to_string(r.only_b));
      row("max abs theta diff", r.common ? fmt_g(r.max_abs, 17) + " (" + r.at_abs + ")" : "-");
      row("max rel theta diff", r.common ? fmt_g(r.max_rel, 17) + " (" + r.at_rel + ")" : "-");
      row("samples differ", std::to_string(r.samples_differ) + " entries");
      // The longest calibrated rows (ThresholdTable::max_calibrated_length): not thresholds, but
      // what AttentionCounts::extrapolated_rows counts against.
      DiffList ldiff{4};
      for (Index l = 0; l < std::min(a.num_layers(), b.num_layers()); ++l)
        for (Index h = 0; h < std::min(a.num_heads(), b.num_heads()); ++h) {
          const Index la = a.max_calibrated_length(l, h), lb = b.max_calibrated_length(l, h);
          if (la != lb)
            ldiff.add("layer " + std::to_string(l) + " head " + std::to_string(h) + ": " +
                      std::to_string(la) + " vs " + std::to_string(lb));
        }
      row("calibrated to", ldiff.summary("(layer, head) pair(s)"));
      if (r.sdc_compared || r.sdc_only_one)
        row("max abs sdc diff", (r.sdc_compared ? fmt_g(r.max_sdc_abs, 17) + " (" + r.at_sdc + ")"
                                                : std::string("-")) +
                                    (r.sdc_only_one ? ", " + std::to_string(r.sdc_only_one) +
                                                          " entries have an SDC term in one file only"
                                                    : std::string()));
      const bool structural = !same_shape || kdiff.count != 0 || !same_placement ||
                              geometry_conflict || r.only_a || r.only_b;
      const bool identical = !structural && r.max_abs == 0.0 && r.samples_differ == 0 &&
                             ldiff.count == 0 && r.max_sdc_abs == 0.0 && r.sdc_only_one == 0;
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

/// The tool's `main`: ignores SIGXFSZ first, so that a save beyond a file size limit
/// (`ulimit -f`) fails with exit status 1, "File too large", the old output untouched and no
/// temporary file left, instead of the signal killing the process mid-write (see
/// io/atomic_write.hpp); then run_thresholds_cli().
inline int thresholds_cli_main(int argc, const char* const* argv, std::ostream& out,
                               std::ostream& err) {
#ifdef SIGXFSZ
  std::signal(SIGXFSZ, SIG_IGN);
#endif
  return run_thresholds_cli(argc, argv, out, err);
}

}  // namespace toptheta::tools
