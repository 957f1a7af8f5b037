#pragma once
/// \file bench_paired.hpp
/// Paired timing (decode_paired, prefill_paired): every (mode, thread count) entry of one
/// configuration in one timed loop, the ratio of two entries taken within each round (calls
/// milliseconds apart) and reported as its median over the rounds. This cancels the slow drift of
/// a shared machine's speed, which moves separate benchmarks of one configuration, run seconds
/// apart, by tens of percent against each other.

#include "bench_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace ttbench {

/// The thread counts a paired benchmark runs in each round.
inline constexpr int kPairedThreads[] = {1, 2};
inline constexpr int kNumPairedThreads = int(sizeof(kPairedThreads) / sizeof(kPairedThreads[0]));

/// The q-quantile (0..1, linear interpolation) of `x`, which it sorts.
inline double quantile(std::vector<double>& x, double q) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const double pos = q * double(x.size() - 1);
  const std::size_t i = std::size_t(pos);
  const double f = pos - double(i);
  return i + 1 < x.size() ? x[i] * (1 - f) + x[i + 1] * f : x[i];
}

/// The timed loop and counters of a paired benchmark over `modes` (num_modes of them, Mode::kDense
/// among them) on each of kPairedThreads. Entry e is mode modes[e % num_modes] on
/// kPairedThreads[e / num_modes] threads; call(e) runs it once (untimed work such as rotating
/// cache copies is the caller's). Each iteration (a round) calls each entry once and times each
/// call alone (steady_clock). Order within a round: the entries of one thread count, then those
/// of the other, each group in a fresh pseudo-random order (fixed seed) and the groups
/// alternating which goes first, so the thread count changes once per round; the first call
/// after that change is preceded by an untimed call of itself. Measured with decode_paired's
/// every-key-kept mode, which does dense's work, as the control (median of t_dense /
/// t_every_key_kept, L = 16k and 64k, f16, both layouts, two runs each, 8 values per thread
/// count): a fixed rotation, where every entry always follows the same one, read 0.94-1.04 on
/// 1 thread and 1.01-1.11 on 2 (a 2-thread call right after a 1-thread one ran slower); adding
/// only the untimed call at the switches, 0.94-1.04 and 0.99-1.06; this order, 0.99-1.00 and
/// 0.98-1.00.
/// Counters, with <t> the thread count: t_<mode>_t<t> (median seconds per call), x_<mode>_t<t>
/// (median over rounds of t_dense / t_mode at the same thread count, with x25_ / x75_ its
/// quartiles), k_<mode>_t<t> for the Top-θ modes when top-k is among the modes (median of
/// t_topk / t_mode), s_<mode> (median of t(1 thread) / t(2 threads)), rounds. The iteration time
/// is the round's timed calls (use UseManualTime).
template <class Call>
void run_paired(benchmark::State& state, const Mode* modes, int num_modes, Call&& call) {
  const int num_entries = num_modes * kNumPairedThreads;
  std::vector<std::vector<double>> times(static_cast<std::size_t>(num_entries));
  for (auto& t : times) t.reserve(std::size_t(state.max_iterations));
  std::mt19937 rng(20261202);
  std::vector<std::size_t> order(static_cast<std::size_t>(num_entries));
  std::int64_t round = 0;
  int prev_threads = 0;
  for (auto _ : state) {
    for (int g = 0; g < kNumPairedThreads; ++g) {  // group g of the round: thread count index gi
      const int gi = int((round + g) % kNumPairedThreads);
      auto first = order.begin() + g * num_modes;
      for (int m = 0; m < num_modes; ++m) first[m] = std::size_t(gi * num_modes + m);
      std::shuffle(first, first + num_modes, rng);
    }
    double round_seconds = 0;
    for (const std::size_t e : order) {
      const int threads = kPairedThreads[e / std::size_t(num_modes)];
      if (threads != prev_threads) {  // untimed call at the thread-count switch
        prev_threads = threads;
        call(e);
      }
      const auto t0 = std::chrono::steady_clock::now();
      call(e);
      const double dt =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      times[e].push_back(dt);
      round_seconds += dt;
    }
    ++round;
    state.SetIterationTime(round_seconds);
  }

  const std::size_t rounds = times[0].size();
  auto ratios = [&](std::size_t num, std::size_t den) {
    std::vector<double> r(rounds);
    for (std::size_t i = 0; i < rounds; ++i) r[i] = times[num][i] / times[den][i];
    return r;
  };
  const auto index_of = [&](Mode m) {
    for (int i = 0; i < num_modes; ++i)
      if (modes[i] == m) return i;
    return -1;
  };
  const int dense_i = index_of(Mode::kDense), topk_i = index_of(Mode::kTopK);
  state.counters["rounds"] = double(rounds);
  for (std::size_t e = 0; e < std::size_t(num_entries); ++e) {
    const Mode m = modes[e % std::size_t(num_modes)];
    const std::size_t ti = e / std::size_t(num_modes), base = ti * std::size_t(num_modes);
    const std::string name = std::string(mode_name(m)) + "_t" + std::to_string(kPairedThreads[ti]);
    std::vector<double> t = times[e];
    state.counters["t_" + name] = quantile(t, 0.5);
    if (ti == 0) {
      std::vector<double> sp = ratios(e, e + std::size_t(num_modes));
      state.counters[std::string("s_") + mode_name(m)] = quantile(sp, 0.5);
    }
    if (m == Mode::kDense || dense_i < 0) continue;
    std::vector<double> x = ratios(base + std::size_t(dense_i), e);
    state.counters["x_" + name] = quantile(x, 0.5);
    state.counters["x25_" + name] = quantile(x, 0.25);
    state.counters["x75_" + name] = quantile(x, 0.75);
    if ((m == Mode::kTopTheta || m == Mode::kTopThetaPre) && topk_i >= 0) {
      std::vector<double> k = ratios(base + std::size_t(topk_i), e);
      state.counters["k_" + name] = quantile(k, 0.5);
    }
  }
}

}  // namespace ttbench
