#pragma once
/// \file kernels/decode.hpp
/// Decode walker: one new query token per head against a KV cache of L tokens.
///
/// The cache is split into fixed chunks of tokens (a function of L only: results are
/// bit-identical for any thread count). Keys are walked in tiles of kScoreTile tokens
/// (kScoreTileInterleaved for storage under 4 bytes per value on an interleaved cache), with all
/// KV heads per tile on an interleaved cache (token order) and head by head on a head-major one
/// (one stream at a time), each key row converted once in registers and dotted with the G
/// queries of its GQA group (Ops::dot_rows). Two plans:
///
/// - **single pass** (dense attention; rows that are not thresholded, L <= k_l; post-softmax
///   Top-θ whose every head keeps every key, theta < 0 as for heads declared dense, which is
///   dense attention with the thresholded rows' statistics and VMC; Top-θ with
///   pre-softmax placement and no cap_k): each chunk computes its scores, its softmax partials
///   (chunk max, kept and dropped exp sums, kept counts), selects the kept keys by comparing
///   with theta (no row-wide dependency, semantics §4) and accumulates the exp-weighted V
///   rows of the group's kept union while the chunk is hot. A final step per head combines the
///   chunks flash-decoding style (rescale by exp(m_c - M)), applies SDC, empty-row policy and
///   VMC. K and the kept V rows are each read once.
/// - **two pass** (top-k, post-softmax Top-θ, calibration, cap_k): pass 1 stores the score
///   rows and each chunk's (max, softmax denominator); per KV group the row pipeline
///   (row_pipeline.hpp) selects and weighs each head's keys, then the union of the group's kept
///   keys is gathered chunk by chunk (gather.hpp), and the partial outputs are summed per head
///   in chunk order, plus VMC. Four stages of chunk / group tasks; on a head-major cache, when
///   the thread count divides Hkv, one stage of one task per KV group that runs the four steps
///   of its group (the same values in the same order, so the same bits), so that no thread
///   reads score rows or weights another one wrote (see group_tasks_).
///
/// Memory traffic: all of K plus the union of kept V rows per KV group (all of V when dense).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "../attention_args.hpp"
#include "../gather.hpp"
#include "../stats.hpp"
#include "../workspace.hpp"
#include "parallel.hpp"
#include "row_pipeline.hpp"

namespace toptheta::detail {

/// Tokens per tile of the key walk (kScoreTile; on the interleaved caches of
/// kScoreTileInterleaved that one instead, so kScoreTile serves keys of f32 and wider caches
/// and of head-major ones) and of the value walk (kValueTile).
inline constexpr Index kScoreTile = 4;
inline constexpr Index kValueTile = 16;
/// The key walk of an interleaved (token-major) cache whose storage has under 4 bytes per value
/// (half, bfloat16, q8_0) goes in tiles of 16 tokens per KV head with sliding prefetch windows of
/// 32 tokens (see `slides`; the 2-thread figures here were taken with windows re-issued at every
/// tile, which sliding ones beat by 1.08-1.15x for half / bfloat16, q8_0 neutral: see
/// kKeySlideTokens). Why: with f16, d = 128 and Hkv = 8, four tokens of one head are 1 KiB spread
/// over an 8 KiB stretch of the cache; sixteen give each head's part of the walk longer runs and
/// more lines in flight (the 4-token walk waited on free miss buffers: perf put 85% of its samples
/// in the key walk right after a prefetch). Measured (harness, f16 / bf16, Hq = 32, Hkv = 8,
/// d = 128, L = 64k, the walks in a shuffled order per round, median of 24 rounds of the per-round
/// ratio): pre-softmax Top-θ 1.33-1.41x faster (f16, 1 thread: 12.0 -> 8.6 ms, the harness's
/// head-major cache 8.6 ms), dense 1.20-1.25x, on 1 and 2 threads. Not used where it did not pay:
/// f32 (0.96-1.05x; its rows are twice as long) and head-major caches (0.94-1.05x, already one
/// stream per head); 16-token windows lost 5-15% to 32-token ones. q8_0 (bench engine_q8, L = 16k,
/// the full reports before and after): 1 thread dense 14.6 -> 9.8 ms, recommended Top-θ
/// 8.5 -> 5.2 ms; 2 threads 7.6 -> 5.1 and 4.4 -> 3.2 ms. (q8_0 then read at about 10% of the
/// probe. The cause was an out-of-line call in its vector load under -march=native, see
/// VecAvx512::half_bits; without it q8_0 dense decode takes the f16 time, 3.9-4.1 ms at
/// L = 16k on 1 thread.)
inline constexpr Index kScoreTileInterleaved = 16;
inline constexpr Index kKeyInterleavedWindow = 32;
static_assert(kKeyInterleavedWindow >= kScoreTileInterleaved,
              "a sliding window shorter than its tile would leave rows unrequested");
/// Software prefetch windows (tokens) of the walks that re-issue them (see `slides`): the key and
/// value walks of f32 and wider caches (narrower storage slides), counted from the first token of
/// the tile about to be read and issued again at every tile, lines already requested included, each
/// KV head's part just before that head's rows are computed. Measured on the benchmark machine
/// (f16, L = 16k, Hkv = 8, d = 128, token-major): a window that starts at the current tile and is
/// re-issued per tile streams at 17 GB/s on one thread and 31 GB/s on two, against 10 and 20 GB/s
/// for a window of one tile 16 tokens ahead, and 10 / 20 GB/s for a sliding window that requests
/// only new lines (likely cause: software prefetches the core cannot queue are dropped, so a
/// request is worth repeating until its line is read; these figures predate the per-head windows
/// and the volatile prefetch, and re-measured on the current walk a sliding window is faster for
/// half / bfloat16 on 1 and 2 threads: see below). Issuing each head's part before its compute
/// rather than the whole window at the top of the tile: f32 9.0 -> 7.6 ms, f16 4.2 -> 3.3-3.8 ms on
/// one thread (harness of 300 calls, medians).
inline constexpr Index kKeyPrefetchTokens = 12;
inline constexpr Index kValuePrefetchTokens = 32;
/// Sliding windows (each tile requests only the one tile of rows entering the window; the whole
/// window at the first tile of a run) used instead for storage types under 4 bytes per value, on
/// every layout and thread count. For keys kKeySlideTokens now serves the head-major walks only
/// (interleaved ones slide over kKeyInterleavedWindow); the token-major key figures below were
/// taken with 4-token tiles. There the walk is bound by its instructions more than by memory and
/// the re-issued prefetches cost ~20% of the in-cache time (perf). Measured (harness, L = 16k, 300
/// calls, medians; L = 64k for 2 threads): head-major f16 1 thread 3.8-4.3 -> 3.4-3.65 ms, 2
/// threads 8.1-8.5 -> 6.9-7.8 ms; token-major 1 thread f16 3.5-3.95 -> 3.25-3.5 ms, bf16
/// 3.96-4.04 -> 3.72-3.96 ms. Not used where it lost: f32 (head-major 1 thread
/// 6.5-7.1 -> 8.2-8.6 ms). Token-major half / bfloat16 on 2 threads was undecided with 4-token key
/// tiles (8.3-8.7 -> 8.6-9.0 ms one session, 7.95-8.7 -> 7.2-8.9 ms the next) and kept re-issued
/// windows; with 16-token key tiles (kScoreTileInterleaved) sliding both walks wins there (harness,
/// Hq = 32, Hkv = 8, d = 128, the variants shuffled per round, median per-round ratio of 16-30
/// rounds): dense f16 1.09-1.14x (L = 64k: 8.7-8.8 -> 7.8-8.0 ms), f16 L = 16k 1.13x, bf16 1.11x,
/// pre-softmax Top-θ f16 1.10-1.15x, bf16 1.08x; 1 thread unchanged (it already slid); q8_0 neutral
/// (bench engine_q8, L = 16k, 2 threads, the full reports before and after: dense 5.28 -> 5.27 ms,
/// recommended Top-θ 2.95 -> 2.88 ms, pre-softmax 2.82 -> 2.80 ms). f32 on 2 threads loses with
/// sliding windows (token-major dense 0.90x, head-major 0.82x) and keeps the re-issued ones. Every
/// line must be requested: prefetching every other line (as if the hardware fetched the adjacent
/// one) halves the bandwidth (f16 1 thread 3.5-4.1 -> 7.0-7.2 ms).
inline constexpr Index kKeySlideTokens = 16;
/// The head-major key walk's sliding window of a selective call (Top-θ, top-k: the key walk is
/// then nearly all of the call's memory traffic), into L2 (see `prefetch_to`), since the Zen 5
/// host: 48 tokens (12 KiB of f16 keys ahead). Bench decode_paired, head-major, 1 thread, the
/// variants in a shuffled order per round, recommended Top-θ over dense, 16 tokens into L1 ->
/// 48 into L2 (measured with the dense walk's keys changed the same way, which left dense
/// unchanged within the noise): L = 16k f16 (4 rounds) 1.56-1.61 -> 1.64-1.72, with 64 tokens
/// into L2 1.65-1.67 and 48 into L1 1.59-1.62; L = 64k (3 rounds) f16 1.63-1.66 -> 1.70-1.73,
/// bf16 1.63-1.65 -> 1.71-1.72; L = 1024 unchanged (f16 0.94-0.97 -> 0.94-0.98, bf16
/// 0.96-0.98 -> 0.94-0.96).
inline constexpr Index kSelectiveKeySlideTokens = 48;
inline constexpr Index kValueSlideTokens = 48;
static_assert(kKeySlideTokens >= kScoreTile && kSelectiveKeySlideTokens >= kScoreTile &&
                  kValueSlideTokens >= kValueTile,
              "a sliding window shorter than its tile would leave rows unrequested");
/// Chunks are whole multiples of this many tokens.
inline constexpr Index kTokenTile = 16;
/// Largest GQA group and number of KV heads a call may have (validate() refuses more): the
/// kernels keep per-head arrays of these sizes on the stack.
inline constexpr Index kMaxGroup = kMaxGqaGroup;
inline constexpr Index kMaxKv = kMaxKvHeads;

/// Tokens per chunk of a decode over L cache tokens (the last chunk may be shorter): 256 up to
/// L = 2k, L / 8 up to L = 8k, 1024 up to L = 64k, then L / 64 (64 chunks), rounded up to whole
/// kTokenTile tiles. A function of L only, so that results are bit-identical for any thread
/// count. Measured (harness, f16, Hq = 32, Hkv = 8, chunk sizes in rotation, median of 40
/// rounds): 1024-token chunks against the former rule (at most 64 chunks of at least 256
/// tokens) make dense and pre-softmax Top-θ decode 0-10% faster at L = 8k-32k, token- and
/// head-major, 1 and 2 threads (dense at L = 16k head-major, 1 thread: 4.85 -> 4.49 ms): fewer
/// per-chunk softmax partials, kept-key unions and merges. The cost: a chunk is the unit of
/// parallel work on interleaved caches, so a call has at most 8 chunk tasks up to L = 8k and
/// L / 1024 up to 64k (16 at L = 16k), fewer than the former rule's 32-64 for machines with
/// more threads (measured on 2 threads only).
inline Index decode_chunk_tokens(Index L) {
  const Index chunk = std::max<Index>({Index(256), std::min<Index>(1024, L / 8), (L + 63) / 64});
  return (chunk + kTokenTile - 1) / kTokenTile * kTokenTile;
}

/// The error for a workspace smaller than the `need` bytes a call carves from it.
/// `sizing` names the function that sizes the workspace of the call that failed.
inline Status workspace_too_small(const Workspace& ws, std::size_t need, int threads,
                                  const char* sizing = "workspace_size()") {
  return Status::invalid_argument("workspace of " + std::to_string(ws.bytes) +
                                  " bytes is smaller than this call needs (" +
                                  std::to_string(need) + " bytes for " + std::to_string(threads) +
                                  " thread(s)); size it with " + sizing);
}

/// Row stride (elements) of a block of score rows of n values: whole 64-byte lines, an odd
/// number of them. Rows of a power-of-two length otherwise start at addresses that share their
/// low bits, so the Hq rows that dot_rows stores each score batch to compete for the same cache
/// sets. Measured (bench, two-pass decode, L = 64k, bf16, token-major, 1 thread, rows of
/// 256 KiB): top-k 10.6 -> 9.3 ms and post-softmax Top-θ 10.1 -> 8.7 ms with the odd stride,
/// against 7.8-8.4 ms for pre-softmax Top-θ (single pass, chunk rows). (Times of that session;
/// the machine's speed has varied since, and the 16-token key tiles changed this walk.)
template <class Acc>
inline Index score_row_stride(Index n) {
  constexpr Index per_line = Index(64 / sizeof(Acc));
  Index lines = (n + per_line - 1) / per_line;
  if (lines % 2 == 0) ++lines;
  return lines * per_line;
}

/// Carves one worker's statistics sink.
inline StatSink carve_sink(Arena& ar, Index Hq, bool per_head) {
  StatSink s;
  s.counts = ar.take<AttentionCounts>(1);
  if (per_head) {
    s.head_kept = ar.take<std::uint64_t>(Hq);
    s.head_total = ar.take<std::uint64_t>(Hq);
  }
  return s;
}

/// Per-worker scratch shared by the calls of a decode batch (carve_batch in plan.hpp): worker
/// i's set of every call is carved from [base + i * stride, base + (i + 1) * stride). Sound
/// because every buffer of a call's worker set is transient within one task (written before it
/// is read, in the same task; `mark` is zeroed before each kept_union of a task) and a
/// worker runs one task at a time (AttentionPlan's contract): the sets of the batch's calls can
/// overlap. The statistics sinks stay per call (they add up across the call's tasks).
/// `on` with a null `base` measures (the call carves no worker sets from its own arena).
struct SharedWorkerScratch {
  bool on = false;
  std::byte* base = nullptr;
  std::size_t stride = 0;  ///< bytes per worker: the largest worker_scratch_bytes() of the calls
};

/// One decode call: planned from the arguments, carved from a workspace, run as stages of
/// independent tasks (kernels/parallel.hpp).
template <class Ops, class Args, class KView>
class DecodeCall {
 public:
  using T = typename Args::cache_type;
  using Acc = acc_t<T>;

  /// `workers` > 0 fixes the number of per-worker scratch sets (the task interface, where the
  /// engine's pool runs the tasks); 0 picks the OpenMP thread count from `o.threads` and the work.
  DecodeCall(const Args& a, const AttentionOptions& o, const KView& k, const KView& v,
             int workers = 0)
      : a_(a), o_(o), k_(k), v_(v), cx_(RowContext<Acc>::make(a, o)) {
    L_ = k.tokens;
    Hq_ = a.q.heads;
    Hkv_ = k.heads;
    G_ = Hq_ / std::max<Index>(Hkv_, 1);
    d_ = a.q.dim;
    chunk_ = decode_chunk_tokens(L_);
    nc_ = std::max<Index>(1, (L_ + chunk_ - 1) / chunk_);
    sc_stride_ = score_row_stride<Acc>(chunk_);
    s_stride_ = score_row_stride<Acc>(L_);
    thresholded_ = cx_.thresholded(L_);
    keep_all_ = thresholded_ && keeps_every_key(o);
    selective_ = thresholded_ && !keep_all_;
    // Calibration observes full rows: always two passes.
    fused_ = !cx_.calibrate &&
             (!thresholded_ || keep_all_ ||
              (cx_.sel_mode == AttentionMode::kTopTheta &&
               cx_.placement == Placement::kPreSoftmax && o.cap_k == 0));
    sparse_fused_ = fused_ && thresholded_ && !keep_all_;
    need_vbar_ = thresholded_ && needs_vbar(o);
    need_mz_ = !fused_ && (cx_.placement == Placement::kPostSoftmax || cx_.calibrate);
    per_head_stats_ = o.stats && !o.stats->kept_per_head.empty();
    threads_ = workers > 0 ? workers : call_threads(o.threads, 2.0 * double(L_) * double(Hq_) * double(d_),
                            std::max(nc_, Hkv_));
    // Two pass on a head-major cache: one task per KV group (its scores, selection, gather and
    // sum) when the threads divide the groups. Chunk tasks hand each group's score rows and
    // weights to the thread of the next stage: measured with 2 threads (L = 1024, post-softmax,
    // bf16), the selection of the 8 groups took 36.5 us on one thread that had computed half
    // the scores against 20 us on one that had computed them all. Harness (median of calls,
    // bf16, 5 alternating runs each): L = 1024 2 threads post Top-θ 136-146 -> 126-133 us,
    // top-k 141-153 -> 133-136 us; L = 16k 1 thread post 2245-2406 -> 1963-2129 us, 2 threads
    // 1137-1176 -> 1088-1158 us. Not on interleaved caches: a group's rows are strided there,
    // and the per-group walk was slower (L = 16k, 2 threads, post: 1.94-2.02 -> 2.55-2.80 ms).
    group_tasks_ = !fused_ && head_runs(k) && head_runs(v) && Hkv_ % threads_ == 0;
  }

  int threads() const { return threads_; }

  /// Bytes of one worker's scratch set (the buffers of `Worker` but its statistics sink), as a
  /// measuring arena counts them, rounded up to the workspace alignment.
  std::size_t worker_scratch_bytes() const {
    Arena measure;
    Worker w{};
    carve_worker_scratch(measure, w);
    const std::size_t b = measure.used();
    return (b + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
  }

  /// Carves the buffers from `ar` (a null-based arena only measures); with `shared.on`, the
  /// workers' scratch sets from `shared` instead (SharedWorkerScratch).
  void carve(Arena& ar, const SharedWorkerScratch& shared = {}) {
    const Index nc = nc_, Hq = Hq_, d = d_, L = L_, G = G_;
    q_ = ar.take<Acc>(Hq * d);
    if (need_vbar_) vbar_ = ar.take<Acc>(Hkv_ * d);
    part_acc_ = ar.take<Acc>(nc * Hq * d);
    part_m_ = ar.take<Acc>(nc * Hq);
    part_l_ = ar.take<Acc>(nc * Hq);
    touched_ = ar.take<std::uint8_t>(nc * Hkv_);
    if (sparse_fused_) {
      part_dd_ = ar.take<Acc>(nc * Hq);
      part_nk_ = ar.take<Index>(nc * Hq);
      part_nu_ = ar.take<Index>(nc * Hkv_);
      theta_ = ar.take<Acc>(Hq);
      sdc_term_ = ar.take<Acc>(Hq);
    }
    if (!fused_) {
      s_ = ar.take<Acc>(Hq * s_stride_);
      uni_ = ar.take<std::int32_t>(Hkv_ * L);
      nuni_ = ar.take<Index>(Hkv_);
      wc_ = ar.take<Acc>(Hkv_ * L * G);
      dense_g_ = ar.take<std::uint8_t>(Hkv_);
      coeff_ = ar.take<Acc>(Hq);
    }
    workers_ = ar.take<Worker>(threads_);
    shared_scratch_ = shared.on;
    carve_workers(ar, threads_, [&](Arena& wa, int i) {
      Worker w{};
      if (!shared.on) {
        carve_worker_scratch(wa, w);
      } else if (shared.base) {
        Arena set(Workspace{shared.base + std::size_t(i) * shared.stride, shared.stride});
        carve_worker_scratch(set, w);
        TOPTHETA_ASSERT(!set.overflowed(), "shared worker scratch smaller than a call's set");
      }
      w.sink = carve_sink(wa, Hq, per_head_stats_);
      if (workers_) workers_[i] = w;
    });
  }

  /// Set-up that must precede the stages (single-threaded, O(Hq d)).
  void prepare() {
    const Index d = d_;
    if (cx_.calibrate) o_.calibrator->record_call_geometry(a_.q.dim, effective_score_scale(a_));
    for (Index h = 0; h < Hq_; ++h) {
      Ops::convert_row(a_.q.row(0, h), d, q_ + h * d);
      Ops::scale(q_ + h * d, cx_.scale, d);
    }
    for (int i = 0; i < threads_; ++i) {
      workers_[i].sink.zero(Hq_);
      // Shared sets are zeroed by each task that uses them (another call's task may have
      // written over them).
      if (workers_[i].mark && !shared_scratch_)
        std::memset(workers_[i].mark, 0, std::size_t(fused_ ? chunk_ : L_));
    }
    if (sparse_fused_)
      for (Index h = 0; h < Hq_; ++h) {
        const ThresholdLookup th = cx_.lookup(h, L_);
        theta_[h] = threshold_in<Acc>(th.theta);
        sdc_term_[h] = std::isnan(th.sdc) ? Acc(0) : Acc(th.sdc);
      }
  }

  int num_stages() const { return fused_ ? 2 : group_tasks_ ? 1 : 4; }
  Index num_tasks(int stage) const {
    if (fused_) return stage == 0 ? nc_ : Hkv_;
    if (group_tasks_) return Hkv_;
    return stage == 0 || stage == 2 ? nc_ : Hkv_;
  }
  /// Tasks are handed out one by one, chunk tasks as well as group tasks (which differ in size):
  /// a worker that another process slows takes fewer of them. Each task writes its own chunk's
  /// or group's partials and the final step reads them in chunk order, so the results are the
  /// same bits under any schedule (as batches and AttentionPlan's pool already run them). The
  /// static split this replaces gave each thread a fixed half of the chunks, so a thread
  /// sharing its core made a 2-thread call wait for its half. A/B on a shared 2-core host with
  /// another process running (bench decode_paired, 3 alternating runs, 2 threads): pre-softmax
  /// + SDC over top-k (whose head-major two-pass tasks were already dynamic) at L = 16k f16
  /// head-major 0.91-1.14 -> 1.07-1.10, at L = 64k 0.92-1.05 -> 1.09-1.14; 2 threads over 1,
  /// dense, L = 64k f16 head-major (6 runs) 1.30-1.94 -> 1.56-2.38. The cost, where 4 chunks leave
  /// nothing to balance (L = 1024 token-major, 6 alternating runs): 2-thread calls ~2% slower,
  /// recommended Top-θ over dense 1.02-1.03 -> 1.01 (medians). One thread runs tasks in order.
  bool dynamic_schedule(int) const { return true; }

  void run_task(int stage, Index task, int worker) {
    Worker& w = workers_[worker];
    if (fused_) {
      if (stage == 0) fused_chunk(task, w);
      else fused_finish_group(task, w);
    } else if (group_tasks_) {  // the four steps of one KV group, its chunks in order
      for (Index c = 0; c < nc_; ++c) scores_chunk(c, w, task);
      select_group(task, w);
      for (Index c = 0; c < nc_; ++c) gather_chunk(c, task);
      reduce_group(task);
    } else {
      switch (stage) {
        case 0: scores_chunk(task, w); break;
        case 1: select_group(task, w); break;
        case 2: gather_chunk(task); break;
        default: reduce_group(task); break;
      }
    }
  }

  /// Adds the workers' statistics into the caller's.
  void finish() {
    for (int i = 0; i < threads_; ++i) workers_[i].sink.merge_into(o_.stats, Hq_, a_.head_offset);
    cx_.count_extrapolated(o_.stats, Hq_, L_ - 1, 1);
  }

 private:
  struct Worker {
    Acc* sc = nullptr;            // fused: (Hq, chunk) scores, then exp(s - m_c)
    Acc* ex = nullptr;            // two pass: (chunk) exp scratch
    std::int32_t* kept = nullptr; // (G, chunk) fused / (G, L) two pass
    std::int32_t* uni = nullptr;  // (chunk)
    std::uint8_t* mark = nullptr; // (chunk) / (L), zero between uses
    Acc* wc = nullptr;            // (chunk, G)
    Acc* wrow = nullptr;          // (G, L) weights of the kept lists
    RowScratch<Acc> rs{};
    StatSink sink;
  };

  /// One worker's scratch set (every buffer of `Worker` but the sink) from `ar`.
  void carve_worker_scratch(Arena& ar, Worker& w) const {
    const Index L = L_, G = G_, CH = chunk_;
    if (fused_) {
      w.sc = ar.take<Acc>(Hq_ * sc_stride_);
      if (sparse_fused_) {
        w.kept = ar.take<std::int32_t>(G * CH);
        w.uni = ar.take<std::int32_t>(CH);
        w.mark = ar.take<std::uint8_t>(CH);
        w.wc = ar.take<Acc>(CH * G);
      }
    } else {
      w.ex = ar.take<Acc>(CH);
      w.rs.a = ar.take<Acc>(L);
      w.rs.probs = ar.take<Acc>(L);
      w.kept = ar.take<std::int32_t>(G * L);
      w.wrow = ar.take<Acc>(G * L);
      w.mark = ar.take<std::uint8_t>(L);
    }
  }

  /// Post-softmax Top-θ whose every head keeps every key of the row: theta < 0 for all heads
  /// (a head declared dense in the table gives -inf), so p_j >= 0 > theta for all j < L, and no
  /// cap_k below L. The call is then dense attention with the thresholded row's statistics; its
  /// weights p_j sum to 1 by definition, so VMC's coefficient is exactly 0 (semantics §6).
  /// Decided per call from the table lookups (semantics §4).
  bool keeps_every_key(const AttentionOptions& o) const {
    if (cx_.calibrate || cx_.sel_mode != AttentionMode::kTopTheta ||
        cx_.placement != Placement::kPostSoftmax || (o.cap_k > 0 && o.cap_k < L_))
      return false;
    for (Index h = 0; h < Hq_; ++h)
      if (!(cx_.lookup(h, L_).theta < 0.0)) return false;
    return true;
  }

  void chunk_range(Index c, Index* j0, Index* j1) const {
    *j0 = c * chunk_;
    *j1 = std::min(L_, *j0 + chunk_);
  }

  /// Which walk a prefetch serves: the key walk, the dense value walk, or the sparse gather of
  /// kept V rows (gather_group).
  enum class Walk { kKeys, kValues, kGather };

  /// Software prefetch of KV head g's rows of tokens [t, min(t + n, L)) (any view: a paged
  /// cache's rows are looked up through its block table, so the window crosses blocks), into
  /// the cache level of `prefetch_to`.
  void prefetch_head(const KView& view, Walk walk, Index g, Index t, Index n) const {
    const Index end = std::min(L_, t + n), items = HeadsView<const T>::row_items(d_);
    const PrefetchTo to = prefetch_to(view, walk);
    for (Index u = t; u < end; ++u) prefetch_row(view.row(u, g), items, to);
  }

  /// The cache level the walks prefetch into: L2 (prefetcht1) for the interleaved walks of f32
  /// and wider caches and for the key walk of a selective call over head-major runs of storage
  /// under 4 bytes per value; L1 (prefetcht0) for the other walks of storage under 4 bytes per
  /// value and for head-major runs of f32 and wider caches. Measured before the Zen 5 host
  /// (every walk of narrow storage in L1 then; harness, Hq = 32, Hkv = 8, d = 128, L = 16k and
  /// 64k, the hints in a shuffled order per round, median per-round ratio of 12-40 rounds,
  /// speed-up of L1 over L2):
  /// f32 head-major dense 1.17-1.39x, pre-softmax Top-θ 1.09-1.23x; f16 / bf16 token-major dense
  /// 1.01-1.11x, pre 0.98-1.11x; f16 / bf16 head-major 0.93-1.07x (the session's noise was about
  /// +-5%). f32 token-major (windows re-issued at every tile: 4 tokens for keys, 16 for values)
  /// was neutral with L1 for dense (0.93-1.07x) and slower for pre-softmax (0.85-0.93x), and
  /// keeps L2. The sparse gather's prefetches (gather.hpp) kept L2: L1 there was neutral
  /// (0.99-1.02x). Since the Zen 5 host the key walk of a selective call (see `selective_`) over
  /// head-major runs of storage under 4 bytes per value prefetches into L2, with a 48-token
  /// window (kSelectiveKeySlideTokens). Measured there and not taken:
  ///  - the value walks into L2 as well: dense decode slower (L = 16k f16 head-major, 1 thread,
  ///    2.9-3.1 -> 3.1-3.3 ms);
  ///  - dense calls' keys into L2: a dense decode over a paged cache (token-major blocks)
  ///    slower (bench engine_paged, L = 16k f16, 1 thread, 3 rounds: 16-token blocks
  ///    3.9-4.05 -> 5.0-5.1 ms, 256-token blocks 3.15-3.3 -> 3.55-4.0 ms);
  ///  - token-major selective calls' keys into L2 (same 32-token window): undecided. Bench
  ///    decode_paired, L = 16k, 1 thread, recommended Top-θ over dense: an A/B in one binary
  ///    (3 rounds) f16 1.61-1.65 -> 1.67-1.69, bf16 1.62-1.66 -> 1.65-1.71; an A/B of two
  ///    binaries (2 rounds) f16 1.64-1.65 -> 1.59-1.64, bf16 1.63-1.67 -> 1.61-1.65,
  ///    pre-softmax f16 1.74-1.77 -> 1.62-1.69. Paged Top-θ gained 2-5%.
  ///
  /// The sparse gather of kept V rows (Walk::kGather) prefetches into L1 on interleaved
  /// (token-major) caches of storage under 4 bytes per value, and into L2 otherwise. Measured on
  /// the Zen 5 host (bench decode_paired, the two hints in one binary, in a shuffled order per
  /// run, 2-3 runs; speed-up over dense, L2 -> L1): L = 1024 token-major f16 1 thread,
  /// recommended Top-θ 0.85 -> 1.03-1.12, pre-softmax 0.93 -> 1.09-1.18, top-k 0.73 -> 0.82-0.89;
  /// 2 threads, recommended 0.88-1.02 -> 1.05-1.22; bf16 alike; L = 16k token-major +2-8%;
  /// L = 64k unchanged. Not taken: f32 token-major (L = 1024, 2 threads, recommended
  /// 1.40-1.45 -> 1.34-1.35; L = 16k +1-4%) and head-major caches (L = 1024 f16, 1 thread,
  /// pre-softmax 1.04-1.05 -> 0.89-0.90, recommended 0.99 -> 0.92-0.93, though L = 16k gained
  /// 0-17%).
  PrefetchTo prefetch_to(const KView& view, Walk walk) const {
    if (walk == Walk::kGather)
      return narrow() && !head_runs(view) ? PrefetchTo::kL1 : PrefetchTo::kL2;
    if (walk == Walk::kKeys && selective_ && narrow() && head_runs(view)) return PrefetchTo::kL2;
    return narrow() || head_runs(view) ? PrefetchTo::kL1 : PrefetchTo::kL2;
  }

  /// True when one KV head's rows of consecutive tokens are adjacent (a head-major cache, or
  /// head-major blocks of a paged one): the walks then go head by head, one stream at a time,
  /// instead of token tile by token tile across the heads (measured, L = 16k, head-major,
  /// 1 thread: f16 4.1 -> 3.7 ms, f32 8.6 -> 7.2 ms). Every score and every head's sum of V
  /// rows is computed in the same order either way: the results are the same bits.
  bool head_runs(const KView& view) const {
    return view.token_stride == HeadsView<const T>::row_items(d_);
  }

  /// True for storage types under 4 bytes per value (half, bfloat16, q8_0).
  bool narrow() const { return HeadsView<const T>::row_items(d_) * Index(sizeof(T)) < 4 * d_; }

  /// True when the walks use sliding prefetch windows (kKeySlideTokens, kKeyInterleavedWindow,
  /// kValueSlideTokens) rather than re-issued ones: storage types under 4 bytes per value, on
  /// any layout and thread count (measured: see kKeySlideTokens). The same for both views.
  bool slides() const { return narrow(); }

  /// Walks the tiles of `tile` tokens of [j0, j1), calling step(g, t0, pf, npf) with the
  /// tokens [pf, pf + npf) of head g to prefetch first: head by head on head-major runs, token
  /// tile by token tile across the heads otherwise; the prefetch window is the sliding one of
  /// `slide_window` tokens when `slides`, else the re-issued `window`.
  template <class Step>
  void walk_tiles(const KView& view, Index j0, Index j1, Index tile, Index window,
                  Index slide_window, const std::uint8_t* heads, Step&& step) const {
    const bool slide = slides();
    auto visit = [&](Index g, Index t0) {
      if (!slide) step(g, t0, t0, window);
      else if (t0 == j0) step(g, t0, t0, slide_window);
      else step(g, t0, t0 + slide_window - tile, tile);
    };
    if (head_runs(view)) {
      for (Index g = 0; g < Hkv_; ++g)
        if (!heads || heads[g])
          for (Index t0 = j0; t0 < j1; t0 += tile) visit(g, t0);
    } else {
      for (Index t0 = j0; t0 < j1; t0 += tile)
        for (Index g = 0; g < Hkv_; ++g)
          if (!heads || heads[g]) visit(g, t0);
    }
  }

  /// Scores of tokens [j0, j1) for every head into s (row stride ss), finished (bias, NaN); with
  /// `group` >= 0 only that KV group's heads. Tiles of kScoreTile tokens, or of
  /// kScoreTileInterleaved on an interleaved cache of storage under 4 bytes per value, with
  /// every KV head per tile, so the walk stays close to token order on an interleaved cache.
  /// (When the whole window was prefetched at the top of each tile, 16-token tiles streamed an
  /// interleaved cache at ~60% of the sequential bandwidth and 4-token ones at ~70%, fp16 decode
  /// 30% faster; with per-head windows the 16-token tiles win for those types: see
  /// kScoreTileInterleaved.) The tile only groups the walk: every score is the same dot
  /// product.
  void scores(Index j0, Index j1, Acc* s, Index ss, Index group = -1) const {
    const Index G = G_, d = d_;
    const bool long_tiles = narrow() && !head_runs(k_);
    const Index tile = long_tiles ? kScoreTileInterleaved : kScoreTile;
    const T* keys[std::max(kScoreTileInterleaved, kScoreTile)];
    std::uint8_t only[kMaxKv] = {};
    if (group >= 0) only[group] = 1;
    // Long tiles are narrow storage, which always slides: kKeyPrefetchTokens (the re-issued
    // window) serves f32 and wider caches only.
    const Index key_slide = long_tiles ? kKeyInterleavedWindow
                            : selective_ ? kSelectiveKeySlideTokens
                                         : kKeySlideTokens;
    walk_tiles(k_, j0, j1, tile, kKeyPrefetchTokens,
               key_slide, group >= 0 ? only : nullptr,
               [&](Index g, Index t0, Index pf, Index npf) {
                 const Index nt = std::min(tile, j1 - t0);
                 prefetch_head(k_, Walk::kKeys, g, pf, npf);
                 for (Index u = 0; u < nt; ++u) keys[u] = k_.row(t0 + u, g);
                 Ops::dot_rows(q_ + g * G * d, G, d, keys, nt, s + g * G * ss + (t0 - j0), ss);
               });
    const float* bias = a_.bias.empty() ? nullptr : a_.bias.row(0) + j0;
    const Index h0 = group >= 0 ? group * G : 0, h1 = group >= 0 ? h0 + G : Hq_;
    for (Index h = h0; h < h1; ++h) Ops::finish_scores(s + h * ss, bias, j1 - j0);
  }

  /// acc_g[hh][0..d) += sum_j w[g * wg + hh * ws + j - j0] V(j, g) for tokens [j0, j1), every
  /// group g with `dense[g]`, in tiles of kValueTile tokens with every group per tile (token
  /// order, as the key walk).
  void accumulate_dense(Index j0, Index j1, const Acc* w, Index ws, Index wg, Acc* acc,
                        const std::uint8_t* dense) const {
    const Index G = G_, d = d_;
    const T* rows[kValueTile];
    walk_tiles(v_, j0, j1, kValueTile, kValuePrefetchTokens, kValueSlideTokens, dense,
               [&](Index g, Index t0, Index pf, Index npf) {
                 const Index nt = std::min(kValueTile, j1 - t0);
                 prefetch_head(v_, Walk::kValues, g, pf, npf);
                 for (Index u = 0; u < nt; ++u) rows[u] = v_.row(t0 + u, g);
                 Ops::accumulate_rows(acc + g * G * d, G, d, rows, w + g * wg + (t0 - j0), 1, ws,
                                      nt);
               });
  }

  // ---- single pass ------------------------------------------------------------------------

  void fused_chunk(Index c, Worker& w) {
    const Index G = G_, d = d_, CH = chunk_, SS = sc_stride_;
    Index j0, j1;
    chunk_range(c, &j0, &j1);
    const Index n = j1 - j0;
    Acc* sc = w.sc;
    scores(j0, j1, sc, SS);
    Acc* acc = part_acc_ + c * Hq_ * d;
    std::fill(acc, acc + Hq_ * d, Acc(0));
    std::uint8_t dense[kMaxKv] = {};
    for (Index h = 0; h < Hq_; ++h) {
      Acc* row = sc + h * SS;
      const Acc m = Ops::row_max(row, n);
      part_m_[c * Hq_ + h] = m;
      if (!sparse_fused_) {
        part_l_[c * Hq_ + h] = Ops::exp_shifted(row, n, m, row);
      }
    }
    if (!sparse_fused_) {
      for (Index g = 0; g < Hkv_; ++g) dense[g] = 1;
      accumulate_dense(j0, j1, sc, SS, G * SS, acc, dense);
      for (Index g = 0; g < Hkv_; ++g) touched_[c * Hkv_ + g] = 1;
      return;
    }
    // Top-θ, pre-softmax: keep s_j > theta_h, exp-weights relative to the chunk max.
    if (shared_scratch_) std::memset(w.mark, 0, std::size_t(n));  // kept_union's zero marks
    for (Index g = 0; g < Hkv_; ++g) {
      const std::int32_t* kept_ptr[kMaxGroup];
      Index counts[kMaxGroup];
      bool all = true;
      for (Index hh = 0; hh < G; ++hh) {
        const Index h = g * G + hh;
        Acc* row = sc + h * SS;
        std::int32_t* kept = w.kept + hh * CH;
        const Index nk = Ops::indices_above(row, n, theta_[h], kept);
        const Acc m = part_m_[c * Hq_ + h];
        // row now holds exp(s - m_c); D~ sums the dropped keys' terms themselves. total - ks
        // rounded to a non-zero D~ when no unmasked key was dropped (masked keys, s = -inf, add
        // an exact 0): SDC then changed the denominator and VMC added the V mean, which must
        // stay out of such a row exactly (semantics §4.2, §6; a NaN in it reached the output).
        const Acc dd = Ops::exp_shifted_dropped(row, n, m, theta_[h], row);
        Acc ks = 0;
        for (Index i = 0; i < nk; ++i) ks += row[kept[i]];
        part_l_[c * Hq_ + h] = ks;
        part_dd_[c * Hq_ + h] = dd;
        part_nk_[c * Hq_ + h] = nk;
        kept_ptr[hh] = kept;
        counts[hh] = nk;
        all = all && nk == n;
      }
      Acc* accg = acc + g * G * d;
      if (all) {  // every head kept the whole chunk: a dense walk
        std::uint8_t only[kMaxKv] = {};
        only[g] = 1;
        accumulate_dense(j0, j1, sc, SS, G * SS, acc, only);
        part_nu_[c * Hkv_ + g] = n;
        touched_[c * Hkv_ + g] = 1;
        continue;
      }
      const Index nu = kept_union(G, kept_ptr, counts, n, w.mark, w.uni);
      part_nu_[c * Hkv_ + g] = nu;
      touched_[c * Hkv_ + g] = nu > 0;
      if (nu == 0) continue;
      // Compact weights: exp(s - m_c) of each head's kept keys.
      std::fill(w.wc, w.wc + nu * G, Acc(0));
      for (Index hh = 0; hh < G; ++hh) {
        const Acc* row = sc + (g * G + hh) * SS;
        Index u = 0;
        for (Index i = 0; i < counts[hh]; ++i) {
          const std::int32_t j = kept_ptr[hh][i];
          while (w.uni[u] != j) ++u;
          w.wc[u * G + hh] = row[j];
        }
      }
      for (Index u = 0; u < nu; ++u) w.uni[u] += std::int32_t(j0);
      GatherPrefetch pf;
      pf.to = prefetch_to(v_, Walk::kGather);
      gather_group<Ops>(v_, g, G, d, w.uni, nu, w.wc, accg, pf);
    }
  }

  /// Rescale factor of chunk c for head h against the row maximum M (0 for empty chunks).
  Acc chunk_scale(Index c, Index h, Acc M) const {
    const Acc mc = part_m_[c * Hq_ + h];
    return mc == -std::numeric_limits<Acc>::infinity() ? Acc(0) : Acc(std::exp(mc - M));
  }

  void fused_finish_group(Index g, Worker& w) {
    const Index G = G_, d = d_;
    if (need_vbar_) compute_vbar(g);
    Acc* out_ptrs[kMaxGroup];
    Acc coeff[kMaxGroup];
    Index union_total = 0;
    bool any_row = false;
    Index added[kMaxGroup];  // keys that empty keep-max rows of this group added to the union
    Index n_added = 0;
    for (Index c = 0; c < nc_; ++c) union_total += sparse_fused_ ? part_nu_[c * Hkv_ + g] : 0;
    for (Index hh = 0; hh < G; ++hh) {
      const Index h = g * G + hh;
      Acc* out = a_.out.row(0, h);
      out_ptrs[hh] = out;
      coeff[hh] = 0;
      std::fill(out, out + d, Acc(0));
      Acc M = -std::numeric_limits<Acc>::infinity();
      for (Index c = 0; c < nc_; ++c) M = std::max(M, part_m_[c * Hq_ + h]);
      if (M == -std::numeric_limits<Acc>::infinity()) {  // fully masked: output 0
        w.sink.row(h, L_, 0, cx_.k, thresholded_, false);
        continue;
      }
      any_row = true;
      Acc D = 0, Dd = 0;
      Index nk = 0;
      for (Index c = 0; c < nc_; ++c) {
        const Acc e = chunk_scale(c, h, M);
        D += e * part_l_[c * Hq_ + h];
        if (sparse_fused_) {
          Dd += e * part_dd_[c * Hq_ + h];
          nk += part_nk_[c * Hq_ + h];
        }
      }
      if (!sparse_fused_) {  // dense row: softmax over all keys
        const Acc inv = Acc(1) / D;
        for (Index c = 0; c < nc_; ++c) {
          const Acc e = chunk_scale(c, h, M) * inv;
          if (e != Acc(0)) Ops::axpy(e, part_acc_ + (c * Hq_ + h) * d, out, d);
        }
        // A post-softmax row keeping every key: thresholded, weights p_j, which sum to 1 by
        // definition: VMC's coefficient stays exactly 0 (semantics §6; see row_weights).
        w.sink.row(h, L_, L_, cx_.k, keep_all_, false);
        continue;
      }
      if (nk == 0) {  // empty row
        empty_row(g, hh, M, Dd, out, &coeff[hh], &union_total, added, &n_added, w.sink);
        continue;
      }
      const Acc denom = fused_denominator(h, M, D, Dd, nk);
      const Acc inv = Acc(1) / denom;
      for (Index c = 0; c < nc_; ++c) {
        const Acc e = chunk_scale(c, h, M) * inv;
        if (e != Acc(0) && part_l_[c * Hq_ + h] != Acc(0))
          Ops::axpy(e, part_acc_ + (c * Hq_ + h) * d, out, d);
      }
      // No compensation (denom = D): renormalised weights, which sum to 1 (row_weights).
      if (o_.vmc == VmcMode::kOn && denom != D) coeff[hh] = Acc(1) - D * inv;
      w.sink.row(h, L_, nk, cx_.k, true, false);
    }
    if (need_vbar_) add_vmc<Ops>(out_ptrs, G, d, coeff, vbar_ + g * d);
    w.sink.vrows(L_, sparse_fused_ ? union_total : (any_row ? L_ : 0));
  }

  /// The denominator D + sdc_scale * D~ of a thresholded single-pass row (D, Dd relative to M).
  /// SDC none renormalises over the kept set (D).
  Acc fused_denominator(Index h, Acc M, Acc D, Acc Dd, Index nk) const {
    return sdc_denominator(o_.sdc, Acc(o_.sdc_scale), D,
                           sdc_dropped(o_.sdc, L_, nk, M, theta_[h], Dd, sdc_term_[h]));
  }

  /// A thresholded single-pass row of query head g * G + hh where nothing passed theta.
  /// `added` lists the keys earlier empty rows of the group added to its union.
  void empty_row(Index g, Index hh, Acc M, Acc Dd, Acc* out, Acc* coeff, Index* union_total,
                 Index* added, Index* n_added, const StatSink& sink) {
    const Index G = G_, d = d_, h = g * G + hh;
    if (o_.empty_row == EmptyRowPolicy::kMeanV) {
      *coeff = 1;  // output vbar_L
      sink.row(h, L_, 0, cx_.k, true, true);
      return;
    }
    // keep-max: the first maximum of the row. Find the first chunk that holds M and recompute
    // its scores (the same dot products, so the same values).
    Index c = 0;
    while (part_m_[c * Hq_ + h] != M) ++c;
    Index j0, j1;
    chunk_range(c, &j0, &j1);
    Acc s[kTokenTile];
    Index am = -1;
    const T* keys[kTokenTile];
    for (Index t0 = j0; t0 < j1 && am < 0; t0 += kTokenTile) {
      const Index nt = std::min(kTokenTile, j1 - t0);
      for (Index u = 0; u < nt; ++u) keys[u] = k_.row(t0 + u, g);
      Ops::dot_rows(q_ + h * d, 1, d, keys, nt, s, kTokenTile);
      Ops::finish_scores(s, a_.bias.empty() ? nullptr : a_.bias.row(0) + t0, nt);
      for (Index u = 0; u < nt; ++u)
        if (s[u] == M) {
          am = t0 + u;
          break;
        }
    }
    if (am < 0) am = j0;  // unreachable: the chunk max is one of its scores
    // Weight of the kept maximum: exp(0) / (1 + sdc_scale * D~), D~ over the other keys.
    const Acc dropped = sdc_dropped(o_.sdc, L_, Index(1), M, theta_[h],
                                    std::max(Dd - Acc(1), Acc(0)), sdc_term_[h]);
    const Acc wmax = Acc(1) / sdc_denominator(o_.sdc, Acc(o_.sdc_scale), Acc(1), dropped);
    const T* row = v_.row(am, g);
    Ops::accumulate_rows(out, 1, d, &row, &wmax, 1, 1, 1);
    if (o_.vmc == VmcMode::kOn) *coeff = Acc(1) - wmax;
    // The union of the group grows by one unless another head kept this key (passed theta, or
    // is an earlier empty row that kept the same maximum).
    bool shared = false;
    for (Index i = 0; i < *n_added && !shared; ++i) shared = added[i] == am;
    for (Index h2 = g * G; h2 < (g + 1) * G && !shared; ++h2) {
      if (h2 == h) continue;
      Acc s2 = 0;
      const T* key = k_.row(am, g);
      Ops::dot_rows(q_ + h2 * d, 1, d, &key, 1, &s2, 1);
      Ops::finish_scores(&s2, a_.bias.empty() ? nullptr : a_.bias.row(0) + am, 1);
      shared = s2 > theta_[h2];
    }
    if (!shared) {
      *union_total += 1;
      added[(*n_added)++] = am;
    }
    sink.row(h, L_, 1, cx_.k, true, true);
  }

  // ---- two pass ---------------------------------------------------------------------------

  /// Pass 1 on chunk c: score rows and (with need_mz_) the chunk's max and exp sum per head;
  /// with `group` >= 0 only that KV group's heads.
  void scores_chunk(Index c, Worker& w, Index group = -1) {
    Index j0, j1;
    chunk_range(c, &j0, &j1);
    scores(j0, j1, s_ + j0, s_stride_, group);
    if (!need_mz_) return;
    const Index h0 = group >= 0 ? group * G_ : 0, h1 = group >= 0 ? h0 + G_ : Hq_;
    for (Index h = h0; h < h1; ++h) {
      const Acc* row = s_ + h * s_stride_ + j0;
      const Acc m = Ops::row_max(row, j1 - j0);
      part_m_[c * Hq_ + h] = m;
      part_l_[c * Hq_ + h] = Ops::exp_shifted(row, j1 - j0, m, w.ex);
    }
  }

  void select_group(Index g, Worker& w) {
    const Index G = G_, L = L_;
    if (need_vbar_) compute_vbar(g);
    const std::int32_t* kept_ptr[kMaxGroup];
    const Acc* w_ptr[kMaxGroup];
    Index counts[kMaxGroup];
    bool all = true;
    for (Index hh = 0; hh < G; ++hh) {
      const Index h = g * G + hh;
      Acc mz[2];
      const Acc* mzp = nullptr;
      if (need_mz_) {
        Acc M = -std::numeric_limits<Acc>::infinity(), Z = 0;
        for (Index c = 0; c < nc_; ++c) M = std::max(M, part_m_[c * Hq_ + h]);
        for (Index c = 0; c < nc_; ++c) Z += chunk_scale(c, h, M) * part_l_[c * Hq_ + h];
        mz[0] = M;
        mz[1] = Z;
        mzp = mz;
      }
      RowScratch<Acc> rs = w.rs;
      rs.kept = w.kept + hh * L;
      rs.w = w.wrow + hh * L;
      const HeadRow<Acc> hr = process_head_row<Ops>(cx_, h, s_ + h * s_stride_, L, mzp, rs, w.sink);
      coeff_[h] = hr.vbar_coeff;
      kept_ptr[hh] = rs.kept;
      w_ptr[hh] = rs.w;
      counts[hh] = hr.count;
      all = all && hr.all_kept;
    }
    Acc* wc = wc_ + g * L * G;
    if (all) {  // every head kept every key: weights as dense rows (G, L), a dense walk
      for (Index hh = 0; hh < G; ++hh) std::memcpy(wc + hh * L, w_ptr[hh], sizeof(Acc) * std::size_t(L));
      dense_g_[g] = 1;
      nuni_[g] = L;
    } else {
      dense_g_[g] = 0;
      std::int32_t* uni = uni_ + g * L;
      if (shared_scratch_) std::memset(w.mark, 0, std::size_t(L));  // kept_union's zero marks
      const Index nu = kept_union(G, kept_ptr, counts, L, w.mark, uni);
      compact_weights(G, kept_ptr, w_ptr, counts, uni, nu, wc);
      nuni_[g] = nu;
    }
    w.sink.vrows(L, nuni_[g]);
  }

  /// Pass 2 on chunk c: the partial outputs of the kept V rows of every group (with `group` >= 0
  /// only that group's, whose part of the chunk's accumulators it alone writes).
  void gather_chunk(Index c, Index group = -1) {
    const Index G = G_, d = d_, L = L_;
    Index j0, j1;
    chunk_range(c, &j0, &j1);
    Acc* acc = part_acc_ + c * Hq_ * d;
    const Index g0 = group >= 0 ? group : 0, g1 = group >= 0 ? group + 1 : Hkv_;
    std::fill(acc + g0 * G * d, acc + g1 * G * d, Acc(0));
    std::uint8_t dense[kMaxKv] = {};
    bool any_dense = false;
    for (Index g = g0; g < g1; ++g) {
      dense[g] = dense_g_[g];
      any_dense = any_dense || dense[g];
      touched_[c * Hkv_ + g] = dense[g];
    }
    if (any_dense) accumulate_dense(j0, j1, wc_ + j0, L, L * G, acc, dense);
    // Each group's kept rows in this chunk: uni_[g * L + p0[g] .. p1[g]). A group's gather
    // prefetches the first rows of the next group's, so that its rows are in flight when it
    // starts (bench decode_paired, L = 1024 token-major, gather into L1, one binary, 3 runs:
    // recommended Top-θ over dense, 1 thread, f16 0.99-1.01 -> 1.05-1.06, bf16 1.01-1.07 ->
    // 1.09-1.11; 2 threads f16 1.01-1.14 -> 1.04-1.22, bf16 1.00-1.16 -> 1.21-1.22; L = 16k
    // within the noise).
    Index p0[kMaxKv], p1[kMaxKv];
    for (Index g = g0; g < g1; ++g) {
      p0[g] = p1[g] = 0;
      if (dense[g]) continue;
      const std::int32_t* uni = uni_ + g * L;
      const Index nu = nuni_[g];
      p0[g] = std::lower_bound(uni, uni + nu, std::int32_t(j0)) - uni;
      p1[g] = std::lower_bound(uni + p0[g], uni + nu, std::int32_t(j1)) - uni;
    }
    const PrefetchTo to = prefetch_to(v_, Walk::kGather);
    for (Index g = g0; g < g1; ++g) {
      if (p1[g] == p0[g]) continue;
      touched_[c * Hkv_ + g] = 1;
      GatherPrefetch pf;  // the next group with rows here: its first rows join the window
      pf.to = to;
      for (Index gn = g + 1; gn < g1 && pf.next_n == 0; ++gn)
        if (p1[gn] > p0[gn]) {
          pf.next_uni = uni_ + gn * L + p0[gn];
          pf.next_n = p1[gn] - p0[gn];
          pf.next_g = gn;
        }
      gather_group<Ops>(v_, g, G, d, uni_ + g * L + p0[g], p1[g] - p0[g],
                        wc_ + g * L * G + p0[g] * G, acc + g * G * d, pf);
    }
  }

  void reduce_group(Index g) {
    const Index G = G_, d = d_;
    Acc* out_ptrs[kMaxGroup];
    for (Index hh = 0; hh < G; ++hh) {
      const Index h = g * G + hh;
      Acc* out = a_.out.row(0, h);
      out_ptrs[hh] = out;
      std::fill(out, out + d, Acc(0));
      for (Index c = 0; c < nc_; ++c)
        if (touched_[c * Hkv_ + g]) {
          // out += part in the path's vectors (an FMA by 1 is the exact add, bit for bit).
          Ops::axpy(Acc(1), part_acc_ + (c * Hq_ + h) * d, out, d);
        }
    }
    if (need_vbar_) add_vmc<Ops>(out_ptrs, G, d, coeff_ + g * G, vbar_ + g * d);
  }

  /// vbar_g = (sum of V rows 0..L-2, the caller's running sum or the cache's, + row L-1) / L.
  void compute_vbar(Index g) {
    Acc* vb = vbar_ + g * d_;
    VbarSetup::prefix<Ops>(v_, g, d_, L_ - 1, running_v_sum(a_, o_), a_.v_sum_stride, vb);
    VbarSetup::add_rows<Ops>(v_, g, d_, L_ - 1, L_, vb);
    Ops::scale(vb, Acc(1) / Acc(L_), d_);
  }

  const Args& a_;
  const AttentionOptions& o_;
  KView k_, v_;
  RowContext<Acc> cx_;
  Index L_ = 0, Hq_ = 0, Hkv_ = 0, G_ = 0, d_ = 0, chunk_ = 0, nc_ = 0;
  Index sc_stride_ = 0, s_stride_ = 0;  // row strides of w.sc and s_ (score_row_stride)
  bool thresholded_ = false, keep_all_ = false, fused_ = true, sparse_fused_ = false,
       group_tasks_ = false,
       selective_ = false,  // a selection (Top-θ, top-k, calibration) that does not keep every key
       need_vbar_ = false,
       need_mz_ = false, per_head_stats_ = false;
  bool shared_scratch_ = false;  // the worker sets are shared with a batch's other calls
  int threads_ = 1;
  Acc* q_ = nullptr;
  Acc* vbar_ = nullptr;
  Acc* part_acc_ = nullptr;
  Acc* part_m_ = nullptr;
  Acc* part_l_ = nullptr;
  Acc* part_dd_ = nullptr;
  Index* part_nk_ = nullptr;
  Index* part_nu_ = nullptr;
  std::uint8_t* touched_ = nullptr;
  Acc* theta_ = nullptr;
  Acc* sdc_term_ = nullptr;
  Acc* s_ = nullptr;
  std::int32_t* uni_ = nullptr;
  Index* nuni_ = nullptr;
  Acc* wc_ = nullptr;
  std::uint8_t* dense_g_ = nullptr;
  Acc* coeff_ = nullptr;
  Worker* workers_ = nullptr;
};

}  // namespace toptheta::detail
