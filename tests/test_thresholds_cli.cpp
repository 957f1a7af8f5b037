// The toptheta-thresholds command line (tools/thresholds_cli.hpp), run in-process: help on every
// subcommand, info on both formats, convert round trips, diff and its exit status, and the
// one-line error contract.

#include <gtest/gtest.h>

#if __has_include(<CLI/CLI.hpp>)

#include <sstream>
#include <string>
#include <vector>

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

void expect_one_line_error(const CliResult& r, const std::string& fragment) {
  EXPECT_EQ(r.status, 2);
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
  EXPECT_EQ(r.status, 1) << r.out;  // entries only in B
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
            1);
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
  expect_one_line_error(run_cli({"convert", valid("no_entries.toptheta"), dir.file("th.txt"),
                                 "--to", "reference"}),
                        "without entries");
  expect_one_line_error(run_cli({"convert", valid("crlf.toptheta"), dir.file("a/b/c"), "--to",
                                 "native"}),
                        "No such file or directory");
  EXPECT_TRUE(dir.list().empty());
}

}  // namespace
}  // namespace toptheta::testing

#else

TEST(ThresholdsCli, Skipped) { GTEST_SKIP() << "CLI11 headers not found; the tool is not built"; }

#endif
