#pragma once
/// \file version.hpp
/// Library version (semantic versioning).

/// Major version: incremented on incompatible API changes.
#define TOPTHETA_VERSION_MAJOR 0
/// Minor version: incremented on compatible additions.
#define TOPTHETA_VERSION_MINOR 1
/// Patch version: incremented on compatible fixes.
#define TOPTHETA_VERSION_PATCH 0
/// "MAJOR.MINOR.PATCH", e.g. "0.1.0".
#define TOPTHETA_VERSION_STRING "0.1.0"

namespace toptheta {
/// TOPTHETA_VERSION_MAJOR as a constant.
inline constexpr int kVersionMajor = TOPTHETA_VERSION_MAJOR;
/// TOPTHETA_VERSION_MINOR as a constant.
inline constexpr int kVersionMinor = TOPTHETA_VERSION_MINOR;
/// TOPTHETA_VERSION_PATCH as a constant.
inline constexpr int kVersionPatch = TOPTHETA_VERSION_PATCH;
/// TOPTHETA_VERSION_STRING as a constant.
inline constexpr const char* kVersionString = TOPTHETA_VERSION_STRING;
}  // namespace toptheta
