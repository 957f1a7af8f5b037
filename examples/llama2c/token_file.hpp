#pragma once
/// \file token_file.hpp
/// Token files (`toptheta-llama2c --tokens` / `--save-tokens`): one sequence per line,
/// space-separated ids, BOS (1) first; blank lines and lines starting with '#' are skipped.

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <toptheta/status.hpp>

#include "sequence.hpp"
#include "tokenizer.hpp"

namespace llama2c {

using toptheta::Status;

/// Reads a token file: one sequence per line, space-separated ids, BOS (1) first, between 2
/// and `max_len` tokens; blank lines and lines starting with '#' are skipped. Errors name the
/// file and the line.
inline Status read_token_file(const std::string& path, int vocab_size, int max_len,
                              std::vector<Sequence>* out) {
  std::ifstream in(path);
  if (!in) return Status::not_found("token file: cannot open '" + path + "'");
  out->clear();
  std::string line;
  int ln = 0;
  while (std::getline(in, line)) {
    ++ln;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // CRLF files
    const std::string where = path + ":" + std::to_string(ln) + ": ";
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') continue;
    std::istringstream ss(line);
    std::string tok;
    Sequence s;
    while (ss >> tok) {
      char* end = nullptr;
      const long v = std::strtol(tok.c_str(), &end, 10);
      if (end == tok.c_str() || *end != '\0')
        return Status::data_loss(where + "'" + tok + "' is not an integer token id");
      if (v < 0 || v >= vocab_size)
        return Status::data_loss(where + "token id " + tok + " outside the vocabulary [0, " +
                                 std::to_string(vocab_size) + ")");
      s.push_back(std::int32_t(v));
    }
    if (s.front() != kBos)
      return Status::data_loss(where + "a sequence must start with BOS (1), got " +
                               std::to_string(s.front()));
    if (s.size() < 2 || int(s.size()) > max_len)
      return Status::data_loss(where + "sequence of " + std::to_string(s.size()) +
                               " tokens (need 2.." + std::to_string(max_len) + ")");
    out->push_back(std::move(s));
  }
  if (out->empty()) return Status::data_loss("token file '" + path + "' holds no sequence");
  return {};
}

/// Writes sequences in the token-file format.
inline Status write_token_file(const std::string& path, const std::vector<Sequence>& seqs) {
  std::ofstream o(path);
  if (!o) return Status::io_error("cannot write '" + path + "'");
  for (const Sequence& s : seqs) {
    for (std::size_t i = 0; i < s.size(); ++i) o << (i ? " " : "") << s[i];
    o << '\n';
  }
  o.flush();
  return o ? Status() : Status::io_error("write error on '" + path + "'");
}

}  // namespace llama2c
