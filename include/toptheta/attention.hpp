#pragma once
/// \file attention.hpp
/// Attention entry points: `decode` (one new token) and `prefill` (T new tokens, causal) for
/// the dense, top-k and Top-θ modes and for calibration, and `workspace_size`.
///
/// What they compute is fixed by docs/semantics.md (Top-θ thresholding §4, SDC §5, VMC §6, after
/// arXiv 2502.08363). How: kernels/decode.hpp and kernels/prefill.hpp, on the
/// SIMD path of detail/isa.hpp (the fastest the CPU runs, or `AttentionOptions::isa`).
///
/// Memory traffic of a decode step: all of K plus the union of the kept V rows of each KV group.
/// Threads: OpenMP when compiled with it (`options.threads`, 0 = default); the arithmetic and the
/// order of every sum do not depend on the thread count (the split into tasks may), so results
/// are bit-identical for any number of threads.
/// Allocation: none when a workspace of `workspace_size(args, options)` bytes is given.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "attention_args.hpp"
#include "detail/isa.hpp"
#include "detail/simd.hpp"
#include "kernels/decode.hpp"
#include "kernels/parallel.hpp"
#include "kernels/prefill.hpp"
#include "status.hpp"
#include "workspace.hpp"

namespace toptheta {
namespace detail {

template <class T, class Q>
Status check_call(const AttentionArgs<T, Q>& a, const AttentionOptions& o, bool is_decode,
                  Isa* isa) {
  if (is_decode && a.q.tokens != 1)
    return Status::invalid_argument("decode takes one query token, q has shape " +
                                    shape_string(a.q) + "; use prefill for several");
  TOPTHETA_RETURN_IF_ERROR(validate(a, o));  // also the head limits kMaxKvHeads, kMaxGqaGroup
  return resolve_isa(o.isa, isa);
}

/// Runs a planned call (DecodeCall / PrefillCall) of arguments `a` on the caller's workspace.
template <class Call, class T, class Q>
Status run_call(Call& call, const AttentionArgs<T, Q>& a, Workspace ws) {
  Arena measure;
  call.carve(measure);
  const std::size_t need = measure.used();
  // Checked before anything is carved or written: the measure assumes the worst alignment.
  if (ws.data == nullptr || ws.bytes < need) return workspace_too_small(ws, need, call.threads());
  TOPTHETA_RETURN_IF_ERROR(check_workspace_disjoint(ws.data, need, a));
  Arena ar(ws);
  call.carve(ar);
  TOPTHETA_ASSERT(!ar.overflowed(), "workspace measure and carve disagree");
  call.prepare();
  run_stages(call, call.threads());
  call.finish();
  return {};
}

template <class Call>
std::size_t measure_call(Call& call) {
  Arena measure;
  call.carve(measure);
  return measure.used();
}

/// Calls f(Ops{}, k_view, v_view) with the call's SIMD path and its cache views (contiguous
/// HeadsView or the rows of a paged cache).
template <class T, class Q, class F>
decltype(auto) with_call_views(Isa isa, const AttentionArgs<T, Q>& a, F&& f) {
  return with_ops(isa, [&](auto ops) {
    if (!a.paged.empty()) return f(ops, paged_rows(a.paged, false), paged_rows(a.paged, true));
    return f(ops, a.k, a.v);
  });
}

}  // namespace detail

/// Bytes of scratch memory `decode` alone needs for these arguments and options (0 when they do
/// not validate); `workspace_size` is the larger of this and the prefill size for T = 1.
template <class T, class Q>
std::size_t decode_workspace_size(const AttentionArgs<T, Q>& args, const AttentionOptions& options) {
  Isa isa;
  if (!detail::check_call(args, options, true, &isa).ok()) return 0;
  return detail::with_call_views(isa, args, [&](auto ops, const auto& kv, const auto& vv) {
    detail::DecodeCall<decltype(ops), AttentionArgs<T, Q>, std::decay_t<decltype(kv)>> dc(
        args, options, kv, vv);
    return detail::measure_call(dc);
  });
}

/// Bytes of scratch memory `decode` and `prefill` need for these arguments and options,
/// including the per-thread buffers of the thread count `options.threads` resolves to.
/// Returns 0 when the arguments do not validate (or the requested SIMD path is unavailable).
/// For T = 1 the size covers both `decode` and `prefill`. The size is not monotone in the cache
/// length L (the key chunks and query blocks follow L, T and the mode): ask for each call's
/// size and grow a reused buffer, rather than sizing one buffer for the longest context.
template <class T, class Q>
std::size_t workspace_size(const AttentionArgs<T, Q>& args, const AttentionOptions& options) {
  Isa isa;
  if (!detail::check_call(args, options, false, &isa).ok()) return 0;
  return detail::with_call_views(isa, args, [&](auto ops, const auto& kv, const auto& vv) {
    using Ops = decltype(ops);
    using View = std::decay_t<decltype(kv)>;
    detail::PrefillCall<Ops, AttentionArgs<T, Q>, View> pc(args, options, kv, vv);
    std::size_t n = detail::measure_call(pc);
    if (args.q.tokens == 1) {
      detail::DecodeCall<Ops, AttentionArgs<T, Q>, View> dc(args, options, kv, vv);
      n = std::max(n, detail::measure_call(dc));
    }
    return n;
  });
}

/// Bytes of one workspace that serves every `decode` and `prefill` call of these shapes and
/// options up to `limits`: the largest `workspace_size` over every cache length
/// 1 <= L <= limits.max_tokens and every query count 1 <= T <= min(limits.max_query_tokens, L).
/// For an engine that sizes its scratch once at start-up (the size is not monotone in L, see
/// `workspace_size`, so the size at the longest context is not enough).
///
/// `args` gives everything but L and T: heads, head_dim, storage type, cache layout (contiguous
/// or paged), layer and head offset; its own L and T are not used, but it must validate.
/// `options` as for the calls, threads included. A buffer shared by the layers of a model takes
/// the largest size over the layers (their k_l and thresholds can change the walk a call takes).
///
/// Returns 0 when `args` or `options` do not validate (as `workspace_size`), when
/// `limits.max_tokens` or `limits.max_query_tokens` is below 1, or when `limits.max_tokens`
/// exceeds the longest cache a call takes (2^31 - 1 tokens).
/// Exact, by measuring the calls rather than by a formula that could drift from the kernels:
/// per L, the decode call and the prefill call of the largest T. For a fixed L the size never
/// decreases with T (T changes the rows per block up to their cap, the block count and the
/// thread count, each only upwards; tests/test_workspace_bounds.cpp checks it over every T).
/// Cost: two measures per L (each counts the workers' buffers by measuring one worker's, so it
/// does not grow with the thread count): 0.01 s for max_tokens = 128k at 2 to 192 threads
/// (Hq = 32, Hkv = 8, d = 128, -O2, measured); call it once, not per step.
template <class T, class Q>
std::size_t max_workspace_size(const AttentionArgs<T, Q>& args, const AttentionOptions& options,
                               const WorkspaceLimits& limits) {
  Isa isa;
  if (!detail::limits_valid(limits)) return 0;
  if (!detail::check_call(args, options, false, &isa).ok()) return 0;
  return detail::with_call_views(isa, args, [&](auto ops, const auto& kv, const auto& vv) {
    using Ops = decltype(ops);
    using View = std::decay_t<decltype(kv)>;
    // The calls below only plan and measure: they read shapes, never the data.
    AttentionArgs<T, Q> a = args;
    View k = kv, v = vv;
    std::size_t n = 0;
    for (Index L = 1; L <= limits.max_tokens; ++L) {
      k.tokens = v.tokens = L;
      a.q.tokens = a.out.tokens = 1;
      detail::DecodeCall<Ops, AttentionArgs<T, Q>, View> dc(a, options, k, v);
      n = std::max(n, detail::measure_call(dc));
      a.q.tokens = a.out.tokens = std::min(limits.max_query_tokens, L);
      detail::PrefillCall<Ops, AttentionArgs<T, Q>, View> pc(a, options, k, v);
      n = std::max(n, detail::measure_call(pc));
    }
    return n;
  });
}

/// One decode step: q (1, Hq, d) against K/V (L, Hkv, d) that already hold the new token.
/// Writes out (1, Hq, d). `args.v_sum`, when given, sums V rows 0..L-2 (the rows before the
/// new token); the kernel adds row L-1.
///
/// Returns: kInvalidArgument for shapes, strides, options or a workspace that do not fit
/// (nothing is written then); kFailedPrecondition for an incomplete threshold table or a
/// SIMD path (`options.isa`) this build or CPU cannot run; ok otherwise.
template <class T, class Q>
Status decode(const AttentionArgs<T, Q>& args, const AttentionOptions& options, Workspace ws) {
  Isa isa;
  TOPTHETA_RETURN_IF_ERROR(detail::check_call(args, options, /*is_decode=*/true, &isa));
  return detail::with_call_views(isa, args, [&](auto ops, const auto& kv, const auto& vv) {
    detail::DecodeCall<decltype(ops), AttentionArgs<T, Q>, std::decay_t<decltype(kv)>> call(
        args, options, kv, vv);
    return detail::run_call(call, args, ws);
  });
}

/// Causal prefill: q (T, Hq, d) are the last T of the L tokens in K/V; row t attends to keys
/// 0..L-T+t. Writes out (T, Hq, d). `args.v_sum`, when given, sums V rows 0..L-T-1 (the rows
/// before the new tokens); the kernel adds the new rows.
///
/// Returns the same status codes as `decode`.
template <class T, class Q>
Status prefill(const AttentionArgs<T, Q>& args, const AttentionOptions& options, Workspace ws) {
  Isa isa;
  TOPTHETA_RETURN_IF_ERROR(detail::check_call(args, options, /*is_decode=*/false, &isa));
  return detail::with_call_views(isa, args, [&](auto ops, const auto& kv, const auto& vv) {
    detail::PrefillCall<decltype(ops), AttentionArgs<T, Q>, std::decay_t<decltype(kv)>> call(
        args, options, kv, vv);
    return detail::run_call(call, args, ws);
  });
}

/// `decode` that allocates its workspace (for examples and tests, not hot loops). Same status
/// codes as `decode`.
template <class T, class Q>
Status decode(const AttentionArgs<T, Q>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return decode(args, options, Workspace{buf.data(), buf.size()});
}
/// `prefill` that allocates its workspace (for examples and tests, not hot loops). Same status
/// codes as `prefill`.
template <class T, class Q>
Status prefill(const AttentionArgs<T, Q>& args, const AttentionOptions& options) {
  std::vector<std::byte> buf(std::max<std::size_t>(workspace_size(args, options), 1));
  return prefill(args, options, Workspace{buf.data(), buf.size()});
}

}  // namespace toptheta

/// Explicit instantiations of this header's entry points (`decode`, `prefill`, `workspace_size`,
/// `decode_workspace_size`, `max_workspace_size`, with and without a workspace) for one
/// `AttentionArgs<T, Q>`. `KW` is `extern` for the declarations, empty for the definitions. Use at
/// global scope.
///
/// Compiling the kernels once: every entry point instantiates the kernels for each SIMD path
/// and cache view, which is most of the compile time of a file that calls them (~150 s against
/// ~15 s at -O3 for one of our test files). A project with many such files can define
/// `TOPTHETA_EXTERN_TEMPLATES` in all of them, so that they only declare the instances of
/// every `TOPTHETA_FOR_EACH_ARGS_TYPE` pair, and compile the definitions once in one file
/// (or one per pair, to build them in parallel) with `TOPTHETA_INSTANTIATE(T, Q)` of plan.hpp.
/// Every file must then see the same toptheta configuration macros and instruction-set flags.
/// Our own tests, examples and tools build this way (the `toptheta_instances` target of
/// CMakeLists.txt); the library itself stays header-only.
#define TOPTHETA_ATTENTION_INSTANCES(KW, T, Q)                                                   \
  KW template ::toptheta::Status toptheta::decode<T, Q>(const ::toptheta::AttentionArgs<T, Q>&,  \
                                                        const ::toptheta::AttentionOptions&,     \
                                                        ::toptheta::Workspace);                  \
  KW template ::toptheta::Status toptheta::prefill<T, Q>(const ::toptheta::AttentionArgs<T, Q>&, \
                                                         const ::toptheta::AttentionOptions&,    \
                                                         ::toptheta::Workspace);                 \
  KW template ::toptheta::Status toptheta::decode<T, Q>(const ::toptheta::AttentionArgs<T, Q>&,  \
                                                        const ::toptheta::AttentionOptions&);    \
  KW template ::toptheta::Status toptheta::prefill<T, Q>(const ::toptheta::AttentionArgs<T, Q>&, \
                                                         const ::toptheta::AttentionOptions&);   \
  KW template std::size_t toptheta::workspace_size<T, Q>(const ::toptheta::AttentionArgs<T, Q>&, \
                                                         const ::toptheta::AttentionOptions&);   \
  KW template std::size_t toptheta::decode_workspace_size<T, Q>(                                 \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&);              \
  KW template std::size_t toptheta::max_workspace_size<T, Q>(                                    \
      const ::toptheta::AttentionArgs<T, Q>&, const ::toptheta::AttentionOptions&,               \
      const ::toptheta::WorkspaceLimits&);

#if defined(TOPTHETA_EXTERN_TEMPLATES)
#define TOPTHETA_DETAIL_EXTERN_ATTENTION(T, Q) TOPTHETA_ATTENTION_INSTANCES(extern, T, Q)
TOPTHETA_FOR_EACH_ARGS_TYPE(TOPTHETA_DETAIL_EXTERN_ATTENTION)
#undef TOPTHETA_DETAIL_EXTERN_ATTENTION
#endif
