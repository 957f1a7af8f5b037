#pragma once
/// \file options.hpp
/// Everything that selects what an attention call computes: the enumerations of the variants
/// (each with one name table, used by `to_string`, `parse` and the command-line tools) and
/// `AttentionOptions`, the options of `decode` / `prefill`. What each option computes is fixed
/// by docs/semantics.md ("semantics §N"), which cites the paper (arXiv 2502.08363).

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>

#include "status.hpp"
#include "types.hpp"

namespace toptheta {

class ThresholdTable;
class Calibrator;
struct AttentionStats;

/// Which keys a thresholded row keeps.
enum class AttentionMode {
  kDense,      ///< all keys, exact softmax attention
  kTopK,       ///< the k largest scores per row, ties to the lower index (the baseline)
  kTopTheta,   ///< a_j > theta(layer, head, L), theta calibrated offline (semantics §4)
  kCalibrate,  ///< observe rows into a Calibrator; output is top-k (TAC) or dense
};

/// Where the threshold is compared (semantics §2): raw scores or dense probabilities.
enum class Placement {
  kPreSoftmax,   ///< a_j = s_j
  kPostSoftmax,  ///< a_j = p_j = softmax(s)_j
};

/// Softmax-denominator compensation, pre-softmax placement only (semantics §5, the paper's SDC).
enum class SdcMode {
  kNone,          ///< renormalise over the kept set
  kExact,         ///< D~ = sum over dropped keys of exp(s_j - M)
  kExpThreshold,  ///< D~ = n_dropped * exp(theta - M)
  kCalibrated,    ///< D~ = the table's offline term C(l, h, L)
};

/// V-mean compensation (semantics §6, the paper's VMC): add (1 - sum_j w_j) * mean(V[0:L]).
enum class VmcMode { kOff, kOn };

/// What a thresholded Top-θ row does when no score passes.
enum class EmptyRowPolicy {
  kKeepMax,  ///< keep the row maximum (first on ties); weights follow the variant
  kMeanV,    ///< output mean(V[0:L]) (uniform attention, as the authors' code does)
};

/// How theta(l, h, L) is found for a length absent from a per-length table.
enum class LookupPolicy {
  kNearest,  ///< nearest calibrated length, ties to the smaller, clamp outside (paper default)
  kLinear,   ///< linear interpolation between neighbours, clamp outside
};

/// Instruction-set path of the kernels (detail/isa.hpp). kAuto: the fastest one the CPU runs,
/// or the environment variable TOPTHETA_ISA.
enum class Isa { kAuto, kScalar, kAvx2, kAvx512, kNeon };

/// Where the V mean of VMC and of the mean-V empty-row policy comes from.
enum class VbarSource {
  /// `AttentionArgs::v_sum`, the caller's running sum of the V rows before the new tokens
  /// (RunningVSum / KvCache keep it at O(d) per appended token). Missing: an error.
  kRunningSum,
  /// The kernel sums V rows 0..L-1 itself: one extra read of all of V per call, O(L * d),
  /// which costs as much as dense attention's V traffic. Explicit, never a silent fallback.
  kSumCache,
};

// ---------------------------------------------------------------------------------------------
// Name tables: one per enumeration. to_string / parse / names_list / name_map use them, and so do
// the command-line tools, so a name is spelled in exactly one place.
// ---------------------------------------------------------------------------------------------

/// One (value, name) pair of a name table.
template <class E>
struct EnumName {
  E value;           ///< the enumerator
  const char* name;  ///< its spelling in files, command lines and messages (lower case, '-')
};

/// Name table of enumeration E: `static constexpr EnumName<E> table[]`.
template <class E>
struct EnumNames;

/// Names of AttentionMode: dense, topk, toptheta, calibrate.
template <>
struct EnumNames<AttentionMode> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<AttentionMode> table[] = {{AttentionMode::kDense, "dense"},
                                                      {AttentionMode::kTopK, "topk"},
                                                      {AttentionMode::kTopTheta, "toptheta"},
                                                      {AttentionMode::kCalibrate, "calibrate"}};
};
/// Names of Placement: pre, post.
template <>
struct EnumNames<Placement> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<Placement> table[] = {{Placement::kPreSoftmax, "pre"},
                                                  {Placement::kPostSoftmax, "post"}};
};
/// Names of SdcMode: none, exact, exp-threshold, calibrated.
template <>
struct EnumNames<SdcMode> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<SdcMode> table[] = {{SdcMode::kNone, "none"},
                                                {SdcMode::kExact, "exact"},
                                                {SdcMode::kExpThreshold, "exp-threshold"},
                                                {SdcMode::kCalibrated, "calibrated"}};
};
/// Names of VmcMode: off, on.
template <>
struct EnumNames<VmcMode> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<VmcMode> table[] = {{VmcMode::kOff, "off"}, {VmcMode::kOn, "on"}};
};
/// Names of EmptyRowPolicy: keep-max, mean-v.
template <>
struct EnumNames<EmptyRowPolicy> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<EmptyRowPolicy> table[] = {{EmptyRowPolicy::kKeepMax, "keep-max"},
                                                       {EmptyRowPolicy::kMeanV, "mean-v"}};
};
/// Names of LookupPolicy: nearest, linear.
template <>
struct EnumNames<LookupPolicy> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<LookupPolicy> table[] = {{LookupPolicy::kNearest, "nearest"},
                                                     {LookupPolicy::kLinear, "linear"}};
};
/// Names of Isa: auto, scalar, avx2, avx512, neon (also the values of TOPTHETA_ISA).
template <>
struct EnumNames<Isa> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<Isa> table[] = {{Isa::kAuto, "auto"},
                                            {Isa::kScalar, "scalar"},
                                            {Isa::kAvx2, "avx2"},
                                            {Isa::kAvx512, "avx512"},
                                            {Isa::kNeon, "neon"}};
};
/// Names of VbarSource: running-sum, sum-cache.
template <>
struct EnumNames<VbarSource> {
  /// The (value, name) pairs, in declaration order.
  static constexpr EnumName<VbarSource> table[] = {{VbarSource::kRunningSum, "running-sum"},
                                                   {VbarSource::kSumCache, "sum-cache"}};
};

/// True for enumerations with a name table.
template <class E, class = void>
struct HasEnumNames : std::false_type {};
template <class E>
struct HasEnumNames<E, std::void_t<decltype(EnumNames<E>::table)>> : std::true_type {};

/// The name of `e` in its table ("?" for a value outside the table).
template <class E, std::enable_if_t<HasEnumNames<E>::value, int> = 0>
const char* to_string(E e) {
  for (const auto& n : EnumNames<E>::table)
    if (n.value == e) return n.name;
  return "?";
}

/// Parses a name of the table into `out`; false (out untouched) for an unknown name.
template <class E, std::enable_if_t<HasEnumNames<E>::value, int> = 0>
bool parse(std::string_view s, E& out) {
  for (const auto& n : EnumNames<E>::table)
    if (s == n.name) {
      out = n.value;
      return true;
    }
  return false;
}

/// "dense|topk|toptheta|calibrate": the names, for help texts and error messages.
template <class E, std::enable_if_t<HasEnumNames<E>::value, int> = 0>
std::string names_list(const char* sep = "|") {
  std::string s;
  for (const auto& n : EnumNames<E>::table) {
    if (!s.empty()) s += sep;
    s += n.name;
  }
  return s;
}

namespace detail {
/// kInvalidArgument when `e` is not a value of its name table (an integer cast to the enum),
/// naming the field as `options.<field>` and the values it takes; such a value fell through the
/// kernels' switches (a mode 99 ran dense, an isa 99 said "the ? path is not compiled").
template <class E, std::enable_if_t<HasEnumNames<E>::value, int> = 0>
Status check_enum(E e, const char* field) {
  if (std::string_view(to_string(e)) != "?") return {};
  return Status::invalid_argument(std::string("options.") + field + " = " +
                                  std::to_string(static_cast<long long>(e)) + " is not one of " +
                                  names_list<E>(", "));
}
}  // namespace detail

/// name -> value map (e.g. for CLI11's CheckedTransformer).
template <class E, std::enable_if_t<HasEnumNames<E>::value, int> = 0>
std::map<std::string, E> name_map() {
  std::map<std::string, E> m;
  for (const auto& n : EnumNames<E>::table) m.emplace(n.name, n.value);
  return m;
}

// ---------------------------------------------------------------------------------------------
// AttentionOptions
// ---------------------------------------------------------------------------------------------

/// How a `decode` / `prefill` call sparsifies attention (docs/semantics.md).
///
/// `mode` defaults to kDense; the other defaults are the plain top-k baseline's settings
/// (pre-softmax, renormalised, no VMC), used when `mode` is set to kTopK.
/// `toptheta_options(table)` (attention_args.hpp) returns the recommended Top-θ variant.
struct AttentionOptions {
  /// Which keys a thresholded row keeps (semantics §3-§4); kDense ignores every sparsity option.
  AttentionMode mode = AttentionMode::kDense;
  /// Top-k budget for kTopK (the caller passes the layer's k_l). kTopTheta takes k_l from the
  /// threshold table and kCalibrate from the calibrator. A row is thresholded iff L > k_l.
  Index k = 64;
  /// Placement for kTopK and kTopTheta (must match the table's). kCalibrate uses the calibrator's.
  Placement placement = Placement::kPreSoftmax;
  /// Softmax-denominator compensation of thresholded rows (semantics §5); pre-softmax only,
  /// ignored for post-softmax placement.
  SdcMode sdc = SdcMode::kNone;
  double sdc_scale = 1.0;          ///< denominator D + sdc_scale * D~ (>= 0; semantics §5)
  /// V-mean compensation of thresholded rows (semantics §6); needs the V mean, see `vbar`.
  VmcMode vmc = VmcMode::kOff;
  /// What a Top-θ row that nothing passes does (semantics §4.3).
  EmptyRowPolicy empty_row = EmptyRowPolicy::kKeepMax;
  Index cap_k = 0;                 ///< 0: no cap; else keep at most cap_k (the most recent)
  const ThresholdTable* thresholds = nullptr;  ///< required by kTopTheta
  /// How a per-length table gives theta at a length it has no entry for (compact: ignored).
  LookupPolicy lookup = LookupPolicy::kNearest;
  Calibrator* calibrator = nullptr;            ///< required by kCalibrate
  AttentionStats* stats = nullptr;             ///< optional; counts are added
  /// Source of the V mean (VMC, mean-V rows). The default needs `AttentionArgs::v_sum`.
  VbarSource vbar = VbarSource::kRunningSum;
  int threads = 0;                 ///< 0: OpenMP default (1 without OpenMP); < 0 is an error
  Isa isa = Isa::kAuto;            ///< force an instruction-set path (tests, benchmarks)
  /// Bytes per worker that a post-softmax Top-θ prefill may spend on keeping the score tiles its
  /// first walk over the keys computes (row maxima) for the two walks that follow (softmax
  /// denominators; selection and V gather). When a query block's tiles, (L + 64) x the block's
  /// padded rows x sizeof(Acc) bytes, do not fit, the walk first takes fewer query tokens per
  /// block (fewer rows per block may change the order of the kept rows' V sums: results agree
  /// to rounding); when not even one token's G rows fit (padded to the SIMD width), the later
  /// walks recompute the tiles: the same products, so the same bits as reading them back, at
  /// about three times the Q K^T work. Counts toward workspace_size (for T = 1 too, which also
  /// sizes a prefill); 0 always recomputes. Ignored by decode, other modes and placements, and
  /// cap_k > 0.
  std::size_t post_score_tile_bytes = std::size_t(4) << 20;
};

}  // namespace toptheta
