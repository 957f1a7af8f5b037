#pragma once
/// \file io/text_codec.hpp
/// Text primitives shared by the threshold file readers and writers (docs/threshold-format.md):
/// a bounds-checked line scanner that rejects binary data, a strict number grammar, and
/// round-trip-exact double formatting. Internal (`toptheta::detail`); users include
/// `io/threshold_file.hpp`.
///
/// Numbers are read and written independently of the C locale: `std::from_chars` /
/// `std::to_chars` when the standard library has the floating-point overloads, otherwise
/// `strtod` / `snprintf` with the locale's decimal point swapped for '.'.

#include <cerrno>
#include <clocale>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#if __has_include(<charconv>)
#include <charconv>
#endif

#include "../status.hpp"
#include "../types.hpp"

/// \def TOPTHETA_IO_HAS_CHARCONV
/// 1 when the standard library has the floating-point std::from_chars / std::to_chars; 0
/// otherwise, or when TOPTHETA_IO_NO_CHARCONV is defined: numbers then go through strtod /
/// snprintf with the locale's decimal point swapped for '.' (same results, slower).
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L && \
    !defined(TOPTHETA_IO_NO_CHARCONV)
#define TOPTHETA_IO_HAS_CHARCONV 1
#else
#define TOPTHETA_IO_HAS_CHARCONV 0
#endif

namespace toptheta {

/// Longest accepted line of a threshold file, in bytes, excluding the line break.
inline constexpr std::size_t kMaxThresholdLineBytes = 65536;
/// Largest accepted threshold file (both formats), in bytes.
inline constexpr std::size_t kMaxThresholdFileBytes = std::size_t(1) << 30;
/// Largest number of layers a threshold file may declare or reference.
inline constexpr Index kMaxThresholdLayers = 1024;
/// Largest number of query heads per layer a threshold file may declare or reference.
inline constexpr Index kMaxThresholdHeads = 1024;
/// Largest layers x heads product (bounds the memory a file can make the loader allocate).
inline constexpr Index kMaxThresholdSlots = Index(1) << 20;
/// Largest accepted row length L and budget k.
inline constexpr Index kMaxThresholdLength = Index(1) << 40;

namespace detail {

/// `name:line: message` (or `name: message` when `line <= 0`) as a Status.
inline Status file_error(StatusCode code, const std::string& name, Index line,
                         const std::string& message) {
  std::string m = name;
  if (line > 0) m += ":" + std::to_string(line);
  m += ": ";
  m += message;
  return Status(code, std::move(m));
}

/// A token quoted for an error message: at most 40 bytes, non-printable bytes as \xNN.
inline std::string quote_token(std::string_view tok) {
  static const char* hex = "0123456789abcdef";
  std::string q = "'";
  const std::size_t n = tok.size() < 40 ? tok.size() : 40;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(tok[i]);
    if (c < 0x20 || c >= 0x7f || c == '\\' || c == '\'') {
      q += "\\x";
      q += hex[c >> 4];
      q += hex[c & 15];
    } else {
      q += static_cast<char>(c);
    }
  }
  if (n < tok.size()) q += "...";
  q += "'";
  return q;
}

/// The UTF-8 encoding of U+FEFF, which some editors write at the start of a text file.
inline constexpr std::string_view kUtf8Bom = "\xef\xbb\xbf";

/// True when `text` starts with a UTF-8 byte-order mark.
inline bool has_utf8_bom(std::string_view text) { return text.substr(0, 3) == kUtf8Bom; }

/// `text` without a leading UTF-8 byte-order mark.
inline std::string_view strip_utf8_bom(std::string_view text) {
  return has_utf8_bom(text) ? text.substr(3) : text;
}

/// Splits `text` into lines at '\n'; one trailing '\r' is removed from each line. A final line
/// without '\n' is still a line; an empty text has no lines. A UTF-8 byte-order mark at the
/// start of `text` is skipped (it is not part of line 1, so line numbers are unchanged; columns
/// of line 1 count from after it). Never reads outside `text`.
class LineScanner {
 public:
  explicit LineScanner(std::string_view text) : text_(text), pos_(has_utf8_bom(text) ? 3 : 0) {}

  /// The next line and its 1-based number; false at the end of the text.
  bool next(std::string_view* line, Index* line_no) {
    if (pos_ >= text_.size()) return false;
    const std::size_t rest = text_.size() - pos_;
    const void* nl = std::memchr(text_.data() + pos_, '\n', rest);
    std::size_t len = nl ? std::size_t(static_cast<const char*>(nl) - (text_.data() + pos_)) : rest;
    std::string_view l = text_.substr(pos_, len);
    pos_ += len + (nl ? 1 : 0);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    *line = l;
    *line_no = ++line_no_;
    return true;
  }
  /// Number of the last line returned (0 before the first).
  Index line_no() const { return line_no_; }
  /// Offset of the first byte not yet returned (== text size at the end).
  std::size_t next_offset() const { return pos_; }

 private:
  std::string_view text_;
  std::size_t pos_ = 0;
  Index line_no_ = 0;
};

/// Empty when `line` is acceptable text; otherwise the problem: over-long line, NUL or other
/// control bytes (tab is allowed), malformed UTF-8. Columns are 1-based byte offsets.
inline std::string check_line_bytes(std::string_view line) {
  if (line.size() > kMaxThresholdLineBytes)
    return "line is longer than " + std::to_string(kMaxThresholdLineBytes) + " bytes";
  const auto* p = reinterpret_cast<const unsigned char*>(line.data());
  const std::size_t n = line.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    if ((c >= 0x20 && c < 0x7f) || c == '\t') {
      ++i;
      continue;
    }
    const std::string col = std::to_string(i + 1);
    if (c == 0) return "binary data: NUL byte at column " + col;
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      return std::string("binary data: control byte 0x") + hex[c >> 4] + hex[c & 15] +
             " at column " + col;
    }
    // UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
    std::size_t len = 0;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;
      if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;
      if (c == 0xf4) hi = 0x8f;
    }
    bool ok = len != 0 && i + len <= n;
    for (std::size_t j = 1; ok && j < len; ++j) {
      const unsigned char cc = p[i + j];
      ok = j == 1 ? (cc >= lo && cc <= hi) : (cc >= 0x80 && cc <= 0xbf);
    }
    if (!ok) return "binary data: invalid UTF-8 at column " + col;
    i += len;
  }
  return {};
}

inline bool is_blank(char c) { return c == ' ' || c == '\t'; }

/// Fields of `line` separated by runs of spaces and tabs.
inline void split_fields(std::string_view line, std::vector<std::string_view>* fields) {
  fields->clear();
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_blank(line[i])) ++i;
    const std::size_t b = i;
    while (i < line.size() && !is_blank(line[i])) ++i;
    if (i > b) fields->push_back(line.substr(b, i - b));
  }
}

/// True for lines that hold only blanks, or whose first non-blank character is '#'.
inline bool is_blank_or_comment(std::string_view line) {
  for (char c : line) {
    if (is_blank(c)) continue;
    return c == '#';
  }
  return true;
}

/// Unsigned decimal integer: digits only (no sign, no blanks), value <= `max`.
inline bool parse_uint(std::string_view tok, std::uint64_t max, std::uint64_t* out) {
  if (tok.empty() || tok.size() > 20) return false;
  std::uint64_t v = 0;
  for (char c : tok) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t d = std::uint64_t(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return false;
    v = v * 10 + d;
  }
  if (v > max) return false;
  *out = v;
  return true;
}

/// Result of parse_double() (and integer_failure()).
enum class NumberParse { kOk, kMalformed, kOverflow };

/// True when `tok` is one or more decimal digits (a number parse_uint() refused only for its
/// size, so the message can say "too large" rather than "malformed").
inline bool is_digits(std::string_view tok) {
  return !tok.empty() && tok.find_first_not_of("0123456789") == std::string_view::npos;
}

/// Why an unsigned integer token failed to parse: kOverflow for digits that are only too large,
/// kMalformed otherwise (a sign included); for the "number out of range" / "malformed number"
/// messages.
inline NumberParse integer_failure(std::string_view tok) {
  return is_digits(tok) ? NumberParse::kOverflow : NumberParse::kMalformed;
}

/// Signed decimal integer: optional '-' then digits, |value| < 2^62. Used where a negative value
/// deserves its own message ("layer -1 out of range") rather than "malformed number".
inline bool parse_int(std::string_view tok, Index* out) {
  bool neg = false;
  if (!tok.empty() && tok[0] == '-') {
    neg = true;
    tok.remove_prefix(1);
  }
  std::uint64_t v = 0;
  if (!parse_uint(tok, std::uint64_t(1) << 62, &v)) return false;
  *out = neg ? -Index(v) : Index(v);
  return true;
}

inline bool ascii_iequal(std::string_view a, const char* b) {
  const std::size_t n = std::strlen(b);
  if (a.size() != n) return false;
  for (std::size_t i = 0; i < n; ++i) {
    char c = a[i];
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
    if (c != b[i]) return false;
  }
  return true;
}

/// Strict decimal floating-point grammar (docs/threshold-format.md, "Numbers"):
/// `[+-]? (D+ ('.' D*)? | '.' D+) ([eE] [+-]? D+)?`, or `[+-]?inf`, `[+-]?infinity`, `[+-]?nan`
/// (case-insensitive). No hex floats, no blanks. Values are correctly rounded; magnitudes below
/// the smallest subnormal round to (signed) zero; finite tokens beyond the double range are
/// kOverflow.
inline NumberParse parse_double(std::string_view tok, double* out) {
  std::size_t i = 0;
  const std::size_t n = tok.size();
  bool neg = false;
  if (i < n && (tok[i] == '+' || tok[i] == '-')) neg = tok[i++] == '-';
  const std::string_view body = tok.substr(i);
  if (ascii_iequal(body, "inf") || ascii_iequal(body, "infinity")) {
    *out = neg ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
    return NumberParse::kOk;
  }
  if (ascii_iequal(body, "nan")) {
    *out = std::numeric_limits<double>::quiet_NaN();
    return NumberParse::kOk;
  }
  std::size_t int_digits = 0, frac_digits = 0;
  while (i < n && tok[i] >= '0' && tok[i] <= '9') ++i, ++int_digits;
  if (i < n && tok[i] == '.') {
    ++i;
    while (i < n && tok[i] >= '0' && tok[i] <= '9') ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return NumberParse::kMalformed;
  if (i < n && (tok[i] == 'e' || tok[i] == 'E')) {
    ++i;
    if (i < n && (tok[i] == '+' || tok[i] == '-')) ++i;
    std::size_t exp_digits = 0;
    while (i < n && tok[i] >= '0' && tok[i] <= '9') ++i, ++exp_digits;
    if (exp_digits == 0) return NumberParse::kMalformed;
  }
  if (i != n) return NumberParse::kMalformed;

  const char* first = tok.data() + (tok[0] == '+' ? 1 : 0);
  const char* last = tok.data() + n;
#if TOPTHETA_IO_HAS_CHARCONV
  double v = 0.0;
  const std::from_chars_result r = std::from_chars(first, last, v, std::chars_format::general);
  if (r.ec == std::errc() && r.ptr == last) {
    *out = v;
    return NumberParse::kOk;
  }
  // result_out_of_range: tell overflow from underflow with strtod below.
#endif
  // strtod in the current C locale: swap '.' for the locale's decimal point.
  std::string buf;
  const char* dp = std::localeconv()->decimal_point;
  for (const char* p = first; p != last; ++p) {
    if (*p == '.' && dp && std::strcmp(dp, ".") != 0) buf += dp;
    else buf += *p;
  }
  errno = 0;
  char* end = nullptr;
  const double v2 = std::strtod(buf.c_str(), &end);
  if (end != buf.c_str() + buf.size()) return NumberParse::kMalformed;
  if (std::isinf(v2)) return NumberParse::kOverflow;
  *out = v2;  // underflow (ERANGE with a zero or subnormal result) is accepted
  return NumberParse::kOk;
}

/// Appends the shortest decimal text that parse_double() reads back as exactly `v` (same bits,
/// including -0, subnormals and -inf). Non-finite values are written `inf`, `-inf`, `nan`.
/// The output is also valid Python `float()` input.
inline void append_double(std::string* out, double v) {
  if (std::isnan(v)) {
    *out += "nan";
    return;
  }
  if (std::isinf(v)) {
    *out += v < 0 ? "-inf" : "inf";
    return;
  }
  char buf[64];
#if TOPTHETA_IO_HAS_CHARCONV
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, static_cast<std::size_t>(r.ptr - buf));
#else
  // %.17g always round-trips; try 15 and 16 significant digits first for shorter text.
  const char* dp = std::localeconv()->decimal_point;
  const std::size_t dpn = dp ? std::strlen(dp) : 0;
  for (int prec = 15; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, v);
    std::string s;
    for (const char* p = buf; *p;) {
      if (dpn > 0 && std::strncmp(p, dp, dpn) == 0 && std::strcmp(dp, ".") != 0) {
        s += '.';
        p += dpn;
      } else {
        s += *p++;
      }
    }
    double back = 0.0;
    if (prec == 17 || (parse_double(s, &back) == NumberParse::kOk &&
                       std::memcmp(&back, &v, sizeof v) == 0)) {
      *out += s;
      return;
    }
  }
#endif
}

/// Appends the shortest decimal text that parse_double() followed by rounding to float reads back
/// as exactly float(v) (for values that are floats already: the same value). Used for the compact
/// curves, whose values are floats.
inline void append_float(std::string* out, double v) {
  const float f = float(v);
  if (!std::isfinite(f)) {
    append_double(out, double(f));
    return;
  }
  char buf[64];
  for (int prec = 6; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof(buf), "%.*g", prec, double(f));
    double back = 0.0;
    std::string s(buf);
    for (char& c : s)
      if (c == ',') c = '.';  // a locale's decimal comma
    if (prec == 9 || (parse_double(s, &back) == NumberParse::kOk && float(back) == f)) {
      *out += s;
      return;
    }
  }
}

/// `v` formatted by append_double().
inline std::string format_double(double v) {
  std::string s;
  append_double(&s, v);
  return s;
}

}  // namespace detail
}  // namespace toptheta
