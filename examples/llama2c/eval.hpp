#pragma once
/// \file eval.hpp
/// Sampling, generation, teacher-forced evaluation and threshold calibration on a llama2.c
/// model (DESIGN.md section 6).
///
/// - `sample_sequences`: sequences drawn from the dense model at a temperature (decode kernel).
/// - `generate`: prompt (prefill kernel) then token-by-token generation (decode kernel).
/// - `evaluate`: teacher-forced pass of the dense and the sparse model over the same sequences
///   (prefill kernel, one call per layer and sequence): perplexity of both, mean
///   KL(dense || sparse) and top-1 agreement of the next-token distributions, attention stats.
/// - `calibrate`: kCalibrate mode through the forward pass, then (optionally) a second pass that
///   accumulates the offline SDC terms against the thresholds of the first.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "model.hpp"
#include "tokenizer.hpp"

namespace llama2c {

using Sequence = std::vector<std::int32_t>;
/// Progress callback: (done, total) units of work.
using ProgressFn = std::function<void(std::size_t, std::size_t)>;

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

/// Generates up to `steps` tokens after `prompt` (which starts with BOS). The prompt runs
/// through the prefill kernel (decode when it is one token), every new token through decode.
/// Stops early at BOS or EOS when `stop_at_boundary`, or at the context limit.
inline Status generate(const Model& model, const Sequence& prompt, int steps, float temperature,
                       std::uint64_t seed, const AttentionSetup& setup, Sequence* out,
                       bool stop_at_boundary = true) {
  const Config& c = model.config();
  if (prompt.empty()) return Status::invalid_argument("generate: empty prompt (BOS missing)");
  if (Index(prompt.size()) > c.seq_len)
    return Status::invalid_argument("generate: prompt of " + std::to_string(prompt.size()) +
                                    " tokens exceeds the context " + std::to_string(c.seq_len));
  Runner runner(model);
  Rng rng(seed);
  std::vector<float> logits;
  *out = prompt;
  TOPTHETA_RETURN_IF_ERROR(runner.forward(prompt.data(), Index(prompt.size()), setup, &logits));
  for (int step = 0; step < steps; ++step) {
    const float* last = logits.data() + logits.size() - std::size_t(c.vocab_size);
    const std::int32_t next = sample_token(last, c.vocab_size, temperature, rng);
    if (stop_at_boundary && (next == kBos || next == kEos)) break;
    out->push_back(next);
    if (Index(out->size()) >= c.seq_len) break;
    TOPTHETA_RETURN_IF_ERROR(runner.forward(&out->back(), 1, setup, &logits));
  }
  return {};
}

/// Reads a token file: one sequence per line, space-separated ids, BOS (1) first, between 2
/// and `max_len` tokens; blank lines and lines starting with '#' are skipped. Errors name the
/// file and the line.
inline Status read_token_file(const std::string& path, int vocab_size, int max_len,
                              std::vector<Sequence>* out) {
  std::ifstream in(path);
  if (!in) return Status::not_found("token file: cannot open '" + path + "'");
  out->clear();
  std::string line;
  int ln = 0;
  while (std::getline(in, line)) {
    ++ln;
    const std::string where = path + ":" + std::to_string(ln) + ": ";
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    std::istringstream ss(line);
    std::string tok;
    Sequence s;
    while (ss >> tok) {
      char* end = nullptr;
      const long v = std::strtol(tok.c_str(), &end, 10);
      if (end == tok.c_str() || *end != '\0')
        return Status::data_loss(where + "'" + tok + "' is not an integer token id");
      if (v < 0 || v >= vocab_size)
        return Status::data_loss(where + "token id " + tok + " outside the vocabulary [0, " +
                                 std::to_string(vocab_size) + ")");
      s.push_back(std::int32_t(v));
    }
    if (s.front() != kBos)
      return Status::data_loss(where + "a sequence must start with BOS (1), got " +
                               std::to_string(s.front()));
    if (s.size() < 2 || int(s.size()) > max_len)
      return Status::data_loss(where + "sequence of " + std::to_string(s.size()) +
                               " tokens (need 2.." + std::to_string(max_len) + ")");
    out->push_back(std::move(s));
  }
  if (out->empty()) return Status::data_loss("token file '" + path + "' holds no sequence");
  return {};
}

/// Writes sequences in the token-file format.
inline Status write_token_file(const std::string& path, const std::vector<Sequence>& seqs) {
  std::ofstream o(path);
  if (!o) return Status::io_error("cannot write '" + path + "'");
  for (const Sequence& s : seqs) {
    for (std::size_t i = 0; i < s.size(); ++i) o << (i ? " " : "") << s[i];
    o << '\n';
  }
  o.flush();
  return o ? Status() : Status::io_error("write error on '" + path + "'");
}

/// Result of a teacher-forced evaluation. Metrics are over the predictions of tokens 1..N-1 of
/// every sequence, aggregated as ratios of sums over all sequences.
struct EvalResult {
  double perplexity = 0;        ///< exp(mean NLL) of the sparse model
  double dense_perplexity = 0;  ///< exp(mean NLL) of the dense model on the same tokens
  double kl_mean = 0;           ///< mean KL(dense || sparse) of the next-token distributions (nats)
  double top1_agreement = 0;    ///< fraction of positions where both argmaxes agree
  std::uint64_t predictions = 0;
  toptheta::AttentionStats total;  ///< sparse model, all layers
  std::vector<toptheta::AttentionStats> per_layer;
  std::vector<Index> layer_k;  ///< the budget used per layer (0: dense)
};

namespace detail {

/// log-softmax of logits[0..n) in double.
inline void log_softmax(const float* logits, int n, std::vector<double>* out) {
  out->resize(std::size_t(n));
  double m = logits[0];
  for (int i = 1; i < n; ++i) m = std::max(m, double(logits[i]));
  double z = 0.0;
  for (int i = 0; i < n; ++i) z += std::exp(double(logits[i]) - m);
  const double lz = m + std::log(z);
  for (int i = 0; i < n; ++i) (*out)[std::size_t(i)] = double(logits[i]) - lz;
}

}  // namespace detail

/// Budgets per layer implied by a setup (for reports): the table's k for Top-θ, the calibrator's
/// for calibration, `layer_k` / `options.k` for top-k, 0 for dense.
inline std::vector<Index> layer_budgets(const Model& model, const AttentionSetup& s) {
  const int nl = model.config().n_layers;
  std::vector<Index> k(std::size_t(nl), 0);
  for (int l = 0; l < nl; ++l) {
    switch (s.options.mode) {
      case toptheta::AttentionMode::kDense:
        break;
      case toptheta::AttentionMode::kTopK:
        k[std::size_t(l)] = s.layer_k.empty() ? s.options.k : s.layer_k[std::size_t(l)];
        break;
      case toptheta::AttentionMode::kTopTheta:
        if (s.options.thresholds && l < s.options.thresholds->num_layers())
          k[std::size_t(l)] = s.options.thresholds->k(l);
        break;
      case toptheta::AttentionMode::kCalibrate:
        if (s.options.calibrator) k[std::size_t(l)] = s.options.calibrator->k(l);
        break;
    }
  }
  return k;
}

/// Teacher-forced evaluation of `sparse` against dense attention on `seqs` (prefill kernel, one
/// call per layer and sequence). `sparse.layer_stats` is ignored (the result carries them).
inline Status evaluate(const Model& model, const std::vector<Sequence>& seqs,
                       const AttentionSetup& sparse, EvalResult* out,
                       const ProgressFn& progress = nullptr) {
  const Config& c = model.config();
  if (seqs.empty()) return Status::invalid_argument("evaluate: no sequences");
  EvalResult r;
  r.per_layer.assign(std::size_t(c.n_layers), toptheta::AttentionStats());
  r.layer_k = layer_budgets(model, sparse);
  AttentionSetup s = sparse;
  s.layer_stats = &r.per_layer;
  const AttentionSetup dense = AttentionSetup::dense(sparse.options.threads);
  Runner runner(model);
  std::vector<float> ld, ls;
  std::vector<double> pd, ps;
  double nll_d = 0, nll_s = 0, kl = 0;
  std::uint64_t agree = 0, n = 0;
  const int V = c.vocab_size;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& q = seqs[i];
    if (q.size() < 2)
      return Status::invalid_argument("evaluate: sequence " + std::to_string(i) +
                                      " has fewer than 2 tokens");
    runner.reset();
    TOPTHETA_RETURN_IF_ERROR(
        runner.forward(q.data(), Index(q.size()), dense, &ld, Kernel::kPrefill));
    runner.reset();
    TOPTHETA_RETURN_IF_ERROR(runner.forward(q.data(), Index(q.size()), s, &ls, Kernel::kPrefill));
    for (std::size_t t = 0; t + 1 < q.size(); ++t) {
      const float* a = ld.data() + t * std::size_t(V);
      const float* b = ls.data() + t * std::size_t(V);
      detail::log_softmax(a, V, &pd);
      detail::log_softmax(b, V, &ps);
      const std::size_t target = std::size_t(q[t + 1]);
      nll_d -= pd[target];
      nll_s -= ps[target];
      double k = 0.0;
      for (int j = 0; j < V; ++j)
        k += std::exp(pd[std::size_t(j)]) * (pd[std::size_t(j)] - ps[std::size_t(j)]);
      kl += std::max(k, 0.0);  // clamp rounding below zero
      agree += argmax(a, V) == argmax(b, V);
      ++n;
    }
    if (progress) progress(i + 1, seqs.size());
  }
  r.predictions = n;
  r.dense_perplexity = std::exp(nll_d / double(n));
  r.perplexity = std::exp(nll_s / double(n));
  r.kl_mean = kl / double(n);
  r.top1_agreement = double(agree) / double(n);
  for (const auto& st : r.per_layer) r.total.merge(st);
  *out = std::move(r);
  return {};
}

/// Calibrates thresholds on `seqs`: every sequence runs through the forward pass in kCalibrate
/// mode (prefill kernel), the calibrator observing each thresholded row; with TAC on, the
/// output of each thresholded row is exact top-k_l with `output.options.sdc` / `.vmc`
/// (later layers see sparsified activations). With `sdc_terms`, a second pass over the same
/// sequences accumulates C(l, h, L) against the thresholds of the first pass and stores it in
/// the table. `copts.num_layers/num_heads` are filled from the model.
inline Status calibrate(const Model& model, const std::vector<Sequence>& seqs,
                        toptheta::CalibrationOptions copts, bool sdc_terms,
                        const AttentionSetup& output, toptheta::ThresholdTable* out,
                        const ProgressFn& progress = nullptr) {
  const Config& c = model.config();
  if (seqs.empty()) return Status::invalid_argument("calibrate: no sequences");
  copts.num_layers = c.n_layers;
  copts.num_heads = c.n_heads;
  copts.sdc_thresholds = nullptr;
  const std::size_t passes = sdc_terms ? 2 : 1;
  toptheta::ThresholdTable table;
  for (std::size_t pass = 0; pass < passes; ++pass) {
    toptheta::CalibrationOptions o = copts;
    if (pass == 1) o.sdc_thresholds = &table;
    toptheta::Calibrator cal(o);
    TOPTHETA_RETURN_IF_ERROR(cal.validate());
    AttentionSetup s = output;
    s.options.mode = toptheta::AttentionMode::kCalibrate;
    s.options.calibrator = &cal;
    s.options.thresholds = nullptr;
    s.layer_stats = nullptr;
    Runner runner(model);
    std::vector<float> logits;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      runner.reset();
      TOPTHETA_RETURN_IF_ERROR(
          runner.forward(seqs[i].data(), Index(seqs[i].size()), s, &logits, Kernel::kPrefill));
      if (progress) progress(pass * seqs.size() + i + 1, passes * seqs.size());
    }
    if (pass == 0) {
      table = cal.finalize();
      if (table.empty())
        return Status::failed_precondition(
            "calibration observed no row longer than k: use longer sequences or a smaller k");
    } else {
      // The second pass sees the same rows (its output does not depend on the thresholds), so
      // its entries match the first pass one to one; take the SDC terms from it.
      const toptheta::ThresholdTable t2 = cal.finalize();
      for (Index l = 0; l < table.num_layers(); ++l)
        for (Index h = 0; h < table.num_heads(); ++h) {
          const auto& e1 = table.entries(l, h);
          const auto& e2 = t2.entries(l, h);
          if (e1.size() != e2.size())
            return Status::failed_precondition(
                "SDC pass saw different rows than the threshold pass");
          for (std::size_t i = 0; i < e1.size(); ++i) {
            toptheta::ThresholdEntry e = e1[i];
            if (e2[i].length != e.length)
              return Status::failed_precondition(
                  "SDC pass saw different rows than the threshold pass");
            e.sdc = e2[i].sdc;
            TOPTHETA_RETURN_IF_ERROR(table.set(l, h, e));
          }
        }
    }
  }
  TOPTHETA_RETURN_IF_ERROR(table.validate());
  *out = std::move(table);
  return {};
}

}  // namespace llama2c
