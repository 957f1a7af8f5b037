#pragma once
/// \file attention.hpp
/// Attention entry points: `decode` (one new token) and `prefill` (T new tokens, causal) for the
/// dense, top-k and Top-θ modes and for calibration (DESIGN.md sections 2 and 3;
/// docs/semantics.md fixes the details).
///
/// Pipeline per row and KV group: scores (each (query, key) score computed once) -> selection per
/// head (row_select.hpp) -> weights with SDC (sparse_softmax.hpp) -> union of the kept keys over
/// the group's query heads, each kept V row read once -> VMC -> statistics.
/// Decode (detail/decode_impl.hpp) splits the cache into fixed token chunks and walks each chunk
/// with all KV heads together; prefill (detail/prefill_impl.hpp) tiles query rows per KV group.
///
/// Memory traffic of a decode step: all of K plus the union of kept V rows (DESIGN.md section 5).
/// Threads: OpenMP when compiled with it (`options.threads`, 0 = default); the work split does
/// not depend on the thread count, so results are bit-identical for any number of threads.
/// Allocation: none when a workspace of `workspace_size(args, options)` bytes is given.

#include <algorithm>
#include <string>
#include <vector>

#include "attention_args.hpp"
#include "detail/decode_impl.hpp"
#include "detail/prefill_impl.hpp"
#include "status.hpp"
#include "workspace.hpp"

namespace toptheta {
namespace detail {

template <class T>
Status check_call(const AttentionArgs<T>& a, const AttentionOptions& o, bool is_decode) {
  if (is_decode && a.q.tokens != 1)
    return Status::invalid_argument("decode takes one query token, q has shape " +
                                    shape_string(a.q) + "; use prefill for several");
  TOPTHETA_RETURN_IF_ERROR(validate(a, o));
  if (a.q.heads / a.k.heads > kMaxGroup || a.k.heads > kMaxKv)
    return Status::invalid_argument("at most 256 KV heads and 256 query heads per KV head, got " +
                                    shape_string(a.q) + " over " + shape_string(a.k));
  return {};
}

}  // namespace detail

/// Bytes of scratch memory `decode` and `prefill` need for these arguments and options,
/// including one set of per-thread buffers per thread `options.threads` resolves to. Decode:
/// O(Hq * L + Hkv * L * G); prefill: a score block of about 4 MiB per thread plus
/// O(Hkv * T / rows_per_block * d). Returns 0 when the arguments do not validate.
template <class T>
std::size_t workspace_size(const AttentionArgs<T>& args, const AttentionOptions& options) {
  if (!validate(args, options).ok()) return 0;
  std::size_t n = detail::prefill_workspace(args, options);
  if (args.q.tokens == 1) n = std::max(n, detail::decode_workspace(args, options));
  return n;
}

/// One decode step: q (1, Hq, d) against K/V (L, Hkv, d) that already hold the new token.
/// Writes out (1, Hq, d). `args.v_sum`, when given, sums V rows 0..L-1.
template <class T>
Status decode(const AttentionArgs<T>& args, const AttentionOptions& options, Workspace ws) {
  TOPTHETA_RETURN_IF_ERROR(detail::check_call(args, options, /*is_decode=*/true));
  return detail::run_decode(args, options, ws);
}

/// Causal prefill: q (T, Hq, d) are the last T of the L tokens in K/V; row t attends to keys
/// 0..L-T+t. Writes out (T, Hq, d). `args.v_sum`, when given, sums V rows 0..L-T-1.
template <class T>
Status prefill(const AttentionArgs<T>& args, const AttentionOptions& options, Workspace ws) {
  TOPTHETA_RETURN_IF_ERROR(detail::check_call(args, options, /*is_decode=*/false));
  return detail::run_prefill(args, options, ws);
}

/// Convenience overloads that allocate the workspace (for examples and tests, not hot loops).
template <class T>
Status decode(const AttentionArgs<T>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return decode(args, options, Workspace{buf.data(), buf.size()});
}
template <class T>
Status prefill(const AttentionArgs<T>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return prefill(args, options, Workspace{buf.data(), buf.size()});
}

}  // namespace toptheta
