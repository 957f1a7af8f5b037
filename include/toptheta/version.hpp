#pragma once
/// \file version.hpp
/// Library version (semantic versioning).

#define TOPTHETA_VERSION_MAJOR 0
#define TOPTHETA_VERSION_MINOR 1
#define TOPTHETA_VERSION_PATCH 0
#define TOPTHETA_VERSION_STRING "0.1.0"

namespace toptheta {
inline constexpr int kVersionMajor = TOPTHETA_VERSION_MAJOR;
inline constexpr int kVersionMinor = TOPTHETA_VERSION_MINOR;
inline constexpr int kVersionPatch = TOPTHETA_VERSION_PATCH;
inline constexpr const char* kVersionString = TOPTHETA_VERSION_STRING;
}  // namespace toptheta
