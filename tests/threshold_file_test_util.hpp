#pragma once
// Helpers of the threshold file tests: temporary directories, whole-file reads, tables with
// special values, and a table calibrated on seeded random score rows.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "toptheta/calibrator.hpp"
#include "toptheta/io/threshold_file.hpp"
#include "toptheta/threshold_table.hpp"

namespace toptheta::testing {

namespace fs = std::filesystem;

inline std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline void write_all(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

inline std::string threshold_data_dir() { return std::string(TOPTHETA_TEST_DATA_DIR) + "/thresholds"; }

inline double from_bits(std::uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}

/// Doubles that stress round trips: subnormals, extremes, -0, -inf, values without a short
/// binary expansion.
inline std::vector<double> special_thetas() {
  return {0.1,
          -0.1,
          1e-300,
          -1e-300,
          1.0 / 3.0,
          0.0,
          -0.0,
          std::numeric_limits<double>::denorm_min(),
          -std::numeric_limits<double>::denorm_min(),
          from_bits(0x000fffffffffffffull),  // largest subnormal
          from_bits(0x0008000000000001ull),
          std::numeric_limits<double>::min(),
          std::numeric_limits<double>::max(),
          -std::numeric_limits<double>::max(),
          std::numeric_limits<double>::epsilon(),
          -std::numeric_limits<double>::infinity(),
          double(std::numeric_limits<float>::lowest()),  // the authors' masked-score value
          0.0002257227897644043,
          1e-05,
          123456789012345680.0,
          5e-324,
          9007199254740993.0,
          2.2250738585072011e-308};
}

/// A 2 x 3 table whose entries carry special_thetas() and random bit patterns, SDC terms on some
/// entries, and metadata with spaces and non-ASCII text.
inline ThresholdTable special_table(std::uint64_t seed = 1, bool all_sdc = false) {
  ThresholdTable t(2, 3, 4);
  EXPECT_TRUE(t.set_k(1, 7).ok());
  t.metadata().placement = Placement::kPostSoftmax;
  t.metadata().lambda = 0.1;
  t.metadata().calibration_rows = 18446744073709551615ull;
  t.metadata().model_id = "  stories260K  (llama2.c) \xc3\xa9\xe2\x82\xac";
  t.metadata().notes = "tab\there # not a comment";
  std::mt19937_64 rng(seed);
  std::vector<double> thetas = special_thetas();
  for (int i = 0; i < 200; ++i) {
    const double d = from_bits(rng());
    if (std::isfinite(d)) thetas.push_back(d);
  }
  Index L = 5;
  for (std::size_t i = 0; i < thetas.size(); ++i) {
    ThresholdEntry e;
    e.length = L;
    L += 1 + Index(rng() % 3);
    e.theta = thetas[i];
    e.samples = rng() % 1000;
    if (all_sdc || i % 3 == 0) e.sdc = std::fabs(from_bits(rng() >> 2));
    const Index layer = Index(i % 2), head = Index((i / 2) % 3);
    EXPECT_TRUE(t.set(layer, head, e).ok());
  }
  if (seed % 2 == 0) {  // recorded geometry, with a scale that needs all 17 digits
    t.metadata().head_dim = 100 + Index(seed % 7);
    t.metadata().score_scale = 1.0 / std::sqrt(double(t.metadata().head_dim)) * (1 + 0x1p-52);
  }
  return t;
}

/// Observes seeded random causal score rows (`sequences` sequences of `max_len` tokens per layer
/// and head) into a Calibrator; with `sdc`, a second pass adds the offline SDC terms.
inline ThresholdTable calibrated_table(std::uint64_t seed, bool sdc, Index layers = 3,
                                       Index heads = 4, Index max_len = 40, int sequences = 6) {
  CalibrationOptions o;
  o.num_layers = layers;
  o.num_heads = heads;
  o.default_k = 8;
  o.layer_k.assign(static_cast<std::size_t>(layers), 8);
  o.layer_k[0] = 16;  // the paper keeps the first layers at a larger k
  o.placement = Placement::kPreSoftmax;
  o.lambda = 0.1;
  o.model_id = "random-scores seed " + std::to_string(seed);
  const auto run = [&](Calibrator& c) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> row(static_cast<std::size_t>(max_len));
    for (int s = 0; s < sequences; ++s)
      for (Index l = 0; l < layers; ++l)
        for (Index h = 0; h < heads; ++h) {
          const float scale = 1.0f + 0.5f * float(h) + 0.25f * float(l);
          for (Index L = 1; L <= max_len; ++L) {
            for (Index j = 0; j < L; ++j)
              row[static_cast<std::size_t>(j)] = scale * nd(rng) + (j + 4 > L ? 1.5f : 0.0f);
            c.observe_scores(l, h, row.data(), L);
          }
        }
  };
  Calibrator first(o);
  EXPECT_TRUE(first.validate().ok());
  run(first);
  ThresholdTable t = first.finalize();
  if (!sdc) return t;
  o.sdc_thresholds = &t;
  Calibrator second(o);
  EXPECT_TRUE(second.validate().ok());
  run(second);
  return second.finalize();
}

/// Entries, budgets and shape equal bit for bit (metadata ignored: the authors' format has none).
inline ::testing::AssertionResult same_entries(const ThresholdTable& a, const ThresholdTable& b) {
  ThresholdTable c = b;
  c.metadata() = a.metadata();
  if (thresholds_identical(a, c)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "tables differ";
}

}  // namespace toptheta::testing
