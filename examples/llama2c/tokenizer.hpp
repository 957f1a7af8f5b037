#pragma once
/// \file tokenizer.hpp
/// The llama2.c tokenizer (`tokenizer.bin` / `tok512.bin`): a SentencePiece BPE vocabulary with
/// one score per piece, encoding and decoding as SentencePiece does.
///
/// File format: int32 `max_token_length`, then for each of the `vocab_size` tokens a float32
/// score, an int32 byte length and that many bytes (no terminator). The vocabulary size is not
/// stored; it comes from the model header. SentencePiece's '▁' is stored as ' '.
///
/// Piece kinds. Ids 0, 1 and 2 are `<unk>`, BOS and EOS (llama2.c's convention); they are never
/// the result of a merge. Byte pieces are found by their text `<0x00>`..`<0xFF>` (current
/// llama2.c `tokenizer.py` exports), wherever they sit in the vocabulary; a file without them
/// whose ids 3..258 hold exactly the bytes 0..255 as text (UTF-8 of U+0000..U+00FF, as older
/// exports wrote them) has those as its byte pieces. Every other piece is regular. When a text
/// occurs both as a regular piece and as a byte piece (older exports: ',' '.' ' ' and other
/// ASCII characters), the regular piece wins, as in SentencePiece; among duplicate regular
/// pieces the first id wins.
///
/// Encoding (SentencePiece BPE): optional BOS, a dummy-prefix ' ' before a non-empty text, one
/// symbol per UTF-8 code point (a byte that does not start a valid sequence is a code point of
/// its own), then repeated merging of the adjacent pair of regular pieces whose concatenation is
/// a regular piece with the highest score (leftmost on ties). A code point without a regular
/// piece becomes its UTF-8 byte pieces when the vocabulary has all 256 (byte fallback), else the
/// unknown id 0, a run of such code points one 0 (SentencePiece merges consecutive unknowns).
/// Byte-fallback and unknown tokens never merge.
/// Decoding follows llama2.c `decode()`: a piece right after BOS loses its leading space, and a
/// byte piece becomes the raw byte.

#include <toptheta/io/atomic_write.hpp>
#include <toptheta/status.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace llama2c {

inline constexpr std::int32_t kUnk = 0;
inline constexpr std::int32_t kBos = 1;
inline constexpr std::int32_t kEos = 2;

class Tokenizer {
 public:
  /// What a token id is (see the file comment).
  enum class Kind : std::uint8_t { kControl, kByte, kRegular };

  /// Largest tokenizer file read (64 MiB; llama2.c's 32000-token tokenizer.bin is 424 KiB): a
  /// larger file, or an endless stream such as /dev/zero, is kDataLoss rather than a read that
  /// takes all memory.
  static constexpr std::size_t kMaxFileBytes = std::size_t(64) << 20;

  /// Reads `path` holding exactly `vocab_size` tokens. Errors name the file, the token and the
  /// byte offset.
  static toptheta::Status load(const std::string& path, int vocab_size, Tokenizer* out) {
    using toptheta::Status;
    std::string bytes;
    const Status s = toptheta::read_file(path, &bytes, kMaxFileBytes);
    if (!s.ok()) return Status(s.code(), "tokenizer: " + s.message());
    return from_bytes(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                      vocab_size, path, out);
  }

  /// Same as load() for a file held in memory; `name` is used in messages.
  static toptheta::Status from_bytes(const unsigned char* bytes, std::size_t size,
                                     int vocab_size, const std::string& name, Tokenizer* out) {
    using toptheta::Status;
    const std::string where = "tokenizer '" + name + "': ";
    if (vocab_size < 3)
      return Status::invalid_argument(where + "vocabulary size " + std::to_string(vocab_size) +
                                      " is below 3 (ids 0, 1, 2 are <unk>, BOS and EOS)");
    Tokenizer t;
    std::size_t pos = 0;
    auto read4 = [&](void* v) {
      if (size - pos < 4) return false;
      std::memcpy(v, bytes + pos, 4);
      pos += 4;
      return true;
    };
    std::int32_t max_len = 0;
    if (!read4(&max_len))
      return Status::data_loss(where + "file is " + std::to_string(size) +
                               " bytes, too short for its 4-byte header");
    if (max_len <= 0 || max_len > 1024)
      return Status::data_loss(where + "implausible max_token_length " + std::to_string(max_len) +
                               " at offset 0");
    t.max_token_length_ = max_len;
    t.pieces_.resize(std::size_t(vocab_size));
    t.scores_.resize(std::size_t(vocab_size));
    for (int i = 0; i < vocab_size; ++i) {
      const std::string at = " at token " + std::to_string(i) + " of " +
                             std::to_string(vocab_size) + " (offset " + std::to_string(pos) + ")";
      float score = 0;
      std::int32_t len = 0;
      if (!read4(&score)) return Status::data_loss(where + "truncated" + at);
      if (std::isnan(score)) return Status::data_loss(where + "score is NaN" + at);
      if (!read4(&len)) return Status::data_loss(where + "truncated" + at);
      if (len < 0) return Status::data_loss(where + "negative length " + std::to_string(len) + at);
      if (std::size_t(len) > size - pos)
        return Status::data_loss(where + "truncated: length " + std::to_string(len) +
                                 " exceeds the " + std::to_string(size - pos) +
                                 " remaining bytes" + at);
      t.pieces_[std::size_t(i)].assign(reinterpret_cast<const char*>(bytes + pos),
                                       std::size_t(len));
      t.scores_[std::size_t(i)] = score;
      pos += std::size_t(len);
    }
    if (pos != size)
      return Status::data_loss(where + std::to_string(size - pos) + " trailing bytes after " +
                               std::to_string(vocab_size) + " tokens at offset " +
                               std::to_string(pos) + " (vocabulary size mismatch?)");
    t.index();
    *out = std::move(t);
    return {};
  }

  int vocab_size() const { return int(pieces_.size()); }
  /// Text of a piece; throws std::out_of_range for an id outside the vocabulary.
  const std::string& piece(std::int32_t id) const { return pieces_.at(std::size_t(id)); }
  float score(std::int32_t id) const { return scores_.at(std::size_t(id)); }
  Kind kind(std::int32_t id) const { return kinds_.at(std::size_t(id)); }
  int max_token_length() const { return max_token_length_; }

  /// Whether unknown code points fall back to byte pieces (all 256 byte pieces exist).
  bool byte_fallback() const { return byte_fallback_; }
  /// Id of the byte piece of `b`, or -1.
  std::int32_t byte_piece(unsigned char b) const { return byte_ids_[b]; }
  /// The byte a byte piece stands for, or -1 for other ids.
  int byte_value(std::int32_t id) const {
    return kind(id) == Kind::kByte ? int(byte_of_[std::size_t(id)]) : -1;
  }

  /// Id of the regular piece `piece`, or -1.
  std::int32_t find(const std::string& piece) const {
    auto it = regular_.find(piece);
    return it == regular_.end() ? -1 : it->second;
  }

  /// BPE-encodes `text` (see the file comment), with BOS first when `bos` and EOS last when
  /// `eos`. Every id is inside the vocabulary.
  std::vector<std::int32_t> encode(const std::string& text, bool bos = true,
                                   bool eos = false) const {
    std::vector<std::int32_t> tokens;
    if (bos) tokens.push_back(kBos);
    // Symbols: one per code point of " " + text; `mergeable` marks regular pieces.
    std::vector<std::int32_t> sym;
    std::vector<char> mergeable;
    const std::string s = text.empty() ? std::string() : " " + text;
    std::string cp;
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t n = code_point_length(s, i);
      cp.assign(s, i, n);
      i += n;
      const std::int32_t id = find(cp);
      if (id >= 0) {
        sym.push_back(id);
        mergeable.push_back(1);
      } else if (byte_fallback_) {
        for (char b : cp) {
          sym.push_back(byte_ids_[static_cast<unsigned char>(b)]);
          mergeable.push_back(0);
        }
      } else if (sym.empty() || sym.back() != kUnk) {  // no regular piece has id 0
        sym.push_back(kUnk);  // a run of unknown code points is one <unk>
        mergeable.push_back(0);
      }
    }
    // best[i]: the regular piece that merges sym[i] and sym[i + 1], or -1.
    std::vector<std::int32_t> best(sym.size(), -1);
    std::string merged;
    auto pair_id = [&](std::size_t i) -> std::int32_t {
      if (i + 1 >= sym.size() || !mergeable[i] || !mergeable[i + 1]) return -1;
      merged = pieces_[std::size_t(sym[i])];
      merged += pieces_[std::size_t(sym[i + 1])];
      return find(merged);
    };
    for (std::size_t i = 0; i + 1 < sym.size(); ++i) best[i] = pair_id(i);
    while (true) {
      std::int32_t best_id = -1;
      std::size_t best_idx = 0;
      for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        const std::int32_t id = best[i];
        if (id >= 0 && (best_id < 0 || scores_[std::size_t(id)] > scores_[std::size_t(best_id)])) {
          best_id = id;
          best_idx = i;
        }
      }
      if (best_id < 0) break;
      sym[best_idx] = best_id;
      sym.erase(sym.begin() + std::ptrdiff_t(best_idx) + 1);
      mergeable.erase(mergeable.begin() + std::ptrdiff_t(best_idx) + 1);
      best.erase(best.begin() + std::ptrdiff_t(best_idx) + 1);
      best[best_idx] = pair_id(best_idx);
      if (best_idx > 0) best[best_idx - 1] = pair_id(best_idx - 1);
    }
    tokens.insert(tokens.end(), sym.begin(), sym.end());
    if (eos) tokens.push_back(kEos);
    return tokens;
  }

  /// Text of `token` following `prev` (llama2.c `decode`): the leading space of a piece right
  /// after BOS is dropped; a byte piece is its raw byte. Throws std::out_of_range for an id
  /// outside the vocabulary.
  std::string decode(std::int32_t prev, std::int32_t token) const {
    const std::string& p = piece(token);
    if (kind(token) == Kind::kByte) return std::string(1, static_cast<char>(byte_value(token)));
    const std::size_t start = (prev == kBos && !p.empty() && p[0] == ' ') ? 1 : 0;
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

  /// Bytes of the code point starting at s[i]: 1 to 4, as its UTF-8 lead byte announces, cut
  /// short where a continuation byte is missing.
  static std::size_t code_point_length(const std::string& s, std::size_t i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    std::size_t len = 1;
    if ((c & 0xE0) == 0xC0)
      len = 2;
    else if ((c & 0xF0) == 0xE0)
      len = 3;
    else if ((c & 0xF8) == 0xF0)
      len = 4;
    std::size_t n = 1;
    while (n < len && i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80)
      ++n;
    return n;
  }

 private:
  /// "<0xHH>" (upper-case hex, as SentencePiece writes byte pieces) -> the byte, else -1.
  static int parse_byte_piece(const std::string& p) {
    if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
    auto hex = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    };
    const int hi = hex(p[3]), lo = hex(p[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
  /// UTF-8 of U+0000..U+00FF: how older exports wrote byte piece b.
  static std::string latin1_utf8(int b) {
    if (b < 0x80) return std::string(1, static_cast<char>(b));
    return {static_cast<char>(0xC0 | (b >> 6)), static_cast<char>(0x80 | (b & 0x3F))};
  }

  /// Classifies the pieces and builds the lookup of regular pieces.
  void index() {
    const std::size_t V = pieces_.size();
    kinds_.assign(V, Kind::kRegular);
    byte_of_.assign(V, 0);
    byte_ids_.fill(-1);
    for (std::size_t i = 0; i < V && i < 3; ++i) kinds_[i] = Kind::kControl;
    int found = 0;
    for (std::size_t i = 3; i < V; ++i) {
      const int b = parse_byte_piece(pieces_[i]);
      if (b < 0) continue;
      kinds_[i] = Kind::kByte;
      byte_of_[i] = static_cast<unsigned char>(b);
      if (byte_ids_[std::size_t(b)] < 0) {
        byte_ids_[std::size_t(b)] = std::int32_t(i);
        ++found;
      }
    }
    if (found == 0 && V >= 259) {
      // Older exports: ids 3..258 hold the bytes themselves. Only when all 256 match.
      bool raw = true;
      for (int b = 0; b < 256 && raw; ++b) raw = pieces_[std::size_t(b + 3)] == latin1_utf8(b);
      if (raw)
        for (int b = 0; b < 256; ++b) {
          kinds_[std::size_t(b + 3)] = Kind::kByte;
          byte_of_[std::size_t(b + 3)] = static_cast<unsigned char>(b);
          byte_ids_[std::size_t(b)] = b + 3;
        }
      found = raw ? 256 : 0;
    }
    byte_fallback_ = found == 256;
    regular_.clear();
    regular_.reserve(V);
    for (std::size_t i = 0; i < V; ++i)
      if (kinds_[i] == Kind::kRegular)
        regular_.emplace(pieces_[i], std::int32_t(i));  // first occurrence wins
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<Kind> kinds_;
  std::vector<unsigned char> byte_of_;
  std::array<std::int32_t, 256> byte_ids_{};
  bool byte_fallback_ = false;
  std::unordered_map<std::string, std::int32_t> regular_;
  int max_token_length_ = 0;
};

}  // namespace llama2c
