// End-to-end tests on code28M (../shared/models: a LLaMA with 8 layers, 4 query heads of head
// dim 128 over one KV head, context 4096) and its token files: dense perplexity, and the compact
// thresholds (calibrated in one pass for k = 32 and 64 on 4 calibration sequences of 2048 tokens)
// against the per-length ones on held-out text, including rows past the calibrated lengths.
//
// Every test skips with a message when the files are absent. They need about 25 s in a Release
// build; the sanitizer (Debug) build skips them (the forward pass of a 28M-parameter model over
// 2048 tokens is minutes there): the same code paths run on stories260K in test_llama2c.

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "../examples/llama2c/calibration.hpp"
#include "../examples/llama2c/evaluation.hpp"
#include "../examples/llama2c/model.hpp"
#include "../examples/llama2c/token_file.hpp"

namespace {

using llama2c::AttentionSetup;
using llama2c::EvalResult;
using llama2c::Model;
using llama2c::Sequence;
using toptheta::Index;
using toptheta::Status;

std::string models_dir() { return std::string(TOPTHETA_SHARED_DIR) + "/models"; }
std::string file(const char* name) { return models_dir() + "/" + name; }

#define SKIP_UNLESS_READY()                                                                      \
  do {                                                                                           \
    for (const char* f : {"code28M.bin", "code28M_calib_2048.txt", "code28M_heldout_2048.txt",   \
                          "code28M_heldout_4096.txt"})                                           \
      if (!std::filesystem::exists(file(f)))                                                     \
        GTEST_SKIP() << "model file not found: " << file(f)                                      \
                     << " (see ../shared/models/README.md)";                                     \
    if (!kOptimised)                                                                             \
      GTEST_SKIP() << "code28M tests run in optimised builds only (minutes per sequence under "  \
                      "the sanitizers); the same paths run on stories260K in test_llama2c";      \
  } while (0)

#ifdef NDEBUG
constexpr bool kOptimised = true;
#else
constexpr bool kOptimised = false;
#endif

struct Shared {
  Model model;
  std::vector<Sequence> cal, held_out, long_held_out;
  toptheta::CalibrationResult result;  // post-softmax, k = 32 and 64, 4 sequences
};

Shared& shared() {
  static Shared* s = [] {
    auto* p = new Shared;
    Status st = Model::load(file("code28M.bin"), &p->model);
    EXPECT_TRUE(st.ok()) << st.to_string();
    const auto& c = p->model.config();
    std::vector<Sequence> all;
    EXPECT_TRUE(llama2c::read_token_file(file("code28M_calib_2048.txt"), c.vocab_size, c.seq_len, &all).ok());
    p->cal.assign(all.begin(), all.begin() + 4);
    EXPECT_TRUE(llama2c::read_token_file(file("code28M_heldout_2048.txt"), c.vocab_size, c.seq_len, &all).ok());
    p->held_out.assign(all.begin(), all.begin() + 2);
    EXPECT_TRUE(llama2c::read_token_file(file("code28M_heldout_4096.txt"), c.vocab_size, c.seq_len, &all).ok());
    p->long_held_out.assign(all.begin(), all.begin() + 1);
    p->long_held_out[0].resize(3072);  // 1024 rows past the calibrated 2048
    toptheta::CalibrationOptions co;
    co.k_values = {32, 64};
    co.placement = toptheta::Placement::kPostSoftmax;
    co.lambda = 0.1;
    co.tac = toptheta::TacMode::kOn;
    st = llama2c::calibrate_all(p->model, p->cal, co, /*sdc_terms=*/false, AttentionSetup::dense(),
                                &p->result);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return p;
  }();
  return *s;
}

AttentionSetup toptheta_vmc(const toptheta::ThresholdTable* t) {
  AttentionSetup s;
  s.options.mode = toptheta::AttentionMode::kTopTheta;
  s.options.placement = t->placement();
  s.options.vmc = toptheta::VmcMode::kOn;
  s.options.thresholds = t;
  return s;
}

double dppl(const EvalResult& r) { return 100.0 * (r.perplexity / r.dense_perplexity - 1.0); }

TEST(Code28M, DensePerplexityOnHeldOutText) {
  SKIP_UNLESS_READY();
  Shared& s = shared();
  EvalResult r;
  ASSERT_TRUE(llama2c::evaluate(s.model, s.held_out, AttentionSetup::dense(), &r).ok());
  // The first two held-out 2048-token sequences: 2.824 (the whole file: 3.355, README).
  EXPECT_GT(r.dense_perplexity, 2.7);
  EXPECT_LT(r.dense_perplexity, 2.95);
  EXPECT_DOUBLE_EQ(r.perplexity, r.dense_perplexity);
}

TEST(Code28M, CompactTablesMatchPerLengthOnes) {
  SKIP_UNLESS_READY();
  Shared& s = shared();
  ASSERT_EQ(s.result.compact.ks(), (std::vector<Index>{32, 64}));
  const toptheta::ThresholdTable* c64 = s.result.compact.find(64);
  const toptheta::ThresholdTable* p64 = s.result.per_length.find(64);
  ASSERT_TRUE(c64 && p64);
  EXPECT_TRUE(c64->is_compact());
  EXPECT_LT(c64->size() * 50, p64->size());  // 10 knots per head instead of ~1980 lengths
  std::vector<EvalResult> r;
  ASSERT_TRUE(llama2c::evaluate_many(s.model, s.held_out, {toptheta_vmc(c64), toptheta_vmc(p64)}, &r).ok());
  // Measured: compact +0.41% at 13.3% of the V rows, kept/row 57.7; per-length about the same.
  EXPECT_LT(dppl(r[0]), 1.0);
  EXPECT_LT(dppl(r[0]), dppl(r[1]) + 0.3);
  EXPECT_LT(r[0].total.vrows_fraction(), 0.16);
  EXPECT_NEAR(r[0].total.kept_per_thresholded_row(), 64.0, 0.15 * 64);
}

TEST(Code28M, CompactTablesExtrapolatePastTheCalibratedLength) {
  SKIP_UNLESS_READY();
  Shared& s = shared();
  const toptheta::ThresholdTable* c32 = s.result.compact.find(32);
  ASSERT_TRUE(c32);
  AttentionSetup setup = toptheta_vmc(c32);
  setup.length_edges = {2048};  // rows up to 2048 (calibrated) and past it
  std::vector<EvalResult> r;
  ASSERT_TRUE(llama2c::evaluate_many(s.model, s.long_held_out, {setup}, &r).ok());
  ASSERT_EQ(r[0].by_length.size(), 2u);
  const auto& past = r[0].by_length[1];
  EXPECT_EQ(past.thresholded_rows, 1024u * 8 * 4);  // rows 2049..3072, 8 layers x 4 heads
  // The fitted curve keeps about k past the calibrated lengths (the last knot would keep fewer
  // and fewer as theta falls like 1/L).
  EXPECT_NEAR(past.kept_per_thresholded_row(), 32.0, 0.15 * 32);
  EXPECT_LT(dppl(r[0]), 2.0);
}

}  // namespace
