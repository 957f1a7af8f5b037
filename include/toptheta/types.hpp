#pragma once
/// \file types.hpp
/// Scalar types and strided, non-owning views over row-major data.
///
/// Storage may be `float`, `double`, `Eigen::half` or `Eigen::bfloat16`, and for K/V also
/// `BlockQ8_0` (llama.cpp's q8_0). All arithmetic runs in `acc_t<T>`: `double` for `double`
/// storage, `float` otherwise.
///
/// `HeadsView<T>` describes a 3-D tensor `[token][head][dim]` with arbitrary token and head
/// strides (the dim stride is 1). It covers, without copies:
/// - an interleaved cache `[token][kv_head][dim]` (llama.cpp):
///   `token_stride = Hkv * d` (or more with padding), `head_stride = d`;
/// - a head-major cache `[kv_head][capacity][dim]`: `token_stride = d`, `head_stride = capacity *
/// d`.

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "config.hpp"

namespace toptheta {

/// Signed index type for sizes and positions.
using Index = std::ptrdiff_t;

/// Accumulation type for a storage type: double for double, float for everything else.
template <class T>
struct AccType {
  using type = float;  ///< float accumulation for float, half, bfloat16 and q8_0 storage
};
/// double storage accumulates in double.
template <>
struct AccType<double> {
  using type = double;  ///< double accumulation
};
/// The accumulation (and output) type of storage type T: double for double, float otherwise.
template <class T>
using acc_t = typename AccType<std::remove_const_t<T>>::type;

/// llama.cpp's q8_0 block (`block_q8_0`): 32 values x_i = d * qs[i], one fp16 scale. 34 bytes,
/// byte-compatible with ggml's layout. A q8_0 row of `dim` values is dim / 32 consecutive blocks;
/// views over q8_0 data count their strides in blocks and their `dim` in values.
struct BlockQ8_0 {
  Eigen::half d;          ///< scale
  std::int8_t qs[32];     ///< quantised values
};
static_assert(sizeof(BlockQ8_0) == 34, "BlockQ8_0 must have llama.cpp's 34-byte layout");

/// True for the storage types the kernels accept for Q, K and V.
template <class T>
inline constexpr bool kIsStorageType =
    std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double> ||
    std::is_same_v<std::remove_const_t<T>, Eigen::half> ||
    std::is_same_v<std::remove_const_t<T>, Eigen::bfloat16>;

/// True for the storage types the kernels accept for K and V (the above, plus q8_0 blocks).
template <class T>
inline constexpr bool kIsCacheType =
    kIsStorageType<T> || std::is_same_v<std::remove_const_t<T>, BlockQ8_0>;

/// Values per storage item: 32 for q8_0 blocks, 1 otherwise.
template <class T>
inline constexpr Index kValuesPerItem = std::is_same_v<std::remove_const_t<T>, BlockQ8_0> ? 32 : 1;

/// The query / output-side type of a cache type: q8_0 caches take float queries.
template <class T>
using default_query_t =
    std::conditional_t<std::is_same_v<std::remove_const_t<T>, BlockQ8_0>, float, std::remove_const_t<T>>;

/// Short name of a storage type: "f32", "f64", "f16", "bf16", "q8_0".
template <class T>
constexpr const char* dtype_name() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) return "f32";
  else if constexpr (std::is_same_v<U, double>) return "f64";
  else if constexpr (std::is_same_v<U, Eigen::half>) return "f16";
  else if constexpr (std::is_same_v<U, Eigen::bfloat16>) return "bf16";
  else if constexpr (std::is_same_v<U, BlockQ8_0>) return "q8_0";
  else return "unknown";
}

/// Value i of a row of storage type T, as float (double for double): handles q8_0 blocks.
template <class T>
inline auto value_at(const T* row, Index i) {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, BlockQ8_0>) {
    const BlockQ8_0& b = row[i / 32];
    return static_cast<float>(b.d) * float(b.qs[i % 32]);
  } else if constexpr (std::is_same_v<U, double>) {
    return row[i];
  } else {
    return static_cast<float>(row[i]);
  }
}

/// Row-major 2-D view: `rows x cols`, element (r, c) at `data[r * row_stride + c]`.
template <class T>
struct MatrixView {
  T* data = nullptr;      ///< element (0, 0); not owned
  Index rows = 0;          ///< number of rows
  Index cols = 0;          ///< number of columns
  Index row_stride = 0;  ///< elements between consecutive rows (>= cols)

  /// First element of row r (0 <= r < rows; not checked).
  T* row(Index r) const { return data + r * row_stride; }
  /// Element (r, c) (not bounds-checked).
  T& operator()(Index r, Index c) const { return data[r * row_stride + c]; }
  /// True for a null view or one with no rows or no columns.
  bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  /// The read-only view of the same elements.
  operator MatrixView<const T>() const { return {data, rows, cols, row_stride}; }
};

/// 3-D view `[token][head][dim]`: element (t, h, i) at `data[t * token_stride + h * head_stride + i]`.
template <class T>
struct HeadsView {
  using value_type = T;    ///< the storage type (const for read-only views)
  T* data = nullptr;       ///< row (token 0, head 0); not owned
  Index tokens = 0;        ///< tokens (T for queries and outputs, L for a cache)
  Index heads = 0;         ///< heads (Hq for queries and outputs, Hkv for a cache)
  Index dim = 0;           ///< head_dim d, in values (a q8_0 row holds d / 32 blocks)
  Index token_stride = 0;  ///< items of T between consecutive tokens of one head
  Index head_stride = 0;   ///< items of T between consecutive heads of one token

  /// Items of T in one row of `dim` values (dim / 32 for q8_0 blocks).
  static Index row_items(Index dim) { return dim / kValuesPerItem<T>; }

  /// First item of row (token t, head h) (not bounds-checked).
  T* row(Index t, Index h) const { return data + t * token_stride + h * head_stride; }
  /// Item i of row (t, h): value i for float, double, half and bfloat16 views (q8_0 views hold
  /// blocks: read values with `value_at(row(t, h), i)`).
  T& operator()(Index t, Index h, Index i) const { return row(t, h)[i]; }

  /// The 2-D `(tokens, dim)` view of one head, strided in place.
  MatrixView<T> head(Index h) const { return {data + h * head_stride, tokens, dim, token_stride}; }
  /// Tokens `[first, first + count)` of the same view.
  HeadsView slice_tokens(Index first, Index count) const {
    return {data + first * token_stride, count, heads, dim, token_stride, head_stride};
  }
  /// The read-only view of the same rows.
  operator HeadsView<const T>() const {
    return {data, tokens, heads, dim, token_stride, head_stride};
  }

  /// Interleaved `[token][head][dim]` buffer; `token_stride` defaults to `heads * dim`.
  static HeadsView token_major(T* data, Index tokens, Index heads, Index dim,
                               Index token_stride = -1) {
    const Index r = row_items(dim);
    return {data, tokens, heads, dim, token_stride < 0 ? heads * r : token_stride, r};
  }
  /// Head-major `[head][capacity][dim]` buffer holding `tokens <= capacity` valid tokens.
  static HeadsView head_major(T* data, Index tokens, Index heads, Index dim, Index capacity = -1) {
    const Index r = row_items(dim);
    return {data, tokens, heads, dim, r, (capacity < 0 ? tokens : capacity) * r};
  }
};

/// A paged KV cache (vLLM / SGLang / llama.cpp's unified cache): the K and V rows of one sequence
/// live in fixed-size blocks of `block_size` tokens taken from two pools; the sequence's block
/// table lists, for its tokens 0, B, 2B, ..., the index of the block holding them. Inside a block
/// rows are token-major `[B][heads][dim]` or head-major `[heads][B][dim]` (strides in items of
/// T). Nothing is copied: the kernels read rows through the table.
template <class T>
struct PagedKv {
  using value_type = T;   ///< the storage type of the pools
  const T* k_pool = nullptr;  ///< first item of the K pool (num_blocks blocks)
  const T* v_pool = nullptr;  ///< first item of the V pool (same block layout as K)
  const std::int32_t* block_table = nullptr;  ///< ceil(tokens / block_size) block indices
  Index tokens = 0;        ///< L, the sequence's tokens (the call's new ones last)
  Index heads = 0;         ///< Hkv
  Index dim = 0;           ///< head dim (values)
  Index block_size = 0;    ///< B, tokens per block
  Index num_blocks = 0;    ///< blocks in each pool (the table's entries are checked against it)
  Index block_stride = 0;  ///< items between consecutive blocks of a pool
  Index token_stride = 0;  ///< items between consecutive tokens of one head inside a block
  Index head_stride = 0;   ///< items between consecutive heads of one token inside a block

  /// True when no block table is set (the call then reads `AttentionArgs::k` / `v`).
  bool empty() const { return block_table == nullptr; }
  /// Blocks of `[B][heads][dim]`, packed.
  static PagedKv token_major(const T* k_pool, const T* v_pool, Index num_blocks,
                             const std::int32_t* table, Index tokens, Index heads, Index dim,
                             Index block_size) {
    const Index r = HeadsView<const T>::row_items(dim);
    return {k_pool, v_pool, table, tokens, heads, dim, block_size, num_blocks,
            block_size * heads * r, heads * r, r};
  }
  /// Blocks of `[heads][B][dim]`, packed.
  static PagedKv head_major(const T* k_pool, const T* v_pool, Index num_blocks,
                            const std::int32_t* table, Index tokens, Index heads, Index dim,
                            Index block_size) {
    const Index r = HeadsView<const T>::row_items(dim);
    return {k_pool, v_pool, table, tokens, heads, dim, block_size, num_blocks,
            block_size * heads * r, r, block_size * r};
  }
};

namespace detail {

/// Rows of one pool of a paged cache: what the kernels read (`row(t, h)`, `tokens`, `heads`,
/// `dim`), like a HeadsView. A power-of-two block size (vLLM's 16, 32, ...) splits a token
/// index with a shift and a mask (`block_shift` >= 0), any other with a division: the walks
/// look up every row they read or prefetch, and a 64-bit division per row cost the paged decode
/// more than its reads (16-token blocks, f16, L = 16k: see docs/performance.md).
template <class T>
struct PagedRows {
  using value_type = const T;
  const T* pool = nullptr;
  const std::int32_t* table = nullptr;
  Index tokens = 0, heads = 0, dim = 0, block_size = 1, block_stride = 0, token_stride = 0,
        head_stride = 0;
  int block_shift = -1;  ///< log2(block_size) when it is a power of two, else -1
  const T* row(Index t, Index h) const {
    Index b, i;
    if (block_shift >= 0) {
      b = t >> block_shift;
      i = t & (block_size - 1);
    } else {
      b = t / block_size;
      i = t % block_size;
    }
    return pool + Index(table[b]) * block_stride + i * token_stride + h * head_stride;
  }
};

/// log2(n) for a power of two n > 0, else -1.
inline int log2_exact(Index n) {
  if (n <= 0 || (n & (n - 1)) != 0) return -1;
  int s = 0;
  while ((Index(1) << s) < n) ++s;
  return s;
}

template <class T>
PagedRows<T> paged_rows(const PagedKv<T>& p, bool values) {
  return {values ? p.v_pool : p.k_pool, p.block_table, p.tokens, p.heads, p.dim, p.block_size,
          p.block_stride, p.token_stride, p.head_stride, log2_exact(p.block_size)};
}

}  // namespace detail

/// "(rows x cols)" / "(tokens, heads, dim)" for error messages.
inline std::string shape_string(Index a, Index b) {
  return "(" + std::to_string(a) + " x " + std::to_string(b) + ")";
}
/// "(a, b, c)" for error messages.
inline std::string shape_string(Index a, Index b, Index c) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + ")";
}
/// "(tokens=.., heads=.., dim=..)" of a view, for error messages.
template <class T>
std::string shape_string(const HeadsView<T>& v) {
  return "(tokens=" + std::to_string(v.tokens) + ", heads=" + std::to_string(v.heads) +
         ", dim=" + std::to_string(v.dim) + ")";
}

}  // namespace toptheta
