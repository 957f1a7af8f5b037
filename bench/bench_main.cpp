/// \file bench_main.cpp
/// main() of toptheta-bench and toptheta-bench-portable: registers the probe, decode, prefill and
/// engine benchmarks (in that order) and runs them with Google Benchmark's usual flags
/// (--benchmark_filter, --benchmark_min_time, --benchmark_repetitions, --benchmark_format,
/// --benchmark_out, ...).
///
/// Every benchmark measures wall time (the kernels run their own OpenMP threads): UseRealTime, for
/// which Google Benchmark appends "/real_time" to the instance name, or, for decode_paired, which
/// times each call itself, UseManualTime ("/manual_time") with its own MinTime ("/min_time:.."),
/// and for prefill_paired UseManualTime with a fixed number of rounds ("/iterations:<n>").
/// The reporters below remove those suffixes, so names in the console and JSON output are exactly
/// the documented ones (bench_common.hpp). --benchmark_filter and --benchmark_list_tests still
/// see the internal name, so a filter anchored with '$' must allow the suffix
/// ("threads:1(/real_time)?$", "layout:token(/min_time:2.000/manual_time)?$",
/// "dtype:f16(/iterations:16/manual_time)?$").

#include "bench_common.hpp"

#include <cstring>
#include <string>
#include <vector>

#include <toptheta/detail/isa.hpp>
#include <toptheta/version.hpp>

namespace {

/// Forwards to `inner` with the run names' time-type ("real_time", "manual_time"), min-time
/// ("min_time:2.000") and iteration-count ("iterations:16") suffixes removed.
class ExactNameReporter : public benchmark::BenchmarkReporter {
 public:
  explicit ExactNameReporter(benchmark::BenchmarkReporter* inner) : inner_(inner) {}
  bool ReportContext(const Context& context) override {
    inner_->SetOutputStream(&GetOutputStream());
    inner_->SetErrorStream(&GetErrorStream());
    return inner_->ReportContext(context);
  }
  void ReportRuns(const std::vector<Run>& runs) override {
    std::vector<Run> fixed = runs;
    for (Run& r : fixed) {
      r.run_name.time_type.clear();
      r.run_name.min_time.clear();
      r.run_name.iterations.clear();
    }
    inner_->ReportRuns(fixed);
  }
  void Finalize() override { inner_->Finalize(); }

 private:
  benchmark::BenchmarkReporter* inner_;
};

bool starts_with(const char* s, const char* prefix) {
  return std::strncmp(s, prefix, std::strlen(prefix)) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Look at the output flags before Initialize() consumes them: a custom file reporter may be
  // passed only together with --benchmark_out, and we only wrap the JSON one.
  bool has_out = false;
  std::string out_format = "json";
  for (int i = 1; i < argc; ++i) {
    if (starts_with(argv[i], "--benchmark_out=")) has_out = true;
    if (starts_with(argv[i], "--benchmark_out_format="))
      out_format = argv[i] + std::strlen("--benchmark_out_format=");
  }

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  ttbench::register_probe_benchmarks();
  ttbench::register_decode_benchmarks();
  ttbench::register_prefill_benchmarks();
  ttbench::register_engine_benchmarks();

  benchmark::AddCustomContext("toptheta_version", TOPTHETA_VERSION_STRING);
  benchmark::AddCustomContext("openmp_max_threads", std::to_string(ttbench::max_threads()));
  benchmark::AddCustomContext(
      "shapes", "d=128 Hq=32 Hkv=8 k=64 lambda=0.1 (decode_dim varies d)");
  benchmark::AddCustomContext(
      "variants",
      "dense; topk: pre-softmax, renormalised, no VMC; toptheta: toptheta_options(post table) = "
      "post-softmax + VMC (running V sum), keep-max (recommended); toptheta_pre: "
      "toptheta_options(pre table) = pre-softmax + exact SDC + VMC (running V sum), keep-max; "
      "toptheta_dense_fallback: recommended options, post table with every head declared dense");
#if defined(TOPTHETA_BENCH_PORTABLE)
  benchmark::AddCustomContext("binary", "portable");
#else
  benchmark::AddCustomContext("binary", "native");
#endif
  // Instruction-set flags the binary was compiled with (the kernels dispatch at run time anyway).
#if defined(__AVX512F__)
  benchmark::AddCustomContext("simd", "avx512");
#elif defined(__AVX2__)
  benchmark::AddCustomContext("simd", "avx2");
#else
  benchmark::AddCustomContext("simd", "baseline");
#endif
  toptheta::Isa isa = toptheta::Isa::kScalar;
  const toptheta::Status ist = toptheta::resolve_isa(toptheta::Isa::kAuto, &isa);
  benchmark::AddCustomContext("runtime_isa", ist.ok() ? toptheta::to_string(isa) : ist.to_string());
  benchmark::AddCustomContext("fma_probe_isa", ttbench::fma_probe_isa());

  ExactNameReporter display(benchmark::CreateDefaultDisplayReporter());  // static, not owned
  benchmark::JSONReporter json;
  ExactNameReporter file(&json);
  const bool wrap_file = has_out && out_format == "json";
  benchmark::RunSpecifiedBenchmarks(&display, wrap_file ? &file : nullptr);
  benchmark::Shutdown();
  return 0;
}
