// Threshold files (io/threshold_file.hpp): number round trips, the native and the authors'
// formats, validation against the malformed corpus (tests/data/thresholds/malformed/MANIFEST),
// completeness (incomplete and empty tables never load or save; dense heads declared on
// purpose; LoadOptions::missing_heads), UTF-8 byte-order marks, atomic saves, Calibrator output,
// and the fuzz seed corpus as a regression test.

#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#if defined(__linux__)
#include <sys/sysmacros.h>  // makedev
#endif
#include <unistd.h>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "threshold_file_test_util.hpp"
#include "toptheta/io/threshold_file.hpp"

// The fuzz target's properties (round trips of everything that loads) run over the seed corpus.
#include "fuzz/fuzz_threshold_loader.cpp"

namespace toptheta::testing {
namespace {

std::uint64_t bits(double d) {
  std::uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// ------------------------------------------------------------------------------------------
// Numbers
// ------------------------------------------------------------------------------------------

TEST(ThresholdNumbers, SpecialValuesRoundTripBitExact) {
  for (double v : special_thetas()) {
    const std::string s = detail::format_double(v);
    double back = 1.0;
    ASSERT_EQ(detail::parse_double(s, &back), detail::NumberParse::kOk) << s;
    EXPECT_EQ(bits(back), bits(v)) << s;
  }
  EXPECT_EQ(detail::format_double(0.1), "0.1");
  EXPECT_EQ(detail::format_double(1e-300), "1e-300");
  EXPECT_EQ(detail::format_double(-std::numeric_limits<double>::infinity()), "-inf");
  EXPECT_EQ(detail::format_double(-0.0), "-0");
}

TEST(ThresholdNumbers, RandomBitPatternsRoundTrip) {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 200000; ++i) {
    const double v = from_bits(rng());
    if (std::isnan(v)) continue;
    const std::string s = detail::format_double(v);
    double back = 0.0;
    ASSERT_EQ(detail::parse_double(s, &back), detail::NumberParse::kOk) << s;
    ASSERT_EQ(bits(back), bits(v)) << s;
  }
}

TEST(ThresholdNumbers, StrictGrammar) {
  const std::map<std::string, double> ok = {
      {"0", 0.0},       {"1e-05", 1e-05},       {".5", 0.5},       {"5.", 5.0},
      {"+2", 2.0},      {"1E3", 1000.0},        {"-1.5e+2", -150.0}, {"1e-400", 0.0},
      {"-inf", -HUGE_VAL}, {"Infinity", HUGE_VAL}, {"0.0002257227897644043", 0.0002257227897644043},
      {"-3.4028234663852886e+38", -3.4028234663852886e+38}};
  for (const auto& [tok, want] : ok) {
    double v = 7.0;
    EXPECT_EQ(detail::parse_double(tok, &v), detail::NumberParse::kOk) << tok;
    EXPECT_EQ(v, want) << tok;
  }
  double v = 0.0;
  EXPECT_EQ(detail::parse_double("nan", &v), detail::NumberParse::kOk);
  EXPECT_TRUE(std::isnan(v));
  for (const char* tok : {"", "-", "+", ".", "e5", "1e", "1e+", "0x1p3", "1,5", " 1", "1 ", "1.2.3",
                          "--1", "+-1", "nanx", "in", "1f", "0.5e1.0", "\xff"})
    EXPECT_EQ(detail::parse_double(tok, &v), detail::NumberParse::kMalformed) << tok;
  EXPECT_EQ(detail::parse_double("1e309", &v), detail::NumberParse::kOverflow);
  EXPECT_EQ(detail::parse_double("-1e99999999999999999999", &v), detail::NumberParse::kOverflow);
  std::uint64_t u = 0;
  EXPECT_TRUE(detail::parse_uint("18446744073709551615", ~std::uint64_t(0), &u));
  EXPECT_EQ(u, ~std::uint64_t(0));
  EXPECT_FALSE(detail::parse_uint("18446744073709551616", ~std::uint64_t(0), &u));
  EXPECT_FALSE(detail::parse_uint("-1", ~std::uint64_t(0), &u));
  EXPECT_FALSE(detail::parse_uint("+1", ~std::uint64_t(0), &u));
  EXPECT_FALSE(detail::parse_uint("11", 10, &u));
}

// ------------------------------------------------------------------------------------------
// Native format
// ------------------------------------------------------------------------------------------

TEST(NativeFormat, GoldenText) {
  ThresholdTable t(2, 2, 4);
  ASSERT_TRUE(t.set_k(1, 8).ok());
  t.metadata().lambda = 0.1;
  t.metadata().calibration_rows = 10;
  t.metadata().model_id = "tiny";
  ThresholdEntry e;
  e.length = 5;
  e.theta = 0.5;
  e.samples = 3;
  ASSERT_TRUE(t.set(0, 0, e).ok());
  e.length = 9;
  e.theta = -std::numeric_limits<double>::infinity();
  e.samples = 2;
  e.sdc = 0.25;
  ASSERT_TRUE(t.set(1, 1, e).ok());
  std::string text;
  EXPECT_FALSE(format_native_thresholds(t, &text).ok()) << "incomplete: heads (0, 1), (1, 0)";
  ASSERT_TRUE(t.set_dense(0, 1).ok());
  ASSERT_TRUE(t.set_dense(1, 0).ok());
  ASSERT_TRUE(format_native_thresholds(t, &text).ok());
  EXPECT_EQ(text,
            "toptheta-thresholds 1\n"
            "# Top-theta attention thresholds; format: docs/threshold-format.md\n"
            "placement pre\n"
            "layers 2\n"
            "heads 2\n"
            "k 4 8\n"
            "lambda 0.1\n"
            "calibration_rows 10\n"
            "model tiny\n"
            "dense_heads 0 1\n"
            "dense_heads 1 0\n"
            "entries 2\n"
            "# layer head length theta samples [sdc]\n"
            "0 0 5 0.5 3\n"
            "1 1 9 -inf 2 0.25\n"
            "end\n");
}

TEST(NativeFormat, RoundTripIsBitExact) {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    const ThresholdTable t = special_table(seed);
    std::string text;
    ASSERT_TRUE(format_native_thresholds(t, &text).ok());
    ThresholdTable back;
    const Status s = parse_native_thresholds(text, "mem", &back);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(thresholds_identical(t, back));
    EXPECT_EQ(back.metadata().model_id, t.metadata().model_id);  // blanks kept verbatim
    EXPECT_EQ(back.metadata().notes, t.metadata().notes);

    TempDir dir;
    const std::string path = dir.file("t.toptheta");
    ASSERT_TRUE(save_thresholds(path, t).ok());
    ThresholdTable loaded;
    ThresholdFormat fmt = ThresholdFormat::kAuto;
    ASSERT_TRUE(load_thresholds(path, &loaded, {}, &fmt).ok());
    EXPECT_EQ(fmt, ThresholdFormat::kNative);
    EXPECT_TRUE(thresholds_identical(t, loaded));
    EXPECT_EQ(read_all(path), text);
  }
}

// The geometry the calibrator records (head_dim, score scale; semantics §8) is two optional
// header lines in both native versions: absent when not recorded, so such files stay readable
// by older readers; written and read back bit-exactly; malformed values name file and line.
TEST(NativeFormat, RecordedGeometryIsOptionalAndRoundTripsInBothVersions) {
  ThresholdTable per_length(1, 1, 4);
  ThresholdEntry e;
  e.length = 9;
  e.theta = 0.5;
  e.samples = 3;
  ASSERT_TRUE(per_length.set(0, 0, e).ok());
  ThresholdTable compact = ThresholdTable::compact(1, 1, 4);
  ThresholdCurve c;
  c.knots.push_back({9, 0.5, 3});
  c.knots.push_back({20, 0.75, 5});
  ASSERT_TRUE(compact.set_curve(0, 0, c).ok());
  for (ThresholdTable* t : {&per_length, &compact}) {
    const char* version = t->is_compact() ? "version 2" : "version 1";
    std::string text;
    ASSERT_TRUE(format_native_thresholds(*t, &text).ok());
    EXPECT_EQ(text.find("head_dim"), std::string::npos) << version;
    EXPECT_EQ(text.find("score_scale"), std::string::npos) << version;
    t->metadata().head_dim = 128;
    t->metadata().score_scale = 1 / std::sqrt(128.0);
    ASSERT_TRUE(format_native_thresholds(*t, &text).ok());
    EXPECT_NE(text.find("\nhead_dim 128\nscore_scale 0.08838834764831843\n"), std::string::npos)
        << text;
    ThresholdTable back;
    const Status s = parse_thresholds(text, "mem", &back);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(back.metadata().head_dim, 128);
    EXPECT_EQ(bits(back.metadata().score_scale), bits(1 / std::sqrt(128.0)));
    EXPECT_TRUE(thresholds_identical(*t, back));
    back.metadata().head_dim = 64;
    EXPECT_FALSE(thresholds_identical(*t, back)) << "the comparison sees head_dim";
    back.metadata().head_dim = 128;
    back.metadata().score_scale = 0.125;
    EXPECT_FALSE(thresholds_identical(*t, back)) << "the comparison sees score_scale";
    // Malformed values, each on the 'head_dim' / 'score_scale' line.
    const Index line = [&] {
      Index n = 1;
      for (std::size_t i = 0; i < text.find("\nhead_dim"); ++i) n += text[i] == '\n';
      return n + 1;
    }();
    const std::pair<std::string, std::string> bad[] = {
        {"head_dim 0", "'head_dim' must be an integer in [1, 1048576], got '0'"},
        {"head_dim -8", "'head_dim' must be an integer in [1, 1048576], got '-8'"},
        {"head_dim 12.5", "'head_dim' must be an integer in [1, 1048576], got '12.5'"},
        {"head_dim 99999999999999999999",
         "'head_dim' must be an integer in [1, 1048576], got '99999999999999999999'"},
        {"head_dim", "'head_dim' takes exactly one value"},
        {"score_scale nan", "'score_scale' must be a finite number > 0, got 'nan'"},
        {"score_scale 0", "'score_scale' must be a finite number > 0, got '0'"},
        {"score_scale -0.125", "'score_scale' must be a finite number > 0, got '-0.125'"},
        {"score_scale inf", "'score_scale' must be a finite number > 0, got 'inf'"},
        {"score_scale 0.1x", "'score_scale' must be a finite number > 0, got '0.1x'"},
    };
    for (const auto& [replacement, want] : bad) {
      std::string broken = text;
      const std::string old_line = replacement.rfind("head_dim", 0) == 0
                                       ? "head_dim 128"
                                       : "score_scale 0.08838834764831843";
      broken.replace(broken.find(old_line), old_line.size(), replacement);
      const Index at = replacement.rfind("head_dim", 0) == 0 ? line : line + 1;
      ThresholdTable untouched;
      const Status bs = parse_thresholds(broken, "f", &untouched);
      EXPECT_EQ(bs.code(), StatusCode::kDataLoss) << version << ": " << replacement;
      EXPECT_NE(bs.message().find("f:" + std::to_string(at) + ": " + want), std::string::npos)
          << version << ": " << bs.message();
    }
    std::string twice = text;
    twice.insert(twice.find("head_dim 128"), "head_dim 128\n");
    EXPECT_NE(parse_thresholds(twice, "f", &back).message().find("duplicate header key 'head_dim'"),
              std::string::npos)
        << version;
    // A table whose metadata no file could hold is not written.
    t->metadata().score_scale = -1;
    EXPECT_EQ(format_native_thresholds(*t, &text).code(), StatusCode::kInvalidArgument) << version;
    t->metadata().score_scale = 0.125;
    t->metadata().head_dim = kMaxRecordedHeadDim + 1;
    EXPECT_EQ(format_native_thresholds(*t, &text).code(), StatusCode::kInvalidArgument) << version;
  }
}

TEST(NativeFormat, AcceptsCommentsBlankLinesCrlfAndAnyHeaderOrder) {
  const std::string text =
      "toptheta-thresholds 1\r\n"
      "# comment\r\n"
      "\r\n"
      "  heads 1\r\n"
      "k 3\t\r\n"
      "calibration_rows 4\r\n"
      "lambda  -0.5\r\n"
      "layers 1\r\n"
      "placement post\r\n"
      "notes  two blanks\r\n"
      "entries 2\r\n"
      "   # indented comment\r\n"
      "0 0 9 0.25 4\r\n"
      "0\t0  5   -1e-320 1 0\r\n"
      "end\r\n"
      "# trailing comment\r\n";
  ThresholdTable t;
  const Status s = parse_native_thresholds(text, "crlf", &t);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(t.placement(), Placement::kPostSoftmax);
  EXPECT_EQ(t.k(0), 3);
  EXPECT_EQ(t.metadata().lambda, -0.5);
  EXPECT_EQ(t.metadata().notes, " two blanks");
  ASSERT_EQ(t.entries(0, 0).size(), 2u);
  EXPECT_EQ(t.entries(0, 0)[0].length, 5);  // sorted on load
  EXPECT_EQ(t.entries(0, 0)[0].theta, -1e-320);
  EXPECT_EQ(t.entries(0, 0)[0].sdc, 0.0);
  EXPECT_FALSE(t.entries(0, 0)[1].has_sdc());
}

TEST(NativeFormat, UnsortedEntriesLoadWithoutQuadraticCost) {
  // 200000 entries of one (layer, head) in descending length order: sorted insertion one by one
  // would move ~10^10 entries; the loader sorts once instead.
  const Index n = 200000;
  std::string text =
      "toptheta-thresholds 1\nplacement pre\nlayers 1\nheads 1\nk 1\nlambda 0\n"
      "calibration_rows 0\nentries " + std::to_string(n) + "\n";
  for (Index L = n; L >= 1; --L) text += "0 0 " + std::to_string(L) + " 0.5 1\n";
  text += "end\n";
  ThresholdTable t;
  const Status s = parse_native_thresholds(text, "rev", &t);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_EQ(t.size(), std::size_t(n));
  EXPECT_EQ(t.entries(0, 0).front().length, 1);
  EXPECT_EQ(t.entries(0, 0).back().length, n);
  // The same for the authors' format.
  std::string th, sdc;
  ASSERT_TRUE(format_reference_thresholds(t, &th, &sdc).ok());
  std::vector<std::string> lines;
  std::istringstream in(th);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string reversed;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) reversed += *it + "\n";
  ThresholdTable r;
  ASSERT_TRUE(parse_reference_thresholds(reversed, "rev.th", &r).ok());
  EXPECT_TRUE(same_entries(t, r));
}

TEST(NativeFormat, EmptyOrIncompleteTablesNeverSave) {
  TempDir dir;
  ThresholdTable t(3, 2, 5);
  std::string text = "unchanged";
  Status s = format_native_thresholds(t, &text);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("(3 x 2) is empty: all 6 (layer, head) pairs have no thresholds"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(text, "unchanged");
  for (ThresholdFormat f : {ThresholdFormat::kNative, ThresholdFormat::kReference}) {
    s = save_thresholds(dir.file("t"), t, f);
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << to_string(f);
    EXPECT_EQ(s.message().rfind(dir.file("t") + ": cannot save: threshold table", 0), 0u)
        << s.message();
  }
  ThresholdEntry e;
  e.length = 9;
  ASSERT_TRUE(t.set(2, 1, e).ok());
  s = save_thresholds(dir.file("t"), t);
  EXPECT_NE(s.message().find("5 of 6 (layer, head) pairs have no thresholds: layer 0 heads 0-1; "
                             "layer 1 heads 0-1; layer 2 head 0"),
            std::string::npos)
      << s.message();
  EXPECT_TRUE(dir.list().empty()) << "nothing is written";
}

TEST(NativeFormat, DenseHeadsRoundTrip) {
  ThresholdTable t = special_table(3);  // 2 x 3, every head has entries
  ThresholdTable d(2, 5, 4);            // two more heads per layer, declared dense
  for (Index l = 0; l < 2; ++l) {
    ASSERT_TRUE(d.set_k(l, t.k(l)).ok());
    for (Index h = 0; h < 3; ++h)
      for (const ThresholdEntry& e : t.entries(l, h)) ASSERT_TRUE(d.set(l, h + (h > 0), e).ok());
    ASSERT_TRUE(d.set_dense(l, 1).ok());
    ASSERT_TRUE(d.set_dense(l, 4).ok());
  }
  d.metadata() = t.metadata();
  std::string text;
  ASSERT_TRUE(format_native_thresholds(d, &text).ok());
  EXPECT_NE(text.find("\ndense_heads 0 1 4\ndense_heads 1 1 4\nentries "), std::string::npos)
      << text.substr(0, 400);
  ThresholdTable back;
  const Status s = parse_native_thresholds(text, "mem", &back);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(thresholds_identical(d, back));
  EXPECT_TRUE(back.is_dense(1, 4));
  // Dense heads are part of the identity of a table.
  ThresholdTable other = back;
  ASSERT_TRUE(other.set_dense(1, 4, false).ok());
  EXPECT_FALSE(thresholds_identical(back, other));
  // The sample file.
  ThresholdTable sample;
  ASSERT_TRUE(load_thresholds(threshold_data_dir() + "/valid/dense_heads.toptheta", &sample).ok());
  EXPECT_EQ(sample.describe_heads(true), "layer 0 heads 1-2; layer 1 heads 0, 3");
  EXPECT_EQ(sample.size(), 4u);
  EXPECT_TRUE(sample.validate().ok());
}

TEST(NativeFormat, ChecksCallerExpectations) {
  const ThresholdTable t = special_table();  // post-softmax, 2 x 3
  std::string text;
  ASSERT_TRUE(format_native_thresholds(t, &text).ok());
  ThresholdTable out;
  LoadOptions o;
  o.expected_placement = Placement::kPreSoftmax;
  Status s = parse_native_thresholds(text, "f", &out, o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "f:3: placement 'post' contradicts the expected placement 'pre'");
  o = {};
  o.expected_layers = 2;
  o.expected_heads = 4;
  s = parse_native_thresholds(text, "f", &out, o);
  EXPECT_EQ(s.message(), "f:5: the file has 3 heads but 4 are expected");
  o.expected_heads = 3;
  o.expected_placement = Placement::kPostSoftmax;
  EXPECT_TRUE(parse_native_thresholds(text, "f", &out, o).ok());
}

TEST(NativeFormat, RefusesToWriteWhatCannotBeRead) {
  ThresholdTable t(1, 1, 4);
  ThresholdEntry one;
  one.length = 5;
  ASSERT_TRUE(t.set(0, 0, one).ok());
  std::string text = "unchanged";
  t.metadata().model_id = "two\nlines";
  Status s = format_native_thresholds(t, &text);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model text cannot be written"), std::string::npos) << s.message();
  EXPECT_EQ(text, "unchanged");
  t.metadata().model_id = "";
  t.metadata().notes = "bad \xff utf-8";
  EXPECT_FALSE(format_native_thresholds(t, &text).ok());
  t.metadata().notes = "";
  t.metadata().lambda = std::numeric_limits<double>::infinity();
  EXPECT_FALSE(format_native_thresholds(t, &text).ok());
  ThresholdTable big(kMaxThresholdLayers + 1, 1, 4);
  EXPECT_FALSE(format_native_thresholds(big, &text).ok());
  EXPECT_EQ(text, "unchanged");
}

TEST(NativeFormat, ErrorLeavesOutputUntouched) {
  ThresholdTable out(1, 1, 99);
  const Status s = parse_thresholds("toptheta-thresholds 1\nplacement pre\n", "x", &out);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(out.num_layers(), 1);
  EXPECT_EQ(out.k(0), 99);
}

// ------------------------------------------------------------------------------------------
// Authors' format
// ------------------------------------------------------------------------------------------

TEST(ReferenceFormat, WritesTheAuthorsLayout) {
  ThresholdTable t(2, 2, 64);
  ASSERT_TRUE(t.set_k(1, 32).ok());
  ThresholdEntry e;
  e.length = 70;
  e.theta = 0.5;
  e.samples = 2;
  ASSERT_TRUE(t.set(0, 0, e).ok());
  ASSERT_TRUE(t.set(1, 0, e).ok());
  e.length = 1219;
  e.theta = 0.0002257227897644043;
  e.samples = 4;
  ASSERT_TRUE(t.set(1, 1, e).ok());
  e.length = 65;
  e.theta = -3.4028234663852886e+38;
  e.samples = 1;
  e.sdc = 1e-05;
  ASSERT_TRUE(t.set(0, 1, e).ok());
  e.length = 66;
  e.theta = 0.1;
  ASSERT_TRUE(t.set(0, 1, e).ok());
  std::string th, sdc;
  ASSERT_TRUE(format_reference_thresholds(t, &th, &sdc).ok());
  EXPECT_EQ(th,
            "L0_H0:70 0.5 2 64\n"
            "L0_H1:65 -3.4028234663852886e+38 1 64\n"
            "L0_H1:66 0.1 1 64\n"
            "L1_H0:70 0.5 2 32\n"
            "L1_H1:1219 0.0002257227897644043 4 32\n");
  EXPECT_EQ(sdc,
            "L0_H1:65 1e-05 1\n"
            "L0_H1:66 1e-05 1\n");
}

TEST(ReferenceFormat, RoundTripIsBitExact) {
  for (std::uint64_t seed : {4u, 5u}) {
    const ThresholdTable t = special_table(seed);
    std::string th, sdc;
    ASSERT_TRUE(format_reference_thresholds(t, &th, &sdc).ok());
    LoadOptions o;
    o.expected_placement = t.placement();
    ThresholdTable back;
    const Status s = parse_reference_thresholds(th, "th.txt", &back, o, sdc, "sdc.txt");
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(same_entries(t, back));
    EXPECT_EQ(back.metadata().lambda, 0.0);
    EXPECT_EQ(back.metadata().calibration_rows, 0u);

    TempDir dir;
    ASSERT_TRUE(save_thresholds(dir.file("th.txt"), t, ThresholdFormat::kReference).ok());
    EXPECT_EQ(dir.list(), (std::vector<std::string>{"sdc.txt", "th.txt"}));
    EXPECT_EQ(read_all(dir.file("th.txt")), th);
    EXPECT_EQ(read_all(dir.file("sdc.txt")), sdc);
    o.sdc_path = dir.file("sdc.txt");
    ThresholdTable loaded;
    ThresholdFormat fmt = ThresholdFormat::kAuto;
    ASSERT_TRUE(load_thresholds(dir.file("th.txt"), &loaded, o, &fmt).ok());
    EXPECT_EQ(fmt, ThresholdFormat::kReference);
    EXPECT_TRUE(same_entries(t, loaded));
  }
}

TEST(ReferenceFormat, SdcPathAndNoSdcFile) {
  TempDir dir;
  ThresholdTable t = special_table(7, /*all_sdc=*/true);
  SaveOptions so;
  so.format = ThresholdFormat::kReference;
  so.sdc_path = dir.file("terms.txt");
  ASSERT_TRUE(save_thresholds(dir.file("th.txt"), t, so).ok());
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"terms.txt", "th.txt"}));
  // Without SDC terms no sdc.txt is written.
  ThresholdTable plain(1, 1, 2);
  ThresholdEntry e;
  e.length = 3;
  ASSERT_TRUE(plain.set(0, 0, e).ok());
  TempDir dir2;
  ASSERT_TRUE(save_thresholds(dir2.file("th.txt"), plain, ThresholdFormat::kReference).ok());
  EXPECT_EQ(dir2.list(), (std::vector<std::string>{"th.txt"}));
  EXPECT_EQ(read_all(dir2.file("th.txt")), "L0_H0:3 0 0 2\n");
}

// An SDC path naming th.txt under another spelling is refused before anything is written (the
// guard compared strings, so `./x/th.txt` overwrote x/th.txt with the SDC lines).
TEST(ReferenceFormat, SdcPathNamingTheSameFileIsRefused) {
  TempDir dir;
  ASSERT_TRUE(std::filesystem::create_directory(dir.file("x")));
  ASSERT_TRUE(std::filesystem::create_directory(dir.file("y")));
  const std::string th = dir.file("x/th.txt");
  const ThresholdTable t = special_table(7, /*all_sdc=*/true);
  ASSERT_EQ(::symlink(th.c_str(), dir.file("y/link.txt").c_str()), 0);  // dangling until saved
  for (bool exists : {false, true}) {
    if (exists) write_all(th, "old\n");
    for (const std::string& sdc :
         {dir.path() + "/./x/th.txt", dir.path() + "/x/../x/th.txt", dir.path() + "/y/../x/th.txt",
          dir.path() + "//x//th.txt", dir.file("y/link.txt")}) {
      if (!exists && sdc == dir.file("y/link.txt")) continue;  // a dangling link is replaced
      SaveOptions so;
      so.format = ThresholdFormat::kReference;
      so.sdc_path = sdc;
      const Status s = save_thresholds(th, t, so);
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << sdc << ": " << s.message();
      EXPECT_EQ(s.message(),
                th + ": th.txt and sdc.txt would be the same file (" + sdc + " names " + th + ")");
      if (exists) {
        EXPECT_EQ(read_all(th), "old\n");
      }
      EXPECT_EQ(dir.list(), (std::vector<std::string>{"x", "y"}));
      EXPECT_EQ(std::filesystem::exists(th), exists) << sdc;
    }
  }
  // A different file in the same directory is fine.
  SaveOptions so;
  so.format = ThresholdFormat::kReference;
  so.sdc_path = dir.path() + "/./x/sdc.txt";
  ASSERT_TRUE(save_thresholds(th, t, so).ok());
  ThresholdTable back;
  LoadOptions lo;
  lo.sdc_path = dir.file("x/sdc.txt");
  ASSERT_TRUE(load_thresholds(th, &back, lo).ok());
}

TEST(ReferenceFormat, ShapeInferredOrExpected) {
  const std::string th = "L0_H0:5 0.5 3 4\nL0_H1:5 0.5 3 4\nL0_H2:5 0.5 3 4\n"
                         "L1_H0:6 -1.5 2 8\nL1_H1:6 -1.5 2 8\nL1_H2:6 -1.5 2 8\n";
  ThresholdTable t;
  ASSERT_TRUE(parse_reference_thresholds(th, "th", &t).ok());
  EXPECT_EQ(t.num_layers(), 2);
  EXPECT_EQ(t.num_heads(), 3);
  EXPECT_EQ(t.k(0), 4);
  EXPECT_EQ(t.k(1), 8);
  EXPECT_EQ(t.placement(), Placement::kPreSoftmax);
  LoadOptions o;
  o.expected_layers = 2;
  o.expected_heads = 3;
  o.expected_placement = Placement::kPostSoftmax;
  ASSERT_TRUE(parse_reference_thresholds(th, "th", &t, o).ok());
  EXPECT_EQ(t.num_heads(), 3);
  EXPECT_EQ(t.placement(), Placement::kPostSoftmax);
  o.expected_heads = 8;  // heads 3..7 have no thresholds
  Status s = parse_reference_thresholds(th, "th", &t, o);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("th: threshold table (layers x heads) (2 x 8) is incomplete: 10 of 16 "
                             "(layer, head) pairs have no thresholds: layer 0 heads 3-7; layer 1 "
                             "heads 3-7 ("),
            std::string::npos)
      << s.message();
  o.expected_heads = 0;  // a gap in the inferred shape: head 1 of layer 1
  s = parse_reference_thresholds("L0_H0:5 0.5 3 4\nL0_H1:5 0.5 3 4\nL1_H0:6 -1.5 2 8\n", "th", &t, o);
  EXPECT_NE(s.message().find("1 of 4 (layer, head) pairs have no thresholds: layer 1 head 1; the "
                             "head count is inferred from the largest indices in the file ("),
            std::string::npos)
      << s.message();
  o.expected_heads = 3;
  o.expected_layers = 3;  // layer 2 has no entries: its k is unknown
  s = parse_reference_thresholds(th, "th", &t, o);
  EXPECT_EQ(s.message(), "th: layer 2 has no entries, so its k is unknown (the authors' format "
                         "stores k only on entry lines)");
  o.expected_layers = Index(1) << 40;  // refused before anything is allocated
  s = parse_reference_thresholds(th, "th", &t, o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("exceeds the loader limits"), std::string::npos) << s.message();
}

TEST(ReferenceFormat, RefusesTablesItCannotRepresent) {
  std::string th = "x", sdc = "y";
  ThresholdTable empty(1, 1, 4);
  EXPECT_NE(format_reference_thresholds(empty, &th, &sdc).message().find("is empty"),
            std::string::npos);
  ThresholdTable gap(2, 1, 4);
  ThresholdEntry e;
  e.length = 9;
  ASSERT_TRUE(gap.set(1, 0, e).ok());
  Status s = format_reference_thresholds(gap, &th, &sdc);
  EXPECT_NE(s.message().find("no thresholds: layer 0 head 0"), std::string::npos) << s.message();
  // Dense heads: valid, but the authors' format cannot declare them.
  ASSERT_TRUE(gap.set_dense(0, 0).ok());
  ASSERT_TRUE(gap.validate().ok());
  s = format_reference_thresholds(gap, &th, &sdc);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("the authors' format cannot declare dense heads (layer 0 head 0)"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(th, "x");
  EXPECT_EQ(sdc, "y");
}

// The handed case: an authors' th.txt with thresholds for query head 0 only, loaded for an
// 8-head model, was accepted and ran heads 1..7 dense. Now both formats reject it the same way,
// and running those heads dense takes an explicit LoadOptions::missing_heads.
TEST(ReferenceFormat, MissingHeadsAreAnErrorInEveryFormat) {
  const std::string dir = threshold_data_dir() + "/malformed/";
  LoadOptions o;
  o.expected_layers = 5;
  o.expected_heads = 8;
  const std::string want =
      "threshold table (layers x heads) (5 x 8) is incomplete: 35 of 40 (layer, head) pairs have "
      "no thresholds: layer 0 heads 1-7; layer 1 heads 1-7; layer 2 heads 1-7; layer 3 heads "
      "1-7; layer 4 heads 1-7 (";
  for (const char* name : {"authors_missing_heads.th.txt", "missing_heads.toptheta"}) {
    ThresholdTable t(1, 1, 123);
    Status s = load_thresholds(dir + name, &t, o);
    EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << name;
    EXPECT_EQ(s.message().rfind(dir + name + ": " + want, 0), 0u) << s.message();
    EXPECT_EQ(t.k(0), 123) << "output modified on error";
    // Explicit opt-in: the missing heads are declared dense in the loaded table.
    o.missing_heads = MissingHeads::kDense;
    s = load_thresholds(dir + name, &t, o);
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_TRUE(t.validate().ok());
    EXPECT_EQ(t.num_dense_heads(), 35u);
    EXPECT_EQ(t.describe_heads(true),
              "layer 0 heads 1-7; layer 1 heads 1-7; layer 2 heads 1-7; layer 3 heads 1-7; layer 4 "
              "heads 1-7");
    EXPECT_EQ(t.lookup(3, 5, 64).theta, -std::numeric_limits<double>::infinity());
    EXPECT_EQ(t.lookup(3, 0, 64).theta, 0.5);
    // Inspection: loaded as it is, incomplete.
    o.missing_heads = MissingHeads::kKeepEmpty;
    ASSERT_TRUE(load_thresholds(dir + name, &t, o).ok());
    EXPECT_EQ(t.num_missing_heads(), 35u);
    EXPECT_EQ(t.num_dense_heads(), 0u);
    EXPECT_FALSE(t.validate().ok());
    EXPECT_TRUE(t.validate_entries().ok());
    o.missing_heads = MissingHeads::kError;
  }
  // Names of the option values.
  MissingHeads m = MissingHeads::kError;
  EXPECT_TRUE(parse("dense", m));
  EXPECT_EQ(m, MissingHeads::kDense);
  EXPECT_TRUE(parse("keep-empty", m));
  EXPECT_EQ(std::string(to_string(m)), "keep-empty");
  EXPECT_FALSE(parse("silent", m));
}

// A UTF-8 byte-order mark (written by some editors) is skipped in both formats; line numbers in
// errors count as if it were not there.
TEST(ThresholdFile, Utf8ByteOrderMarkIsSkipped) {
  const std::string valid = threshold_data_dir() + "/valid/";
  const std::string bom = "\xef\xbb\xbf";
  EXPECT_EQ(read_all(valid + "bom/th.txt").substr(0, 3), bom);  // the handed files have one
  EXPECT_EQ(read_all(valid + "bom.toptheta").substr(0, 3), bom);
  ThresholdTable t;
  ThresholdFormat fmt = ThresholdFormat::kAuto;
  Status s = load_thresholds(valid + "bom/th.txt", &t, {}, &fmt);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(fmt, ThresholdFormat::kReference);
  EXPECT_EQ(t.k(0), 1);
  EXPECT_EQ(t.lookup(0, 0, 2).theta, 0.5);
  s = load_thresholds(valid + "bom.toptheta", &t, {}, &fmt);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(fmt, ThresholdFormat::kNative);
  EXPECT_EQ(t.lookup(0, 0, 3).theta, 0.5);
  // Detection and the forced formats skip it too; the sdc.txt of a pair as well.
  EXPECT_EQ(detect_threshold_format(bom + "toptheta-thresholds 1\n"), ThresholdFormat::kNative);
  EXPECT_EQ(detect_threshold_format(bom + "L0_H0:2 0.5 1 1\n"), ThresholdFormat::kReference);
  LoadOptions o;
  o.format = ThresholdFormat::kReference;
  ASSERT_TRUE(parse_thresholds(bom + "L0_H0:2 0.5 1 1\n", "th", &t, o).ok());
  ASSERT_TRUE(parse_reference_thresholds(bom + "L0_H0:2 0.5 1 1\n", "th", &t, {},
                                         bom + "L0_H0:2 0.25 1\n", "sdc")
                  .ok());
  EXPECT_EQ(t.lookup(0, 0, 2).sdc, 0.25);
  // Line numbers: an error on line 3 is reported on line 3.
  s = parse_thresholds(bom + "L0_H0:2 0.5 1 1\n\nL0_H0:3 x 1 1\n", "th", &t);
  EXPECT_EQ(s.message(), "th:3: malformed number 'x' for theta");
  // A BOM anywhere else is not skipped, and a lone BOM is an empty file.
  s = parse_thresholds("L0_H0:2 0.5 1 1\n" + bom + "L0_H0:3 0.5 1 1\n", "th", &t);
  EXPECT_EQ(s.message(), "th:2: malformed key '\\xef\\xbb\\xbfL0_H0:3': expected "
                         "L<layer>_H<head>:<length>");
  s = parse_thresholds(bom, "f", &t);
  EXPECT_EQ(s.message(), "f: empty file: no thresholds");
}

TEST(ThresholdFile, DetectsTheFormat) {
  EXPECT_EQ(detect_threshold_format("toptheta-thresholds 1\n"), ThresholdFormat::kNative);
  EXPECT_EQ(detect_threshold_format("L0_H0:5 0.5 3 4\n"), ThresholdFormat::kReference);
  EXPECT_EQ(detect_threshold_format("\n# c\n  L12_H0:5 0.5 3 4\n"), ThresholdFormat::kReference);
  EXPECT_EQ(detect_threshold_format("Layer 0\n"), ThresholdFormat::kAuto);
  EXPECT_EQ(detect_threshold_format(""), ThresholdFormat::kAuto);
  EXPECT_EQ(detect_threshold_format("L"), ThresholdFormat::kAuto);
  ThresholdFormat f = ThresholdFormat::kAuto;
  EXPECT_TRUE(parse("reference", f));
  EXPECT_EQ(f, ThresholdFormat::kReference);
  EXPECT_FALSE(parse("csv", f));
}

// ------------------------------------------------------------------------------------------
// Sample files and the malformed corpus
// ------------------------------------------------------------------------------------------

TEST(ThresholdFile, ValidSamplesLoad) {
  const std::string dir = threshold_data_dir() + "/valid";
  ThresholdTable native, ref;
  Status s = load_thresholds(dir + "/calibrated.toptheta", &native);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(native.num_layers(), 3);
  EXPECT_EQ(native.num_heads(), 4);
  EXPECT_TRUE(native.has_sdc());
  // calibrated_reference/ is `toptheta-thresholds convert calibrated.toptheta ... --to reference`.
  LoadOptions o;
  o.sdc_path = dir + "/calibrated_reference/sdc.txt";
  s = load_thresholds(dir + "/calibrated_reference/th.txt", &ref, o);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(same_entries(native, ref));

  o.sdc_path = dir + "/authors/sdc.txt";
  s = load_thresholds(dir + "/authors/th.txt", &ref, o);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(ref.k(0), 64);
  EXPECT_EQ(ref.entries(1, 1).back().theta, 0.0002257227897644043);

  for (const char* name :
       {"special_values.toptheta", "crlf.toptheta", "dense_heads.toptheta", "bom.toptheta"}) {
    s = load_thresholds(dir + "/" + name, &native);
    EXPECT_TRUE(s.ok()) << name << ": " << s.to_string();
  }
}

struct MalformedCase {
  std::string file, where, fragment;
  LoadOptions options;
};

std::vector<MalformedCase> read_manifest(const std::string& dir) {
  std::vector<MalformedCase> cases;
  std::istringstream in(read_all(dir + "/MANIFEST"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::vector<std::string> cols;
    std::size_t b = 0;
    for (std::size_t t; (t = line.find('\t', b)) != std::string::npos; b = t + 1)
      cols.push_back(line.substr(b, t - b));
    cols.push_back(line.substr(b));
    EXPECT_GE(cols.size(), 3u) << line;
    if (cols.size() < 3) continue;
    MalformedCase c{cols[0], cols[1], cols[2], {}};
    if (cols.size() > 3) {
      std::istringstream opts(cols[3]);
      std::string kv;
      while (std::getline(opts, kv, ',')) {
        const std::string k = kv.substr(0, kv.find('=')), v = kv.substr(kv.find('=') + 1);
        if (k == "placement") {
          Placement p = Placement::kPreSoftmax;
          EXPECT_TRUE(parse(v, p)) << kv;
          c.options.expected_placement = p;
        } else if (k == "layers") {
          c.options.expected_layers = std::stoi(v);
        } else if (k == "heads") {
          c.options.expected_heads = std::stoi(v);
        } else if (k == "format") {
          EXPECT_TRUE(parse(v, c.options.format)) << kv;
        } else if (k == "sdc") {
          c.options.sdc_path = dir + "/" + v;
        } else {
          ADD_FAILURE() << "unknown option " << kv;
        }
      }
    }
    cases.push_back(c);
  }
  return cases;
}

TEST(ThresholdFile, MalformedCorpusIsRejectedWithTheExpectedMessage) {
  const std::string dir = threshold_data_dir() + "/malformed";
  const std::vector<MalformedCase> cases = read_manifest(dir);
  EXPECT_GE(cases.size(), 30u);
  std::size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n == "MANIFEST" || (n.size() > 8 && n.compare(n.size() - 8, 8, ".sdc.txt") == 0)) continue;
    ++files;
    bool listed = false;
    for (const auto& c : cases) listed = listed || c.file == n;
    EXPECT_TRUE(listed) << n << " is not in MANIFEST";
  }
  EXPECT_EQ(files, cases.size());
  for (const auto& c : cases) {
    ThresholdTable out(1, 1, 123);
    const Status s = load_thresholds(dir + "/" + c.file, &out, c.options);
    ASSERT_FALSE(s.ok()) << c.file << " was accepted";
    const std::string want = c.where + ": " + c.fragment;
    EXPECT_NE(s.message().find(want), std::string::npos)
        << c.file << "\n  expected: ..." << want << "\n  got:      " << s.message();
    EXPECT_EQ(s.message().find('\n'), std::string::npos) << c.file;
    EXPECT_EQ(out.k(0), 123) << c.file << ": output modified on error";
    // The same bytes parsed in memory fail the same way (file system aside).
    if (c.options.sdc_path.empty()) {
      const Status m = parse_thresholds(read_all(dir + "/" + c.file), c.file, &out, c.options);
      EXPECT_EQ(m.message(), s.message().substr(s.message().size() - m.message().size()))
          << c.file;
    }
  }
}

// ------------------------------------------------------------------------------------------
// Atomic saves
// ------------------------------------------------------------------------------------------

// A new file gets 0666 less the umask, like any file open(2) creates (it got 0644 whatever the
// umask: a private umask of 077 gave a world-readable file); a replaced file keeps its mode.
TEST(AtomicSave, ReplacesAndKeepsMode) {
  TempDir dir;
  const std::string path = dir.file("t.toptheta");
  struct UmaskGuard {  // restores the process's umask however the test ends
    mode_t old = ::umask(077);
    ~UmaskGuard() { ::umask(old); }
  } guard;
  struct stat st;
  const std::vector<std::pair<mode_t, unsigned>> cases = {
      {077, 0600u}, {022, 0644u}, {002, 0664u}, {0, 0666u}};
  for (const auto& [mask, want] : cases) {
    ::umask(mask);
    ::unlink(path.c_str());
    ASSERT_TRUE(save_thresholds(path, special_table(1)).ok());
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, want) << "umask 0" << std::oct << mask;
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  const ThresholdTable t2 = special_table(2);
  ASSERT_TRUE(save_thresholds(path, t2).ok());  // umask 0: the old mode is kept all the same
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ThresholdTable back;
  ASSERT_TRUE(load_thresholds(path, &back).ok());
  EXPECT_TRUE(thresholds_identical(back, t2));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"t.toptheta"});
}

TEST(AtomicSave, FailedWriteLeavesOldFileAndNoTemporary) {
  TempDir dir;
  const std::string path = dir.file("t.toptheta");
  write_all(path, "old contents\n");
  // A file size limit makes write() fail with EFBIG after the temporary file was created.
  const ThresholdTable big = calibrated_table(3, false);
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old_limit;
  lim.rlim_cur = 1000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  const Status s = save_thresholds(path, big);
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_NE(s.message().find("write failed"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(std::strerror(EFBIG)), std::string::npos) << s.message();
  EXPECT_EQ(read_all(path), "old contents\n");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"t.toptheta"});
}

TEST(AtomicSave, DirectoryInTheWayLeavesTargetAndNoTemporary) {
  TempDir dir;
  const std::string target = dir.file("occupied");
  ASSERT_TRUE(std::filesystem::create_directory(target));
  write_all(dir.file("occupied/inside"), "keep");
  const Status s = save_thresholds(target, special_table(1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_EQ(s.message(), target + ": is a directory, not a regular file; it is not replaced");
  EXPECT_EQ(read_all(dir.file("occupied/inside")), "keep");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"occupied"});
}

// A device, FIFO or socket at the output path is refused, not replaced by a regular file (saving
// to a copy of /dev/null used to turn it into a regular file and report success).
TEST(AtomicSave, NonRegularTargetIsRefusedAndLeftAlone) {
  TempDir dir;
  const std::string fifo = dir.file("pipe");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0) << std::strerror(errno);
  Status s = save_thresholds(fifo, special_table(1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_EQ(s.message(), fifo + ": is a FIFO (named pipe), not a regular file; it is not replaced");
  struct stat st;
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_EQ(dir.list(), std::vector<std::string>{"pipe"});
  // The authors' format checks th.txt the same way (and writes no sdc.txt).
  SaveOptions so;
  so.format = ThresholdFormat::kReference;
  s = save_thresholds(fifo, special_table(7, /*all_sdc=*/true), so);
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.message();
  EXPECT_EQ(dir.list(), std::vector<std::string>{"pipe"});
  // A character device (mknod needs root; the FIFO above covers the check otherwise).
  if (::geteuid() == 0) {
    const std::string dev = dir.file("fulldev");
    if (::mknod(dev.c_str(), S_IFCHR | 0666, makedev(1, 7)) == 0) {
      s = save_thresholds(dev, special_table(1));
      EXPECT_EQ(s.code(), StatusCode::kIoError);
      EXPECT_EQ(s.message(), dev + ": is a character device, not a regular file; it is not replaced");
      ASSERT_EQ(::lstat(dev.c_str(), &st), 0);
      EXPECT_TRUE(S_ISCHR(st.st_mode));
      EXPECT_EQ(dir.list(), (std::vector<std::string>{"fulldev", "pipe"}));
    }
  }
  // A symbolic link is still replaced by a regular file (the link target is not written).
  const std::string target = dir.file("target.toptheta");
  write_all(target, "keep\n");
  const std::string link = dir.file("link.toptheta");
  ASSERT_EQ(::symlink(target.c_str(), link.c_str()), 0);
  ASSERT_TRUE(save_thresholds(link, special_table(1)).ok());
  ASSERT_EQ(::lstat(link.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(read_all(target), "keep\n");
}

TEST(AtomicSave, MissingDirectoryReportsErrno) {
  TempDir dir;
  const Status s = save_thresholds(dir.file("no/such/dir/t.toptheta"), special_table(1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kIoError);
  EXPECT_NE(s.message().find(std::strerror(ENOENT)), std::string::npos) << s.message();
  EXPECT_TRUE(dir.list().empty());
}

TEST(AtomicSave, ReadOnlyDirectory) {
  if (::geteuid() == 0) GTEST_SKIP() << "running as root: directory permissions are not enforced";
  TempDir dir;
  const std::string path = dir.file("t.toptheta");
  write_all(path, "old\n");
  ASSERT_EQ(::chmod(dir.path().c_str(), 0555), 0);
  const Status s = save_thresholds(path, special_table(1));
  ::chmod(dir.path().c_str(), 0755);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find(std::strerror(EACCES)), std::string::npos) << s.message();
  EXPECT_EQ(read_all(path), "old\n");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"t.toptheta"});
}

TEST(AtomicSave, ReadErrors) {
  TempDir dir;
  ThresholdTable t;
  Status s = load_thresholds(dir.file("missing"), &t);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing: cannot open"), std::string::npos) << s.message();
  s = load_thresholds(dir.path(), &t);
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.to_string();
  write_all(dir.file("native"), "toptheta-thresholds 1\n");
  LoadOptions o;
  o.sdc_path = dir.file("sdc.txt");
  s = load_thresholds(dir.file("native"), &t, o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

// A threshold file is text: reading stops after the 64 KiB read that holds the first NUL byte,
// and the parser refuses it at its line and column. /dev/zero was read up to the 1 GiB limit
// (12 s, 1 GiB of memory) before `file is larger than 1073741824 bytes`.
TEST(AtomicSave, TextReadsStopAtTheFirstNulByte) {
  std::string data;
  ASSERT_TRUE(read_file("/dev/zero", &data, kMaxThresholdFileBytes, FileContent::kText).ok());
  EXPECT_EQ(data.size(), std::size_t(1) << 16);
  const Status binary = read_file("/dev/zero", &data, std::size_t(1) << 20);
  EXPECT_EQ(binary.code(), StatusCode::kDataLoss) << binary.to_string();
  EXPECT_NE(binary.message().find("larger than 1048576 bytes"), std::string::npos);

  ThresholdTable t;
  ThresholdSet set;
  for (const Status& s :
       {load_thresholds("/dev/zero", &t), load_threshold_set("/dev/zero", &set)}) {
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
    EXPECT_EQ(s.message(), "/dev/zero:1: binary data: NUL byte at column 1");
  }
  // The line and column of a NUL byte past the first read, after lines of valid text: the same
  // error as when the whole file is parsed.
  TempDir dir;
  std::string th;
  for (int i = 0; i < 4000; ++i) th += "L0_H0:" + std::to_string(10 + i) + " 0.5 3 2\n";
  write_all(dir.file("th.txt"),
            std::string(th + std::string("L0_H1:10 0.5\0 3 2\n", 18) + "L0_H1:11 0.5 3 2\n"));
  ASSERT_GT(th.size(), std::size_t(1) << 16);
  const Status s = load_thresholds(dir.file("th.txt"), &t);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.to_string();
  EXPECT_NE(s.message().find("th.txt:4001: binary data: NUL byte at column 13"), std::string::npos)
      << s.message();
  // An SDC file merged into the authors' format is read the same way.
  write_all(dir.file("small.txt"), "L0_H0:10 0.5 3 2\n");
  LoadOptions o;
  o.sdc_path = "/dev/zero";
  const Status sdc = load_thresholds(dir.file("small.txt"), &t, o);
  EXPECT_EQ(sdc.code(), StatusCode::kDataLoss) << sdc.to_string();
  EXPECT_NE(sdc.message().find("/dev/zero:1: binary data: NUL byte"), std::string::npos)
      << sdc.message();
}

// ------------------------------------------------------------------------------------------
// Calibrator output
// ------------------------------------------------------------------------------------------

TEST(CalibratedThresholds, RoundTripBothFormats) {
  for (bool sdc : {false, true}) {
    const ThresholdTable t = calibrated_table(11, sdc);
    ASSERT_TRUE(t.validate().ok());
    ASSERT_FALSE(t.empty());
    EXPECT_EQ(t.has_sdc(), sdc);
    TempDir dir;
    ASSERT_TRUE(save_thresholds(dir.file("cal.toptheta"), t).ok());
    ThresholdTable back;
    ASSERT_TRUE(load_thresholds(dir.file("cal.toptheta"), &back).ok());
    EXPECT_TRUE(thresholds_identical(t, back));

    ASSERT_TRUE(save_thresholds(dir.file("th.txt"), t, ThresholdFormat::kReference).ok());
    LoadOptions o;
    o.expected_layers = t.num_layers();
    o.expected_heads = t.num_heads();
    if (sdc) o.sdc_path = dir.file("sdc.txt");
    ThresholdTable ref;
    const Status s = load_thresholds(dir.file("th.txt"), &ref, o);
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(same_entries(t, ref));
  }
}

// Regenerates tests/data/thresholds/valid/calibrated.toptheta (run with
// TOPTHETA_REGENERATE_THRESHOLD_SAMPLES=1); the converted calibrated_reference/ files come from
// `toptheta-thresholds convert`.
TEST(CalibratedThresholds, RegenerateSample) {
  if (!std::getenv("TOPTHETA_REGENERATE_THRESHOLD_SAMPLES"))
    GTEST_SKIP() << "set TOPTHETA_REGENERATE_THRESHOLD_SAMPLES=1 to rewrite the sample file";
  ThresholdTable t = calibrated_table(2025, true);
  t.metadata().notes = "Calibrator on seeded random score rows (tests/threshold_file_test_util.hpp)";
  ASSERT_TRUE(save_thresholds(threshold_data_dir() + "/valid/calibrated.toptheta", t).ok());
}

// ------------------------------------------------------------------------------------------
// Fuzz corpus as a regression test
// ------------------------------------------------------------------------------------------

TEST(ThresholdFuzzCorpus, EveryInputKeepsTheLoaderProperties) {
  std::size_t n = 0;
  const std::string root = std::string(TOPTHETA_TEST_DATA_DIR) + "/..";
  for (const std::string& dir : {root + "/fuzz/corpus", threshold_data_dir()}) {
    ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
      if (!e.is_regular_file()) continue;
      const std::string data = read_all(e.path().string());
      LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
      ++n;
    }
  }
  EXPECT_GE(n, 60u);
}

// A null output pointer is an error naming the function, not a crash (it was a null member call
// in load_thresholds).
TEST(ThresholdFile, NullOutputsAreInvalidArgument) {
  const std::string path = threshold_data_dir() + "/valid/dense_heads.toptheta";
  const std::string text = read_all(path);
  ThresholdTable t;
  ASSERT_TRUE(load_thresholds(path, &t).ok());
  const auto expect_null = [](const Status& s, const std::string& message) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    EXPECT_EQ(s.message(), message);
  };
  expect_null(load_thresholds(path, nullptr), "load_thresholds: out is null");
  expect_null(load_threshold_set(path, nullptr), "load_threshold_set: out is null");
  expect_null(parse_thresholds(text, path, nullptr), "parse_thresholds: out is null");
  expect_null(parse_native_thresholds(text, path, nullptr), "parse_native_thresholds: out is null");
  expect_null(parse_native_threshold_set(text, path, nullptr),
              "parse_native_threshold_set: out is null");
  expect_null(parse_reference_thresholds("L0_H0:10 0.5 3 2\n", "th.txt", nullptr),
              "parse_reference_thresholds: out is null");
  expect_null(format_native_thresholds(t, nullptr), "format_native_thresholds: out is null");
  expect_null(format_native_threshold_set(ThresholdSet(), nullptr),
              "format_native_threshold_set: out is null");
  std::string th;
  expect_null(format_reference_thresholds(t, nullptr, &th),
              "format_reference_thresholds: th is null");
  expect_null(format_reference_thresholds(t, &th, nullptr),
              "format_reference_thresholds: sdc is null");
  expect_null(read_file(path, nullptr, 1 << 20), "read_file: out is null");
}

}  // namespace
}  // namespace toptheta::testing
