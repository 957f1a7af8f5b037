#pragma once
/// \file attention_args.hpp
/// Typed arguments of the attention entry points (`decode`, `prefill` in attention.hpp), their
/// validation, and `toptheta_options`, the recommended Top-θ options for a calibrated table.

#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "calibrator.hpp"
#include "options.hpp"
#include "stats.hpp"
#include "status.hpp"
#include "threshold_table.hpp"
#include "types.hpp"

namespace toptheta {

/// Most KV heads a call may have (validate() refuses more).
inline constexpr Index kMaxKvHeads = 256;
/// Most query heads per KV head (the GQA group) a call may have (validate() refuses more).
inline constexpr Index kMaxGqaGroup = 256;

/// Buffers of one attention call. All views are non-owning and strided; nothing is copied.
///
/// Shapes: T new query tokens, a KV cache of L = P + T tokens (the T new ones last), Hq query
/// heads, Hkv KV heads (Hq a multiple of Hkv; query head h reads KV head h / (Hq / Hkv);
/// Hkv <= kMaxKvHeads, Hq / Hkv <= kMaxGqaGroup), head dim d. Decode is T = 1.
///
/// Storage: the cache type `T` is float, double, Eigen::half, Eigen::bfloat16 or BlockQ8_0
/// (llama.cpp's q8_0; d a multiple of 32); the query type `Q` is T or float (float queries over
/// a half, bfloat16 or q8_0 cache, as llama.cpp keeps them); the output is acc_t<T> (double for
/// double, float otherwise).
template <class T, class Q = default_query_t<T>>
struct AttentionArgs {
  static_assert(kIsCacheType<T>,
                "toptheta: AttentionArgs<T> stores float, double, Eigen::half, Eigen::bfloat16 or "
                "BlockQ8_0 (other element types, e.g. integers, are not supported)");
  static_assert(kIsStorageType<Q> && (std::is_same_v<Q, T> || std::is_same_v<Q, acc_t<T>>),
                "toptheta: AttentionArgs<T, Q> takes queries of the cache type T or of float "
                "(double for a double cache)");
  using cache_type = T;    ///< storage type of K and V
  using query_type = Q;    ///< storage type of q
  using Acc = acc_t<T>;    ///< accumulation and output type (float; double for a double cache)
  HeadsView<const Q> q;    ///< (T, Hq, d) new queries (T = 1 for decode)
  HeadsView<const T> k;    ///< (L, Hkv, d) keys, the T new ones last
  HeadsView<const T> v;    ///< (L, Hkv, d) values, same layout rules as k
  /// Alternatively a paged cache (block table): when `paged.block_table` is set, K and V are read
  /// through it and `k` / `v` must be left empty.
  PagedKv<T> paged;
  HeadsView<Acc> out;      ///< (T, Hq, d) output, written (never read); must not alias q/k/v
  /// (Hkv, d) running sums of the V rows **before the new tokens** (rows 0..P-1, P = L - T),
  /// row stride `v_sum_stride` (d when 0); the kernel adds the new rows itself. Needed by VMC
  /// and the mean-V empty-row policy unless `AttentionOptions::vbar` is VbarSource::kSumCache,
  /// which never reads it (the kernel sums the V rows itself).
  /// RunningVSum and KvCache (kv_cache.hpp) keep it at O(d) per appended token.
  const Acc* v_sum = nullptr;
  Index v_sum_stride = 0;  ///< items between the KV heads' rows of v_sum (0: d)
  /// Optional additive bias (T x L) added to the scores, e.g. an ALiBi or padding mask;
  /// -inf entries mask keys. Shared by all heads. Causality is always applied on top.
  MatrixView<const float> bias;
  Index layer = 0;         ///< layer index, for thresholds, calibration and per-layer k
  /// Tensor-parallel shards: the call's query head 0 is head `head_offset` of the model (of the
  /// threshold table, the calibrator and per-head statistics), which has `model_heads` query
  /// heads (0: Hq, no sharding) and `model_kv_heads` KV heads. The table must have exactly
  /// `model_heads` heads. A shard (head_offset > 0 or model_heads != Hq) must give
  /// model_kv_heads: the kernels pair the call's query head h with its KV head h / (Hq / Hkv),
  /// which is the model's pairing only when each of the call's GQA groups lies inside one of
  /// the model's (whole groups, or part of one group with its KV head); validate() checks it.
  Index head_offset = 0;
  Index model_heads = 0;     ///< query heads of the model (0: q.heads, no sharding)
  Index model_kv_heads = 0;  ///< KV heads of the model (0: k.heads, no sharding)
  double scale = 0.0;      ///< score scale; 0 means 1/sqrt(d)

  /// Tokens L of the cache (from k, or from the paged cache).
  Index cache_tokens() const { return paged.empty() ? k.tokens : paged.tokens; }
  /// KV heads Hkv of the cache (from k, or from the paged cache).
  Index cache_heads() const { return paged.empty() ? k.heads : paged.heads; }
};

/// The factor a call applies to q·k (semantics §2): `args.scale`, or 1/sqrt(head_dim) when it
/// is 0. Threshold tables record it (ThresholdMetadata::score_scale) and calls must match it.
template <class Args>
double effective_score_scale(const Args& args) {
  return args.scale > 0 ? args.scale : 1.0 / std::sqrt(double(args.q.dim));
}

/// The library's recommended Top-θ variant for a calibrated table: post-softmax placement
/// (taken from the table) with VMC, no SDC, keep-max empty rows. Chosen from the real-model
/// evaluation (docs/results.md): post-softmax + VMC had the lowest perplexity cost at every k
/// evaluated there (32 to 256 on code28M, 8 to 64 on stories260K) while reading the fewest V
/// rows among the Top-θ variants, needs no SDC terms,
/// and its rows almost never come out empty. Pre-softmax tables get exact SDC + VMC, the best
/// pre-softmax variant.
inline AttentionOptions toptheta_options(const ThresholdTable& table) {
  AttentionOptions o;
  o.mode = AttentionMode::kTopTheta;
  o.thresholds = &table;
  o.placement = table.placement();
  o.sdc = table.placement() == Placement::kPreSoftmax ? SdcMode::kExact : SdcMode::kNone;
  o.vmc = VmcMode::kOn;
  o.empty_row = EmptyRowPolicy::kKeepMax;
  return o;
}

/// True when the call needs the V mean vbar (VMC, or Top-θ's mean-V empty rows) for some row.
inline bool needs_vbar(const AttentionOptions& o) {
  if (o.mode == AttentionMode::kDense) return false;
  if (o.mode == AttentionMode::kCalibrate) return o.vmc == VmcMode::kOn;  // output: top-k or dense
  return o.vmc == VmcMode::kOn ||
         (o.mode == AttentionMode::kTopTheta && o.empty_row == EmptyRowPolicy::kMeanV);
}

namespace detail {
/// The running V sum a call reads: `args.v_sum`, or null with VbarSource::kSumCache (the kernel
/// then sums V rows 0..P-1 itself, whatever `args.v_sum` holds).
template <class Args>
auto running_v_sum(const Args& a, const AttentionOptions& o) -> decltype(a.v_sum) {
  return o.vbar == VbarSource::kSumCache ? nullptr : a.v_sum;
}
}  // namespace detail

namespace detail {

/// Elements spanned by a view: one past the largest offset it addresses (0 when empty), or -1
/// when that does not fit an Index.
template <class T>
Index view_extent(const HeadsView<T>& v) {
  if (v.tokens <= 0 || v.heads <= 0 || v.dim <= 0) return 0;
  constexpr Index kMax = Index(1) << 60;
  const Index nt = v.tokens - 1, nh = v.heads - 1;
  if ((v.token_stride > 0 && nt > kMax / v.token_stride) ||
      (v.head_stride > 0 && nh > kMax / v.head_stride) || v.dim > kMax)
    return -1;
  return nt * v.token_stride + nh * v.head_stride + HeadsView<T>::row_items(v.dim);
}

/// Elements one pool of a paged cache spans from its base: the last block's offset plus one
/// block's extent (not num_blocks x block_stride, which reaches block_stride - extent past the
/// pool: an interleaved K / V allocation puts the V pool's last block there), or -1 when that
/// does not fit an Index. Needs block_size, num_blocks >= 1 and strides >= 0.
template <class T>
Index paged_pool_extent(const PagedKv<T>& p) {
  const HeadsView<const T> block{p.k_pool, p.block_size, p.heads, p.dim, p.token_stride,
                                 p.head_stride};
  const Index one = view_extent(block);
  constexpr Index kMax = Index(1) << 60;
  if (one < 0 || p.num_blocks < 1 || p.block_stride < 0) return -1;
  const Index nb = p.num_blocks - 1;
  if (p.block_stride > 0 && nb > (kMax - one) / p.block_stride) return -1;
  return nb * p.block_stride + one;
}

/// Checks one view against its required shape and its strides: no negative strides, and the
/// `dim`-element rows of distinct (token, head) pairs never overlap, i.e. one stride is at least
/// `dim` and the other spans all rows of the first (nested layouts: token-major, head-major,
/// padded or not). Messages name the argument, its shape and the required one.
template <class T>
Status check_view_strides(const char* name, const HeadsView<T>& v, Index dim);

/// `why()` explains the required shape; it is called (and a message built) only on error, so a
/// valid call allocates nothing.
template <class T, class Why>
Status check_heads_view(const char* name, const HeadsView<T>& v, Index tokens, Index heads,
                        Index dim, Why&& why) {
  if (v.tokens != tokens || v.heads != heads || v.dim != dim) {
    const std::string w = why();
    return Status::invalid_argument(std::string(name) + " has shape " + shape_string(v) +
                                    " but " + shape_string(tokens, heads, dim) + " is required" +
                                    (w.empty() ? "" : " (" + w + ")"));
  }
  return check_view_strides(name, v, dim);
}

template <class T>
Status check_view_strides(const char* name, const HeadsView<T>& v, Index dim_values) {
  const Index tokens = v.tokens, heads = v.heads;
  if (dim_values % kValuesPerItem<T> != 0)
    return Status::invalid_argument(std::string(name) + " stores " + dtype_name<T>() +
                                    " blocks of " + std::to_string(kValuesPerItem<T>) +
                                    " values: head_dim " + std::to_string(dim_values) +
                                    " must be a multiple of " +
                                    std::to_string(kValuesPerItem<T>));
  const Index dim = HeadsView<T>::row_items(dim_values);  // items of T per row
  auto fail = [&](const char* what) {
    return Status::invalid_argument(
        std::string(name) + what + " (token_stride " + std::to_string(v.token_stride) +
        ", head_stride " + std::to_string(v.head_stride) + ", dim " + std::to_string(dim) +
        ", shape " + shape_string(v) + ")");
  };
  if (tokens > 0 && heads > 0 && dim > 0 && v.data == nullptr)
    return fail(" has no data (null pointer)");
  if (v.token_stride < 0 || v.head_stride < 0) return fail(" has negative strides");
  // Strides of extents of one element are never used; the rest must nest without overlap.
  Index s_small = 0, n_small = 1, s_big = 0, n_big = 1;
  const bool many_t = tokens > 1, many_h = heads > 1;
  if (many_t && many_h) {
    const bool t_inner = v.token_stride <= v.head_stride;
    s_small = t_inner ? v.token_stride : v.head_stride;
    n_small = t_inner ? tokens : heads;
    s_big = t_inner ? v.head_stride : v.token_stride;
    n_big = t_inner ? heads : tokens;
  } else if (many_t || many_h) {
    s_small = many_t ? v.token_stride : v.head_stride;
    n_small = many_t ? tokens : heads;
  }
  if (n_small > 1 && s_small < dim)
    return fail(" has overlapping rows: a stride is smaller than dim");
  if (n_big > 1 && s_big < s_small * (n_small - 1) + dim)
    return fail(" has overlapping rows: the outer stride does not span the inner rows");
  if (view_extent(v) < 0) return fail(" spans more memory than an index can address");
  return {};
}

/// True when the byte ranges [a, a + na) and [b, b + nb) intersect.
inline bool ranges_overlap(const void* a, std::size_t na, const void* b, std::size_t nb) {
  if (!a || !b || na == 0 || nb == 0) return false;
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return x < y + nb && y < x + na;
}

/// A byte range a call reads or writes, named as the argument it belongs to.
struct ByteRange {
  const char* name;
  const void* p;
  std::size_t n;
};

/// The bytes a call writes: out's extent. Needs the shapes validate() checks.
template <class T, class Q>
ByteRange out_range(const AttentionArgs<T, Q>& a) {
  return {"out", a.out.data, std::size_t(view_extent(a.out)) * sizeof(acc_t<T>)};
}

/// The bytes a call reads: q, k and v (the two pools of a paged cache, whole), the paged cache's
/// block table (its ceil(L / B) entries), v_sum, bias (empty ranges for absent ones). Needs the
/// shapes validate() checks.
template <class T, class Q>
std::array<ByteRange, 6> input_ranges(const AttentionArgs<T, Q>& a) {
  using Acc = acc_t<T>;
  const bool paged = !a.paged.empty();
  const Index Hkv = paged ? a.paged.heads : a.k.heads, d = a.q.dim;
  const std::size_t pool = paged ? std::size_t(paged_pool_extent(a.paged)) * sizeof(T) : 0;
  return {{
      {"q", a.q.data, std::size_t(view_extent(a.q)) * sizeof(Q)},
      {"k", paged ? static_cast<const void*>(a.paged.k_pool) : a.k.data,
       paged ? pool : std::size_t(view_extent(a.k)) * sizeof(T)},
      {"v", paged ? static_cast<const void*>(a.paged.v_pool) : a.v.data,
       paged ? pool : std::size_t(view_extent(a.v)) * sizeof(T)},
      {"v_sum", a.v_sum,
       a.v_sum
           ? std::size_t((Hkv - 1) * (a.v_sum_stride > 0 ? a.v_sum_stride : d) + d) * sizeof(Acc)
           : 0},
      {"bias", a.bias.data,
       a.bias.data
           ? std::size_t((a.bias.rows - 1) * a.bias.row_stride + a.bias.cols) * sizeof(float)
           : 0},
      {"paged.block_table", a.paged.block_table,
       paged && a.paged.block_size > 0
           ? std::size_t((a.paged.tokens + a.paged.block_size - 1) / a.paged.block_size) *
                 sizeof(std::int32_t)
           : 0},
  }};
}

/// kInvalidArgument when the first `n` bytes of the workspace at `p` share memory with `out` or
/// an input of `a` (`seq` >= 0 names the sequence of a batch: "sequence 2: the workspace ..."):
/// the kernels write their scratch there, so a workspace over the KV cache overwrote the cache,
/// and one over `out` or `q` mixed scratch into the results. Needs the shapes validate() checks.
/// Allocates only for the error message.
template <class T, class Q>
Status check_workspace_disjoint(const void* p, std::size_t n, const AttentionArgs<T, Q>& a,
                                Index seq = -1) {
  const auto overlap = [&](const char* name) {
    return Status::invalid_argument(
        (seq >= 0 ? "sequence " + std::to_string(seq) + ": " : std::string()) +
        "the workspace overlaps " + name + ": the kernels write their scratch memory there");
  };
  const ByteRange out = out_range(a);
  if (ranges_overlap(p, n, out.p, out.n)) return overlap(out.name);
  for (const ByteRange& in : input_ranges(a))
    if (ranges_overlap(p, n, in.p, in.n)) return overlap(in.name);
  return {};
}

/// Checks the per-head breakdown of `st` (when enabled): both vectors hold one counter per query
/// head of the model, `model_heads` (the call's heads land on head_offset + h). A breakdown of
/// another size was skipped without a word before, which left it at zero.
inline Status check_per_head_stats(const AttentionStats* st, Index model_heads,
                                   const std::string& what) {
  if (!st || (st->kept_per_head.empty() && st->total_per_head.empty())) return {};
  const std::size_t want = std::size_t(model_heads);
  if (st->kept_per_head.size() != want || st->total_per_head.size() != want)
    return Status::invalid_argument(
        what + " has per-head counters for " + std::to_string(st->kept_per_head.size()) +
        " (kept) and " + std::to_string(st->total_per_head.size()) +
        " (total) query heads but the model has " + std::to_string(model_heads) +
        " (model_heads, else q heads): size them with enable_per_head(" +
        std::to_string(model_heads) + ")");
  return {};
}

/// The enumerations of the options, each a value of its table (check_enum).
inline Status check_option_enums(const AttentionOptions& o) {
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.mode, "mode"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.placement, "placement"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.sdc, "sdc"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.vmc, "vmc"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.empty_row, "empty_row"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.lookup, "lookup"));
  TOPTHETA_RETURN_IF_ERROR(check_enum(o.vbar, "vbar"));
  return check_enum(o.isa, "isa");
}

/// Checks a paged cache: block size, pools, the in-block strides (rows never overlap, a block
/// fits its stride) and every block-table entry (O(L / B), no allocation when valid).
template <class T>
Status check_paged(const PagedKv<T>& p, Index d) {
  if (p.dim != d)
    return Status::invalid_argument("paged cache has head_dim " + std::to_string(p.dim) +
                                    " but q and out have " + std::to_string(d));
  if (p.block_size < 1 || p.num_blocks < 1 || !p.k_pool || !p.v_pool)
    return Status::invalid_argument(
        "paged cache needs block_size >= 1, num_blocks >= 1 and both pools (block_size " +
        std::to_string(p.block_size) + ", num_blocks " + std::to_string(p.num_blocks) + ")");
  const HeadsView<const T> block{p.k_pool, p.block_size, p.heads, p.dim, p.token_stride,
                                 p.head_stride};
  TOPTHETA_RETURN_IF_ERROR(check_view_strides("paged cache block", block, p.dim));
  if (p.block_stride < view_extent(block))
    return Status::invalid_argument("paged cache block_stride " + std::to_string(p.block_stride) +
                                    " is smaller than a block's extent " +
                                    std::to_string(view_extent(block)) + " (blocks would overlap)");
  if (paged_pool_extent(p) < 0)
    return Status::invalid_argument(
        "paged cache pools of num_blocks " + std::to_string(p.num_blocks) + " x block_stride " +
        std::to_string(p.block_stride) + " span more memory than an index can address");
  const Index nb = (p.tokens + p.block_size - 1) / p.block_size;
  for (Index b = 0; b < nb; ++b)
    if (p.block_table[b] < 0 || Index(p.block_table[b]) >= p.num_blocks)
      return Status::invalid_argument("paged cache block_table[" + std::to_string(b) + "] = " +
                                      std::to_string(p.block_table[b]) + " is outside the " +
                                      std::to_string(p.num_blocks) + " blocks of the pools");
  return {};
}

/// True when the four values have no clear majority: a 2-2 split or four different values (then
/// no view can be named as the odd one out; 2-1-1 names the two single ones).
inline bool no_majority(Index a, Index b, Index c, Index e) {
  const Index vals[4] = {a, b, c, e};
  Index best = 0, pairs = 0;
  for (Index x : vals) {
    Index n = 0;
    for (Index y : vals) n += (x == y);
    best = n > best ? n : best;
    pairs += (n == 2);
  }
  return best == 1 || pairs == 4;
}

/// The value most of the four agree on; ties go to the first (the cache's).
inline Index majority(Index first, Index b, Index c, Index e) {
  const Index vals[4] = {first, b, c, e};
  Index best = first, best_n = 0;
  for (Index x : vals) {
    Index n = 0;
    for (Index y : vals) n += (x == y);
    if (n > best_n) best = x, best_n = n;
  }
  return best;
}

}  // namespace detail

/// Validates the shapes, strides and options of a call with T = args.q.tokens new tokens.
///
/// The cache `k` fixes L and Hkv; head_dim d is the value most of q, k, v and out agree on (so
/// the one view that differs is the one named); `q` fixes T and Hq, which `out` must match.
/// Every message names the argument at fault, its shape and the required one.
/// Returns `StatusCode::kInvalidArgument` on any error (including more than kMaxKvHeads KV heads
/// or kMaxGqaGroup query heads per KV head), except kFailedPrecondition for a threshold table
/// that has no thresholds for a head of the call (ThresholdTable::check_layer()) and for a
/// calibrator whose CalibrationOptions::sdc_thresholds table is incomplete; ok otherwise.
template <class T, class Q>
Status validate(const AttentionArgs<T, Q>& args, const AttentionOptions& opt) {
  TOPTHETA_RETURN_IF_ERROR(detail::check_option_enums(opt));
  const bool paged = !args.paged.empty();
  // The cache's shape: from k / v, or from the paged cache (then k / v must stay empty).
  if (paged && (args.k.data || args.v.data || args.k.tokens || args.v.tokens))
    return Status::invalid_argument(
        "give the cache either as k / v views or as a paged cache (paged.block_table), not both");
  const HeadsView<const T> kshape =
      paged ? HeadsView<const T>{args.paged.k_pool, args.paged.tokens, args.paged.heads,
                                 args.paged.dim, 0, 0}
            : args.k;
  const HeadsView<const T> vshape =
      paged ? HeadsView<const T>{args.paged.v_pool, args.paged.tokens, args.paged.heads,
                                 args.paged.dim, 0, 0}
            : args.v;
  const Index Tq = args.q.tokens, Hq = args.q.heads;
  const Index L = kshape.tokens, Hkv = kshape.heads;
  const Index d = detail::majority(kshape.dim, args.q.dim, vshape.dim, args.out.dim);
  if (detail::no_majority(kshape.dim, args.q.dim, vshape.dim, args.out.dim))
    return Status::invalid_argument(
        std::string("q, k, v and out disagree on head_dim (no view is the odd one out): q has "
                    "shape ") +
        shape_string(args.q) + ", " + (paged ? "the paged cache's k " : "k ") +
        shape_string(kshape) + ", v " + shape_string(vshape) + ", out " +
        shape_string(args.out));
  if (Tq < 1) return Status::invalid_argument("q has no tokens: " + shape_string(args.q));
  if (Hq < 1) return Status::invalid_argument("q has no heads: " + shape_string(args.q));
  if (d < 1)
    return Status::invalid_argument("head_dim must be >= 1: q " + shape_string(args.q) + ", k " +
                                    shape_string(kshape));
  if (Hkv < 1)
    return Status::invalid_argument("k has no KV heads: " + shape_string(kshape));
  if (Hq % Hkv != 0)
    return Status::invalid_argument("query heads " + std::to_string(Hq) +
                                    " are not a multiple of KV heads " + std::to_string(Hkv) +
                                    " (q " + shape_string(args.q) + ", k " +
                                    shape_string(kshape) + ")");
  if (Hkv > kMaxKvHeads || Hq / Hkv > kMaxGqaGroup)
    return Status::invalid_argument(
        "at most " + std::to_string(kMaxKvHeads) + " KV heads and " + std::to_string(kMaxGqaGroup) +
        " query heads per KV head, got q " + shape_string(args.q) + " over " + std::to_string(Hkv) +
        " KV heads (k " + shape_string(kshape) + ")");
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view(
      "q", args.q, Tq, Hq, d, [&] { return "head_dim " + std::to_string(d) + " of k, v, out"; }));
  if (L < Tq)
    return Status::invalid_argument("k " + shape_string(kshape) + " holds fewer tokens than q " +
                                    shape_string(args.q) + " (the new tokens must be in the cache)");
  if (L > Index(INT32_MAX))
    return Status::invalid_argument("sequence too long: " + std::to_string(L));
  if (paged) {
    TOPTHETA_RETURN_IF_ERROR(detail::check_paged(args.paged, d));
  } else {
    TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view(
        "k", args.k, L, Hkv, d, [&] { return "head_dim " + std::to_string(d) + " of q, v, out"; }));
    TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view(
        "v", args.v, L, Hkv, d, [&] { return "the shape of k " + shape_string(args.k); }));
  }
  TOPTHETA_RETURN_IF_ERROR(detail::check_heads_view(
      "out", args.out, Tq, Hq, d, [&] { return "the tokens and heads of q " + shape_string(args.q); }));
  if (!args.bias.empty() || args.bias.rows != 0 || args.bias.cols != 0) {
    if (args.bias.rows != Tq || args.bias.cols < L)
      return Status::invalid_argument("bias has shape " +
                                      shape_string(args.bias.rows, args.bias.cols) + " but " +
                                      shape_string(Tq, L) + " is required");
    if (args.bias.data == nullptr)
      return Status::invalid_argument("bias has shape " + shape_string(Tq, L) + " but no data");
    if (Tq > 1 && args.bias.row_stride < args.bias.cols)
      return Status::invalid_argument("bias row_stride " + std::to_string(args.bias.row_stride) +
                                      " is smaller than its " + std::to_string(args.bias.cols) +
                                      " columns (rows would overlap)");
    // (T - 1) x row_stride + cols floats are read: the extent must fit an Index (as for views).
    if (Tq > 1 && Tq - 1 > ((Index(1) << 60) - args.bias.cols) / args.bias.row_stride)
      return Status::invalid_argument("bias row_stride " + std::to_string(args.bias.row_stride) +
                                      " x " + std::to_string(Tq - 1) +
                                      " rows spans more memory than an index can address");
  }
  if (args.v_sum_stride < 0 || (args.v_sum_stride > 0 && Hkv > 1 && args.v_sum_stride < d))
    return Status::invalid_argument("v_sum_stride " + std::to_string(args.v_sum_stride) +
                                    " must be 0 (= d) or >= d = " + std::to_string(d));
  // (Hkv - 1) x v_sum_stride + d items of v_sum are read: that extent must fit an Index (the
  // overlap checks below and the kernels' v_sum + g * stride form it).
  if (args.v_sum_stride > 0 && Hkv > 1 && Hkv - 1 > ((Index(1) << 60) - d) / args.v_sum_stride)
    return Status::invalid_argument("v_sum_stride " + std::to_string(args.v_sum_stride) + " x " +
                                    std::to_string(Hkv - 1) +
                                    " KV heads spans more memory than an index can address");
  // The output is written: it must not share memory with anything the call reads.
  const detail::ByteRange out = detail::out_range(args);
  for (const detail::ByteRange& in : detail::input_ranges(args))
    if (detail::ranges_overlap(out.p, out.n, in.p, in.n))
      return Status::invalid_argument(std::string("out overlaps ") + in.name +
                                      ": the output must not alias an input");
  if (!(std::isfinite(args.scale) && args.scale >= 0))
    return Status::invalid_argument("scale must be finite and >= 0 (0 = 1/sqrt(d)), got " +
                                    std::to_string(args.scale));
  const Index model_heads = args.model_heads > 0 ? args.model_heads : Hq;
  if (args.head_offset < 0 || args.head_offset + Hq > model_heads)
    return Status::invalid_argument("query heads [" + std::to_string(args.head_offset) + ", " +
                                    std::to_string(args.head_offset + Hq) +
                                    ") of the call (head_offset, q heads) are not inside the " +
                                    std::to_string(model_heads) + " heads of the model (model_heads)");
  // The call's GQA groups against the model's: a shard must pair each query head with the KV
  // head the model pairs it with (a misaligned slice ran with wrong outputs and no error).
  const bool shard = args.head_offset != 0 || model_heads != Hq;
  if (args.model_kv_heads < 0 || (shard && args.model_kv_heads == 0))
    return Status::invalid_argument(
        "a shard of the model's query heads (head_offset " + std::to_string(args.head_offset) +
        ", model_heads " + std::to_string(model_heads) +
        ") needs model_kv_heads > 0, the model's KV heads, to check its GQA groups; got " +
        std::to_string(args.model_kv_heads));
  if (args.model_kv_heads > 0) {
    const Index Gm = model_heads / args.model_kv_heads;
    if (model_heads % args.model_kv_heads != 0)
      return Status::invalid_argument("model_heads " + std::to_string(model_heads) +
                                      " is not a multiple of model_kv_heads " +
                                      std::to_string(args.model_kv_heads));
    if (!shard && args.model_kv_heads != Hkv)
      return Status::invalid_argument("model_kv_heads " + std::to_string(args.model_kv_heads) +
                                      " differs from the " + std::to_string(Hkv) +
                                      " KV heads of a call over every query head of the model");
    const Index G = Hq / Hkv, kv0 = args.head_offset / Gm;
    for (Index g = 0; g < Hkv; ++g) {
      const Index first = args.head_offset + g * G, last = first + G - 1;
      if (first / Gm != last / Gm)
        return Status::invalid_argument(
            "the call's KV head " + std::to_string(g) + " serves model query heads [" +
            std::to_string(first) + ", " + std::to_string(last + 1) + ") (GQA groups of " +
            std::to_string(G) + " = Hq / Hkv), which the model splits between its KV heads " +
            std::to_string(first / Gm) + " and " + std::to_string(last / Gm) + " (groups of " +
            std::to_string(Gm) +
            " = model_heads / model_kv_heads): a shard holds whole GQA groups of the model, or "
            "part of one group with its KV head");
      // The call's KV heads are a contiguous run of the model's, one per call group: two call
      // groups inside one model group would read two KV heads for that group's queries.
      if (first / Gm != kv0 + g)
        return Status::invalid_argument(
            "the call's KV head " + std::to_string(g) + " serves model query heads [" +
            std::to_string(first) + ", " + std::to_string(last + 1) +
            "), which the model pairs "
            "with its KV head " +
            std::to_string(first / Gm) +
            ", but the call's KV heads are the "
            "model's KV heads " +
            std::to_string(kv0) + ".." + std::to_string(kv0 + Hkv - 1) + " in order (groups of " +
            std::to_string(G) + " = Hq / Hkv against the model's " + std::to_string(Gm) +
            "): a shard holds whole GQA groups of the model, or part of one "
            "group with its KV head");
    }
  }
  if (opt.cap_k < 0) return Status::invalid_argument("cap_k must be >= 0");
  if (opt.threads < 0)
    return Status::invalid_argument("threads must be >= 0 (0: the OpenMP default), got " +
                                    std::to_string(opt.threads));
  TOPTHETA_RETURN_IF_ERROR(detail::check_per_head_stats(opt.stats, model_heads, "options.stats"));
  if (needs_vbar(opt) && opt.vbar == VbarSource::kRunningSum && args.v_sum == nullptr)
    return Status::invalid_argument(
        std::string(opt.vmc == VmcMode::kOn ? "VMC" : "the mean-V empty-row policy") +
        " needs the V mean: pass args.v_sum (the running sum of the V rows before the new "
        "tokens, kept by RunningVSum / KvCache at O(d) per token), or set options.vbar = "
        "VbarSource::kSumCache to let the kernel read all of V each call");
  if (!std::isfinite(opt.sdc_scale) || opt.sdc_scale < 0)
    return Status::invalid_argument("sdc_scale must be finite and >= 0");
  switch (opt.mode) {
    case AttentionMode::kDense: break;
    case AttentionMode::kTopK:
      if (opt.k < 1) return Status::invalid_argument("top-k needs k >= 1, got " + std::to_string(opt.k));
      if (opt.sdc == SdcMode::kCalibrated && opt.placement == Placement::kPreSoftmax)
        return Status::invalid_argument("calibrated SDC needs a threshold table; top-k has none");
      break;
    case AttentionMode::kTopTheta: {
      if (!opt.thresholds) return Status::invalid_argument("Top-theta needs a threshold table");
      const ThresholdTable& t = *opt.thresholds;
      // Shape, and every head of the layer has thresholds or is declared dense (never a silent
      // dense head): O(heads), no allocation when it holds.
      TOPTHETA_RETURN_IF_ERROR(t.check_layer(args.layer, model_heads));
      if (t.placement() != opt.placement)
        return Status::invalid_argument(std::string("threshold table was calibrated for ") +
                                        to_string(t.placement()) + "-softmax placement, options ask for " +
                                        to_string(opt.placement) + "-softmax");
      if (opt.sdc == SdcMode::kCalibrated && opt.placement == Placement::kPreSoftmax &&
          !t.has_sdc())
        return Status::invalid_argument("calibrated SDC needs SDC terms in the threshold table");
      // Thresholds are in units of the scaled scores: a table calibrated at another head_dim or
      // score scale would keep a different set of keys, silently (semantics §8).
      TOPTHETA_RETURN_IF_ERROR(
          detail::check_geometry(t.metadata().head_dim, t.metadata().score_scale, args.q.dim,
                                 effective_score_scale(args), "the threshold table"));
      break;
    }
    case AttentionMode::kCalibrate: {
      if (!opt.calibrator) return Status::invalid_argument("calibration mode needs a calibrator");
      const auto& co = opt.calibrator->options();
      if (args.layer < 0 || args.layer >= co.num_layers || co.num_heads != model_heads)
        return Status::invalid_argument(
            "calibrator (layers x heads) " + shape_string(co.num_layers, co.num_heads) +
            " does not cover layer " + std::to_string(args.layer) + " with " +
            std::to_string(model_heads) + " query heads");
      if (opt.sdc == SdcMode::kCalibrated)
        return Status::invalid_argument("calibrated SDC cannot be used while calibrating");
      TOPTHETA_RETURN_IF_ERROR(opt.calibrator->validate());
      TOPTHETA_RETURN_IF_ERROR(
          opt.calibrator->check_call_geometry(args.q.dim, effective_score_scale(args)));
      break;
    }
  }
  return {};
}

}  // namespace toptheta

/// Calls `X(T, Q)` once for every (cache type, query type) pair `AttentionArgs<T, Q>` accepts:
/// float, double, Eigen::half and Eigen::bfloat16 caches with queries of the cache type, and
/// Eigen::half, Eigen::bfloat16 and BlockQ8_0 caches with float queries. Used to declare and
/// define the compiled instances of the entry points (attention.hpp, plan.hpp).
#define TOPTHETA_FOR_EACH_ARGS_TYPE(X)                                                   \
  X(float, float)                                                                        \
  X(double, double)                                                                      \
  X(::Eigen::half, ::Eigen::half)                                                        \
  X(::Eigen::half, float)                                                                \
  X(::Eigen::bfloat16, ::Eigen::bfloat16)                                                \
  X(::Eigen::bfloat16, float)                                                            \
  X(::toptheta::BlockQ8_0, float)
