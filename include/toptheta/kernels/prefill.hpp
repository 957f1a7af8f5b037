#pragma once
/// \file kernels/prefill.hpp
/// Causal prefill walker: T new query tokens (rows) against a cache of L = P + T tokens; row t
/// sees keys 0..P+t. Work items are (block of query rows, KV group) pairs, independent of each
/// other (bit-identical results for any thread count). Two plans:
///
/// - **flash** (dense attention; Top-θ with pre-softmax placement and no cap_k): the block's
///   queries (rows x group heads, M <= 64) are transposed once; key tiles of 64 are scored with
///   a register-blocked microkernel (Ops::qk_tile), the softmax runs online across the tile
///   with vectors across the M query rows (Ops::softmax_tile: running max, kept / dropped exp
///   sums for SDC, kept counts, first maximum), and the exp-weights of the kept keys multiply
///   the V tile (Ops::pv_tile when every block row keeps every key of the tile, else a gather
///   of the kept rows, each read once for the block's queries that keep it: Ops::scatter_row;
///   see flash_pv_kept). No score block
///   is stored or re-read. Top-θ selection is a per-score comparison with theta(l, h, L_t)
///   (semantics §4), so it fits the tile loop; the dense rows are the same loop with
///   theta = -inf.
/// - **post** (post-softmax Top-θ, no cap_k): the flash walk in three walks over the key tiles.
///   Walk 1 computes every block row's maximum M, walk 2 its softmax denominator Z (the score
///   tiles of walk 1 are kept for walks 2 and 3 while they fit
///   `AttentionOptions::post_score_tile_bytes` per worker, 4 MiB by default, else recomputed);
///   walk 3 keeps key j iff p_j = exp(s_j - M) / Z > theta (semantics §4; candidates found in
///   the log domain, the decision taken on p_j itself) and accumulates the kept rows' p_j V_j as
///   the flash walk does. See `post_item`.
/// - **stored** (top-k, calibration, cap_k): a block's score rows are stored
///   (at most ~4 MiB per worker), then each row runs the row pipeline (row_pipeline.hpp) and the
///   gather + VMC stage (gather.hpp) reads the union of the group's kept V rows once.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../attention_args.hpp"
#include "../gather.hpp"
#include "../stats.hpp"
#include "../workspace.hpp"
#include "decode.hpp"
#include "parallel.hpp"
#include "row_pipeline.hpp"

namespace toptheta::detail {

/// Keys per tile of the prefill walks.
inline constexpr Index kKeyTile = 64;
/// Largest GQA group of the flash and post walks (a block's queries are the bits of a 64-bit
/// mask); larger groups take the stored walk.
inline constexpr Index kMaxTileGroup = 64;
/// Score budget of a stored block per worker.
inline constexpr std::size_t kScoreBlockBytes = std::size_t(4) << 20;
template <class Ops, class Args, class KView>
class PrefillCall {
 public:
  using T = typename Args::cache_type;
  using Acc = acc_t<T>;

  /// `workers` > 0 fixes the number of per-worker scratch sets (the task interface, where the
  /// engine's pool runs the tasks); 0 picks the OpenMP thread count from `o.threads` and the work.
  PrefillCall(const Args& a, const AttentionOptions& o, const KView& k, const KView& v,
             int workers = 0)
      : a_(a), o_(o), k_(k), v_(v), cx_(RowContext<Acc>::make(a, o)) {
    T_ = a.q.tokens;
    L_ = k.tokens;
    P_ = L_ - T_;
    Hq_ = a.q.heads;
    Hkv_ = k.heads;
    G_ = Hq_ / std::max<Index>(Hkv_, 1);
    d_ = a.q.dim;
    const bool any_thresholded = cx_.thresholded(L_);
    const bool tiles_ok = G_ <= kMaxTileGroup && L_ < (Index(1) << 24) && !cx_.calibrate;
    flash_ = tiles_ok &&
             (!any_thresholded ||
              (cx_.sel_mode == AttentionMode::kTopTheta &&
               cx_.placement == Placement::kPreSoftmax && o.cap_k == 0 && !cx_.calibrate));
    // Post-softmax Top-θ: three walks over the key tiles (see post_item).
    post_ = !flash_ && tiles_ok && any_thresholded && cx_.sel_mode == AttentionMode::kTopTheta &&
            cx_.placement == Placement::kPostSoftmax && o.cap_k == 0;
    if (post_) flash_ = true;
    if (flash_) {
      R_ = std::max<Index>(1, std::min<Index>(T_, 64 / G_));
      if (post_) {  // fewer rows per block when that lets the block's score tiles fit the budget
        constexpr Index W = Ops::kLanes;
        const std::size_t row_bytes = std::size_t(L_ + kKeyTile) * sizeof(Acc);
        const Index mp_fit = Index(o.post_score_tile_bytes / row_bytes) / W * W;
        if (mp_fit >= G_ && (R_ * G_ + W - 1) / W * W > mp_fit) R_ = std::max<Index>(1, mp_fit / G_);
      }
    } else {
      const std::size_t row_bytes = std::size_t(L_ + kKeyTile) * sizeof(Acc) * std::size_t(G_);
      R_ = std::clamp<Index>(Index(kScoreBlockBytes / std::max<std::size_t>(row_bytes, 1)), 1, 64);
      R_ = std::min(R_, std::max<Index>(T_, 1));
    }
    M_ = R_ * G_;
    constexpr Index W = Ops::kLanes;
    Mp_ = (M_ + W - 1) / W * W;
    // Walk 1 of the post-softmax item keeps the block's score tiles for walks 2 and 3 when they
    // fit o.post_score_tile_bytes (reading them back is ~10x cheaper than recomputing Q K^T);
    // otherwise walks 2 and 3 recompute them (the same products, so the same scores).
    store_scores_ = post_ && std::size_t(L_ + kKeyTile) * std::size_t(Mp_) * sizeof(Acc) <=
                                 o.post_score_tile_bytes;
    ldv_ = (d_ + W - 1) / W * W;
    nb_ = (T_ + R_ - 1) / R_;
    calibrate_ = o.mode == AttentionMode::kCalibrate;
    need_vbar_ = any_thresholded && needs_vbar(o);
    per_head_stats_ = o.stats && !o.stats->kept_per_head.empty();
    const Index items = calibrate_ ? Hkv_ : nb_ * Hkv_;
    const double pairs = double(T_) * (double(P_) + 0.5 * double(T_ + 1));
    threads_ = workers > 0 ? workers : call_threads(o.threads, 2.0 * pairs * double(Hq_) * double(d_), items);
  }

  int threads() const { return threads_; }

  void carve(Arena& ar) {
    const Index d = d_, L = L_, G = G_, Mp = Mp_, N = kKeyTile;
    if (need_vbar_) vprefix_ = ar.take<Acc>(nb_ * Hkv_ * d);
    workers_ = ar.take<Worker>(threads_);
    carve_workers(ar, threads_, [&](Arena& wa, int i) {
      Worker w{};
      w.qt = wa.take<Acc>(d * Mp);
      w.st = wa.take<Acc>(N * Mp);
      w.kf = wa.take<Acc>(N * d);
      w.vsum = wa.take<Acc>(d);
      w.vbar = wa.take<Acc>(d);
      if (flash_) {
        w.vf = wa.take<Acc>(N * ldv_);
        w.o = wa.take<Acc>(M_ * d);
        w.state = wa.take<Acc>((post_ ? 10 + Ops::kLanes : 9) * Mp);
        if (store_scores_) w.sblk = wa.take<Acc>((L + N) * Mp);
        w.keep = wa.take<std::uint64_t>(N);
        w.rows_any = wa.take<std::uint64_t>(N);
        w.unions = wa.take<Index>(R_);
        w.wc = wa.take<Acc>(N * G);
      } else {
        w.s = wa.take<Acc>(M_ * (L + kKeyTile));
        w.rs.a = wa.take<Acc>(L);
        w.rs.probs = wa.take<Acc>(L);
        w.kept = wa.take<std::int32_t>(G * L);
        w.wrow = wa.take<Acc>(G * L);
        w.mark = wa.take<std::uint8_t>(L);
        w.uni = wa.take<std::int32_t>(L);
        w.wc = wa.take<Acc>(L * G);
        w.packed = wa.take<Acc>(G * d);
      }
      w.sink = carve_sink(wa, Hq_, per_head_stats_);
      if (workers_) workers_[i] = w;
    });
  }

  void prepare() {
    if (cx_.calibrate) o_.calibrator->record_call_geometry(a_.q.dim, effective_score_scale(a_));
    for (int i = 0; i < threads_; ++i) {
      workers_[i].sink.zero(Hq_);
      if (workers_[i].mark) std::memset(workers_[i].mark, 0, std::size_t(L_));
    }
  }

  int num_stages() const { return 2; }
  Index num_tasks(int stage) const {
    if (stage == 0) return need_vbar_ ? Hkv_ : 0;
    return calibrate_ ? Hkv_ : nb_ * Hkv_;
  }
  bool dynamic_schedule(int stage) const { return stage == 1; }

  void run_task(int stage, Index task, int worker) {
    Worker& w = workers_[worker];
    if (stage == 0) {
      vprefix_group(task);
      return;
    }
    if (calibrate_) {  // one KV group, its blocks in order (the calibrator is per head)
      for (Index b = 0; b < nb_; ++b) stored_item(b, task, w);
      return;
    }
    // Group-major: consecutive tasks walk the same KV group's K and V rows (4 MiB at f32,
    // L = 4096), which the next block then finds in L2 / L3; block-major order interleaved the
    // eight groups (28 MiB of other groups' rows between two reads of a row). Measured on Zen 5
    // (AVX-512), causal prefill T = 4096 f32, 1 thread, 4 alternating rounds: dense 986-1051 ->
    // 896-1071 ms (medians 1020 -> 902), pre + SDC 782-900 -> 725-854 ms; the key-tile copy's
    // share of the samples fell from 0.55x to 0.44x the Q K^T tile products' (its loads wait on
    // memory).
    const Index g = task / nb_, b = task % nb_;
    if (post_) post_item(b, g, w);
    else if (flash_) flash_item(b, g, w);
    else stored_item(b, g, w);
  }

  void finish() {
    for (int i = 0; i < threads_; ++i) workers_[i].sink.merge_into(o_.stats, Hq_, a_.head_offset);
    cx_.count_extrapolated(o_.stats, Hq_, P_, T_);
  }

 private:
  struct Worker {
    Acc* qt = nullptr;    // (d, Mp) scaled queries, transposed
    Acc* st = nullptr;    // (N, Mp) scores / exp-weights of a key tile
    Acc* kf = nullptr;    // (N, d) converted key tile
    Acc* vf = nullptr;    // (N, ldv) converted value tile
    Acc* o = nullptr;     // (M, d) flash output accumulators
    Acc* state = nullptr; // (9, Mp) flash row state
    std::uint64_t* keep = nullptr;  // (N) kept-row bits per key
    Index* unions = nullptr;        // (R) union sizes of the block's rows
    std::uint64_t* rows_any = nullptr;  // (N) bit r * G: some head of row r keeps the key
    Acc* vsum = nullptr;  // (d) running V sum
    Acc* vbar = nullptr;  // (d)
    Acc* s = nullptr;     // stored: (M, L + N) score rows
    Acc* sblk = nullptr;  // post: (L + N, Mp) score tiles of a block (walk 1 -> walks 2, 3)
    RowScratch<Acc> rs{};
    std::int32_t* kept = nullptr;  // (G, L)
    Acc* wrow = nullptr;           // (G, L)
    std::uint8_t* mark = nullptr;  // (L)
    std::int32_t* uni = nullptr;   // (L)
    Acc* wc = nullptr;             // (L, G) / (N, G)
    Acc* packed = nullptr;         // stored: (G, d) outputs of one row
    StatSink sink;
  };

  Index block_end(Index b) const { return std::min(T_, (b + 1) * R_); }

  /// vprefix[b][g] = sum of V rows 0 .. P + b * R - 1 (stage 0, one task per group).
  void vprefix_group(Index g) {
    const Index d = d_;
    Acc* cur = vprefix_ + g * d;
    VbarSetup::prefix<Ops>(v_, g, d, P_, running_v_sum(a_, o_), a_.v_sum_stride, cur);
    for (Index b = 1; b < nb_; ++b) {
      Acc* next = vprefix_ + (b * Hkv_ + g) * d;
      std::memcpy(next, vprefix_ + ((b - 1) * Hkv_ + g) * d, sizeof(Acc) * std::size_t(d));
      VbarSetup::add_rows<Ops>(v_, g, d, P_ + (b - 1) * R_, P_ + b * R_, next);
    }
  }

  /// Scaled, transposed queries of rows [t0, t1) of group g: qt[i * Mp + r * G + hh].
  void load_queries(Index t0, Index t1, Index g, Acc* qt, Acc* tmp) const {
    const Index G = G_, d = d_, Mp = Mp_;
    std::fill(qt, qt + d * Mp, Acc(0));
    for (Index t = t0; t < t1; ++t)
      for (Index hh = 0; hh < G; ++hh) {
        const Index m = (t - t0) * G + hh;
        Ops::convert_row(a_.q.row(t, g * G + hh), d, tmp);
        for (Index i = 0; i < d; ++i) qt[i * Mp + m] = tmp[i] * cx_.scale;
      }
  }

  /// True when qk_tile reads the key rows where they are in the cache (row stride
  /// token_stride) instead of a converted copy in w.kf: storage of the accumulator type (f32)
  /// in a strided view (one key tile's rows evenly spaced; a paged view's tile may cross
  /// blocks). The copy was an exact one, so the scores are the same bits. Why: the copy waited
  /// on the rows' loads (perf annotate: 77% of its samples on the instruction after the load)
  /// and wrote a 32 KiB tile that, with the 32 KiB of transposed queries, overflowed L1.
  static constexpr bool kDirectKeys =
      std::is_same_v<T, Acc> && std::is_same_v<KView, HeadsView<const T>>;

  /// Scores of the key tile [j0, j0 + n) for rows [t0, t1) of group g into w.st (n, Mp):
  /// finished (bias, NaN), causally masked (-inf where key > P + t).
  void score_tile(Index t0, Index t1, Index g, Index j0, Index n, Worker& w) const {
    score_tile(t0, t1, g, j0, n, w, w.st, flash_ && !post_);
  }
  /// The same into `st` (n, Mp); `prefetch_v` also prefetches the next tile's V rows.
  void score_tile(Index t0, Index t1, Index g, Index j0, Index n, Worker& w, Acc* st,
                  bool prefetch_v) const {
    const Index G = G_, d = d_, Mp = Mp_;
    // The next tile's keys and values stream in while this one is computed: one row's
    // prefetches per key row converted, not the whole tile's at once.
    const Index pf_end = std::min(P_ + t1, j0 + 2 * kKeyTile);
    for (Index u = 0; u < n; ++u) {
      const Index up = j0 + kKeyTile + u;
      if (up < pf_end) {
        prefetch_row(k_.row(up, g), HeadsView<const T>::row_items(d));
        if (prefetch_v) prefetch_row(v_.row(up, g), HeadsView<const T>::row_items(d));
      }
      if constexpr (!kDirectKeys) Ops::convert_row(k_.row(j0 + u, g), d, w.kf + u * d);
    }
    if constexpr (kDirectKeys) {
      Ops::qk_tile(w.qt, Mp, d, k_.row(j0, g), k_.token_stride, n, st);
    } else {
      Ops::qk_tile(w.qt, Mp, d, w.kf, d, n, st);
    }
    if (!a_.bias.empty()) {
      for (Index u = 0; u < n; ++u)
        for (Index t = t0; t < t1; ++t) {
          const Acc b = Acc(a_.bias(t, j0 + u));
          for (Index hh = 0; hh < G; ++hh) st[u * Mp + (t - t0) * G + hh] += b;
        }
    }
    for (Index u = 0; u < n; ++u) Ops::finish_scores(st + u * Mp, nullptr, Mp);
    // Causal mask: row t sees key j iff j <= P + t, i.e. lanes m < (j - P - t0) * G are masked.
    if (j0 + n - 1 > P_ + t0)
      for (Index u = 0; u < n; ++u) {
        const Index first = std::min<Index>((j0 + u - P_ - t0) * G, (t1 - t0) * G);
        if (first > 0)
          std::fill(st + u * Mp, st + u * Mp + first, -std::numeric_limits<Acc>::infinity());
      }
  }

  // ---- flash ------------------------------------------------------------------------------

  void flash_item(Index b, Index g, Worker& w) {
    const Index G = G_, d = d_, Mp = Mp_, N = kKeyTile;
    const Index t0 = b * R_, t1 = block_end(b), rows = t1 - t0, M = rows * G;
    const Index Lmax = P_ + t1;
    load_queries(t0, t1, g, w.qt, w.vbar);
    Acc* theta = w.state;
    Acc* run_max = w.state + Mp;
    Acc* alpha = w.state + 2 * Mp;
    Acc* kept_sum = w.state + 3 * Mp;
    Acc* drop_sum = w.state + 4 * Mp;
    Acc* n_kept = w.state + 5 * Mp;
    Acc* best = w.state + 6 * Mp;
    Acc* best_idx = w.state + 7 * Mp;
    Acc* sdc_term = w.state + 8 * Mp;
    const Acc ninf = -std::numeric_limits<Acc>::infinity();
    for (Index m = 0; m < Mp; ++m) {
      theta[m] = ninf;
      sdc_term[m] = 0;
      run_max[m] = ninf;
      kept_sum[m] = drop_sum[m] = n_kept[m] = 0;
      best[m] = ninf;
      best_idx[m] = 0;
    }
    bool sparse = false;
    for (Index m = 0; m < M; ++m) {
      const Index t = t0 + m / G, Lt = P_ + t + 1;
      if (cx_.thresholded(Lt)) {
        const ThresholdLookup th = cx_.lookup(g * G + m % G, Lt);
        theta[m] = threshold_in<Acc>(th.theta);
        sdc_term[m] = std::isnan(th.sdc) ? Acc(0) : Acc(th.sdc);
        sparse = true;
      }
    }
    std::fill(w.o, w.o + M * d, Acc(0));
    for (Index r = 0; r < rows; ++r) w.unions[r] = 0;
    const bool want_drop = sparse && o_.sdc == SdcMode::kExact;
    const bool want_best = sparse && o_.empty_row == EmptyRowPolicy::kKeepMax;
    // The next tile's V rows are prefetched with its keys while the product runs dense (a
    // block without a thresholded row, or a tile whose every (row, key) pair was kept); a
    // sparse tile prefetches only its kept rows, before it gathers them (flash_pv_sparse). Every
    // V row of the next tile, as before, kept the walk waiting on prefetches that 90% of the
    // rows never use: the two prefetch loops of score_tile held 29% of flash_item's own
    // samples (pre-softmax prefill T = 4096, f32, 1 thread, AVX-512, Zen 5). With this and
    // any_of_groups, 8 rounds of the two binaries in turn: 628-743 ms before, 618-715 after,
    // faster in 7 of 8 rounds and tied in one (f16, 6 rounds: 585-694 ms, 558-663).
    bool v_dense = true;
    for (Index j0 = 0; j0 < Lmax; j0 += N) {
      const Index n = std::min(N, Lmax - j0);
      score_tile(t0, t1, g, j0, n, w, w.st, !sparse || v_dense);
      const bool rescale =
          Ops::softmax_tile(w.st, n, Mp, j0, theta, run_max, alpha, kept_sum,
                            want_drop ? drop_sum : nullptr, n_kept, want_best ? best : nullptr,
                            want_best ? best_idx : nullptr, sparse ? w.keep : nullptr);
      if (rescale)
        for (Index m = 0; m < M; ++m)
          if (alpha[m] != Acc(1)) Ops::scale(w.o + m * d, alpha[m], d);
      if (!sparse) {
        flash_pv_dense(j0, n, g, M, w);
        continue;
      }
      v_dense = flash_pv_kept(j0, n, g, rows, w);
    }
    flash_finish(b, g, t0, t1, w);
  }

  /// O += P^T V for the whole tile (V converted once; non-finite rows only where weighted).
  void flash_pv_dense(Index j0, Index n, Index g, Index M, Worker& w) {
    const Index d = d_, Mp = Mp_;
    Index bad[kKeyTile];
    Index nbad = 0;
    for (Index u = 0; u < n; ++u) {
      Acc* vr = w.vf + u * ldv_;
      if (!Ops::convert_row(v_.row(j0 + u, g), d, vr)) bad[nbad++] = u;
      for (Index i = d; i < ldv_; ++i) vr[i] = 0;
    }
    // A non-finite V row enters only the outputs that weigh it (docs/semantics.md): it is
    // added where its weight is non-zero, then taken out of the tile product.
    for (Index i = 0; i < nbad; ++i) {
      const Index u = bad[i];
      for (Index m = 0; m < M; ++m) {
        const Acc p = w.st[u * Mp + m];
        if (p != Acc(0)) Ops::axpy(p, w.vf + u * ldv_, w.o + m * d, d);
      }
      for (Index m = 0; m < Mp; ++m) w.st[u * Mp + m] = 0;
      std::fill(w.vf + u * ldv_, w.vf + (u + 1) * ldv_, Acc(0));
    }
    Ops::pv_tile(w.o, d, M, d, w.st, Mp, w.vf, ldv_, n);
  }

  /// Bit i of the result: whether any of bits i .. i + G - 1 of x is set (1 <= G <= 64; bits
  /// past 63 count as clear). Bit r * G is then "some head of block row r keeps the key".
  static std::uint64_t any_of_groups(std::uint64_t x, Index G) {
    Index s = 1;  // y bit i = OR of x's bits [i, i + s)
    std::uint64_t y = x;
    for (; 2 * s <= G; s *= 2) y |= y >> s;
    if (s < G) y |= y >> (G - s);  // [i, i + s) and [i + G - s, i + G) cover [i, i + G)
    return y;
  }

  /// O += the tile's kept weights times V, from w.keep (bit m of keep[u]: query m of the block
  /// keeps key j0 + u): the union of the kept keys over the group's heads per block row
  /// (rows_any[u] bit r * G, counted in unions[r]), then the dense tile product when every
  /// (block row, key) pair keeps the key (some head of the row does), else the kept rows' gather
  /// key by key (flash_pv_sparse). Returns whether the tile ran the dense product. The per-row
  /// union bits are a fold of each row's G bits (any_of_groups), not a loop over the rows: that
  /// loop was 11% of flash_item's own samples (pre-softmax prefill T = 4096, f32, 1 thread,
  /// AVX-512, Zen 5).
  /// The dense product ran from half of the pairs before; the gather is the cheaper one down to
  /// there. Measured (bench prefill_paired, the rules in one binary in a shuffled order per run,
  /// speed-up over dense; half -> all): recommended Top-θ, T = 1024 f32, 1 thread,
  /// 0.999-1.039 -> 1.047-1.076 (5 runs), 2 threads 1.003-1.046 -> 1.047-1.075; f16 1 thread
  /// 1.007-1.038 -> 1.020-1.041, 2 threads 1.001-1.036 -> 1.022-1.048; pre-softmax within
  /// +-2%; T = 4096 f16 unchanged (recommended 1.17-1.18 either way, 2 runs). The dense product
  /// from a third of the pairs lost (recommended 0.93, T = 1024, both types).
  bool flash_pv_kept(Index j0, Index n, Index g, Index rows, Worker& w) {
    const Index G = G_, M = rows * G;
    std::uint64_t starts = 0;  // bit r * G for each block row r
    for (Index r = 0; r < rows; ++r) starts |= std::uint64_t(1) << (r * G);
    Index pairs = 0;
    for (Index u = 0; u < n; ++u) {
      const std::uint64_t any = any_of_groups(w.keep[u], G) & starts;
      w.rows_any[u] = any;
      pairs += __builtin_popcountll(any);
    }
    if (pairs == 0) return false;
    count_unions(n, rows, w);
    if (pairs >= n * rows) {
      flash_pv_dense(j0, n, g, M, w);
      return true;
    }
    flash_pv_sparse(j0, n, g, M, w);
    return false;
  }

  /// unions[r] += the keys u < n of the tile that some head of block row r keeps (bit r * G of
  /// rows_any[u]). The count feeds the statistics only (V rows read, AttentionStats), so a call
  /// without them skips it. Branch-free: the former per-key loop over the set bits of
  /// rows_any[u] mispredicted its exit at nearly every key (0-16 rows keep a key at random):
  /// perf annotate put 15-20% of post_item's own samples on that loop and on the instruction
  /// its exit lands on; with this form post_item's share fell from 2.9-3.1x exp_sum_tile's
  /// (whose work is unchanged) to 2.4-2.55x (post-softmax prefill T = 1024, f16, 1 thread,
  /// AVX-512, no statistics).
  void count_unions(Index n, Index rows, Worker& w) const {
#ifndef TOPTHETA_NO_STATS
    if (!o_.stats) return;
    for (Index r = 0; r < rows; ++r) {
      Index c = 0;
      for (Index u = 0; u < n; ++u) c += Index((w.rows_any[u] >> (r * G_)) & 1);
      w.unions[r] += c;
    }
#else
    (void)n, (void)rows, (void)w;
#endif
  }

  /// O += the tile's kept weights times V, key by key (w.keep bit m of keep[u]: query m < M
  /// keeps key j0 + u, weight w.st[u * Mp + m]): the V rows of the kept keys are prefetched,
  /// then each is read once and added to every query of the block that keeps it
  /// (Ops::scatter_row), so each query's output takes its kept rows in key order. A pair whose
  /// weight is exactly 0 is left out: its row never enters that query's sum (a non-finite value
  /// there cannot reach the output; docs/semantics.md).
  /// Why key by key: a kept key is kept by about 4 of the block's 64 queries on average
  /// (pre-softmax prefill, T = 4096, k = 64, G = 4), and the former per-query queues fetched
  /// its 512-byte row from L2 / L3 once per query, about 9 ns per (query, row) pair.
  void flash_pv_sparse(Index j0, Index n, Index g, Index M, Worker& w) {
    const Index Mp = Mp_, d = d_;
    const std::uint64_t queries = M >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << M) - 1;
    for (Index u = 0; u < n; ++u)
      if (w.keep[u] & queries) prefetch_row(v_.row(j0 + u, g), HeadsView<const T>::row_items(d));
    Acc* outs[64];
    Acc wts[64];
    for (Index u = 0; u < n; ++u) {
      std::uint64_t keep = w.keep[u] & queries;
      if (!keep) continue;
      const Acc* wt = w.st + u * Mp;
      Index c = 0;
      for (; keep; keep &= keep - 1) {
        const Index m = Index(__builtin_ctzll(keep));
        outs[c] = w.o + m * d;
        wts[c] = wt[m];
        c += Index(wt[m] != Acc(0));
      }
      if (c) Ops::scatter_row(outs, wts, c, v_.row(j0 + u, g), d);
    }
  }

  /// V rows added to a block row's union by keep-max heads (statistics only): a head's maximum
  /// counts unless an earlier keep-max head of the row added it or another head keeps it.
  struct KeepMaxUnion {
    Index extra = 0;
    Index added[kMaxTileGroup];
    Index n_added = 0;
    /// `kept_by(h2)`: whether head h2 of the group keeps key `am` (the walk's own test).
    template <class KeptBy>
    void add(Index am, Index hh, Index G, bool stats, KeptBy&& kept_by) {
      bool shared = !stats;  // the union's size feeds the statistics only
      for (Index i = 0; i < n_added && !shared; ++i) shared = added[i] == am;
      for (Index h2 = 0; h2 < G && !shared; ++h2)
        if (h2 != hh) shared = kept_by(h2);
      if (!shared) {
        ++extra;
        added[n_added++] = am;
      }
    }
  };

  /// Adds V row Lt - 1 to the running sum w.vsum and sets w.vbar = mean(V[0:Lt]).
  void next_vbar(Index g, Index Lt, Worker& w) const {
    VbarSetup::add_rows<Ops>(v_, g, d_, Lt - 1, Lt, w.vsum);
    for (Index i = 0; i < d_; ++i) w.vbar[i] = w.vsum[i] / Acc(Lt);
  }

  /// The outputs of block b's rows [t0, t1) of group g after a flash or post walk, row by row:
  /// the running mean of V (VMC, mean-V), a fully masked head's zero output (run_max = -inf),
  /// `head(t, r, hh, Lt, thr, out, coeff, uni)` for the others (writes `out`, VMC's `coeff`,
  /// the row's statistics and keep-max's union rows), then VMC and the V-row statistics.
  template <class Head>
  void finish_rows(Index b, Index g, Index t0, Index t1, const Acc* run_max, Worker& w,
                   Head&& head) {
    const Index G = G_, d = d_;
    if (need_vbar_) std::memcpy(w.vsum, vprefix_ + (b * Hkv_ + g) * d, sizeof(Acc) * std::size_t(d));
    Acc* out_ptrs[kMaxTileGroup];
    Acc coeff[kMaxTileGroup];
    for (Index t = t0; t < t1; ++t) {
      const Index Lt = P_ + t + 1, r = t - t0;
      const bool thr = cx_.thresholded(Lt);
      if (need_vbar_) next_vbar(g, Lt, w);
      KeepMaxUnion uni;
      bool any_unmasked = false;
      for (Index hh = 0; hh < G; ++hh) {
        const Index m = r * G + hh, h = g * G + hh;
        Acc* out = a_.out.row(t, h);
        out_ptrs[hh] = out;
        coeff[hh] = 0;
        if (run_max[m] == -std::numeric_limits<Acc>::infinity()) {  // fully masked: output 0
          std::fill(out, out + d, Acc(0));
          w.sink.row(h, Lt, 0, cx_.k, thr, false);
          continue;
        }
        any_unmasked = true;
        head(t, r, hh, Lt, thr, out, coeff[hh], uni);
      }
      if (need_vbar_) add_vmc<Ops>(out_ptrs, G, d, coeff, w.vbar);
      w.sink.vrows(Lt, thr ? w.unions[r] + uni.extra : (any_unmasked ? Lt : 0));
    }
  }

  void flash_finish(Index b, Index g, Index t0, Index t1, Worker& w) {
    const Index G = G_, d = d_, Mp = Mp_;
    const Acc* theta = w.state;
    const Acc* run_max = w.state + Mp;
    const Acc* kept_sum = w.state + 3 * Mp;
    const Acc* drop_sum = w.state + 4 * Mp;
    const Acc* n_kept = w.state + 5 * Mp;
    const Acc* best_idx = w.state + 7 * Mp;
    const Acc* sdc_term = w.state + 8 * Mp;
    const auto head = [&](Index t, Index r, Index hh, Index Lt, bool thr, Acc* out, Acc& coeff,
                          KeepMaxUnion& uni) {
      const Index m = r * G + hh, h = g * G + hh;
      const Acc M = run_max[m];
      const Acc* om = w.o + m * d;
      if (!thr) {  // dense row
        const Acc inv = Acc(1) / kept_sum[m];
        for (Index i = 0; i < d; ++i) out[i] = om[i] * inv;
        w.sink.row(h, Lt, Lt, cx_.k, false, false);
        return;
      }
      const Index nk = Index(n_kept[m]);
      if (nk == 0) {  // empty Top-θ row
        std::fill(out, out + d, Acc(0));
        if (o_.empty_row == EmptyRowPolicy::kMeanV) {
          coeff = 1;
          w.sink.row(h, Lt, 0, cx_.k, true, true);
          return;
        }
        const Index am = Index(best_idx[m]);
        // exp(0) / (1 + sdc_scale * D~), D~ over the other keys.
        const Acc dropped = sdc_dropped(o_.sdc, Lt, Index(1), M, theta[m],
                                        std::max(drop_sum[m] - Acc(1), Acc(0)), sdc_term[m]);
        const Acc wmax = Acc(1) / sdc_denominator(o_.sdc, Acc(o_.sdc_scale), Acc(1), dropped);
        const T* row = v_.row(am, g);
        Ops::accumulate_rows(out, 1, d, &row, &wmax, 1, 1, 1);
        if (o_.vmc == VmcMode::kOn) coeff = Acc(1) - wmax;
        uni.add(am, hh, G, o_.stats,
                [&](Index h2) { return score_of(t, g, h2, am, w) > theta[r * G + h2]; });
        w.sink.row(h, Lt, 1, cx_.k, true, true);
        return;
      }
      const Acc dropped = sdc_dropped(o_.sdc, Lt, nk, M, theta[m], drop_sum[m], sdc_term[m]);
      const Acc den = sdc_denominator(o_.sdc, Acc(o_.sdc_scale), kept_sum[m], dropped);
      const Acc inv = Acc(1) / den;
      for (Index i = 0; i < d; ++i) out[i] = om[i] * inv;
      // No compensation (den = D): renormalised weights, which sum to 1 (row_weights).
      if (o_.vmc == VmcMode::kOn && den != kept_sum[m]) coeff = Acc(1) - kept_sum[m] * inv;
      w.sink.row(h, Lt, nk, cx_.k, true, false);
    };
    finish_rows(b, g, t0, t1, run_max, w, head);
  }

  /// The score of (row t, head hh of group g, key j) exactly as the tile walk computed it.
  Acc score_of(Index t, Index g, Index hh, Index j, Worker& w) const {
    constexpr Index W = Ops::kLanes;
    const Index d = d_, G = G_;
    Acc* qt = w.qt;  // reuse: (d, W) column 0 = the query, others 0 (the block is done)
    std::fill(qt, qt + d * W, Acc(0));
    Ops::convert_row(a_.q.row(t, g * G + hh), d, w.kf);
    for (Index i = 0; i < d; ++i) qt[i * W] = w.kf[i] * cx_.scale;
    Ops::convert_row(k_.row(j, g), d, w.kf);
    Acc st[W];
    Ops::qk_tile(qt, W, d, w.kf, d, 1, st);
    Acc s = st[0];
    if (!a_.bias.empty()) s += Acc(a_.bias(t, j));
    Ops::finish_scores(&s, nullptr, 1);
    return s;
  }

  // ---- post-softmax Top-θ: three walks over the key tiles ----------------------------------
  //
  // p_j = exp(s_j - M) / Z needs the row's final maximum M and denominator Z before any key can
  // be selected (semantics §2, §4). The decision p_j > theta must be the one the stored path
  // and the calibrator take (a threshold calibrated on a row is one of that row's p_j, and
  // keeps exactly the larger ones), so M, Z and p_j are computed bit for bit as they compute
  // them: M is a maximum (order-free); Z is summed in exp_shifted()'s order (lane l of the
  // vector width adds the keys j = l mod W in key order, then the lanes by its tree), which
  // needs M first; p_j = exp(s_j - M) * (1 / Z). Hence three walks over the key tiles:
  // 1. scores and row maxima (the score tiles are kept for the next walks when they fit
  //    AttentionOptions::post_score_tile_bytes, else recomputed: the same products, so the
  //    same scores);
  // 2. Z in exp_shifted()'s order;
  // 3. selection: candidates in the log domain, s_j > M + log(theta Z) - slack, then the test
  //    on p_j itself; the kept rows' p_j V_j accumulate like the pre-softmax flash walk (dense
  //    tile product, or a sparse tile's kept rows gathered key by key). Rows that are not
  // thresholded keep every unmasked key (weights p_j); a threshold below 0 keeps every key
  // j < L_t, masked ones included (p_j = 0 > theta), as the stored path does.

  /// Per-lane state of the post-softmax walk (Mp values each; zl: kLanes x Mp) in w.state.
  struct PostState {
    Acc *run_max, *zsum, *best_idx, *theta, *bound, *mx, *inv, *lim, *wsum, *n_kept, *zl;
  };
  PostState post_state(Worker& w) const {
    Acc* b = w.state;
    const Index Mp = Mp_;
    return {b,          b + Mp,     b + 2 * Mp, b + 3 * Mp, b + 4 * Mp, b + 5 * Mp,
            b + 6 * Mp, b + 7 * Mp, b + 8 * Mp, b + 9 * Mp, b + 10 * Mp};
  }

  void post_item(Index b, Index g, Worker& w) {
    const Index G = G_, d = d_, Mp = Mp_, N = kKeyTile;
    const Index t0 = b * R_, t1 = block_end(b), rows = t1 - t0, M = rows * G;
    const Index Lmax = P_ + t1;
    load_queries(t0, t1, g, w.qt, w.vbar);
    const PostState ps = post_state(w);
    const Acc ninf = -std::numeric_limits<Acc>::infinity();
    const Acc pinf = std::numeric_limits<Acc>::infinity();
    for (Index m = 0; m < Mp; ++m) {
      ps.run_max[m] = ninf;
      ps.zsum[m] = ps.best_idx[m] = ps.wsum[m] = ps.n_kept[m] = 0;
    }
    // Walk 1: scores, row maxima and first maxima.
    for (Index j0 = 0; j0 < Lmax; j0 += N) {
      const Index n = std::min(N, Lmax - j0);
      Acc* st = store_scores_ ? w.sblk + j0 * Mp : w.st;
      score_tile(t0, t1, g, j0, n, w, st, false);
      Ops::max_tile(st, n, Mp, j0, ps.run_max, ps.best_idx);
    }
    // Walk 2: softmax denominators in exp_shifted()'s order (future keys of a row are -inf
    // there: they add exp(-inf) = 0, which changes no sum).
    constexpr Index W = Ops::kLanes;
    for (Index m = 0; m < Mp; ++m) ps.mx[m] = ps.run_max[m] == ninf ? Acc(0) : ps.run_max[m];
    std::fill(ps.zl, ps.zl + W * Mp, Acc(0));
    for (Index j0 = 0; j0 < Lmax; j0 += N) {
      const Index n = std::min(N, Lmax - j0);
      const Acc* st = w.st;
      if (store_scores_) st = w.sblk + j0 * Mp;
      else score_tile(t0, t1, g, j0, n, w, w.st, false);
      Ops::exp_sum_tile(st, n, Mp, ps.mx, ps.zl);
    }
    for (Index m = 0; m < M; ++m) {  // (double runs one lane: lane_sum reads lane[0] only)
      Acc lane[W];
      for (Index l = 0; l < W; ++l) lane[l] = ps.zl[l * Mp + m];
      ps.zsum[m] = Ops::lane_sum(lane);
    }
    // Per-lane selection parameters.
    for (Index m = 0; m < Mp; ++m) {
      ps.lim[m] = 0;
      if (m >= M || ps.run_max[m] == ninf) {  // padding or a fully masked row: keeps nothing
        ps.bound[m] = ps.theta[m] = pinf;
        ps.mx[m] = ps.inv[m] = 0;
        continue;
      }
      const Index t = t0 + m / G, Lt = P_ + t + 1;
      const Acc mx = ps.run_max[m], Z = ps.zsum[m];
      ps.mx[m] = mx;
      ps.inv[m] = Acc(1) / Z;
      if (!cx_.thresholded(Lt)) {  // dense row: every unmasked key
        ps.bound[m] = ps.theta[m] = ninf;
        continue;
      }
      const Acc th = threshold_in<Acc>(cx_.lookup(g * G + m % G, Lt).theta);
      ps.theta[m] = th;
      if (th < Acc(0)) {  // every key j < L_t passes (p_j >= 0 > theta)
        ps.bound[m] = pinf;
        ps.lim[m] = Acc(Lt);
        continue;
      }
      // p_j > theta  <=>  s_j > M + log(theta Z), up to rounding (as in select_row): the keys
      // above a slightly lower bound are tested on p_j itself.
      const Acc lg = std::log(th * Z);
      const Acc slack = Acc(1e-4) + Acc(1e-5) * (std::abs(mx) + std::abs(lg));
      ps.bound[m] = mx + lg - slack;
    }
    // Walk 3: selection and the kept rows' weighted V sum. When it recomputes the scores, the
    // next tile's V rows are prefetched with its keys only after a tile whose product ran dense,
    // as in flash_item (a sparse tile prefetches its kept rows itself).
    std::fill(w.o, w.o + M * d, Acc(0));
    for (Index r = 0; r < rows; ++r) w.unions[r] = 0;
    bool v_dense = true;
    for (Index j0 = 0; j0 < Lmax; j0 += N) {
      const Index n = std::min(N, Lmax - j0);
      const Acc* st = w.st;
      if (store_scores_) st = w.sblk + j0 * Mp;
      else score_tile(t0, t1, g, j0, n, w, w.st, v_dense);
      v_dense = Ops::threshold_tile(st, w.st, n, Mp, j0, ps.bound, ps.mx, ps.inv, ps.theta,
                                    ps.lim, ps.wsum, ps.n_kept, w.keep) &&
                flash_pv_kept(j0, n, g, rows, w);
    }
    post_finish(b, g, t0, t1, w);
  }

  /// Whether query head hh of block row r (token t) keeps key j: the pass-2 test on one score.
  bool post_keeps(Index t, Index g, Index r, Index hh, Index j, Worker& w) const {
    const PostState ps = post_state(w);
    const Index m = r * G_ + hh;
    if (Acc(j) < ps.lim[m]) return true;
    const Acc s = store_scores_ ? w.sblk[j * Mp_ + m] : score_of(t, g, hh, j, w);
    if (!(s > ps.bound[m])) return false;
    Acc e = 0;
    Ops::exp_shifted(&s, 1, ps.mx[m], &e);
    return e * ps.inv[m] > ps.theta[m];
  }

  void post_finish(Index b, Index g, Index t0, Index t1, Worker& w) {
    const Index G = G_, d = d_;
    const PostState ps = post_state(w);
    const auto head = [&](Index t, Index r, Index hh, Index Lt, bool thr, Acc* out, Acc& coeff,
                          KeepMaxUnion& uni) {
      const Index m = r * G + hh, h = g * G + hh;
      const Acc* om = w.o + m * d;
      if (!thr) {  // dense row: the weights were the probabilities already
        std::memcpy(out, om, sizeof(Acc) * std::size_t(d));
        w.sink.row(h, Lt, Lt, cx_.k, false, false);
        return;
      }
      const Index nk = Index(ps.n_kept[m]);
      if (nk > 0) {
        std::memcpy(out, om, sizeof(Acc) * std::size_t(d));
        // Every key kept: the probabilities sum to 1, coefficient 0 (row_weights).
        if (o_.vmc == VmcMode::kOn && nk != Lt) coeff = Acc(1) - ps.wsum[m];
        w.sink.row(h, Lt, nk, cx_.k, true, false);
        return;
      }
      // Empty row.
      std::fill(out, out + d, Acc(0));
      if (o_.empty_row == EmptyRowPolicy::kMeanV) {
        coeff = 1;
        w.sink.row(h, Lt, 0, cx_.k, true, true);
        return;
      }
      // keep-max: the first maximum, weighed by its probability exp(0) / Z.
      const Index am = Index(ps.best_idx[m]);
      Acc e = 0;
      Ops::exp_shifted(&ps.run_max[m], 1, ps.mx[m], &e);
      const Acc wmax = e * ps.inv[m];
      const T* row = v_.row(am, g);
      Ops::accumulate_rows(out, 1, d, &row, &wmax, 1, 1, 1);
      if (o_.vmc == VmcMode::kOn) coeff = Acc(1) - wmax;
      uni.add(am, hh, G, o_.stats, [&](Index h2) { return post_keeps(t, g, r, h2, am, w); });
      w.sink.row(h, Lt, 1, cx_.k, true, true);
    };
    finish_rows(b, g, t0, t1, ps.run_max, w, head);
  }

  // ---- stored -----------------------------------------------------------------------------

  void stored_item(Index b, Index g, Worker& w) {
    const Index G = G_, d = d_, Mp = Mp_, N = kKeyTile;
    const Index t0 = b * R_, t1 = block_end(b), rows = t1 - t0;
    const Index Lmax = P_ + t1, ls = L_ + N;
    load_queries(t0, t1, g, w.qt, w.vbar);
    for (Index j0 = 0; j0 < Lmax; j0 += N) {
      const Index n = std::min(N, Lmax - j0);
      score_tile(t0, t1, g, j0, n, w);
      for (Index m = 0; m < rows * G; ++m) {
        Acc* srow = w.s + m * ls + j0;
        for (Index u = 0; u < n; ++u) srow[u] = w.st[u * Mp + m];
      }
    }
    if (need_vbar_) std::memcpy(w.vsum, vprefix_ + (b * Hkv_ + g) * d, sizeof(Acc) * std::size_t(d));
    const std::int32_t* kept_ptr[kMaxGroup];
    const Acc* w_ptr[kMaxGroup];
    Index counts[kMaxGroup];
    Acc coeff[kMaxGroup];
    Acc* out_ptrs[kMaxGroup];
    for (Index t = t0; t < t1; ++t) {
      const Index Lt = P_ + t + 1;
      if (need_vbar_) next_vbar(g, Lt, w);
      bool all = true;
      for (Index hh = 0; hh < G; ++hh) {
        const Index m = (t - t0) * G + hh, h = g * G + hh;
        RowScratch<Acc> rs = w.rs;
        rs.kept = w.kept + hh * L_;
        rs.w = w.wrow + hh * L_;
        const HeadRow<Acc> hr = process_head_row<Ops>(cx_, h, w.s + m * ls, Lt, static_cast<const Acc*>(nullptr), rs, w.sink);
        kept_ptr[hh] = rs.kept;
        w_ptr[hh] = rs.w;
        counts[hh] = hr.count;
        coeff[hh] = hr.vbar_coeff;
        all = all && hr.all_kept;
        out_ptrs[hh] = a_.out.row(t, h);
        std::fill(out_ptrs[hh], out_ptrs[hh] + d, Acc(0));
      }
      Index nu;
      if (all) {
        // Dense rows: weights are full rows (G, L) in w.wrow; accumulate per head block.
        acc_dense_rows(g, Lt, out_ptrs, w);
        nu = Lt;
      } else {
        nu = kept_union(G, kept_ptr, counts, Lt, w.mark, w.uni);
        compact_weights(G, kept_ptr, w_ptr, counts, w.uni, nu, w.wc);
        std::fill(w.packed, w.packed + G * d, Acc(0));
        gather_group<Ops>(v_, g, G, d, w.uni, nu, w.wc, w.packed);
        unpack(w.packed, out_ptrs);
      }
      if (need_vbar_) add_vmc<Ops>(out_ptrs, G, d, coeff, w.vbar);
      w.sink.vrows(Lt, nu);
    }
  }

  /// Copies the packed (G, d) outputs of a row to the heads' output rows.
  void unpack(const Acc* packed, Acc* const* out_ptrs) const {
    for (Index hh = 0; hh < G_; ++hh)
      std::memcpy(out_ptrs[hh], packed + hh * d_, sizeof(Acc) * std::size_t(d_));
  }

  /// Dense rows of a group: full weight rows (G, L) in w.wrow against V rows 0..Lt-1.
  void acc_dense_rows(Index g, Index Lt, Acc* const* out_ptrs, Worker& w) {
    std::fill(w.packed, w.packed + G_ * d_, Acc(0));
    accumulate_range<Ops>(v_, g, G_, d_, 0, Lt, w.wrow, L_, w.packed);
    unpack(w.packed, out_ptrs);
  }

  const Args& a_;
  const AttentionOptions& o_;
  KView k_, v_;
  RowContext<Acc> cx_;
  Index T_ = 0, L_ = 0, P_ = 0, Hq_ = 0, Hkv_ = 0, G_ = 0, d_ = 0;
  Index R_ = 1, M_ = 1, Mp_ = 1, ldv_ = 1, nb_ = 1;
  bool flash_ = false, calibrate_ = false, need_vbar_ = false, per_head_stats_ = false;
  bool post_ = false, store_scores_ = false;
  int threads_ = 1;
  Acc* vprefix_ = nullptr;
  Worker* workers_ = nullptr;
};

}  // namespace toptheta::detail
