#pragma once
/// \file calibration.hpp
/// The calibration driver: Top-theta thresholds from sequences run through the model.
///
/// - `run_calibration_pass`: one pass over the sequences in kCalibrate mode (prefill kernel),
///   the given calibrator observing each thresholded row;
/// - `calibrate_all`: toptheta::calibrate_two_pass() (the library's two-pass helper: thresholds,
///   then with `sdc_terms` the offline SDC terms) with the model as its row source; compact and
///   (with CalibrationOptions::per_length) per-length tables, for every budget;
/// - `calibrate`: the per-length table of a single budget (the earlier interface).

#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"
#include "sequence.hpp"

namespace llama2c {

/// One calibration pass: every sequence runs through the forward pass in kCalibrate mode
/// (prefill kernel) with `cal`; with TAC on, the output of each thresholded row is exact top-k_l
/// (k_l = cal.k(l), the smallest budget) with `output.options.sdc` / `.vmc` (later layers see
/// sparsified activations). `progress` gets (offset + i + 1, total).
inline Status run_calibration_pass(const Model& model, const std::vector<Sequence>& seqs,
                                   toptheta::Calibrator& cal, const AttentionSetup& output,
                                   const ProgressFn& progress = nullptr, std::size_t offset = 0,
                                   std::size_t total = 0) {
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
    if (progress) progress(offset + i + 1, total ? total : seqs.size());
  }
  return {};
}

namespace detail {

inline void fill_shape(const Model& model, toptheta::CalibrationOptions* copts) {
  copts->num_layers = model.config().n_layers;
  copts->num_heads = model.config().n_heads;
}

inline Status require_rows(const toptheta::ThresholdTable& t) {
  if (t.empty())
    return Status::failed_precondition(
        "calibration observed no row longer than k: use longer sequences or a smaller k");
  return {};
}

}  // namespace detail

/// Calibrates on `seqs` with toptheta::calibrate_two_pass(): compact tables for every budget
/// (`copts.k_values`, or the single default_k / layer_k), per-length ones too when
/// `copts.per_length` is on, the bucket report, and with `sdc_terms` the SDC terms (one more
/// pass per form). `copts.num_layers/num_heads` are filled from the model.
inline Status calibrate_all(const Model& model, const std::vector<Sequence>& seqs,
                            toptheta::CalibrationOptions copts, bool sdc_terms,
                            const AttentionSetup& output, toptheta::CalibrationResult* out,
                            const ProgressFn& progress = nullptr) {
  if (seqs.empty()) return Status::invalid_argument("calibrate: no sequences");
  detail::fill_shape(model, &copts);
  const std::size_t passes = sdc_terms ? (copts.per_length ? 3 : 2) : 1;
  std::size_t done = 0;
  const auto run = [&](toptheta::Calibrator& cal) -> Status {
    const Status s = run_calibration_pass(model, seqs, cal, output, progress, done * seqs.size(),
                                          passes * seqs.size());
    ++done;
    return s;
  };
  toptheta::CalibrationResult r;
  TOPTHETA_RETURN_IF_ERROR(toptheta::calibrate_two_pass(copts, sdc_terms, run, &r));
  *out = std::move(r);
  return {};
}

/// Calibrates the per-length thresholds of a single budget on `seqs` (with `sdc_terms`, their
/// SDC terms from a second pass). `copts.num_layers/num_heads` are filled from the model.
inline Status calibrate(const Model& model, const std::vector<Sequence>& seqs,
                        toptheta::CalibrationOptions copts, bool sdc_terms,
                        const AttentionSetup& output, toptheta::ThresholdTable* out,
                        const ProgressFn& progress = nullptr) {
  copts.per_length = true;
  copts.k_values.clear();
  toptheta::CalibrationResult r;
  TOPTHETA_RETURN_IF_ERROR(calibrate_all(model, seqs, copts, sdc_terms, output, &r, progress));
  toptheta::ThresholdTable t = r.per_length.tables().front();
  TOPTHETA_RETURN_IF_ERROR(detail::require_rows(t));
  *out = std::move(t);
  return {};
}

}  // namespace llama2c
