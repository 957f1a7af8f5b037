#pragma once
/// \file attention_args.hpp
/// Typed arguments of the attention entry points (`decode`, `prefill` in attention.hpp) and
/// their validation.
///
/// Shapes: T new query tokens, a KV cache of L = P + T tokens (P earlier ones), Hq query heads,
/// Hkv KV heads (Hq a multiple of Hkv; query head h uses KV head h / (Hq / Hkv)), head dim d.

#include <cmath>
#include <string>

#include "calibrator.hpp"
#include "options.hpp"
#include "stats.hpp"
#include "status.hpp"
#include "threshold_table.hpp"
#include "types.hpp"

namespace toptheta {

/// Buffers of one attention call. All views are non-owning and strided; nothing is copied.
template <class T>
struct AttentionArgs {
  using Acc = acc_t<T>;
  HeadsView<const T> q;    ///< (T, Hq, d) new queries (T = 1 for decode)
  HeadsView<const T> k;    ///< (L, Hkv, d) keys, the T new ones last
  HeadsView<const T> v;    ///< (L, Hkv, d) values, same layout rules as k
  HeadsView<Acc> out;      ///< (T, Hq, d) output, written (never read); must not alias q/k/v
  /// Optional (Hkv, d) sums of V rows, row stride `v_sum_stride` (d when 0):
  /// decode: rows 0..L-1 (include the new token); prefill: rows 0..P-1 (the earlier tokens).
  /// Needed by VMC and the mean-V empty-row policy; when null, the kernel sums V itself
  /// (one extra pass over V).
  const Acc* v_sum = nullptr;
  Index v_sum_stride = 0;
  /// Optional additive bias (T x L) added to the scores, e.g. an ALiBi or padding mask;
  /// -inf entries mask keys. Shared by all heads. Causality is always applied on top.
  MatrixView<const float> bias;
  Index layer = 0;         ///< layer index, for thresholds, calibration and per-layer k
  double scale = 0.0;      ///< score scale; 0 means 1/sqrt(d)
};

/// How the call sparsifies attention (DESIGN.md section 2).
struct AttentionOptions {
  AttentionMode mode = AttentionMode::kDense;
  /// Top-k budget for kTopK (the caller passes the layer's k_l). kTopTheta takes k_l from the
  /// threshold table and kCalibrate from the calibrator.
  Index k = 64;
  /// Placement for kTopK and kTopTheta (must match the table's). kCalibrate uses the calibrator's.
  /// The struct defaults describe the plain top-k baseline (pre-softmax, renormalised, no VMC);
  /// `toptheta_options(table)` returns the recommended Top-θ variant.
  Placement placement = Placement::kPreSoftmax;
  SdcMode sdc = SdcMode::kNone;    ///< pre-softmax only; ignored for post-softmax placement
  double sdc_scale = 1.0;          ///< D + sdc_scale * D~
  VmcMode vmc = VmcMode::kOff;
  EmptyRowPolicy empty_row = EmptyRowPolicy::kKeepMax;
  Index cap_k = 0;                 ///< 0: no cap; else keep at most cap_k (the most recent)
  const ThresholdTable* thresholds = nullptr;  ///< required by kTopTheta
  LookupPolicy lookup = LookupPolicy::kNearest;
  Calibrator* calibrator = nullptr;            ///< required by kCalibrate
  AttentionStats* stats = nullptr;             ///< optional; counts are added
  int threads = 0;                 ///< 0: OpenMP default (1 without OpenMP)
};

/// The library's recommended Top-θ variant for a calibrated table: post-softmax placement
/// (taken from the table) with VMC, no SDC, keep-max empty rows. Chosen from the real-model
/// evaluation (docs/results.md): post-softmax + VMC had the lowest perplexity cost at every k
/// from 4 to 64 while reading the fewest V rows among the Top-θ variants, needs no SDC terms,
/// and its rows almost never come out empty. Pre-softmax tables get exact SDC + VMC, the best
/// pre-softmax variant.
inline AttentionOptions toptheta_options(const ThresholdTable& table) {
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &table;
  o.placement = table.placement();
  o.sdc = table.placement() == Placement::kPreSoftmax ? SdcMode::kExact : SdcMode::kNone;
  o.vmc = VmcMode::kOn;
  o.empty_row = EmptyRowPolicy::kKeepMax;
  return o;
}

namespace detail {

template <class T>
Status check_heads_view(const char* name, const HeadsView<T>& v, Index tokens, Index heads,
                        Index dim) {
  if (v.tokens != tokens || v.heads != heads || v.dim != dim)
    return Status::invalid_argument(std::string(name) + " has shape " + shape_string(v) +
                                    " but " + shape_string(tokens, heads, dim) + " is required");
  if (tokens > 0 && heads > 0 && dim > 0 && v.data == nullptr)
    return Status::invalid_argument(std::string(name) + " has no data");
  if (v.token_stride < 0 || v.head_stride < 0)
    return Status::invalid_argument(std::string(name) + " has negative strides");
  // Rows of one token must not overlap each other (heads), and tokens of one head must not either.
  if (heads > 1 && v.head_stride < dim && v.token_stride < dim)
    return Status::invalid_argument(std::string(name) + " has overlapping rows (token_stride " +
                                    std::to_string(v.token_stride) + ", head_stride " +
                                    std::to_string(v.head_stride) + ", dim " +
                                    std::to_string(dim) + ")");
  if (tokens > 1 && v.token_stride < dim && v.head_stride < dim)
    return Status::invalid_argument(std::string(name) + " has overlapping rows");
  return {};
}

}  // namespace detail

/// Validates the shapes of `args` for a call with T = args.q.tokens new tokens, and the options.
/// Every message names the offending shape and the expected one.
template <class T>
Status validate(const AttentionArgs<T>& args, const AttentionOptions& opt) {
  const Index Tq = args.q.tokens, Hq = args.q.heads, d = args.q.dim;
  const Index L = args.k.tokens, Hkv = args.k.heads;
  if (Tq < 1) return Status::invalid_argument("q has no tokens: " + shape_string(args.q));
  if (Hq < 1 || d < 1) return Status::invalid_argument("q has shape " + shape_string(args.q));
  if (Hkv < 1 || Hq % Hkv != 0)
    return Status::invalid_argument("query heads " + std::to_string(Hq) +
                                    " are not a multiple of KV heads " + std::to_string(Hkv) +
                                    " (q " + shape_string(args.q) + ", k " +
                                    shape_string(args.k) + ")");
  if (L < Tq)
    return Status::invalid_argument("k " + shape_string(args.k) + " holds fewer tokens than q " +
                                    shape_string(args.q) + " (the new tokens must be in the cache)");
  if (L > Index(INT32_MAX))
    return Status::invalid_argument("sequence too long: " + std::to_string(L));
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view("q", args.q, Tq, Hq, d));
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view("k", args.k, L, Hkv, d));
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view("v", args.v, L, Hkv, d));
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view("out", args.out, Tq, Hq, d));
  if (!args.bias.empty() && (args.bias.rows != Tq || args.bias.cols < L))
    return Status::invalid_argument("bias has shape " + shape_string(args.bias.rows, args.bias.cols) +
                                    " but " + shape_string(Tq, L) + " is required");
  if (!(std::isfinite(args.scale) && args.scale >= 0))
    return Status::invalid_argument("scale must be finite and >= 0 (0 = 1/sqrt(d))");
  if (opt.cap_k < 0) return Status::invalid_argument("cap_k must be >= 0");
  if (!std::isfinite(opt.sdc_scale) || opt.sdc_scale < 0)
    return Status::invalid_argument("sdc_scale must be finite and >= 0");
  switch (opt.mode) {
    case AttentionMode::kDense: break;
    case AttentionMode::kTopK:
      if (opt.k < 1) return Status::invalid_argument("top-k needs k >= 1, got " + std::to_string(opt.k));
      if (opt.sdc == SdcMode::kCalibrated && opt.placement == Placement::kPreSoftmax)
        return Status::invalid_argument("calibrated SDC needs a threshold table; top-k has none");
      break;
    case AttentionMode::kTopTheta: {
      if (!opt.thresholds) return Status::invalid_argument("Top-theta needs a threshold table");
      const ThresholdTable& t = *opt.thresholds;
      if (args.layer < 0 || args.layer >= t.num_layers() || t.num_heads() != Hq)
        return Status::invalid_argument(
            "threshold table (layers x heads) " + shape_string(t.num_layers(), t.num_heads()) +
            " does not cover layer " + std::to_string(args.layer) + " with " + std::to_string(Hq) +
            " query heads");
      if (t.placement() != opt.placement)
        return Status::invalid_argument(std::string("threshold table was calibrated for ") +
                                        to_string(t.placement()) + "-softmax placement, options ask for " +
                                        to_string(opt.placement) + "-softmax");
      if (opt.sdc == SdcMode::kCalibrated && opt.placement == Placement::kPreSoftmax &&
          !t.has_sdc())
        return Status::invalid_argument("calibrated SDC needs SDC terms in the threshold table");
      break;
    }
    case AttentionMode::kCalibrate: {
      if (!opt.calibrator) return Status::invalid_argument("calibration mode needs a calibrator");
      const auto& co = opt.calibrator->options();
      if (args.layer < 0 || args.layer >= co.num_layers || co.num_heads != Hq)
        return Status::invalid_argument(
            "calibrator (layers x heads) " + shape_string(co.num_layers, co.num_heads) +
            " does not cover layer " + std::to_string(args.layer) + " with " + std::to_string(Hq) +
            " query heads");
      if (opt.sdc == SdcMode::kCalibrated)
        return Status::invalid_argument("calibrated SDC cannot be used while calibrating");
      break;
    }
  }
  return {};
}

}  // namespace toptheta
