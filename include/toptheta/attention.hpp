#pragma once
/// \file attention.hpp
/// Attention entry points: `decode` (one new token) and `prefill` (T new tokens, causal) for the
/// dense, top-k and Top-θ modes and for calibration (DESIGN.md sections 2 and 3;
/// docs/semantics.md fixes the details).
///
/// Data flow per (block of query rows, KV group): scores S (rows x L, each (query, key) score
/// computed once) -> per head row: selection (row_select.hpp) and weights (sparse_softmax.hpp)
/// -> union of the kept keys over the group's heads and one read per kept V row
/// (gather.hpp) -> VMC -> statistics. Decode is the same pipeline with a single row.
///
/// Complexity per row and KV group: O(L * d * G) for the scores, O(L) selection, O(|U| * d * G)
/// for the gather. Memory traffic: all of K, plus the union of kept V rows.
///
/// Threads: work items are (query block, KV group) pairs, each computed by one thread with a
/// fixed summation order, so results are bit-identical for any thread count. Calibration runs
/// the blocks of one KV group in order on one thread (the calibrator is per head).
///
/// Allocation: none when a workspace of `workspace_size(args, options)` bytes is given.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "attention_args.hpp"
#include "calibrator.hpp"
#include "detail/dot.hpp"
#include "detail/softmax_math.hpp"
#include "gather.hpp"
#include "row_select.hpp"
#include "sparse_softmax.hpp"
#include "stats.hpp"
#include "workspace.hpp"

namespace toptheta {
namespace detail {

/// Integer counters of one thread; merged into AttentionStats after the parallel region.
struct StatCounters {
  std::uint64_t rows, thresholded_rows, empty_rows, elements_total, elements_kept, elements_topk,
      elements_kept_thresholded, vrows_total, vrows_read;
};

/// Everything derived from the arguments once per call.
struct CallPlan {
  Index T, L, P, Hq, Hkv, G, d;
  Index block_rows;     // query rows per work item
  Index num_blocks;
  Index rows_per_item;  // block_rows * G
  int threads;
  bool need_vbar;       // VMC or mean-V may be used
  bool calibrate;
  bool per_head_stats;
};

inline constexpr std::size_t kScoreBlockBytes = std::size_t(4) << 20;  // per-thread score budget

template <class T>
CallPlan make_plan(const AttentionArgs<T>& a, const AttentionOptions& o) {
  CallPlan p{};
  p.T = a.q.tokens;
  p.L = a.k.tokens;
  p.P = p.L - p.T;
  p.Hq = a.q.heads;
  p.Hkv = a.k.heads;
  p.G = p.Hq / std::max<Index>(p.Hkv, 1);
  p.d = a.q.dim;
  // Bytes per score row: S, weights, kept indices (+ compact weights amortised).
  const std::size_t row_bytes = std::size_t(p.L) * (2 * sizeof(acc_t<T>) + sizeof(std::int32_t));
  const Index fit = Index(kScoreBlockBytes / std::max<std::size_t>(row_bytes * std::size_t(p.G), 1));
  p.block_rows = std::clamp<Index>(fit, 1, 64);
  p.block_rows = std::min(p.block_rows, std::max<Index>(p.T, 1));
  p.num_blocks = (p.T + p.block_rows - 1) / p.block_rows;
  p.rows_per_item = p.block_rows * p.G;
  p.calibrate = o.mode == AttentionMode::kCalibrate;
  const Index items = p.calibrate ? p.Hkv : p.num_blocks * p.Hkv;
  p.threads = int(std::max<Index>(1, std::min<Index>(resolve_threads(o.threads), items)));
  p.need_vbar = o.mode != AttentionMode::kDense &&
                (o.vmc == VmcMode::kOn || o.empty_row == EmptyRowPolicy::kMeanV);
  p.per_head_stats = o.stats && !o.stats->kept_per_head.empty();
  return p;
}

/// Per-thread buffers carved from the workspace.
template <class Acc>
struct ThreadScratch {
  Acc* q;              // (R, d) scaled queries
  Acc* s;              // (R, L) scores
  Acc* w;              // (R, L) compact weights
  std::int32_t* kept;  // (R, L) kept indices
  Acc* sel;            // (L) selection scratch / probabilities
  Acc* kbuf;           // (d) converted key row
  Acc* vrun;           // (d) running V sum
  Acc* vbar;           // (d)
  RowSelection<Acc>* rsel;  // (R)
  Acc* wsum;           // (R)
  GatherScratch<Acc> gather;
  StatCounters* counters;
  std::uint64_t* head_kept;   // (Hq) or null
  std::uint64_t* head_total;  // (Hq) or null
};

template <class Acc>
ThreadScratch<Acc> carve_thread(Arena& ar, const CallPlan& p) {
  ThreadScratch<Acc> t{};
  const Index R = p.rows_per_item, L = p.L, d = p.d;
  t.q = ar.take<Acc>(R * d);
  t.s = ar.take<Acc>(R * L);
  t.w = ar.take<Acc>(R * L);
  t.kept = ar.take<std::int32_t>(R * L);
  t.sel = ar.take<Acc>(L);
  t.kbuf = ar.take<Acc>(d);
  t.vrun = ar.take<Acc>(d);
  t.vbar = ar.take<Acc>(d);
  t.rsel = ar.take<RowSelection<Acc>>(R);
  t.wsum = ar.take<Acc>(R);
  t.gather.mark = ar.take<std::uint8_t>(L);
  t.gather.uni = ar.take<std::int32_t>(L);
  t.gather.wc = ar.take<Acc>(L * p.G);
  t.gather.vbuf = ar.take<Acc>(d);
  t.counters = ar.take<StatCounters>(1);
  t.head_kept = p.per_head_stats ? ar.take<std::uint64_t>(p.Hq) : nullptr;
  t.head_total = p.per_head_stats ? ar.take<std::uint64_t>(p.Hq) : nullptr;
  return t;
}

/// Bytes needed, measured by carving from a null arena.
template <class T>
std::size_t measure(const AttentionArgs<T>& a, const AttentionOptions& o, const CallPlan& p) {
  using Acc = acc_t<T>;
  (void)a;
  (void)o;
  Arena ar;
  if (p.need_vbar) ar.take<Acc>(p.num_blocks * p.Hkv * p.d);
  ar.take<ThreadScratch<Acc>>(p.threads);
  for (int i = 0; i < p.threads; ++i) carve_thread<Acc>(ar, p);
  return ar.used();
}

/// Sum of V rows [first, first + count) of KV head g, added into acc (d values).
template <class T, class Acc>
void add_v_rows(const HeadsView<const T>& v, Index g, Index first, Index count, Acc* acc) {
  for (Index j = first; j < first + count; ++j) {
    const T* r = v.row(j, g);
    for (Index i = 0; i < v.dim; ++i) acc[i] += to_acc<Acc>(r[i]);
  }
}

/// Fills vprefix[b][g] = sum of V rows 0 .. P + b * block_rows - 1 (decode with a caller sum:
/// rows 0 .. L - 1, flagged by the caller).
template <class T>
void compute_v_prefix(const AttentionArgs<T>& a, const CallPlan& p, acc_t<T>* vprefix,
                      bool decode_sum_given) {
  using Acc = acc_t<T>;
  const Index d = p.d;
  for (Index g = 0; g < p.Hkv; ++g) {
    Acc* b0 = vprefix + g * d;
    const Index stride = a.v_sum_stride > 0 ? a.v_sum_stride : d;
    if (a.v_sum) {
      std::memcpy(b0, a.v_sum + g * stride, sizeof(Acc) * std::size_t(d));
      (void)decode_sum_given;
    } else {
      std::fill(b0, b0 + d, Acc(0));
      add_v_rows(a.v, g, 0, p.P, b0);
    }
    for (Index b = 1; b < p.num_blocks; ++b) {
      Acc* cur = vprefix + (b * p.Hkv + g) * d;
      std::memcpy(cur, vprefix + ((b - 1) * p.Hkv + g) * d, sizeof(Acc) * std::size_t(d));
      add_v_rows(a.v, g, p.P + (b - 1) * p.block_rows, p.block_rows, cur);
    }
  }
}

/// One work item: query rows [t0, t1) of KV group g.
template <class T>
void run_item(const AttentionArgs<T>& a, const AttentionOptions& o, const CallPlan& p, Index t0,
              Index t1, Index g, const acc_t<T>* vprefix, bool vsum_includes_row,
              ThreadScratch<acc_t<T>>& ts) {
  using Acc = acc_t<T>;
  const Index G = p.G, d = p.d, L = p.L;
  const Index Lmax = p.P + t1;  // longest row of the block
  const Acc scale = a.scale > 0 ? Acc(a.scale) : Acc(1) / std::sqrt(Acc(d));
  const Acc neg_inf = -std::numeric_limits<Acc>::infinity();

  // Effective mode of this call: calibration runs top-k (TAC) or dense for its output.
  AttentionMode sel_mode = o.mode;
  Placement placement = o.placement;
  Index k_l = o.k;
  if (o.mode == AttentionMode::kTopTheta) k_l = o.thresholds->k(a.layer);
  if (p.calibrate) {
    k_l = o.calibrator->k(a.layer);
    placement = o.calibrator->placement();
    sel_mode = o.calibrator->options().tac == TacMode::kOn ? AttentionMode::kTopK
                                                           : AttentionMode::kDense;
  }

  // Scaled queries of the block: row r = (t - t0) * G + hh.
  for (Index t = t0; t < t1; ++t)
    for (Index hh = 0; hh < G; ++hh) {
      Acc* qr = ts.q + ((t - t0) * G + hh) * d;
      const T* src = a.q.row(t, g * G + hh);
      for (Index i = 0; i < d; ++i) qr[i] = scale * to_acc<Acc>(src[i]);
    }
  // Scores: walk the keys once; each key row is converted once and dotted with all R queries.
  const MatrixView<const T> kh = a.k.head(g);
  for (Index j = 0; j < Lmax; ++j) {
    const T* kr = kh.row(j);
    const Acc* kv;
    if constexpr (std::is_same_v<T, Acc>) {
      kv = kr;
    } else {
      load_row(kr, d, ts.kbuf);
      kv = ts.kbuf;
    }
    // Causal: row t sees keys j < P + t + 1, i.e. rows with t >= j - P.
    const Index tfirst = std::max<Index>(t0, j - p.P);
    for (Index t = tfirst; t < t1; ++t) {
      const Acc bias = a.bias.empty() ? Acc(0) : Acc(a.bias(t, j));
      for (Index hh = 0; hh < G; ++hh) {
        const Index r = (t - t0) * G + hh;
        Acc sc = dot(ts.q + r * d, kv, d) + bias;
        ts.s[r * L + j] = std::isnan(sc) ? neg_inf : sc;
      }
    }
  }

  StatCounters& c = *ts.counters;
  const Acc* vsum_block = vprefix ? vprefix + ((t0 / p.block_rows) * p.Hkv + g) * d : nullptr;
  if (vsum_block) std::memcpy(ts.vrun, vsum_block, sizeof(Acc) * std::size_t(d));
  const MatrixView<const T> vh = a.v.head(g);

  for (Index t = t0; t < t1; ++t) {
    const Index Lt = p.P + t + 1;
    if (vsum_block) {
      if (!vsum_includes_row) add_v_rows(a.v, g, Lt - 1, 1, ts.vrun);
      const Acc inv = Acc(1) / Acc(Lt);
      for (Index i = 0; i < d; ++i) ts.vbar[i] = ts.vrun[i] * inv;
    }
    const std::int32_t* kept_ptrs[256];
    const Acc* w_ptrs[256];
    Index counts[256];
    Acc coeff[256];
    Acc* out_ptrs[256];
    for (Index hh = 0; hh < G; ++hh) {
      const Index r = (t - t0) * G + hh;
      const Index h = g * G + hh;
      const Acc* s = ts.s + r * L;
      std::int32_t* kept = ts.kept + r * L;
      Acc* w = ts.w + r * L;

      if (p.calibrate && Lt > k_l) {
        const Acc m = row_max(s, Lt);
        const Acc* av = s;
        if (placement == Placement::kPostSoftmax) {
          softmax_probs(s, Lt, m, w);  // w is free until the weights are computed
          av = w;
        }
        o.calibrator->observe_row<Acc>(a.layer, h, av, Lt, s, m, ts.sel);
      }

      RowSelectParams<Acc> sp;
      sp.mode = sel_mode;
      sp.placement = placement;
      sp.k = k_l;
      sp.empty_row = o.empty_row;
      sp.cap_k = o.cap_k;
      RowWeightParams<Acc> wp;
      wp.placement = placement;
      wp.sdc = o.sdc;
      wp.sdc_scale = Acc(o.sdc_scale);
      if (sel_mode == AttentionMode::kTopTheta && Lt > k_l) {
        const ThresholdLookup th = o.thresholds->lookup(a.layer, h, Lt, o.lookup);
        sp.theta = Acc(th.theta);
        wp.theta = Acc(th.theta);
        wp.sdc_term = std::isnan(th.sdc) ? Acc(0) : Acc(th.sdc);
      }
      const RowSelection<Acc> sel = select_row(s, Lt, sp, ts.sel, kept);
      if (sel_mode == AttentionMode::kTopK) wp.theta = sel.next_score;
      const Acc wsum = row_weights(s, Lt, sel, kept, wp, ts.sel, w);

      kept_ptrs[hh] = kept;
      w_ptrs[hh] = w;
      counts[hh] = (sel.masked || sel.mean_v) ? 0 : sel.count;
      coeff[hh] = 0;
      if (sel.mean_v) coeff[hh] = 1;
      else if (sel.thresholded && !sel.masked && o.vmc == VmcMode::kOn) coeff[hh] = Acc(1) - wsum;
      out_ptrs[hh] = a.out.row(t, h);

#ifndef TOPTHETA_NO_STATS
      c.rows += 1;
      c.elements_total += std::uint64_t(Lt);
      c.elements_kept += std::uint64_t(counts[hh]);
      c.elements_topk += std::uint64_t(std::min(k_l, Lt));
      if (sel.thresholded) {
        c.thresholded_rows += 1;
        c.empty_rows += sel.empty;
        c.elements_kept_thresholded += std::uint64_t(counts[hh]);
      }
      if (ts.head_kept) {
        ts.head_kept[h] += std::uint64_t(counts[hh]);
        ts.head_total[h] += std::uint64_t(Lt);
      }
#endif
    }
    GroupRow<Acc> gr{G, Lt, kept_ptrs, w_ptrs, counts, coeff, vsum_block ? ts.vbar : nullptr};
    const Index nu = gather_group_row<Acc, T>(gr, vh, out_ptrs, ts.gather);
#ifndef TOPTHETA_NO_STATS
    c.vrows_total += std::uint64_t(Lt);
    c.vrows_read += std::uint64_t(nu);
#else
    (void)nu;
#endif
  }
}

template <class T>
Status run(const AttentionArgs<T>& a, const AttentionOptions& o, Workspace ws, bool is_decode) {
  using Acc = acc_t<T>;
  TOPTHETA_RETURN_IF_ERROR(validate(a, o));
  if (is_decode && a.q.tokens != 1)
    return Status::invalid_argument("decode takes one query token, q has shape " +
                                    shape_string(a.q) + "; use prefill for several");
  const CallPlan p = make_plan(a, o);
  if (p.G > 256)
    return Status::invalid_argument("more than 256 query heads per KV head are not supported");
  const std::size_t need = measure(a, o, p);
  if (ws.bytes < need || ws.data == nullptr)
    return Status::invalid_argument("workspace of " + std::to_string(ws.bytes) +
                                    " bytes is smaller than the " + std::to_string(need) +
                                    " bytes workspace_size() requires");
  Arena ar(ws);
  Acc* vprefix = p.need_vbar ? ar.take<Acc>(p.num_blocks * p.Hkv * p.d) : nullptr;
  ThreadScratch<Acc>* scratch = ar.take<ThreadScratch<Acc>>(p.threads);
  for (int i = 0; i < p.threads; ++i) {
    scratch[i] = carve_thread<Acc>(ar, p);
    std::memset(scratch[i].counters, 0, sizeof(StatCounters));
    std::memset(scratch[i].gather.mark, 0, std::size_t(p.L));
    if (scratch[i].head_kept) {
      std::memset(scratch[i].head_kept, 0, sizeof(std::uint64_t) * std::size_t(p.Hq));
      std::memset(scratch[i].head_total, 0, sizeof(std::uint64_t) * std::size_t(p.Hq));
    }
  }
  // Decode with a caller-supplied sum: it already covers the new row.
  const bool vsum_includes_row = is_decode && a.v_sum != nullptr;
  if (vprefix) compute_v_prefix(a, p, vprefix, vsum_includes_row);

  const Index num_items = p.calibrate ? p.Hkv : p.num_blocks * p.Hkv;
  auto do_item = [&](Index item, ThreadScratch<Acc>& ts) {
    if (p.calibrate) {  // one KV group, all blocks in order
      for (Index b = 0; b < p.num_blocks; ++b)
        run_item(a, o, p, b * p.block_rows, std::min(p.T, (b + 1) * p.block_rows), item, vprefix,
                 vsum_includes_row, ts);
    } else {
      const Index b = item / p.Hkv, g = item % p.Hkv;
      run_item(a, o, p, b * p.block_rows, std::min(p.T, (b + 1) * p.block_rows), g, vprefix,
               vsum_includes_row, ts);
    }
  };
#if TOPTHETA_HAS_OPENMP
  if (p.threads > 1) {
#pragma omp parallel num_threads(p.threads)
    {
      ThreadScratch<Acc>& ts = scratch[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
      for (Index item = 0; item < num_items; ++item) do_item(item, ts);
    }
  } else
#endif
  {
    for (Index item = 0; item < num_items; ++item) do_item(item, scratch[0]);
  }

#ifndef TOPTHETA_NO_STATS
  if (o.stats) {
    AttentionStats& st = *o.stats;
    for (int i = 0; i < p.threads; ++i) {
      const StatCounters& c = *scratch[i].counters;
      st.rows += c.rows;
      st.thresholded_rows += c.thresholded_rows;
      st.empty_rows += c.empty_rows;
      st.elements_total += c.elements_total;
      st.elements_kept += c.elements_kept;
      st.elements_topk += c.elements_topk;
      st.elements_kept_thresholded += c.elements_kept_thresholded;
      st.vrows_total += c.vrows_total;
      st.vrows_read += c.vrows_read;
      if (p.per_head_stats && Index(st.kept_per_head.size()) == p.Hq)
        for (Index h = 0; h < p.Hq; ++h) {
          st.kept_per_head[std::size_t(h)] += scratch[i].head_kept[h];
          st.total_per_head[std::size_t(h)] += scratch[i].head_total[h];
        }
    }
  }
#endif
  return {};
}

}  // namespace detail

/// Bytes of scratch memory `decode`/`prefill` need for these arguments and options (including
/// one set of buffers per thread). O(threads * rows_per_block * G * L) with a per-thread score
/// block of about 4 MiB for prefill.
template <class T>
std::size_t workspace_size(const AttentionArgs<T>& args, const AttentionOptions& options) {
  if (!validate(args, options).ok()) return 0;
  const detail::CallPlan p = detail::make_plan(args, options);
  return detail::measure(args, options, p);
}

/// One decode step: q (1, Hq, d) against K/V (L, Hkv, d) that already hold the new token.
/// Writes out (1, Hq, d). `args.v_sum`, when given, sums V rows 0..L-1.
template <class T>
Status decode(const AttentionArgs<T>& args, const AttentionOptions& options, Workspace ws) {
  return detail::run(args, options, ws, /*is_decode=*/true);
}

/// Causal prefill: q (T, Hq, d) are the last T of the L tokens in K/V; row t attends to keys
/// 0..L-T+t. Writes out (T, Hq, d). `args.v_sum`, when given, sums V rows 0..L-T-1.
template <class T>
Status prefill(const AttentionArgs<T>& args, const AttentionOptions& options, Workspace ws) {
  return detail::run(args, options, ws, /*is_decode=*/false);
}

/// Convenience overloads that allocate the workspace (for examples and tests, not hot loops).
template <class T>
Status decode(const AttentionArgs<T>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return decode(args, options, Workspace{buf.data(), buf.size()});
}
template <class T>
Status prefill(const AttentionArgs<T>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return prefill(args, options, Workspace{buf.data(), buf.size()});
}

}  // namespace toptheta
