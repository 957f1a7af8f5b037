#pragma once
/// \file token_file.hpp
/// Token files (`toptheta-llama2c --tokens` / `--save-tokens`): one sequence per line,
/// whitespace-separated ids, BOS (1) first; blank lines (nothing but std::isspace characters:
/// space, \t, \n, \v, \f, \r) and lines whose first field starts with '#' are skipped.

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <toptheta/io/atomic_write.hpp>
#include <toptheta/status.hpp>

#include "sequence.hpp"
#include "tokenizer.hpp"

namespace llama2c {

using toptheta::Status;

/// The fields of `line`: its runs of characters other than std::isspace ones (space, \t, \n,
/// \v, \f, \r in the "C" locale). A line holding only such characters has none. Token files
/// and eval-grid files split their lines with it, so every blank line is blank in both.
inline std::vector<std::string> split_fields(std::string_view line) {
  std::vector<std::string> fields;
  std::size_t i = 0;
  const auto space = [&line](std::size_t j) {
    return std::isspace(static_cast<unsigned char>(line[j])) != 0;
  };
  while (i < line.size()) {
    while (i < line.size() && space(i)) ++i;
    const std::size_t start = i;
    while (i < line.size() && !space(i)) ++i;
    if (i > start) fields.emplace_back(line.substr(start, i - start));
  }
  return fields;
}

/// `field` for a message: non-printable bytes (a NUL, a control character) as \xNN; a field
/// over 40 bytes is cut there, with its length: "<first 40 bytes>... (N bytes)".
inline std::string printable(std::string_view field) {
  constexpr std::size_t kShown = 40;
  std::string out;
  for (std::size_t i = 0; i < field.size() && i < kShown; ++i) {
    const auto u = static_cast<unsigned char>(field[i]);
    if (std::isprint(u)) {
      out += field[i];
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", unsigned(u));
      out += buf;
    }
  }
  if (field.size() > kShown) out += "... (" + std::to_string(field.size()) + " bytes)";
  return out;
}

/// Largest token or grid file read (1 GiB): a larger file, or an endless stream without a
/// newline, is an error rather than a read that takes all memory.
inline constexpr std::size_t kMaxTextFileBytes = std::size_t(1) << 30;

/// Reads the text file `path` (token file, grid file) whole into `*text`, with
/// toptheta::read_file() in text mode (reading stops after the first NUL byte, which the line's
/// parser then refuses), at most kMaxTextFileBytes; next_line() walks its lines.
/// Errors: read_file()'s (kNotFound, kIoError, kDataLoss for a file over the limit), their
/// message prefixed with `what`.
inline Status read_text_file(const std::string& path, const std::string& what, std::string* text) {
  const Status s = toptheta::read_file(path, text, kMaxTextFileBytes, toptheta::FileContent::kText);
  if (!s.ok()) return Status(s.code(), what + ": " + s.message());
  return {};
}

/// The line of `text` that starts at `*pos` (lines end at '\n'; a last line without one
/// counts): sets `*line` to it (a view, without the '\n') and `*pos` past it. False at the end.
/// Walking the lines stores none of them: a file of tiny lines costs its own size, not a view
/// or a string per line.
inline bool next_line(std::string_view text, std::size_t* pos, std::string_view* line) {
  if (*pos >= text.size()) return false;
  std::size_t end = text.find('\n', *pos);
  if (end == std::string_view::npos) end = text.size();
  *line = text.substr(*pos, end - *pos);
  *pos = end + 1;
  return true;
}

/// Reads a token file: one sequence per line, whitespace-separated ids, BOS (1) first, between
/// 2 and `max_len` tokens (the model's context; INT_MAX for no limit); blank lines (split_fields()
/// finds no field) and lines whose first field starts with '#' are skipped. Errors name the file
/// and the line; malformed content is kInvalidArgument (bad user input, not lost data); a file
/// that cannot be read gives read_text_file()'s errors ("token file: <path>: ...": kNotFound
/// when it does not exist, kIoError, kDataLoss over kMaxTextFileBytes).
inline Status read_token_file(const std::string& path, int vocab_size, int max_len,
                              std::vector<Sequence>* out) {
  std::string text;
  TOPTHETA_RETURN_IF_ERROR(read_text_file(path, "token file", &text));
  out->clear();
  int ln = 0;
  std::size_t pos = 0;
  for (std::string_view line; next_line(text, &pos, &line);) {
    ++ln;
    // "path:line: ", built only for an error message.
    const auto where = [&path, ln] { return path + ":" + std::to_string(ln) + ": "; };
    const std::vector<std::string> fields = split_fields(line);
    if (fields.empty() || fields.front()[0] == '#') continue;
    Sequence s;
    for (const std::string& tok : fields) {
      char* end = nullptr;
      const long v = std::strtol(tok.c_str(), &end, 10);
      // The whole field must be the number (a NUL byte inside it ends c_str() early); one out
      // of long's range saturates, outside the vocabulary.
      if (end != tok.c_str() + tok.size())
        return Status::invalid_argument(where() + "'" + printable(tok) +
                                        "' is not an integer token id");
      if (v < 0 || v >= vocab_size)
        return Status::invalid_argument(where() + "token id " + tok +
                                        " outside the vocabulary [0, " +
                                        std::to_string(vocab_size) + ")");
      s.push_back(std::int32_t(v));
    }
    if (!s.empty() && s.front() != kBos)
      return Status::invalid_argument(where() + "a sequence must start with BOS (1), got " +
                                      std::to_string(s.front()));
    if (s.size() < 2)
      return Status::invalid_argument(where() + "sequence of " + std::to_string(s.size()) +
                                      " token: a sequence needs BOS and at least one more token");
    if (s.size() > std::size_t(max_len))
      return Status::invalid_argument(where() + "sequence of " + std::to_string(s.size()) +
                                      " tokens exceeds the model's context of " +
                                      std::to_string(max_len));
    out->push_back(std::move(s));
  }
  if (out->empty()) return Status::invalid_argument("token file '" + path + "' holds no sequence");
  return {};
}

/// Writes sequences in the token-file format, atomically (toptheta::write_file_atomic(): a
/// failed write leaves an existing file at `path` as it was). Errors: those of
/// write_file_atomic() (kIoError naming `path`).
inline Status write_token_file(const std::string& path, const std::vector<Sequence>& seqs) {
  std::string text;
  for (const Sequence& s : seqs) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (i) text += ' ';
      text += std::to_string(s[i]);
    }
    text += '\n';
  }
  return toptheta::write_file_atomic(path, text);
}

}  // namespace llama2c
