#pragma once
/// \file kv_cache.hpp
/// `KvCache<T>`: a small owning KV cache for one layer that keeps the running sum of V rows per
/// KV head, so V-mean compensation costs O(d) per appended token (DESIGN.md section 2, step 5).
///
/// Layout is token-major `[token][kv_head][dim]` (llama.cpp style) or head-major
/// `[kv_head][capacity][dim]`; `keys()` / `values()` return strided views over the valid tokens,
/// ready for `AttentionArgs`. Storage grows only on `reserve` / construction: `append` never
/// allocates and fails with a Status when the capacity is exhausted.

#include <algorithm>
#include <vector>

#include "detail/convert.hpp"
#include "status.hpp"
#include "types.hpp"

namespace toptheta {

enum class KvLayout {
  kTokenMajor,  ///< [token][kv_head][dim]
  kHeadMajor,   ///< [kv_head][capacity][dim]
};

struct KvCacheOptions {
  Index num_kv_heads = 0;
  Index head_dim = 0;
  Index capacity = 0;  ///< maximum number of tokens
  KvLayout layout = KvLayout::kTokenMajor;
};

template <class T>
class KvCache {
  static_assert(kIsStorageType<T>,
                "toptheta: KvCache<T> stores float, double, Eigen::half or Eigen::bfloat16 "
                "(other element types, e.g. integers, are not supported)");

 public:
  using Acc = acc_t<T>;

  KvCache() = default;
  explicit KvCache(const KvCacheOptions& o)
      : o_(o),
        k_(std::size_t(std::max<Index>(o.capacity * o.num_kv_heads * o.head_dim, 0))),
        v_(k_.size()),
        v_sum_(std::size_t(std::max<Index>(o.num_kv_heads * o.head_dim, 0)), Acc(0)) {}

  const KvCacheOptions& options() const { return o_; }
  Index size() const { return size_; }
  Index capacity() const { return o_.capacity; }

  /// Appends `k_rows.tokens` tokens (views of shape (n, Hkv, d), any strides).
  Status append(HeadsView<const T> k_rows, HeadsView<const T> v_rows) {
    if (k_rows.heads != o_.num_kv_heads || k_rows.dim != o_.head_dim ||
        v_rows.heads != o_.num_kv_heads || v_rows.dim != o_.head_dim ||
        v_rows.tokens != k_rows.tokens)
      return Status::invalid_argument("append: k " + shape_string(k_rows) + " and v " +
                                      shape_string(v_rows) + " do not match the cache's (n, " +
                                      std::to_string(o_.num_kv_heads) + ", " +
                                      std::to_string(o_.head_dim) + ")");
    if (size_ + k_rows.tokens > o_.capacity)
      return Status::out_of_range("append: " + std::to_string(k_rows.tokens) +
                                  " tokens do not fit (size " + std::to_string(size_) +
                                  ", capacity " + std::to_string(o_.capacity) + ")");
    const HeadsView<T> kd = mutable_view(k_), vd = mutable_view(v_);
    for (Index t = 0; t < k_rows.tokens; ++t)
      for (Index g = 0; g < o_.num_kv_heads; ++g) {
        std::copy_n(k_rows.row(t, g), o_.head_dim, kd.row(size_ + t, g));
        const T* vr = v_rows.row(t, g);
        std::copy_n(vr, o_.head_dim, vd.row(size_ + t, g));
        Acc* sum = v_sum_.data() + g * o_.head_dim;
        for (Index i = 0; i < o_.head_dim; ++i) sum[i] += detail::to_acc<Acc>(vr[i]);
      }
    size_ += k_rows.tokens;
    return {};
  }

  /// Drops tokens from the end (e.g. rejected speculative tokens); the V sum is updated.
  Status truncate(Index new_size) {
    if (new_size < 0 || new_size > size_)
      return Status::out_of_range("truncate to " + std::to_string(new_size) + " of " +
                                  std::to_string(size_) + " tokens");
    const HeadsView<T> vd = mutable_view(v_);
    for (Index t = new_size; t < size_; ++t)
      for (Index g = 0; g < o_.num_kv_heads; ++g) {
        Acc* sum = v_sum_.data() + g * o_.head_dim;
        for (Index i = 0; i < o_.head_dim; ++i) sum[i] -= detail::to_acc<Acc>(vd.row(t, g)[i]);
      }
    size_ = new_size;
    if (size_ == 0) std::fill(v_sum_.begin(), v_sum_.end(), Acc(0));
    return {};
  }
  void clear() {
    size_ = 0;
    std::fill(v_sum_.begin(), v_sum_.end(), Acc(0));
  }

  /// (size, Hkv, d) views over the valid tokens.
  HeadsView<const T> keys() const { return view(k_); }
  HeadsView<const T> values() const { return view(v_); }
  /// (Hkv, d) running sums of the V rows 0..size-1, row stride d.
  const Acc* v_sum() const { return v_sum_.data(); }

 private:
  HeadsView<T> mutable_view(std::vector<T>& buf) {
    return o_.layout == KvLayout::kTokenMajor
               ? HeadsView<T>::token_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim)
               : HeadsView<T>::head_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim,
                                          o_.capacity);
  }
  HeadsView<const T> view(const std::vector<T>& buf) const {
    return o_.layout == KvLayout::kTokenMajor
               ? HeadsView<const T>::token_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim)
               : HeadsView<const T>::head_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim,
                                                o_.capacity);
  }

  KvCacheOptions o_;
  std::vector<T> k_, v_;
  std::vector<Acc> v_sum_;
  Index size_ = 0;
};

}  // namespace toptheta
