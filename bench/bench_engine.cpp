/// \file bench_engine.cpp
/// Benchmarks of the engine interfaces: batched ragged decode, paged KV caches and
/// q8_0 caches, all with f32 queries (AttentionArgs<T, float>, as llama.cpp keeps them),
/// d = 128, Hq = 32, Hkv = 8, token-major caches.
///
///   engine_batch/<mode>/call:<batch|singles>/seqs:8/Lmax:<n>/dtype:f16/threads:<t>
///   engine_paged/<mode>/kv:<contiguous|paged16|paged256>/L:<n>/dtype:f16/threads:<t>
///   engine_q8/<mode>/L:<n>/dtype:<q8_0|f16>/threads:<t>
///
/// with <mode> dense, toptheta (recommended: toptheta_options(post table) = post-softmax + VMC
/// with the running V sum) or toptheta_pre (toptheta_options(pre table) = pre-softmax + exact
/// SDC + VMC), as in bench_decode.cpp, over the synthetic inputs of bench_common.hpp.
///
/// - engine_batch: 8 sequences of lengths Lmax * {1, 2, 3, 4, 8, 12, 16, 32} / 32 (Lmax = 32768:
///   1k, 2k, 3k, 4k, 8k, 12k, 16k, 32k tokens; Lmax = 8192: 256 .. 8k, the quick size), each
///   its own f16 cache (fill_kv at its own length) and running V sum, one f32 query (seed 0).
///   `call:batch` is one `decode_batch` call over the 8 sequences; `call:singles` is the 8
///   single `decode` calls on the same arguments, one after the other (the time is their sum).
///   The Top-θ tables are calibrated on all 8 caches (8 kCalibrate decodes per sequence, one
///   per-length entry per sequence length), so each sequence gets thresholds for its own length.
/// - engine_paged: one f16 cache of L tokens read contiguously (`kv:contiguous`) or through a
///   block table (`kv:paged16`, `kv:paged256`: PagedKv::token_major with blocks of 16 or 256
///   tokens). The pool of each block size holds the blocks of every rotated copy, in one
///   shuffled order (a copy's block table is a random subset of the pool), so consecutive
///   blocks of a sequence are never adjacent in memory. The table is calibrated on the
///   contiguous cache and used for all three.
/// - engine_q8: float K / V from fill_kv<float>, stored once as f16 (rounded) and once as q8_0
///   (quantize_row_q8_0 of the same floats); each dtype has its own tables, calibrated on its
///   own cache. The running V sum of the q8_0 cache sums the dequantised rows.
///
/// Each configuration rotates over copies of its caches so that the working set is at least
/// kMinWorkingSetBytes (DRAM-bound, as in a multi-layer model).
///
/// Counters: `bytes` per step (K + V dense; K + kept V-row union, per KV group, sparse; summed
/// over the batch's sequences; q8_0 rows are d / 32 * 34 bytes), bytes_per_second, `tokens`
/// (K/V tokens read per step), `kept_per_row`, `vrows_frac`, `rel_err` (against the dense output
/// of the same cache), `copies`; engine_batch `bit_identical` (the batch's outputs equal the
/// single calls' bit for bit; both at this thread count), engine_paged `bit_identical` (the
/// paged output equals the contiguous one), engine_q8 `err_vs_f16` (|o - o_f16 dense| /
/// |o_f16 dense|: what q8_0 storage, and the mode, cost against the f16 cache).

#include "bench_common.hpp"

#include <toptheta/plan.hpp>
#include <toptheta/quantize.hpp>

#include <numeric>

namespace ttbench {
namespace {

using toptheta::AttentionArgs;
using toptheta::AttentionOptions;
using toptheta::BlockQ8_0;
using toptheta::HeadsView;
using toptheta::Status;
using Half = Eigen::half;

constexpr Mode kEngineModes[] = {Mode::kDense, Mode::kTopTheta, Mode::kTopThetaPre};
constexpr Index kBatchSeqs = 8;
constexpr Index kBatchLen32[kBatchSeqs] = {1, 2, 3, 4, 8, 12, 16, 32};  // x Lmax / 32

/// Bytes of one (token, KV head) row of storage T (q8_0: d / 32 blocks of 34 bytes).
template <class T>
double row_bytes() {
  return double(HeadsView<const T>::row_items(kD)) * double(sizeof(T));
}

/// One token-major (L, Hkv, d) cache of storage T, with `copies` identical copies of K and V
/// and the float running sum of V rows 0..L-2.
template <class T>
struct Cache {
  Index L = 0;
  int copies = 1;
  std::size_t per_copy = 0;  // items of T in one K (or V) copy
  std::vector<T> k, v;
  std::vector<float> vsum;   // (Hkv, d)

  void allocate(Index len, int n_copies) {
    L = len;
    copies = n_copies;
    per_copy = std::size_t(L * kHkv * HeadsView<const T>::row_items(kD));
    k.resize(per_copy * std::size_t(copies));
    v.resize(per_copy * std::size_t(copies));
  }
  double pair_bytes() const { return 2.0 * double(L * kHkv) * row_bytes<T>(); }
  /// Copies copy 0 into the others and sums V rows 0..L-2.
  void finish() {
    for (int c = 1; c < copies; ++c) {
      std::memcpy(k.data() + c * per_copy, k.data(), per_copy * sizeof(T));
      std::memcpy(v.data() + c * per_copy, v.data(), per_copy * sizeof(T));
    }
    vsum.assign(std::size_t(kHkv * kD), 0.0f);
    const HeadsView<const T> vv = view(v, 0);
    for (Index t = 0; t + 1 < L; ++t)
      for (Index g = 0; g < kHkv; ++g)
        for (Index i = 0; i < kD; ++i)
          vsum[std::size_t(g * kD + i)] += float(toptheta::value_at(vv.row(t, g), i));
  }
  HeadsView<const T> view(const std::vector<T>& x, int c) const {
    return HeadsView<const T>::token_major(x.data() + std::size_t(c) * per_copy, L, kHkv, kD);
  }
  AttentionArgs<T, float> args(int c, const float* q, float* out) const {
    AttentionArgs<T, float> a;
    a.q = HeadsView<const float>::token_major(q, 1, kHq, kD);
    a.k = view(k, c);
    a.v = view(v, c);
    a.out = HeadsView<float>::token_major(out, 1, kHq, kD);
    a.v_sum = vsum.data();
    a.v_sum_stride = kD;
    return a;
  }
};

/// Copies of a cache needed for kMinWorkingSetBytes, given the bytes of one copy of everything.
int copies_for(double bytes) {
  return int(std::max<double>(1.0, std::ceil(double(kMinWorkingSetBytes) / bytes)));
}

/// A growable workspace for any call.
struct Scratch {
  std::vector<std::byte> bytes;
  toptheta::Workspace get(std::size_t need) {
    need = std::max<std::size_t>(need, 1);
    if (bytes.size() < need) bytes.resize(need);
    return {bytes.data(), bytes.size()};
  }
};

/// The one engine input set alive (the configurations of one set run back to back).
std::pair<std::string, std::unique_ptr<CachedInputs>>& engine_slot() {
  static std::pair<std::string, std::unique_ptr<CachedInputs>> slot;
  return slot;
}

template <class Set, class Build>
Set& engine_set(const std::string& key, Build&& build) {
  auto& slot = engine_slot();
  if (slot.second && slot.first == key) return *static_cast<Set*>(slot.second.get());
  slot.second.reset();
  release_probe_buffer();
  auto s = std::make_unique<Set>();
  build(*s);
  Set& ref = *s;
  slot = {key, std::move(s)};
  return ref;
}

/// Calibrates `tables` for `mode` (if it needs a table and has none) with kCalibrate decodes of
/// queries 1..8 on copy 0 of every cache in `caches`.
template <class T>
Status ensure_engine_table(Tables& tables, Mode mode, const std::vector<const Cache<T>*>& caches) {
  toptheta::Placement p;
  if (!needs_table(mode, &p)) return {};
  auto& slot = p == toptheta::Placement::kPostSoftmax ? tables.post : tables.pre;
  if (slot) return {};
  return calibrate_table(
      p, "toptheta-bench synthetic engine",
      [&](const AttentionOptions& o) -> Status {
        std::vector<float> q(std::size_t(kHq * kD)), out(std::size_t(kHq * kD));
        Scratch ws;
        for (const Cache<T>* c : caches)
          for (int i = 1; i <= kCalibrationQueries; ++i) {
            make_query(std::uint64_t(i), q.data());
            const auto a = c->args(0, q.data(), out.data());
            TOPTHETA_RETURN_IF_ERROR(
                toptheta::decode(a, o, ws.get(toptheta::decode_workspace_size(a, o))));
          }
        return {};
      },
      &slot);
}

/// Bytes one step touches: K of every token, and V of every token (dense) or of the kept V-row
/// union (sparse modes, `vrows_read` from the statistics).
double touched_bytes(Mode m, Index tokens, double rb, const toptheta::AttentionStats& st) {
  const double k = double(tokens * kHkv) * rb;
  return m == Mode::kDense ? 2 * k : k + double(st.vrows_read) * rb;
}

void sparse_counters(Validation& v, Mode m, const toptheta::AttentionStats& st) {
  v.counters.emplace_back("kept_per_row",
                          toptheta::AttentionStats::ratio(st.elements_kept, st.rows));
  v.counters.emplace_back("vrows_frac", m == Mode::kDense ? 1.0 : st.vrows_fraction());
  v.counters.emplace_back("kept_frac", st.kept_fraction());
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void apply(benchmark::State& state, const Validation& v) {
  for (const auto& c : v.counters) state.counters[c.first] = c.second;
}

// ==== engine_batch ===============================================================================

struct BatchSet : CachedInputs {
  Index lmax = 0;
  std::vector<Cache<Half>> seqs;  // kBatchSeqs
  std::vector<float> q;           // (Hq, d), seed 0, every sequence's query
  Tables tables;
  std::map<std::string, std::vector<float>> ref_out;  // "<mode>/<threads>" -> singles' outputs

  std::vector<const Cache<Half>*> caches() const {
    std::vector<const Cache<Half>*> r;
    for (const auto& c : seqs) r.push_back(&c);
    return r;
  }
  Index tokens() const {
    Index n = 0;
    for (const auto& c : seqs) n += c.L;
    return n;
  }
  /// The arguments of copy c, outputs into out[i * Hq * d ...].
  std::vector<AttentionArgs<Half, float>> args(int c, float* out) const {
    std::vector<AttentionArgs<Half, float>> r;
    for (std::size_t i = 0; i < seqs.size(); ++i)
      r.push_back(seqs[i].args(c, q.data(), out + i * std::size_t(kHq * kD)));
    return r;
  }
};

BatchSet& batch_set(Index lmax) {
  return engine_set<BatchSet>("batch/" + std::to_string(lmax), [&](BatchSet& s) {
    s.lmax = lmax;
    double bytes = 0;
    for (Index i = 0; i < kBatchSeqs; ++i)
      bytes += 2.0 * double(lmax * kBatchLen32[i] / 32 * kHkv) * row_bytes<Half>();
    const int copies = copies_for(bytes);
    s.seqs.resize(std::size_t(kBatchSeqs));
    for (Index i = 0; i < kBatchSeqs; ++i) {
      Cache<Half>& c = s.seqs[std::size_t(i)];
      c.allocate(lmax * kBatchLen32[i] / 32, copies);
      fill_kv(c.k.data(), c.v.data(), c.L, Layout::kToken);
      c.finish();
    }
    s.q.resize(std::size_t(kHq * kD));
    make_query(0, s.q.data());
  });
}

struct BatchConfig {
  Mode mode;
  bool batch;  // one decode_batch call, else the 8 single decode calls
  Index lmax;
  int threads;
};

/// Runs one step (copy c) of the configuration.
Status batch_step(const BatchConfig& cfg, const std::vector<AttentionArgs<Half, float>>& a,
                  const AttentionOptions& o, toptheta::Workspace ws) {
  if (cfg.batch)
    return toptheta::decode_batch(
        toptheta::DecodeBatch<Half, float>{a.data(), Index(a.size()), nullptr}, o, ws);
  for (const auto& x : a) TOPTHETA_RETURN_IF_ERROR(toptheta::decode(x, o, ws));
  return {};
}

std::size_t batch_workspace(const BatchConfig& cfg, const std::vector<AttentionArgs<Half, float>>& a,
                            const AttentionOptions& o) {
  if (cfg.batch)
    return toptheta::decode_batch_workspace_size(
        toptheta::DecodeBatch<Half, float>{a.data(), Index(a.size()), nullptr}, o);
  std::size_t n = 0;
  for (const auto& x : a) n = std::max(n, toptheta::decode_workspace_size(x, o));
  return n;
}

/// The single calls' outputs of `mode` at `threads` (the reference of bit_identical; the dense
/// ones also of rel_err).
Status singles_output(BatchSet& s, Mode mode, int threads, const std::vector<float>** out) {
  const std::string key = std::string(mode_name(mode)) + "/" + std::to_string(threads);
  auto it = s.ref_out.find(key);
  if (it == s.ref_out.end()) {
    std::vector<float> o(std::size_t(kBatchSeqs * kHq * kD));
    AttentionOptions opt = mode_options(mode, s.tables);
    opt.threads = threads;
    const auto a = s.args(0, o.data());
    Scratch ws;
    const BatchConfig cfg{mode, false, s.lmax, threads};
    TOPTHETA_RETURN_IF_ERROR(batch_step(cfg, a, opt, ws.get(batch_workspace(cfg, a, opt))));
    it = s.ref_out.emplace(key, std::move(o)).first;
  }
  *out = &it->second;
  return {};
}

Validation validate_batch(BatchSet& s, const BatchConfig& cfg, AttentionOptions o,
                          const std::vector<AttentionArgs<Half, float>>& a, toptheta::Workspace ws,
                          const std::vector<float>& out) {
  Validation v;
  toptheta::AttentionStats st;
  o.stats = &st;
  Status r = batch_step(cfg, a, o, ws);
  if (!r.ok()) return v.error = r.to_string(), v;
  v.bytes = touched_bytes(cfg.mode, s.tokens(), row_bytes<Half>(), st);
  v.counters = {{"bytes", v.bytes}, {"tokens", double(s.tokens())},
                {"copies", double(s.seqs[0].copies)}, {"seqs", double(kBatchSeqs)}};
  sparse_counters(v, cfg.mode, st);
  const std::vector<float>* singles = nullptr;
  if (!(r = singles_output(s, cfg.mode, cfg.threads, &singles)).ok()) return v.error = r.to_string(), v;
  v.counters.emplace_back("bit_identical", same_bits(out, *singles) ? 1.0 : 0.0);
  if (cfg.mode != Mode::kDense) {
    const std::vector<float>* dense = nullptr;
    if (!(r = singles_output(s, Mode::kDense, 1, &dense)).ok()) return v.error = r.to_string(), v;
    v.counters.emplace_back("rel_err", relative_error(out, *dense));
  }
  return v;
}

void bm_batch(benchmark::State& state, BatchConfig cfg) {
  BatchSet& s = batch_set(cfg.lmax);
  state.SetLabel(mode_label(cfg.mode));
  Status st = ensure_engine_table<Half>(s.tables, cfg.mode, s.caches());
  if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
  AttentionOptions o = mode_options(cfg.mode, s.tables);
  o.threads = cfg.threads;

  std::vector<float> out(std::size_t(kBatchSeqs * kHq * kD));
  std::vector<std::vector<AttentionArgs<Half, float>>> args;
  for (int c = 0; c < s.seqs[0].copies; ++c) args.push_back(s.args(c, out.data()));
  Scratch scratch;
  const toptheta::Workspace ws = scratch.get(batch_workspace(cfg, args[0], o));

  const std::string key = std::string(mode_name(cfg.mode)) + (cfg.batch ? "/batch/" : "/singles/") +
                          std::to_string(cfg.threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_batch(s, cfg, o, args[0], ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  apply(state, v);

  std::size_t c = 0;
  for (auto _ : state) {
    (void)batch_step(cfg, args[c], o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == args.size()) c = 0;
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * v.bytes));
}

// ==== engine_paged ===============================================================================

struct PagedSet : CachedInputs {
  Index L = 0;
  Cache<Half> cache;  // contiguous copies
  struct Pool {
    Index block = 0, blocks_per_copy = 0, num_blocks = 0;
    std::vector<Half> k, v;
    std::vector<std::int32_t> table;  // copies x blocks_per_copy
  };
  Pool pools[2];  // kBlockSizes
  std::vector<float> q;
  Tables tables;
  std::map<std::string, std::vector<float>> contiguous_out;  // "<mode>/<threads>"
  std::vector<float> dense_out;

  /// kind 0: contiguous; 1, 2: paged with kBlockSizes[kind - 1].
  AttentionArgs<Half, float> args(int kind, int c, float* out) const {
    AttentionArgs<Half, float> a = cache.args(c, q.data(), out);
    if (kind == 0) return a;
    const Pool& p = pools[kind - 1];
    a.k = {};
    a.v = {};
    a.paged = toptheta::PagedKv<Half>::token_major(
        p.k.data(), p.v.data(), p.num_blocks, p.table.data() + std::size_t(c) * std::size_t(p.blocks_per_copy),
        L, kHkv, kD, p.block);
    return a;
  }
};

const char* kv_name(int kind) {
  return kind == 0 ? "contiguous" : kind == 1 ? "paged16" : "paged256";
}

PagedSet& paged_set(Index L) {
  return engine_set<PagedSet>("paged/" + std::to_string(L), [&](PagedSet& s) {
    s.L = L;
    const int copies = copies_for(2.0 * double(L * kHkv) * row_bytes<Half>());
    s.cache.allocate(L, copies);
    fill_kv(s.cache.k.data(), s.cache.v.data(), L, Layout::kToken);
    s.cache.finish();
    const std::size_t row = std::size_t(kHkv * kD);  // items of one token (all KV heads)
    for (int b = 0; b < 2; ++b) {
      PagedSet::Pool& p = s.pools[b];
      p.block = kBlockSizes[b];
      p.blocks_per_copy = (L + p.block - 1) / p.block;
      p.num_blocks = p.blocks_per_copy * copies;
      p.k.assign(std::size_t(p.num_blocks * p.block) * row, Half(0.0f));
      p.v.assign(p.k.size(), Half(0.0f));
      p.table.resize(std::size_t(p.num_blocks));
      std::iota(p.table.begin(), p.table.end(), 0);
      for (std::size_t i = p.table.size(); i > 1; --i)  // deterministic Fisher-Yates
        std::swap(p.table[i - 1],
                  p.table[std::size_t(mix64(stream_key(505 + std::uint64_t(b), i)) % i)]);
      for (int c = 0; c < copies; ++c)
        for (Index j = 0; j < p.blocks_per_copy; ++j) {
          const Index t0 = j * p.block, n = std::min(p.block, L - t0);
          const std::size_t dst = std::size_t(p.table[std::size_t(c * p.blocks_per_copy + j)]) *
                                  std::size_t(p.block) * row;
          std::memcpy(p.k.data() + dst, s.cache.k.data() + std::size_t(t0) * row,
                      std::size_t(n) * row * sizeof(Half));
          std::memcpy(p.v.data() + dst, s.cache.v.data() + std::size_t(t0) * row,
                      std::size_t(n) * row * sizeof(Half));
        }
    }
    s.q.resize(std::size_t(kHq * kD));
    make_query(0, s.q.data());
  });
}

struct PagedConfig {
  Mode mode;
  int kind;  // 0 contiguous, 1 paged16, 2 paged256
  Index L;
  int threads;
};

/// Output of one decode of `kind` (copy 0) into a fresh buffer.
Status paged_output(const PagedSet& s, int kind, AttentionOptions o, std::vector<float>* out) {
  out->assign(std::size_t(kHq * kD), 0.0f);
  const auto a = s.args(kind, 0, out->data());
  Scratch ws;
  return toptheta::decode(a, o, ws.get(toptheta::decode_workspace_size(a, o)));
}

Validation validate_paged(PagedSet& s, const PagedConfig& cfg, AttentionOptions o,
                          const AttentionArgs<Half, float>& a, toptheta::Workspace ws,
                          const std::vector<float>& out) {
  Validation v;
  toptheta::AttentionStats st;
  o.stats = &st;
  Status r = toptheta::decode(a, o, ws);
  o.stats = nullptr;
  if (!r.ok()) return v.error = r.to_string(), v;
  v.bytes = touched_bytes(cfg.mode, s.L, row_bytes<Half>(), st);
  v.counters = {{"bytes", v.bytes}, {"tokens", double(s.L)}, {"copies", double(s.cache.copies)},
                {"block", double(cfg.kind == 0 ? 0 : kBlockSizes[cfg.kind - 1])}};
  sparse_counters(v, cfg.mode, st);
  const std::string key = std::string(mode_name(cfg.mode)) + "/" + std::to_string(cfg.threads);
  auto it = s.contiguous_out.find(key);
  if (it == s.contiguous_out.end()) {
    std::vector<float> c;
    if (!(r = paged_output(s, 0, o, &c)).ok()) return v.error = r.to_string(), v;
    it = s.contiguous_out.emplace(key, std::move(c)).first;
  }
  v.counters.emplace_back("bit_identical", same_bits(out, it->second) ? 1.0 : 0.0);
  if (cfg.mode != Mode::kDense) {
    if (s.dense_out.empty()) {
      AttentionOptions d;
      d.threads = max_threads();
      if (!(r = paged_output(s, 0, d, &s.dense_out)).ok()) return v.error = r.to_string(), v;
    }
    v.counters.emplace_back("rel_err", relative_error(out, s.dense_out));
  }
  return v;
}

void bm_paged(benchmark::State& state, PagedConfig cfg) {
  PagedSet& s = paged_set(cfg.L);
  state.SetLabel(mode_label(cfg.mode));
  Status st = ensure_engine_table<Half>(s.tables, cfg.mode, {&s.cache});
  if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
  AttentionOptions o = mode_options(cfg.mode, s.tables);
  o.threads = cfg.threads;

  std::vector<float> out(std::size_t(kHq * kD));
  std::vector<AttentionArgs<Half, float>> args;
  for (int c = 0; c < s.cache.copies; ++c) args.push_back(s.args(cfg.kind, c, out.data()));
  Scratch scratch;
  const toptheta::Workspace ws = scratch.get(toptheta::decode_workspace_size(args[0], o));

  const std::string key = std::string(mode_name(cfg.mode)) + "/" + kv_name(cfg.kind) + "/" +
                          std::to_string(cfg.threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_paged(s, cfg, o, args[0], ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  apply(state, v);

  std::size_t c = 0;
  for (auto _ : state) {
    (void)toptheta::decode(args[c], o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == args.size()) c = 0;
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * v.bytes));
}

// ==== engine_q8 ==================================================================================

struct Q8Set : CachedInputs {
  Index L = 0;
  Cache<Half> f16;
  Cache<BlockQ8_0> q8;
  Tables tables_f16, tables_q8;
  std::vector<float> q;
  std::vector<float> dense_f16, dense_q8;  // dense outputs (copy 0)

  template <class T>
  const Cache<T>& cache() const {
    if constexpr (std::is_same_v<T, Half>) return f16;
    else return q8;
  }
  template <class T>
  Tables& tables() {
    if constexpr (std::is_same_v<T, Half>) return tables_f16;
    else return tables_q8;
  }
  template <class T>
  std::vector<float>& dense_out() {
    if constexpr (std::is_same_v<T, Half>) return dense_f16;
    else return dense_q8;
  }
};

Q8Set& q8_set(Index L) {
  return engine_set<Q8Set>("q8/" + std::to_string(L), [&](Q8Set& s) {
    s.L = L;
    // The same float data, stored as f16 (rounded) and as q8_0 (quantize_row_q8_0).
    std::vector<float> kf(std::size_t(L * kHkv * kD)), vf(kf.size());
    fill_kv(kf.data(), vf.data(), L, Layout::kToken);
    s.f16.allocate(L, copies_for(2.0 * double(L * kHkv) * row_bytes<Half>()));
    s.q8.allocate(L, copies_for(2.0 * double(L * kHkv) * row_bytes<BlockQ8_0>()));
    for (std::size_t i = 0; i < kf.size(); ++i) {
      s.f16.k[i] = Half(kf[i]);
      s.f16.v[i] = Half(vf[i]);
    }
    const Index rows = L * kHkv, blocks = kD / 32;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Index r = 0; r < rows; ++r) {
      (void)toptheta::quantize_row_q8_0(kf.data() + r * kD, s.q8.k.data() + r * blocks, kD);
      (void)toptheta::quantize_row_q8_0(vf.data() + r * kD, s.q8.v.data() + r * blocks, kD);
    }
    s.f16.finish();
    s.q8.finish();
    s.q.resize(std::size_t(kHq * kD));
    make_query(0, s.q.data());
  });
}

struct Q8Config {
  Mode mode;
  Index L;
  int threads;
};

template <class T>
Status q8_dense_output(Q8Set& s, std::vector<float>** out) {
  std::vector<float>& d = s.dense_out<T>();
  if (d.empty()) {
    std::vector<float> o(std::size_t(kHq * kD));
    AttentionOptions opt;
    opt.threads = max_threads();
    const auto a = s.cache<T>().args(0, s.q.data(), o.data());
    Scratch ws;
    TOPTHETA_RETURN_IF_ERROR(toptheta::decode(a, opt, ws.get(toptheta::decode_workspace_size(a, opt))));
    d = std::move(o);
  }
  *out = &d;
  return {};
}

template <class T>
Validation validate_q8(Q8Set& s, const Q8Config& cfg, AttentionOptions o,
                       const AttentionArgs<T, float>& a, toptheta::Workspace ws,
                       const std::vector<float>& out) {
  Validation v;
  toptheta::AttentionStats st;
  o.stats = &st;
  Status r = toptheta::decode(a, o, ws);
  if (!r.ok()) return v.error = r.to_string(), v;
  v.bytes = touched_bytes(cfg.mode, s.L, row_bytes<T>(), st);
  v.counters = {{"bytes", v.bytes}, {"tokens", double(s.L)},
                {"copies", double(s.cache<T>().copies)}, {"row_bytes", row_bytes<T>()}};
  sparse_counters(v, cfg.mode, st);
  std::vector<float>* dense = nullptr;
  if (cfg.mode != Mode::kDense) {
    if (!(r = q8_dense_output<T>(s, &dense)).ok()) return v.error = r.to_string(), v;
    v.counters.emplace_back("rel_err", relative_error(out, *dense));
  }
  if (!(r = q8_dense_output<Half>(s, &dense)).ok()) return v.error = r.to_string(), v;
  v.counters.emplace_back("err_vs_f16", relative_error(out, *dense));
  return v;
}

template <class T>
void bm_q8(benchmark::State& state, Q8Config cfg) {
  Q8Set& s = q8_set(cfg.L);
  state.SetLabel(mode_label(cfg.mode));
  Status st = ensure_engine_table<T>(s.tables<T>(), cfg.mode, {&s.cache<T>()});
  if (!st.ok()) return state.SkipWithError(("calibration: " + st.to_string()).c_str());
  AttentionOptions o = mode_options(cfg.mode, s.tables<T>());
  o.threads = cfg.threads;

  std::vector<float> out(std::size_t(kHq * kD));
  std::vector<AttentionArgs<T, float>> args;
  for (int c = 0; c < s.cache<T>().copies; ++c)
    args.push_back(s.cache<T>().args(c, s.q.data(), out.data()));
  Scratch scratch;
  const toptheta::Workspace ws = scratch.get(toptheta::decode_workspace_size(args[0], o));

  const std::string key = std::string(mode_name(cfg.mode)) + "/" + toptheta::dtype_name<T>() +
                          "/" + std::to_string(cfg.threads);
  auto it = s.validated.find(key);
  if (it == s.validated.end())
    it = s.validated.emplace(key, validate_q8<T>(s, cfg, o, args[0], ws, out)).first;
  const Validation& v = it->second;
  if (!v.error.empty()) return state.SkipWithError(v.error.c_str());
  apply(state, v);

  std::size_t c = 0;
  for (auto _ : state) {
    (void)toptheta::decode(args[c], o, ws);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    if (++c == args.size()) c = 0;
  }
  state.SetBytesProcessed(std::int64_t(double(state.iterations()) * v.bytes));
}

template <class F>
void add(const std::string& name, F&& f) {
  benchmark::RegisterBenchmark(name.c_str(), std::forward<F>(f))
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

}  // namespace

void register_engine_benchmarks() {
  // Order: input set, threads, mode, then what is compared (call / kv / dtype), back to back.
  for (Index lmax : {Index(8192), Index(32768)})
    for (int t : {1, 2})
      for (Mode m : kEngineModes)
        for (bool batch : {true, false}) {
          const BatchConfig cfg{m, batch, lmax, t};
          add(std::string("engine_batch/") + mode_name(m) + "/call:" +
                  (batch ? "batch" : "singles") + "/seqs:" + std::to_string(kBatchSeqs) +
                  "/Lmax:" + std::to_string(lmax) + "/dtype:f16/threads:" + std::to_string(t),
              [cfg](benchmark::State& s) { bm_batch(s, cfg); });
        }
  for (Index L : {Index(16384), Index(65536)})
    for (int t : {1, 2})
      for (Mode m : kEngineModes)
        for (int kind : {0, 1, 2}) {
          const PagedConfig cfg{m, kind, L, t};
          add(std::string("engine_paged/") + mode_name(m) + "/kv:" + kv_name(kind) + "/L:" +
                  std::to_string(L) + "/dtype:f16/threads:" + std::to_string(t),
              [cfg](benchmark::State& s) { bm_paged(s, cfg); });
        }
  for (Index L : {Index(16384), Index(32768)})
    for (int t : {1, 2})
      for (Mode m : kEngineModes) {
        const Q8Config cfg{m, L, t};
        const std::string tail = "/L:" + std::to_string(L) + "/dtype:";
        add(std::string("engine_q8/") + mode_name(m) + tail + "q8_0/threads:" + std::to_string(t),
            [cfg](benchmark::State& s) { bm_q8<BlockQ8_0>(s, cfg); });
        add(std::string("engine_q8/") + mode_name(m) + tail + "f16/threads:" + std::to_string(t),
            [cfg](benchmark::State& s) { bm_q8<Half>(s, cfg); });
      }
}

}  // namespace ttbench
