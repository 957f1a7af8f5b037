#pragma once
/// \file options.hpp
/// Everything that selects what an attention call computes: the enumerations of the variants
/// (each with one name table, used by `to_string`, `parse` and the command-line tools) and
/// `AttentionOptions`, the options of `decode` / `prefill`. What each option computes is fixed
/// by docs/semantics.md; the paper's terms are in brackets (arXiv 2502.08363).

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <type_traits>

#include "types.hpp"

namespace toptheta {

class ThresholdTable;
class Calibrator;
struct AttentionStats;

/// Which keys a thresholded row keeps.
enum class AttentionMode {
  kDense,      ///< all keys, exact softmax attention
  kTopK,       ///< the k largest scores per row, ties to the lower index (the baseline)
  kTopTheta,   ///< a_j > theta(layer, head, L), theta calibrated offline (paper section 3)
  kCalibrate,  ///< observe rows into a Calibrator; output is top-k (TAC) or dense
};

/// Where the threshold is compared (paper section 3.1): raw scores or dense probabilities.
enum class Placement {
  kPreSoftmax,   ///< a_j = s_j
  kPostSoftmax,  ///< a_j = p_j = softmax(s)_j
};

/// Softmax-denominator compensation, pre-softmax placement only (paper section 3.3, SDC).
enum class SdcMode {
  kNone,          ///< renormalise over the kept set
  kExact,         ///< D~ = sum over dropped keys of exp(s_j - M)
  kExpThreshold,  ///< D~ = n_dropped * exp(theta - M)
  kCalibrated,    ///< D~ = the table's offline term C(l, h, L)
};

/// V-mean compensation (paper section 3.4, VMC): add (1 - sum_j w_j) * mean(V[0:L]).
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
  E value;
  const char* name;
};

/// Name table of enumeration E: `static constexpr EnumName<E> table[]`.
template <class E>
struct EnumNames;

template <>
struct EnumNames<AttentionMode> {
  static constexpr EnumName<AttentionMode> table[] = {{AttentionMode::kDense, "dense"},
                                                      {AttentionMode::kTopK, "topk"},
                                                      {AttentionMode::kTopTheta, "toptheta"},
                                                      {AttentionMode::kCalibrate, "calibrate"}};
};
template <>
struct EnumNames<Placement> {
  static constexpr EnumName<Placement> table[] = {{Placement::kPreSoftmax, "pre"},
                                                  {Placement::kPostSoftmax, "post"}};
};
template <>
struct EnumNames<SdcMode> {
  static constexpr EnumName<SdcMode> table[] = {{SdcMode::kNone, "none"},
                                                {SdcMode::kExact, "exact"},
                                                {SdcMode::kExpThreshold, "exp-threshold"},
                                                {SdcMode::kCalibrated, "calibrated"}};
};
template <>
struct EnumNames<VmcMode> {
  static constexpr EnumName<VmcMode> table[] = {{VmcMode::kOff, "off"}, {VmcMode::kOn, "on"}};
};
template <>
struct EnumNames<EmptyRowPolicy> {
  static constexpr EnumName<EmptyRowPolicy> table[] = {{EmptyRowPolicy::kKeepMax, "keep-max"},
                                                       {EmptyRowPolicy::kMeanV, "mean-v"}};
};
template <>
struct EnumNames<LookupPolicy> {
  static constexpr EnumName<LookupPolicy> table[] = {{LookupPolicy::kNearest, "nearest"},
                                                     {LookupPolicy::kLinear, "linear"}};
};
template <>
struct EnumNames<Isa> {
  static constexpr EnumName<Isa> table[] = {{Isa::kAuto, "auto"},
                                            {Isa::kScalar, "scalar"},
                                            {Isa::kAvx2, "avx2"},
                                            {Isa::kAvx512, "avx512"},
                                            {Isa::kNeon, "neon"}};
};
template <>
struct EnumNames<VbarSource> {
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
/// The defaults describe the plain top-k baseline (pre-softmax, renormalised, no VMC);
/// `toptheta_options(table)` (attention_args.hpp) returns the recommended Top-θ variant.
struct AttentionOptions {
  AttentionMode mode = AttentionMode::kDense;
  /// Top-k budget for kTopK (the caller passes the layer's k_l). kTopTheta takes k_l from the
  /// threshold table and kCalibrate from the calibrator. A row is thresholded iff L > k_l.
  Index k = 64;
  /// Placement for kTopK and kTopTheta (must match the table's). kCalibrate uses the calibrator's.
  Placement placement = Placement::kPreSoftmax;
  SdcMode sdc = SdcMode::kNone;    ///< pre-softmax only; ignored for post-softmax placement
  double sdc_scale = 1.0;          ///< denominator D + sdc_scale * D~ (>= 0)
  VmcMode vmc = VmcMode::kOff;
  EmptyRowPolicy empty_row = EmptyRowPolicy::kKeepMax;
  Index cap_k = 0;                 ///< 0: no cap; else keep at most cap_k (the most recent)
  const ThresholdTable* thresholds = nullptr;  ///< required by kTopTheta
  LookupPolicy lookup = LookupPolicy::kNearest;
  Calibrator* calibrator = nullptr;            ///< required by kCalibrate
  AttentionStats* stats = nullptr;             ///< optional; counts are added
  /// Source of the V mean (VMC, mean-V rows). The default needs `AttentionArgs::v_sum`.
  VbarSource vbar = VbarSource::kRunningSum;
  int threads = 0;                 ///< 0: OpenMP default (1 without OpenMP)
  Isa isa = Isa::kAuto;            ///< force an instruction-set path (tests, benchmarks)
};

}  // namespace toptheta
