/// \file bench_probe.cpp
/// probe/read_bandwidth/threads:<n>: STREAM-like sequential read of a 1 GiB float buffer (32x the
/// LLC), summed with 64 independent lanes so the adds never limit it. Every run of the suite
/// states its own floor: floor time of a decode = bytes it touches / this bandwidth (same
/// thread count).

#include "bench_common.hpp"

#include <cstdlib>

namespace ttbench {
namespace {

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

/// Sum of p[0..kChunk) in 64 independent lanes (vectorised to 8 AVX2 / 4 AVX-512 accumulators).
inline float sum_chunk(const float* TOPTHETA_RESTRICT p) {
  float acc[64] = {};
  for (std::size_t j = 0; j < kChunk; j += 64)
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
  for (Index c = 0; c < chunks; ++c) total += sum_chunk(b.data + std::size_t(c) * kChunk);
  (void)threads;
  return total;
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

}  // namespace

void release_probe_buffer() { probe_slot().reset(); }

void register_probe_benchmarks() {
  for (int threads : {1, 2}) {
    const std::string name = "probe/read_bandwidth/threads:" + std::to_string(threads);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [threads](benchmark::State& s) { bm_read_bandwidth(s, threads); })
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace ttbench
