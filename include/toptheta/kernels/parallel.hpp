#pragma once
/// \file kernels/parallel.hpp
/// How a kernel call is split into work: a call is a short sequence of *stages*; each stage is a
/// list of independent *tasks*; a stage starts when the previous one has finished. Every value a
/// call computes, and the order of every sum, depends only on the shapes (never on the thread
/// count or on which task computes it), so results are bit-identical for any number of threads.
/// The split into tasks may follow the thread count (DecodeCall's per-group tasks when the
/// threads divide the KV heads), never the arithmetic.
/// `run_stages` runs a call with OpenMP (or on the calling thread); an engine with its own
/// thread pool runs the same tasks itself (attention.hpp, `AttentionPlan`).

#include <algorithm>

#include "../config.hpp"
#include "../types.hpp"

namespace toptheta::detail {

/// Multiply-adds a thread must get before a call goes parallel: below it, opening an OpenMP
/// region costs more than it saves (a few microseconds per call, much more on busy cores).
inline constexpr double kMinMacsPerThread = 1 << 18;

/// Threads for a call of `macs` multiply-adds split into at most `items` independent tasks per
/// stage. The arithmetic never depends on this number (a call's split into tasks may).
inline int call_threads(int requested, double macs, Index items) {
  const Index by_work = std::max<Index>(1, Index(macs / kMinMacsPerThread));
  return int(std::max<Index>(1, std::min({Index(resolve_threads(requested)), items, by_work})));
}

/// Runs `call` (num_stages(), num_tasks(stage), run_task(stage, task, worker), each stage
/// after the previous) on `threads` threads: OpenMP when compiled with it, else serially.
/// `worker` < threads indexes per-thread scratch.
template <class Call>
void run_stages(Call& call, int threads) {
  const int stages = call.num_stages();
#if TOPTHETA_HAS_OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int worker = omp_get_thread_num();
      for (int s = 0; s < stages; ++s) {
        const Index n = call.num_tasks(s);
        const bool dynamic = call.dynamic_schedule(s);
        if (dynamic) {
#pragma omp for schedule(dynamic, 1)
          for (Index t = 0; t < n; ++t) call.run_task(s, t, worker);
        } else {
#pragma omp for schedule(static)
          for (Index t = 0; t < n; ++t) call.run_task(s, t, worker);
        }
      }
    }
    return;
  }
#endif
  (void)threads;
  for (int s = 0; s < stages; ++s) {
    const Index n = call.num_tasks(s);
    for (Index t = 0; t < n; ++t) call.run_task(s, t, 0);
  }
}

}  // namespace toptheta::detail
