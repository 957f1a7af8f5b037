#pragma once
/// \file evaluation.hpp
/// Teacher-forced evaluation of a sparse attention setup against dense attention on the same
/// sequences (prefill kernel, one call per layer and sequence): perplexity of both, mean
/// KL(dense || sparse) and top-1 agreement of the next-token distributions, attention stats.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"
#include "sampling.hpp"
#include "sequence.hpp"

namespace llama2c {

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
  /// With AttentionSetup::length_edges: statistics by row-length bucket (all layers).
  std::vector<toptheta::AttentionStats> by_length;
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

/// Teacher-forced evaluation of every setup of `sparse` against dense attention on `seqs`
/// (prefill kernel, one call per layer and sequence, or one per length bucket with
/// `length_edges`): the dense pass runs once per sequence and is shared. Each setup's
/// `layer_stats` / `length_stats` are ignored (the results carry them).
inline Status evaluate_many(const Model& model, const std::vector<Sequence>& seqs,
                            const std::vector<AttentionSetup>& sparse, std::vector<EvalResult>* out,
                            const ProgressFn& progress = nullptr) {
  const Config& c = model.config();
  if (seqs.empty()) return Status::invalid_argument("evaluate: no sequences");
  if (sparse.empty()) return Status::invalid_argument("evaluate: no setups");
  const std::size_t ns = sparse.size();
  std::vector<EvalResult> res(ns);
  std::vector<AttentionSetup> setups = sparse;
  for (std::size_t v = 0; v < ns; ++v) {
    res[v].per_layer.assign(std::size_t(c.n_layers), toptheta::AttentionStats());
    res[v].layer_k = layer_budgets(model, sparse[v]);
    setups[v].layer_stats = &res[v].per_layer;
    if (!setups[v].length_edges.empty()) {
      res[v].by_length.assign(setups[v].length_edges.size() + 1, toptheta::AttentionStats());
      setups[v].length_stats = &res[v].by_length;
    } else {
      setups[v].length_stats = nullptr;
    }
  }
  const AttentionSetup dense = AttentionSetup::dense(sparse.front().options.threads);
  Runner runner(model);
  std::vector<float> ld, ls;
  std::vector<double> pd, ps;
  std::vector<double> nll_s(ns, 0.0), kl(ns, 0.0);
  std::vector<std::uint64_t> agree(ns, 0);
  double nll_d = 0;
  std::uint64_t n = 0;
  const int V = c.vocab_size;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& q = seqs[i];
    if (q.size() < 2)
      return Status::invalid_argument("evaluate: sequence " + std::to_string(i) +
                                      " has fewer than 2 tokens");
    runner.reset();
    TOPTHETA_RETURN_IF_ERROR(
        runner.forward(q.data(), Index(q.size()), dense, &ld, Kernel::kPrefill));
    // Dense log-probabilities once per sequence.
    const std::size_t P = q.size() - 1;
    std::vector<double> dlp(P * std::size_t(V));
    std::vector<int> dargmax(P);
    for (std::size_t t = 0; t < P; ++t) {
      const float* a = ld.data() + t * std::size_t(V);
      detail::log_softmax(a, V, &pd);
      std::copy(pd.begin(), pd.end(), dlp.begin() + std::ptrdiff_t(t * std::size_t(V)));
      dargmax[t] = argmax(a, V);
      nll_d -= pd[std::size_t(q[t + 1])];
    }
    n += P;
    for (std::size_t v = 0; v < ns; ++v) {
      runner.reset();
      TOPTHETA_RETURN_IF_ERROR(
          runner.forward(q.data(), Index(q.size()), setups[v], &ls, Kernel::kPrefill));
      for (std::size_t t = 0; t < P; ++t) {
        const float* b = ls.data() + t * std::size_t(V);
        detail::log_softmax(b, V, &ps);
        const double* d = dlp.data() + t * std::size_t(V);
        nll_s[v] -= ps[std::size_t(q[t + 1])];
        double k = 0.0;
        for (int j = 0; j < V; ++j) k += std::exp(d[j]) * (d[j] - ps[std::size_t(j)]);
        kl[v] += std::max(k, 0.0);
        agree[v] += dargmax[t] == argmax(b, V);
      }
      if (progress) progress(i * ns + v + 1, seqs.size() * ns);
    }
  }
  for (std::size_t v = 0; v < ns; ++v) {
    EvalResult& r = res[v];
    r.predictions = n;
    r.dense_perplexity = std::exp(nll_d / double(n));
    r.perplexity = std::exp(nll_s[v] / double(n));
    r.kl_mean = kl[v] / double(n);
    r.top1_agreement = double(agree[v]) / double(n);
    for (const auto& st : r.per_layer) r.total.merge(st);
  }
  *out = std::move(res);
  return {};
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

}  // namespace llama2c
