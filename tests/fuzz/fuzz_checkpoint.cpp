// libFuzzer target for the llama2.c checkpoint loader (examples/llama2c/checkpoint.hpp,
// model.hpp): header parsing, the size the header implies, and the reading of the weights of
// versions 0, 1 and 2.
//
// Every input is loaded twice:
//   1. as is (Model::from_bytes): random bytes almost never match the size their header implies,
//      so this exercises the header and size validation;
//   2. as a header followed by a body of exactly the size it implies: the input's first 256
//      bytes (zero-padded) are the header, the rest of the input repeats to fill the body. This
//      exercises the reading, the dequantisation and the finite checks of every version.
// Properties: no crash, no out-of-bounds access, no leak, no undefined behaviour (ASan/UBSan);
// every error is a one-line message; a loaded model's config passes the header checks again,
// its header's implied size equals the input size, and all its weights are finite;
// serialising a loaded model in its own version gives back the same weights.
//
// Build with libFuzzer:   clang++ -fsanitize=fuzzer,address,undefined ... (scripts/fuzz.sh)
// Without libFuzzer:      -DTOPTHETA_FUZZ_STANDALONE adds a main() that runs every file (or every
//                         file in every directory) named on the command line once.
// tests/test_llama2c_checkpoint.cpp includes this file to run the seed corpus as a unit test.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../examples/llama2c/checkpoint_writer.hpp"
#include "../../examples/llama2c/model.hpp"

namespace llama2c_fuzz_checkpoint {

using llama2c::CheckpointHeader;
using llama2c::Model;
using toptheta::Status;

inline void require(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "fuzz_checkpoint: property violated: %s\n", what);
    std::abort();
  }
}

inline void check_error(const Status& s) {
  require(!s.message().empty(), "error without a message");
  require(s.message().find('\n') == std::string::npos, "multi-line error message");
}

/// Bodies above this size are not built (mode 2): keeps every run fast and small.
constexpr std::uint64_t kMaxBuiltBytes = 1 << 20;

inline void check_loaded(const Model& m, std::size_t size) {
  const CheckpointHeader& h = m.header();
  require(h.file_bytes == size, "loaded a file whose size differs from the implied size");
  const llama2c::Config& c = m.config();
  require(c.dim > 0 && c.n_heads > 0 && c.dim % c.n_heads == 0, "bad dim/n_heads accepted");
  require(c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0, "bad n_kv_heads accepted");
  require(c.head_dim() % 2 == 0, "odd head dim accepted");
  for (int i = 0; i < llama2c::kNumTensors; ++i) {
    const auto t = static_cast<llama2c::Tensor>(i);
    const std::uint64_t n = llama2c::tensor_size(c, t);
    const float* p = m.tensor(t);
    for (std::uint64_t j = 0; j < n; ++j) require(std::isfinite(p[j]), "non-finite weight loaded");
  }
  if (c.shared_classifier) require(m.classifier() == m.token_embedding(), "classifier not shared");
  // Round trip through the writer in the same version: same weights. (Version 2 requantises the
  // dequantised weights, which reproduces them only up to rounding; compare versions 0 and 1.)
  if (h.version != 2) {
    std::vector<unsigned char> bytes;
    require(llama2c::serialize_checkpoint(m, h.version, &bytes).ok(), "cannot serialise");
    Model back;
    const Status s = Model::from_bytes(bytes.data(), bytes.size(), &back);
    require(s.ok(), "serialised model does not load");
    for (int i = 0; i < llama2c::kNumTensors; ++i) {
      const auto t = static_cast<llama2c::Tensor>(i);
      const std::size_t n = std::size_t(llama2c::tensor_size(c, t));
      require(n == 0 || std::memcmp(m.tensor(t), back.tensor(t), n * sizeof(float)) == 0,
              "round trip changed a weight");
    }
  }
}

inline void load(const std::uint8_t* data, std::size_t size) {
  Model m;
  const Status s = Model::from_bytes(data, size, &m);
  if (s.ok())
    check_loaded(m, size);
  else
    check_error(s);
}

inline void run_one(const std::uint8_t* data, std::size_t size) {
  load(data, size);
  if (size == 0) return;
  // Mode 2: the header (zero-padded to 256 bytes) with a body of the implied size.
  std::vector<unsigned char> head(llama2c::kVersionedHeaderBytes, 0);
  std::memcpy(head.data(), data, size < head.size() ? size : head.size());
  CheckpointHeader h;
  if (!llama2c::parse_checkpoint_header_fields(head.data(), head.size(), size, &h).ok()) return;
  const std::uint64_t header_bytes = h.header_bytes, implied = h.file_bytes;
  if (implied < header_bytes || implied > kMaxBuiltBytes) return;
  std::vector<unsigned char> file(std::size_t(implied), 0);
  std::memcpy(file.data(), head.data(), std::size_t(header_bytes));
  const std::size_t rest = size > header_bytes ? size - std::size_t(header_bytes) : 0;
  for (std::size_t i = std::size_t(header_bytes); i < file.size(); ++i)
    file[i] = rest ? data[std::size_t(header_bytes) + (i - std::size_t(header_bytes)) % rest] : 0;
  load(file.data(), file.size());
}

}  // namespace llama2c_fuzz_checkpoint

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  llama2c_fuzz_checkpoint::run_one(data, size);
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
  std::printf("fuzz_checkpoint: %zu inputs ran without a crash\n", files.size());
  return files.empty() ? 1 : 0;
}
#endif
