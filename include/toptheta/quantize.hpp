#pragma once
/// \file quantize.hpp
/// llama.cpp's q8_0 format for KV caches: quantise float rows into `BlockQ8_0` blocks (32 int8
/// values and one fp16 scale each) and back. Byte-compatible with ggml's reference
/// `quantize_row_q8_0_ref` / `dequantize_row_q8_0`, so a cache written by either reads the same.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "status.hpp"
#include "types.hpp"

namespace toptheta {

/// Quantises `n` floats (n a multiple of 32) into n / 32 q8_0 blocks: per block of 32 values,
/// scale d = max|x| / 127 (stored as fp16) and q_i = round(x_i / d) (q = 0 when d = 0).
///
/// Non-finite input: a block holding a NaN or ±Inf, or whose scale overflows fp16 (max|x| / 127
/// rounds to infinity: max|x| / 127 >= 65520, the rounding boundary above fp16's largest finite
/// value 65504), gets a NaN scale, so every value of that block reads back as NaN (q8_0 cannot
/// represent ±Inf per value). A block with max|x| / 127 in [65504, 65520) gets the scale 65504,
/// so its values read back up to 0.025% smaller in magnitude. At the small end, as in ggml, the
/// scale is an fp16 subnormal when max|x| < 127 * 2^-14 (about 7.8e-3), so it keeps fewer than
/// 11 bits and the block's relative error grows, and it rounds to 0 when max|x| < 127 * 2^-25
/// (about 3.8e-6): the block then reads back as zeros. Returns kInvalidArgument (writing
/// nothing) when n is negative or not a multiple of 32 or a pointer is null with n > 0; ok
/// otherwise.
inline Status quantize_row_q8_0(const float* x, BlockQ8_0* y, Index n) {
  if (n < 0 || n % 32 != 0)
    return Status::invalid_argument("quantize_row_q8_0: n = " + std::to_string(n) +
                                    " values is not a non-negative multiple of 32");
  if (n > 0 && (x == nullptr || y == nullptr))
    return Status::invalid_argument("quantize_row_q8_0: null x or y");
  for (Index b = 0; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.0f;
    bool finite = true;
    for (int i = 0; i < 32; ++i) {
      finite = finite && std::isfinite(xb[i]);
      amax = std::max(amax, std::fabs(xb[i]));
    }
    const float d = amax / 127.0f;
    const Eigen::half dh(d);
    if (!finite || !std::isfinite(static_cast<float>(dh))) {
      y[b].d = Eigen::half(std::numeric_limits<float>::quiet_NaN());
      for (int i = 0; i < 32; ++i) y[b].qs[i] = 0;
      continue;
    }
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = dh;
    for (int i = 0; i < 32; ++i) y[b].qs[i] = static_cast<std::int8_t>(std::lround(xb[i] * id));
  }
  return {};
}

/// Dequantises n / 32 q8_0 blocks into `n` floats: x_i = d * q_i. Returns kInvalidArgument when n
/// is not a non-negative multiple of 32 or a pointer is null with n > 0.
inline Status dequantize_row_q8_0(const BlockQ8_0* x, float* y, Index n) {
  if (n < 0 || n % 32 != 0)
    return Status::invalid_argument("dequantize_row_q8_0: n = " + std::to_string(n) +
                                    " values is not a non-negative multiple of 32");
  if (n > 0 && (x == nullptr || y == nullptr))
    return Status::invalid_argument("dequantize_row_q8_0: null x or y");
  for (Index i = 0; i < n; ++i) y[i] = value_at(x, i);
  return {};
}

}  // namespace toptheta
