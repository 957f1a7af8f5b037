#pragma once
/// \file row_select.hpp
/// Row selection stage: which keys of one score row are kept (DESIGN.md section 2, inference
/// steps 1-3; docs/semantics.md). Dense, exact top-k, or a comparison with a static threshold;
/// empty-row policy; cap_k.
///
/// All functions work on one row `s[0..L)` of scores in the accumulation type and write the kept
/// indices in ascending order. O(L) time, no allocation.

#include <cstdint>
#include <cstring>
#include <limits>

#include "detail/select.hpp"
#include "detail/softmax_math.hpp"
#include "options.hpp"
#include "types.hpp"

namespace toptheta {

/// Per-row selection parameters, resolved by the orchestration for one (layer, head, L).
template <class Acc>
struct RowSelectParams {
  AttentionMode mode = AttentionMode::kDense;  ///< kDense, kTopK or kTopTheta (already resolved)
  Placement placement = Placement::kPreSoftmax;
  Index k = 0;                                  ///< budget k_l; the row is thresholded iff L > k
  Acc theta = 0;                                ///< Top-θ threshold in the placement's domain
  EmptyRowPolicy empty_row = EmptyRowPolicy::kKeepMax;
  Index cap_k = 0;                              ///< 0 = no cap
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
  bool probs_in_scratch = false;  ///< post Top-θ: scratch[0..L) holds p_j
};

/// Selects the kept keys of row `s[0..L)`. `scratch` (L values) is clobbered; for post-softmax
/// Top-θ it returns holding the probabilities p_j. `kept` receives up to L indices.
template <class Acc>
RowSelection<Acc> select_row(const Acc* s, Index L, const RowSelectParams<Acc>& p, Acc* scratch,
                             std::int32_t* kept) {
  RowSelection<Acc> r;
  r.row_max = detail::row_max(s, L);
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
    r.count = detail::select_topk(s, L, p.k, scratch, kept, &kth, &r.next_score);
  } else if (p.placement == Placement::kPreSoftmax) {
    r.count = detail::select_above(s, L, p.theta, kept);
  } else {
    r.denominator = detail::softmax_probs(s, L, r.row_max, scratch);
    r.probs_in_scratch = true;
    r.count = detail::select_above(scratch, L, p.theta, kept);
  }
  if (r.count == 0) {
    r.empty = true;
    if (p.empty_row == EmptyRowPolicy::kMeanV) {
      r.mean_v = true;
      return r;
    }
    kept[0] = static_cast<std::int32_t>(detail::argmax_first(s, L));
    r.count = 1;
  }
  if (p.cap_k > 0 && r.count > p.cap_k) {  // keep the cap_k most recent (largest j)
    std::memmove(kept, kept + (r.count - p.cap_k), sizeof(std::int32_t) * std::size_t(p.cap_k));
    r.count = p.cap_k;
  }
  return r;
}

}  // namespace toptheta
