#pragma once
/// \file tokenizer.hpp
/// The llama2.c tokenizer (`tokenizer.bin` / `tok512.bin`): a SentencePiece-style BPE vocabulary
/// with one score per piece.
///
/// File format: int32 `max_token_length`, then for each of the `vocab_size` tokens a float32
/// score, an int32 byte length and that many bytes (no terminator). The vocabulary size is not
/// stored; it comes from the model header.
///
/// Encoding follows llama2.c `encode()`: optional BOS, a dummy-prefix space when the text is not
/// empty, one token per UTF-8 code point (bytes of unknown code points fall back to the byte
/// tokens `<0xXX>` = id byte + 3), then repeated merging of the adjacent pair whose concatenation
/// is in the vocabulary with the highest score (leftmost on ties).
/// Decoding follows llama2.c `decode()`: a piece right after BOS loses its leading space, and
/// byte tokens `<0xXX>` become the raw byte.

#include <toptheta/status.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

namespace llama2c {

inline constexpr std::int32_t kUnk = 0;
inline constexpr std::int32_t kBos = 1;
inline constexpr std::int32_t kEos = 2;

class Tokenizer {
 public:
  /// Reads `path` holding exactly `vocab_size` tokens. Errors name the file and the token.
  static toptheta::Status load(const std::string& path, int vocab_size, Tokenizer* out) {
    using toptheta::Status;
    if (vocab_size <= 0)
      return Status::invalid_argument("tokenizer: vocabulary size must be positive, got " +
                                      std::to_string(vocab_size));
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return Status::not_found("tokenizer: cannot open '" + path + "'");
    std::vector<unsigned char> bytes;
    unsigned char buf[1 << 16];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    const bool read_error = std::ferror(f) != 0;
    std::fclose(f);
    if (read_error) return Status::io_error("tokenizer: read error on '" + path + "'");

    Tokenizer t;
    std::size_t pos = 0;
    auto read_i32 = [&](std::int32_t* v) {
      if (bytes.size() - pos < 4) return false;
      std::memcpy(v, bytes.data() + pos, 4);
      pos += 4;
      return true;
    };
    std::int32_t max_len = 0;
    if (!read_i32(&max_len))
      return Status::data_loss("tokenizer '" + path + "': file too short for its header");
    if (max_len <= 0 || max_len > 1024)
      return Status::data_loss("tokenizer '" + path + "': implausible max_token_length " +
                               std::to_string(max_len));
    t.max_token_length_ = max_len;
    t.pieces_.resize(static_cast<std::size_t>(vocab_size));
    t.scores_.resize(static_cast<std::size_t>(vocab_size));
    for (int i = 0; i < vocab_size; ++i) {
      float score = 0;
      std::int32_t len = 0;
      if (bytes.size() - pos < 4)
        return Status::data_loss("tokenizer '" + path + "': truncated at token " +
                                 std::to_string(i) + " of " + std::to_string(vocab_size));
      std::memcpy(&score, bytes.data() + pos, 4);
      pos += 4;
      if (!read_i32(&len) || len < 0 || std::size_t(len) > bytes.size() - pos)
        return Status::data_loss("tokenizer '" + path + "': truncated or bad length at token " +
                                 std::to_string(i) + " of " + std::to_string(vocab_size));
      t.pieces_[std::size_t(i)].assign(reinterpret_cast<const char*>(bytes.data() + pos),
                                       std::size_t(len));
      t.scores_[std::size_t(i)] = score;
      pos += std::size_t(len);
    }
    if (pos != bytes.size())
      return Status::data_loss("tokenizer '" + path + "': " + std::to_string(bytes.size() - pos) +
                               " trailing bytes after " + std::to_string(vocab_size) +
                               " tokens (vocabulary size mismatch?)");
    for (int i = 0; i < vocab_size; ++i)
      t.lookup_.emplace(t.pieces_[std::size_t(i)], i);  // first occurrence wins
    *out = std::move(t);
    return {};
  }

  int vocab_size() const { return int(pieces_.size()); }
  const std::string& piece(std::int32_t id) const { return pieces_[std::size_t(id)]; }
  float score(std::int32_t id) const { return scores_[std::size_t(id)]; }

  /// Id of a piece, or -1.
  std::int32_t find(const std::string& piece) const {
    auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  /// BPE-encodes `text` (llama2.c semantics), with BOS first when `bos` and EOS last when `eos`.
  std::vector<std::int32_t> encode(const std::string& text, bool bos = true,
                                   bool eos = false) const {
    std::vector<std::int32_t> tokens;
    if (bos) tokens.push_back(kBos);
    if (!text.empty()) {
      const std::int32_t space = find(" ");
      if (space >= 0) tokens.push_back(space);
    }
    // One token per UTF-8 code point (at most 4 bytes), byte fallback otherwise.
    std::string cp;
    for (std::size_t i = 0; i < text.size();) {
      std::size_t len = 1;
      const unsigned char c = static_cast<unsigned char>(text[i]);
      if ((c & 0xE0) == 0xC0)
        len = 2;
      else if ((c & 0xF0) == 0xE0)
        len = 3;
      else if ((c & 0xF8) == 0xF0)
        len = 4;
      // A continuation byte that does not follow the lead byte ends the code point early.
      std::size_t n = 1;
      while (n < len && i + n < text.size() &&
             (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80)
        ++n;
      cp.assign(text, i, n);
      const std::int32_t id = find(cp);
      if (id >= 0) {
        tokens.push_back(id);
      } else {
        for (char b : cp) tokens.push_back(std::int32_t(static_cast<unsigned char>(b)) + 3);
      }
      i += n;
    }
    // Merge the best-scoring adjacent pair until no pair is in the vocabulary.
    const std::size_t first = bos ? 1 : 0;
    std::string merged;
    while (true) {
      float best_score = -1e10f;
      std::int32_t best_id = -1;
      std::size_t best_idx = 0;
      for (std::size_t i = first; i + 1 < tokens.size(); ++i) {
        merged = piece(tokens[i]) + piece(tokens[i + 1]);
        const std::int32_t id = find(merged);
        if (id >= 0 && score(id) > best_score) {
          best_score = score(id);
          best_id = id;
          best_idx = i;
        }
      }
      if (best_id < 0) break;
      tokens[best_idx] = best_id;
      tokens.erase(tokens.begin() + std::ptrdiff_t(best_idx) + 1);
    }
    if (eos) tokens.push_back(kEos);
    return tokens;
  }

  /// Text of `token` following `prev` (llama2.c `decode`): the leading space of a piece right
  /// after BOS is dropped; `<0xXX>` is the raw byte.
  std::string decode(std::int32_t prev, std::int32_t token) const {
    const std::string& p = piece(token);
    std::size_t start = (prev == kBos && !p.empty() && p[0] == ' ') ? 1 : 0;
    unsigned int byte = 0;
    if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1)
      return std::string(1, static_cast<char>(byte));
    return p.substr(start);
  }

  /// Text of a whole token sequence. BOS and EOS are control tokens: the leading BOS prints
  /// nothing, a BOS or EOS later in the sequence (a story boundary) prints a newline.
  std::string decode(const std::vector<std::int32_t>& tokens) const {
    std::string s;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      const std::int32_t t = tokens[i];
      if (t == kBos || t == kEos) {
        if (i > 0) s += '\n';
        continue;
      }
      s += decode(i > 0 ? tokens[i - 1] : kBos, t);
    }
    return s;
  }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, std::int32_t> lookup_;
  int max_token_length_ = 0;
};

}  // namespace llama2c
