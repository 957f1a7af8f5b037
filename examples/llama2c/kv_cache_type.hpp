#pragma once
/// \file kv_cache_type.hpp
/// The storage types of the runner's KV caches (`--kv-cache`).

#include <string>

namespace llama2c {

/// Storage type of the runner's KV caches.
enum class KvCacheType { kF32, kF16, kBf16, kQ8_0 };

inline const char* to_string(KvCacheType t) {
  switch (t) {
    case KvCacheType::kF32: return "f32";
    case KvCacheType::kF16: return "f16";
    case KvCacheType::kBf16: return "bf16";
    case KvCacheType::kQ8_0: return "q8_0";
  }
  return "?";
}
/// "f32", "f16", "bf16" or "q8_0"; false for anything else.
inline bool parse_kv_cache_type(const std::string& s, KvCacheType* out) {
  for (KvCacheType t : {KvCacheType::kF32, KvCacheType::kF16, KvCacheType::kBf16, KvCacheType::kQ8_0})
    if (s == to_string(t)) {
      *out = t;
      return true;
    }
  return false;
}
/// Values per storage item of a cache type (q8_0: blocks of 32): head_dim must be a multiple.
inline int kv_cache_block(KvCacheType t) { return t == KvCacheType::kQ8_0 ? 32 : 1; }

}  // namespace llama2c
