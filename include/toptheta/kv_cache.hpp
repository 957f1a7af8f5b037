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
#include <cmath>
#include <limits>
#include <new>
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
///
/// `data()` is, element by element, the IEEE sum of the rows currently in the sum (semantics §7:
/// a non-finite V row makes vbar non-finite while it is in the sum), and `remove` undoes `add`
/// without a trace: the +inf, -inf and NaN values are counted, so rolling back a row that held an
/// fp16 overflow (inf) leaves no NaN (inf - inf) behind; the finite values are summed in
/// double-double (a double and the exact rounding error of each addition, Knuth's TwoSum: about
/// 106 bits), so a row of 1e20 added and removed next to rows of 1 leaves their sum, where a
/// double sum left 0. Only lo's own roundings remain after a removal: over n additions at most
/// n^2 * 2^-106 times the largest magnitude the element held (n = 65536: 2^-74 of it), so below
/// float precision while that magnitude is under 2^50 (1e15) times the sum that remains, and in
/// practice far beyond (3 rows around a 1e20 one: none). Finite values of magnitude >= 2^600
/// (double caches only) are summed apart, scaled by 2^-600, so no addition overflows: the
/// finite sum is inf only when the sum itself overflows Acc (rows 1e308, 1e308, -1e308 give
/// 1e308 in any order), and removing rows brings it back. Memory: Hkv * d * (sizeof(Acc) + 56)
/// bytes.
template <class T>
class RunningVSum {
  static_assert(kIsCacheType<T> && !std::is_const_v<T>,
                "toptheta: RunningVSum<T> stores float, double, Eigen::half, Eigen::bfloat16 or "
                "BlockQ8_0 (other element types, e.g. integers, are not supported)");

 public:
  using Acc = acc_t<T>;  ///< type of the sums: float (double for a double cache)
  RunningVSum() = default;
  /// An empty (all-zero) sum for `num_kv_heads` KV heads of `head_dim` values (negative sizes
  /// count as 0). Sizes whose product cannot be addressed (kInvalidArgument) or buffers the
  /// allocator cannot provide (kFailedPrecondition) leave the sum empty with status() saying
  /// why, and every add / remove returns that error; no exception leaves the constructor.
  RunningVSum(Index num_kv_heads, Index head_dim)
      : heads_(std::max<Index>(num_kv_heads, 0)), dim_(std::max<Index>(head_dim, 0)) {
    const std::size_t max_items =
        std::min(std::vector<Acc>().max_size(), std::vector<Parts>().max_size());
    if (double(heads_) * double(dim_) > double(max_items) / 2) {
      status_ = Status::invalid_argument("RunningVSum: num_kv_heads " + std::to_string(heads_) +
                                         " x head_dim " + std::to_string(dim_) +
                                         " values is too large to address");
    } else {
      try {
        sum_.assign(std::size_t(heads_) * std::size_t(dim_), Acc(0));
        parts_.resize(sum_.size());
        return;
      } catch (const std::bad_alloc&) {
        status_ = Status::failed_precondition(
            "RunningVSum: could not allocate " +
            std::to_string(std::size_t(heads_) * std::size_t(dim_) * (sizeof(Acc) + sizeof(Parts))) +
            " bytes for num_kv_heads " + std::to_string(heads_) + " x head_dim " +
            std::to_string(dim_));
      }
    }
    sum_ = {};
    parts_ = {};
  }

  /// Why the sizes were rejected (ok when they were not): what every add / remove returns then.
  const Status& status() const { return status_; }

  /// Adds the rows of `rows` (n, Hkv, d): O(n Hkv d). Errors (nothing is added then):
  /// kInvalidArgument when the heads or dim differ from the sum's, n < 0, the data pointer is
  /// null with n > 0, or (q8_0) dim is not a multiple of 32.
  Status add(HeadsView<const T> rows) { return update(rows, 1); }
  /// Subtracts rows that were added before (a truncated or rolled-back cache). Errors as `add`,
  /// and kOutOfRange when more rows are removed than the sum holds.
  Status remove(HeadsView<const T> rows) { return update(rows, -1); }
  /// Back to the empty sum (zero rows).
  void reset() {
    std::fill(sum_.begin(), sum_.end(), Acc(0));
    std::fill(parts_.begin(), parts_.end(), Parts{});
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
  // One element of the sum: the finite values' sum hi + lo (double-double) and the count of
  // each non-finite kind.
  struct Parts {
    double hi = 0.0, lo = 0.0;
    // Finite values of magnitude >= kBig = 2^600 (only a double cache has them), scaled by
    // 2^-600 (exact), so that no TwoSum overflows: an overflowed hi made lo NaN (inf - inf),
    // and rows of 1e308 gave NaN instead of IEEE's inf, for good (remove could not undo it).
    double big_hi = 0.0, big_lo = 0.0;
    Index pos_inf = 0, neg_inf = 0, nan = 0;
    static constexpr double kBig = 0x1p600, kInvBig = 0x1p-600;  // exact powers of two
    static void two_sum(double& h, double& l, double y) {
      // TwoSum (Knuth): s = fl(h + y) and its exact rounding error, kept in l.
      const double s = h + y, yb = s - h;
      l += (h - (s - yb)) + (y - yb);
      h = s;
    }
    void add(double x, int sign) {
      if (std::isnan(x)) nan += sign;
      else if (x == std::numeric_limits<double>::infinity()) pos_inf += sign;
      else if (x == -std::numeric_limits<double>::infinity()) neg_inf += sign;
      else {
        const double y = sign > 0 ? x : -x;
        if (std::fabs(y) >= kBig)
          two_sum(big_hi, big_lo, y * kInvBig);
        else
          two_sum(hi, lo, y);
      }
    }
    // The IEEE sum of the values held: NaN with a NaN among them or +inf and -inf both, else
    // the infinity they hold, else the finite sum hi + lo rounded to Acc (it may overflow to
    // inf as an Acc sum would). A negative count (a value removed that was never added) is NaN.
    Acc value() const {
      if (nan != 0 || pos_inf < 0 || neg_inf < 0 || (pos_inf > 0 && neg_inf > 0))
        return std::numeric_limits<Acc>::quiet_NaN();
      if (pos_inf > 0) return std::numeric_limits<Acc>::infinity();
      if (neg_inf > 0) return -std::numeric_limits<Acc>::infinity();
      const double big = big_hi + big_lo;
      return Acc(big != 0.0 ? big * kBig + (hi + lo) : hi + lo);
    }
  };

  Status update(HeadsView<const T> rows, int sign) {
    const char* what = sign > 0 ? "RunningVSum::add" : "RunningVSum::remove";
    if (!status_.ok()) return status_;
    if (rows.heads != heads_ || rows.dim != dim_)
      return Status::invalid_argument(std::string(what) + ": rows have shape " +
                                      shape_string(rows) + " but the sum is for (n, " +
                                      std::to_string(heads_) + ", " + std::to_string(dim_) + ")");
    if (rows.tokens < 0)
      return Status::invalid_argument(std::string(what) + ": rows have " +
                                      std::to_string(rows.tokens) + " tokens");
    if (rows.data == nullptr && rows.tokens > 0 && heads_ > 0 && dim_ > 0)
      return Status::invalid_argument(std::string(what) + ": rows " + shape_string(rows) +
                                      " have a null data pointer");
    if (dim_ % kValuesPerItem<T> != 0)
      return Status::invalid_argument(std::string(what) + ": " + dtype_name<T>() +
                                      " rows need head_dim a multiple of " +
                                      std::to_string(kValuesPerItem<T>) + ", got " +
                                      std::to_string(dim_));
    if (sign < 0 && rows.tokens > rows_)
      return Status::out_of_range(std::string(what) + ": removing " +
                                  std::to_string(rows.tokens) + " rows from a sum of " +
                                  std::to_string(rows_));
    for (Index t = 0; t < rows.tokens; ++t)
      for (Index g = 0; g < heads_; ++g) {
        const T* r = rows.row(t, g);
        Parts* e = parts_.data() + g * dim_;
        for (Index i = 0; i < dim_; ++i) e[i].add(double(value_at(r, i)), sign);
      }
    rows_ += sign > 0 ? rows.tokens : -rows.tokens;
    if (rows_ == 0) {  // empty: all zero (counts of values removed but never added too)
      reset();
      return {};
    }
    for (std::size_t i = 0; i < sum_.size(); ++i) sum_[i] = parts_[i].value();
    return {};
  }

  Index heads_ = 0, dim_ = 0, rows_ = 0;
  Status status_;
  std::vector<Acc> sum_;    // published: parts_[i].value()
  std::vector<Parts> parts_;
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
/// multiple of 32, a negative size or sizes whose product cannot be addressed leave the cache
/// empty with `status()` saying why (kInvalidArgument), and every `append` returns that error;
/// so does a cache whose buffers could not be allocated (kFailedPrecondition).
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
    // capacity x Hkv x row items of T, for K and for V, must be addressable (the product is
    // formed in Index, and the buffers' bytes in size_t).
    const Index row = o.head_dim / kValuesPerItem<T>;
    const std::size_t max_items = std::min<std::size_t>(
        std::size_t(std::numeric_limits<Index>::max()), std::vector<T>().max_size());
    const double items = double(o.capacity) * double(o.num_kv_heads) * double(row);
    if (items > double(max_items) / 2)
      return Status::invalid_argument(
          "KvCache: capacity " + std::to_string(o.capacity) + " x num_kv_heads " +
          std::to_string(o.num_kv_heads) + " x head_dim " + std::to_string(o.head_dim) +
          " values is too large to address");
    return {};
  }

  KvCache() = default;
  /// A cache for `o` (allocates capacity x Hkv x d of K and of V). Invalid options, or
  /// buffers the allocator cannot provide, leave it empty with status() saying why (no
  /// exception leaves the constructor).
  explicit KvCache(const KvCacheOptions& o) : o_(o), status_(validate(o)) {
    if (!status_.ok()) return;
    const std::size_t items = std::size_t(o.capacity) * std::size_t(o.num_kv_heads) *
                              std::size_t(row_items());  // no overflow: validate
    try {
      k_.resize(items);
      v_.resize(items);
      sum_ = RunningVSum<T>(o.num_kv_heads, o.head_dim);
      if (!sum_.status().ok()) {  // Hkv x d, which validate() does not bound at capacity 0
        k_ = {};
        v_ = {};
        status_ = sum_.status();
      }
    } catch (const std::bad_alloc&) {
      k_ = {};
      v_ = {};
      status_ = Status::failed_precondition(
          "KvCache: could not allocate " + std::to_string(2 * items * sizeof(T)) +
          " bytes for K and V (capacity " + std::to_string(o.capacity) + ", num_kv_heads " +
          std::to_string(o.num_kv_heads) + ", head_dim " + std::to_string(o.head_dim) + ")");
    }
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
  /// now, so `v_sum()` covers the rows before these. Errors (nothing is appended then):
  /// kInvalidArgument for shapes that differ from the cache's, n < 0 or a null data pointer with
  /// n > 0; kOutOfRange when the n tokens do not fit the capacity.
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
    if (k_rows.tokens < 0)
      return Status::invalid_argument("append: k " + shape_string(k_rows) + " has " +
                                      std::to_string(k_rows.tokens) + " tokens");
    if (k_rows.tokens > 0 && o_.num_kv_heads > 0 && o_.head_dim > 0 &&
        (k_rows.data == nullptr || v_rows.data == nullptr))
      return Status::invalid_argument("append: k " + shape_string(k_rows) + " or v " +
                                      shape_string(v_rows) + " has a null data pointer");
    if (k_rows.tokens > o_.capacity - size_)  // no overflow: 0 <= size_ <= capacity
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
