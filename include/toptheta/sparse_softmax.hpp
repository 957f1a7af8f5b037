#pragma once
/// \file sparse_softmax.hpp
/// Sparse softmax stage: the weights of the kept keys of one row, with softmax-denominator
/// compensation (semantics §5; the paper's softmax-denominator compensation, SDC:
/// w_j = exp(s_j - M) / (D + sdc_scale * D~), D = sum over kept of exp(s_j - M)).
///
/// exp is evaluated only where the variant needs it: over the kept keys for pre-softmax without
/// SDC or with exp-threshold / calibrated SDC, over the whole row for exact SDC and dense rows.

#include <cmath>
#include <cstdint>
#include <limits>

#include "detail/simd.hpp"
#include "options.hpp"
#include "row_select.hpp"
#include "types.hpp"

namespace toptheta {

/// Compensation parameters of a row.
template <class Acc>
struct RowWeightParams {
  Placement placement = Placement::kPreSoftmax;  ///< post: w_j = p_j, no SDC (semantics §5)
  SdcMode sdc = SdcMode::kNone;  ///< how D~, the dropped part of the denominator, is estimated
  Acc sdc_scale = 1;             ///< denominator D + sdc_scale * D~; 0 drops D~
  Acc theta = 0;      ///< threshold in the logit domain for exp-threshold SDC
  Acc sdc_term = 0;   ///< calibrated C(l, h, L)
};

/// D~, the dropped part of the softmax denominator relative to exp(M), for a row of L keys of
/// which n are kept (semantics §5; the paper's softmax-denominator compensation, SDC, §3.3):
/// - none: 0;
/// - exact: `exact`, sum over the dropped keys of exp(s_j - M), which only the caller can sum;
/// - exp-threshold: (L - n) * exp(theta - M), every dropped key counted at the threshold; 0 when
///   nothing is dropped or theta is -inf;
/// - calibrated: `calibrated`, the table's offline term C(l, h, L) (semantics §8).
/// A keep-max empty row passes n = 1 and, for exact, its dropped sum less the maximum's exp(0).
/// The one formula of every kernel (decode, prefill, the row pipeline).
template <class Acc>
inline Acc sdc_dropped(SdcMode mode, Index L, Index n, Acc M, Acc theta, Acc exact,
                       Acc calibrated) {
  switch (mode) {
    case SdcMode::kNone: return Acc(0);
    case SdcMode::kExact: return exact;
    case SdcMode::kExpThreshold:
      return (L == n || theta == -std::numeric_limits<Acc>::infinity())
                 ? Acc(0)
                 : Acc(L - n) * std::exp(theta - M);
    case SdcMode::kCalibrated: return calibrated;
  }
  return Acc(0);
}

/// The compensated denominator D + sdc_scale * D~ (semantics §5) of a row whose kept keys sum
/// to `kept` = D (relative to exp(M)), or D itself when the mode is none, when sdc_scale is 0
/// (no 0 * inf) or when the sum is not > 0 (the caller then renormalises over the kept set).
template <class Acc>
inline Acc sdc_denominator(SdcMode mode, Acc sdc_scale, Acc kept, Acc dropped) {
  const Acc den =
      kept + (mode != SdcMode::kNone && sdc_scale != Acc(0) ? sdc_scale * dropped : Acc(0));
  return den > Acc(0) ? den : kept;
}

/// Writes w[i], the weight of key kept[i], for a row selected by select_row(); returns
/// sum_i w[i] (the weight that VMC complements), exactly 1 where the weights sum to 1 by
/// definition (semantics §6): a pre-softmax row whose denominator gets no compensation (SDC
/// none, sdc_scale * D~ = 0, the fallback to SDC none) and a post-softmax row that keeps every
/// key (so that VMC's coefficient there is 0, not a rounding of it, and vbar is not used).
/// `scratch` (L values) and `probs` must still hold what select_row() left there (post-softmax);
/// the pre-softmax paths clobber scratch.
template <class Ops, class Acc>
Acc row_weights(const Acc* s, Index L, const RowSelection<Acc>& sel, const std::int32_t* kept,
                const RowWeightParams<Acc>& p, Acc* scratch, const Acc* probs, Acc* w) {
  const Index n = sel.count;
  const Acc M = sel.row_max;
  if (sel.masked || sel.mean_v || n == 0) return 0;
  if (!sel.thresholded) {  // dense softmax, kept = 0..L-1
    const Acc z = Ops::exp_shifted(s, L, M, w);
    Ops::scale(w, Acc(1) / z, L);
    return 1;
  }
  Acc sum = 0;
  if (p.placement == Placement::kPostSoftmax) {  // w_j = p_j, no renormalisation
    if (sel.probs_compact) {
      for (Index i = 0; i < n; ++i) sum += (w[i] = probs[i]);
    } else if (sel.probs_in_scratch) {
      for (Index i = 0; i < n; ++i) sum += (w[i] = scratch[kept[i]]);
    } else {
      const Acc z = Ops::exp_shifted(s, L, M, scratch);
      const Acc inv = Acc(1) / z;
      for (Index i = 0; i < n; ++i) sum += (w[i] = scratch[kept[i]] * inv);
    }
    return n == L ? Acc(1) : sum;  // every key kept: the probabilities sum to 1
  }
  // Pre-softmax: the kept scores, gathered contiguously so exp runs vectorised over them.
  for (Index i = 0; i < n; ++i) scratch[i] = s[kept[i]];
  if (p.sdc == SdcMode::kNone) {  // renormalise over the kept set around its own max
    const Acc mk = Ops::row_max(scratch, n);
    sum = Ops::exp_shifted(scratch, n, mk, w);
    if (sum > 0) Ops::scale(w, Acc(1) / sum, n);
    else
      for (Index i = 0; i < n; ++i) w[i] = 0;
    return sum > 0 ? Acc(1) : Acc(0);
  }
  const Acc d_kept = Ops::exp_shifted(scratch, n, M, w);
  Acc exact = 0;
  if (p.sdc == SdcMode::kExact && p.sdc_scale != Acc(0)) {
    // The sum over the complement of the (sorted) kept list.
    Ops::exp_shifted(s, L, M, scratch);
    for (Index i = 0; i < n; ++i) scratch[kept[i]] = 0;
    Acc lane[16] = {};
    for (Index j = 0; j < L; ++j) lane[j & 15] += scratch[j];
    for (Index l = 0; l < 16; ++l) exact += lane[l];
  }
  const Acc d_dropped =
      p.sdc_scale != Acc(0) ? sdc_dropped(p.sdc, L, n, M, p.theta, exact, p.sdc_term) : Acc(0);
  const Acc denom = sdc_denominator(p.sdc, p.sdc_scale, d_kept, d_dropped);
  if (!(denom > Acc(0))) {
    // Every kept exp(s - M) underflowed (cap_k dropped the row maximum) and nothing is
    // compensated: fall back to renormalising over the kept set, as with SDC none.
    RowWeightParams<Acc> none = p;
    none.sdc = SdcMode::kNone;
    return row_weights<Ops>(s, L, sel, kept, none, scratch, probs, w);
  }
  const Acc inv = Acc(1) / denom;  // denom = +inf (huge D~) gives zero weights, never NaN
  for (Index i = 0; i < n; ++i) sum += (w[i] *= inv);
  return denom == d_kept ? Acc(1) : sum;  // no compensation: renormalised, sums to 1
}

}  // namespace toptheta
