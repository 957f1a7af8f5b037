// 03_llamacpp_engine: Top-θ inside a llama.cpp-style CPU engine.
//
// What such an engine has, and how each piece meets the library (docs/integration.md §2):
//  * a token-major KV cache per layer, [n_ctx][n_kv_heads][head_dim], stored as f16 or q8_0
//    (llama.cpp's block_q8_0), written in place as tokens arrive: the kernels read it through
//    strided views, nothing is copied or converted;
//  * f32 queries and outputs over that cache: AttentionArgs<Eigen::half, float> and
//    AttentionArgs<BlockQ8_0, float>;
//  * its own thread pool: the call is planned (plan_prefill / plan_decode) and the pool runs the
//    plan's tasks; the result is bit-identical to the library's OpenMP path, checked below;
//  * thresholds calibrated inside the engine (a calibration prefill over held-in text), saved
//    next to the model as one file with several budgets k, and loaded at start-up;
//  * the running V sum that VMC needs, updated at O(d) per appended token;
//  * a tensor-parallel split of the heads into two shards that share the whole model's table.
//
// The "model" is synthetic (queries that look at a few earlier keys, an attention sink and the
// most recent tokens), one layer, Llama-3-8B attention shapes: 32 query heads over 8 KV heads of
// head_dim 128. Exits non-zero when any check fails.
#include <toptheta/toptheta.hpp>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace toptheta;

namespace {

constexpr Index kHq = 32, kHkv = 8, kD = 128, kGroup = kHq / kHkv;
constexpr Index kCtx = 1536;         // context of the cache
constexpr Index kPrompt = 1024;      // prompt length (prefill)
constexpr Index kSteps = 24;         // decode steps after the prompt
constexpr Index kBudget = 64;        // the k the engine runs at

int g_failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++g_failures;
  }
}
void check(const Status& s, const std::string& what) { check(s.ok(), what + ": " + s.to_string()); }

// ---------------------------------------------------------------------------------------------
// The engine's thread pool: persistent threads; run(plan) executes each stage of a plan with the
// calling thread as worker 0 and the pool's threads as workers 1..n-1, and returns when every
// task of every stage has run (a stage starts when the previous one has finished).
// ---------------------------------------------------------------------------------------------
class ThreadPool {
 public:
  explicit ThreadPool(int threads) : size_(std::max(threads, 1)) {
    for (int w = 1; w < size_; ++w) threads_.emplace_back([this, w] { loop(w); });
  }
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int size() const { return size_; }

  void run(AttentionPlan& plan) {
    for (int s = 0; s < plan.num_stages(); ++s) {
      {
        std::lock_guard<std::mutex> lock(m_);
        plan_ = &plan;
        stage_ = s;
        next_ = 0;
        busy_ = size_ - 1;
        ++generation_;
      }
      wake_.notify_all();
      work(0);
      std::unique_lock<std::mutex> lock(m_);
      done_.wait(lock, [&] { return busy_ == 0; });
    }
  }

 private:
  void work(int worker) {
    const Index n = plan_->num_tasks(stage_);
    for (Index t = next_++; t < n; t = next_++) plan_->run_task(stage_, t, worker);
  }
  void loop(int worker) {
    long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(m_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      work(worker);
      {
        std::lock_guard<std::mutex> lock(m_);
        --busy_;
      }
      done_.notify_one();
    }
  }

  int size_;
  std::vector<std::thread> threads_;
  std::mutex m_;
  std::condition_variable wake_, done_;
  AttentionPlan* plan_ = nullptr;
  int stage_ = 0;
  std::atomic<Index> next_{0};
  int busy_ = 0;
  long generation_ = 0;
  bool stop_ = false;
};

// ---------------------------------------------------------------------------------------------
// A synthetic layer: per token, its K/V rows and, when it is a query, its query rows (f32).
// ---------------------------------------------------------------------------------------------
struct SyntheticLayer {
  std::vector<float> k, v;  // (kCtx, kHkv, kD) f32 "activations" before the cache stores them
  std::mt19937 rng;
  explicit SyntheticLayer(unsigned seed) : k(kCtx * kHkv * kD), v(kCtx * kHkv * kD), rng(seed) {
    std::normal_distribution<float> n(0.f, 1.f);
    for (float& x : k) x = n(rng);
    for (float& x : v) x = n(rng);
    for (Index g = 0; g < kHkv; ++g)  // token 0 is an attention sink
      for (Index i = 0; i < kD; ++i) k[g * kD + i] = (i % 2 ? 3.f : -3.f);
  }
  const float* key(Index t, Index g) const { return &k[(t * kHkv + g) * kD]; }
  /// The f32 query rows (kHq, kD) of the token at position `pos`.
  void query(Index pos, float* q) {
    std::normal_distribution<float> n(0.f, 1.f);
    std::uniform_int_distribution<Index> earlier(pos > 0 ? 1 : 0, pos);  // tokens 1..pos exist
    for (Index h = 0; h < kHq; ++h) {
      const Index g = h / kGroup;
      float* qh = q + h * kD;
      for (Index i = 0; i < kD; ++i) qh[i] = 0.6f * n(rng);
      for (int s = 0; s < 6; ++s) {
        const float a = 0.25f + 0.1f * float(s) + 0.05f * float(h % 3);
        const float* kr = key(earlier(rng), g);
        for (Index i = 0; i < kD; ++i) qh[i] += a * kr[i];
      }
      for (Index i = 0; i < kD; ++i) qh[i] += 0.16f * key(0, g)[i];
      for (Index j = std::max<Index>(0, pos - 8); j <= pos; ++j)
        for (Index i = 0; i < kD; ++i) qh[i] += 0.02f * key(j, g)[i];
    }
  }
};

// ---------------------------------------------------------------------------------------------
// The KV cache of one layer in the engine's storage type T (Eigen::half or BlockQ8_0).
// ---------------------------------------------------------------------------------------------
template <class T>
struct LayerCache {
  static constexpr Index kRowItems = kD / kValuesPerItem<T>;  // items of T per (token, head) row
  std::vector<T> k, v;                                          // [kCtx][kHkv][kRowItems]
  std::vector<float> v_sum;  // (kHkv, kD) running sum of the stored V rows 0..size-1
  Index size = 0;

  LayerCache() : k(kCtx * kHkv * kRowItems), v(kCtx * kHkv * kRowItems), v_sum(kHkv * kD, 0.f) {}

  /// Stores token `size` (f32 rows of the layer) the way llama.cpp's ggml_cpy does.
  void store(const SyntheticLayer& src) {
    for (Index g = 0; g < kHkv; ++g) {
      const float* ks = &src.k[(size * kHkv + g) * kD];
      const float* vs = &src.v[(size * kHkv + g) * kD];
      T* kd = &k[(size * kHkv + g) * kRowItems];
      T* vd = &v[(size * kHkv + g) * kRowItems];
      if constexpr (std::is_same_v<T, BlockQ8_0>) {
        check(quantize_row_q8_0(ks, kd, kD), "quantize K");
        check(quantize_row_q8_0(vs, vd, kD), "quantize V");
      } else {
        for (Index i = 0; i < kD; ++i) kd[i] = T(ks[i]), vd[i] = T(vs[i]);
      }
    }
    ++size;
  }
  /// Adds the stored V rows of token t to the running sum (O(kHkv kD)), after the step that
  /// appended it: the kernels take the sum of the rows *before* the call's new tokens.
  void add_to_v_sum(Index t) {
    for (Index g = 0; g < kHkv; ++g)
      for (Index i = 0; i < kD; ++i)
        v_sum[g * kD + i] += value_at(&v[(t * kHkv + g) * kRowItems], i);
  }
  HeadsView<const T> k_view() const {
    return HeadsView<const T>::token_major(k.data(), size, kHkv, kD);
  }
  HeadsView<const T> v_view() const {
    return HeadsView<const T>::token_major(v.data(), size, kHkv, kD);
  }
};

/// Arguments for the newest `tokens` tokens of the cache, f32 queries and outputs.
template <class T>
AttentionArgs<T, float> args_for(const LayerCache<T>& c, const float* q, float* out, Index tokens) {
  AttentionArgs<T, float> a;
  a.q = HeadsView<const float>::token_major(q, tokens, kHq, kD);
  a.k = c.k_view();
  a.v = c.v_view();
  a.out = HeadsView<float>::token_major(out, tokens, kHq, kD);
  a.v_sum = c.v_sum.data();
  return a;
}

/// The engine's scratch for the plans its pool runs: one buffer, sized once for the engine's
/// limits (as llama.cpp sizes its compute buffers when it creates a context).
struct Scratch {
  std::vector<std::byte> bytes;
  explicit Scratch(std::size_t n) : bytes(n) { check(n > 0, "scratch size"); }
  Workspace get() { return Workspace{bytes.data(), bytes.size()}; }
};

// ---------------------------------------------------------------------------------------------
// Calibration inside the engine: a calibration prefill over held-in text, several budgets from
// one pass, compact θ(L) tables saved as one file next to the model.
// ---------------------------------------------------------------------------------------------
std::string calibrate_and_save(const std::filesystem::path& dir) {
  // [integration:calibrate]
  SyntheticLayer text(11);  // held-in "calibration text" of kPrompt tokens
  LayerCache<Eigen::half> cache;
  std::vector<float> q(kPrompt * kHq * kD), out(kPrompt * kHq * kD);
  for (Index t = 0; t < kPrompt; ++t) {
    cache.store(text);
    text.query(t, &q[t * kHq * kD]);
  }
  CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = kHq;
  co.k_values = {32, kBudget, 128};  // one pass, one table per budget
  co.placement = Placement::kPostSoftmax;
  co.per_length = false;             // constant memory: pooled, log-spaced length buckets
  co.model_id = "synthetic-8B-attention";
  Calibrator cal(co);
  AttentionOptions o;
  o.mode = AttentionMode::kCalibrate;
  o.calibrator = &cal;
  std::fill(cache.v_sum.begin(), cache.v_sum.end(), 0.f);  // prefill of the whole prompt: P = 0
  check(prefill(args_for(cache, q.data(), out.data(), kPrompt), o), "calibration prefill");
  ThresholdSet tables;
  CalibrationReport report;
  check(cal.finalize_compact(&tables, &report), "finalize_compact");
  for (const std::string& w : report.warnings()) std::printf("  calibration note: %s\n", w.c_str());
  const std::string path = (dir / "thresholds.toptheta").string();
  check(save_threshold_set(path, tables), "save thresholds");  // atomic: never a torn file
  // [/integration:calibrate]
  return path;
}

template <class T>
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

/// One generation: prefill the prompt on the pool, then decode step by step; returns the last
/// step's Top-θ output (for the f16 vs q8_0 comparison).
template <class T>
std::vector<float> generate(const char* name, const ThresholdTable& table, ThreadPool& pool) {
  SyntheticLayer layer(23);
  LayerCache<T> cache;
  std::vector<float> q(kPrompt * kHq * kD), out(kPrompt * kHq * kD);
  std::vector<float> q1(kHq * kD), out1(kHq * kD), dense1(kHq * kD), omp1(kHq * kD);
  AttentionStats stats;
  // [integration:options]
  AttentionOptions topt = toptheta_options(table);  // post-softmax + VMC, no SDC
  topt.stats = &stats;
  // [/integration:options]

  // Prefill: the prompt's K/V rows go into the cache, then one planned call for all T tokens.
  for (Index t = 0; t < kPrompt; ++t) {
    cache.store(layer);
    layer.query(t, &q[t * kHq * kD]);
  }
  // [integration:scratch]
  // Every prefill of up to kPrompt tokens and every decode step, for caches of up to kCtx
  // tokens on the pool's workers: a size measured once (the need is not monotone in L).
  const WorkspaceLimits limits{kCtx, kPrompt, 1};
  const auto like = args_for(cache, q.data(), out.data(), kPrompt);  // shapes and options
  Scratch scratch(std::max(max_plan_prefill_workspace_size(like, topt, limits, pool.size()),
                           max_plan_decode_workspace_size(like, topt, limits, pool.size())));
  // [/integration:scratch]
  {
    // [integration:plan_prefill]
    const auto args = args_for(cache, q.data(), out.data(), kPrompt);  // v_sum: rows 0..P-1 = 0
    AttentionPlan plan;
    check(plan_prefill(args, topt, pool.size(), scratch.get(), &plan), "plan_prefill");
    pool.run(plan);
    check(plan.finish(), "prefill finish");
    // [/integration:plan_prefill]
    // The same prefill on OpenMP must give the same bits, as each decode step below.
    std::vector<float> omp_out(out.size());
    auto omp_args = args;
    omp_args.out = HeadsView<float>::token_major(omp_out.data(), kPrompt, kHq, kD);
    AttentionOptions oo = topt;
    oo.stats = nullptr;
    check(prefill(omp_args, oo), "prefill (OpenMP)");
    check(std::memcmp(out.data(), omp_out.data(), out.size() * sizeof(float)) == 0,
          std::string(name) + ": pool and OpenMP prefill outputs differ");
  }
  for (Index t = 0; t < kPrompt; ++t) cache.add_to_v_sum(t);
  std::printf("  %s prefill of %td tokens: kept %.1f%% of the attention\n", name, kPrompt,
              100.0 * stats.kept_fraction());

  double worst_dense = 0;
  AttentionStats step_stats;
  for (Index step = 0; step < kSteps; ++step) {
    const Index pos = cache.size;
    cache.store(layer);          // the new token's K/V rows
    layer.query(pos, q1.data());
    // [integration:plan_decode]
    auto args = args_for(cache, q1.data(), out1.data(), 1);  // v_sum: rows 0..L-2
    AttentionOptions o = topt;
    o.stats = &step_stats;
    AttentionPlan plan;
    check(plan_decode(single_sequence(args), o, pool.size(), scratch.get(), &plan), "plan_decode");
    pool.run(plan);
    check(plan.finish(), "decode finish");
    // [/integration:plan_decode]
    // The same step on OpenMP must give the same bits; dense shows what Top-θ approximates.
    auto omp_args = args;
    omp_args.out = HeadsView<float>::token_major(omp1.data(), 1, kHq, kD);
    AttentionOptions oo = topt;
    oo.stats = nullptr;
    check(decode(omp_args, oo), "decode (OpenMP)");
    check(std::memcmp(out1.data(), omp1.data(), out1.size() * sizeof(float)) == 0,
          std::string(name) + ": pool and OpenMP outputs differ at step " + std::to_string(step));
    auto dense_args = args;
    dense_args.out = HeadsView<float>::token_major(dense1.data(), 1, kHq, kD);
    check(decode(dense_args, AttentionOptions{}), "dense decode");
    worst_dense = std::max(worst_dense, max_abs_diff<float>(out1, dense1));
    if (step == kSteps - 1) {
      // Tensor parallelism: two shards of 16 query heads (4 KV heads) each, one table file for
      // the whole model; together they must equal the full call bit for bit.
      // [integration:shards]
      std::vector<float> sharded(kHq * kD);
      for (Index s = 0; s < 2; ++s) {
        AttentionArgs<T, float> a = args;
        const Index hq0 = s * kHq / 2, hkv0 = s * kHkv / 2;
        a.q = HeadsView<const float>::token_major(q1.data() + hq0 * kD, 1, kHq / 2, kD);
        a.out = HeadsView<float>::token_major(sharded.data() + hq0 * kD, 1, kHq / 2, kD);
        a.k = HeadsView<const T>{a.k.data + a.k.head_stride * hkv0, a.k.tokens, kHkv / 2, kD,
                                 a.k.token_stride, a.k.head_stride};
        a.v = HeadsView<const T>{a.v.data + a.v.head_stride * hkv0, a.v.tokens, kHkv / 2, kD,
                                 a.v.token_stride, a.v.head_stride};
        a.v_sum = cache.v_sum.data() + hkv0 * kD;  // this shard's KV heads
        a.head_offset = hq0;                       // its heads in the model's table
        a.model_heads = kHq;
        a.model_kv_heads = kHkv;  // checks that it holds whole GQA groups
        check(decode(a, toptheta_options(table)), "shard decode");
      }
      // [/integration:shards]
      check(std::memcmp(out1.data(), sharded.data(), out1.size() * sizeof(float)) == 0,
            std::string(name) + ": two shards differ from the full call");
    }
    cache.add_to_v_sum(pos);     // after the step: the sum now covers rows 0..L-1
  }
  std::printf("  %s decode, %td steps at L = %td..%td: kept %.1f%% of the attention, read %.1f%% "
              "of the V rows; max |Top-θ - dense| = %.4f\n",
              name, kSteps, kPrompt + 1, kPrompt + kSteps, 100.0 * step_stats.kept_fraction(),
              100.0 * step_stats.vrows_fraction(), worst_dense);
  check(worst_dense < 0.5, std::string(name) + ": Top-θ output far from dense");

  return out1;
}

}  // namespace

int main() {
  // A bad TMPDIR (missing, not a directory, read-only) is a reported failure, not an abort.
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
  if (!ec) {
    dir /= "toptheta-example-03-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir, ec);
  }
  if (ec) {
    std::fprintf(stderr, "FAILED: temporary directory %s: %s\n", dir.c_str(), ec.message().c_str());
    return 1;
  }
  std::printf("llama.cpp-style engine: Hq=%td, Hkv=%td, d=%td, prompt %td + %td decode steps\n",
              kHq, kHkv, kD, kPrompt, kSteps);

  std::printf("calibrating inside the engine (post-softmax, k = 32, 64, 128, compact tables)\n");
  const std::string path = calibrate_and_save(dir);

  // Start-up: load the budget the engine runs at from the file shipped with the model.
  // [integration:load]
  ThresholdTable table;
  LoadOptions lo;
  lo.k = kBudget;                        // the file holds several budgets
  lo.expected_layers = 1;                // the model's shape: a mismatch is an error
  lo.expected_heads = kHq;
  check(load_thresholds(path, &table, lo), "load thresholds");
  // [/integration:load]
  std::printf("loaded %s (k = %td)\n", path.c_str(), table.nominal_k());

  ThreadPool pool(2);
  const std::vector<float> f16 = generate<Eigen::half>("f16 cache ", table, pool);
  const std::vector<float> q8 = generate<BlockQ8_0>("q8_0 cache", table, pool);
  std::printf("last step, q8_0 vs f16 cache: max |difference| = %.4f\n",
              max_abs_diff<float>(f16, q8));
  check(max_abs_diff<float>(f16, q8) < 0.25, "q8_0 cache far from the f16 cache");

  std::filesystem::remove_all(dir, ec);
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
