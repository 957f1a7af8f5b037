#pragma once
/// \file row_select.hpp
/// Selection stage: which keys of one score row are kept (semantics §4: Top-θ thresholding
/// a_j > theta of arXiv 2502.08363, the top-k baseline, empty rows, cap_k).
///
/// `select_row` works on one row `s[0..L)` of scores in the accumulation type and writes the
/// kept indices in ascending order. O(L), no allocation. `Ops` is the SIMD path
/// (detail/simd.hpp).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "detail/select.hpp"
#include "detail/simd.hpp"
#include "options.hpp"
#include "types.hpp"

namespace toptheta {

/// A threshold θ of the table (a double) in the accumulation type, rounded toward -inf: the
/// largest Acc value <= θ. For every value a of type Acc, a > threshold_in<Acc>(θ) exactly when
/// a > θ, so Top-θ's strict test a_j > θ (semantics §4.2) is exact although the comparisons run
/// in Acc (§11). Rounding to nearest instead dropped the float scores in (θ, float(θ)] whenever
/// float(θ) > θ, which interpolated and compact-curve thresholds hit (θ = 2/3: the score
/// float(2/3) > 2/3 was dropped). A θ beyond the largest Acc becomes that largest value (no
/// sanitized score exceeds it); -inf, a head declared dense, stays -inf.
template <class Acc>
inline Acc threshold_in(double theta) {
  Acc t = static_cast<Acc>(theta);
  if (static_cast<double>(t) > theta) t = std::nextafter(t, -std::numeric_limits<Acc>::infinity());
  return t;
}

/// Per-row selection parameters, resolved by the kernel for one (layer, head, L).
template <class Acc>
struct RowSelectParams {
  AttentionMode mode = AttentionMode::kDense;  ///< kDense, kTopK or kTopTheta (already resolved)
  Placement placement = Placement::kPreSoftmax;  ///< domain of theta: s_j or p_j (semantics §2)
  Index k = 0;                                  ///< budget k_l; the row is thresholded iff L > k
  Acc theta = 0;  ///< Top-θ threshold in the placement's domain (threshold_in<Acc>(θ))
  EmptyRowPolicy empty_row = EmptyRowPolicy::kKeepMax;  ///< Top-θ rows nothing passes (§4.3)
  Index cap_k = 0;                              ///< 0 = no cap
  /// Optional: the row maximum M and the softmax denominator Z = sum_j exp(s_j - M), when the
  /// caller computed them already (decode does, while the keys stream). Post-softmax Top-θ then
  /// compares scores in the log domain and computes p_j only for the candidates.
  bool have_max_denominator = false;
  Acc row_max = 0;      ///< M = max_j s_j, read when have_max_denominator
  Acc denominator = 0;  ///< Z = sum_j exp(s_j - M), read when have_max_denominator
};

/// What the selection decided for a row.
template <class Acc>
struct RowSelection {
  Index count = 0;            ///< kept indices written
  Acc row_max = 0;            ///< M = max_j s_j (-inf for a fully masked row)
  Acc denominator = 0;        ///< Z = sum_j exp(s_j - M) when computed (post placement), else 0
  Acc next_score = 0;         ///< top-k: the (k+1)-th largest score (threshold for exp-threshold SDC)
  bool masked = false;        ///< every key masked: output 0
  bool thresholded = false;   ///< L > k in a sparse mode
  bool empty = false;         ///< thresholded and nothing passed
  bool mean_v = false;        ///< empty with the mean-V policy: output is vbar_L
  /// Post Top-θ: the probabilities are known: `probs[i]` = p of kept[i] (set by the
  /// log-domain path) or `scratch[j]` = p_j for every j (the full path).
  bool probs_in_scratch = false;
  /// Post Top-θ, log-domain path: `probs[i]` holds p of kept[i] (see probs_in_scratch).
  bool probs_compact = false;
};

/// Selects the kept keys of row `s[0..L)`. `scratch` (L values) is clobbered; for post-softmax
/// Top-θ it returns holding the probabilities (see RowSelection). `kept` receives up to L
/// indices; `probs` (L values) receives compact probabilities on the log-domain path.
template <class Ops, class Acc>
RowSelection<Acc> select_row(const Acc* s, Index L, const RowSelectParams<Acc>& p, Acc* scratch,
                             std::int32_t* kept, Acc* probs) {
  RowSelection<Acc> r;
  r.row_max = p.have_max_denominator ? p.row_max : Ops::row_max(s, L);
  r.thresholded = p.mode != AttentionMode::kDense && L > p.k;
  if (r.row_max == -std::numeric_limits<Acc>::infinity()) {  // fully masked: output 0
    r.masked = true;
    return r;
  }
  if (!r.thresholded) {
    for (Index j = 0; j < L; ++j) kept[j] = static_cast<std::int32_t>(j);
    r.count = L;
    return r;
  }
  if (p.mode == AttentionMode::kTopK) {
    Acc kth;
    r.count = detail::select_topk<Ops>(s, L, p.k, scratch, kept, &kth, &r.next_score);
  } else if (p.placement == Placement::kPreSoftmax) {
    r.count = Ops::indices_above(s, L, p.theta, kept);
  } else if (p.have_max_denominator && p.theta > Acc(0) && p.denominator > Acc(0) &&
             std::isfinite(p.denominator)) {
    // p_j > theta  <=>  s_j > M + log(theta Z), up to rounding: the candidates above a slightly
    // lower bound get p_j computed exactly as the full path does (same exp, same 1/Z).
    r.denominator = p.denominator;
    const Acc lg = std::log(p.theta * p.denominator);
    const Acc slack = Acc(1e-4) + Acc(1e-5) * (std::abs(r.row_max) + std::abs(lg));
    const Index nc = Ops::indices_above(s, L, r.row_max + lg - slack, kept);
    for (Index i = 0; i < nc; ++i) scratch[i] = s[kept[i]];
    Ops::exp_shifted(scratch, nc, r.row_max, probs);
    const Acc inv = Acc(1) / p.denominator;
    Index c = 0;
    for (Index i = 0; i < nc; ++i) {
      const Acc pj = probs[i] * inv;
      kept[c] = kept[i];
      probs[c] = pj;
      c += pj > p.theta;
    }
    r.count = c;
    r.probs_compact = true;
  } else {
    r.denominator = Ops::exp_shifted(s, L, r.row_max, scratch);
    if (r.denominator > 0) Ops::scale(scratch, Acc(1) / r.denominator, L);
    r.probs_in_scratch = true;
    r.count = Ops::indices_above(scratch, L, p.theta, kept);
  }
  if (r.count == 0) {
    r.empty = true;
    if (p.empty_row == EmptyRowPolicy::kMeanV) {
      r.mean_v = true;
      return r;
    }
    const Index am = detail::argmax_first(s, L);
    kept[0] = static_cast<std::int32_t>(am);
    if (r.probs_compact) {  // p of the maximum: exp(0) / Z
      Acc z = 0;
      Ops::exp_shifted(s + am, 1, r.row_max, &z);
      probs[0] = z * (Acc(1) / p.denominator);
    }
    r.count = 1;
  }
  if (p.cap_k > 0 && r.count > p.cap_k) {  // keep the cap_k most recent (largest j)
    const Index drop = r.count - p.cap_k;
    std::memmove(kept, kept + drop, sizeof(std::int32_t) * std::size_t(p.cap_k));
    if (r.probs_compact) std::memmove(probs, probs + drop, sizeof(Acc) * std::size_t(p.cap_k));
    r.count = p.cap_k;
  }
  return r;
}

}  // namespace toptheta
