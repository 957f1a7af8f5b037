#pragma once
/// \file plan.hpp
/// Attention for engines: batched ragged decode (`decode_batch`) and the task interface
/// (`AttentionPlan`) that lets an engine run a call on its own thread pool.
///
/// A kernel call is a short sequence of *stages*, each a list of independent *tasks*; a stage
/// starts when the previous one has finished (kernels/parallel.hpp). Every value and the order of
/// every sum depend only on the shapes, never on the number of threads or workers, so every way
/// of running a call (OpenMP, the engine's threads, one thread) gives bit-identical results. (The
/// split into tasks may follow the worker count: a two-pass decode over a head-major cache runs
/// one task per KV group when the workers divide the KV heads, chunks of tokens otherwise.) A batch
/// of N sequences is run as one call whose stage s is the concatenation of stage s of the N
/// single-sequence calls: each sequence's result equals its single `decode` call bit for bit.
///
/// Workspace: `plan_decode_workspace_size`, `plan_prefill_workspace_size` and
/// `decode_batch_workspace_size` size one call; `max_plan_decode_workspace_size`,
/// `max_decode_batch_workspace_size` and `max_plan_prefill_workspace_size` size every call up to
/// an engine's limits (`WorkspaceLimits`), for a buffer allocated once.
///
/// Lifetime: a plan lives in the caller's workspace and holds copies of the arguments and
/// options (not of the caches). The workspace and every buffer the arguments point to (q, K/V or
/// the pools and block tables, out, v_sum, bias, the threshold table, statistics) must stay alive
/// and unchanged until `AttentionPlan::finish` has returned.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <type_traits>

#include "attention.hpp"

namespace toptheta {

/// N sequences decoded in one call (vLLM-style ragged batch): sequence i is `seqs[i]` (one query
/// token, its own cache view or block table, length, output, v_sum, bias). All sequences use the
/// same options and the same kind of cache (all contiguous or all paged); each sequence's
/// thresholds are looked up at its own length. `seq_stats`, when given, points at N statistics
/// objects that receive each sequence's counts (`AttentionOptions::stats` receives the total).
template <class T, class Q = default_query_t<T>>
struct DecodeBatch {
  const AttentionArgs<T, Q>* seqs = nullptr;  ///< `count` sequences' arguments (T = 1 each)
  Index count = 0;                            ///< N >= 1
  AttentionStats* seq_stats = nullptr;        ///< optional: N per-sequence statistics (added to)
};

/// A batch of one sequence.
template <class T, class Q>
DecodeBatch<T, Q> single_sequence(const AttentionArgs<T, Q>& args) {
  return DecodeBatch<T, Q>{&args, 1, nullptr};
}

namespace detail {
/// Which tasks of a plan ran (AttentionPlan::finish): `ran` of `total` tasks ran at least once;
/// `repeat_stage` / `repeat_task` name the first task that ran more than once, `missing_stage` /
/// `missing_task` the first that has not run, `early_stage` / `early_task` the first that
/// started before every task of the previous stage had returned (`early_done` of them had);
/// `bad_call`: a run_task() call had arguments out of range (`bad_*`: the first); -1: none of each;
/// `finished`: finish() already merged the call.
struct TaskRuns {
  Index ran = 0;
  Index total = 0;
  int repeat_stage = -1;
  Index repeat_task = -1;
  int missing_stage = -1;
  Index missing_task = -1;
  int early_stage = -1;
  Index early_task = -1;
  Index early_done = 0;
  bool bad_call = false;
  int bad_stage = -1;
  Index bad_task = -1;
  int bad_worker = -1;
  bool finished = false;
};

/// "task t of stage s" for messages.
inline std::string task_name(int stage, Index task) {
  return "task " + std::to_string(task) + " of stage " + std::to_string(stage);
}
}  // namespace detail

/// A planned attention call whose tasks the caller runs (on an engine's thread pool):
///
///     for (int s = 0; s < plan.num_stages(); ++s) {
///       // run plan.run_task(s, t, worker) for t in [0, plan.num_tasks(s)) on any threads,
///       // each thread with its own worker index in [0, plan.num_workers()); wait for all.
///     }
///     Status st = plan.finish();
///
/// Tasks of one stage may run concurrently and in any order, but two tasks must never run at the
/// same time with the same worker index. Results are identical to `decode` / `decode_batch` /
/// `prefill` for any number of workers and any order. Made by `plan_decode` or `plan_prefill`.
///
/// The plan checks how it is run, and finish() reports what went wrong rather than merging a
/// call whose outputs may be wrong: a run_task() with arguments out of range (it runs nothing),
/// a task that ran twice, a task that started before every task of the previous stage had
/// returned (its inputs were not ready: a skipped task, stages out of order, a pool without a
/// barrier), and a plan finished twice (also through a copy of it: copies share the call).
class AttentionPlan {
 public:
  /// Stages to run in order.
  int num_stages() const { return stages_; }
  /// Independent tasks of stage `stage` (0 <= stage < num_stages()).
  Index num_tasks(int stage) const { return stage >= 0 && stage < stages_ ? tasks_[stage] : 0; }
  /// Per-worker scratch sets: the worker index given to run_task is in [0, num_workers()).
  int num_workers() const { return workers_; }
  /// Runs task `task` of stage `stage` with the scratch of worker `worker`. Arguments out of
  /// range (or a plan that is empty or finished) run nothing; finish() then reports the call
  /// and discards the plan.
  void run_task(int stage, Index task, int worker) {
    if (!impl_) return;
    if (stage < 0 || stage >= stages_ || task < 0 || task >= tasks_[stage] || worker < 0 ||
        worker >= workers_) {
      bad_(impl_, stage, task, worker);
      return;
    }
    run_(impl_, stage, task, worker);
  }
  /// After every task of every stage: adds the statistics into the options' (and per-sequence)
  /// statistics. Returns kFailedPrecondition
  ///  - when the plan is empty or was already finished (through this object or a copy);
  ///  - when some task has not run and no task of a later stage has started (a pool that
  ///    skipped tasks left outputs unwritten): the plan then stays unfinished, and the missing
  ///    tasks can still run;
  ///  - and, discarding the plan (plan the call again), when a task ran more than once, started
  ///    before every task of the previous stage had returned, or run_task() was called with
  ///    arguments out of range: the outputs and statistics may be wrong.
  /// Each plan keeps one byte per task to know which tasks ran, and a count per stage of the
  /// tasks that returned.
  Status finish() {
    if (!impl_) return Status::failed_precondition("AttentionPlan::finish: the plan is empty or finished");
    const detail::TaskRuns r = runs_(impl_);
    const auto discard = [this](const std::string& what) {
      impl_ = nullptr;
      return Status::failed_precondition("AttentionPlan::finish: " + what +
                                         "; the plan is discarded: plan the call again");
    };
    if (r.finished) return discard("the plan was already finished (through a copy of it)");
    if (r.bad_call)
      return discard("run_task(" + std::to_string(r.bad_stage) + ", " + std::to_string(r.bad_task) +
                     ", " + std::to_string(r.bad_worker) +
                     ") was out of range (stages, their tasks and workers count from 0: " +
                     std::to_string(stages_) + " stages, " + std::to_string(workers_) +
                     " workers) and ran nothing");
    if (r.repeat_stage >= 0)
      return discard(detail::task_name(r.repeat_stage, r.repeat_task) +
                     " ran more than once (its outputs may be wrong); run each task exactly once");
    if (r.early_stage >= 0)
      return discard((r.early_task < 0
                          ? std::string("a task started before every task of the previous stage "
                                        "had returned")
                          : detail::task_name(r.early_stage, r.early_task) + " started when " +
                                std::to_string(r.early_done) + " of the " +
                                std::to_string(tasks_[r.early_stage - 1]) + " tasks of stage " +
                                std::to_string(r.early_stage - 1) + " had returned") +
                     ": its inputs were not ready, the outputs may be wrong; run the stages in "
                     "order, each after every task of the previous one has returned");
    if (r.ran < r.total)
      return Status::failed_precondition(
          "AttentionPlan::finish: " + std::to_string(r.ran) + " of the plan's " +
          std::to_string(r.total) +
          " tasks ran (the first missing: " + detail::task_name(r.missing_stage, r.missing_task) +
          "); run every task of every stage before finish()");
    finish_(impl_);
    impl_ = nullptr;
    return {};
  }
  /// True before planning and after finish().
  bool empty() const { return impl_ == nullptr; }

  /// Internal: set by the planning functions.
  template <class Batch>
  void bind(Batch* b) {
    impl_ = b;
    workers_ = b->workers;
    stages_ = b->num_stages();
    for (int s = 0; s < stages_; ++s) tasks_[s] = b->num_tasks(s);
    run_ = [](void* p, int s, Index t, int w) {
      Batch* batch = static_cast<Batch*>(p);
      if (!batch->start_task(s, t)) return;
      batch->run_task(s, t, w);
      batch->end_task(s);
    };
    bad_ = [](void* p, int s, Index t, int w) { static_cast<Batch*>(p)->note_bad_call(s, t, w); };
    runs_ = [](void* p) { return static_cast<const Batch*>(p)->task_runs(); };
    finish_ = [](void* p) { static_cast<Batch*>(p)->finish(); };
  }

  /// Most stages a call has.
  static constexpr int kMaxStages = 4;

 private:
  void* impl_ = nullptr;
  int stages_ = 0;
  int workers_ = 0;
  Index tasks_[kMaxStages] = {0, 0, 0, 0};
  void (*run_)(void*, int, Index, int) = nullptr;
  void (*bad_)(void*, int, Index, int) = nullptr;
  detail::TaskRuns (*runs_)(void*) = nullptr;
  void (*finish_)(void*) = nullptr;
};

namespace detail {

/// N kernel calls of one type run as one: stage s is the concatenation of the calls' stage s.
/// Lives in the workspace, with the calls, their argument and option copies, and the task
/// offsets.
template <class Call, class Args>
struct BatchCall {
  Call* calls = nullptr;
  Args* args = nullptr;
  AttentionOptions* opts = nullptr;
  AttentionStats* seq_stats = nullptr;  // optional, one per call
  AttentionStats* total = nullptr;      // the caller's options.stats
  Index* offsets = nullptr;             // (kMaxStages, n + 1) prefix sums of tasks
  // One byte per task of every stage (stage s's tasks start at run_base[s]), for the tasks run
  // through an AttentionPlan: bit 0 set on the first run, bit 1 on any later one.
  std::atomic<unsigned char>* runs = nullptr;
  Index run_base[AttentionPlan::kMaxStages + 1] = {};
  Index n = 0;
  int workers = 1;
  int stages = 0;
  // Tasks of each stage that returned; the first task that started before its previous stage
  // had all returned (early_*), and the first out-of-range run_task() call (bad_*): each
  // recorded by the thread that wins `early` / `bad`, read by finish() after the pool's wait.
  std::atomic<Index> done[AttentionPlan::kMaxStages] = {};
  // `early` / `bad` are claimed by one thread, which then writes the fields and publishes them
  // with `early_ready` / `bad_ready` (a finish() racing with a misrun pool still reads no torn
  // fields: it reports the violation without them).
  std::atomic<bool> early{false}, bad{false}, early_ready{false}, bad_ready{false}, finished{false};
  int early_stage = -1, bad_stage = -1, bad_worker = -1;
  Index early_task = -1, early_done = 0, bad_task = -1;

  int num_stages() const { return stages; }
  Index num_tasks(int s) const { return offsets[s * (n + 1) + n]; }
  // Tasks of a batch differ in size (sequences of different lengths): hand them out one by one.
  bool dynamic_schedule(int s) const { return n > 1 || calls[0].dynamic_schedule(s); }
  void run_task(int s, Index t, int worker) {
    const Index* o = offsets + s * (n + 1);
    const Index i = Index(std::upper_bound(o, o + n + 1, t) - o) - 1;
    calls[i].run_task(s, t - o[i], worker);
  }
  // Marks task t of stage s as run and checks that stage s - 1 has returned; false (run
  // nothing) once the call was finished.
  bool start_task(int s, Index t) {
    if (finished.load(std::memory_order_acquire)) return false;
    std::atomic<unsigned char>& r = runs[run_base[s] + t];
    if (r.fetch_or(1, std::memory_order_relaxed) & 1) r.fetch_or(2, std::memory_order_relaxed);
    if (s > 0) {
      const Index prev = done[s - 1].load(std::memory_order_acquire);
      if (prev < num_tasks(s - 1) && !early.exchange(true, std::memory_order_acq_rel)) {
        early_stage = s;
        early_task = t;
        early_done = prev;
        early_ready.store(true, std::memory_order_release);
      }
    }
    return true;
  }
  void end_task(int s) { done[s].fetch_add(1, std::memory_order_acq_rel); }
  void note_bad_call(int s, Index t, int w) {
    if (bad.exchange(true, std::memory_order_acq_rel)) return;
    bad_stage = s;
    bad_task = t;
    bad_worker = w;
    bad_ready.store(true, std::memory_order_release);
  }
  TaskRuns task_runs() const {
    TaskRuns out;
    out.total = run_base[stages];
    out.finished = finished.load(std::memory_order_acquire);
    for (int s = 0; s < stages; ++s)
      for (Index t = 0; t < num_tasks(s); ++t) {
        const unsigned char r = runs[run_base[s] + t].load(std::memory_order_relaxed);
        out.ran += r & 1;
        if (!(r & 1) && out.missing_stage < 0) {
          out.missing_stage = s;
          out.missing_task = t;
        }
        if ((r & 2) && out.repeat_stage < 0) {
          out.repeat_stage = s;
          out.repeat_task = t;
        }
      }
    if (early.load(std::memory_order_acquire)) {
      out.early_stage = 1;  // fields not yet published: "task -1 of stage 1"
      if (early_ready.load(std::memory_order_acquire)) {
        out.early_stage = early_stage;
        out.early_task = early_task;
        out.early_done = early_done;
      }
    }
    if (bad.load(std::memory_order_acquire)) {
      out.bad_call = true;
      if (bad_ready.load(std::memory_order_acquire)) {
        out.bad_stage = bad_stage;
        out.bad_task = bad_task;
        out.bad_worker = bad_worker;
      }
    }
    return out;
  }
  void finish() {
    finished.store(true, std::memory_order_release);
    for (Index i = 0; i < n; ++i) {
      // Each call merges into the statistics its options point at: the sequence's, then the
      // total (the options copy is private to the plan).
      if (seq_stats) {
        opts[i].stats = &seq_stats[i];
        calls[i].finish();
      }
      opts[i].stats = total;
      calls[i].finish();
    }
  }
};

/// True for the call types whose per-worker scratch the calls of a batch share (DecodeCall:
/// SharedWorkerScratch in kernels/decode.hpp).
template <class Call, class = void>
struct SharesWorkerScratch : std::false_type {};
template <class Call>
struct SharesWorkerScratch<
    Call, std::void_t<decltype(std::declval<const Call&>().worker_scratch_bytes())>>
    : std::true_type {};

/// Bytes of the block of `workers` shared worker sets of `stride` bytes each, saturated at
/// kSaturatedBytes (workspace.hpp: a plan that large is refused as too small a workspace, and a
/// measure never wraps to a small one).
inline Index shared_sets_bytes(int workers, std::size_t stride) {
  if (stride != 0 && std::size_t(workers) > kSaturatedBytes / stride) return Index(kSaturatedBytes);
  return Index(std::size_t(workers) * stride);
}

/// What one sequence adds to a batch of several (carve_batch measures it for a batch of one):
/// its call's own buffers and task flags, and its worker scratch set, of which the batch keeps
/// one per worker, as large as the largest set of its calls.
struct BatchSequenceParts {
  std::size_t own = 0;      ///< bytes the call takes besides its worker sets, task flags included
  std::size_t scratch = 0;  ///< bytes of one worker set (0: the call type shares none)
};

/// Plans N calls of type Call into `ws` (or, with a null workspace, only measures): carves the
/// batch header, the argument / option copies, the calls and their buffers, and prepares each
/// call. `make(args_i, opts_i, workers)` constructs a call. Returns the bytes used.
///
/// A batch of several decode calls carves one scratch set per worker, as large as the largest
/// set of its calls, and every call's worker i uses set i (SharedWorkerScratch): the batch then
/// needs the sum of its calls' own buffers plus `workers` sets, rather than `workers` sets per
/// call. So its size is a fixed part affine in n, plus each sequence's `BatchSequenceParts::own`,
/// plus one block of `workers` times the largest `scratch` (max_plan_decode_size relies on
/// this). A batch of one carves as `decode` does. With `parts` (n = 1, measuring), the call's
/// parts are returned there.
template <class Call, class Args, class Make>
std::size_t carve_batch(Arena& ar, const Args* seqs, Index n, const AttentionOptions& options,
                        AttentionStats* seq_stats, int workers, Make&& make,
                        BatchCall<Call, Args>** out, BatchSequenceParts* parts = nullptr) {
  static_assert(std::is_trivially_destructible_v<Call>, "plans never run destructors");
  constexpr bool kCanShare = SharesWorkerScratch<Call>::value;
  const bool share = kCanShare && n > 1;
  auto* b = ar.template take<BatchCall<Call, Args>>(1);
  Call* calls = ar.template take<Call>(n);
  Args* args = ar.template take<Args>(n);
  AttentionOptions* opts = ar.template take<AttentionOptions>(n);
  Index* offsets = ar.template take<Index>(AttentionPlan::kMaxStages * (n + 1));
  const bool real = b != nullptr;
  int stages = 0;
  Index tasks = 0;  // of every stage of every call
  const auto tasks_of = [](const Call& c) {
    Index t = 0;
    for (int s = 0; s < c.num_stages(); ++s) t += c.num_tasks(s);
    return t;
  };
  const auto options_of = [&](Index i) {
    AttentionOptions oi = options;
    oi.stats = seq_stats ? &seq_stats[i] : options.stats;
    return oi;
  };
  const auto scratch_of = [](const Call& c) -> std::size_t {
    if constexpr (kCanShare) {
      return c.worker_scratch_bytes();
    } else {
      (void)c;
      return 0;
    }
  };
  const auto carve_call = [&](Call& c, std::byte* base, std::size_t stride) {
    if constexpr (kCanShare) {
      c.carve(ar, SharedWorkerScratch{share, base, stride});
    } else {
      (void)base;
      (void)stride;
      c.carve(ar);
    }
  };
  std::size_t stride = 0;  // of the shared worker sets
  if (real) {
    for (Index i = 0; i < n; ++i) {
      args[i] = seqs[i];
      opts[i] = options_of(i);
      new (&calls[i]) Call(make(args[i], opts[i], workers));
      if (share) stride = std::max(stride, scratch_of(calls[i]));
    }
    std::byte* base =
        share ? ar.template take<std::byte>(shared_sets_bytes(workers, stride)) : nullptr;
    if (share && base == nullptr) return ar.used();  // overflowed: the caller checks
    for (Index i = 0; i < n; ++i) {
      carve_call(calls[i], base, stride);
      stages = std::max(stages, calls[i].num_stages());
      tasks += tasks_of(calls[i]);
    }
  } else {
    for (Index i = 0; i < n; ++i) {
      Call c = make(seqs[i], options_of(i), workers);
      carve_call(c, nullptr, 0);
      tasks += tasks_of(c);
      if (share) stride = std::max(stride, scratch_of(c));
      if (parts && n == 1) {
        Arena own;
        if constexpr (kCanShare)
          c.carve(own, SharedWorkerScratch{true, nullptr, 0});
        else
          c.carve(own);
        parts->own = own.used() + sizeof(std::atomic<unsigned char>) * std::size_t(tasks_of(c));
        parts->scratch = scratch_of(c);
      }
    }
    if (share) ar.template take<std::byte>(shared_sets_bytes(workers, stride));
  }
  auto* runs = ar.template take<std::atomic<unsigned char>>(tasks);
  if (real && !ar.overflowed()) {
    b = new (b) BatchCall<Call, Args>();
    b->calls = calls;
    b->args = args;
    b->opts = opts;
    b->seq_stats = seq_stats;
    b->total = options.stats;
    b->offsets = offsets;
    b->n = n;
    b->workers = workers;
    b->stages = stages;
    for (int s = 0; s < AttentionPlan::kMaxStages; ++s) {
      Index* o = offsets + s * (n + 1);
      o[0] = 0;
      for (Index i = 0; i < n; ++i)
        o[i + 1] = o[i] + (s < calls[i].num_stages() ? calls[i].num_tasks(s) : 0);
      b->run_base[s + 1] = b->run_base[s] + o[n];
    }
    TOPTHETA_ASSERT(b->run_base[AttentionPlan::kMaxStages] == tasks, "plan task count");
    for (Index t = 0; t < tasks; ++t) new (&runs[t]) std::atomic<unsigned char>(0);
    b->runs = runs;
    for (Index i = 0; i < n; ++i) calls[i].prepare();
    *out = b;
  }
  return ar.used();
}

/// Status of sequence i's output overlapping sequence j's range r (a read, or j's output).
inline Status batch_overlap(Index i, Index j, const ByteRange& r) {
  return Status::invalid_argument("sequence " + std::to_string(i) + ": out overlaps sequence " +
                                  std::to_string(j) + "'s " + r.name +
                                  ": an output must not share memory with anything the batch "
                                  "reads or writes");
}

/// Across the sequences of a validated batch (each call's own output was checked against its
/// own inputs): no output overlaps another sequence's output or inputs (sequences run in
/// parallel, so one sequence would corrupt another's cache or output mid-call). Inputs may
/// share memory (one KV pool for every sequence). Outputs laid out in ascending, disjoint order
/// (one output tensor sliced by sequence, as engines do) take O(n log n): each input range is
/// looked up among them by binary search; otherwise every pair is compared (O(n^2)). No
/// allocation either way.
template <class T, class Q>
Status check_batch_outputs(const DecodeBatch<T, Q>& batch) {
  const Index n = batch.count;
  if (n < 2) return {};
  const auto begin = [](const ByteRange& r) { return reinterpret_cast<std::uintptr_t>(r.p); };
  const auto out = [&](Index i) { return out_range(batch.seqs[i]); };
  bool ascending = true;
  for (Index i = 1; i < n && ascending; ++i) {
    const ByteRange a = out(i - 1), b = out(i);
    ascending = begin(a) + a.n <= begin(b);
  }
  if (ascending) {
    for (Index j = 0; j < n; ++j)
      for (const ByteRange& r : input_ranges(batch.seqs[j])) {
        if (r.p == nullptr || r.n == 0) continue;
        // The outputs that can overlap r start before its end (indices < lo); disjoint and
        // ascending, they end in ascending order too, so going down from lo - 1 the first one
        // that ends at or before r's start ends the search.
        Index lo = 0, hi = n;  // lo: the first output starting at or after r's end
        while (lo < hi) {
          const Index mid = (lo + hi) / 2;
          if (begin(out(mid)) < begin(r) + r.n) lo = mid + 1;
          else hi = mid;
        }
        for (Index i = lo - 1; i >= 0; --i) {
          const ByteRange o = out(i);
          if (begin(o) + o.n <= begin(r)) break;
          if (i != j) return batch_overlap(i, j, r);
        }
      }
    return {};
  }
  for (Index i = 0; i < n; ++i) {
    const ByteRange o = out(i);
    for (Index j = 0; j < n; ++j) {
      if (j == i) continue;
      const ByteRange other = out(j);
      if (ranges_overlap(o.p, o.n, other.p, other.n)) return batch_overlap(i, j, other);
      for (const ByteRange& r : input_ranges(batch.seqs[j]))
        if (ranges_overlap(o.p, o.n, r.p, r.n)) return batch_overlap(i, j, r);
    }
  }
  return {};
}

/// Validates a batch: every sequence (errors name it), one query token each, one kind of cache,
/// and no output sharing memory with another sequence's arguments (check_batch_outputs).
template <class T, class Q>
Status check_batch(const DecodeBatch<T, Q>& batch, const AttentionOptions& o, Isa* isa) {
  if (batch.count < 1 || batch.seqs == nullptr)
    return Status::invalid_argument("decode batch has no sequences (count " +
                                    std::to_string(batch.count) + ")");
  if (o.mode == AttentionMode::kCalibrate && batch.count > 1)
    return Status::invalid_argument(
        "calibration observes one sequence per call: decode a batch of 1 (or call decode) with "
        "AttentionMode::kCalibrate");
  const bool paged = !batch.seqs[0].paged.empty();
  for (Index i = 0; i < batch.count; ++i) {
    Status st = check_call(batch.seqs[i], o, /*is_decode=*/true, isa);
    if (st.ok() && batch.seq_stats) {
      const AttentionArgs<T, Q>& a = batch.seqs[i];
      st = check_per_head_stats(&batch.seq_stats[i], a.model_heads > 0 ? a.model_heads : a.q.heads,
                                "seq_stats[" + std::to_string(i) + "]");
    }
    if (!st.ok()) {
      if (batch.count == 1) return st;
      return Status(st.code(), "sequence " + std::to_string(i) + ": " + st.message());
    }
    if (!batch.seqs[i].paged.empty() == paged) continue;
    return Status::invalid_argument("sequence " + std::to_string(i) +
                                    (paged ? " has a contiguous cache" : " has a paged cache") +
                                    " but sequence 0 does not: a batch uses one kind of cache");
  }
  return check_batch_outputs(batch);
}

/// The cache views of one sequence, of the batch's view type.
template <class View, class T, class Q>
View k_view(const AttentionArgs<T, Q>& a) {
  if constexpr (std::is_same_v<View, PagedRows<T>>) return paged_rows(a.paged, false);
  else return a.k;
}
template <class View, class T, class Q>
View v_view(const AttentionArgs<T, Q>& a) {
  if constexpr (std::is_same_v<View, PagedRows<T>>) return paged_rows(a.paged, true);
  else return a.v;
}

/// Plans (ws.data set) or measures (ws.data null) `n` calls of the kernel call template CallT
/// (DecodeCall or PrefillCall) with `workers` scratch sets; the SIMD path and the cache kind are
/// those of seqs[0] (checked by the caller).
template <template <class, class, class> class CallT, class T, class Q>
Status plan_calls(Isa isa, const AttentionArgs<T, Q>* seqs, Index n, AttentionStats* seq_stats,
                  const AttentionOptions& o, int workers, Workspace ws, AttentionPlan* plan,
                  std::size_t* bytes, const char* sizing, BatchSequenceParts* parts = nullptr) {
  using Args = AttentionArgs<T, Q>;
  if (workers < 1)
    return Status::invalid_argument("workers must be >= 1, got " + std::to_string(workers));
  return with_call_views(isa, seqs[0], [&](auto ops, const auto& kv, const auto&) -> Status {
    using View = std::decay_t<decltype(kv)>;
    using Call = CallT<decltype(ops), Args, View>;
    auto make = [](const Args& a, const AttentionOptions& oi, int w) {
      return Call(a, oi, k_view<View>(a), v_view<View>(a), w);
    };
    Arena measure;
    BatchCall<Call, Args>* b = nullptr;
    const std::size_t need =
        carve_batch<Call>(measure, seqs, n, o, seq_stats, workers, make, &b, parts);
    if (bytes) *bytes = need;
    if (!plan) return {};
    if (ws.data == nullptr || ws.bytes < need)
      return workspace_too_small(ws, need, workers, sizing);
    for (Index i = 0; i < n; ++i)
      TOPTHETA_RETURN_IF_ERROR(check_workspace_disjoint(ws.data, need, seqs[i], n > 1 ? i : -1));
    Arena ar(ws);
    carve_batch<Call>(ar, seqs, n, o, seq_stats, workers, make, &b);
    TOPTHETA_ASSERT(!ar.overflowed() && b, "workspace measure and carve disagree");
    plan->bind(b);
    return {};
  });
}

/// Plans or measures a decode batch (see plan_calls).
template <class T, class Q>
Status plan_decode_impl(const DecodeBatch<T, Q>& batch, const AttentionOptions& o, int workers,
                        Workspace ws, AttentionPlan* plan, std::size_t* bytes) {
  Isa isa;
  TOPTHETA_RETURN_IF_ERROR(check_batch(batch, o, &isa));
  return plan_calls<DecodeCall>(isa, batch.seqs, batch.count, batch.seq_stats, o, workers, ws, plan,
                                bytes,
                                "decode_batch_workspace_size() (decode_batch) or "
                                "plan_decode_workspace_size() (plan_decode)");
}

/// Plans or measures a prefill (see plan_calls).
template <class T, class Q>
Status plan_prefill_impl(const AttentionArgs<T, Q>& args, const AttentionOptions& o, int workers,
                         Workspace ws, AttentionPlan* plan, std::size_t* bytes) {
  Isa isa;
  TOPTHETA_RETURN_IF_ERROR(check_call(args, o, /*is_decode=*/false, &isa));
  return plan_calls<PrefillCall>(isa, &args, 1, nullptr, o, workers, ws, plan, bytes,
                                 "plan_prefill_workspace_size()");
}

/// Threads `decode_batch` uses: OpenMP's for the batch's total work and tasks.
template <class T, class Q>
int batch_threads(const DecodeBatch<T, Q>& batch, const AttentionOptions& o) {
  double macs = 0;
  Index items = 0;
  for (Index i = 0; i < batch.count; ++i) {
    const auto& a = batch.seqs[i];
    macs += 2.0 * double(a.cache_tokens()) * double(a.q.heads) * double(a.q.dim);
    const Index L = a.cache_tokens();
    items += std::max<Index>(1, (L + decode_chunk_tokens(L) - 1) / decode_chunk_tokens(L));
  }
  return call_threads(o.threads, macs, items);
}

/// `a` with a cache of L tokens and Tq query tokens: prefixes of its views, for measuring calls
/// (a measure reads shapes, never the data).
template <class T, class Q>
AttentionArgs<T, Q> with_lengths(AttentionArgs<T, Q> a, Index L, Index Tq) {
  if (a.paged.empty())
    a.k.tokens = a.v.tokens = L;
  else
    a.paged.tokens = L;
  a.q.tokens = a.out.tokens = Tq;
  return a;
}

/// Bytes `plan_calls` measures for `n` sequences `seqs` (validated by the caller); with
/// `parts` (n = 1), what the sequence adds to a batch of several.
template <template <class, class, class> class CallT, class T, class Q>
std::size_t measure_plan(Isa isa, const AttentionArgs<T, Q>* seqs, Index n,
                         const AttentionOptions& o, int workers,
                         BatchSequenceParts* parts = nullptr) {
  std::size_t bytes = 0;
  const Status st =
      plan_calls<CallT>(isa, seqs, n, nullptr, o, workers, Workspace{}, nullptr, &bytes, "", parts);
  return st.ok() ? bytes : 0;
}

/// max_plan_decode_workspace_size for a validated template on SIMD path `isa`.
template <class T, class Q>
std::size_t max_plan_decode_size(Isa isa, const AttentionArgs<T, Q>& args,
                                 const AttentionOptions& o, const WorkspaceLimits& limits,
                                 int workers) {
  // A batch of one is measured at every length. A batch of n > 1 takes A(n) (affine in n) plus
  // each sequence's own part plus `workers` times the largest worker set (carve_batch; a
  // measuring arena only adds). The largest batch of N > 1 is therefore one sequence of the
  // length La with the largest own + workers * scratch, and N - 1 of the length Lo with the
  // largest own: any batch's sum of own parts and largest set is at most that. Its size is
  // affine in the copies of Lo, measured at one and two.
  Index la = 1, lo = 1;
  std::size_t one = 0, best_all = 0, best_own = 0;
  for (Index L = 1; L <= limits.max_tokens; ++L) {
    const AttentionArgs<T, Q> a = with_lengths(args, L, 1);
    BatchSequenceParts p;
    one = std::max(one, measure_plan<DecodeCall>(isa, &a, 1, o, workers, &p));
    const std::size_t all = p.own + std::size_t(shared_sets_bytes(workers, p.scratch));
    if (all > best_all) {
      best_all = all;
      la = L;
    }
    if (p.own > best_own) {
      best_own = p.own;
      lo = L;
    }
  }
  // Calibration takes one sequence per call (check_batch).
  const Index n = o.mode == AttentionMode::kCalibrate ? 1 : limits.max_sequences;
  if (n == 1) return one;
  // The largest batch of two is its first two sequences, of three all three.
  const AttentionArgs<T, Q> worst_batch[3] = {with_lengths(args, la, 1), with_lengths(args, lo, 1),
                                              with_lengths(args, lo, 1)};
  const std::size_t two_seqs = measure_plan<DecodeCall>(isa, worst_batch, 2, o, workers);
  if (n == 2) return two_seqs;
  const std::size_t three_seqs = measure_plan<DecodeCall>(isa, worst_batch, 3, o, workers);
  if (three_seqs <= two_seqs) return 0;  // cannot happen: every sequence adds its call
  const std::size_t per_sequence = three_seqs - two_seqs;
  if (per_sequence > (SIZE_MAX - two_seqs) / std::size_t(n - 2)) return 0;  // not addressable
  return two_seqs + std::size_t(n - 2) * per_sequence;
}

}  // namespace detail

/// Bytes of workspace `plan_decode` needs for this batch and `workers` scratch sets (0 when the
/// batch does not validate or workers < 1).
template <class T, class Q>
std::size_t plan_decode_workspace_size(const DecodeBatch<T, Q>& batch,
                                       const AttentionOptions& options, int workers) {
  std::size_t n = 0;
  if (!detail::plan_decode_impl(batch, options, workers, Workspace{}, nullptr, &n).ok()) return 0;
  return n;
}

/// Plans a (batched) decode for the caller's threads: validates every sequence, carves the call
/// from `ws` and prepares it (O(N Hq d) work on the calling thread); the tasks then run through
/// `plan`. `workers` is the number of threads that will run tasks concurrently.
///
/// Returns kInvalidArgument for a batch, sequence (named by index), option, worker count or
/// workspace that does not fit (nothing is written then), kFailedPrecondition for an incomplete
/// threshold table or an unavailable `options.isa`; ok otherwise.
template <class T, class Q>
Status plan_decode(const DecodeBatch<T, Q>& batch, const AttentionOptions& options, int workers,
                   Workspace ws, AttentionPlan* plan) {
  if (plan == nullptr) return Status::invalid_argument("plan_decode: plan is null");
  return detail::plan_decode_impl(batch, options, workers, ws, plan, nullptr);
}

/// Bytes of workspace `plan_prefill` needs (0 when the arguments do not validate).
template <class T, class Q>
std::size_t plan_prefill_workspace_size(const AttentionArgs<T, Q>& args,
                                        const AttentionOptions& options, int workers) {
  std::size_t n = 0;
  if (!detail::plan_prefill_impl(args, options, workers, Workspace{}, nullptr, &n).ok()) return 0;
  return n;
}

/// Plans a causal prefill (see `prefill`) for the caller's threads; like `plan_decode`.
template <class T, class Q>
Status plan_prefill(const AttentionArgs<T, Q>& args, const AttentionOptions& options, int workers,
                    Workspace ws, AttentionPlan* plan) {
  if (plan == nullptr) return Status::invalid_argument("plan_prefill: plan is null");
  return detail::plan_prefill_impl(args, options, workers, ws, plan, nullptr);
}

/// Bytes of workspace `decode_batch` needs (0 when the batch does not validate).
template <class T, class Q>
std::size_t decode_batch_workspace_size(const DecodeBatch<T, Q>& batch,
                                        const AttentionOptions& options) {
  if (batch.count < 1 || batch.seqs == nullptr) return 0;
  return plan_decode_workspace_size(batch, options, detail::batch_threads(batch, options));
}

/// Bytes of one workspace that serves every `plan_decode` call with `workers` scratch sets up
/// to `limits`: the largest `plan_decode_workspace_size` over every batch of 1 to
/// `limits.max_sequences` sequences shaped like `args`, each with a cache of 1 to
/// `limits.max_tokens` tokens (`limits.max_query_tokens` is not used: decode is T = 1). For an
/// engine that sizes its scratch once (vLLM's max_num_seqs and max_model_len).
///
/// `args` gives every sequence's heads, head_dim, storage type, cache layout (contiguous or
/// paged), layer and head offset (its own L and T are not used, but it must validate as for
/// `max_workspace_size`); `options` as for the calls. A buffer shared by the layers of a model
/// takes the largest size over the layers. Per-sequence statistics (`DecodeBatch::seq_stats`)
/// are sized like `options.stats`: if they keep per-head counts, size with options whose
/// `stats` keeps them too (a batch that needs more is refused before anything is written).
/// In AttentionMode::kCalibrate a batch holds one sequence (`plan_decode` rejects more), so the
/// size is that of one.
///
/// Returns 0 when `args` or `options` do not validate, `workers` < 1, `limits.max_tokens` or
/// `limits.max_sequences` is below 1 (`max_query_tokens` too, as everywhere), `max_tokens`
/// exceeds 2^31 - 1, or the size does not fit in size_t.
/// Exact: it measures the decode plan of every length alone. The sequences of a batch of two or
/// more share the workers' scratch sets (one per worker, as large as the largest of its calls';
/// the statistics sinks stay per sequence), so a batch's size is a fixed part that grows
/// linearly with the count, plus each sequence's own part (its buffers and task flags), plus
/// `workers` sets. The largest batch is one sequence of the length with the largest own part
/// plus `workers` sets, and max_sequences - 1 of the length with the largest own part; its size
/// is measured with one and two of the latter and extended linearly
/// (tests/test_workspace_bounds.cpp checks it against every batch of up to three sequences by
/// brute force, and against a measured batch of 48).
/// Cost: one measure per L (which counts the workers' buffers by measuring one worker's, so it
/// does not grow with `workers`), plus two batches: 0.01 s for max_tokens = 128k and 1 to 192
/// workers (Hq = 32, Hkv = 8, d = 128, -O2, measured).
/// Sizes at 128k tokens and 256 sequences (f32, as above): dense 0.28 GB with 2 workers and
/// 0.30 GB with 64; top-k (k = 64; a two-pass mode stores every head's scores, weights and
/// kept rows per sequence) 9.95 GB with 2 and 10.3 GB with 64. Before the sets were shared
/// (each sequence with its own set per worker) they were 0.41 and 4.6 GB, 12.7 and 98 GB.
template <class T, class Q>
std::size_t max_plan_decode_workspace_size(const AttentionArgs<T, Q>& args,
                                           const AttentionOptions& options,
                                           const WorkspaceLimits& limits, int workers) {
  Isa isa;
  if (workers < 1 || !detail::limits_valid(limits) || limits.max_sequences < 1) return 0;
  if (!detail::check_call(args, options, false, &isa).ok()) return 0;
  return detail::max_plan_decode_size(isa, args, options, limits, workers);
}

/// Bytes of one workspace that serves every `decode_batch` call up to `limits` (see
/// `max_plan_decode_workspace_size` for `args`, `options`, the limits and the errors).
/// `decode_batch` runs a batch on as many threads as its work allows, up to `options.threads`
/// (0: OpenMP's count when sized; size again if the engine changes it later, or set
/// `options.threads`), and its scratch follows that count; this is the largest
/// `max_plan_decode_workspace_size` over every count from 1 to that cap. It can exceed the
/// largest real call, by up to the scratch of the extra workers: it lets every batch have every
/// thread count, while a batch with little work runs on fewer threads.
/// Cost: two `max_plan_decode_workspace_size` measures at most, whatever the cap. A plan's size
/// grows with its worker count (each worker adds its scratch set, and to every sequence a
/// statistics sink and a slot; a measuring arena only adds) except for the task flags: a
/// two-pass decode on a head-major cache runs one task per KV group, so fewer tasks, when the
/// workers divide the KV heads (kernels/decode.hpp, group tasks). So the largest size over
/// counts 1..cap is that of the cap or of the largest count below it that does not divide the
/// KV heads, and both are measured (in every case measured the cap's was the larger: one more
/// worker outweighs the flags a sequence saves; tests/test_workspace_bounds.cpp checks the
/// result against every count up to 12). Measured (top-k, f32, Hq = 32, Hkv = 8, d = 128,
/// max_tokens = 128k, 256 sequences, -O2): 0.021-0.029 s for caps of 2 to 192, where one
/// measure per count took 0.044 s at 2, 0.11 s at 8, 1.45 s at 64 and 4.2 s at 192.
template <class T, class Q>
std::size_t max_decode_batch_workspace_size(const AttentionArgs<T, Q>& args,
                                            const AttentionOptions& options,
                                            const WorkspaceLimits& limits) {
  Isa isa;
  if (!detail::limits_valid(limits) || limits.max_sequences < 1) return 0;
  if (!detail::check_call(args, options, false, &isa).ok()) return 0;
  const int cap = std::max(1, resolve_threads(options.threads));
  std::size_t n = detail::max_plan_decode_size(isa, args, options, limits, cap);
  if (n == 0) return 0;
  const Index kv_heads = args.cache_heads();
  for (int w = cap - 1; w >= 1; --w)
    if (kv_heads % w != 0) {
      const std::size_t s = detail::max_plan_decode_size(isa, args, options, limits, w);
      if (s == 0) return 0;
      n = std::max(n, s);
      break;
    }
  return n;
}

/// Bytes of one workspace that serves every `plan_prefill` call with `workers` scratch sets up
/// to `limits`: the largest `plan_prefill_workspace_size` over every cache length
/// 1 <= L <= limits.max_tokens and query count 1 <= T <= min(limits.max_query_tokens, L), for
/// `args` and `options` as in `max_workspace_size` (`limits.max_sequences` is not used; a buffer
/// shared by the layers takes the largest size over the layers).
/// Returns 0 in the cases `max_workspace_size` lists and for `workers` < 1.
/// Exact, like `max_workspace_size`: per L it measures the plan of the largest T (for a fixed L
/// the size never decreases with T; tests/test_workspace_bounds.cpp checks it over every T).
/// Cost: one measure per L, whatever `workers` (as above): 0.01 s for max_tokens = 128k and
/// max_query_tokens = 4096 at 2 to 192 workers.
template <class T, class Q>
std::size_t max_plan_prefill_workspace_size(const AttentionArgs<T, Q>& args,
                                            const AttentionOptions& options,
                                            const WorkspaceLimits& limits, int workers) {
  Isa isa;
  if (workers < 1 || !detail::limits_valid(limits)) return 0;
  if (!detail::check_call(args, options, false, &isa).ok()) return 0;
  std::size_t n = 0;
  for (Index L = 1; L <= limits.max_tokens; ++L) {
    const AttentionArgs<T, Q> a =
        detail::with_lengths(args, L, std::min(limits.max_query_tokens, L));
    n = std::max(n, detail::measure_plan<detail::PrefillCall>(isa, &a, 1, options, workers));
  }
  return n;
}

/// Decodes N sequences of different lengths in one call (one query token each), split across
/// OpenMP threads by sequence and KV chunk. Each sequence's output and statistics equal those of
/// its own `decode` call bit for bit, for any thread count.
///
/// Returns the status codes of `plan_decode`.
template <class T, class Q>
Status decode_batch(const DecodeBatch<T, Q>& batch, const AttentionOptions& options, Workspace ws) {
  if (batch.count < 1 || batch.seqs == nullptr)
    return Status::invalid_argument("decode batch has no sequences (count " +
                                    std::to_string(batch.count) + ")");
  const int threads = detail::batch_threads(batch, options);
  AttentionPlan plan;
  TOPTHETA_RETURN_IF_ERROR(plan_decode(batch, options, threads, ws, &plan));
  struct Runner {
    AttentionPlan& p;
    int num_stages() const { return p.num_stages(); }
    Index num_tasks(int s) const { return p.num_tasks(s); }
    bool dynamic_schedule(int) const { return true; }
    void run_task(int s, Index t, int w) { p.run_task(s, t, w); }
  } runner{plan};
  detail::run_stages(runner, threads);
  return plan.finish();
}

/// Convenience overload that allocates the workspace (examples and tests, not hot loops).
template <class T, class Q>
Status decode_batch(const DecodeBatch<T, Q>& batch, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(decode_batch_workspace_size(batch, options), 1));
  return decode_batch(batch, options, Workspace{buf.data(), buf.size()});
}

}  // namespace toptheta

/// Explicit instantiations of this header's entry points (`plan_decode`, `plan_prefill`,
/// `decode_batch` and their workspace sizes) for one pair `T, Q`; `KW` as for
/// `TOPTHETA_ATTENTION_INSTANCES` (attention.hpp), which explains when to use them.
#define TOPTHETA_PLAN_INSTANCES(KW, T, Q)                                                \
  KW template std::size_t toptheta::plan_decode_workspace_size<T, Q>(                    \
      const ::toptheta::DecodeBatch<T, Q>&, const ::toptheta::AttentionOptions&, int);   \
  KW template ::toptheta::Status toptheta::plan_decode<T, Q>(                            \
      const ::toptheta::DecodeBatch<T, Q>&, const ::toptheta::AttentionOptions&, int,    \
      ::toptheta::Workspace, ::toptheta::AttentionPlan*);                                \
  KW template std::size_t toptheta::plan_prefill_workspace_size<T, Q>(                   \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&, int); \
  KW template ::toptheta::Status toptheta::plan_prefill<T, Q>(                           \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&, int,  \
      ::toptheta::Workspace, ::toptheta::AttentionPlan*);                                \
  KW template std::size_t toptheta::decode_batch_workspace_size<T, Q>(                   \
      const ::toptheta::DecodeBatch<T, Q>&, const ::toptheta::AttentionOptions&);        \
  KW template ::toptheta::Status toptheta::decode_batch<T, Q>(                           \
      const ::toptheta::DecodeBatch<T, Q>&, const ::toptheta::AttentionOptions&,         \
      ::toptheta::Workspace);                                                            \
  KW template ::toptheta::Status toptheta::decode_batch<T, Q>(                           \
      const ::toptheta::DecodeBatch<T, Q>&, const ::toptheta::AttentionOptions&);        \
  KW template std::size_t toptheta::max_plan_decode_workspace_size<T, Q>(                \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&,       \
      const ::toptheta::WorkspaceLimits&, int);                                          \
  KW template std::size_t toptheta::max_decode_batch_workspace_size<T, Q>(               \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&,       \
      const ::toptheta::WorkspaceLimits&);                                               \
  KW template std::size_t toptheta::max_plan_prefill_workspace_size<T, Q>(               \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&,       \
      const ::toptheta::WorkspaceLimits&, int);

/// Defines the compiled instances of every entry point (attention.hpp and plan.hpp) for one
/// `AttentionArgs<T, Q>` pair, in the one file that compiles them for a project built with
/// `TOPTHETA_EXTERN_TEMPLATES` (see `TOPTHETA_ATTENTION_INSTANCES`). Use at global scope.
#define TOPTHETA_INSTANTIATE(T, Q)          \
  TOPTHETA_ATTENTION_INSTANCES(, T, Q)      \
  TOPTHETA_PLAN_INSTANCES(, T, Q)

#if defined(TOPTHETA_EXTERN_TEMPLATES)
#define TOPTHETA_DETAIL_EXTERN_PLAN(T, Q) TOPTHETA_PLAN_INSTANCES(extern, T, Q)
TOPTHETA_FOR_EACH_ARGS_TYPE(TOPTHETA_DETAIL_EXTERN_PLAN)
#undef TOPTHETA_DETAIL_EXTERN_PLAN
#endif
