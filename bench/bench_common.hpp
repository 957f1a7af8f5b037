#pragma once
/// \file bench_common.hpp
/// Shared pieces of the toptheta benchmark suite (toptheta-bench, toptheta-bench-portable):
/// shapes, the synthetic attention inputs, the measured variants, calibration, a
/// double-precision reference for validation, and helpers.
///
/// Benchmark names, registered programmatically so they are exact (families in run order):
///   probe/read_bandwidth/threads:<n>
///   probe/read_blocks/block:<32768|524288>/threads:<n>
///   probe/fma_peak/threads:<n>
///   decode/<mode>/L:<n>/dtype:<f32|f16|bf16>/layout:<token|head>/threads:<n>
///   decode_paired/L:<n>/dtype:<f32|f16|bf16>/layout:<token|head>  (all modes on 1 and 2 threads
///          shuffled within each round, paired ratios: bench_decode.cpp)
///   decode_resident/dense/L:16384/dtype:<f32|f16|bf16>/layout:token/threads:<n>  (rows in L2:
///          the dense walk's compute ceiling, bench_decode.cpp)
///   decode_isa/<dense|toptheta>/isa:<auto|scalar|avx2|avx512|neon>/L:16384/dtype:f32/layout:token/
///          threads:1
///   decode_dim/<dense|toptheta>/d:<n>/L:16384/dtype:f32/layout:token/threads:1
///   prefill/<dense|topk|toptheta|toptheta_pre>/T:<n>/dtype:<f32|f16>/threads:<n>
///   prefill_paired/T:<n>/dtype:<f32|f16>  (all modes on 1 and 2 threads shuffled within each
///          round, paired ratios: bench_prefill.cpp)
///   engine_batch/<dense|toptheta|toptheta_pre>/call:<batch|singles>/seqs:8/Lmax:<n>/dtype:f16/
///          threads:<n>
///   engine_paged/<dense|toptheta|toptheta_pre>/kv:<contiguous|paged16|paged256>/L:<n>/dtype:f16/
///          threads:<n>
///   engine_q8/<dense|toptheta|toptheta_pre>/L:<n>/dtype:<q8_0|f16>/threads:<n>
/// with <mode> one of dense, topk, toptheta, toptheta_pre, toptheta_dense_fallback (Mode below;
/// each benchmark's label names its variant). The engine_* families (bench_engine.cpp) use f32
/// queries over f16 / q8_0 caches (AttentionArgs<T, float>). Every benchmark measures wall time:
/// UseRealTime, or for decode_paired and prefill_paired, which time each call themselves
/// (bench_paired.hpp), UseManualTime with their own MinTime or number of rounds. bench_main.cpp
/// strips the "/real_time", "/manual_time", "/min_time:..." and "/iterations:..." suffixes Google
/// Benchmark would append, so reported names are exactly the ones above.
///
/// Synthetic inputs (d = 128, Hq = 32, Hkv = 8; the decode_dim family varies d):
/// - keys and values are i.i.d. ~N(0, 1) per element (Irwin-Hall approximation, counter-based
///   hash, so the inputs are a pure function of (L, token, head, dim) and identical across
///   dtypes and layouts up to storage rounding);
/// - every query head h has a fixed unit direction u_h; a query is
///   sqrt(d) * (c u_h + sqrt(1 - c^2) z), z a random unit vector, so an ordinary key scores
///   ~N(0, 1) after the 1/sqrt(d) scale;
/// - per query head, 16 "strong" keys and L/256 "medium" keys carry +beta u_h; token 0 is an
///   attention sink for the whole KV group; the last 32 tokens get a mild recency bump. So
///   top-k / Top-θ at k = 64 keep a small fraction of a row and the union over a GQA group of
///   4 heads is < 4 * 64 rows.

#include <benchmark/benchmark.h>

#include <toptheta/attention.hpp>
#include <toptheta/calibrator.hpp>
#include <toptheta/kv_cache.hpp>
#include <toptheta/stats.hpp>
#include <toptheta/threshold_table.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace ttbench {

using toptheta::Index;

// ---- shapes ------------------------------------------------------------------------------
inline constexpr Index kD = 128;     // head dim (all families but decode_dim)
inline constexpr Index kHq = 32;     // query heads
inline constexpr Index kHkv = 8;     // KV heads
inline constexpr Index kG = kHq / kHkv;
inline constexpr Index kTopK = 64;   // budget of top-k and Top-θ
inline constexpr double kLambda = 0.1;  // theta = mean + lambda * std (paper runs)
/// Tokens per block of engine_paged's two paged pools (f16, token-major blocks): 32 KiB and
/// 512 KiB per block and pool, the block sizes probe/read_blocks reads.
inline constexpr Index kBlockSizes[] = {16, 256};
/// Bytes of one block of kBlockSizes[i] tokens in an f16 pool (all KV heads).
inline constexpr std::size_t paged_block_bytes(int i) {
  return std::size_t(kBlockSizes[i] * kHkv * kD) * 2;
}
static_assert(paged_block_bytes(0) == 32768 && paged_block_bytes(1) == 524288,
              "scripts/perf_report.py's PAGED_BLOCK_BYTES and the probe names assume these");
inline constexpr int kCalibrationQueries = 8;  // decode queries used to calibrate Top-θ
/// Decode iterations rotate over copies of the KV cache ("layers") so that the working set is
/// at least this many bytes (4x a 32 MiB LLC): small L is then DRAM-bound, as in a model
/// where every layer's cache is cold when it is read.
inline constexpr std::size_t kMinWorkingSetBytes = std::size_t(128) << 20;

enum class Layout { kToken, kHead };
inline const char* layout_name(Layout l) { return l == Layout::kToken ? "token" : "head"; }

/// The measured variants. Every Top-θ variant is built with toptheta_options(table), the
/// options the README recommends, and gets the running V sum of the rows before the new token.
enum class Mode {
  kDense,         ///< dense attention (AttentionOptions{})
  kTopK,          ///< top-k, k = 64: pre-softmax, renormalised, no VMC (the baseline)
  kTopTheta,      ///< recommended: toptheta_options(post table) = post-softmax + VMC
  kTopThetaPre,   ///< toptheta_options(pre table) = pre-softmax + exact SDC + VMC
  kFallback,      ///< recommended options, a post table with every head declared dense
};
inline const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kDense: return "dense";
    case Mode::kTopK: return "topk";
    case Mode::kTopTheta: return "toptheta";
    case Mode::kTopThetaPre: return "toptheta_pre";
    case Mode::kFallback: return "toptheta_dense_fallback";
  }
  return "?";
}
/// Short variant name, the benchmark's label.
inline const char* mode_label(Mode m) {
  switch (m) {
    case Mode::kDense: return "dense";
    case Mode::kTopK: return "top-k pre-softmax, renormalised";
    case Mode::kTopTheta: return "recommended: post-softmax + VMC";
    case Mode::kTopThetaPre: return "pre-softmax + exact SDC + VMC";
    case Mode::kFallback: return "recommended options, all heads dense";
  }
  return "?";
}

inline int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// ---- counter-based random numbers ----------------------------------------------------------
inline std::uint64_t mix64(std::uint64_t x) {  // SplitMix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
/// ~N(0, 1): Irwin-Hall sum of four 16-bit uniforms of one hash, rescaled to unit variance.
inline float gauss(std::uint64_t key) {
  const std::uint64_t h = mix64(key);
  const float s = float(h & 0xFFFF) + float((h >> 16) & 0xFFFF) + float((h >> 32) & 0xFFFF) +
                  float(h >> 48);
  return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;  // var(sum of 4 U(0,1)) = 1/3
}
inline std::uint64_t stream_key(std::uint64_t stream, std::uint64_t index) {
  return mix64(stream * 0x632BE59BD9B4E019ull) ^ index;
}

/// (Hq, d) unit directions u_h for head dim d (computed once per d, on the calling thread).
inline const std::vector<float>& head_directions(Index d) {
  static std::map<Index, std::vector<float>> cache;
  auto it = cache.find(d);
  if (it != cache.end()) return it->second;
  std::vector<float> r(std::size_t(kHq * d));
  for (Index h = 0; h < kHq; ++h) {
    double n2 = 0;
    for (Index i = 0; i < d; ++i) {
      const float x = gauss(stream_key(101, std::uint64_t(h * d + i)));
      r[std::size_t(h * d + i)] = x;
      n2 += double(x) * x;
    }
    const float inv = float(1.0 / std::sqrt(n2));
    for (Index i = 0; i < d; ++i) r[std::size_t(h * d + i)] *= inv;
  }
  return cache.emplace(d, std::move(r)).first->second;
}
/// (Hkv, d) unit group directions w_g = normalise(sum of u_h over the group).
inline const std::vector<float>& group_directions(Index d) {
  static std::map<Index, std::vector<float>> cache;
  auto it = cache.find(d);
  if (it != cache.end()) return it->second;
  const auto& u = head_directions(d);
  std::vector<float> r(std::size_t(kHkv * d), 0.0f);
  for (Index g = 0; g < kHkv; ++g) {
    double n2 = 0;
    for (Index i = 0; i < d; ++i) {
      float s = 0;
      for (Index hh = 0; hh < kG; ++hh) s += u[std::size_t((g * kG + hh) * d + i)];
      r[std::size_t(g * d + i)] = s;
      n2 += double(s) * s;
    }
    const float inv = float(1.0 / std::sqrt(n2));
    for (Index i = 0; i < d; ++i) r[std::size_t(g * d + i)] *= inv;
  }
  return cache.emplace(d, std::move(r)).first->second;
}

/// One query token (Hq, d) for `seed`: sqrt(d) * (c u_h + sqrt(1 - c^2) z_h), |z_h| = 1.
template <class T>
void make_query(std::uint64_t seed, T* q /* (Hq, d) */, Index d = kD) {
  constexpr float c = 0.7f;
  const float s = std::sqrt(1.0f - c * c);
  const auto& u = head_directions(d);
  const float root_d = std::sqrt(float(d));
  std::vector<float> z(static_cast<std::size_t>(d));
  for (Index h = 0; h < kHq; ++h) {
    double n2 = 0;
    for (Index i = 0; i < d; ++i) {
      z[std::size_t(i)] = gauss(stream_key(202 + seed * 7919, std::uint64_t(h * d + i)));
      n2 += double(z[std::size_t(i)]) * z[std::size_t(i)];
    }
    const float inv = float(1.0 / std::sqrt(n2));
    for (Index i = 0; i < d; ++i)
      q[h * d + i] = T(root_d * (c * u[std::size_t(h * d + i)] + s * z[std::size_t(i)] * inv));
  }
}

/// Element offset of (token t, KV head g) in a cache of `L` tokens with the given layout.
inline std::size_t kv_offset(Layout layout, Index L, Index t, Index g, Index d = kD) {
  return layout == Layout::kToken ? std::size_t((t * kHkv + g) * d) : std::size_t((g * L + t) * d);
}

/// Fills K and V ((L, Hkv, d) in `layout`, storage T) with the synthetic attention inputs.
template <class T>
void fill_kv(T* k, T* v, Index L, Layout layout, Index d = kD) {
  const auto& u = head_directions(d);  // before the parallel region: the caches are not locked
  const auto& w = group_directions(d);
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
  for (Index t = 0; t < L; ++t)
    for (Index g = 0; g < kHkv; ++g) {
      const std::size_t o = kv_offset(layout, L, t, g, d);
      const std::uint64_t base = std::uint64_t((t * kHkv + g) * d);
      for (Index i = 0; i < d; ++i) {
        k[o + std::size_t(i)] = T(gauss(stream_key(1, base + std::uint64_t(i))));
        v[o + std::size_t(i)] = T(gauss(stream_key(2, base + std::uint64_t(i))));
      }
    }
  // Planted structure: k_t += beta * direction, applied in float and stored back (a planted
  // key scores ~ c * beta whatever d is: |q| = sqrt(d) and the scale is 1 / sqrt(d)).
  auto add = [&](Index t, Index g, float beta, const float* dir) {
    T* row = k + kv_offset(layout, L, t, g, d);
    for (Index i = 0; i < d; ++i) row[i] = T(float(row[i]) + beta * dir[i]);
  };
  for (Index g = 0; g < kHkv; ++g) {
    const float* wg = w.data() + g * d;
    add(0, g, 16.0f, wg);  // attention sink
    for (Index t = std::max<Index>(1, L - 32); t < L; ++t)  // mild recency
      add(t, g, 6.0f * std::exp(-float(L - 1 - t) / 8.0f), wg);
    for (Index hh = 0; hh < kG; ++hh) {
      const Index h = g * kG + hh;
      const float* uh = u.data() + h * d;
      for (Index r = 0; r < 16; ++r)  // strong keys of head h
        add(Index(mix64(stream_key(303, std::uint64_t(h * 1000 + r))) % std::uint64_t(L)), g,
            14.0f, uh);
      const Index medium = std::max<Index>(4, L / 256);
      for (Index r = 0; r < medium; ++r)
        add(Index(mix64(stream_key(304, std::uint64_t(h * 1000000 + r))) % std::uint64_t(L)), g,
            6.0f, uh);
    }
  }
}

// ---- variants and calibration ----------------------------------------------------------------

/// Calibration options shared by the decode and prefill benchmarks (one layer, k = kTopK).
inline toptheta::CalibrationOptions calibration_options(const char* model_id,
                                                        toptheta::Placement placement) {
  toptheta::CalibrationOptions co;
  co.num_layers = 1;
  co.num_heads = kHq;
  co.default_k = kTopK;
  co.placement = placement;
  co.lambda = kLambda;
  co.model_id = model_id;
  return co;
}

/// Calibrates a table with `placement`: `run(options)` makes the kCalibrate calls.
template <class Run>
toptheta::Status calibrate_table(toptheta::Placement placement, const char* model_id, Run&& run,
                                 std::unique_ptr<toptheta::ThresholdTable>* out) {
  toptheta::Calibrator cal(calibration_options(model_id, placement));
  TOPTHETA_RETURN_IF_ERROR(cal.validate());
  toptheta::AttentionOptions o;
  o.mode = toptheta::AttentionMode::kCalibrate;
  o.calibrator = &cal;
  o.threads = max_threads();
  TOPTHETA_RETURN_IF_ERROR(run(o));
  toptheta::ThresholdTable t;
  TOPTHETA_RETURN_IF_ERROR(cal.finalize(&t));
  *out = std::make_unique<toptheta::ThresholdTable>(std::move(t));
  return {};
}

/// A post-softmax table (so toptheta_options gives the recommended variant) that declares every
/// head dense: Top-θ with it keeps every key.
inline const toptheta::ThresholdTable& keep_all_table() {
  static const toptheta::ThresholdTable t = [] {
    toptheta::ThresholdTable r(1, kHq, kTopK);
    r.metadata().placement = toptheta::Placement::kPostSoftmax;
    for (Index h = 0; h < kHq; ++h) (void)r.set_dense(0, h);
    return r;
  }();
  return t;
}

/// The calibrated tables of one input set, built on first use.
struct Tables {
  std::unique_ptr<toptheta::ThresholdTable> post, pre;
};

/// Options of a mode (threads and isa are set by the caller). Top-θ modes need their table.
inline toptheta::AttentionOptions mode_options(Mode m, const Tables& t) {
  toptheta::AttentionOptions o;
  switch (m) {
    case Mode::kDense: break;
    case Mode::kTopK:
      o.mode = toptheta::AttentionMode::kTopK;
      o.k = kTopK;
      break;
    case Mode::kTopTheta: o = toptheta::toptheta_options(*t.post); break;
    case Mode::kTopThetaPre: o = toptheta::toptheta_options(*t.pre); break;
    case Mode::kFallback: o = toptheta::toptheta_options(keep_all_table()); break;
  }
  return o;
}

/// The placement of the table a mode needs calibrated, or false when it needs none.
inline bool needs_table(Mode m, toptheta::Placement* p) {
  if (m == Mode::kTopTheta) *p = toptheta::Placement::kPostSoftmax;
  else if (m == Mode::kTopThetaPre) *p = toptheta::Placement::kPreSoftmax;
  else return false;
  return true;
}

// ---- validation ------------------------------------------------------------------------------
/// Double-precision dense attention of query row `t` (length len) and head h; returns
/// |out - ref|_2 / |ref|_2 for that head's output row `out` (d floats).
template <class T>
double reference_row_error(const toptheta::HeadsView<const T>& q, const toptheta::HeadsView<const T>& k,
                           const toptheta::HeadsView<const T>& v, Index t, Index len, Index h,
                           const float* out) {
  const Index d = q.dim, g = h / (q.heads / k.heads);
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> s(static_cast<std::size_t>(len));
  double m = -INFINITY;
  for (Index j = 0; j < len; ++j) {
    double acc = 0;
    for (Index i = 0; i < d; ++i) acc += double(float(q(t, h, i))) * double(float(k(j, g, i)));
    s[std::size_t(j)] = acc * scale;
    m = std::max(m, s[std::size_t(j)]);
  }
  double z = 0;
  for (auto& x : s) z += (x = std::exp(x - m));
  std::vector<double> o(std::size_t(d), 0.0);
  for (Index j = 0; j < len; ++j)
    for (Index i = 0; i < d; ++i) o[std::size_t(i)] += s[std::size_t(j)] / z * double(float(v(j, g, i)));
  double num = 0, den = 0;
  for (Index i = 0; i < d; ++i) {
    num += (double(out[i]) - o[std::size_t(i)]) * (double(out[i]) - o[std::size_t(i)]);
    den += o[std::size_t(i)] * o[std::size_t(i)];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

/// |a - b|_2 / |b|_2.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

/// A workspace buffer sized for (args, options) with decode_workspace_size (decode) or
/// workspace_size (prefill).
struct WorkspaceBuffer {
  std::vector<std::byte> bytes;
  template <class T>
  toptheta::Workspace get(const toptheta::AttentionArgs<T>& a, const toptheta::AttentionOptions& o,
                          bool decode_only) {
    const std::size_t need = std::max<std::size_t>(
        decode_only ? toptheta::decode_workspace_size(a, o) : toptheta::workspace_size(a, o), 1);
    if (bytes.size() < need) bytes.resize(need);
    return {bytes.data(), bytes.size()};
  }
};

/// Result of a benchmark's validation (outside the timed loop), kept so that repetitions and
/// Google Benchmark's repeated calls of the same function validate only once.
struct Validation {
  double bytes = 0;  // bytes touched per call
  std::vector<std::pair<std::string, double>> counters;
  std::string error;  // non-empty: skip the benchmark with this message
};

/// Type-erased owner for the per-configuration input caches.
struct CachedInputs {
  virtual ~CachedInputs() = default;
  std::map<std::string, Validation> validated;  // by benchmark configuration
};

// ---- registration (called from main in this order) -----------------------------------------
void register_probe_benchmarks();
void register_decode_benchmarks();
void register_prefill_benchmarks();
void register_engine_benchmarks();
/// Frees the probe's 1 GiB buffer (called when the decode / prefill inputs are built).
void release_probe_buffer();
/// The instruction-set path the FMA probe runs ("avx512", "avx2", "scalar").
const char* fma_probe_isa();

}  // namespace ttbench
