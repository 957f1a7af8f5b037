/// \file bench_probe.cpp
/// Machine probes, so that every run states its own floors and peaks:
///
/// - probe/read_bandwidth/threads:<n>: STREAM-like sequential read of a 1 GiB float buffer (32x
///   a 32 MiB LLC), summed with 64 independent lanes so the adds never limit it. Floor time of a
///   decode = bytes it touches / this bandwidth (same thread count).
/// - probe/read_blocks/block:<bytes>/threads:<n>: the same buffer read in blocks of <bytes> taken
///   in a fixed shuffled order (each block summed as above, the shuffled list split statically
///   over the threads). What the memory system itself charges a paged KV cache whose blocks lie
///   at scattered addresses: 32768 bytes is one block of engine_paged's paged16 pool (16 tokens x
///   8 KV heads x 128 values x 2 bytes), 524288 one of paged256 (kBlockSizes). The sequential
///   probe's GB/s divided by this one's is the paged / contiguous time ratio of a dense walk
///   at the memory floor.
/// - probe/fma_peak/threads:<n>: register-resident fused multiply-adds on the widest SIMD path
///   the CPU runs (AVX-512, else AVX2 + FMA, else scalar; the label and the `lanes` counter say
///   which), 12 independent chains per thread so latency never limits it. `flops` (rate) is the
///   FLOP/s (2 per lane per FMA) of all threads: prefill GFLOP/s are compared with it. The SIMD
///   functions carry target attributes (as include/toptheta/detail/isa.hpp), so the probe
///   measures the same peak in the -march=native and the portable binary.

#include "bench_common.hpp"

#include <toptheta/detail/isa.hpp>

#include <cstdlib>
#include <vector>

namespace ttbench {
namespace {

// ---- read bandwidth ----------------------------------------------------------------------------

constexpr std::size_t kProbeBytes = std::size_t(1) << 30;
constexpr std::size_t kChunk = std::size_t(1) << 16;  // floats per OpenMP work unit (256 KiB)

struct ProbeBuffer {
  float* data = nullptr;
  std::size_t count = 0;
  ~ProbeBuffer() { std::free(data); }
};

std::unique_ptr<ProbeBuffer>& probe_slot() {
  static std::unique_ptr<ProbeBuffer> slot;
  return slot;
}

ProbeBuffer& probe_buffer() {
  auto& slot = probe_slot();
  if (!slot) {
    slot = std::make_unique<ProbeBuffer>();
    slot->count = kProbeBytes / sizeof(float);
    slot->data = static_cast<float*>(std::aligned_alloc(64, kProbeBytes));
    const Index chunks = Index(slot->count / kChunk);
    float* p = slot->data;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (Index c = 0; c < chunks; ++c)
      for (std::size_t i = 0; i < kChunk; ++i)
        p[std::size_t(c) * kChunk + i] = float((std::size_t(c) * kChunk + i) & 1023) * 1e-3f;
  }
  return *slot;
}

/// Sum of p[0..n) for n a multiple of 64, in 64 independent lanes (vectorised to 8 AVX2 / 4
/// AVX-512 accumulators).
inline float sum_span(const float* TOPTHETA_RESTRICT p, std::size_t n) {
  float acc[64] = {};
  for (std::size_t j = 0; j < n; j += 64)
    for (std::size_t l = 0; l < 64; ++l) acc[l] += p[j + l];
  float s = 0;
  for (float a : acc) s += a;
  return s;
}

float read_sum(const ProbeBuffer& b, int threads) {
  const Index chunks = Index(b.count / kChunk);
  float total = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
#endif
  for (Index c = 0; c < chunks; ++c) total += sum_span(b.data + std::size_t(c) * kChunk, kChunk);
  (void)threads;
  return total;
}

/// The probe buffer's blocks of `block_bytes` in a fixed shuffled order (Fisher-Yates on
/// mix64, seeded by the block size).
std::vector<std::uint32_t> shuffled_blocks(std::size_t block_bytes) {
  std::vector<std::uint32_t> order(kProbeBytes / block_bytes);
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = std::uint32_t(i);
  for (std::size_t i = order.size(); i > 1; --i)
    std::swap(order[i - 1], order[std::size_t(mix64(stream_key(707 + block_bytes, i)) % i)]);
  return order;
}

float read_blocks_sum(const ProbeBuffer& b, const std::vector<std::uint32_t>& order,
                      std::size_t block_floats, int threads) {
  const Index n = Index(order.size());
  float total = 0;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : total)
#endif
  for (Index i = 0; i < n; ++i)
    total += sum_span(b.data + std::size_t(order[std::size_t(i)]) * block_floats, block_floats);
  (void)threads;
  return total;
}

void bm_read_blocks(benchmark::State& state, std::size_t block_bytes, int threads) {
  ProbeBuffer& b = probe_buffer();
  const std::vector<std::uint32_t> order = shuffled_blocks(block_bytes);
  const std::size_t bytes = order.size() * block_bytes;
  for (auto _ : state) {
    float s = read_blocks_sum(b, order, block_bytes / sizeof(float), threads);
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
  state.counters["bytes"] = double(bytes);
  state.counters["block_bytes"] = double(block_bytes);
}

void bm_read_bandwidth(benchmark::State& state, int threads) {
  ProbeBuffer& b = probe_buffer();
  const std::size_t bytes = b.count * sizeof(float);
  for (auto _ : state) {
    float s = read_sum(b, threads);
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(bytes));
  state.counters["bytes"] = double(bytes);
}

// ---- FMA peak ----------------------------------------------------------------------------------

constexpr int kChains = 12;                     // independent FMA chains per thread
constexpr std::int64_t kFmaIters = 1 << 20;     // loop trips per thread and call

// a_j <- a_j * m + c on 12 registers; the chains start apart so that no two are the same value
// (the compiler may not merge them) and converge to c / (1 - m) = 1 (no overflow, no denormals).
#define TTB_FMA_BODY(VEC, SET1, FMA, ADD)                                                  \
  const VEC m = SET1(0.999f), c = SET1(0.001f);                                              \
  VEC a0 = SET1(1.00f), a1 = SET1(1.01f), a2 = SET1(1.02f), a3 = SET1(1.03f);               \
  VEC a4 = SET1(1.04f), a5 = SET1(1.05f), a6 = SET1(1.06f), a7 = SET1(1.07f);               \
  VEC a8 = SET1(1.08f), a9 = SET1(1.09f), a10 = SET1(1.10f), a11 = SET1(1.11f);             \
  for (std::int64_t i = 0; i < n; ++i) {                                                     \
    a0 = FMA(a0, m, c);                                                                      \
    a1 = FMA(a1, m, c);                                                                      \
    a2 = FMA(a2, m, c);                                                                      \
    a3 = FMA(a3, m, c);                                                                      \
    a4 = FMA(a4, m, c);                                                                      \
    a5 = FMA(a5, m, c);                                                                      \
    a6 = FMA(a6, m, c);                                                                      \
    a7 = FMA(a7, m, c);                                                                      \
    a8 = FMA(a8, m, c);                                                                      \
    a9 = FMA(a9, m, c);                                                                      \
    a10 = FMA(a10, m, c);                                                                    \
    a11 = FMA(a11, m, c);                                                                    \
  }                                                                                          \
  const VEC s = ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),       \
                    ADD(ADD(a8, a9), ADD(a10, a11)));

#if defined(TOPTHETA_COMPILE_AVX512)
TOPTHETA_ATTR_AVX512 float fma_loop_avx512(std::int64_t n) {
  TTB_FMA_BODY(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)
  return _mm512_reduce_add_ps(s);
}
#endif

#if defined(TOPTHETA_COMPILE_AVX2)
TOPTHETA_ATTR_AVX2 float fma_loop_avx2(std::int64_t n) {
  TTB_FMA_BODY(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float r = 0;
  for (float x : lanes) r += x;
  return r;
}
#endif

inline float scalar_fma(float a, float m, float c) { return a * m + c; }
inline float scalar_set1(float x) { return x; }
inline float scalar_add(float a, float b) { return a + b; }
float fma_loop_scalar(std::int64_t n) {
  TTB_FMA_BODY(float, scalar_set1, scalar_fma, scalar_add)
  return s;
}
#undef TTB_FMA_BODY

struct FmaPath {
  toptheta::Isa isa;
  int lanes;
  float (*loop)(std::int64_t);
};

/// The widest path this CPU runs, of those the probe has.
const FmaPath& fma_path() {
  static const FmaPath p = [] {
#if defined(TOPTHETA_COMPILE_AVX512)
    if (toptheta::isa_supported(toptheta::Isa::kAvx512))
      return FmaPath{toptheta::Isa::kAvx512, 16, fma_loop_avx512};
#endif
#if defined(TOPTHETA_COMPILE_AVX2)
    if (toptheta::isa_supported(toptheta::Isa::kAvx2))
      return FmaPath{toptheta::Isa::kAvx2, 8, fma_loop_avx2};
#endif
    return FmaPath{toptheta::Isa::kScalar, 1, fma_loop_scalar};
  }();
  return p;
}

float run_fma(const FmaPath& p, int threads) {
  float total = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : total)
#endif
  total += p.loop(kFmaIters);
  (void)threads;
  return total;
}

void bm_fma_peak(benchmark::State& state, int threads) {
  const FmaPath& p = fma_path();
  int team = 1;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#pragma omp single
  team = omp_get_num_threads();
#endif
  for (auto _ : state) {
    float s = run_fma(p, threads);
    benchmark::DoNotOptimize(s);
  }
  const double flops_per_call = double(team) * double(kFmaIters) * kChains * p.lanes * 2.0;
  state.counters["flops"] =
      benchmark::Counter(flops_per_call * double(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["lanes"] = p.lanes;
  state.counters["team"] = team;
  state.SetLabel(std::string(toptheta::to_string(p.isa)) + ", " + std::to_string(p.lanes) +
                 " float lanes");
}

}  // namespace

void release_probe_buffer() { probe_slot().reset(); }

const char* fma_probe_isa() { return toptheta::to_string(fma_path().isa); }

void register_probe_benchmarks() {
  for (int threads : {1, 2}) {
    const std::string name = "probe/read_bandwidth/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [threads](benchmark::State& s) { bm_read_bandwidth(s, threads); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
  for (std::size_t block : {paged_block_bytes(0), paged_block_bytes(1)})
    for (int threads : {1, 2}) {
      const std::string name = "probe/read_blocks/block:" + std::to_string(block) +
                               "/threads:" + std::to_string(threads);
      benchmark::RegisterBenchmark(name.c_str(), [block, threads](benchmark::State& s) {
        bm_read_blocks(s, block, threads);
      })
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  for (int threads : {1, 2}) {
    const std::string name = "probe/fma_peak/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [threads](benchmark::State& s) { bm_fma_peak(s, threads); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace ttbench
