#pragma once
// Replaces the global allocation functions with counting versions. Include in exactly one
// translation unit of a test executable (each tests/test_*.cpp is its own executable).
// `toptheta::testing::allocation_count()` returns the number of operator new / new[] calls so far.

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace toptheta::testing {
inline std::atomic<long long>& allocation_counter() {
  static std::atomic<long long> n{0};
  return n;
}
inline long long allocation_count() { return allocation_counter().load(); }

// Out of line, so GCC does not pair a visible malloc with a visible operator delete and warn
// (-Wmismatched-new-delete false positive).
[[gnu::noinline]] inline void* counted_malloc(std::size_t n) {
  allocation_counter().fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n ? n : 1);
}
[[gnu::noinline]] inline void counted_free(void* p) noexcept { std::free(p); }
}  // namespace toptheta::testing

void* operator new(std::size_t n) {
  if (void* p = toptheta::testing::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = toptheta::testing::counted_malloc(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return toptheta::testing::counted_malloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return toptheta::testing::counted_malloc(n);
}
void operator delete(void* p) noexcept { toptheta::testing::counted_free(p); }
void operator delete[](void* p) noexcept { toptheta::testing::counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { toptheta::testing::counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { toptheta::testing::counted_free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept {
  toptheta::testing::counted_free(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  toptheta::testing::counted_free(p);
}
