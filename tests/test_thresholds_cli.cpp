// The toptheta-thresholds command line (tools/thresholds_cli.hpp), run in-process: help on every
// subcommand, info on both formats (dense and empty heads listed), convert round trips, diff,
// the exit statuses (0 success, 1 runtime failure, 2 usage or input error, 3 diff beyond
// --tolerance), warnings about the placement the authors' format cannot store, and the one-line
// error contract.

#include <gtest/gtest.h>

#if __has_include(<CLI/CLI.hpp>)

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/sysmacros.h>  // makedev
#endif
#endif

#include "../tools/thresholds_cli.hpp"
#include "threshold_file_test_util.hpp"

namespace toptheta::testing {
namespace {

struct CliResult {
  int status = -1;
  std::string out, err;
};

CliResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), "toptheta-thresholds");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::ostringstream out, err;
  CliResult r;
  r.status = tools::run_thresholds_cli(int(argv.size()), argv.data(), out, err);
  r.out = out.str();
  r.err = err.str();
  return r;
}

std::string valid(const std::string& name) { return threshold_data_dir() + "/valid/" + name; }

std::string malformed(const std::string& name) {
  return threshold_data_dir() + "/malformed/" + name;
}

void expect_one_line_error(const CliResult& r, const std::string& fragment, int status = 2) {
  EXPECT_EQ(r.status, status) << r.err;
  EXPECT_EQ(r.err.rfind("toptheta-thresholds: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(ThresholdsCli, HelpOnEverySubcommand) {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--help"}, {"info", "--help"}, {"convert", "--help"},
        {"diff", "--help"}, {"info", "-h"}}) {
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.status, 0) << args[0];
    EXPECT_NE(r.out.find("Usage:"), std::string::npos) << r.out;
    EXPECT_TRUE(r.err.empty()) << r.err;
  }
  EXPECT_NE(run_cli({"convert", "--help"}).out.find("--to"), std::string::npos);
  EXPECT_NE(run_cli({"diff", "--help"}).out.find("--tolerance"), std::string::npos);
  EXPECT_NE(run_cli({"info", "--help"}).out.find("--sdc"), std::string::npos);
  const CliResult v = run_cli({"--version"});
  EXPECT_EQ(v.status, 0);
  EXPECT_NE(v.out.find(kVersionString), std::string::npos);
}

TEST(ThresholdsCli, InfoNative) {
  const CliResult r = run_cli({"info", valid("calibrated.toptheta")});
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* want :
       {"format:            native (version 1)", "placement:         pre\n", "layers:            3",
        "heads:             4", "entries:           352", "lengths:           9..40",
        "lambda:            0.1", "calibration rows:  2112", "sdc terms:         all 352 entries",
        "p0", "p50", "p100"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
}

TEST(ThresholdsCli, InfoAuthorsFormat) {
  const CliResult r = run_cli({"info", valid("authors/th.txt"), "--sdc", valid("authors/sdc.txt")});
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* want : {"format:            reference (authors' th.txt)", "(assumed",
                           "layers:            2", "heads:             4", "entries:           65",
                           "lengths:           65..1219", "lambda:            - (not stored)",
                           "sdc terms:         all 65 entries", "-3.40282e+38"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  const CliResult p = run_cli({"info", valid("authors/th.txt"), "--placement", "post"});
  EXPECT_NE(p.out.find("placement:         post\n"), std::string::npos) << p.out;
}

TEST(ThresholdsCli, ConvertRoundTripsAndDiffSaysIdentical) {
  TempDir dir;
  const std::string th = dir.file("th.txt"), back = dir.file("back.toptheta");
  CliResult r = run_cli({"convert", valid("calibrated.toptheta"), th, "--to", "reference"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("and " + dir.file("sdc.txt")), std::string::npos) << r.out;
  EXPECT_EQ(read_all(th), read_all(valid("calibrated_reference/th.txt")));
  EXPECT_EQ(read_all(dir.file("sdc.txt")), read_all(valid("calibrated_reference/sdc.txt")));
  r = run_cli({"convert", th, back, "--to", "native", "--sdc", dir.file("sdc.txt")});
  ASSERT_EQ(r.status, 0) << r.err;
  ThresholdTable a, b;
  ASSERT_TRUE(load_thresholds(valid("calibrated.toptheta"), &a).ok());
  ASSERT_TRUE(load_thresholds(back, &b).ok());
  EXPECT_TRUE(same_entries(a, b));

  r = run_cli({"diff", valid("calibrated.toptheta"), th, "--sdc-b", dir.file("sdc.txt"),
               "--tolerance", "0"});
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("max abs theta diff:  0 "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("only in A:           0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("result:              identical thresholds"), std::string::npos) << r.out;

  r = run_cli({"convert", valid("calibrated.toptheta"), dir.file("x.toptheta"), "--to", "native",
               "--sdc-out", dir.file("s.txt")});
  expect_one_line_error(r, "--sdc-out applies only to --to reference");
}

TEST(ThresholdsCli, CompactConvertInfoDiffAndSynth) {
  TempDir dir;
  const std::string c = dir.file("c.toptheta");
  CliResult r = run_cli({"convert", valid("calibrated.toptheta"), c, "--to", "compact"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("version 2"), std::string::npos) << r.out;
  ThresholdTable t;
  ASSERT_TRUE(load_thresholds(c, &t).ok());
  EXPECT_TRUE(t.is_compact());
  EXPECT_TRUE(t.has_sdc());  // the SDC terms carry over
  r = run_cli({"info", c});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("format:            native (version 2)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("form:              compact"), std::string::npos) << r.out;
  // The conversion records each head's last entry length (40) as its longest calibrated row.
  EXPECT_NE(r.out.find("calibrated to:     40\n"), std::string::npos) << r.out;
  EXPECT_EQ(t.max_calibrated_length(2, 3), 40);
  // A version-2 file written before the length was recorded: the last knots' bucket ends.
  r = run_cli({"info", std::string(TOPTHETA_TEST_DATA_DIR) + "/../fuzz/corpus/compact_v2.toptheta",
               "--k", "8"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("calibrated to:     512 (4 curve(s) without a recorded length: the end of "
                       "the last knot's length bucket)\n"),
            std::string::npos)
      << r.out;
  r = run_cli({"info",
               std::string(TOPTHETA_TEST_DATA_DIR) + "/../fuzz/corpus/compact_v2_longest.toptheta",
               "--k", "8"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("calibrated to:     500\n"), std::string::npos) << r.out;
  // diff names the pairs whose longest calibrated row differs; the thresholds are the same.
  {
    std::string text = read_all(std::string(TOPTHETA_TEST_DATA_DIR) +
                                "/../fuzz/corpus/compact_v2_longest.toptheta");
    const std::string from = "1200 max_calibrated_length 500\n1 1";
    const std::size_t at = text.find(from);
    ASSERT_NE(at, std::string::npos);
    text.replace(at, from.size(), "1200 max_calibrated_length 9000\n1 1");
    const std::string m = dir.file("m9000.toptheta");
    write_all(m, text);
    r = run_cli(
        {"diff",
         std::string(TOPTHETA_TEST_DATA_DIR) + "/../fuzz/corpus/compact_v2_longest.toptheta", m,
         "--k", "4", "--tolerance", "0"});
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("calibrated to:       differs at 1 (layer, head) pair(s): layer 1 head 0: "
                         "500 vs 9000\n"),
              std::string::npos)
        << r.out;
    EXPECT_NE(r.out.find("max abs theta diff:  0 "), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("result:              different"), std::string::npos) << r.out;
  }
  // diff compares a compact and a per-length table at the union of their lengths.
  r = run_cli({"diff", valid("calibrated.toptheta"), c});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("only in A:           0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("result:              different"), std::string::npos) << r.out;
  // synth: several k in one file; loads back identical; --k picks a table.
  const std::string s = dir.file("s.toptheta");
  r = run_cli({"synth", "--layers", "4", "--heads", "2", "--context", "4096", "--k", "16,64", "--out", s});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("loads back identical"), std::string::npos) << r.out;
  r = run_cli({"diff", s, s});
  expect_one_line_error(r, "the file holds tables for k = 16, 64: choose one");
  r = run_cli({"diff", s, s, "--k", "64", "--tolerance", "0"});
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("identical thresholds"), std::string::npos) << r.out;
  r = run_cli({"info", s, "--k", "64"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("    0      64"), std::string::npos) << r.out;
  r = run_cli({"info", s});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("tables:            2 (k = 16, 64); this summary: k = 16"), std::string::npos) << r.out;
  // Compact tables cannot go to the authors' format.
  r = run_cli({"convert", s, dir.file("th.txt"), "--k", "16", "--to", "reference"});
  expect_one_line_error(r, "the authors' format holds per-length thresholds");
}

TEST(ThresholdsCli, DiffReportsDifferencesAndHonoursTolerance) {
  TempDir dir;
  ThresholdTable t;
  ASSERT_TRUE(load_thresholds(valid("calibrated.toptheta"), &t).ok());
  ThresholdTable u = t;
  ThresholdEntry e = u.entries(1, 2)[3];
  const Index changed_length = e.length;
  e.theta += 0.5;
  ASSERT_TRUE(u.set(1, 2, e).ok());
  e.length = 1000;  // only in B
  ASSERT_TRUE(u.set(2, 3, e).ok());
  ASSERT_TRUE(save_thresholds(dir.file("u.toptheta"), u).ok());

  CliResult r = run_cli({"diff", valid("calibrated.toptheta"), dir.file("u.toptheta")});
  EXPECT_EQ(r.status, 0) << r.err;  // different, but no --tolerance
  EXPECT_NE(r.out.find("only in B:           1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("max abs theta diff:  0.5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("(layer 1 head 2 length " + std::to_string(changed_length) + ")"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("result:              different"), std::string::npos) << r.out;
  r = run_cli({"diff", valid("calibrated.toptheta"), dir.file("u.toptheta"), "--tolerance", "1"});
  EXPECT_EQ(r.status, 3) << r.out;  // entries only in B
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(r.out.find("exceeds --tolerance"), std::string::npos) << r.out;

  // Only a theta change: within a loose tolerance, beyond a tight one.
  ThresholdTable w = t;
  e = w.entries(0, 1)[0];
  e.theta += 1e-3;
  ASSERT_TRUE(w.set(0, 1, e).ok());
  ASSERT_TRUE(save_thresholds(dir.file("w.toptheta"), w).ok());
  EXPECT_EQ(run_cli({"diff", valid("calibrated.toptheta"), dir.file("w.toptheta"), "--tolerance",
                     "0.01"})
                .status,
            0);
  EXPECT_EQ(run_cli({"diff", valid("calibrated.toptheta"), dir.file("w.toptheta"), "--tolerance",
                     "1e-4"})
                .status,
            3);

  // The recorded geometry: shown by info, compared by diff; a conflict is structural.
  ThresholdTable g = t;
  g.metadata().head_dim = 128;
  g.metadata().score_scale = 0.125;
  ASSERT_TRUE(save_thresholds(dir.file("g128.toptheta"), g).ok());
  g.metadata().head_dim = 64;
  ASSERT_TRUE(save_thresholds(dir.file("g64.toptheta"), g).ok());
  r = run_cli({"info", dir.file("g128.toptheta")});
  EXPECT_NE(r.out.find("head_dim:          128\nscore scale:       0.125\n"), std::string::npos)
      << r.out;
  EXPECT_NE(run_cli({"info", valid("calibrated.toptheta")})
                .out.find("head_dim:          - (not recorded)"),
            std::string::npos);
  r = run_cli({"convert", dir.file("g128.toptheta"), dir.file("th.txt"), "--to", "reference"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("cannot store the recorded head_dim and score scale"), std::string::npos)
      << r.err;
  r = run_cli({"diff", dir.file("g128.toptheta"), dir.file("g128.toptheta"), "--tolerance", "0"});
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("geometry:            same (head_dim 128, score scale 0.125)"),
            std::string::npos)
      << r.out;
  r = run_cli({"diff", dir.file("g128.toptheta"), dir.file("g64.toptheta"), "--tolerance", "1"});
  EXPECT_EQ(r.status, 3) << r.out;
  EXPECT_NE(r.out.find("geometry:            differs (A head_dim 128, score scale 0.125; B "
                       "head_dim 64, score scale 0.125)"),
            std::string::npos)
      << r.out;
  r = run_cli({"diff", valid("calibrated.toptheta"), dir.file("g64.toptheta"), "--tolerance", "0"});
  EXPECT_EQ(r.status, 0) << r.out;  // recorded in one file only: the same thresholds
  EXPECT_NE(r.out.find("geometry:            recorded in one (A not recorded; B head_dim 64"),
            std::string::npos)
      << r.out;
}

// Compact curves differ by their end slopes, which act only outside the knots, and by their knots'
// samples: diff compared them at the knot lengths only, with no samples, and called two tables
// "identical thresholds" (exit 0 under --tolerance 0) whose theta at L = 1000 was 6.6 and 166.
TEST(ThresholdsCli, DiffOfCompactTablesSeesSlopesAndSamples) {
  TempDir dir;
  ThresholdTable per_length, c;
  ASSERT_TRUE(load_thresholds(valid("calibrated.toptheta"), &per_length).ok());
  ASSERT_TRUE(to_compact(per_length, &c).ok());
  ASSERT_TRUE(save_thresholds(dir.file("c.toptheta"), c).ok());
  for (const int change : {0, 1, 2}) {
    ThresholdTable u = c;
    ThresholdCurve curve = u.curve(0, 0);
    if (change == 0) curve.slope_above += 1.0;
    if (change == 1) curve.slope_below -= 1.0;
    if (change == 2) curve.knots[0].samples += 999;
    ASSERT_TRUE(u.set_curve(0, 0, curve).ok());
    ASSERT_TRUE(save_thresholds(dir.file("u.toptheta"), u).ok());
    const CliResult r =
        run_cli({"diff", dir.file("c.toptheta"), dir.file("u.toptheta"), "--tolerance", "0"});
    EXPECT_EQ(r.status, change == 2 ? 0 : 3) << change << r.out << r.err;
    EXPECT_NE(r.out.find("result:              different"), std::string::npos) << change << r.out;
    const char* where = change == 2 ? "samples differ:      1 entries" : "(layer 0 head 0 length";
    EXPECT_NE(r.out.find(where), std::string::npos) << r.out;
  }
  const CliResult same =
      run_cli({"diff", dir.file("c.toptheta"), dir.file("c.toptheta"), "--tolerance", "0"});
  EXPECT_EQ(same.status, 0) << same.out;
  EXPECT_NE(same.out.find("identical thresholds"), std::string::npos) << same.out;
}

// --buckets-per-octave shapes the fit of a per-length table: elsewhere it was accepted and
// silently unused (a compact input kept its own 2 buckets per octave).
TEST(ThresholdsCli, BucketsPerOctaveOnlyWhereItIsUsed) {
  TempDir dir;
  const std::string c2 = dir.file("c2.toptheta");
  CliResult r = run_cli({"convert", valid("calibrated.toptheta"), c2, "--to", "compact"});
  ASSERT_EQ(r.status, 0) << r.err;
  expect_one_line_error(run_cli({"convert", c2, dir.file("x.toptheta"), "--to", "compact",
                                 "--buckets-per-octave", "7"}),
                        "is compact already, with 2 buckets per octave: --buckets-per-octave 7 "
                        "refits per-length tables only");
  expect_one_line_error(run_cli({"convert", valid("calibrated.toptheta"), dir.file("x.toptheta"),
                                 "--to", "native", "--buckets-per-octave", "7"}),
                        "--buckets-per-octave applies only to --to compact");
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.toptheta")));
  // Where it is used, it is used; the compact input's own value passes.
  r = run_cli({"convert", valid("calibrated.toptheta"), dir.file("c4.toptheta"), "--to", "compact",
               "--buckets-per-octave", "4"});
  ASSERT_EQ(r.status, 0) << r.err;
  ThresholdTable t;
  ASSERT_TRUE(load_thresholds(dir.file("c4.toptheta"), &t).ok());
  EXPECT_EQ(t.metadata().buckets_per_octave, 4);
  r = run_cli(
      {"convert", c2, dir.file("c2b.toptheta"), "--to", "compact", "--buckets-per-octave", "2"});
  EXPECT_EQ(r.status, 0) << r.err;
}

TEST(ThresholdsCli, ErrorsAreOneLineWithNonZeroStatus) {
  expect_one_line_error(run_cli({}), "subcommand is required");
  expect_one_line_error(run_cli({"frobnicate"}), "unknown subcommand 'frobnicate'");
  expect_one_line_error(run_cli({"info"}), "file is required");
  expect_one_line_error(run_cli({"info", "/nonexistent/file"}), "/nonexistent/file: cannot open");
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), "x"}), "--to is required");
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), "x", "--to", "csv"}), "--to");
  expect_one_line_error(run_cli({"diff", "a"}), "b is required");
  expect_one_line_error(run_cli({"diff", "a", "b", "--tolerance", "-1"}), "--tolerance");
  const std::string bad = threshold_data_dir() + "/malformed/theta_nan.toptheta";
  expect_one_line_error(run_cli({"info", bad}), "theta_nan.toptheta:9: non-finite theta 'nan'");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--placement", "post"}),
                        "crlf.toptheta:3: placement 'pre' contradicts the expected placement 'post'");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--sdc", "x"}),
                        "applies only to the authors' format");
  const std::string bin = threshold_data_dir() + "/malformed/gzip_garbage.toptheta";
  expect_one_line_error(run_cli({"info", bin}), "binary data");
  TempDir dir;
  expect_one_line_error(run_cli({"convert", malformed("no_entries.toptheta"), dir.file("th.txt"),
                                 "--to", "reference"}),
                        "no_entries.toptheta: threshold table (layers x heads) (2 x 3) is empty");
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), dir.file("a/b/c"), "--to",
                                 "native"}),
                        "No such file or directory", 1);
  EXPECT_TRUE(dir.list().empty());
}

// 0 success, 2 usage or input error, 1 runtime failure, 3 diff beyond --tolerance.
TEST(ThresholdsCli, ExitStatuses) {
  TempDir dir;
  // 0: every subcommand on good input, nothing on stderr for a native pre-softmax file.
  for (std::vector<std::string> args :
       {std::vector<std::string>{"info", valid("crlf.toptheta")},
        {"convert", valid("crlf.toptheta"), dir.file("ok.toptheta"), "--to", "native"},
        {"diff", valid("crlf.toptheta"), valid("crlf.toptheta"), "--tolerance", "0"}}) {
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.status, 0) << args[0] << ": " << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
  }
  // 2: usage errors.
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--bogus"}), "--bogus");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--missing-heads", "silent"}),
                        "--missing-heads");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--heads", "0"}), "--heads");
  // Integer options say so, with integer bounds (CLI::PositiveNumber printed a double range up
  // to DBL_MAX; an option without an upper bound says ">= 1", not the Index maximum); a
  // tolerance must be a finite number: NaN compared false against every
  // difference and diff exited 0 on files it reported as different.
  for (const char* k : {"abc", "-1", "1.5"})
    expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--k", k}),
                          "--k: '" + std::string(k) + "' is not an integer >= 1");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--layers", "x"}),
                        "--layers: 'x' is not an integer from 1 to 1024");
  for (const char* tol : {"nan", "NaN", "inf", "-1", "abc"})
    expect_one_line_error(
        run_cli({"diff", valid("crlf.toptheta"), valid("crlf.toptheta"), "--tolerance", tol}),
        "--tolerance: '" + std::string(tol) + "' is not a finite number >= 0");
  expect_one_line_error(run_cli({"synth", "--layers", "1", "--heads", "1", "--context", "64",
                                 "--k", "4,4", "--out", dir.file("s.toptheta")}),
                        "--k: the budget 4 is given twice");
  // Integers are decimal: CLI11 alone reads them in base 0 (010 was 8, 0x10 was 16, 01025
  // was 533 and passed the bound of 1024), and saturates beyond 64 bits (--k
  // 99999999999999999999 was the Index maximum and passed ">= 1").
  for (const char* k : {"0x10", "1e3", " 5", "+"})
    expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--k", k}),
                          "--k: '" + std::string(k) + "' is not an integer >= 1");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--layers", "01025"}),
                        "--layers: '01025' is not an integer from 1 to 1024");
  expect_one_line_error(run_cli({"info", valid("crlf.toptheta"), "--k", "99999999999999999999"}),
                        "--k: '99999999999999999999' is not an integer from 1 to " +
                            std::to_string(std::numeric_limits<Index>::max()));
  {
    TempDir d10;  // dir's listing is checked below
    const std::string s10 = d10.file("s.toptheta");
    const CliResult r = run_cli({"synth", "--layers", "010", "--heads", "+02", "--context", "0064",
                                 "--k", "4", "--out", s10});
    ASSERT_EQ(r.status, 0) << r.err;
    ThresholdTable t;
    ASSERT_TRUE(load_thresholds(s10, &t).ok());
    EXPECT_EQ(t.num_layers(), 10);
    EXPECT_EQ(t.num_heads(), 2);
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("s.toptheta")));
  // 2: input errors: missing, unreadable (a directory), malformed, incomplete input.
  expect_one_line_error(run_cli({"convert", dir.file("nope"), dir.file("x"), "--to", "native"}),
                        dir.file("nope") + ": cannot open: No such file or directory");
  expect_one_line_error(run_cli({"diff", dir.path(), valid("crlf.toptheta")}), dir.path() + ": ");
  expect_one_line_error(run_cli({"diff", valid("crlf.toptheta"), malformed("theta_nan.toptheta")}),
                        "theta_nan.toptheta:9: non-finite theta 'nan'");
  for (const char* sub : {"info", "convert", "diff"}) {
    std::vector<std::string> args = {sub, malformed("missing_heads.toptheta")};
    if (std::string(sub) == "convert") args.insert(args.end(), {dir.file("y"), "--to", "native"});
    if (std::string(sub) == "diff") args.push_back(valid("crlf.toptheta"));
    expect_one_line_error(run_cli(args),
                          "missing_heads.toptheta: threshold table (layers x heads) (5 x 8) is "
                          "incomplete: 35 of 40 (layer, head) pairs have no thresholds: layer 0 "
                          "heads 1-7;");
  }
  // 2: a table the output format cannot hold (dense heads in the authors' format).
  expect_one_line_error(run_cli({"convert", valid("dense_heads.toptheta"), dir.file("th.txt"), "--to",
                                 "reference", "--placement", "post"}),
                        dir.file("th.txt") + ": cannot save: the authors' format cannot declare "
                                             "dense heads (layer 0 heads 1-2; layer 1 heads 0, 3)");
  // 1: the output cannot be written (a directory in the way; a missing directory).
  ASSERT_TRUE(std::filesystem::create_directory(dir.file("occupied")));
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), dir.file("occupied"), "--to",
                                 "native"}),
                        dir.file("occupied") + ": is a directory, not a regular file", 1);
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), dir.file("no/dir/t.txt"), "--to",
                                 "reference"}),
                        "No such file or directory", 1);
  // 3: diff beyond --tolerance (covered with entries in DiffReportsDifferencesAndHonoursTolerance);
  // here a placement difference.
  const CliResult d = run_cli({"diff", valid("crlf.toptheta"), valid("special_values.toptheta"),
                               "--tolerance", "100"});
  EXPECT_EQ(d.status, 3) << d.err;
  EXPECT_NE(d.out.find("placement:           differs (A pre, B post)"), std::string::npos) << d.out;
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"occupied", "ok.toptheta"}));
}

#if defined(__unix__) || defined(__APPLE__)
// Runs the tool's main (thresholds_cli_main) in a child process with RLIMIT_FSIZE set to
// `fsize_limit` bytes; returns the wait status and, through `err`, its error stream.
int run_cli_main_with_fsize_limit(std::vector<std::string> args, rlim_t fsize_limit,
                                  std::string* err) {
  args.insert(args.begin(), "toptheta-thresholds");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    struct rlimit lim;
    ::getrlimit(RLIMIT_FSIZE, &lim);
    lim.rlim_cur = fsize_limit;
    ::setrlimit(RLIMIT_FSIZE, &lim);
    std::ostringstream out, e;
    const int status = tools::thresholds_cli_main(int(argv.size()), argv.data(), out, e);
    const std::string text = e.str();
    (void)!::write(fds[1], text.data(), text.size());
    ::_exit(status);
  }
  ::close(fds[1]);
  err->clear();
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) err->append(buf, std::size_t(n));
  ::close(fds[0]);
  int wstatus = -1;
  if (pid < 0 || ::waitpid(pid, &wstatus, 0) != pid) return -1;
  return wstatus;
}
#endif

// Outputs that cannot be written: exit 1 (a file size limit, a device or FIFO in the way), and
// exit 2 for --sdc-out naming OUT under another spelling; nothing is replaced or left behind.
TEST(ThresholdsCli, ExitStatusesForUnwritableOutputs) {
  TempDir dir;
#if defined(__unix__) || defined(__APPLE__)
  // `ulimit -f`: the tool ignores SIGXFSZ, so the write fails with EFBIG (it used to be killed by
  // SIGXFSZ, exit 153 in a shell, leaving keep.toptheta.tmp.XXXXXX behind).
  const std::string keep = dir.file("keep.toptheta");
  write_all(keep, "old\n");
  std::string err;
  const int w = run_cli_main_with_fsize_limit(
      {"convert", valid("calibrated.toptheta"), keep, "--to", "native"}, 4096, &err);
  ASSERT_TRUE(WIFEXITED(w)) << "killed by signal " << (WIFSIGNALED(w) ? WTERMSIG(w) : 0);
  EXPECT_EQ(WEXITSTATUS(w), 1) << err;
  EXPECT_EQ(err.rfind("toptheta-thresholds: error: " + keep + ": write failed on " + keep +
                          ".tmp.", 0),
            0u)
      << err;
  EXPECT_NE(err.find(std::strerror(EFBIG)), std::string::npos) << err;
  EXPECT_EQ(read_all(keep), "old\n");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"keep.toptheta"});
  // A FIFO (or a device, as root: a copy of /dev/full) at OUT: refused, left as it is.
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  expect_one_line_error(run_cli({"convert", valid("calibrated.toptheta"), fifo, "--to", "native"}),
                        fifo + ": is a FIFO (named pipe), not a regular file; it is not replaced",
                        1);
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  if (::geteuid() == 0) {
    const std::string dev = dir.file("fulldev");
    if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 7)) == 0) {
      const CliResult r =
          run_cli({"convert", valid("calibrated.toptheta"), dev, "--to", "native"});
      expect_one_line_error(r, dev + ": is a character device, not a regular file", 1);
      EXPECT_TRUE(r.out.empty()) << r.out;
      ASSERT_EQ(::lstat(dev.c_str(), &st), 0);
      EXPECT_TRUE(S_ISCHR(st.st_mode));
      ASSERT_EQ(::unlink(dev.c_str()), 0);
    }
  }
  // The authors' format writes two files: sdc.txt refused leaves th.txt as it was (it used to be
  // replaced first, without its SDC terms), whether th.txt existed or not.
  const std::string th2 = dir.file("th2.txt");
  expect_one_line_error(run_cli({"convert", valid("calibrated.toptheta"), th2, "--to", "reference",
                                 "--sdc-out", fifo}),
                        fifo + ": is a FIFO (named pipe), not a regular file; it is not replaced",
                        1);
  EXPECT_FALSE(std::filesystem::exists(th2));
  write_all(th2, "old\n");
  expect_one_line_error(run_cli({"convert", valid("calibrated.toptheta"), th2, "--to", "reference",
                                 "--sdc-out", fifo}),
                        fifo + ": is a FIFO (named pipe), not a regular file; it is not replaced",
                        1);
  EXPECT_EQ(read_all(th2), "old\n");
  ASSERT_EQ(::unlink(th2.c_str()), 0);
  ASSERT_EQ(::unlink(fifo.c_str()), 0);
#endif
  // --sdc-out naming OUT under another spelling (it used to overwrite th.txt with the SDC lines).
  ASSERT_TRUE(std::filesystem::create_directory(dir.file("x")));
  const std::string th = dir.file("x/th.txt");
  for (const std::string& sdc : {dir.path() + "/./x/th.txt", dir.path() + "/x/../x/th.txt"}) {
    expect_one_line_error(run_cli({"convert", valid("calibrated.toptheta"), th, "--to",
                                   "reference", "--sdc-out", sdc}),
                          th + ": th.txt and sdc.txt would be the same file (" + sdc + " names " +
                              th + ")");
    EXPECT_FALSE(std::filesystem::exists(th)) << sdc;
  }
  write_all(th, "old\n");
  const std::string sdc = dir.path() + "/./x/th.txt";
  expect_one_line_error(
      run_cli({"convert", valid("calibrated.toptheta"), th, "--to", "reference", "--sdc-out", sdc}),
      th + ": th.txt and sdc.txt would be the same file (" + sdc + " names " + th + ")");
  EXPECT_EQ(read_all(th), "old\n");
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"keep.toptheta", "x"}));
}

// info summarises a table with empty heads (listing them), then fails like a strict load; dense
// heads are listed; --missing-heads dense is the explicit opt-in.
TEST(ThresholdsCli, InfoListsEmptyAndDenseHeads) {
  const std::string th = malformed("authors_missing_heads.th.txt");
  CliResult r = run_cli({"info", th, "--layers", "5", "--heads", "8"});
  EXPECT_EQ(r.status, 2);
  for (const char* want :
       {"layers:            5\n", "heads:             8\n", "entries:           5\n",
        "dense heads:       none\n",
        "empty heads:       35 of 40 have no thresholds (incomplete): layer 0 heads 1-7; layer 1 "
        "heads 1-7; layer 2 heads 1-7; layer 3 heads 1-7; layer 4 heads 1-7\n",
        "lengths:           64..64"})
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  expect_one_line_error(r, "authors_missing_heads.th.txt: threshold table (layers x heads) (5 x 8) "
                           "is incomplete: 35 of 40");

  r = run_cli({"info", th, "--layers", "5", "--heads", "8", "--missing-heads", "dense"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(r.out.find("dense heads:       35 of 40 declared dense: layer 0 heads 1-7; layer 1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("empty heads:       none\n"), std::string::npos) << r.out;

  // Without the model's shape the head count is inferred (1) and the output says so.
  r = run_cli({"info", th});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("heads:             1 (inferred from the largest index; see --heads)"),
            std::string::npos)
      << r.out;

  r = run_cli({"info", valid("dense_heads.toptheta")});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("dense heads:       4 of 8 declared dense: layer 0 heads 1-2; layer 1 "
                       "heads 0, 3\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("empty heads:       none\n"), std::string::npos) << r.out;

  r = run_cli({"info", malformed("no_entries.toptheta")});
  EXPECT_NE(r.out.find("empty heads:       6 of 6 have no thresholds (incomplete): layer 0 heads "
                       "0-2; layer 1 heads 0-2"),
            std::string::npos)
      << r.out;
  expect_one_line_error(r, "(2 x 3) is empty");

  // An incomplete authors' file becomes a complete native file only with the explicit option.
  TempDir dir;
  const std::string out = dir.file("t.toptheta");
  expect_one_line_error(run_cli({"convert", th, out, "--to", "native", "--heads", "8", "--placement",
                                 "pre"}),
                        "is incomplete");
  EXPECT_TRUE(dir.list().empty());
  r = run_cli({"convert", th, out, "--to", "native", "--heads", "8", "--placement", "pre",
               "--missing-heads", "dense"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
  EXPECT_NE(read_all(out).find("dense_heads 4 1-7\n"), std::string::npos) << read_all(out);
}

// The authors' format stores no placement: loading one without --placement says what was
// assumed; writing post-softmax thresholds to it warns that the placement is lost.
TEST(ThresholdsCli, PlacementWarnings) {
  TempDir dir;
  const std::string authors = valid("authors/th.txt");
  CliResult r = run_cli({"convert", authors, dir.file("a.toptheta"), "--to", "native"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "toptheta-thresholds: warning: " + authors +
                       ": the authors' format stores no placement; assumed pre-softmax (pass "
                       "--placement post for post-softmax thresholds)\n");
  r = run_cli({"convert", authors, dir.file("b.toptheta"), "--to", "native", "--placement", "pre"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;  // stated, not assumed
  r = run_cli({"diff", authors, valid("calibrated.toptheta")});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("warning: " + authors + ": the authors' format stores no placement; "
                       "assumed pre-softmax"),
            std::string::npos)
      << r.err;
  // info states it in the placement row (and needs no warning).
  r = run_cli({"info", authors});
  EXPECT_NE(r.out.find("placement:         pre (assumed: the authors' format does not store it; "
                       "see --placement)"),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(r.err.empty()) << r.err;

  // Post-softmax to the authors' format: a warning naming the output; the file is written.
  const std::string th = dir.file("th.txt");
  r = run_cli({"convert", valid("special_values.toptheta"), th, "--to", "reference"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "toptheta-thresholds: warning: " + th +
                       ": the authors' format cannot store the placement; these are post-softmax "
                       "thresholds, so load the file with --placement post "
                       "(LoadOptions::expected_placement) or it will be read as pre-softmax\n");
  EXPECT_FALSE(read_all(th).empty());
  // Pre-softmax: nothing to warn about.
  r = run_cli({"convert", valid("crlf.toptheta"), dir.file("th2.txt"), "--to", "reference"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;
}

// Files with a UTF-8 byte-order mark load in the tool too (the handed inputs).
TEST(ThresholdsCli, Utf8ByteOrderMark) {
  CliResult r = run_cli({"info", valid("bom/th.txt"), "--placement", "pre"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("format:            reference (authors' th.txt)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("entries:           1\n"), std::string::npos) << r.out;
  r = run_cli({"info", valid("bom.toptheta")});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("format:            native (version 1)"), std::string::npos) << r.out;
  // The handed native twin holds no entries: it is now read (not "unrecognised") and rejected as
  // empty.
  r = run_cli({"info", malformed("utf8_bom_empty_table.toptheta")});
  expect_one_line_error(r, "utf8_bom_empty_table.toptheta: threshold table (layers x heads) (1 x 1) "
                           "is empty");
}

}  // namespace
}  // namespace toptheta::testing

#else

TEST(ThresholdsCli, Skipped) { GTEST_SKIP() << "CLI11 headers not found; the tool is not built"; }

#endif
