#pragma once
/// \file calibration.hpp
/// The calibration driver: Top-theta thresholds from sequences run through the model.
///
/// - `calibration_pass`: one pass over the sequences in kCalibrate mode (prefill kernel), the
///   calibrator observing each thresholded row; returns the finalized table.
/// - `calibrate_thresholds_then_sdc`: the two-pass calibration (thresholds, then the offline SDC
///   terms against those thresholds). It is the one place that sequences the two passes, so a
///   library function doing the same can replace it.
/// - `calibrate`: thresholds only, or both passes with `sdc_terms`.

#include <cstdint>
#include <string>
#include <vector>

#include "model.hpp"
#include "sequence.hpp"

namespace llama2c {

/// One calibration pass: every sequence runs through the forward pass in kCalibrate mode
/// (prefill kernel) with a calibrator built from `copts` (num_layers/num_heads must be set);
/// with TAC on, the output of each thresholded row is exact top-k_l with `output.options.sdc` /
/// `.vmc` (later layers see sparsified activations). `progress` gets (offset + i + 1, total).
inline Status calibration_pass(const Model& model, const std::vector<Sequence>& seqs,
                               const toptheta::CalibrationOptions& copts,
                               const AttentionSetup& output, toptheta::ThresholdTable* out,
                               const ProgressFn& progress = nullptr, std::size_t offset = 0,
                               std::size_t total = 0) {
  toptheta::Calibrator cal(copts);
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
  *out = cal.finalize();
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

/// Two-pass calibration: pass 1 calibrates the thresholds on `seqs`; pass 2 runs the same
/// sequences again and accumulates the offline SDC terms C(l, h, L) against the thresholds of
/// pass 1, which are stored in the returned table. `copts.num_layers/num_heads` are filled from
/// the model; `copts.sdc_thresholds` is ignored.
inline Status calibrate_thresholds_then_sdc(const Model& model, const std::vector<Sequence>& seqs,
                                            toptheta::CalibrationOptions copts,
                                            const AttentionSetup& output,
                                            toptheta::ThresholdTable* out,
                                            const ProgressFn& progress = nullptr) {
  if (seqs.empty()) return Status::invalid_argument("calibrate: no sequences");
  detail::fill_shape(model, &copts);
  copts.sdc_thresholds = nullptr;
  const std::size_t total = 2 * seqs.size();
  toptheta::ThresholdTable table;
  TOPTHETA_RETURN_IF_ERROR(calibration_pass(model, seqs, copts, output, &table, progress, 0, total));
  TOPTHETA_RETURN_IF_ERROR(detail::require_rows(table));
  toptheta::CalibrationOptions second = copts;
  second.sdc_thresholds = &table;
  toptheta::ThresholdTable t2;
  TOPTHETA_RETURN_IF_ERROR(
      calibration_pass(model, seqs, second, output, &t2, progress, seqs.size(), total));
  // The second pass sees the same rows (its output does not depend on the thresholds), so its
  // entries match the first pass one to one; take the SDC terms from it.
  for (Index l = 0; l < table.num_layers(); ++l)
    for (Index h = 0; h < table.num_heads(); ++h) {
      const auto& e1 = table.entries(l, h);
      const auto& e2 = t2.entries(l, h);
      if (e1.size() != e2.size())
        return Status::failed_precondition("SDC pass saw different rows than the threshold pass");
      for (std::size_t i = 0; i < e1.size(); ++i) {
        toptheta::ThresholdEntry e = e1[i];
        if (e2[i].length != e.length)
          return Status::failed_precondition(
              "SDC pass saw different rows than the threshold pass");
        e.sdc = e2[i].sdc;
        TOPTHETA_RETURN_IF_ERROR(table.set(l, h, e));
      }
    }
  TOPTHETA_RETURN_IF_ERROR(table.validate());
  *out = std::move(table);
  return {};
}

/// Calibrates thresholds on `seqs` (one `calibration_pass`); with `sdc_terms`, the two passes
/// of `calibrate_thresholds_then_sdc`. `copts.num_layers/num_heads` are filled from the model.
inline Status calibrate(const Model& model, const std::vector<Sequence>& seqs,
                        toptheta::CalibrationOptions copts, bool sdc_terms,
                        const AttentionSetup& output, toptheta::ThresholdTable* out,
                        const ProgressFn& progress = nullptr) {
  if (sdc_terms) return calibrate_thresholds_then_sdc(model, seqs, copts, output, out, progress);
  if (seqs.empty()) return Status::invalid_argument("calibrate: no sequences");
  detail::fill_shape(model, &copts);
  copts.sdc_thresholds = nullptr;
  toptheta::ThresholdTable table;
  TOPTHETA_RETURN_IF_ERROR(calibration_pass(model, seqs, copts, output, &table, progress));
  TOPTHETA_RETURN_IF_ERROR(detail::require_rows(table));
  TOPTHETA_RETURN_IF_ERROR(table.validate());
  *out = std::move(table);
  return {};
}

}  // namespace llama2c
