#pragma once
/// \file options.hpp
/// Enumerations that select the attention variant (DESIGN.md section 2).

#include <string>

namespace toptheta {

/// Which keys a thresholded row keeps.
enum class AttentionMode {
  kDense,      ///< all keys, exact softmax attention
  kTopK,       ///< the k largest scores per row (ties to the lower index)
  kTopTheta,   ///< scores above a calibrated per-(layer, head, length) threshold
  kCalibrate,  ///< observe rows into a Calibrator; output is top-k (TAC) or dense
};

/// Where the threshold is compared: raw scores or dense softmax probabilities.
enum class Placement {
  kPreSoftmax,   ///< a_j = s_j
  kPostSoftmax,  ///< a_j = p_j = softmax(s)_j
};

/// Softmax-denominator compensation (pre-softmax placement only).
enum class SdcMode {
  kNone,          ///< renormalise over the kept set
  kExact,         ///< add sum over dropped of exp(s_j - M)
  kExpThreshold,  ///< add n_dropped * exp(theta - M)
  kCalibrated,    ///< add the table's calibrated term C(l, h, L)
};

/// V-mean compensation: add (1 - sum w) * mean(V[0:L]).
enum class VmcMode { kOff, kOn };

/// What a thresholded row does when no score passes.
enum class EmptyRowPolicy {
  kKeepMax,  ///< keep the row maximum (first on ties); weights follow the variant
  kMeanV,    ///< output mean(V[0:L]) (uniform attention)
};

/// How theta(l, h, L) is found for a length absent from the table.
enum class LookupPolicy {
  kNearest,  ///< nearest calibrated length, ties to the smaller, clamp outside
  kLinear,   ///< linear interpolation between neighbours, clamp outside
};

inline const char* to_string(AttentionMode m) {
  switch (m) {
    case AttentionMode::kDense: return "dense";
    case AttentionMode::kTopK: return "topk";
    case AttentionMode::kTopTheta: return "toptheta";
    case AttentionMode::kCalibrate: return "calibrate";
  }
  return "?";
}
inline const char* to_string(Placement p) {
  return p == Placement::kPreSoftmax ? "pre" : "post";
}
inline const char* to_string(SdcMode s) {
  switch (s) {
    case SdcMode::kNone: return "none";
    case SdcMode::kExact: return "exact";
    case SdcMode::kExpThreshold: return "exp-threshold";
    case SdcMode::kCalibrated: return "calibrated";
  }
  return "?";
}
inline const char* to_string(EmptyRowPolicy e) {
  return e == EmptyRowPolicy::kKeepMax ? "keep-max" : "mean-v";
}
inline const char* to_string(LookupPolicy l) {
  return l == LookupPolicy::kNearest ? "nearest" : "linear";
}

/// Parse the names printed by to_string(); return false on an unknown name.
inline bool parse(const std::string& s, AttentionMode& out) {
  if (s == "dense") out = AttentionMode::kDense;
  else if (s == "topk") out = AttentionMode::kTopK;
  else if (s == "toptheta") out = AttentionMode::kTopTheta;
  else if (s == "calibrate") out = AttentionMode::kCalibrate;
  else return false;
  return true;
}
inline bool parse(const std::string& s, Placement& out) {
  if (s == "pre") out = Placement::kPreSoftmax;
  else if (s == "post") out = Placement::kPostSoftmax;
  else return false;
  return true;
}
inline bool parse(const std::string& s, SdcMode& out) {
  if (s == "none") out = SdcMode::kNone;
  else if (s == "exact") out = SdcMode::kExact;
  else if (s == "exp-threshold") out = SdcMode::kExpThreshold;
  else if (s == "calibrated") out = SdcMode::kCalibrated;
  else return false;
  return true;
}
inline bool parse(const std::string& s, EmptyRowPolicy& out) {
  if (s == "keep-max") out = EmptyRowPolicy::kKeepMax;
  else if (s == "mean-v") out = EmptyRowPolicy::kMeanV;
  else return false;
  return true;
}
inline bool parse(const std::string& s, LookupPolicy& out) {
  if (s == "nearest") out = LookupPolicy::kNearest;
  else if (s == "linear") out = LookupPolicy::kLinear;
  else return false;
  return true;
}

}  // namespace toptheta
