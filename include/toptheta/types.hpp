#pragma once
/// \file types.hpp
/// Scalar types and strided, non-owning views over row-major data.
///
/// Storage may be `float`, `double`, `Eigen::half` or `Eigen::bfloat16`. All arithmetic runs in
/// `acc_t<T>`: `double` for `double` storage, `float` otherwise.
///
/// `HeadsView<T>` describes a 3-D tensor `[token][head][dim]` with arbitrary token and head
/// strides (the dim stride is 1). It covers, without copies:
/// - an interleaved cache `[token][kv_head][dim]` (llama.cpp):
///   `token_stride = Hkv * d` (or more with padding), `head_stride = d`;
/// - a head-major cache `[kv_head][capacity][dim]`: `token_stride = d`, `head_stride = capacity * d`.

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
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccType<std::remove_const_t<T>>::type;

/// True for the storage types the kernels accept.
template <class T>
inline constexpr bool kIsStorageType =
    std::is_same_v<std::remove_const_t<T>, float> || std::is_same_v<std::remove_const_t<T>, double> ||
    std::is_same_v<std::remove_const_t<T>, Eigen::half> ||
    std::is_same_v<std::remove_const_t<T>, Eigen::bfloat16>;

/// Short name of a storage type: "f32", "f64", "f16", "bf16".
template <class T>
constexpr const char* dtype_name() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, float>) return "f32";
  else if constexpr (std::is_same_v<U, double>) return "f64";
  else if constexpr (std::is_same_v<U, Eigen::half>) return "f16";
  else if constexpr (std::is_same_v<U, Eigen::bfloat16>) return "bf16";
  else return "unknown";
}

/// Row-major 2-D view: `rows x cols`, element (r, c) at `data[r * row_stride + c]`.
template <class T>
struct MatrixView {
  T* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index row_stride = 0;  ///< elements between consecutive rows (>= cols)

  T* row(Index r) const { return data + r * row_stride; }
  T& operator()(Index r, Index c) const { return data[r * row_stride + c]; }
  bool empty() const { return data == nullptr || rows == 0 || cols == 0; }
  operator MatrixView<const T>() const { return {data, rows, cols, row_stride}; }
};

/// 3-D view `[token][head][dim]`: element (t, h, i) at `data[t * token_stride + h * head_stride + i]`.
template <class T>
struct HeadsView {
  using value_type = T;
  T* data = nullptr;
  Index tokens = 0;
  Index heads = 0;
  Index dim = 0;
  Index token_stride = 0;  ///< elements between consecutive tokens of one head
  Index head_stride = 0;   ///< elements between consecutive heads of one token

  T* row(Index t, Index h) const { return data + t * token_stride + h * head_stride; }
  T& operator()(Index t, Index h, Index i) const { return row(t, h)[i]; }

  /// The 2-D `(tokens, dim)` view of one head, strided in place.
  MatrixView<T> head(Index h) const { return {data + h * head_stride, tokens, dim, token_stride}; }
  /// Tokens `[first, first + count)` of the same view.
  HeadsView slice_tokens(Index first, Index count) const {
    return {data + first * token_stride, count, heads, dim, token_stride, head_stride};
  }
  operator HeadsView<const T>() const {
    return {data, tokens, heads, dim, token_stride, head_stride};
  }

  /// Interleaved `[token][head][dim]` buffer; `token_stride` defaults to `heads * dim`.
  static HeadsView token_major(T* data, Index tokens, Index heads, Index dim,
                               Index token_stride = -1) {
    return {data, tokens, heads, dim, token_stride < 0 ? heads * dim : token_stride, dim};
  }
  /// Head-major `[head][capacity][dim]` buffer holding `tokens <= capacity` valid tokens.
  static HeadsView head_major(T* data, Index tokens, Index heads, Index dim, Index capacity = -1) {
    return {data, tokens, heads, dim, dim, (capacity < 0 ? tokens : capacity) * dim};
  }
};

/// "(rows x cols)" / "(tokens, heads, dim)" for error messages.
inline std::string shape_string(Index a, Index b) {
  return "(" + std::to_string(a) + " x " + std::to_string(b) + ")";
}
inline std::string shape_string(Index a, Index b, Index c) {
  return "(" + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + ")";
}
template <class T>
std::string shape_string(const HeadsView<T>& v) {
  return "(tokens=" + std::to_string(v.tokens) + ", heads=" + std::to_string(v.heads) +
         ", dim=" + std::to_string(v.dim) + ")";
}

}  // namespace toptheta
