#pragma once
/// \file tools/cli_checks.hpp
/// CLI11 checks of numeric options, shared by the command-line tool `toptheta-thresholds`
/// (thresholds_cli.hpp) and the llama2.c runner (examples/llama2c/cli_options.hpp): integers in a
/// range, written in decimal, and finite reals in a range. Each check names the option's value
/// and the accepted range in its message, e.g. `'0' is not an integer >= 1`.

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>

namespace toptheta::cli {

/// CLI11 check of an integer option stored in a T: a decimal integer in [lo, hi], named as one in
/// the message (CLI::Range and CLI::PositiveNumber print their bounds as doubles, up to DBL_MAX).
/// With no upper bound of its own (hi = T's maximum) the message says ">= lo", unless the value
/// is an integer too large for T.
///
/// Decimal only: CLI11 reads integers with strtoll / strtoull in base 0, so `010` was 8 and `0x10`
/// 16; here they are 10 and an error. The check rewrites an accepted value in canonical decimal
/// (no sign, no leading zeros) before CLI11 converts it: register it with `->transform()`, as
/// `->check()` marks a validator non-modifying and CLI11 would convert the original text. Beyond 64
/// bits strtoll / strtoull saturate without a word: such a value is refused as too large, not
/// clamped to T's maximum. An unsigned T refuses a negative value (CLI11 would wrap -1 around to
/// T's maximum).
template <class T>
CLI::Validator integer_in(T lo, T hi = std::numeric_limits<T>::max()) {
  static_assert(std::is_integral<T>::value && sizeof(T) <= 8, "integer_in takes an integer type");
  const bool unbounded = hi == std::numeric_limits<T>::max();
  const std::string bounded = "from " + std::to_string(lo) + " to " + std::to_string(hi);
  const std::string range = unbounded ? ">= " + std::to_string(lo) : bounded;
  return CLI::Validator(
      [lo, hi, range, bounded](std::string& s) -> std::string {
        const std::size_t sign = !s.empty() && (s[0] == '+' || s[0] == '-') ? 1 : 0;
        const bool digits =
            s.size() > sign && s.find_first_not_of("0123456789", sign) == std::string::npos;
        if (!digits) return "'" + s + "' is not an integer " + range;
        const bool negative = s[0] == '-';
        const bool zero = s.find_first_not_of("0", sign) == std::string::npos;
        // Too large (positive and beyond T) or below lo; the value itself when neither.
        bool too_large = false;
        T v{};
        errno = 0;
        if (std::is_unsigned<T>::value) {
          if (negative && !zero) return "'" + s + "' is not an integer " + range;
          const unsigned long long x = zero ? 0ULL : std::strtoull(s.c_str() + sign, nullptr, 10);
          too_large =
              errno == ERANGE || x > static_cast<unsigned long long>(std::numeric_limits<T>::max());
          v = static_cast<T>(x);
        } else {
          const long long x = std::strtoll(s.c_str(), nullptr, 10);
          if (errno == ERANGE || x < static_cast<long long>(std::numeric_limits<T>::min())) {
            if (negative) return "'" + s + "' is not an integer " + range;
            too_large = true;
          } else {
            too_large = x > static_cast<long long>(std::numeric_limits<T>::max());
          }
          v = static_cast<T>(x);
        }
        if (too_large) return "'" + s + "' is not an integer " + bounded;
        if (v < lo || v > hi) return "'" + s + "' is not an integer " + range;
        s = std::to_string(v);
        return {};
      },
      unbounded ? "INT >= " + std::to_string(lo)
                : "INT in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

/// CLI11 check of a real option: a finite number >= lo (> lo when `open_lo`), and <= hi when hi
/// is finite. CLI::NonNegativeNumber and CLI::Range let NaN through (a NaN --temperature sampled
/// token n-1 at every step; a NaN --tolerance compared false against every difference). T is the
/// type the value is used as: for an option narrowed to float (a sampler's temperature, the
/// kernels' SDC scale) the value must also be at most FLT_MAX (1e39 passed as a double and became
/// inf). As in integer_in(), the message says ">= lo" unless the value is a finite number too
/// large for T.
template <class T = double>
CLI::Validator finite_in(double lo, double hi = std::numeric_limits<double>::infinity(),
                         bool open_lo = false) {
  const auto num = [](double x) {
    char t[32];
    std::snprintf(t, sizeof t, "%.9g", x);
    return std::string(t);
  };
  const double top = std::min(hi, double(std::numeric_limits<T>::max()));
  const std::string bounded =
      std::string(open_lo ? "in (" : "in [") + num(lo) + ", " + num(top) + "]";
  const std::string range =
      std::isfinite(hi) ? bounded : std::string(open_lo ? "> " : ">= ") + num(lo);
  return CLI::Validator(
      [lo, top, open_lo, range, bounded](std::string& s) -> std::string {
        double v = 0.0;
        const bool finite = CLI::detail::lexical_cast(s, v) && std::isfinite(v);
        if (finite && (open_lo ? v > lo : v >= lo) && v <= top) return {};
        return "'" + s + "' is not a finite number " + (finite && v > top ? bounded : range);
      },
      "FINITE " + (top < std::numeric_limits<double>::max() ? bounded : range));
}

}  // namespace toptheta::cli
