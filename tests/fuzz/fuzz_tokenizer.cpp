// libFuzzer target for the llama2.c tokenizer (examples/llama2c/tokenizer.hpp): the loader, and
// the encoder and decoder on random text with a random vocabulary.
//
// The first input byte selects the mode:
//   even: the rest is a tokenizer file, loaded with several vocabulary sizes (the number of
//         whole tokens it holds, one more, and 3); whatever loads encodes a few texts and the
//         file's own last bytes.
//   odd:  the rest describes a vocabulary and a text (see build_case): up to 80 short pieces
//         with scores, optionally with the 256 byte pieces (as "<0xHH>" text at a chosen
//         position, or as raw bytes at ids 3..258 like older exports), then the text. The
//         vocabulary is written in the file format, loaded, and the text encoded.
// Properties of every encoding: ids inside the vocabulary; BOS / EOS where asked for; walking
// the tokens reproduces " " + text (the dummy prefix) piece by piece, where a regular piece
// stands for its text, a byte piece for its byte and <unk> for a run of code points that have
// no regular piece (only without byte fallback; never two <unk> in a row); byte fallback leaves
// no <unk>; every merged token is the first regular piece with its text; no adjacent pair of
// regular pieces could still merge (BPE ran to the end); decode(encode(text)) == text when the
// vocabulary has a regular " " and nothing was unknown. Errors are one-line messages. No crash,
// out-of-bounds access, leak or undefined behaviour (ASan/UBSan).
//
// Build with libFuzzer:   clang++ -fsanitize=fuzzer,address,undefined ... (scripts/fuzz.sh)
// Without libFuzzer:      -DTOPTHETA_FUZZ_STANDALONE adds a main() that runs every file (or every
//                         file in every directory) named on the command line once.
// tests/test_llama2c_tokenizer.cpp includes this file to run the seed corpus as a unit test.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "../../examples/llama2c/tokenizer.hpp"

namespace llama2c_fuzz_tokenizer {

using llama2c::Tokenizer;
using toptheta::Status;

inline void require(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_tokenizer: property violated: %s\n", what);
    std::abort();
  }
}

inline void check_error(const Status& s) {
  require(!s.message().empty(), "error without a message");
  require(s.message().find('\n') == std::string::npos, "multi-line error message");
}

/// Texts longer than this are cut (the encoder is quadratic in the number of code points).
constexpr std::size_t kMaxText = 512;

/// Code point lengths as documented in tokenizer.hpp (independent re-implementation).
inline std::size_t cp_len(const std::string& s, std::size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  const std::size_t want = c >= 0xF0 && c < 0xF8 ? 4 : c >= 0xE0 && c < 0xF0 ? 3
                           : c >= 0xC0 && c < 0xE0 ? 2 : 1;
  std::size_t n = 1;
  while (n < want && i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
  return n;
}

inline void check_encoding(const Tokenizer& t, const std::string& text, bool bos, bool eos) {
  const std::vector<std::int32_t> ids = t.encode(text, bos, eos);
  const int V = t.vocab_size();
  for (std::int32_t id : ids) require(id >= 0 && id < V, "id outside the vocabulary");
  std::size_t lo = 0, hi = ids.size();
  if (bos) {
    require(!ids.empty() && ids.front() == llama2c::kBos, "BOS missing");
    ++lo;
  }
  if (eos) {
    require(hi > lo && ids.back() == llama2c::kEos, "EOS missing");
    --hi;
  }
  const std::string want = text.empty() ? std::string() : " " + text;
  std::size_t pos = 0;
  bool unknown = false;
  for (std::size_t i = lo; i < hi; ++i) {
    const std::int32_t id = ids[i];
    if (id == llama2c::kUnk) {
      require(!t.byte_fallback(), "<unk> despite byte fallback");
      require(i == lo || ids[i - 1] != llama2c::kUnk, "two <unk> in a row");
      unknown = true;
      // A run of code points without a regular piece.
      std::size_t n = 0;
      while (pos < want.size()) {
        const std::size_t l = cp_len(want, pos);
        if (t.find(want.substr(pos, l)) >= 0) break;
        pos += l;
        ++n;
      }
      require(n > 0, "<unk> for a known code point");
      continue;
    }
    const Tokenizer::Kind kind = t.kind(id);
    require(kind != Tokenizer::Kind::kControl, "control id inside the text");
    if (kind == Tokenizer::Kind::kByte) {
      require(t.byte_fallback(), "byte piece without byte fallback");
      require(pos < want.size() &&
                  static_cast<unsigned char>(want[pos]) == static_cast<unsigned char>(t.byte_value(id)),
              "byte piece does not match the text");
      ++pos;
      continue;
    }
    const std::string& p = t.piece(id);
    require(!p.empty(), "empty piece emitted");
    require(want.compare(pos, p.size(), p) == 0, "piece does not match the text");
    require(t.find(p) == id, "a later duplicate won over the first regular piece");
    pos += p.size();
  }
  require(pos == want.size(), "tokens do not cover the text");
  // BPE ran to the end: no adjacent regular pair merges into a regular piece.
  for (std::size_t i = lo; i + 1 < hi; ++i) {
    if (t.kind(ids[i]) != Tokenizer::Kind::kRegular || t.kind(ids[i + 1]) != Tokenizer::Kind::kRegular)
      continue;
    require(t.find(t.piece(ids[i]) + t.piece(ids[i + 1])) < 0, "a mergeable pair is left");
  }
  if (!unknown && !eos && t.find(" ") >= 0) {
    std::vector<std::int32_t> with_bos = ids;
    if (!bos) with_bos.insert(with_bos.begin(), llama2c::kBos);
    require(t.decode(with_bos) == text, "decode(encode(text)) != text");
  }
}

inline void encode_all(const Tokenizer& t, const std::string& text) {
  const std::string cut = text.size() > kMaxText ? text.substr(0, kMaxText) : text;
  check_encoding(t, cut, true, false);
  check_encoding(t, cut, false, true);
}

/// Whole tokens in a tokenizer file (independent scan), or 0.
inline int count_tokens(const unsigned char* p, std::size_t n) {
  if (n < 4) return 0;
  std::size_t pos = 4;
  int count = 0;
  while (n - pos >= 8 && count < 100000) {
    std::int32_t len;
    std::memcpy(&len, p + pos + 4, 4);
    if (len < 0 || std::size_t(len) > n - pos - 8) break;
    pos += 8 + std::size_t(len);
    ++count;
  }
  return count;
}

inline void run_file(const unsigned char* p, std::size_t n) {
  const int count = count_tokens(p, n);
  for (int v : {count, count + 1, 3}) {
    if (v > 100000) continue;
    Tokenizer t;
    const Status s = Tokenizer::from_bytes(p, n, v, "fuzz", &t);
    if (!s.ok()) {
      check_error(s);
      continue;
    }
    require(t.vocab_size() == v, "wrong vocabulary size");
    encode_all(t, "Once upon a time, Zoë ☃ \xff\xfe\x80 x");
    encode_all(t, std::string(reinterpret_cast<const char*>(p + n - (n < 64 ? n : 64)),
                              n < 64 ? n : 64));
  }
}

/// Byte reader over the fuzz input (zeros past its end).
struct Bytes {
  const unsigned char* p;
  std::size_t n, i = 0;
  unsigned char next() { return i < n ? p[i++] : 0; }
};

inline void put4(std::string* s, const void* v) { s->append(static_cast<const char*>(v), 4); }

inline void run_vocab(const unsigned char* p, std::size_t n) {
  Bytes in{p, n};
  const unsigned char flags = in.next();
  const int n_regular = 1 + in.next() % 80;
  const int byte_mode = flags % 3;          // 0: none, 1: "<0xHH>" text, 2: raw at ids 3..258
  const int byte_at = 3 + in.next() % 32;   // first id of the "<0xHH>" pieces (mode 1)
  const bool all_bytes = (flags & 8) == 0;  // mode 1: all 256, else only some (no fallback)
  // Regular pieces: 1..4 bytes drawn from a small alphabet so that merges happen.
  static const char alphabet[] = {' ', 'a', 'b', 'c', ',', '.', '\xc3', '\xa9', 'x', '<', '0', '>'};
  std::vector<std::string> regular;
  std::vector<float> scores;
  for (int i = 0; i < n_regular; ++i) {
    const int len = 1 + in.next() % 4;
    std::string s;
    for (int j = 0; j < len; ++j) s += alphabet[in.next() % sizeof alphabet];
    regular.push_back(s);
    scores.push_back(float(static_cast<signed char>(in.next())));
  }
  std::vector<std::string> pieces = {"<unk>", "\n<s>\n", "\n</s>\n"};
  std::vector<float> sc = {0, 0, 0};
  if (byte_mode == 2) {
    for (int b = 0; b < 256; ++b) {
      std::string s;
      if (b < 0x80) s = std::string(1, char(b));
      else s = {char(0xC0 | (b >> 6)), char(0x80 | (b & 0x3F))};
      pieces.push_back(s);
      sc.push_back(0);
    }
  }
  for (std::size_t i = 0; i < regular.size(); ++i) {
    if (byte_mode == 1 && int(pieces.size()) == byte_at) {
      for (int b = 0; b < 256; b += all_bytes ? 1 : 7) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        pieces.push_back(buf);
        sc.push_back(0);
      }
    }
    pieces.push_back(regular[i]);
    sc.push_back(scores[i]);
  }
  std::string file;
  const std::int32_t max_len = 8;
  put4(&file, &max_len);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const std::int32_t len = std::int32_t(pieces[i].size());
    put4(&file, &sc[i]);
    put4(&file, &len);
    file += pieces[i];
  }
  Tokenizer t;
  const Status s = Tokenizer::from_bytes(reinterpret_cast<const unsigned char*>(file.data()),
                                         file.size(), int(pieces.size()), "fuzz-vocab", &t);
  require(s.ok(), "a well-formed vocabulary does not load");
  if (byte_mode == 2 || (byte_mode == 1 && all_bytes && int(pieces.size()) > byte_at + 255))
    require(t.byte_fallback(), "byte pieces not recognised");
  if (byte_mode == 0 || (byte_mode == 1 && !all_bytes))
    require(!t.byte_fallback(), "byte fallback without the 256 byte pieces");
  const std::string text(reinterpret_cast<const char*>(p + in.i), n - std::min(n, in.i));
  encode_all(t, text);
}

inline void run_one(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return;
  if (data[0] % 2 == 0)
    run_file(data + 1, size - 1);
  else
    run_vocab(data + 1, size - 1);
}

}  // namespace llama2c_fuzz_tokenizer

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  llama2c_fuzz_tokenizer::run_one(data, size);
  return 0;
}

#ifdef TOPTHETA_FUZZ_STANDALONE
#include <filesystem>
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    const fs::path p(argv[i]);
    if (fs::is_directory(p)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
  }
  for (const fs::path& p : files) {
    std::ifstream f(p, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
  }
  std::printf("fuzz_tokenizer: %zu inputs ran without a crash\n", files.size());
  return files.empty() ? 1 : 0;
}
#endif
