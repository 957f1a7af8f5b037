#pragma once
/// \file reference/attention.hpp
/// Deliberately naive double-precision attention oracle: a straight transcription of
/// docs/semantics.md. Test-only: not included by the umbrella header.
///
/// Every row (token t, query head h) is computed from scratch: scores over j < L_t, selection,
/// weights, output; no tiling, no online softmax, no shared work between heads. Inputs are read
/// through the same strided views as the kernels and converted to double
/// (`double(float(x))` for half / bfloat16). Output is (T, Hq, d), packed, in double.
///
/// Complexity O(T * Hq * L * (d + log L)); meant for test shapes only.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../attention_args.hpp"
#include "../calibrator.hpp"
#include "../options.hpp"
#include "../stats.hpp"
#include "../status.hpp"
#include "../threshold_table.hpp"
#include "../types.hpp"
#include "calibration.hpp"

namespace toptheta::reference {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

/// Storage element -> double, rounding half / bfloat16 through float exactly like the kernels.
template <class T>
double to_double(T x) {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, double>)
    return x;
  else
    return static_cast<double>(static_cast<float>(x));
}

/// What the oracle decided for one (token, query head) row.
struct RowRecord {
  Index token = 0;
  Index head = 0;
  Index length = 0;          ///< L_t
  bool thresholded = false;  ///< sparse mode and L_t > k_l
  bool empty = false;        ///< thresholded Top-theta row where nothing passed
  bool mean_v = false;       ///< output is vbar (mean-V empty-row policy)
  bool masked = false;       ///< max_j s_j == -inf: output 0
  double theta = std::numeric_limits<double>::quiet_NaN();  ///< Top-theta: looked-up theta;
                                                            ///< top-k: (k_l+1)-th largest score
  std::vector<std::int32_t> kept;  ///< kept indices, ascending (dense rows: all j < L_t)
  std::vector<double> weights;     ///< w_j for each kept index (mean-V rows: empty)
  double weight_sum = 0.0;
  /// Smallest |a_j - theta| over j (Top-theta rows), to judge how borderline a row is.
  double theta_margin = kInf;
  /// Top-k rows: (k-th largest score) - ((k+1)-th largest score); 0 means a tie at the boundary.
  double topk_gap = kInf;
};

struct Result {
  Status status;
  Index tokens = 0, heads = 0, dim = 0;
  std::vector<double> out;      ///< (T, Hq, d) packed
  std::vector<RowRecord> rows;  ///< (T, Hq), index t * Hq + h; empty unless recorded
  AttentionStats stats;         ///< per-head counters enabled
  double at(Index t, Index h, Index i) const {
    return out[static_cast<std::size_t>((t * heads + h) * dim + i)];
  }
  const RowRecord& row(Index t, Index h) const {
    return rows[static_cast<std::size_t>(t * heads + h)];
  }
};

struct ReferenceOptions {
  bool record_rows = true;
  /// kCalibrate mode: observations go here (the oracle of the kernel's Calibrator).
  Calibration* calibration = nullptr;
  /// The call being modelled is `prefill` rather than `decode` (both read args.v_sum as the
  /// rows before the new tokens; kept for callers that say which call they check).
  bool prefill_call = false;
};

/// The scale the semantics prescribe: 1/sqrt(d) when 0 is given.
/// Value i of K (which = 0) or V (which = 1) row (token j, KV head g), from the views or the
/// paged cache, q8_0 dequantised, as double.
template <class T, class Q>
double cache_value(const AttentionArgs<T, Q>& args, int which, Index j, Index g, Index i) {
  const T* row = args.paged.empty() ? (which ? args.v.row(j, g) : args.k.row(j, g))
                                    : detail::paged_rows(args.paged, which == 1).row(j, g);
  return double(value_at(row, i));
}

template <class T, class Q>
double effective_scale(const AttentionArgs<T, Q>& args) {
  return args.scale == 0.0 ? 1.0 / std::sqrt(double(args.q.dim)) : args.scale;
}

/// Scores s_j, j < L_t = P + t + 1, of (token t, query head h), sanitized as semantics §2 says
/// in the accumulation type acc_t<T> (§11): NaN becomes -inf (a masked key), +inf its largest
/// finite value. A score beyond that type's range, which the kernels' score overflows to ±inf,
/// is clamped the same way (above: the largest finite value; below: -inf).
template <class T, class Q>
std::vector<double> scores(const AttentionArgs<T, Q>& args, Index t, Index h) {
  const Index Tq = args.q.tokens, Hq = args.q.heads, d = args.q.dim;
  const Index L = args.cache_tokens(), Hkv = args.cache_heads();
  const Index P = L - Tq;
  const Index Lt = P + t + 1;
  const Index g = h / (Hq / Hkv);
  const double scale = effective_scale(args);
  std::vector<double> s(static_cast<std::size_t>(Lt));
  for (Index j = 0; j < Lt; ++j) {
    double dot = 0.0;
    for (Index i = 0; i < d; ++i) dot += to_double(args.q(t, h, i)) * cache_value(args, 0, j, g, i);
    double x = scale * dot;
    if (!args.bias.empty()) x += double(args.bias(t, j));
    constexpr double big = double(std::numeric_limits<acc_t<T>>::max());
    if (std::isnan(x) || x < -big)
      x = -kInf;
    else if (x > big)
      x = big;
    s[static_cast<std::size_t>(j)] = x;
  }
  return s;
}

/// Dense probabilities p_j = exp(s_j - M) / Z (all 0 for a fully masked row).
inline std::vector<double> softmax(const std::vector<double>& s) {
  double M = -kInf;
  for (double x : s) M = std::max(M, x);
  std::vector<double> p(s.size(), 0.0);
  if (M == -kInf) return p;
  double z = 0.0;
  for (std::size_t j = 0; j < s.size(); ++j) z += (p[j] = std::exp(s[j] - M));
  for (double& x : p) x /= z;
  return p;
}

/// exp(x) as the kernels' exponential gives it in the accumulation type Acc, to the precision
/// that decides whether it is 0: float is 0 below -87.3 (exp_poly, §11), double below its own
/// underflow.
template <class Acc>
double kernel_exp(double x) {
  if constexpr (std::is_same_v<Acc, float>) return x < -87.3 ? 0.0 : double(float(std::exp(x)));
  else return std::exp(x);
}

/// vbar_{L_t}: mean of V rows 0..L_t-1 of KV head g. Uses the caller's running sum where the
/// kernel would (`args.v_sum` set and `vbar` not VbarSource::kSumCache): it covers rows 0..P-1
/// (the rows before the new tokens), the new rows up to L_t are added.
template <class T, class Q>
std::vector<double> v_mean(const AttentionArgs<T, Q>& args, VbarSource vbar, Index t, Index g) {
  const Index Tq = args.q.tokens, d = args.q.dim, L = args.cache_tokens();
  const Index P = L - Tq;
  const Index Lt = P + t + 1;
  std::vector<double> m(static_cast<std::size_t>(d), 0.0);
  Index from = 0;
  if (args.v_sum && vbar != VbarSource::kSumCache) {
    const Index stride = args.v_sum_stride ? args.v_sum_stride : d;
    for (Index i = 0; i < d; ++i)
      m[static_cast<std::size_t>(i)] = double(args.v_sum[g * stride + i]);
    from = P;
  }
  for (Index j = from; j < Lt; ++j)
    for (Index i = 0; i < d; ++i) m[static_cast<std::size_t>(i)] += cache_value(args, 1, j, g, i);
  for (double& x : m) x /= double(Lt);
  return m;
}

/// Placement values a_j of (t, h) for a placement.
template <class T, class Q>
std::vector<double> placement_values(const AttentionArgs<T, Q>& args, Index t, Index h, Placement pl) {
  std::vector<double> s = scores(args, t, h);
  return pl == Placement::kPreSoftmax ? s : softmax(s);
}

/// The k largest scores, ties to the lower index; ascending indices.
inline std::vector<std::int32_t> topk_indices(const std::vector<double>& s, Index k) {
  std::vector<std::int32_t> idx(s.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::int32_t a, std::int32_t b) { return s[a] > s[b]; });
  idx.resize(static_cast<std::size_t>(std::min<Index>(k, Index(s.size()))));
  std::sort(idx.begin(), idx.end());
  return idx;
}

/// Whether the call is the decode form (q.tokens == 1) is irrelevant here: decode is prefill with
/// T = 1. Returns `validate(args, opt)`'s error in `status` without computing anything.
template <class T, class Q>
Result attention(const AttentionArgs<T, Q>& args, const AttentionOptions& opt,
                 const ReferenceOptions& ropt = {}) {
  Result r;
  r.status = validate(args, opt);
  if (!r.status.ok()) return r;
  const Index Tq = args.q.tokens, Hq = args.q.heads, d = args.q.dim;
  const Index L = args.cache_tokens(), Hkv = args.cache_heads();
  const Index P = L - Tq;
  const Index G = Hq / Hkv;
  r.tokens = Tq;
  r.heads = Hq;
  r.dim = d;
  r.out.assign(static_cast<std::size_t>(Tq * Hq * d), 0.0);
  // Per-head statistics are the model's heads; the call's head h is head_offset + h (§1).
  const Index model_heads = args.model_heads > 0 ? args.model_heads : Hq;
  r.stats.enable_per_head(model_heads);
  if (ropt.record_rows) r.rows.resize(static_cast<std::size_t>(Tq * Hq));

  // Budget, sparsity, placement for this call.
  Index kl = opt.k;
  bool sparse = false;
  Placement placement = opt.placement;
  switch (opt.mode) {
    case AttentionMode::kDense:
      kl = opt.k;
      break;
    case AttentionMode::kTopK:
      kl = opt.k;
      sparse = true;
      break;
    case AttentionMode::kTopTheta:
      kl = opt.thresholds->k(args.layer);
      sparse = true;
      break;
    case AttentionMode::kCalibrate:
      kl = opt.calibrator->k(args.layer);
      sparse = opt.calibrator->options().tac == TacMode::kOn;
      placement = opt.calibrator->placement();
      break;
  }
  const bool topk_select =
      opt.mode == AttentionMode::kTopK || opt.mode == AttentionMode::kCalibrate;

  for (Index t = 0; t < Tq; ++t) {
    const Index Lt = P + t + 1;
    std::vector<std::vector<bool>> group_union(
        static_cast<std::size_t>(Hkv), std::vector<bool>(static_cast<std::size_t>(Lt), false));
    for (Index h = 0; h < Hq; ++h) {
      const Index g = h / G;
      RowRecord rec;
      rec.token = t;
      rec.head = h;
      rec.length = Lt;
      const std::vector<double> s = scores(args, t, h);
      const std::vector<double> p = softmax(s);
      double M = -kInf;
      for (double x : s) M = std::max(M, x);
      const std::vector<double>& a = placement == Placement::kPreSoftmax ? s : p;

      if (opt.mode == AttentionMode::kCalibrate && ropt.calibration && Lt > kl)
        ropt.calibration->observe(args.layer, args.head_offset + h, a, s);

      rec.thresholded = sparse && Lt > kl;
      rec.masked = (M == -kInf);
      std::vector<bool> keep(static_cast<std::size_t>(Lt), false);
      std::vector<double> w(static_cast<std::size_t>(Lt), 0.0);
      double theta = std::numeric_limits<double>::quiet_NaN();
      // A weight whose exponential exp(s_j - m) the kernels' accumulation type flushes to 0 is
      // exactly 0 there, so its V row never reaches the output (§7, §11); w_j otherwise.
      const auto acc_weight = [&](Index j, double m, double wj) {
        return kernel_exp<acc_t<T>>(s[static_cast<std::size_t>(j)] - m) == 0.0 ? 0.0 : wj;
      };
      // Rows whose weights sum to 1 by definition have VMC coefficient exactly 0 (§6), as in the
      // kernels: pre-softmax rows with no compensation in the denominator (renormalised: SDC
      // none or §5's fallback; or sdc_scale * D~ = 0 in the accumulation type) and post-softmax
      // rows that keep every key.
      bool sums_to_one = false;

      if (rec.masked) {
        // Fully masked: output 0, nothing kept, never empty.
      } else if (!rec.thresholded) {
        for (Index j = 0; j < Lt; ++j) {
          keep[static_cast<std::size_t>(j)] = true;
          w[static_cast<std::size_t>(j)] = acc_weight(j, M, p[static_cast<std::size_t>(j)]);
        }
      } else {
        // 1. selection
        if (topk_select) {
          for (std::int32_t j : topk_indices(s, kl)) keep[static_cast<std::size_t>(j)] = true;
          std::vector<double> sorted = s;
          std::sort(sorted.begin(), sorted.end(), std::greater<double>());
          theta = sorted[static_cast<std::size_t>(kl)];  // (k_l + 1)-th largest score
          rec.topk_gap =
              sorted[static_cast<std::size_t>(kl - 1)] - sorted[static_cast<std::size_t>(kl)];
        } else {
          const ThresholdLookup lk = opt.thresholds->lookup(args.layer, args.head_offset + h, Lt, opt.lookup);
          theta = lk.theta;
          bool any = false;
          for (Index j = 0; j < Lt; ++j) {
            const double aj = a[static_cast<std::size_t>(j)];
            keep[static_cast<std::size_t>(j)] = aj > theta;
            any = any || aj > theta;
            rec.theta_margin = std::min(rec.theta_margin, std::abs(aj - theta));
          }
          // 2. empty row
          if (!any) {
            rec.empty = true;
            if (opt.empty_row == EmptyRowPolicy::kKeepMax) {
              Index am = 0;
              for (Index j = 1; j < Lt; ++j)
                if (s[static_cast<std::size_t>(j)] > s[static_cast<std::size_t>(am)]) am = j;
              keep[static_cast<std::size_t>(am)] = true;
            } else {
              rec.mean_v = true;
            }
          }
        }
        // 3. cap_k: keep the cap_k largest indices.
        if (opt.cap_k > 0) {
          Index n = 0;
          for (Index j = Lt - 1; j >= 0; --j)
            if (keep[static_cast<std::size_t>(j)]) {
              if (n >= opt.cap_k)
                keep[static_cast<std::size_t>(j)] = false;
              else
                ++n;
            }
        }
        // 4. weights
        if (!rec.mean_v) {
          Index n_kept = 0;
          for (bool b : keep) n_kept += b;
          if (placement == Placement::kPostSoftmax) {
            for (Index j = 0; j < Lt; ++j)
              if (keep[static_cast<std::size_t>(j)])
                w[static_cast<std::size_t>(j)] = acc_weight(j, M, p[static_cast<std::size_t>(j)]);
            sums_to_one = n_kept == Lt;
          } else {
            // SDC none: renormalise over the kept set. A kept set of masked keys only (top-k
            // with fewer than k_l unmasked keys, whose cap_k kept only masked ones) has weights
            // 0, which sum to 0, not 1: VMC's coefficient is then 1 (§5, §6).
            const auto renormalise = [&] {
              double Mk = -kInf;
              for (Index j = 0; j < Lt; ++j)
                if (keep[static_cast<std::size_t>(j)])
                  Mk = std::max(Mk, s[static_cast<std::size_t>(j)]);
              if (Mk == -kInf) return;
              double z = 0.0;
              for (Index j = 0; j < Lt; ++j)
                if (keep[static_cast<std::size_t>(j)])
                  z += std::exp(s[static_cast<std::size_t>(j)] - Mk);
              for (Index j = 0; j < Lt; ++j)
                if (keep[static_cast<std::size_t>(j)])
                  w[static_cast<std::size_t>(j)] =
                      acc_weight(j, Mk, std::exp(s[static_cast<std::size_t>(j)] - Mk) / z);
              sums_to_one = true;
            };
            if (opt.sdc == SdcMode::kNone) {
              renormalise();
            } else {
              // D and D~ in double; `den_acc` is D + sdc_scale * D~ as the kernels form it in
              // the accumulation type (float: their exponential is 0 below -87.3, §11), which
              // decides §5's fallback to SDC none.
              double D = 0.0, Dt = 0.0, D_acc = 0.0, Dt_acc = 0.0;
              for (Index j = 0; j < Lt; ++j) {
                const double e = std::exp(s[static_cast<std::size_t>(j)] - M);
                const double e_acc = kernel_exp<acc_t<T>>(s[static_cast<std::size_t>(j)] - M);
                if (keep[static_cast<std::size_t>(j)]) {
                  D += e;
                  D_acc += e_acc;
                } else if (opt.sdc == SdcMode::kExact) {
                  Dt += e;
                  Dt_acc += e_acc;
                }
              }
              if (opt.sdc == SdcMode::kExpThreshold) {
                Dt = double(Lt - n_kept) * std::exp(theta - M);
                Dt_acc = double(Lt - n_kept) * double(acc_t<T>(std::exp(theta - M)));
              } else if (opt.sdc == SdcMode::kCalibrated) {
                Dt = Dt_acc = opt.thresholds->lookup(args.layer, args.head_offset + h, Lt, opt.lookup).sdc;
              }
              const double den = D + (opt.sdc_scale != 0.0 ? opt.sdc_scale * Dt : 0.0);
              const double den_acc = D_acc + (opt.sdc_scale != 0.0 ? opt.sdc_scale * Dt_acc : 0.0);
              if (!(den_acc > 0.0)) {
                renormalise();
              } else {
                // No compensation as the kernels' accumulation type adds it: D + sdc_scale * D~
                // rounds to D there.
                sums_to_one = double(acc_t<T>(den_acc)) == double(acc_t<T>(D_acc));
                for (Index j = 0; j < Lt; ++j)
                  if (keep[static_cast<std::size_t>(j)])
                    w[static_cast<std::size_t>(j)] =
                        acc_weight(j, M, std::exp(s[static_cast<std::size_t>(j)] - M) / den);
              }
            }
          }
        }
      }
      rec.theta = theta;

      // 5. output
      double* o = &r.out[static_cast<std::size_t>((t * Hq + h) * d)];
      double wsum = 0.0;
      for (Index j = 0; j < Lt; ++j) {
        if (!keep[static_cast<std::size_t>(j)]) continue;
        const double wj = w[static_cast<std::size_t>(j)];
        wsum += wj;
        rec.kept.push_back(static_cast<std::int32_t>(j));
        rec.weights.push_back(wj);
        // A V row with weight exactly 0 never reaches the output (semantics §7): 0 * NaN would otherwise poison it.
        if (wj == 0.0) continue;
        for (Index i = 0; i < d; ++i) o[i] += wj * cache_value(args, 1, j, g, i);
      }
      rec.weight_sum = wsum;
      if (rec.mean_v) {
        const std::vector<double> vb = v_mean(args, opt.vbar, t, g);
        for (Index i = 0; i < d; ++i) o[i] = vb[static_cast<std::size_t>(i)];
      } else if (rec.thresholded && !rec.masked && opt.vmc == VmcMode::kOn && !sums_to_one &&
                 1.0 - wsum != 0.0) {
        // A coefficient of exactly 0 does not use vbar (§7: 0 * NaN is never formed).
        const std::vector<double> vb = v_mean(args, opt.vbar, t, g);
        for (Index i = 0; i < d; ++i) o[i] += (1.0 - wsum) * vb[static_cast<std::size_t>(i)];
      }

      // statistics, per (row, query head)
      const Index kept = Index(rec.kept.size());
      r.stats.rows += 1;
      r.stats.elements_total += std::uint64_t(Lt);
      r.stats.elements_kept += std::uint64_t(kept);
      r.stats.elements_topk += std::uint64_t(std::min(kl, Lt));
      r.stats.thresholded_rows += rec.thresholded;
      r.stats.empty_rows += rec.empty;
      if (rec.thresholded) r.stats.elements_kept_thresholded += std::uint64_t(kept);
      // A Top-θ row longer than every length its (layer, head) was calibrated at.
      if (rec.thresholded && opt.mode == AttentionMode::kTopTheta) {
        const Index limit = opt.thresholds->max_calibrated_length(args.layer, args.head_offset + h);
        r.stats.extrapolated_rows += limit > 0 && Lt > limit;
      }
      r.stats.kept_per_head[static_cast<std::size_t>(args.head_offset + h)] += std::uint64_t(kept);
      r.stats.total_per_head[static_cast<std::size_t>(args.head_offset + h)] += std::uint64_t(Lt);
      for (std::int32_t j : rec.kept)
        group_union[static_cast<std::size_t>(g)][static_cast<std::size_t>(j)] = true;
      if (ropt.record_rows) r.rows[static_cast<std::size_t>(t * Hq + h)] = std::move(rec);
    }
    // statistics, per (row, KV head)
    for (Index g = 0; g < Hkv; ++g) {
      r.stats.vrows_total += std::uint64_t(Lt);
      for (bool b : group_union[static_cast<std::size_t>(g)]) r.stats.vrows_read += b;
    }
  }
  return r;
}

}  // namespace toptheta::reference
