#pragma once
/// \file workspace.hpp
/// Caller-provided scratch memory. Kernels never allocate once given a workspace of at least
/// `workspace_size(args, options)` bytes (see attention.hpp).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "types.hpp"

namespace toptheta {

/// Non-owning byte buffer handed to a kernel. Any alignment; the kernels align internally.
struct Workspace {
  std::byte* data = nullptr;  ///< first byte of the buffer (null: no workspace)
  std::size_t bytes = 0;      ///< size of the buffer in bytes
};

/// The calls one workspace must serve, for `max_workspace_size` (attention.hpp) and the task
/// interface's maximum sizes (plan.hpp): an engine's vLLM-style max_model_len,
/// max_num_batched_tokens (per prefill call) and max_num_seqs.
struct WorkspaceLimits {
  /// Longest KV cache of a call: L in tokens, the call's new tokens included (>= 1).
  Index max_tokens = 0;
  /// Most query tokens of one prefill call: T (>= 1; 1 sizes decode steps only). An engine
  /// that prefills in chunks gives its chunk size.
  Index max_query_tokens = 1;
  /// Most sequences of one decode batch (`max_plan_decode_workspace_size`,
  /// `max_decode_batch_workspace_size` in plan.hpp; >= 1). 0, the default, makes those return 0,
  /// so a forgotten field is never a size for one sequence. The single-call sizes ignore it.
  Index max_sequences = 0;
};

namespace detail {

inline constexpr std::size_t kWorkspaceAlign = 64;

/// Where a measure that would pass what a pointer difference holds stops: PTRDIFF_MAX / 2, a
/// size no workspace has, so the call is refused as "workspace too small" instead of a wrapped,
/// small measure letting it overrun.
inline constexpr std::size_t kSaturatedBytes = std::size_t(std::numeric_limits<Index>::max()) / 2;

/// True when `limits` name at least one call and no cache longer than a call takes (2^31 - 1
/// tokens); `max_sequences` is checked by the batch sizes that use it.
inline bool limits_valid(const WorkspaceLimits& limits) {
  return limits.max_tokens >= 1 && limits.max_query_tokens >= 1 &&
         limits.max_tokens <= Index(INT32_MAX);
}

/// Bump allocator over a Workspace. `measure` mode (null base) only counts bytes.
///
/// The kernels measure first (null base) and compare the measure with the caller's workspace
/// before they carve anything, so a workspace that is too small is rejected before a byte is
/// written. As a second line of defence `take` returns null once a request would pass the end of
/// a real buffer (and every later request too), never a pointer outside it.
class Arena {
 public:
  Arena() = default;
  explicit Arena(Workspace ws) : base_(ws.data), capacity_(ws.bytes) {}

  template <class U>
  U* take(Index count) {
    const std::size_t bytes = sizeof(U) * static_cast<std::size_t>(count < 0 ? 0 : count);
    if (!base_) {  // measuring: assume the worst padding, so real use never exceeds the measure
      used_ += kWorkspaceAlign + bytes;
      return nullptr;
    }
    if (overflowed_) return nullptr;
    const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(base_) + used_;
    const std::size_t pad = (kWorkspaceAlign - start % kWorkspaceAlign) % kWorkspaceAlign;
    if (pad + bytes > capacity_ - std::min(used_, capacity_)) {
      overflowed_ = true;
      return nullptr;
    }
    U* p = reinterpret_cast<U*>(base_ + used_ + pad);
    used_ += pad + bytes;
    return p;
  }
  /// Bytes taken so far, including alignment padding.
  std::size_t used() const { return used_; }
  /// True for a measuring arena (null base): take() only counts.
  bool measuring() const { return base_ == nullptr; }
  /// Measuring only (a no-op on a real buffer): counts `times` more repeats of what the
  /// measuring arena `one` counted, exactly as that many repeats of its takes would count
  /// (a measure adds kWorkspaceAlign + bytes per take, whatever came before). Saturates at
  /// kSaturatedBytes instead of wrapping.
  void count_repeats(const Arena& one, Index times) {
    if (base_ || times <= 0) return;
    const std::size_t room = kSaturatedBytes - std::min(used_, kSaturatedBytes);
    if (one.used_ > room / std::size_t(times))
      used_ = std::max(used_, kSaturatedBytes);
    else
      used_ += one.used_ * std::size_t(times);
  }
  /// True when a request did not fit a real buffer (its pointer was null).
  bool overflowed() const { return overflowed_; }

 private:
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  bool overflowed_ = false;
};

/// Carves `count` workers' buffers: `carve_one(arena, i)` carves worker i's (and stores their
/// pointers when the arena is real). A measuring arena measures worker 0 once and counts it
/// `count` times, so measuring is O(1) in the worker count, which the maximum sizes of plan.hpp
/// evaluate for every count up to the thread limit; the workers' takes must not depend on i.
template <class CarveOne>
void carve_workers(Arena& ar, int count, CarveOne&& carve_one) {
  if (ar.measuring()) {
    Arena one;
    carve_one(one, 0);
    ar.count_repeats(one, count);
    return;
  }
  for (int i = 0; i < count; ++i) carve_one(ar, i);
}

}  // namespace detail
}  // namespace toptheta
