#pragma once
/// \file sampling.hpp
/// Token sampling (llama2.c's xorshift* generator, greedy or temperature sampling) and
/// sequences drawn from a model (decode kernel), used as calibration and evaluation sets.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"
#include "sequence.hpp"
#include "tokenizer.hpp"

namespace llama2c {

/// llama2.c's xorshift* generator: small, portable, reproducible across platforms.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed ? seed : 0x853c49e6748fea9bull) {}
  std::uint32_t next_u32() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return std::uint32_t((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  }
  /// Uniform in [0, 1).
  float next_f32() { return float(next_u32() >> 8) / 16777216.0f; }

 private:
  std::uint64_t state_;
};

/// SplitMix64 of (seed, index): independent per-sequence seeds, so that the first n sequences
/// of a set do not depend on how many are drawn.
inline std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t x = seed + 0x9E3779B97F4A7C15ull * (index + 1);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Index of the first maximum of logits[0..n).
inline std::int32_t argmax(const float* logits, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

/// Next token: argmax at temperature 0, else a draw from softmax(logits / temperature).
inline std::int32_t sample_token(const float* logits, int n, float temperature, Rng& rng) {
  if (temperature <= 0.0f) return argmax(logits, n);
  float m = logits[0];
  for (int i = 1; i < n; ++i) m = std::max(m, logits[i]);
  double z = 0.0;
  for (int i = 0; i < n; ++i) z += std::exp(double((logits[i] - m) / temperature));
  const double coin = double(rng.next_f32()) * z;
  double cdf = 0.0;
  for (int i = 0; i < n; ++i) {
    cdf += std::exp(double((logits[i] - m) / temperature));
    if (coin < cdf) return i;
  }
  return n - 1;  // rounding
}

/// Draws `count` sequences of exactly `seq_len` tokens (BOS first) from the model with
/// `setup` attention (dense for evaluation sets) at `temperature`; sequence i uses the seed
/// mix_seed(seed, i). A BOS or EOS drawn inside a sequence is kept (a new story begins).
inline Status sample_sequences(const Model& model, int count, int seq_len, std::uint64_t seed,
                               float temperature, std::vector<Sequence>* out,
                               const AttentionSetup& setup = AttentionSetup::dense(),
                               const ProgressFn& progress = nullptr) {
  const Config& c = model.config();
  if (count < 1)
    return Status::invalid_argument("need at least one sequence, got " + std::to_string(count));
  if (seq_len < 2 || seq_len > c.seq_len)
    return Status::invalid_argument("sequence length " + std::to_string(seq_len) + " outside [2, " +
                                    std::to_string(c.seq_len) + "] (the model's context)");
  Runner runner(model);
  std::vector<float> logits;
  out->clear();
  for (int i = 0; i < count; ++i) {
    Rng rng(mix_seed(seed, std::uint64_t(i)));
    Sequence s{kBos};
    runner.reset();
    while (int(s.size()) < seq_len) {
      TOPTHETA_RETURN_IF_ERROR(runner.forward(&s.back(), 1, setup, &logits));
      s.push_back(sample_token(logits.data(), c.vocab_size, temperature, rng));
    }
    out->push_back(std::move(s));
    if (progress) progress(std::size_t(i + 1), std::size_t(count));
  }
  return {};
}

}  // namespace llama2c
