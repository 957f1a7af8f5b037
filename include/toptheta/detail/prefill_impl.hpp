#pragma once
/// \file detail/prefill_impl.hpp
/// Causal prefill orchestration. Work items are (block of query rows, KV group) pairs: the
/// scores of the block's rows for the group's G heads are computed walking the keys once (each
/// key row converted once, dotted with all block queries), kept in a per-thread score block of
/// about 4 MiB, then every row runs the per-head pipeline and one union V-gather per group row.
/// Calibration runs the blocks of one group in order on one thread (the calibrator is per head).

#include <algorithm>
#include <cstring>
#include <vector>

#include "../gather.hpp"
#include "../workspace.hpp"
#include "attention_common.hpp"
#include "dot.hpp"
#include "simd.hpp"

namespace toptheta::detail {

inline constexpr std::size_t kScoreBlockBytes = std::size_t(4) << 20;  // per-thread score budget

struct PrefillPlan {
  Index T, L, P, Hq, Hkv, G, d;
  Index block_rows, num_blocks, rows_per_item, num_items;
  int threads;
  bool need_vbar, per_head_stats;
};

template <class T>
PrefillPlan make_prefill_plan(const AttentionArgs<T>& a, const AttentionOptions& o) {
  PrefillPlan p{};
  p.T = a.q.tokens;
  p.L = a.k.tokens;
  p.P = p.L - p.T;
  p.Hq = a.q.heads;
  p.Hkv = a.k.heads;
  p.G = p.Hq / std::max<Index>(p.Hkv, 1);
  p.d = a.q.dim;
  const std::size_t row_bytes = std::size_t(p.L) * (2 * sizeof(acc_t<T>) + sizeof(std::int32_t));
  const Index fit = Index(kScoreBlockBytes / std::max<std::size_t>(row_bytes * std::size_t(p.G), 1));
  p.block_rows = std::min(std::clamp<Index>(fit, 1, 64), std::max<Index>(p.T, 1));
  p.num_blocks = (p.T + p.block_rows - 1) / p.block_rows;
  p.rows_per_item = p.block_rows * p.G;
  const bool calibrate = o.mode == AttentionMode::kCalibrate;
  p.num_items = calibrate ? p.Hkv : p.num_blocks * p.Hkv;
  const double rows_x_keys = double(p.T) * (double(p.P) + 0.5 * double(p.T + 1));
  p.threads = call_threads(o.threads, 2.0 * rows_x_keys * double(p.Hq) * double(p.d), p.num_items);
  p.need_vbar = o.mode != AttentionMode::kDense &&
                (o.vmc == VmcMode::kOn || o.empty_row == EmptyRowPolicy::kMeanV);
  p.per_head_stats = o.stats && !o.stats->kept_per_head.empty();
  return p;
}

template <class Acc>
struct PrefillScratch {
  Acc* q;              // (R, d) scaled queries
  Acc* s;              // (R, L) scores
  Acc* w;              // (R, L) compact weights
  std::int32_t* kept;  // (R, L) kept indices
  Acc* sel;            // (L) selection scratch
  Acc* dots;           // (R, kKeyTile) scores of a key tile against the block's queries
  Acc* kt;             // (d, kKeyTile) transposed key tile
  const Acc** wrows;   // (R) weight rows of the dense P V product
  const Acc** wtile;   // (R) the same, offset to the current V tile
  Acc** outs;          // (R) output rows
  Acc* vrun;           // (d) running V sum
  Acc* vbar;           // (d)
  GatherScratch<Acc> gather;
  StatSink sink;
};

/// Carves all buffers; with a null arena base it only measures.
template <class Acc>
struct PrefillBuffers {
  Acc* vprefix = nullptr;  // (num_blocks, Hkv, d): V sums of rows 0 .. P + b * block_rows - 1
  PrefillScratch<Acc>* threads = nullptr;

  PrefillBuffers(Arena& ar, const PrefillPlan& p) {
    if (p.need_vbar) vprefix = ar.take<Acc>(p.num_blocks * p.Hkv * p.d);
    threads = ar.take<PrefillScratch<Acc>>(p.threads);
    const Index R = p.rows_per_item, L = p.L, d = p.d;
    for (int i = 0; i < p.threads; ++i) {
      PrefillScratch<Acc> t{};
      t.q = ar.take<Acc>(R * d);
      t.s = ar.take<Acc>(R * L);
      t.w = ar.take<Acc>(R * L);
      t.kept = ar.take<std::int32_t>(R * L);
      t.sel = ar.take<Acc>(L);
      t.dots = ar.take<Acc>(R * kKeyTile);
      t.kt = ar.take<Acc>(d * kKeyTile);
      t.wrows = ar.take<const Acc*>(R);
      t.wtile = ar.take<const Acc*>(R);
      t.outs = ar.take<Acc*>(R);
      t.vrun = ar.take<Acc>(d);
      t.vbar = ar.take<Acc>(d);
      t.gather.mark = ar.take<std::uint8_t>(L);
      t.gather.uni = ar.take<std::int32_t>(L);
      t.gather.wc = ar.take<Acc>(L * p.G);
      t.gather.tile = ar.take<Acc>(kGatherTile * d);
      t.sink = carve_sink(ar, p.Hq, p.per_head_stats);
      if (threads) threads[i] = t;
    }
  }
};

/// Fills vprefix[b][g] = sum of V rows 0 .. P + b * block_rows - 1.
template <class T>
void compute_v_prefix(const AttentionArgs<T>& a, const PrefillPlan& p, acc_t<T>* vprefix) {
  using Acc = acc_t<T>;
  const Index d = p.d;
  const Index stride = a.v_sum_stride > 0 ? a.v_sum_stride : d;
  for (Index g = 0; g < p.Hkv; ++g) {
    Acc* b0 = vprefix + g * d;
    if (a.v_sum) {
      std::memcpy(b0, a.v_sum + g * stride, sizeof(Acc) * std::size_t(d));
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

/// out(t, h) = sum_j w_r[j] v_j for the dense rows t in [t0, td) of group g (weights stored
/// densely in ts.w): V rows are converted once per tile of kGatherTile and every weight row of
/// the block streams over them (weighted_rows microkernel).
template <class T>
void dense_rows_product(const AttentionArgs<T>& a, const PrefillPlan& p, Index t0, Index td,
                        Index g, const PrefillScratch<acc_t<T>>& ts) {
  using Acc = acc_t<T>;
  const Index G = p.G, d = p.d, L = p.L;
  const Index n = (td - t0) * G, Ld = p.P + td;
  const Acc** wrows = ts.wrows;
  Acc** outs = ts.outs;
  for (Index t = t0; t < td; ++t)
    for (Index hh = 0; hh < G; ++hh) {
      const Index r = (t - t0) * G + hh;
      Acc* w = ts.w + r * L;
      std::fill(w + p.P + t + 1, w + Ld, Acc(0));  // keys the causal row does not see
      wrows[r] = w;
      outs[r] = a.out.row(t, g * G + hh);
      std::fill(outs[r], outs[r] + d, Acc(0));
    }
  const MatrixView<const T> vh = a.v.head(g);
  const Acc* rows[kGatherTile];
  const Acc** wtile = ts.wtile;
  for (Index j0 = 0; j0 < Ld; j0 += kGatherTile) {
    const Index nj = std::min(kGatherTile, Ld - j0);
    for (Index j = 0; j < nj; ++j) {
      if constexpr (std::is_same_v<T, Acc>) {
        rows[j] = vh.row(j0 + j);
      } else {
        load_row(vh.row(j0 + j), d, ts.gather.tile + j * d);
        rows[j] = ts.gather.tile + j * d;
      }
    }
    // A V row with a zero weight must not reach an output (0 * NaN = NaN): the microkernel runs
    // over runs of finite rows, and a non-finite row is added only where its weight is non-zero.
    Index a0 = 0;
    for (Index j = 0; j <= nj; ++j) {
      if (j < nj && row_is_finite(rows[j], d)) continue;
      if (j > a0) {
        for (Index r = 0; r < n; ++r) wtile[r] = wrows[r] + j0 + a0;
        weighted_rows(wtile, n, rows + a0, j - a0, d, outs);
      }
      if (j < nj)
        for (Index r = 0; r < n; ++r) {
          const Acc wr = wrows[r][j0 + j];
          if (wr != Acc(0)) axpy(wr, rows[j], outs[r], d);
        }
      a0 = j + 1;
    }
  }
}

/// One work item: query rows [t0, t1) of KV group g.
template <class T>
void prefill_item(const AttentionArgs<T>& a, const RowContext<acc_t<T>>& cx,
                  const PrefillPlan& p, Index t0, Index t1, Index g, const acc_t<T>* vprefix,
                  const PrefillScratch<acc_t<T>>& ts) {
  using Acc = acc_t<T>;
  const Index G = p.G, d = p.d, L = p.L;
  const Index Lmax = p.P + t1;  // longest row of the block

  for (Index t = t0; t < t1; ++t)  // scaled queries, row r = (t - t0) * G + hh
    for (Index hh = 0; hh < G; ++hh) {
      Acc* qr = ts.q + ((t - t0) * G + hh) * d;
      load_row(a.q.row(t, g * G + hh), d, qr);
      for (Index i = 0; i < d; ++i) qr[i] *= cx.scale;
    }
  // Scores in tiles of kKeyTile keys: the tile is transposed once and every row of the block
  // that sees its first key runs the outer-product microkernel (causal: row t sees j <= P + t).
  const MatrixView<const T> kh = a.k.head(g);
  const T* keys[kKeyTile];
  for (Index j = 0; j < Lmax; j += kKeyTile) {
    const Index nk = std::min(kKeyTile, Lmax - j);
    const Index tfirst = std::max<Index>(t0, j - p.P);  // first row that sees key j
    const Index r0 = (tfirst - t0) * G;
    for (Index c = 0; c < nk; ++c) keys[c] = kh.row(j + c);
    transpose_key_tile(keys, nk, d, ts.kt);
    score_rows(ts.q + r0 * d, (t1 - tfirst) * G, ts.kt, d, ts.dots);
    for (Index t = tfirst; t < t1; ++t) {
      const Index ncols = std::min(nk, p.P + t + 1 - j);  // keys of the tile row t sees
      for (Index hh = 0; hh < G; ++hh) {
        const Index r = (t - t0) * G + hh;
        const Acc* src = ts.dots + (r - r0) * kKeyTile;
        Acc* dst = ts.s + r * L + j;
        for (Index c = 0; c < ncols; ++c) {
          const Acc x = src[c] + (a.bias.empty() ? Acc(0) : Acc(a.bias(t, j + c)));
          dst[c] = sanitize_score(x);
        }
      }
    }
  }

  const Acc* vsum_block = vprefix ? vprefix + ((t0 / p.block_rows) * p.Hkv + g) * d : nullptr;
  if (vsum_block) std::memcpy(ts.vrun, vsum_block, sizeof(Acc) * std::size_t(d));
  const MatrixView<const T> vh = a.v.head(g);
  const std::int32_t* kept_ptrs[kMaxGroup];
  const Acc* w_ptrs[kMaxGroup];
  Index counts[kMaxGroup];
  Acc coeff[kMaxGroup];
  Acc* out_ptrs[kMaxGroup];
  // Rows that are not thresholded (L_t <= k_l, or dense mode) form a prefix [t0, td) of the
  // block; their weight rows are dense and go through one blocked P V product below.
  Index td = t0;
  for (Index t = t0; t < t1; ++t) {
    const Index Lt = p.P + t + 1;
    const bool dense_row = cx.sel_mode == AttentionMode::kDense || Lt <= cx.k;
    if (vsum_block) {
      add_v_rows(a.v, g, Lt - 1, 1, ts.vrun);
      const Acc inv = Acc(1) / Acc(Lt);
      for (Index i = 0; i < d; ++i) ts.vbar[i] = ts.vrun[i] * inv;
    }
    Index nonzero = 0;
    for (Index hh = 0; hh < G; ++hh) {
      const Index r = (t - t0) * G + hh;
      const Index h = g * G + hh;
      const HeadRow<Acc> hr = process_head_row(cx, h, ts.s + r * L, Lt, ts.sel, ts.kept + r * L,
                                               ts.w + r * L, ts.sink);
      kept_ptrs[hh] = ts.kept + r * L;
      w_ptrs[hh] = ts.w + r * L;
      counts[hh] = hr.count;
      coeff[hh] = hr.vbar_coeff;
      out_ptrs[hh] = a.out.row(t, h);
      nonzero += hr.count > 0;
      if (dense_row && hr.count == 0)  // fully masked: a zero weight row
        std::fill(ts.w + r * L, ts.w + r * L + Lt, Acc(0));
    }
    Index nu;
    if (dense_row) {
      td = t + 1;
      nu = nonzero ? Lt : 0;
    } else {
      GroupRow<Acc> gr{G, Lt, kept_ptrs, w_ptrs, counts, coeff, vsum_block ? ts.vbar : nullptr};
      nu = gather_group_row<Acc, T>(gr, vh, out_ptrs, ts.gather);
    }
#ifndef TOPTHETA_NO_STATS
    ts.sink.counters->vrows_total += std::uint64_t(Lt);
    ts.sink.counters->vrows_read += std::uint64_t(nu);
#else
    (void)nu;
#endif
  }
  if (td > t0) dense_rows_product(a, p, t0, td, g, ts);
}

template <class T>
std::size_t prefill_workspace(const AttentionArgs<T>& a, const AttentionOptions& o) {
  const PrefillPlan p = make_prefill_plan(a, o);
  Arena ar;
  PrefillBuffers<acc_t<T>> b(ar, p);
  return ar.used();
}

template <class T>
Status run_prefill(const AttentionArgs<T>& a, const AttentionOptions& o, Workspace ws) {
  using Acc = acc_t<T>;
  const PrefillPlan p = make_prefill_plan(a, o);
  // Checked before anything is carved or written: the measure assumes the worst alignment.
  const std::size_t need = prefill_workspace(a, o);
  if (ws.data == nullptr || ws.bytes < need) return workspace_too_small(ws, need);
  Arena ar(ws);
  PrefillBuffers<Acc> b(ar, p);
  TOPTHETA_ASSERT(!ar.overflowed(), "prefill: workspace measure and carve disagree");
  for (int i = 0; i < p.threads; ++i) {
    zero_sink(b.threads[i].sink, p.Hq);
    std::memset(b.threads[i].gather.mark, 0, std::size_t(p.L));
  }
  if (b.vprefix) compute_v_prefix(a, p, b.vprefix);
  const RowContext<Acc> cx = RowContext<Acc>::make(a, o);
  const bool calibrate = o.mode == AttentionMode::kCalibrate;
  auto do_item = [&](Index item, const PrefillScratch<Acc>& ts) {
    if (calibrate) {  // one KV group, all blocks in order
      for (Index blk = 0; blk < p.num_blocks; ++blk)
        prefill_item(a, cx, p, blk * p.block_rows, std::min(p.T, (blk + 1) * p.block_rows), item,
                     b.vprefix, ts);
    } else {
      const Index blk = item / p.Hkv, g = item % p.Hkv;
      prefill_item(a, cx, p, blk * p.block_rows, std::min(p.T, (blk + 1) * p.block_rows), g,
                   b.vprefix, ts);
    }
  };
#if TOPTHETA_HAS_OPENMP
  if (p.threads > 1) {
#pragma omp parallel num_threads(p.threads)
    {
      const PrefillScratch<Acc>& ts = b.threads[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
      for (Index item = 0; item < p.num_items; ++item) do_item(item, ts);
    }
  } else
#endif
  {
    for (Index item = 0; item < p.num_items; ++item) do_item(item, b.threads[0]);
  }
  for (int i = 0; i < p.threads; ++i) merge_stats(o.stats, &b.threads[i].sink, 1, p.Hq);
  return {};
}

}  // namespace toptheta::detail
