#pragma once
/// \file checkpoint.hpp
/// llama2.c checkpoint files: the three layouts karpathy/llama2.c writes (`export.py`), the
/// validation of their headers against the file size, and the reading of the weights into one
/// float32 buffer.
///
/// **Version 0** ("legacy": `export.py legacy_export`, read by `run.c`). No magic. A 28-byte
/// header of 7 int32 `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len`
/// (a negative vocab_size means the classifier is stored separately instead of being shared with
/// the embedding), then float32 tensors, all row-major `(out, in)`:
///
///     token_embedding (vocab, dim)       rms_att (layers, dim)
///     wq (layers, dim, dim)              wk (layers, kv_dim, dim)     wv (layers, kv_dim, dim)
///     wo (layers, dim, dim)              rms_ffn (layers, dim)
///     w1 (layers, hidden, dim)           w2 (layers, dim, hidden)     w3 (layers, hidden, dim)
///     rms_final (dim)                    freq_cis_real, freq_cis_imag (seq_len, head_dim / 2),
///     wcls (vocab, dim) only when vocab_size < 0      skipped: RoPE is recomputed
///
/// **Version 1** (`export.py version1_export`, float32). A 256-byte header: uint32 magic
/// 0x616b3432 ("ak42"), int32 version 1, the 7 int32 fields (vocab_size > 0), uint8
/// shared_classifier (0 or 1), zero padding. Then float32 tensors in the order
///     rms_att, rms_ffn, rms_final, token_embedding, wq, wk, wv, wo, w1, w2, w3, [wcls]
/// (wcls only when not shared; no RoPE tables).
///
/// **Version 2** (`export.py version2_export`, read by `runq.c`: int8 Q8_0). The version-1 header
/// (version 2) with an int32 group_size at byte 37, zero padding to 256. Then float32
/// `rms_att, rms_ffn, rms_final`, then for each quantised tensor, in the order
///     token_embedding, wq[0..L), wk[0..L), wv[0..L), wo[0..L), w1[0..L), w2[0..L), w3[0..L), [wcls]
/// its int8 values (numel of one layer's tensor) followed by its float32 scales (numel /
/// group_size). Weight i of a tensor is `q[i] * scale[i / group_size]` (symmetric Q8_0 over the
/// flat tensor). They are dequantised on load: the forward pass runs in float32 (runq.c also
/// quantises the activations in its matmuls; this runner does not).
///
/// In all versions `head_dim = dim / n_heads` and `kv_dim = head_dim * n_kv_heads`. The loader
/// checks every header field, the exact file size the header implies, and that every weight
/// (not the skipped RoPE tables) is finite. Errors name the format, the field or tensor and the
/// file offset.

#include <toptheta/status.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace llama2c {

using toptheta::Status;

/// The 7 header fields of a checkpoint (and the classifier flag).
struct Config {
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int vocab_size = 0;  ///< always positive here; see `shared_classifier`
  int seq_len = 0;     ///< maximum context
  bool shared_classifier = true;

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return head_dim() * n_kv_heads; }
  std::string to_string() const {
    return "dim=" + std::to_string(dim) + " hidden_dim=" + std::to_string(hidden_dim) +
           " n_layers=" + std::to_string(n_layers) + " n_heads=" + std::to_string(n_heads) +
           " n_kv_heads=" + std::to_string(n_kv_heads) + " vocab_size=" +
           std::to_string(vocab_size) + " seq_len=" + std::to_string(seq_len) +
           (shared_classifier ? "" : " (separate classifier)");
  }
};

/// "ak42" read as a little-endian uint32: the first 4 bytes of export.py version >= 1 files.
inline constexpr std::uint32_t kCheckpointMagic = 0x616b3432u;
inline constexpr std::size_t kLegacyHeaderBytes = 7 * sizeof(std::int32_t);
inline constexpr std::size_t kVersionedHeaderBytes = 256;
/// Largest accepted header field (and group size): generous, rules out garbage headers.
inline constexpr std::int64_t kMaxHeaderField = 1 << 20;

/// The weight tensors, in the order the model keeps them in memory.
enum class Tensor : int {
  kEmbedding,
  kRmsAtt,
  kWq,
  kWk,
  kWv,
  kWo,
  kRmsFfn,
  kW1,
  kW2,
  kW3,
  kRmsFinal,
  kClassifier,  ///< empty (aliases the embedding) when the classifier is shared
  kCount
};
inline constexpr int kNumTensors = static_cast<int>(Tensor::kCount);

inline const char* tensor_name(Tensor t) {
  static const char* const names[kNumTensors] = {
      "token_embedding", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn",
      "w1",              "w2",      "w3", "rms_final", "wcls"};
  const int i = static_cast<int>(t);
  return i >= 0 && i < kNumTensors ? names[i] : "freq_cis";
}

/// Elements of one layer's slice of `t` (of the whole tensor for the non-layer tensors).
inline std::uint64_t tensor_layer_size(const Config& c, Tensor t) {
  const std::uint64_t d = std::uint64_t(c.dim), kv = std::uint64_t(c.kv_dim()),
                      h = std::uint64_t(c.hidden_dim), v = std::uint64_t(c.vocab_size);
  switch (t) {
    case Tensor::kEmbedding: return v * d;
    case Tensor::kRmsAtt: return d;
    case Tensor::kWq: return d * d;
    case Tensor::kWk: return kv * d;
    case Tensor::kWv: return kv * d;
    case Tensor::kWo: return d * d;
    case Tensor::kRmsFfn: return d;
    case Tensor::kW1: return h * d;
    case Tensor::kW2: return d * h;
    case Tensor::kW3: return h * d;
    case Tensor::kRmsFinal: return d;
    case Tensor::kClassifier: return c.shared_classifier ? 0 : v * d;
    case Tensor::kCount: break;
  }
  return 0;
}
inline bool is_layer_tensor(Tensor t) {
  return t != Tensor::kEmbedding && t != Tensor::kRmsFinal && t != Tensor::kClassifier;
}
/// Elements of the whole tensor (all layers).
inline std::uint64_t tensor_size(const Config& c, Tensor t) {
  return tensor_layer_size(c, t) * (is_layer_tensor(t) ? std::uint64_t(c.n_layers) : 1u);
}

/// How a stretch of the file after the header is stored.
enum class Encoding {
  kFloat32,      ///< float32 values
  kQ8,           ///< int8 values, then float32 scales (one per group)
  kSkipFloat32,  ///< float32 values that are not weights (legacy RoPE tables)
};

/// One stretch of the file after the header: `count` elements of `tensor` from element `first`.
struct Segment {
  Tensor tensor = Tensor::kCount;  ///< kCount for a skipped stretch
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  Encoding encoding = Encoding::kFloat32;
  int layer = -1;  ///< for messages; -1 when the segment is not one layer's slice
};

/// A checkpoint header, validated.
struct CheckpointHeader {
  int version = 0;  ///< 0 (legacy), 1 (float32) or 2 (int8 Q8_0)
  Config config;
  int group_size = 0;               ///< version 2: elements per quantisation group
  std::uint64_t header_bytes = 0;   ///< 28 (version 0) or 256
  std::uint64_t file_bytes = 0;     ///< the exact file size the header implies

  /// "llama2.c version 2 (int8 Q8_0, group size 64)" and so on.
  std::string format() const {
    switch (version) {
      case 0: return "llama2.c version 0 (legacy, float32)";
      case 1: return "llama2.c version 1 (float32)";
      default:
        return "llama2.c version 2 (int8 Q8_0, group size " + std::to_string(group_size) + ")";
    }
  }

  /// The file's stretches after the header, in file order. Call only on a validated header
  /// (the number of segments grows with n_layers, which the file size bounds).
  std::vector<Segment> layout() const {
    const Config& c = config;
    std::vector<Segment> s;
    auto whole = [&](Tensor t, Encoding e) {
      const std::uint64_t n = tensor_size(c, t);
      if (n > 0) s.push_back({t, 0, n, e, -1});
    };
    auto per_layer = [&](Tensor t, Encoding e) {
      const std::uint64_t n = tensor_layer_size(c, t);
      for (int l = 0; l < c.n_layers; ++l) s.push_back({t, std::uint64_t(l) * n, n, e, l});
    };
    const Tensor layer_mats[] = {Tensor::kWq, Tensor::kWk, Tensor::kWv, Tensor::kWo,
                                 Tensor::kW1, Tensor::kW2, Tensor::kW3};
    if (version == 0) {
      whole(Tensor::kEmbedding, Encoding::kFloat32);
      per_layer(Tensor::kRmsAtt, Encoding::kFloat32);
      for (Tensor t : {Tensor::kWq, Tensor::kWk, Tensor::kWv, Tensor::kWo})
        per_layer(t, Encoding::kFloat32);
      per_layer(Tensor::kRmsFfn, Encoding::kFloat32);
      for (Tensor t : {Tensor::kW1, Tensor::kW2, Tensor::kW3}) per_layer(t, Encoding::kFloat32);
      whole(Tensor::kRmsFinal, Encoding::kFloat32);
      s.push_back({Tensor::kCount, 0,
                   std::uint64_t(c.seq_len) * std::uint64_t(c.head_dim()),
                   Encoding::kSkipFloat32, -1});
      whole(Tensor::kClassifier, Encoding::kFloat32);
    } else if (version == 1) {
      per_layer(Tensor::kRmsAtt, Encoding::kFloat32);
      per_layer(Tensor::kRmsFfn, Encoding::kFloat32);
      whole(Tensor::kRmsFinal, Encoding::kFloat32);
      whole(Tensor::kEmbedding, Encoding::kFloat32);
      for (Tensor t : layer_mats) per_layer(t, Encoding::kFloat32);
      whole(Tensor::kClassifier, Encoding::kFloat32);
    } else {
      per_layer(Tensor::kRmsAtt, Encoding::kFloat32);
      per_layer(Tensor::kRmsFfn, Encoding::kFloat32);
      whole(Tensor::kRmsFinal, Encoding::kFloat32);
      whole(Tensor::kEmbedding, Encoding::kQ8);
      for (Tensor t : layer_mats) per_layer(t, Encoding::kQ8);
      whole(Tensor::kClassifier, Encoding::kQ8);
    }
    return s;
  }

  /// Bytes a segment occupies in the file.
  std::uint64_t segment_bytes(const Segment& s) const {
    if (s.encoding != Encoding::kQ8) return s.count * sizeof(float);
    return s.count + (s.count / std::uint64_t(group_size)) * sizeof(float);
  }
};

namespace detail {

inline std::int32_t load_i32(const unsigned char* p) {
  std::int32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Checks the 7 fields (at `fields`) and fills `c`. `signed_vocab`: version 0 stores the
/// classifier flag as the sign of vocab_size.
inline Status check_fields(const unsigned char* fields, bool signed_vocab, Config* c) {
  static const char* const names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                       "n_kv_heads", "vocab_size", "seq_len"};
  std::int32_t h[7];
  for (int i = 0; i < 7; ++i) h[i] = load_i32(fields + 4 * i);
  for (int i = 0; i < 7; ++i) {
    const std::int64_t v = (i == 5 && signed_vocab && h[i] < 0) ? -std::int64_t(h[i]) : h[i];
    if (v <= 0 || v > kMaxHeaderField)
      return Status::data_loss(
          "header field " + std::string(names[i]) + " = " + std::to_string(h[i]) +
          " is out of range (expected " +
          (i == 5 && signed_vocab ? "0 < |vocab_size|" : std::string("0 < ") + names[i]) +
          " <= " + std::to_string(kMaxHeaderField) + ")");
  }
  c->dim = h[0];
  c->hidden_dim = h[1];
  c->n_layers = h[2];
  c->n_heads = h[3];
  c->n_kv_heads = h[4];
  c->shared_classifier = h[5] > 0;
  c->vocab_size = h[5] > 0 ? h[5] : -h[5];
  c->seq_len = h[6];
  if (c->dim % c->n_heads != 0)
    return Status::data_loss("header: dim " + std::to_string(c->dim) +
                             " is not a multiple of n_heads " + std::to_string(c->n_heads));
  if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0)
    return Status::data_loss("header: n_heads " + std::to_string(c->n_heads) +
                             " is not a multiple of n_kv_heads " + std::to_string(c->n_kv_heads));
  if (c->head_dim() % 2 != 0)
    return Status::data_loss("header: head dim " + std::to_string(c->head_dim()) +
                             " is odd (RoPE rotates pairs)");
  return {};
}

/// Bytes after the header implied by a checked header; fails when implausibly large.
inline Status body_bytes(const CheckpointHeader& h, std::uint64_t* out) {
  const Config& c = h.config;
  // Every field is <= 2^20, so each tensor has < 2^62 elements and their sum stays below 2^63;
  // reject anything above 2^56 elements before multiplying by 4.
  constexpr std::uint64_t kMaxElements = std::uint64_t(1) << 56;
  std::uint64_t f32 = 0, q8 = 0, groups = 0;
  for (int i = 0; i < kNumTensors; ++i) {
    const Tensor t = static_cast<Tensor>(i);
    const bool quantised = h.version == 2 && t != Tensor::kRmsAtt && t != Tensor::kRmsFfn &&
                           t != Tensor::kRmsFinal;
    const std::uint64_t n = tensor_size(c, t);
    if (!quantised) {
      f32 += n;
      continue;
    }
    const std::uint64_t per = tensor_layer_size(c, t);
    if (per % std::uint64_t(h.group_size) != 0)
      return Status::data_loss(
          "group size " + std::to_string(h.group_size) + " does not divide tensor " +
          tensor_name(t) + " (" + std::to_string(per) + " elements" +
          (is_layer_tensor(t) ? " per layer" : "") + ")");
    q8 += n;
    groups += n / std::uint64_t(h.group_size);
  }
  if (h.version == 0) f32 += std::uint64_t(c.seq_len) * std::uint64_t(c.head_dim());  // RoPE
  if (f32 > kMaxElements || q8 > kMaxElements)
    return Status::data_loss("the fields (" + c.to_string() + ") imply an implausibly large file");
  *out = f32 * sizeof(float) + q8 + groups * sizeof(float);
  return {};
}

}  // namespace detail

/// Parses and checks a checkpoint header, except for the file size: `bytes` holds the first
/// `available` bytes of the file (256 are enough; `file_size` is only quoted in messages). On
/// success `out->file_bytes` is the exact size the header implies. Fails with a message naming
/// the format and the problem: an unknown magic version, a field out of range, inconsistent
/// fields, non-zero padding, an implausibly large implied size.
inline Status parse_checkpoint_header_fields(const unsigned char* bytes, std::size_t available,
                                             std::uint64_t file_size, CheckpointHeader* out) {
  CheckpointHeader h;
  std::uint32_t magic = 0;
  if (available >= 4) std::memcpy(&magic, bytes, 4);
  if (available >= 4 && magic == kCheckpointMagic) {
    if (available < 8)
      return Status::data_loss("file is " + std::to_string(file_size) +
                               " bytes: too short for the version after the llama2.c 'ak42' "
                               "magic");
    const std::int32_t version = detail::load_i32(bytes + 4);
    if (version != 1 && version != 2)
      return Status::data_loss(
          "llama2.c checkpoint (magic 'ak42') of version " + std::to_string(version) +
          " is not supported: this runner reads version 0 (legacy, no magic), version 1 "
          "(float32) and version 2 (int8 Q8_0) as written by llama2.c export.py");
    h.version = version;
    h.header_bytes = kVersionedHeaderBytes;
    const std::string fmt = "llama2.c version " + std::to_string(version);
    if (available < kVersionedHeaderBytes)
      return Status::data_loss("file is " + std::to_string(file_size) +
                               " bytes, shorter than the 256-byte header of a " + fmt +
                               " checkpoint");
    Status s = detail::check_fields(bytes + 8, /*signed_vocab=*/false, &h.config);
    if (!s.ok()) return Status(s.code(), fmt + " " + s.message());
    const unsigned char shared = bytes[36];
    if (shared > 1)
      return Status::data_loss(fmt + " header: shared_classifier byte (offset 36) is " +
                               std::to_string(shared) + ", expected 0 or 1");
    h.config.shared_classifier = shared == 1;
    std::size_t pad = 37;
    if (version == 2) {
      const std::int32_t gs = detail::load_i32(bytes + 37);
      if (gs <= 0 || gs > kMaxHeaderField)
        return Status::data_loss(fmt + " header: group_size (offset 37) = " + std::to_string(gs) +
                                 " is out of range (expected 0 < group_size <= " +
                                 std::to_string(kMaxHeaderField) + ")");
      h.group_size = gs;
      pad = 41;
    }
    for (std::size_t i = pad; i < kVersionedHeaderBytes; ++i)
      if (bytes[i] != 0)
        return Status::data_loss(fmt + " header: padding byte at offset " + std::to_string(i) +
                                 " is " + std::to_string(bytes[i]) +
                                 ", expected 0 (corrupted header, or a newer format)");
  } else {
    h.version = 0;
    h.header_bytes = kLegacyHeaderBytes;
    if (available < kLegacyHeaderBytes)
      return Status::data_loss("file is " + std::to_string(file_size) +
                               " bytes, shorter than the 28-byte header");
    TOPTHETA_RETURN_IF_ERROR(detail::check_fields(bytes, /*signed_vocab=*/true, &h.config));
  }
  std::uint64_t body = 0;
  const Status s = detail::body_bytes(h, &body);
  if (!s.ok())
    return Status(s.code(), (h.version == 0 ? std::string("header: ")
                                            : "llama2.c version " + std::to_string(h.version) +
                                                  " header: ") +
                                s.message());
  h.file_bytes = h.header_bytes + body;
  *out = h;
  return {};
}

/// Parses and checks the header of a file of `file_size` bytes whose first `available` bytes
/// (min(file_size, 256) are enough) are at `bytes`: parse_checkpoint_header_fields, then the file
/// size must equal the implied size (else: "truncated" or "trailing data").
inline Status parse_checkpoint_header(const unsigned char* bytes, std::size_t available,
                                      std::uint64_t file_size, CheckpointHeader* out) {
  CheckpointHeader h;
  TOPTHETA_RETURN_IF_ERROR(parse_checkpoint_header_fields(bytes, available, file_size, &h));
  if (file_size != h.file_bytes)
    return Status::data_loss(
        "file is " + std::to_string(file_size) + " bytes but its header (" + h.format() + ", " +
        h.config.to_string() + ") implies " + std::to_string(h.file_bytes) + " bytes: " +
        (file_size < h.file_bytes ? "the file is truncated"
                                  : "there is trailing data (or a corrupted header)"));
  *out = h;
  return {};
}

/// Sequential reads from an open file or from memory.
class ByteSource {
 public:
  ByteSource(std::FILE* f, std::uint64_t offset) : file_(f), offset_(offset) {}
  ByteSource(const unsigned char* bytes, std::size_t size, std::uint64_t offset)
      : bytes_(bytes), size_(size), offset_(offset) {}

  std::uint64_t offset() const { return offset_; }

  /// Reads `n` bytes into `dst` (nullptr: skip them).
  Status read(void* dst, std::size_t n) {
    if (file_) {
      if (dst == nullptr) {
        if (std::fseek(file_, long(n), SEEK_CUR) != 0)
          return Status::io_error("seek error at offset " + std::to_string(offset_));
      } else if (std::fread(dst, 1, n, file_) != n) {
        return Status::io_error("read error at offset " + std::to_string(offset_) +
                                " (the file changed while being read?)");
      }
    } else {
      if (offset_ > size_ || n > size_ - offset_)
        return Status::data_loss("read past the end at offset " + std::to_string(offset_));
      if (dst != nullptr) std::memcpy(dst, bytes_ + offset_, n);
    }
    offset_ += n;
    return {};
  }

 private:
  std::FILE* file_ = nullptr;
  const unsigned char* bytes_ = nullptr;
  std::size_t size_ = 0;
  std::uint64_t offset_ = 0;
};

/// Element offsets of the tensors in the model's float32 buffer (canonical order, see Tensor).
using TensorOffsets = std::array<std::size_t, kNumTensors>;

/// Canonical offsets and the total number of floats for `c`.
inline std::size_t canonical_offsets(const Config& c, TensorOffsets* off) {
  std::size_t o = 0;
  for (int i = 0; i < kNumTensors; ++i) {
    (*off)[std::size_t(i)] = o;
    o += std::size_t(tensor_size(c, static_cast<Tensor>(i)));
  }
  if (c.shared_classifier)
    (*off)[std::size_t(Tensor::kClassifier)] = (*off)[std::size_t(Tensor::kEmbedding)];
  return o;
}

/// Reads the weights after a validated header from `src` (positioned just after the header)
/// into `data` (resized, canonical order), dequantising version 2 and checking that every weight
/// is finite.
inline Status read_weights(const CheckpointHeader& h, ByteSource& src, std::vector<float>* data,
                           TensorOffsets* off) {
  const std::size_t total = canonical_offsets(h.config, off);
  data->assign(total, 0.0f);
  std::vector<std::int8_t> q;
  std::vector<float> scales;
  auto where = [](const Segment& s) {
    return s.layer >= 0 ? " (layer " + std::to_string(s.layer) + ")" : std::string();
  };
  for (const Segment& s : h.layout()) {
    const std::uint64_t start = src.offset();
    if (s.encoding == Encoding::kSkipFloat32) {
      TOPTHETA_RETURN_IF_ERROR(src.read(nullptr, std::size_t(s.count * sizeof(float))));
      continue;
    }
    float* dst = data->data() + (*off)[std::size_t(s.tensor)] + s.first;
    if (s.encoding == Encoding::kFloat32) {
      TOPTHETA_RETURN_IF_ERROR(src.read(dst, std::size_t(s.count * sizeof(float))));
      for (std::uint64_t i = 0; i < s.count; ++i)
        if (!std::isfinite(dst[i]))
          return Status::data_loss(
              "tensor " + std::string(tensor_name(s.tensor)) + " holds a non-finite value (" +
              std::to_string(dst[i]) + ") at element " + std::to_string(s.first + i) +
              where(s) + " (file offset " + std::to_string(start + i * sizeof(float)) +
              "): corrupted checkpoint");
      continue;
    }
    // Q8_0: int8 values, then one float32 scale per group.
    const std::uint64_t gs = std::uint64_t(h.group_size), groups = s.count / gs;
    q.resize(std::size_t(s.count));
    scales.resize(std::size_t(groups));
    TOPTHETA_RETURN_IF_ERROR(src.read(q.data(), q.size()));
    const std::uint64_t scale_start = src.offset();
    TOPTHETA_RETURN_IF_ERROR(src.read(scales.data(), scales.size() * sizeof(float)));
    for (std::uint64_t g = 0; g < groups; ++g) {
      const float sc = scales[std::size_t(g)];
      for (std::uint64_t j = g * gs; j < (g + 1) * gs; ++j) {
        dst[j] = float(q[std::size_t(j)]) * sc;
        if (!std::isfinite(dst[j]))
          return Status::data_loss(
              "tensor " + std::string(tensor_name(s.tensor)) + " holds a non-finite value (" +
              std::to_string(dst[j]) + ") at element " + std::to_string(s.first + j) + where(s) +
              ": int8 " + std::to_string(int(q[std::size_t(j)])) + " (file offset " +
              std::to_string(start + j) + ") times scale " + std::to_string(sc) +
              " (file offset " + std::to_string(scale_start + g * sizeof(float)) +
              "): corrupted checkpoint");
      }
    }
  }
  return {};
}

}  // namespace llama2c
