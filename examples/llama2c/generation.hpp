#pragma once
/// \file generation.hpp
/// Text generation: the prompt through the prefill kernel, then token by token through decode.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"
#include "sampling.hpp"
#include "sequence.hpp"
#include "tokenizer.hpp"

namespace llama2c {

/// Where the time of generate() went.
struct GenerationTiming {
  double prefill_seconds = 0;            ///< the prompt's forward pass
  int decode_tokens = 0;                 ///< forward passes of one new token
  double decode_seconds = 0;             ///< their wall time (forward passes only)
  double decode_attention_seconds = 0;   ///< of which in the attention kernel
};

/// Generates up to `steps` tokens after `prompt` (which starts with BOS). The prompt runs
/// through the prefill kernel (decode when it is one token), every new token through decode.
/// Stops early at BOS or EOS when `stop_at_boundary`, or at the context limit (the output never
/// exceeds the model's context: a prompt that fills it gets no new token). `temperature`
/// is a finite number >= 0 (0: greedy); anything else is kInvalidArgument.
inline Status generate(const Model& model, const Sequence& prompt, int steps, float temperature,
                       std::uint64_t seed, const AttentionSetup& setup, Sequence* out,
                       bool stop_at_boundary = true, GenerationTiming* timing = nullptr) {
  const Config& c = model.config();
  if (prompt.empty()) return Status::invalid_argument("generate: empty prompt (BOS missing)");
  if (!(std::isfinite(temperature) && temperature >= 0.0f))
    return Status::invalid_argument("generate: temperature " + std::to_string(temperature) +
                                    " is not a finite number >= 0");
  if (Index(prompt.size()) > c.seq_len)
    return Status::invalid_argument("generate: prompt of " + std::to_string(prompt.size()) +
                                    " tokens exceeds the context " + std::to_string(c.seq_len));
  Runner runner(model);
  Rng rng(seed);
  std::vector<float> logits;
  *out = prompt;
  TOPTHETA_RETURN_IF_ERROR(runner.forward(prompt.data(), Index(prompt.size()), setup, &logits));
  GenerationTiming tm;
  tm.prefill_seconds = runner.forward_seconds();
  runner.reset_timing();
  // A prompt that fills the context leaves no room for a new token.
  for (int step = 0; step < steps && Index(out->size()) < c.seq_len; ++step) {
    const float* last = logits.data() + logits.size() - std::size_t(c.vocab_size);
    const std::int32_t next = sample_token(last, c.vocab_size, temperature, rng);
    if (stop_at_boundary && (next == kBos || next == kEos)) break;
    out->push_back(next);
    if (Index(out->size()) >= c.seq_len) break;
    TOPTHETA_RETURN_IF_ERROR(runner.forward(&out->back(), 1, setup, &logits));
    ++tm.decode_tokens;
  }
  tm.decode_seconds = runner.forward_seconds();
  tm.decode_attention_seconds = runner.attention_seconds();
  if (timing) *timing = tm;
  return {};
}

}  // namespace llama2c
