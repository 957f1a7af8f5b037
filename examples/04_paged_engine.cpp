// 04_paged_engine: Top-θ inside a vLLM-style paged engine (docs/integration.md §3).
//
// What such an engine has, and how each piece meets the library:
//  * one pool of fixed-size KV blocks per layer (16 tokens per block, token-major inside a
//    block, f16), handed out from a free list; each sequence owns a block table (the indices of
//    its blocks in order). The kernels read K/V through the block table: PagedKv, no gather copy;
//  * a running batch of sequences of different lengths, decoded together in one call per step
//    (decode_batch), with per-sequence and total statistics; finished sequences give their
//    blocks back and new ones join;
//  * thresholds calibrated inside the engine on the engine's own prefills, saved and loaded as a
//    file shipped with the model;
//  * a running V sum per sequence (RunningVSum), O(d) per appended token.
// Each step is checked against single-sequence decode calls (bit for bit). Exits non-zero when
// any check fails.
#include <toptheta/toptheta.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>
#include <unistd.h>

using namespace toptheta;

namespace {

constexpr Index kHq = 16, kHkv = 4, kD = 128, kGroup = kHq / kHkv;
constexpr Index kBlock = 16;       // tokens per KV block
constexpr Index kNumBlocks = 640;  // blocks in the pool (10240 tokens)
constexpr Index kSteps = 12;       // decode steps
constexpr Index kBudget = 32;
constexpr Index kMaxSeqs = 8;  // sequences the engine runs at once (vLLM's max_num_seqs)

using Half = Eigen::half;

int g_failures = 0;
void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++g_failures;
  }
}
void check(const Status& s, const std::string& what) { check(s.ok(), what + ": " + s.to_string()); }

/// The KV block pool of one layer: K and V blocks of [kBlock][kHkv][kD] f16, and a free list.
struct BlockPool {
  static constexpr Index kBlockItems = kBlock * kHkv * kD;
  std::vector<Half> k, v;
  std::vector<std::int32_t> free_list;
  BlockPool() : k(kNumBlocks * kBlockItems), v(kNumBlocks * kBlockItems) {
    for (Index b = kNumBlocks - 1; b >= 0; --b) free_list.push_back(std::int32_t(b));
  }
  std::int32_t allocate() {
    if (free_list.empty()) return -1;
    const std::int32_t b = free_list.back();
    free_list.pop_back();
    return b;
  }
  void release(const std::vector<std::int32_t>& blocks) {
    free_list.insert(free_list.end(), blocks.rbegin(), blocks.rend());
  }
};

/// One running sequence: its block table, length, running V sum and the generator of its
/// synthetic activations (queries look at a few earlier keys, a sink, the recent tokens).
struct Sequence {
  int id = 0;
  std::vector<std::int32_t> blocks;
  Index length = 0;
  RunningVSum<Half> v_sum{kHkv, kD};
  std::mt19937 rng;
  std::vector<float> keys;  // f32 copy of the keys, only to synthesise queries
  explicit Sequence(int i) : id(i), rng(unsigned(100 + i)) {}

  PagedKv<Half> paged(const BlockPool& pool) const {
    return PagedKv<Half>::token_major(pool.k.data(), pool.v.data(), kNumBlocks, blocks.data(),
                                      length, kHkv, kD, kBlock);
  }
  /// Appends one token's K/V rows (allocating a block every kBlock tokens).
  bool append(BlockPool& pool) {
    if (length % kBlock == 0) {
      const std::int32_t b = pool.allocate();
      if (b < 0) return false;
      blocks.push_back(b);
    }
    std::normal_distribution<float> n(0.f, 1.f);
    const Index slot = length % kBlock;
    Half* kb = &pool.k[blocks.back() * BlockPool::kBlockItems + slot * kHkv * kD];
    Half* vb = &pool.v[blocks.back() * BlockPool::kBlockItems + slot * kHkv * kD];
    for (Index i = 0; i < kHkv * kD; ++i) {
      const float kx = length == 0 ? (i % 2 ? 3.f : -3.f) : n(rng);  // token 0: a sink
      keys.push_back(kx);
      kb[i] = Half(kx);
      vb[i] = Half(n(rng));
    }
    ++length;
    return true;
  }
  /// The V rows of token t (a strided view into its block), for the running sum.
  HeadsView<const Half> v_rows(const BlockPool& pool, Index t) const {
    const Half* p = &pool.v[blocks[std::size_t(t / kBlock)] * BlockPool::kBlockItems +
                            (t % kBlock) * kHkv * kD];
    return HeadsView<const Half>::token_major(p, 1, kHkv, kD);
  }
  void query(Index pos, float* q) {
    std::normal_distribution<float> n(0.f, 1.f);
    std::uniform_int_distribution<Index> earlier(pos > 0 ? 1 : 0, pos);  // tokens 1..pos exist
    for (Index h = 0; h < kHq; ++h) {
      const Index g = h / kGroup;
      float* qh = q + h * kD;
      for (Index i = 0; i < kD; ++i) qh[i] = 0.6f * n(rng);
      auto key = [&](Index t) { return &keys[std::size_t((t * kHkv + g) * kD)]; };
      for (int s = 0; s < 6; ++s) {
        const float* kr = key(earlier(rng));
        for (Index i = 0; i < kD; ++i) qh[i] += (0.3f + 0.1f * float(s)) * kr[i];
      }
      for (Index i = 0; i < kD; ++i) qh[i] += 0.16f * key(0)[i];
    }
  }
};

/// Prefills `n` prompt tokens of a new sequence: K/V into its blocks, then one prefill call
/// (dense, or calibrating); the running V sum then covers the prompt.
Status prefill_sequence(Sequence& s, BlockPool& pool, Index n, const AttentionOptions& o) {
  std::vector<float> q(std::size_t(n * kHq * kD)), out(q.size());
  for (Index t = 0; t < n; ++t) {
    if (!s.append(pool)) return Status::out_of_range("KV block pool exhausted");
    s.query(t, &q[std::size_t(t * kHq * kD)]);
  }
  AttentionArgs<Half, float> a;
  a.q = HeadsView<const float>::token_major(q.data(), n, kHq, kD);
  a.paged = s.paged(pool);
  a.out = HeadsView<float>::token_major(out.data(), n, kHq, kD);
  a.v_sum = s.v_sum.data();  // rows before the prompt: none
  TOPTHETA_RETURN_IF_ERROR(prefill(a, o));
  for (Index t = 0; t < n; ++t) TOPTHETA_RETURN_IF_ERROR(s.v_sum.add(s.v_rows(pool, t)));
  return {};
}

}  // namespace

int main() {
  // A bad TMPDIR (missing, not a directory, read-only) is a reported failure, not an abort.
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
  if (!ec) {
    dir /= "toptheta-example-04-" + std::to_string(::getpid());
    std::filesystem::create_directories(dir, ec);
  }
  if (ec) {
    std::fprintf(stderr, "FAILED: temporary directory %s: %s\n", dir.c_str(), ec.message().c_str());
    return 1;
  }
  const std::string table_path = (dir / "thresholds.toptheta").string();
  BlockPool pool;

  // 1. Calibration inside the engine: calibrating prefills of two held-in sequences, compact
  //    tables for two budgets, saved atomically next to the model.
  {
    CalibrationOptions co;
    co.num_layers = 1;
    co.num_heads = kHq;
    co.k_values = {kBudget, 64};
    co.placement = Placement::kPostSoftmax;
    co.per_length = false;
    Calibrator cal(co);
    AttentionOptions o;
    o.mode = AttentionMode::kCalibrate;
    o.calibrator = &cal;
    for (int i = 0; i < 2; ++i) {
      Sequence s(900 + i);
      check(prefill_sequence(s, pool, 900, o), "calibration prefill");
      pool.release(s.blocks);  // the calibration sequences are done
    }
    ThresholdSet set;
    check(cal.finalize_compact(&set), "finalize_compact");
    check(save_threshold_set(table_path, set), "save thresholds");
  }
  ThresholdTable table;
  LoadOptions lo;
  lo.k = kBudget;
  lo.expected_heads = kHq;
  check(load_thresholds(table_path, &table, lo), "load thresholds");

  // 2. A running batch of ragged sequences.
  std::vector<Sequence> seqs;
  seqs.reserve(8);
  const Index prompts[] = {70, 1500, 333, 2900, 16};
  for (int i = 0; i < 5; ++i) {
    seqs.emplace_back(i);
    check(prefill_sequence(seqs.back(), pool, prompts[i], AttentionOptions{}), "prefill");
  }
  std::printf("paged engine: Hq=%td, Hkv=%td, d=%td, blocks of %td tokens, %zu blocks free\n",
              kHq, kHkv, kD, kBlock, pool.free_list.size());

  // [integration:batch]
  AttentionOptions o = toptheta_options(table);
  AttentionStats total;
  o.stats = &total;
  std::vector<AttentionArgs<Half, float>> args;
  std::vector<AttentionStats> seq_stats;
  std::vector<float> q, out, single;
  std::vector<std::byte> workspace;  // sized once, at the first step, for the engine's limits
  for (Index step = 0; step < kSteps; ++step) {
    const std::size_t n = seqs.size();
    q.assign(n * kHq * kD, 0.f);
    out.assign(n * kHq * kD, 0.f);
    args.assign(n, {});
    seq_stats.assign(n, {});
    for (std::size_t i = 0; i < n; ++i) {
      Sequence& s = seqs[i];
      check(s.append(pool), "append");  // the new token's K/V rows, into its block
      s.query(s.length - 1, &q[i * kHq * kD]);
      AttentionArgs<Half, float>& a = args[i];
      a.q = HeadsView<const float>::token_major(&q[i * kHq * kD], 1, kHq, kD);
      a.paged = s.paged(pool);      // the block table: no copy of the cache
      a.out = HeadsView<float>::token_major(&out[i * kHq * kD], 1, kHq, kD);
      a.v_sum = s.v_sum.data();     // rows 0..L-2
    }
    const DecodeBatch<Half, float> batch{args.data(), Index(n), seq_stats.data()};
    if (workspace.empty())  // any batch of up to kMaxSeqs sequences that fit in the pool
      workspace.resize(max_decode_batch_workspace_size(
          args[0], o, WorkspaceLimits{kNumBlocks * kBlock, 1, kMaxSeqs}));
    check(decode_batch(batch, o, Workspace{workspace.data(), workspace.size()}), "decode_batch");
    // [/integration:batch]

    // Every sequence's output equals its own decode call, bit for bit.
    for (std::size_t i = 0; i < n; ++i) {
      single.assign(kHq * kD, 0.f);
      AttentionArgs<Half, float> a = args[i];
      a.out = HeadsView<float>::token_major(single.data(), 1, kHq, kD);
      check(decode(a, toptheta_options(table)), "single decode");
      check(std::memcmp(single.data(), &out[i * kHq * kD], single.size() * sizeof(float)) == 0,
            "sequence " + std::to_string(seqs[i].id) + ": batch differs from its single call");
    }
    // [integration:after_step]
    for (std::size_t i = 0; i < n; ++i)  // after the step: the sums cover rows 0..L-1
      check(seqs[i].v_sum.add(seqs[i].v_rows(pool, seqs[i].length - 1)), "v_sum");
    // [/integration:after_step]
    if (step == kSteps / 2) {  // sequence 0 finishes; its blocks go back; a new one joins
      pool.release(seqs.front().blocks);
      seqs.erase(seqs.begin());
      seqs.emplace_back(5);
      check(prefill_sequence(seqs.back(), pool, 1200, AttentionOptions{}), "prefill new");
    }
  }
  std::printf("%td decode steps of a batch of 5 ragged sequences (16..3000 tokens):\n", kSteps);
  for (std::size_t i = 0; i < seqs.size(); ++i)
    std::printf("  sequence %d (L = %td): last step kept %.1f%% of the attention, read %.1f%% of the "
                "V rows\n",
                seqs[i].id, seqs[i].length, 100.0 * seq_stats[i].kept_fraction(),
                100.0 * seq_stats[i].vrows_fraction());
  std::printf("  all steps: kept %.1f%% of the attention, read %.1f%% of the V rows\n",
              100.0 * total.kept_fraction(), 100.0 * total.vrows_fraction());
  check(total.kept_fraction() < 0.5, "Top-θ kept most of the attention");

  std::filesystem::remove_all(dir, ec);
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all checks passed\n");
  return 0;
}
