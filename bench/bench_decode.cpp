/// \file bench_decode.cpp
/// decode/<mode>/L:<n>/dtype:<t>/layout:<token|head>/threads:<n>
///
/// One decode step (q: 1 x Hq x d) against a KV cache of L tokens, d = 128, Hq = 32, Hkv = 8.
/// All modes of one (L, dtype, layout) run over the same inputs:
/// - dense, topk (k = 64), toptheta (k = 64, thresholds calibrated on this cache with 8 other
///   queries of the same distribution: kCalibrate decodes, lambda = 0.1, then finalize());
/// - toptheta_dense_fallback: Top-θ with a table without entries (theta = -inf keeps every
///   key), to check that a Top-θ call that keeps most keys costs no more than dense.
///
/// Counters: bytes_per_second = bytes touched per step / wall time, with bytes touched = K + V
/// (dense) or K + (V rows read, union over each GQA group) * d * sizeof(T) (sparse modes);
/// `bytes` (per step), `kept_frac`, `vrows_frac`, `kept_per_row` (kept keys per (row, head)),
/// `rel_err` (|o - o_dense| / |o_dense| for sparse modes), `ref_err` (dense against a double
/// reference on heads 0 and Hq-1), `bit_identical` (threads > 1: output equals the 1-thread
/// output bit for bit), `copies` (KV-cache copies rotated per iteration, see kMinWorkingSetBytes).
/// Validation runs outside the timed loop.

#include "bench_common.hpp"

#include <map>
#include <utility>

namespace ttbench {
namespace {

using toptheta::HeadsView;

template <class T>
HeadsView<const T> cache_view(const T* base, Index L, Layout layout) {
  return layout == Layout::kToken ? HeadsView<const T>::token_major(base, L, kHkv, kD)
                                  : HeadsView<const T>::head_major(base, L, kHkv, kD);
}

template <class T>
struct DecodeSet : CachedInputs {
  Index L = 0;
  Layout layout = Layout::kToken;
  int copies = 1;
  std::size_t per_copy = 0;  // elements of one K (or V) copy
  std::vector<T> k, v;       // copies * per_copy
  std::vector<float> vsum;   // (Hkv, d)
  std::vector<T> q;          // (Hq, d) evaluation query (seed 0; calibration uses 1..8)
  std::unique_ptr<toptheta::ThresholdTable> table;  // Top-θ thresholds, calibrated lazily
  std::vector<float> dense_out;                     // (Hq, d) dense output for q, lazily

  HeadsView<const T> kview(int c) const { return cache_view(k.data() + c * per_copy, L, layout); }
  HeadsView<const T> vview(int c) const { return cache_view(v.data() + c * per_copy, L, layout); }

  toptheta::AttentionArgs<T> args(int c, const T* query, float* out) const {
    toptheta::AttentionArgs<T> a;
    a.q = HeadsView<const T>::token_major(query, 1, kHq, kD);
    a.k = kview(c);
    a.v = vview(c);
    a.out = HeadsView<float>::token_major(out, 1, kHq, kD);
    a.v_sum = vsum.data();
    return a;
  }
};

/// Inputs cached by (L, dtype, layout); building a set of another L frees the others.
std::map<std::pair<Index, std::string>, std::unique_ptr<CachedInputs>>& decode_cache() {
  static std::map<std::pair<Index, std::string>, std::unique_ptr<CachedInputs>> c;
  return c;
}

template <class T>
DecodeSet<T>& decode_set(Index L, Layout layout) {
  auto& cache = decode_cache();
  const auto key = std::make_pair(L, std::string(toptheta::dtype_name<T>()) + "/" + layout_name(layout));
  auto it = cache.find(key);
  if (it != cache.end()) return *static_cast<DecodeSet<T>*>(it->second.get());
  for (auto i = cache.begin(); i != cache.end();) i = i->first.first != L ? cache.erase(i) : std::next(i);
  release_probe_buffer();

  auto s = std::make_unique<DecodeSet<T>>();
  s->L = L;
  s->layout = layout;
  s->per_copy = std::size_t(L * kHkv * kD);
  const std::size_t pair_bytes = 2 * s->per_copy * sizeof(T);
  s->copies = int(std::max<std::size_t>(1, (kMinWorkingSetBytes + pair_bytes - 1) / pair_bytes));
  s->k.resize(s->per_copy * std::size_t(s->copies));
  s->v.resize(s->per_copy * std::size_t(s->copies));
  fill_kv(s->k.data(), s->v.data(), L, layout);
  for (int c = 1; c < s->copies; ++c) {
    std::memcpy(s->k.data() + c * s->per_copy, s->k.data(), s->per_copy * sizeof(T));
    std::memcpy(s->v.data() + c * s->per_copy, s->v.data(), s->per_copy * sizeof(T));
  }
  s->vsum = v_sums(s->vview(0));
  s->q.resize(std::size_t(kHq * kD));
  make_query(0, s->q.data());
  DecodeSet<T>& ref = *s;
  cache[key] = std::move(s);
  return ref;
}

/// Top-θ thresholds at k = 64 from kCalibrate decodes of queries 1..8 on copy 0.
template <class T>
toptheta::Status calibrate(DecodeSet<T>& s) {
  toptheta::Calibrator cal(calibration_options("toptheta-bench synthetic decode"));
  TOPTHETA_RETURN_IF_ERROR(cal.validate());
  toptheta::AttentionOptions o;
  o.mode = toptheta::AttentionMode::kCalibrate;
  o.calibrator = &cal;
  o.threads = max_threads();
  std::vector<T> q(std::size_t(kHq * kD));
  std::vector<float> out(std::size_t(kHq * kD));
  WorkspaceBuffer wb;
  for (int i = 1; i <= kCalibrationQueries; ++i) {
    make_query(std::uint64_t(i), q.data());
    const auto a = s.args(0, q.data(), out.data());
    TOPTHETA_RETURN_IF_ERROR(toptheta::decode(a, o, wb.get(a, o)));
  }
  s.table = std::make_unique<toptheta::ThresholdTable>(cal.finalize());
  return {};
}

template <class T>
toptheta::Status ensure_dense_out(DecodeSet<T>& s) {
  if (!s.dense_out.empty()) return {};
  std::vector<float> out(std::size_t(kHq * kD));
  toptheta::AttentionOptions o;
  o.threads = max_threads();
  WorkspaceBuffer wb;
  const auto a = s.args(0, s.q.data(), out.data());
  TOPTHETA_RETURN_IF_ERROR(toptheta::decode(a, o, wb.get(a, o)));
  s.dense_out = std::move(out);
  return {};
}

struct DecodeConfig {
  Mode mode;
  Index L;
  Layout layout;
  int threads;
};

/// Runs the mode once outside the timed loop and derives the counters (bytes touched, kept
/// fractions, errors against dense and the double reference, bit-identity across threads).
template <class T>
Validation validate_decode(DecodeSet<T>& s, const DecodeConfig& cfg, toptheta::AttentionOptions o,
                           const toptheta::AttentionArgs<T>& a, toptheta::Workspace ws,
                           std::vector<float>& out) {
  Validation v;
  auto fail = [&](const std::string& m) {
    v.error = m;
    return v;
  };
  toptheta::AttentionStats stats;
  o.stats = &stats;
  toptheta::Status st = toptheta::decode(a, o, ws);
  o.stats = nullptr;
  if (!st.ok()) return fail(st.to_string());
  const double row_bytes = double(kD * Index(sizeof(T)));
  const double k_bytes = double(cfg.L * kHkv) * row_bytes;
  v.bytes = cfg.mode == Mode::kDense ? 2 * k_bytes : k_bytes + double(stats.vrows_read) * row_bytes;
  v.counters = {{"bytes", v.bytes},
                {"kept_frac", stats.kept_fraction()},
                {"vrows_frac", cfg.mode == Mode::kDense ? 1.0 : stats.vrows_fraction()},
                {"kept_per_row", toptheta::AttentionStats::ratio(stats.elements_kept, stats.rows)},
                {"copies", double(s.copies)}};
  if (cfg.mode == Mode::kDense) {
    double err = 0;
    for (Index h : {Index(0), kHq - 1})
      err = std::max(err, reference_row_error(a.q, a.k, a.v, 0, cfg.L, h, out.data() + h * kD));
    v.counters.emplace_back("ref_err", err);
    if (!(err < 1e-3)) return fail("dense decode disagrees with the double reference");
    if (s.dense_out.empty()) s.dense_out = out;
  } else {
    st = ensure_dense_out(s);
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back("rel_err", relative_error(out, s.dense_out));
  }
  if (cfg.threads > 1) {
    std::vector<float> out1(out.size());
    auto a1 = a;
    a1.out = HeadsView<float>::token_major(out1.data(), 1, kHq, kD);
    toptheta::AttentionOptions o1 = o;
    o1.threads = 1;
    WorkspaceBuffer wb1;
    st = toptheta::decode(a1, o1, wb1.get(a1, o1));
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back(
        "bit_identical",
        std::memcmp(out.data(), out1.data(), out.size() * sizeof(float)) == 0 ? 1.0 : 0.0);
  }
  return v;
}

template <class T>
void bm_decode(benchmark::State& state, DecodeConfig cfg) {
  DecodeSet<T>& s = decode_set<T>(cfg.L, cfg.layout);
  static const toptheta::ThresholdTable keep_all(1, kHq, kTopK);  // no entries: theta = -inf

  toptheta::AttentionOptions o;
  o.mode = attention_mode(cfg.mode);
  o.k = kTopK;
  o.threads = cfg.threads;
  if (cfg.mode == Mode::kTopTheta) {
    if (!s.table) {
      const toptheta::Status st = calibrate(s);
      if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
    }
    o.thresholds = s.table.get();
  } else if (cfg.mode == Mode::kFallback) {
    o.thresholds = &keep_all;
  }

  std::vector<float> out(std::size_t(kHq * kD));
  std::vector<toptheta::AttentionArgs<T>> args;
  for (int c = 0; c < s.copies; ++c) args.push_back(s.args(c, s.q.data(), out.data()));
  WorkspaceBuffer wb;
  const toptheta::Workspace ws = wb.get(args[0], o);

  const std::string key = std::string(mode_name(cfg.mode)) + "/" + std::to_string(cfg.threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_decode(s, cfg, o, args[0], ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  for (const auto& c : v.counters) state.counters[c.first] = c.second;

  // ---- timed loop: one decode step per iteration, rotating over the cache copies ----
  int c = 0;
  for (auto _ : state) {
    (void)toptheta::decode(args[std::size_t(c)], o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == s.copies) c = 0;
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * v.bytes));
}

template <class T>
void register_one(Mode mode, Index L, Layout layout, int threads) {
  const std::string name = std::string("decode/") + mode_name(mode) + "/L:" + std::to_string(L) +
                           "/dtype:" + toptheta::dtype_name<T>() + "/layout:" +
                           layout_name(layout) + "/threads:" + std::to_string(threads);
  const DecodeConfig cfg{mode, L, layout, threads};
  benchmark::RegisterBenchmark(name.c_str(), [cfg](benchmark::State& s) { bm_decode<T>(s, cfg); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

template <class T>
void register_config(Index L, Layout layout, int threads, bool fallback) {
  for (Mode m : {Mode::kDense, Mode::kTopK, Mode::kTopTheta}) register_one<T>(m, L, layout, threads);
  if (fallback) register_one<T>(Mode::kFallback, L, layout, threads);
}

}  // namespace

void register_decode_benchmarks() {
  // Order: L, dtype, layout, threads, mode -- the modes of one configuration run back to back.
  for (Index L : {Index(1024), Index(4096), Index(16384), Index(65536)}) {
    const bool fallback = L == 16384;
    for (Layout layout : {Layout::kToken, Layout::kHead})
      for (int t : {1, 2}) register_config<float>(L, layout, t, fallback);
    for (Layout layout : {Layout::kToken, Layout::kHead})
      for (int t : {1, 2}) register_config<Eigen::half>(L, layout, t, fallback);
    if (L == 16384)
      for (Layout layout : {Layout::kToken, Layout::kHead})
        for (int t : {1, 2}) register_config<Eigen::bfloat16>(L, layout, t, false);
  }
}

}  // namespace ttbench
