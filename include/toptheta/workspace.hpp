#pragma once
/// \file workspace.hpp
/// Caller-provided scratch memory. Kernels never allocate once given a workspace of at least
/// `workspace_size(args, options)` bytes (see attention.hpp).

#include <cstddef>
#include <cstdint>

#include "types.hpp"

namespace toptheta {

/// Non-owning byte buffer handed to a kernel. Any alignment; the kernels align internally.
struct Workspace {
  std::byte* data = nullptr;
  std::size_t bytes = 0;
};

namespace detail {

inline constexpr std::size_t kWorkspaceAlign = 64;

/// Bump allocator over a Workspace. `measure` mode (null base) only counts bytes.
class Arena {
 public:
  Arena() = default;
  explicit Arena(Workspace ws) : base_(ws.data), capacity_(ws.bytes) {}

  template <class U>
  U* take(Index count) {
    const std::size_t bytes = sizeof(U) * static_cast<std::size_t>(count < 0 ? 0 : count);
    const std::uintptr_t start = reinterpret_cast<std::uintptr_t>(base_) + used_;
    // Measuring (null base) assumes the worst padding, so real use never exceeds the measure.
    const std::size_t pad = base_ ? (kWorkspaceAlign - start % kWorkspaceAlign) % kWorkspaceAlign
                                  : kWorkspaceAlign;
    const std::size_t need = pad + bytes;
    U* p = base_ ? reinterpret_cast<U*>(base_ + used_ + pad) : nullptr;
    used_ += need;
    return p;
  }
  /// Bytes taken so far, including alignment padding.
  std::size_t used() const { return used_; }
  bool overflowed() const { return base_ != nullptr && used_ > capacity_; }

 private:
  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
};

}  // namespace detail
}  // namespace toptheta
