/// \file bench_prefill.cpp
/// prefill/<dense|topk|toptheta|toptheta_pre>/T:<n>/dtype:<t>/threads:<n>
/// prefill_paired/T:<n>/dtype:<t>   (the four modes on 1 and 2 threads in one timed loop)
///
/// Causal prefill of T new tokens with no earlier cache (L = T), d = 128, Hq = 32, Hkv = 8,
/// token-major (interleaved) Q/K/V. Keys and values as in decode (bench_common.hpp); row t's
/// query is drawn from the same distribution as the decode queries. The Top-θ tables (k = 64,
/// post-softmax for `toptheta`, pre-softmax for `toptheta_pre`) are calibrated with
/// kCalibrationPrefills kCalibrate prefills over the same K/V, each with its own query set (one
/// sample per (head, row length) each), and the benchmark runs a different query set. Modes
/// as in decode: `toptheta` is the recommended toptheta_options(post table) (post-softmax +
/// VMC), `toptheta_pre` is toptheta_options(pre table) (pre-softmax + exact SDC + VMC);
/// `args.v_sum` is the running V sum of the rows before the new tokens, i.e. zero here (no
/// earlier cache).
///
/// Counters: `flops` (rate) = dense-equivalent multiply-adds of QK^T and PV under the causal
/// mask, 2 * d * T(T+1)/2 * Hq * 2 per call, whatever the mode (so flops ratios are speed
/// ratios); bytes_per_second over the Q + K + V bytes; `kept_frac`, `vrows_frac`, `rel_err`
/// (sparse modes, against the dense output), `ref_err` (dense rows 0, T/2, T-1 of heads 0 and
/// Hq-1 against a double reference), `bit_identical` (threads > 1). prefill_paired
/// (bm_prefill_paired) reports only times and per-round ratios, as decode_paired does.

#include "bench_common.hpp"
#include "bench_paired.hpp"

#include <map>

namespace ttbench {
namespace {

using toptheta::HeadsView;

template <class T>
struct PrefillSet : CachedInputs {
  Index T_ = 0;
  std::vector<T> q, qcal, k, v;  // (T, Hq, d), (T, Hq, d), (T, Hkv, d) x 2, token-major
  toptheta::RunningVSum<T> vsum{kHkv, kD};  // rows before the new tokens: none
  Tables tables;
  std::vector<float> dense_out;  // (T, Hq, d)

  toptheta::AttentionArgs<T> args(const std::vector<T>& query, float* out) const {
    toptheta::AttentionArgs<T> a;
    a.q = HeadsView<const T>::token_major(query.data(), T_, kHq, kD);
    a.k = HeadsView<const T>::token_major(k.data(), T_, kHkv, kD);
    a.v = HeadsView<const T>::token_major(v.data(), T_, kHkv, kD);
    a.out = HeadsView<float>::token_major(out, T_, kHq, kD);
    a.v_sum = vsum.data();
    a.v_sum_stride = vsum.stride();
    return a;
  }
};

std::pair<std::string, std::unique_ptr<CachedInputs>>& prefill_slot() {
  static std::pair<std::string, std::unique_ptr<CachedInputs>> slot;
  return slot;
}

template <class T>
PrefillSet<T>& prefill_set(Index Tn) {
  auto& slot = prefill_slot();
  const std::string key = std::to_string(Tn) + "/" + toptheta::dtype_name<T>();
  if (slot.second && slot.first == key) return *static_cast<PrefillSet<T>*>(slot.second.get());
  slot.second.reset();
  release_probe_buffer();
  auto s = std::make_unique<PrefillSet<T>>();
  s->T_ = Tn;
  const std::size_t qn = std::size_t(Tn * kHq * kD), kn = std::size_t(Tn * kHkv * kD);
  s->q.resize(qn);
  s->qcal.resize(qn);
  s->k.resize(kn);
  s->v.resize(kn);
  fill_kv(s->k.data(), s->v.data(), Tn, Layout::kToken);
  for (Index t = 0; t < Tn; ++t) {
    make_query(std::uint64_t(1000000 + t), s->q.data() + t * kHq * kD);
  }
  PrefillSet<T>& ref = *s;
  slot = {key, std::move(s)};
  return ref;
}

/// Calibration prefills per table, each over its own query set: theta(L) = mean + lambda * std
/// of kCalibrationPrefills samples per (head, row length). With one set (a single sample per
/// length, std 0) the post-softmax table kept 228 keys per row at T = 4096 (f16, k = 64) on
/// the benchmark's queries; with 4 sets 118 (pre-softmax: 65 and 64).
constexpr int kCalibrationPrefills = 4;

template <class T>
toptheta::Status ensure_table(PrefillSet<T>& s, toptheta::Placement p) {
  auto& slot = p == toptheta::Placement::kPostSoftmax ? s.tables.post : s.tables.pre;
  if (slot) return {};
  return calibrate_table(
      p, "toptheta-bench synthetic prefill",
      [&](const toptheta::AttentionOptions& o) -> toptheta::Status {
        std::vector<float> out(s.q.size());
        WorkspaceBuffer wb;
        for (int set = 0; set < kCalibrationPrefills; ++set) {
          for (Index t = 0; t < s.T_; ++t)
            make_query(std::uint64_t(2000000 + set * 100000 + t), s.qcal.data() + t * kHq * kD);
          const auto a = s.args(s.qcal, out.data());
          TOPTHETA_RETURN_IF_ERROR(toptheta::prefill(a, o, wb.get(a, o, false)));
        }
        return {};
      },
      &slot);
}

template <class T>
toptheta::Status ensure_dense_out(PrefillSet<T>& s) {
  if (!s.dense_out.empty()) return {};
  std::vector<float> out(s.q.size());
  toptheta::AttentionOptions o;
  o.threads = max_threads();
  WorkspaceBuffer wb;
  const auto a = s.args(s.q, out.data());
  TOPTHETA_RETURN_IF_ERROR(toptheta::prefill(a, o, wb.get(a, o, false)));
  s.dense_out = std::move(out);
  return {};
}

struct PrefillConfig {
  Mode mode;
  Index T;
  int threads;
};

template <class T>
Validation validate_prefill(PrefillSet<T>& s, const PrefillConfig& cfg,
                            toptheta::AttentionOptions o, const toptheta::AttentionArgs<T>& a,
                            toptheta::Workspace ws, std::vector<float>& out) {
  Validation v;
  auto fail = [&](const std::string& m) {
    v.error = m;
    return v;
  };
  toptheta::AttentionStats stats;
  o.stats = &stats;
  toptheta::Status st = toptheta::prefill(a, o, ws);
  o.stats = nullptr;
  if (!st.ok()) return fail(st.to_string());
  v.bytes = double(s.q.size() + s.k.size() + s.v.size()) * double(sizeof(T));
  v.counters = {{"kept_frac", stats.kept_fraction()},
                {"vrows_frac", cfg.mode == Mode::kDense ? 1.0 : stats.vrows_fraction()},
                {"kept_per_row", toptheta::AttentionStats::ratio(stats.elements_kept, stats.rows)},
                {"empty_frac", stats.empty_row_fraction()}};
  if (cfg.mode == Mode::kDense) {
    double err = 0;
    for (Index t : {Index(0), cfg.T / 2, cfg.T - 1})
      for (Index h : {Index(0), kHq - 1})
        err = std::max(err, reference_row_error(a.q, a.k, a.v, t, t + 1, h,
                                                out.data() + (t * kHq + h) * kD));
    v.counters.emplace_back("ref_err", err);
    if (!(err < 1e-3)) return fail("dense prefill disagrees with the double reference");
    if (s.dense_out.empty()) s.dense_out = out;
  } else {
    st = ensure_dense_out(s);
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back("rel_err", relative_error(out, s.dense_out));
  }
  if (cfg.threads > 1) {
    std::vector<float> out1(out.size());
    auto a1 = a;
    a1.out = HeadsView<float>::token_major(out1.data(), cfg.T, kHq, kD);
    toptheta::AttentionOptions o1 = o;
    o1.threads = 1;
    WorkspaceBuffer wb1;
    st = toptheta::prefill(a1, o1, wb1.get(a1, o1, false));
    if (!st.ok()) return fail(st.to_string());
    v.counters.emplace_back(
        "bit_identical",
        std::memcmp(out.data(), out1.data(), out.size() * sizeof(float)) == 0 ? 1.0 : 0.0);
  }
  return v;
}

template <class T>
void bm_prefill(benchmark::State& state, PrefillConfig cfg) {
  PrefillSet<T>& s = prefill_set<T>(cfg.T);
  state.SetLabel(mode_label(cfg.mode));
  toptheta::Placement p;
  if (needs_table(cfg.mode, &p)) {
    const toptheta::Status st = ensure_table(s, p);
    if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
  }
  toptheta::AttentionOptions o = mode_options(cfg.mode, s.tables);
  o.threads = cfg.threads;
  std::vector<float> out(s.q.size());
  const auto a = s.args(s.q, out.data());
  WorkspaceBuffer wb;
  const toptheta::Workspace ws = wb.get(a, o, false);

  const std::string key = std::string(mode_name(cfg.mode)) + "/" + std::to_string(cfg.threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_prefill(s, cfg, o, a, ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  for (const auto& c : v.counters) state.counters[c.first] = c.second;

  const double Tn = double(cfg.T);
  const double flops = 2.0 * double(kD) * (Tn * (Tn + 1) / 2) * double(kHq) * 2.0;
  for (auto _ : state) {
    (void)toptheta::prefill(a, o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.counters["flops"] =
      benchmark::Counter(flops * double(state.iterations()), benchmark::Counter::kIsRate);
  state.SetBytesProcessed(std::int64_t(v.bytes * double(state.iterations())));
}

/// The modes prefill_paired runs in each round (on each of kPairedThreads).
constexpr Mode kPrefillPairedModes[] = {Mode::kDense, Mode::kTopK, Mode::kTopTheta,
                                        Mode::kTopThetaPre};
constexpr int kNumPrefillModes = int(sizeof(kPrefillPairedModes) / sizeof(kPrefillPairedModes[0]));

/// Rounds of one prefill_paired run: fixed, since a round at T = 4096 takes about 5 s of calls
/// (Google Benchmark's MinTime would rerun the loop from one round up, and discard that run).
Index prefill_paired_rounds(Index Tn) { return Tn <= 1024 ? 16 : 6; }

/// prefill_paired: every mode of one (T, dtype) on 1 and 2 threads, in one timed loop
/// (run_paired, bench_paired.hpp: the order of the calls within a round, the counters), on the
/// same inputs as the prefill/ benchmarks, which validate each of these configurations. Each
/// entry's first call (untimed) checks its status.
template <class T>
void bm_prefill_paired(benchmark::State& state, Index Tn) {
  PrefillSet<T>& s = prefill_set<T>(Tn);
  state.SetLabel("all modes and thread counts, shuffled within each round; paired ratios");
  struct Entry {
    toptheta::AttentionOptions o;
    WorkspaceBuffer wb;
    toptheta::Workspace ws;
  };
  constexpr int kEntries = kNumPrefillModes * kNumPairedThreads;
  std::vector<Entry> entries(kEntries);
  std::vector<float> out(s.q.size());
  const auto a = s.args(s.q, out.data());
  for (int e = 0; e < kEntries; ++e) {
    const Mode m = kPrefillPairedModes[e % kNumPrefillModes];
    toptheta::Placement p;
    if (needs_table(m, &p)) {
      const toptheta::Status st = ensure_table(s, p);
      if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
    }
    Entry& en = entries[std::size_t(e)];
    en.o = mode_options(m, s.tables);
    en.o.threads = kPairedThreads[e / kNumPrefillModes];
    en.ws = en.wb.get(a, en.o, false);
    const toptheta::Status st = toptheta::prefill(a, en.o, en.ws);
    if (!st.ok())
      return state.SkipWithError((std::string(mode_name(m)) + ": " + st.to_string()).c_str());
  }
  run_paired(state, kPrefillPairedModes, kNumPrefillModes, [&](std::size_t e) {
    (void)toptheta::prefill(a, entries[e].o, entries[e].ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  });
}

template <class T>
void register_one(Mode mode, Index Tn, int threads) {
  const std::string name = std::string("prefill/") + mode_name(mode) + "/T:" + std::to_string(Tn) +
                           "/dtype:" + toptheta::dtype_name<T>() + "/threads:" +
                           std::to_string(threads);
  const PrefillConfig cfg{mode, Tn, threads};
  benchmark::RegisterBenchmark(name.c_str(), [cfg](benchmark::State& s) { bm_prefill<T>(s, cfg); })
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

template <class T>
void register_dtype(Index Tn) {
  for (int t : kPairedThreads)
    for (Mode m : kPrefillPairedModes) register_one<T>(m, Tn, t);
  benchmark::RegisterBenchmark(
      ("prefill_paired/T:" + std::to_string(Tn) + "/dtype:" + toptheta::dtype_name<T>()).c_str(),
      [Tn](benchmark::State& s) { bm_prefill_paired<T>(s, Tn); })
      ->UseManualTime()
      ->Iterations(prefill_paired_rounds(Tn))
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

void register_prefill_benchmarks() {
  // Order: T, dtype, threads, mode, then prefill_paired -- one input set per (T, dtype).
  for (Index Tn : {Index(1024), Index(4096)}) {
    register_dtype<float>(Tn);
    register_dtype<Eigen::half>(Tn);
  }
}

}  // namespace ttbench
