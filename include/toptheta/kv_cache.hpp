#pragma once
/// \file kv_cache.hpp
/// The running V sum that V-mean compensation needs (semantics §6; the paper's VMC:
/// vbar_L = mean of V rows 0..L-1), kept at O(d) per appended token, and a small owning KV
/// cache that keeps it.
///
/// `AttentionArgs::v_sum` is the sum of the V rows **before the call's new tokens**; the kernel
/// adds the new rows. An engine with its own cache keeps a `RunningVSum` and, per layer and step:
///   1. writes the new tokens' K/V rows into its cache;
///   2. calls `decode` / `prefill` with `args.v_sum = vsum.data()`;
///   3. calls `vsum.add(new V rows)`.
/// `KvCache` does the bookkeeping itself: right after `append(n rows)`, `v_sum()` is the sum of
/// the rows before those n, ready for a call with T = n new tokens.
///
/// Storage types: float, double, Eigen::half, Eigen::bfloat16 and llama.cpp's q8_0 blocks
/// (`BlockQ8_0`; head_dim a multiple of 32). The sums always add the values **as stored** (the
/// rounded half / bfloat16 values, the dequantised q8_0 values d * q_i), i.e. exactly what the
/// kernels read, so VMC's mean V matches the cache it runs on.

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "quantize.hpp"
#include "status.hpp"
#include "types.hpp"

namespace toptheta {

/// Per KV head, the sum of V rows (in the accumulation type). Row stride `stride()` = head_dim.
/// For a q8_0 cache (T = BlockQ8_0) the rows are q8_0 blocks and the sum adds their dequantised
/// values d * q_i (float), the values the kernels read; head_dim must then be a multiple of 32.
template <class T>
class RunningVSum {
  static_assert(kIsCacheType<T> && !std::is_const_v<T>,
                "toptheta: RunningVSum<T> stores float, double, Eigen::half, Eigen::bfloat16 or "
                "BlockQ8_0 (other element types, e.g. integers, are not supported)");

 public:
  using Acc = acc_t<T>;  ///< type of the sums: float (double for a double cache)
  RunningVSum() = default;
  /// An empty (all-zero) sum for `num_kv_heads` KV heads of `head_dim` values (negative sizes
  /// count as 0).
  RunningVSum(Index num_kv_heads, Index head_dim)
      : heads_(std::max<Index>(num_kv_heads, 0)),
        dim_(std::max<Index>(head_dim, 0)),
        sum_(std::size_t(heads_ * dim_), Acc(0)) {}

  /// Adds the rows of `rows` (n, Hkv, d): O(n Hkv d). Errors: kInvalidArgument when the heads
  /// or dim differ from the sum's, or (q8_0) dim is not a multiple of 32 (nothing is added then).
  Status add(HeadsView<const T> rows) { return update(rows, Acc(1)); }
  /// Subtracts rows that were added before (a truncated or rolled-back cache).
  Status remove(HeadsView<const T> rows) { return update(rows, Acc(-1)); }
  /// Back to the empty sum (zero rows).
  void reset() {
    std::fill(sum_.begin(), sum_.end(), Acc(0));
    rows_ = 0;
  }

  /// (Hkv, d) sums, row stride stride(): what AttentionArgs::v_sum takes.
  const Acc* data() const { return sum_.data(); }
  /// Items between the KV heads' rows of data(): head_dim (AttentionArgs::v_sum_stride).
  Index stride() const { return dim_; }
  /// Number of rows in the sum (added minus removed).
  Index rows() const { return rows_; }
  /// KV heads Hkv of the sum.
  Index num_kv_heads() const { return heads_; }
  /// Values per row (head_dim d).
  Index head_dim() const { return dim_; }

 private:
  Status update(HeadsView<const T> rows, Acc sign) {
    if (rows.heads != heads_ || rows.dim != dim_)
      return Status::invalid_argument("RunningVSum: rows have shape " + shape_string(rows) +
                                      " but the sum is for (n, " + std::to_string(heads_) + ", " +
                                      std::to_string(dim_) + ")");
    if (dim_ % kValuesPerItem<T> != 0)
      return Status::invalid_argument(std::string("RunningVSum: ") + dtype_name<T>() +
                                      " rows need head_dim a multiple of " +
                                      std::to_string(kValuesPerItem<T>) + ", got " +
                                      std::to_string(dim_));
    if (sign < 0 && rows.tokens > rows_)
      return Status::out_of_range("RunningVSum: removing " + std::to_string(rows.tokens) +
                                  " rows from a sum of " + std::to_string(rows_));
    for (Index t = 0; t < rows.tokens; ++t)
      for (Index g = 0; g < heads_; ++g) {
        const T* r = rows.row(t, g);
        Acc* s = sum_.data() + g * dim_;
        for (Index i = 0; i < dim_; ++i) s[i] += sign * Acc(value_at(r, i));
      }
    rows_ += sign > 0 ? rows.tokens : -rows.tokens;
    if (rows_ == 0) std::fill(sum_.begin(), sum_.end(), Acc(0));  // no rounding residue
    return {};
  }

  Index heads_ = 0, dim_ = 0, rows_ = 0;
  std::vector<Acc> sum_;
};

/// Layout of KvCache's buffers.
enum class KvLayout {
  kTokenMajor,  ///< [token][kv_head][dim]
  kHeadMajor,   ///< [kv_head][capacity][dim]
};

/// Shape of a KvCache.
struct KvCacheOptions {
  Index num_kv_heads = 0;  ///< Hkv
  Index head_dim = 0;      ///< d, in values (a multiple of 32 for q8_0)
  Index capacity = 0;  ///< maximum number of tokens
  KvLayout layout = KvLayout::kTokenMajor;  ///< token-major (llama.cpp) or head-major
};

/// A small owning KV cache for one layer, token-major `[token][kv_head][dim]` (llama.cpp) or
/// head-major `[kv_head][capacity][dim]`; `keys()` / `values()` are strided views over the valid
/// tokens, ready for `AttentionArgs`. Storage is allocated at construction: `append` never
/// allocates and fails with a Status when the capacity is exhausted.
///
/// T is float, double, Eigen::half, Eigen::bfloat16 or BlockQ8_0 (llama.cpp's q8_0: each row of
/// head_dim values is head_dim / 32 blocks, and the views count their strides in blocks).
/// `append` takes rows of T itself (copied) or, for the half, bfloat16 and q8_0 caches, float
/// rows, converted as they are stored: rounded to half / bfloat16, or quantised with
/// `quantize_row_q8_0` (a block holding a non-finite value reads back as NaN, see
/// quantize.hpp). Queries stay float: `AttentionArgs<T, float>` over `keys()` / `values()`.
///
/// Options are checked at construction (`validate`): a q8_0 cache whose head_dim is not a
/// multiple of 32, or a negative size, leaves the cache empty with `status()` saying why, and
/// every `append` returns that error.
template <class T>
class KvCache {
  static_assert(kIsCacheType<T> && !std::is_const_v<T>,
                "toptheta: KvCache<T> stores float, double, Eigen::half, Eigen::bfloat16 or "
                "BlockQ8_0 (other element types, e.g. integers, are not supported)");

 public:
  using Acc = acc_t<T>;  ///< type of the running V sum

  /// Ok when a cache of storage T can hold these options: sizes >= 0 and, for q8_0, head_dim a
  /// multiple of 32. The message names the option and the storage type.
  static Status validate(const KvCacheOptions& o) {
    if (o.num_kv_heads < 0 || o.head_dim < 0 || o.capacity < 0)
      return Status::invalid_argument(
          "KvCache: num_kv_heads " + std::to_string(o.num_kv_heads) + ", head_dim " +
          std::to_string(o.head_dim) + " and capacity " + std::to_string(o.capacity) +
          " must be >= 0");
    if (o.head_dim % kValuesPerItem<T> != 0)
      return Status::invalid_argument(
          std::string("KvCache: a ") + dtype_name<T>() + " cache stores blocks of " +
          std::to_string(kValuesPerItem<T>) + " values, so head_dim must be a multiple of " +
          std::to_string(kValuesPerItem<T>) + "; got head_dim " + std::to_string(o.head_dim));
    return {};
  }

  KvCache() = default;
  /// A cache for `o` (allocates capacity x Hkv x d of K and of V). Invalid options leave it
  /// empty with status() saying why.
  explicit KvCache(const KvCacheOptions& o) : o_(o), status_(validate(o)) {
    if (!status_.ok()) return;
    k_.resize(std::size_t(o.capacity * o.num_kv_heads * row_items()));
    v_.resize(k_.size());
    sum_ = RunningVSum<T>(o.num_kv_heads, o.head_dim);
  }

  /// The options the cache was made with.
  const KvCacheOptions& options() const { return o_; }
  /// Why the options were rejected (ok when they were not): what every append returns then.
  const Status& status() const { return status_; }
  /// Tokens held.
  Index size() const { return size_; }
  /// Tokens the cache can hold (0 when the options were rejected).
  Index capacity() const { return status_.ok() ? o_.capacity : 0; }

  /// Appends `k_rows.tokens` tokens (views of shape (n, Hkv, d), any strides) of the cache's
  /// own type T (copied as they are). The rows of the previous append enter the running V sum
  /// now, so `v_sum()` covers the rows before these.
  Status append(HeadsView<const T> k_rows, HeadsView<const T> v_rows) {
    return append_rows(k_rows, v_rows);
  }
  /// The same for float rows into a half, bfloat16 or q8_0 cache: each row is rounded to T or
  /// quantised to q8_0 blocks as it is stored.
  template <class S, std::enable_if_t<std::is_same_v<S, Acc> && !std::is_same_v<S, T>, int> = 0>
  Status append(HeadsView<const S> k_rows, HeadsView<const S> v_rows) {
    return append_rows(k_rows, v_rows);
  }

  /// Drops tokens from the end (e.g. rejected speculative tokens); the V sum is updated.
  Status truncate(Index new_size) {
    if (new_size < 0 || new_size > size_)
      return Status::out_of_range("truncate to " + std::to_string(new_size) + " of " +
                                  std::to_string(size_) + " tokens");
    const Index summed = size_ - pending_;
    if (new_size < summed) {
      TOPTHETA_RETURN_IF_ERROR(sum_.remove(values().slice_tokens(new_size, summed - new_size)));
      pending_ = 0;
    } else {
      pending_ = new_size - summed;
    }
    size_ = new_size;
    return {};
  }
  /// Drops every token and zeroes the running sum.
  void clear() {
    size_ = pending_ = 0;
    sum_.reset();
  }

  /// (size, Hkv, d) views over the valid tokens (strides in items of T: blocks for q8_0).
  HeadsView<const T> keys() const { return view(k_); }
  /// The V rows, like keys().
  HeadsView<const T> values() const { return view(v_); }
  /// (Hkv, d) running sums of the V rows before the last append (rows 0..size-pending-1), as
  /// stored (rounded / dequantised), row stride head_dim: `AttentionArgs::v_sum` for a call
  /// whose new tokens are that append.
  const Acc* v_sum() const { return sum_.data(); }
  /// Tokens of the last append, not yet in v_sum().
  Index pending() const { return pending_; }

 private:
  Index row_items() const { return o_.head_dim / kValuesPerItem<T>; }

  template <class S>
  Status append_rows(HeadsView<const S> k_rows, HeadsView<const S> v_rows) {
    if (!status_.ok()) return status_;
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
    fold_pending();
    const HeadsView<T> kd = mutable_view(k_, size_ + k_rows.tokens),
                       vd = mutable_view(v_, size_ + k_rows.tokens);
    for (Index t = 0; t < k_rows.tokens; ++t)
      for (Index g = 0; g < o_.num_kv_heads; ++g) {
        store_row(k_rows.row(t, g), kd.row(size_ + t, g));
        store_row(v_rows.row(t, g), vd.row(size_ + t, g));
      }
    size_ += k_rows.tokens;
    pending_ = k_rows.tokens;
    return {};
  }
  template <class S>
  void store_row(const S* src, T* dst) const {
    if constexpr (std::is_same_v<S, T>) {
      std::copy_n(src, row_items(), dst);
    } else if constexpr (std::is_same_v<T, BlockQ8_0>) {
      (void)quantize_row_q8_0(src, dst, o_.head_dim);  // head_dim % 32 == 0 (validate)
    } else {
      for (Index i = 0; i < o_.head_dim; ++i) dst[i] = static_cast<T>(src[i]);
    }
  }
  void fold_pending() {
    if (pending_ > 0) (void)sum_.add(values().slice_tokens(size_ - pending_, pending_));
    pending_ = 0;
  }
  HeadsView<T> mutable_view(std::vector<T>& buf, Index tokens) {
    return o_.layout == KvLayout::kTokenMajor
               ? HeadsView<T>::token_major(buf.data(), tokens, o_.num_kv_heads, o_.head_dim)
               : HeadsView<T>::head_major(buf.data(), tokens, o_.num_kv_heads, o_.head_dim,
                                          o_.capacity);
  }
  HeadsView<const T> view(const std::vector<T>& buf) const {
    return o_.layout == KvLayout::kTokenMajor
               ? HeadsView<const T>::token_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim)
               : HeadsView<const T>::head_major(buf.data(), size_, o_.num_kv_heads, o_.head_dim,
                                                o_.capacity);
  }

  KvCacheOptions o_;
  Status status_;
  std::vector<T> k_, v_;
  RunningVSum<T> sum_;
  Index size_ = 0, pending_ = 0;
};

}  // namespace toptheta
