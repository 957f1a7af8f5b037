// libFuzzer target for the threshold file loaders (io/threshold_file.hpp).
//
// Every input is parsed several ways: format detection without expectations, forced native with
// expectations, forced authors' format, detection with missing heads declared dense
// (LoadOptions::missing_heads = kDense) and kept empty (kKeepEmpty), and (when the input
// contains a line "--- sdc") as an authors' th.txt + sdc.txt pair split at that line. The loaders must never crash or read out of
// bounds (ASan/UBSan), errors must be one-line messages, and whatever loads must validate (be
// complete), save in the native format and load back bit-identically, and (when representable)
// do the same through the authors' format. A table loaded with kKeepEmpty must pass
// validate_entries(), and must validate exactly when it has no empty heads.
//
// Build with libFuzzer:   clang++ -fsanitize=fuzzer,address,undefined ... (scripts/fuzz.sh)
// Without libFuzzer:      -DTOPTHETA_FUZZ_STANDALONE adds a main() that runs every file (or
//                         every file in every directory) named on the command line once.
// tests/test_threshold_file.cpp includes this file to run the seed corpus as a unit test.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "toptheta/io/threshold_file.hpp"

namespace toptheta_fuzz {

using namespace toptheta;

inline void require(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_threshold_loader: property violated: %s\n", what);
    std::abort();
  }
}

inline void check_error(const Status& s) {
  require(!s.message().empty(), "error without a message");
  require(s.message().find('\n') == std::string::npos, "multi-line error message");
}

/// What must hold for every table a loader accepted.
inline void check_loaded(const ThresholdTable& t) {
  require(t.validate().ok(), "loaded table does not validate");
  std::string text;
  const Status w = format_native_thresholds(t, &text);
  require(w.ok(), "loaded table cannot be saved in the native format");
  ThresholdTable back;
  require(parse_native_thresholds(text, "roundtrip", &back).ok(), "native output does not load");
  require(thresholds_identical(t, back), "native round trip changed the table");

  std::string th, sdc;
  if (format_reference_thresholds(t, &th, &sdc).ok()) {
    LoadOptions o;
    o.expected_placement = t.placement();
    o.expected_layers = t.num_layers();
    o.expected_heads = t.num_heads();
    ThresholdTable ref;
    require(parse_reference_thresholds(th, "th", &ref, o, sdc, "sdc").ok(),
            "authors' format output does not load");
    ref.metadata() = t.metadata();
    require(thresholds_identical(t, ref), "authors' format round trip changed the table");
  }
}

inline void run_one(std::string_view text) {
  LoadOptions variants[5];
  variants[1].format = ThresholdFormat::kNative;
  variants[1].expected_placement = Placement::kPreSoftmax;
  variants[1].expected_layers = 2;
  variants[1].expected_heads = 2;
  variants[2].format = ThresholdFormat::kReference;
  variants[2].expected_placement = Placement::kPostSoftmax;
  variants[3].format = ThresholdFormat::kReference;
  variants[3].expected_layers = 2;
  variants[3].expected_heads = 2;
  variants[4].missing_heads = MissingHeads::kDense;
  for (const LoadOptions& o : variants) {
    ThresholdTable t;
    const Status s = parse_thresholds(text, "fuzz", &t, o);
    if (s.ok()) check_loaded(t);
    else check_error(s);
  }
  {
    LoadOptions keep;
    keep.missing_heads = MissingHeads::kKeepEmpty;
    ThresholdTable t;
    const Status s = parse_thresholds(text, "fuzz", &t, keep);
    if (s.ok()) {
      require(t.validate_entries().ok(), "table loaded with kKeepEmpty has invalid entries");
      require(t.validate().ok() == (t.num_missing_heads() == 0),
              "kKeepEmpty: validate() disagrees with num_missing_heads()");
      if (t.num_missing_heads() == 0) check_loaded(t);
    } else {
      check_error(s);
    }
  }
  const std::string_view sep = "\n--- sdc\n";
  const std::size_t at = text.find(sep);
  if (at != std::string_view::npos) {
    ThresholdTable t;
    const Status s = parse_reference_thresholds(text.substr(0, at + 1), "th.txt", &t, {},
                                                text.substr(at + sep.size()), "sdc.txt");
    if (s.ok()) check_loaded(t);
    else check_error(s);
  }
}

}  // namespace toptheta_fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  toptheta_fuzz::run_one(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}

#ifdef TOPTHETA_FUZZ_STANDALONE
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
  }
  for (const fs::path& p : files) {
    std::ifstream f(p, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
  }
  std::printf("fuzz_threshold_loader: %zu inputs ran without a crash\n", files.size());
  return files.empty() ? 1 : 0;
}
#endif
