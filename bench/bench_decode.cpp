/// \file bench_decode.cpp
/// Decode benchmarks: one decode step (q: 1 x Hq x d) against a KV cache of L tokens, Hq = 32,
/// Hkv = 8.
///
///   decode/<mode>/L:<n>/dtype:<t>/layout:<token|head>/threads:<n>          (d = 128)
///   decode_paired/L:<n>/dtype:<t>/layout:<token|head>                      (d = 128)
///   decode_isa/<dense|toptheta>/isa:<auto|path>/L:16384/dtype:f32/layout:token/threads:1
///   decode_dim/<dense|toptheta>/d:<n>/L:16384/dtype:f32/layout:token/threads:1
///   decode_resident/dense/L:16384/dtype:<t>/layout:token/threads:<n>     (d = 128)
///
/// All modes of one (L, d, dtype, layout) run over the same inputs (bench_common.hpp, Mode):
/// - dense; topk (k = 64);
/// - toptheta: the recommended variant, toptheta_options(post table): post-softmax + VMC, the
///   table calibrated at k = 64 on this cache with 8 other queries of the same distribution
///   (kCalibrate decodes, lambda = 0.1);
/// - toptheta_pre: toptheta_options(pre table): pre-softmax + exact SDC + VMC, calibrated alike;
/// - toptheta_dense_fallback: the recommended options with a table that declares every head
///   dense (keeps every key), to check that a Top-θ call keeping everything costs what dense
///   does.
/// The Top-θ modes get `args.v_sum` from a RunningVSum over V rows 0..L-2 (the rows before the
/// new token), as an engine keeps it. decode_isa runs the automatic choice and then forces
/// `options.isa` to each path compiled in (a path the CPU cannot run is skipped with an error);
/// decode_dim varies the head dim. decode_paired runs the five modes of one (L, dtype, layout) on
/// 1 and 2 threads in one timed loop, in a shuffled order per round, and reports per-round ratios
/// (bm_decode_paired).
///
/// Counters: bytes_per_second = bytes touched per step / wall time, with bytes touched = K + V
/// (dense) or K + (V rows read, union over each GQA group) * d * sizeof(T) (sparse modes);
/// `bytes` (per step), `kept_frac`, `vrows_frac`, `kept_per_row` (kept keys per (row, head)),
/// `rel_err` (|o - o_dense| / |o_dense|; the dense output of the automatic path), `ref_err`
/// (dense against a double reference on heads 0 and Hq-1), `bit_identical` (threads > 1: output
/// equals the 1-thread output bit for bit), `copies` (KV-cache copies rotated per iteration, see
/// kMinWorkingSetBytes), `d`; decode_dim adds `ps_per_byte` (wall time per byte touched).
/// Validation runs outside the timed loop. decode_paired reports none of these (its entries are
/// the decode/ benchmarks' configurations, validated alike): only times and ratios, see
/// bm_decode_paired.
/// decode_resident (bm_decode_resident): dense decode over L2-resident rows repeated through a
/// block table, an estimate of the walk's compute ceiling; counters `bytes`, `tokens` and
/// `resident_bytes` (K + V bytes of the repeated blocks).

#include "bench_common.hpp"
#include "bench_paired.hpp"

#include <algorithm>
#include <map>
#include <utility>

namespace ttbench {
namespace {

using toptheta::HeadsView;
using toptheta::Isa;

template <class T>
HeadsView<const T> cache_view(const T* base, Index L, Layout layout, Index d) {
  return layout == Layout::kToken ? HeadsView<const T>::token_major(base, L, kHkv, d)
                                  : HeadsView<const T>::head_major(base, L, kHkv, d);
}

template <class T>
struct DecodeSet : CachedInputs {
  Index L = 0, d = kD;
  Layout layout = Layout::kToken;
  int copies = 1;
  std::size_t per_copy = 0;  // elements of one K (or V) copy
  std::vector<T> k, v;       // copies * per_copy
  toptheta::RunningVSum<T> vsum;  // V rows 0..L-2: the rows before the new token
  std::vector<T> q;          // (Hq, d) evaluation query (seed 0; calibration uses 1..8)
  Tables tables;             // Top-θ thresholds, calibrated lazily
  std::vector<float> dense_out;  // (Hq, d) dense output for q, lazily

  HeadsView<const T> kview(int c) const {
    return cache_view(k.data() + c * per_copy, L, layout, d);
  }
  HeadsView<const T> vview(int c) const {
    return cache_view(v.data() + c * per_copy, L, layout, d);
  }

  toptheta::AttentionArgs<T> args(int c, const T* query, float* out) const {
    toptheta::AttentionArgs<T> a;
    a.q = HeadsView<const T>::token_major(query, 1, kHq, d);
    a.k = kview(c);
    a.v = vview(c);
    a.out = HeadsView<float>::token_major(out, 1, kHq, d);
    a.v_sum = vsum.data();
    a.v_sum_stride = vsum.stride();
    return a;
  }
};

/// The one input set alive; building another frees it (the modes of one configuration run back
/// to back, see the registration order).
std::pair<std::string, std::unique_ptr<CachedInputs>>& decode_slot() {
  static std::pair<std::string, std::unique_ptr<CachedInputs>> slot;
  return slot;
}

template <class T>
DecodeSet<T>& decode_set(Index L, Index d, Layout layout) {
  auto& slot = decode_slot();
  const std::string key = std::to_string(L) + "/" + std::to_string(d) + "/" +
                          toptheta::dtype_name<T>() + "/" + layout_name(layout);
  if (slot.second && slot.first == key) return *static_cast<DecodeSet<T>*>(slot.second.get());
  slot.second.reset();
  release_probe_buffer();

  auto s = std::make_unique<DecodeSet<T>>();
  s->L = L;
  s->d = d;
  s->layout = layout;
  s->per_copy = std::size_t(L * kHkv * d);
  const std::size_t pair_bytes = 2 * s->per_copy * sizeof(T);
  s->copies = int(std::max<std::size_t>(1, (kMinWorkingSetBytes + pair_bytes - 1) / pair_bytes));
  s->k.resize(s->per_copy * std::size_t(s->copies));
  s->v.resize(s->per_copy * std::size_t(s->copies));
  fill_kv(s->k.data(), s->v.data(), L, layout, d);
  for (int c = 1; c < s->copies; ++c) {
    std::memcpy(s->k.data() + c * s->per_copy, s->k.data(), s->per_copy * sizeof(T));
    std::memcpy(s->v.data() + c * s->per_copy, s->v.data(), s->per_copy * sizeof(T));
  }
  s->vsum = toptheta::RunningVSum<T>(kHkv, d);
  (void)s->vsum.add(s->vview(0).slice_tokens(0, L - 1));
  s->q.resize(std::size_t(kHq * d));
  make_query(0, s->q.data(), d);
  DecodeSet<T>& ref = *s;
  slot = {key, std::move(s)};
  return ref;
}

/// Top-θ thresholds at k = 64 from kCalibrate decodes of queries 1..8 on copy 0.
template <class T>
toptheta::Status ensure_table(DecodeSet<T>& s, toptheta::Placement p) {
  auto& slot = p == toptheta::Placement::kPostSoftmax ? s.tables.post : s.tables.pre;
  if (slot) return {};
  return calibrate_table(
      p, "toptheta-bench synthetic decode",
      [&](const toptheta::AttentionOptions& o) -> toptheta::Status {
        std::vector<T> q(std::size_t(kHq * s.d));
        std::vector<float> out(std::size_t(kHq * s.d));
        WorkspaceBuffer wb;
        for (int i = 1; i <= kCalibrationQueries; ++i) {
          make_query(std::uint64_t(i), q.data(), s.d);
          const auto a = s.args(0, q.data(), out.data());
          TOPTHETA_RETURN_IF_ERROR(toptheta::decode(a, o, wb.get(a, o, true)));
        }
        return {};
      },
      &slot);
}

template <class T>
toptheta::Status ensure_dense_out(DecodeSet<T>& s) {
  if (!s.dense_out.empty()) return {};
  std::vector<float> out(std::size_t(kHq * s.d));
  toptheta::AttentionOptions o;
  o.threads = max_threads();
  WorkspaceBuffer wb;
  const auto a = s.args(0, s.q.data(), out.data());
  TOPTHETA_RETURN_IF_ERROR(toptheta::decode(a, o, wb.get(a, o, true)));
  s.dense_out = std::move(out);
  return {};
}

struct DecodeConfig {
  Mode mode;
  Index L;
  Index d;
  Layout layout;
  int threads;
  Isa isa;
  bool per_byte;  // decode_dim: add the ps_per_byte counter
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
  const Index d = cfg.d;
  const double row_bytes = double(d * Index(sizeof(T)));
  const double k_bytes = double(cfg.L * kHkv) * row_bytes;
  v.bytes = cfg.mode == Mode::kDense ? 2 * k_bytes : k_bytes + double(stats.vrows_read) * row_bytes;
  v.counters = {{"bytes", v.bytes},
                {"kept_frac", stats.kept_fraction()},
                {"vrows_frac", cfg.mode == Mode::kDense ? 1.0 : stats.vrows_fraction()},
                {"kept_per_row", toptheta::AttentionStats::ratio(stats.elements_kept, stats.rows)},
                {"empty_frac", stats.empty_row_fraction()},
                {"copies", double(s.copies)},
                {"d", double(d)}};
  if (cfg.mode == Mode::kDense) {
    double err = 0;
    for (Index h : {Index(0), kHq - 1})
      err = std::max(err, reference_row_error(a.q, a.k, a.v, 0, cfg.L, h, out.data() + h * d));
    v.counters.emplace_back("ref_err", err);
    if (!(err < 1e-3)) return fail("dense decode disagrees with the double reference");
  }
  if (cfg.mode != Mode::kDense || cfg.isa != Isa::kAuto) {
    st = ensure_dense_out(s);
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back("rel_err", relative_error(out, s.dense_out));
  }
  if (cfg.threads > 1) {
    std::vector<float> out1(out.size());
    auto a1 = a;
    a1.out = HeadsView<float>::token_major(out1.data(), 1, kHq, d);
    toptheta::AttentionOptions o1 = o;
    o1.threads = 1;
    WorkspaceBuffer wb1;
    st = toptheta::decode(a1, o1, wb1.get(a1, o1, true));
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back(
        "bit_identical",
        std::memcmp(out.data(), out1.data(), out.size() * sizeof(float)) == 0 ? 1.0 : 0.0);
  }
  return v;
}

/// What one mode of a configuration needs in the timed loop: its options, a workspace and the
/// arguments of every cache copy (all writing `out`), and its validation.
template <class T>
struct PreparedMode {
  toptheta::AttentionOptions o;
  WorkspaceBuffer wb;
  toptheta::Workspace ws;
  std::vector<toptheta::AttentionArgs<T>> args;  // one per cache copy
  const Validation* v = nullptr;
};

/// Calibrates the mode's table if it needs one, builds its options, workspace and arguments and
/// validates it once per (mode, threads, isa) of the input set. Returns an error message, or an
/// empty string.
template <class T>
std::string prepare_mode(DecodeSet<T>& s, const DecodeConfig& cfg, std::vector<float>& out,
                         PreparedMode<T>& pm) {
  toptheta::Placement p;
  if (needs_table(cfg.mode, &p)) {
    const toptheta::Status st = ensure_table(s, p);
    if (!st.ok()) return "calibration: " + st.to_string();
  }
  pm.o = mode_options(cfg.mode, s.tables);
  pm.o.threads = cfg.threads;
  pm.o.isa = cfg.isa;
  if (cfg.isa != Isa::kAuto && !toptheta::isa_supported(cfg.isa))
    return std::string("this CPU cannot run the ") + toptheta::to_string(cfg.isa) + " path";
  pm.args.clear();
  for (int c = 0; c < s.copies; ++c) pm.args.push_back(s.args(c, s.q.data(), out.data()));
  pm.ws = pm.wb.get(pm.args[0], pm.o, true);
  const std::string key = std::string(mode_name(cfg.mode)) + "/" + std::to_string(cfg.threads) +
                          "/" + toptheta::to_string(cfg.isa);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_decode(s, cfg, pm.o, pm.args[0], pm.ws, out)).first;
  pm.v = &it->second;
  return pm.v->error;
}

template <class T>
void bm_decode(benchmark::State& state, DecodeConfig cfg) {
  DecodeSet<T>& s = decode_set<T>(cfg.L, cfg.d, cfg.layout);
  state.SetLabel(mode_label(cfg.mode));
  std::vector<float> out(std::size_t(kHq * cfg.d));
  PreparedMode<T> pm;
  const std::string error = prepare_mode(s, cfg, out, pm);
  if (!error.empty()) return state.SkipWithError(error.c_str());
  const Validation& v = *pm.v;
  for (const auto& c : v.counters) state.counters[c.first] = c.second;

  // ---- timed loop: one decode step per iteration, rotating over the cache copies ----
  int c = 0;
  for (auto _ : state) {
    (void)toptheta::decode(pm.args[std::size_t(c)], pm.o, pm.ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == s.copies) c = 0;
  }
  const double total = double(state.iterations()) * v.bytes;
  state.SetBytesProcessed(std::int64_t(total));
  if (cfg.per_byte)  // seconds per (1e12 bytes) = picoseconds per byte
    state.counters["ps_per_byte"] = benchmark::Counter(
        total / 1e12, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

/// The modes decode_paired runs in each round (on each of kPairedThreads).
constexpr Mode kPairedModes[] = {Mode::kDense, Mode::kTopK, Mode::kTopTheta, Mode::kTopThetaPre,
                                 Mode::kFallback};
constexpr int kNumModes = int(sizeof(kPairedModes) / sizeof(kPairedModes[0]));
// Entry e: mode e % kNumModes on kPairedThreads[e / kNumModes] threads.
constexpr int kNumPaired = kNumModes * kNumPairedThreads;

/// decode_paired: every mode of one (L, dtype, layout) on 1 and 2 threads, in one timed loop
/// (run_paired, bench_paired.hpp: the order of the calls within a round, the counters). Each
/// call reads the next cache copy.
template <class T>
void bm_decode_paired(benchmark::State& state, DecodeConfig cfg) {
  DecodeSet<T>& s = decode_set<T>(cfg.L, cfg.d, cfg.layout);
  state.SetLabel("all modes and thread counts, shuffled within each round; paired ratios");
  std::vector<float> out(std::size_t(kHq * cfg.d));
  std::vector<PreparedMode<T>> pm(kNumPaired);
  for (int e = 0; e < kNumPaired; ++e) {
    DecodeConfig ec = cfg;
    ec.mode = kPairedModes[e % kNumModes];
    ec.threads = kPairedThreads[e / kNumModes];
    const std::string error = prepare_mode(s, ec, out, pm[std::size_t(e)]);
    if (!error.empty())
      return state.SkipWithError((std::string(mode_name(ec.mode)) + ": " + error).c_str());
  }
  int c = 0;
  run_paired(state, kPairedModes, kNumModes, [&](std::size_t e) {
    (void)toptheta::decode(pm[e].args[std::size_t(c)], pm[e].o, pm[e].ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == s.copies) c = 0;
  });
}

/// decode_resident: an estimate of the dense walk's compute ceiling. A dense decode of
/// kResidentL tokens, token-major, whose rows come from kResidentBlocks blocks of
/// kResidentTokens tokens repeated through a block table (PagedKv::token_major; entry j is a
/// pseudo-random block, so the blocks are used unevenly and a walk that ignored the table would
/// read other rows and fail the check below): the walk does all of a dense decode's work (every
/// dot product, exp and V-row FMA, every software prefetch) but every row it reads is already in
/// the core's L2 (`resident_bytes`, K + V: 256 KiB for f16 / bf16, 512 KiB for f32, of a 1 MiB
/// L2 on the benchmark machine). `bytes` counts K + V of kResidentL tokens, as decode/dense does, so
/// bytes_per_second estimates the most a cold cache of this shape could be read at with this
/// kernel; the report puts it against the read probe. It includes what a paged walk adds per
/// row, the block-table lookup (a shift and a mask for 16-token blocks), which a contiguous
/// walk does not do; on a cold cache that lookup cost nothing measurable (a paged pool with its
/// blocks in order against the contiguous cache, f16, L = 64k, 1 thread: 1.006x; a harness of
/// issue 11's paged-cache measurements, not a benchmark here). Validation: the
/// output must equal, bit for bit, a dense decode of the same rows laid out contiguously
/// (same thread count); otherwise the benchmark is skipped with an error.
constexpr Index kResidentBlocks = 4;
constexpr Index kResidentTokens = 16;
constexpr Index kResidentL = 16384;
static_assert(kResidentL % kResidentTokens == 0, "the block table covers every token");

template <class T>
struct ResidentSet : CachedInputs {
  std::vector<T> k, v;              // the pool: kResidentBlocks x kResidentTokens tokens
  std::vector<std::int32_t> table;  // kResidentL / kResidentTokens entries
  std::vector<T> q;                 // (Hq, d), seed 0

  toptheta::AttentionArgs<T> args(const T* query, float* out) const {
    toptheta::AttentionArgs<T> a;
    a.q = HeadsView<const T>::token_major(query, 1, kHq, kD);
    a.paged = toptheta::PagedKv<T>::token_major(k.data(), v.data(), kResidentBlocks, table.data(),
                                                kResidentL, kHkv, kD, kResidentTokens);
    a.out = HeadsView<float>::token_major(out, 1, kHq, kD);
    return a;
  }
};

template <class T>
ResidentSet<T>& resident_set() {
  auto& slot = decode_slot();
  const std::string key = std::string("resident/") + toptheta::dtype_name<T>();
  if (slot.second && slot.first == key) return *static_cast<ResidentSet<T>*>(slot.second.get());
  slot.second.reset();
  release_probe_buffer();
  auto s = std::make_unique<ResidentSet<T>>();
  const Index pool = kResidentBlocks * kResidentTokens;
  s->k.resize(std::size_t(pool * kHkv * kD));
  s->v.resize(s->k.size());
  fill_kv(s->k.data(), s->v.data(), pool, Layout::kToken);
  s->table.resize(std::size_t(kResidentL / kResidentTokens));
  for (std::size_t j = 0; j < s->table.size(); ++j)
    s->table[j] = std::int32_t(mix64(stream_key(606, std::uint64_t(j))) %
                               std::uint64_t(kResidentBlocks));
  s->q.resize(std::size_t(kHq * kD));
  make_query(0, s->q.data());
  ResidentSet<T>& ref = *s;
  slot = {key, std::move(s)};
  return ref;
}

/// The resident decode's output against a dense decode of the same rows laid out contiguously
/// (token t is row t mod kResidentTokens of block table[t / kResidentTokens]), same thread
/// count: they must be the same bits.
template <class T>
Validation validate_resident(const ResidentSet<T>& s, const toptheta::AttentionOptions& o,
                             const toptheta::AttentionArgs<T>& a, toptheta::Workspace ws,
                             std::vector<float>& out) {
  Validation v;
  toptheta::Status st = toptheta::decode(a, o, ws);
  if (!st.ok()) return v.error = st.to_string(), v;
  const std::size_t row = std::size_t(kHkv * kD);  // items of one token (all KV heads)
  std::vector<T> kc(std::size_t(kResidentL) * row), vc(kc.size());
  for (Index t = 0; t < kResidentL; ++t) {
    const std::size_t src =
        (std::size_t(s.table[std::size_t(t / kResidentTokens)]) * std::size_t(kResidentTokens) +
         std::size_t(t % kResidentTokens)) * row;
    std::memcpy(kc.data() + std::size_t(t) * row, s.k.data() + src, row * sizeof(T));
    std::memcpy(vc.data() + std::size_t(t) * row, s.v.data() + src, row * sizeof(T));
  }
  std::vector<float> ref(out.size());
  toptheta::AttentionArgs<T> c;
  c.q = a.q;
  c.k = HeadsView<const T>::token_major(kc.data(), kResidentL, kHkv, kD);
  c.v = HeadsView<const T>::token_major(vc.data(), kResidentL, kHkv, kD);
  c.out = HeadsView<float>::token_major(ref.data(), 1, kHq, kD);
  WorkspaceBuffer wb;
  st = toptheta::decode(c, o, wb.get(c, o, true));
  if (!st.ok()) return v.error = st.to_string(), v;
  if (std::memcmp(out.data(), ref.data(), out.size() * sizeof(float)) != 0)
    return v.error = "the resident walk's output differs from the contiguous walk's", v;
  v.bytes = 2.0 * double(kResidentL * kHkv * kD) * double(sizeof(T));
  v.counters = {{"bytes", v.bytes},
                {"tokens", double(kResidentL)},
                {"resident_bytes", 2.0 * double(s.k.size()) * double(sizeof(T))}};
  return v;
}

template <class T>
void bm_decode_resident(benchmark::State& state, int threads) {
  ResidentSet<T>& s = resident_set<T>();
  state.SetLabel("dense, rows in L2: an estimate of the walk's compute ceiling");
  std::vector<float> out(std::size_t(kHq * kD));
  toptheta::AttentionOptions o;
  o.threads = threads;
  const auto a = s.args(s.q.data(), out.data());
  WorkspaceBuffer wb;
  const toptheta::Workspace ws = wb.get(a, o, true);
  const std::string key = std::to_string(threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_resident(s, o, a, ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  for (const auto& c : v.counters) state.counters[c.first] = c.second;
  for (auto _ : state) {
    (void)toptheta::decode(a, o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * v.bytes));
}

template <class T>
void register_bench(const std::string& name, const DecodeConfig& cfg) {
  benchmark::RegisterBenchmark(name.c_str(), [cfg](benchmark::State& s) { bm_decode<T>(s, cfg); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

/// Minimum time of one decode_paired run (seconds; it overrides --benchmark_min_time): enough
/// rounds for a median at L = 64k, where a round of the ten entries takes about 0.1-0.2 s of
/// timed calls (plus the untimed one at the thread-count switch, which MinTime does not count).
constexpr double kPairedMinTime = 2.0;

std::string tail(Index L, const char* dtype, Layout layout, int threads) {
  return "/L:" + std::to_string(L) + "/dtype:" + dtype + "/layout:" + layout_name(layout) +
         "/threads:" + std::to_string(threads);
}

template <class T>
void register_resident() {
  for (int t : kPairedThreads)
    benchmark::RegisterBenchmark(
        ("decode_resident/dense" + tail(kResidentL, toptheta::dtype_name<T>(), Layout::kToken, t))
            .c_str(),
        [t](benchmark::State& s) { bm_decode_resident<T>(s, t); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

template <class T>
void register_config(Index L, Layout layout, int threads) {
  for (Mode m : kPairedModes)
    register_bench<T>(std::string("decode/") + mode_name(m) +
                          tail(L, toptheta::dtype_name<T>(), layout, threads),
                      DecodeConfig{m, L, kD, layout, threads, Isa::kAuto, false});
}

template <class T>
void register_dtype(Index L) {
  for (Layout layout : {Layout::kToken, Layout::kHead}) {
    for (int t : kPairedThreads) register_config<T>(L, layout, t);
    const DecodeConfig cfg{Mode::kDense, L, kD, layout, 1, Isa::kAuto, false};
    const std::string tl = tail(L, toptheta::dtype_name<T>(), layout, 1);
    benchmark::RegisterBenchmark(
        ("decode_paired" + tl.substr(0, tl.rfind("/threads:"))).c_str(),
        [cfg](benchmark::State& s) { bm_decode_paired<T>(s, cfg); })
        ->UseManualTime()
        ->MinTime(kPairedMinTime)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

void register_decode_benchmarks() {
  // Order: L, dtype, layout, threads, mode -- the modes of one configuration run back to back,
  // and decode_paired after both thread counts of each layout, all on one cached input set.
  for (Index L : {Index(1024), Index(4096), Index(16384), Index(65536)}) {
    register_dtype<float>(L);
    register_dtype<Eigen::half>(L);
    register_dtype<Eigen::bfloat16>(L);
  }
  // The dense walk on L2-resident rows (an estimate of its compute ceiling), per dtype, both
  // thread counts of a dtype on one input set.
  register_resident<float>();
  register_resident<Eigen::half>();
  register_resident<Eigen::bfloat16>();
  // The automatic choice, then every SIMD path compiled in, forced, back to back.
  constexpr Index kL = 16384;
  for (Isa isa : {Isa::kAuto, Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (!toptheta::isa_compiled(isa)) continue;
    for (Mode m : {Mode::kDense, Mode::kTopTheta})
      register_bench<float>(std::string("decode_isa/") + mode_name(m) + "/isa:" +
                                toptheta::to_string(isa) + tail(kL, "f32", Layout::kToken, 1),
                            DecodeConfig{m, kL, kD, Layout::kToken, 1, isa, false});
  }
  // Head dims, multiples of 8 and not (per-byte time compared in the report).
  for (Index d : {Index(64), Index(72), Index(100), Index(104), Index(128)})
    for (Mode m : {Mode::kDense, Mode::kTopTheta})
      register_bench<float>(std::string("decode_dim/") + mode_name(m) + "/d:" + std::to_string(d) +
                                tail(kL, "f32", Layout::kToken, 1),
                            DecodeConfig{m, kL, d, Layout::kToken, 1, Isa::kAuto, true});
}

}  // namespace ttbench
