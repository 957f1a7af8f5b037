// The llama2.c tokenizer (examples/llama2c/tokenizer.hpp) against SentencePiece's behaviour:
// unknown characters without byte pieces, byte pieces found by their text, regular pieces
// winning over byte-fallback duplicates of older exports, loader errors, and the fuzz target's
// properties over its seed corpus. Vocabularies are built here in the file format; the handed
// inputs of tests/data/llama2c/ are used as they are.

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "../examples/llama2c/model.hpp"
#include "../examples/llama2c/sequence.hpp"
#include "../examples/llama2c/tokenizer.hpp"

// The fuzz target's properties (encoding walks, round trips) run over the seed corpus.
#include "fuzz/fuzz_tokenizer.cpp"

namespace {

using llama2c::Sequence;
using llama2c::Tokenizer;
using toptheta::Status;
using toptheta::StatusCode;

std::string data_dir() { return std::string(TOPTHETA_TEST_DATA_DIR) + "/llama2c"; }
std::string models_dir() { return std::string(TOPTHETA_SHARED_DIR) + "/models"; }

/// A tokenizer file with `pieces` (score i for piece i unless given).
std::vector<unsigned char> tokenizer_file(const std::vector<std::string>& pieces,
                                          const std::vector<float>& scores = {}) {
  std::vector<unsigned char> out;
  auto put = [&](const void* p, std::size_t n) {
    out.insert(out.end(), static_cast<const unsigned char*>(p),
               static_cast<const unsigned char*>(p) + n);
  };
  std::int32_t max_len = 1;
  for (const auto& p : pieces) max_len = std::max<std::int32_t>(max_len, std::int32_t(p.size()));
  put(&max_len, 4);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    const float s = scores.empty() ? float(i) : scores[i];
    const std::int32_t len = std::int32_t(pieces[i].size());
    put(&s, 4);
    put(&len, 4);
    put(pieces[i].data(), pieces[i].size());
  }
  return out;
}

Tokenizer make(const std::vector<std::string>& pieces, const std::vector<float>& scores = {}) {
  const std::vector<unsigned char> f = tokenizer_file(pieces, scores);
  Tokenizer t;
  const Status s = Tokenizer::from_bytes(f.data(), f.size(), int(pieces.size()), "test", &t);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return t;
}

std::vector<std::string> control() { return {"<unk>", "\n<s>\n", "\n</s>\n"}; }

/// How older llama2.c exports wrote byte piece b: the character U+00bb in UTF-8.
std::string raw_byte_piece(int b) {
  if (b < 0x80) return std::string(1, char(b));
  return {char(0xC0 | (b >> 6)), char(0x80 | (b & 0x3F))};
}
std::string hex_byte_piece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// No byte pieces: unknown characters are <unk> (handed case tokenizer_no_byte_fallback).

TEST(Llama2cTokenizer, WithoutBytePiecesAnUnknownCharacterIsUnk) {
  Tokenizer t;
  const Status s = Tokenizer::load(data_dir() + "/min_tok.bin", 4, &t);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_FALSE(t.byte_fallback());
  // min_tok.bin: 0 <unk>, 1 BOS, 2 EOS, 3 " ". "é" is not in it: SentencePiece gives <unk>.
  EXPECT_EQ(t.encode("é", true), (Sequence{1, 3, 0}));
  // A run of unknown code points is one <unk> (SentencePiece merges them), spaces split runs.
  EXPECT_EQ(t.encode("éé☃", true), (Sequence{1, 3, 0}));
  EXPECT_EQ(t.encode("é é", true), (Sequence{1, 3, 0, 3, 0}));
  EXPECT_EQ(t.encode(" ", true, true), (Sequence{1, 3, 3, 2}));
  EXPECT_EQ(t.encode("", true), (Sequence{1}));
  // Invalid UTF-8 bytes are code points of their own, unknown here.
  EXPECT_EQ(t.encode("\xff\x80", false), (Sequence{3, 0}));
}

TEST(Llama2cTokenizer, HandedMinModelGeneratesFromAnUnknownPrompt) {
  // The handed reproducer end to end: the 4-token model and tokenizer, prompt "é".
  llama2c::Model m;
  Status s = llama2c::Model::load(data_dir() + "/min_model.bin", &m);
  ASSERT_TRUE(s.ok()) << s.to_string();
  Tokenizer t;
  s = Tokenizer::load(data_dir() + "/min_tok.bin", m.config().vocab_size, &t);
  ASSERT_TRUE(s.ok()) << s.to_string();
  const Sequence in = t.encode("é", true);
  ASSERT_EQ(in, (Sequence{1, 3, 0}));
  llama2c::Runner r(m);
  std::vector<float> logits;
  s = r.forward(in.data(), toptheta::Index(in.size()), llama2c::AttentionSetup::dense(), &logits);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_EQ(logits.size(), in.size() * 4u);
  EXPECT_EQ(t.decode(in), "<unk>");
}

TEST(Llama2cTokenizer, SomeBytePiecesAreNotByteFallback) {
  // Only a few <0xHH> pieces: no fallback, unknown characters stay <unk>.
  std::vector<std::string> p = control();
  p.push_back(" ");
  p.push_back(hex_byte_piece(0xC3));
  p.push_back(hex_byte_piece(0xA9));
  const Tokenizer t = make(p);
  EXPECT_FALSE(t.byte_fallback());
  EXPECT_EQ(t.kind(4), Tokenizer::Kind::kByte);
  EXPECT_EQ(t.encode("é", true), (Sequence{1, 3, 0}));
}

// ---------------------------------------------------------------------------------------------
// Byte pieces found by their text, wherever they are.

TEST(Llama2cTokenizer, BytePiecesAreFoundByTheirTextNotByTheirIds) {
  // Regular pieces first, the 256 byte pieces at ids 7..262 (not 3..258).
  std::vector<std::string> p = control();
  for (const char* r : {" ", "a", "b", " a"}) p.push_back(r);
  for (int b = 0; b < 256; ++b) p.push_back(hex_byte_piece(b));
  p.push_back("ab");
  const Tokenizer t = make(p);
  ASSERT_TRUE(t.byte_fallback());
  EXPECT_EQ(t.byte_piece(0x00), 7);
  EXPECT_EQ(t.byte_piece(0xE9), 7 + 0xE9);
  // "é" = C3 A9 falls back to the byte pieces of C3 and A9, which do not merge with "a"; "ab"
  // (id 263, score 263) beats " a" (id 6, score 6).
  EXPECT_EQ(t.encode("aé", true), (Sequence{1, 6, 7 + 0xC3, 7 + 0xA9}));
  EXPECT_EQ(t.encode("é", true), (Sequence{1, 3, 7 + 0xC3, 7 + 0xA9}));
  EXPECT_EQ(t.encode("ab", true), (Sequence{1, 3, 263}));
  EXPECT_EQ(t.encode("a", true), (Sequence{1, 6}));
  EXPECT_EQ(t.decode(t.encode("é ab\xff", true)), "é ab\xff");
  // Byte pieces never merge, and never come out of a merge of regular pieces.
  EXPECT_EQ(t.find(hex_byte_piece(0x41)), -1);
}

// ---------------------------------------------------------------------------------------------
// Older exports: byte pieces stored as the raw bytes at ids 3..258, duplicating regular pieces
// (handed case old_tokenizer_duplicate_pieces, whose tokenizer derives from Llama 2 and stays
// outside the project; this vocabulary has the same kind of duplicates).

std::vector<std::string> old_export_pieces() {
  std::vector<std::string> p = control();
  for (int b = 0; b < 256; ++b) p.push_back(raw_byte_piece(b));  // ids 3..258
  // Regular pieces, ids 259..: the same characters again, then merges.
  for (const char* r : {" ", "H", "i", ",", "y", "o", "u", ".", " H", " Hi", " y", " yo", " you"})
    p.push_back(r);
  return p;
}

TEST(Llama2cTokenizer, RegularPieceWinsOverAnOldExportByteDuplicate) {
  const std::vector<std::string> p = old_export_pieces();
  const Tokenizer t = make(p);
  ASSERT_TRUE(t.byte_fallback());
  EXPECT_EQ(t.byte_piece(','), 3 + ',');
  EXPECT_EQ(t.kind(3 + ','), Tokenizer::Kind::kByte);
  EXPECT_EQ(t.find(","), 262);  // the regular piece, not the byte piece 47
  // Ids: 259 " ", 260 H, 261 i, 262 ",", 263 y, 264 o, 265 u, 266 ".", 267 " H", 268 " Hi",
  // 269 " y", 270 " yo", 271 " you". SentencePiece: "Hi, you." -> ▁Hi , ▁you .
  // (the project's tokenizer used to give 1 268 47 271 49: ',' and '.' as byte pieces).
  EXPECT_EQ(t.encode("Hi, you.", true), (Sequence{1, 268, 262, 271, 266}));
  EXPECT_EQ(t.decode(t.encode("Hi, you.", true)), "Hi, you.");
  // A character without a regular piece falls back to the bytes of its UTF-8, which decode to
  // the raw bytes (not to the U+00XX characters their text holds).
  EXPECT_EQ(t.encode("é", false), (Sequence{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode(t.encode("Hi é", true)), "Hi é");
}

TEST(Llama2cTokenizer, IdsThreeTo258AreNotAssumedToBeBytes) {
  // 256 pieces at ids 3..258 that are not the bytes in order (one swapped): no byte pieces.
  std::vector<std::string> p = old_export_pieces();
  std::swap(p[3 + 'a'], p[3 + 'b']);
  const Tokenizer t = make(p);
  EXPECT_FALSE(t.byte_fallback());
  EXPECT_EQ(t.kind(3 + 'a'), Tokenizer::Kind::kRegular);
  // Ids 3..258 are ordinary pieces then: the first " " is id 35, "é" (C3 A9) is id 3 + 0xE9.
  EXPECT_EQ(t.encode("é", false), (Sequence{3 + ' ', 3 + 0xE9}));
}

// ---------------------------------------------------------------------------------------------
// BPE details.

TEST(Llama2cTokenizer, MergesByScoreLeftmostOnTiesWithAnyScore) {
  // 3 " ", 4 "a", 5 " a", 6 "aa". Scores far below -1e10 still merge (llama2.c's run.c starts
  // its search at -1e10 and would merge nothing here; SentencePiece merges by score alone).
  std::vector<std::string> p = control();
  for (const char* r : {" ", "a", " a", "aa"}) p.push_back(r);
  const Tokenizer t = make(p, {0, 0, 0, -1e12f, -1e12f, -3e12f, -2e12f});
  // " aaa": "aa" (-2e12) beats " a" (-3e12); of the two "aa" pairs the leftmost merges.
  EXPECT_EQ(t.encode("aaa", true), (Sequence{1, 3, 6, 4}));
  EXPECT_EQ(t.encode("aa", true), (Sequence{1, 3, 6}));
  EXPECT_EQ(t.encode("a", true), (Sequence{1, 5}));
  // Equal scores: the leftmost pair (" a") merges first.
  const Tokenizer tie = make(p, {0, 0, 0, 0, 0, 7, 7});
  EXPECT_EQ(tie.encode("aa", true), (Sequence{1, 5, 4}));
}

TEST(Llama2cTokenizer, ControlPiecesAreNeverMergeResults) {
  // A regular piece could spell "\n<s>\n" but BOS is id 1: a merge never yields it.
  std::vector<std::string> p = control();
  for (const char* r : {" ", "\n", "<", "s", ">", "\n<", "s>", "\n<s>", "\n<s>\n"}) p.push_back(r);
  const Tokenizer t = make(p);
  const Sequence ids = t.encode("\n<s>\n", false);
  EXPECT_EQ(ids, (Sequence{3, 11}));  // " ", then the regular "\n<s>\n" (id 11), not BOS
}

// ---------------------------------------------------------------------------------------------
// Loader errors: file name, token and offset in the message.

TEST(Llama2cTokenizer, LoaderErrorsNameTokenAndOffset) {
  const std::vector<unsigned char> good = tokenizer_file({"<unk>", "a", "bc", "d"});
  Tokenizer t;
  ASSERT_TRUE(Tokenizer::from_bytes(good.data(), good.size(), 4, "x.bin", &t).ok());
  Status s = Tokenizer::from_bytes(good.data(), good.size() - 1, 4, "x.bin", &t);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("tokenizer 'x.bin': truncated"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("at token 3 of 4 (offset 36)"), std::string::npos) << s.message();
  s = Tokenizer::from_bytes(good.data(), good.size(), 3, "x.bin", &t);
  EXPECT_NE(s.message().find("9 trailing bytes after 3 tokens at offset 36"), std::string::npos)
      << s.message();
  s = Tokenizer::from_bytes(good.data(), good.size(), 2, "x.bin", &t);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("below 3"), std::string::npos) << s.message();
  std::vector<unsigned char> nan = good;
  const float qnan = std::nanf("");
  std::memcpy(nan.data() + 4 + 8 + 5, &qnan, 4);  // score of token 1
  s = Tokenizer::from_bytes(nan.data(), nan.size(), 4, "x.bin", &t);
  EXPECT_NE(s.message().find("score is NaN at token 1 of 4 (offset 17)"), std::string::npos)
      << s.message();
  std::vector<unsigned char> neg = good;
  const std::int32_t minus = -2;
  std::memcpy(neg.data() + 4 + 4, &minus, 4);  // length of token 0
  s = Tokenizer::from_bytes(neg.data(), neg.size(), 4, "x.bin", &t);
  EXPECT_NE(s.message().find("negative length -2 at token 0"), std::string::npos) << s.message();
  s = Tokenizer::load("/nonexistent/tok.bin", 4, &t);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// The real tokenizers (skipped without ../shared/models).

TEST(Llama2cTokenizer, RealTokenizersHaveTheirBytePiecesAtThreeTo258) {
  const std::string tok512 = models_dir() + "/tok512.bin";
  if (!std::filesystem::exists(tok512))
    GTEST_SKIP() << "model files not found: " << tok512 << " (see ../shared/models/README.md)";
  Tokenizer t;
  const Status s = Tokenizer::load(tok512, 512, &t);
  ASSERT_TRUE(s.ok()) << s.to_string();
  ASSERT_TRUE(t.byte_fallback());
  for (int b = 0; b < 256; ++b) ASSERT_EQ(t.byte_piece(static_cast<unsigned char>(b)), b + 3);
  EXPECT_EQ(t.encode("Zoë ☃", true), (Sequence{1, 410, 469, 414, 198, 174, 410, 229, 155, 134}));
}

TEST(Llama2cTokenizer, FuzzSeedCorpusHoldsTheProperties) {
  const std::string dir = std::string(TOPTHETA_TEST_DATA_DIR) + "/../fuzz/corpus_tokenizer";
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    const std::string d((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    SCOPED_TRACE(e.path().string());
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(d.data()), d.size());
    ++n;
  }
  EXPECT_GE(n, 5u) << "seed corpus " << dir << " missing";
}

}  // namespace
