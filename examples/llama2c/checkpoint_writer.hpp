#pragma once
/// \file checkpoint_writer.hpp
/// Writes a loaded model as a llama2.c checkpoint of version 0, 1 or 2, in the layouts of
/// checkpoint.hpp (those of llama2.c's export.py `legacy_export`, `version1_export` and
/// `version2_export`). Used by the tests (checkpoints of every version from one model) and to
/// build the fuzz seed corpus; also a converter between versions.
///
/// Version 2 quantises like export.py `quantize_q80`: per group of `group_size` consecutive
/// elements of a tensor (one layer's slice for the per-layer tensors), scale = max|w| / 127 and
/// q = round-half-to-even(w / scale) in float32 (q = 0 for an all-zero group). Like export.py,
/// the group size halves until it divides dim (then every quantised tensor has a multiple of it).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <toptheta/io/atomic_write.hpp>

#include "checkpoint.hpp"
#include "model.hpp"

namespace llama2c {

namespace detail {

inline void put_bytes(std::vector<unsigned char>* out, const void* p, std::size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  out->insert(out->end(), b, b + n);
}
inline void put_i32(std::vector<unsigned char>* out, std::int32_t v) { put_bytes(out, &v, 4); }

}  // namespace detail

/// Serialises `m` as a checkpoint of `version` (0, 1 or 2); `group_size` is the Q8_0 group of
/// version 2 (reduced as export.py does until it divides dim).
inline Status serialize_checkpoint(const Model& m, int version, std::vector<unsigned char>* out,
                                   int group_size = 64) {
  if (version < 0 || version > 2)
    return Status::invalid_argument("checkpoint version " + std::to_string(version) +
                                    " cannot be written (0, 1 or 2)");
  const Config& c = m.config();
  CheckpointHeader h;
  h.version = version;
  h.config = c;
  if (version == 2) {
    if (group_size < 1)
      return Status::invalid_argument("group size " + std::to_string(group_size) + " < 1");
    while (c.dim % group_size != 0) group_size /= 2;
    h.group_size = group_size;
  }
  out->clear();
  const std::int32_t fields[7] = {c.dim,        c.hidden_dim, c.n_layers, c.n_heads,
                                  c.n_kv_heads, c.vocab_size, c.seq_len};
  if (version == 0) {
    for (int i = 0; i < 7; ++i)
      detail::put_i32(out, i == 5 && !c.shared_classifier ? -fields[i] : fields[i]);
  } else {
    detail::put_bytes(out, &kCheckpointMagic, 4);
    detail::put_i32(out, version);
    for (std::int32_t f : fields) detail::put_i32(out, f);
    out->push_back(c.shared_classifier ? 1 : 0);
    if (version == 2) detail::put_i32(out, h.group_size);
    out->resize(kVersionedHeaderBytes, 0);
  }
  for (const Segment& s : h.layout()) {
    if (s.encoding == Encoding::kSkipFloat32) {
      // Legacy RoPE tables: freq_cis_real then freq_cis_imag, (seq_len, head_dim / 2) each, as
      // llama2.c model.py precompute_freqs_cis.
      const int hd = c.head_dim();
      for (int part = 0; part < 2; ++part)
        for (int pos = 0; pos < c.seq_len; ++pos)
          for (int i = 0; i < hd / 2; ++i) {
            const float freq = 1.0f / std::pow(10000.0f, float(2 * i) / float(hd));
            const float v = part == 0 ? std::cos(float(pos) * freq) : std::sin(float(pos) * freq);
            detail::put_bytes(out, &v, 4);
          }
      continue;
    }
    const float* src = m.tensor(s.tensor) + s.first;
    if (s.encoding == Encoding::kFloat32) {
      detail::put_bytes(out, src, std::size_t(s.count) * sizeof(float));
      continue;
    }
    const std::size_t gs = std::size_t(h.group_size), n = std::size_t(s.count);
    std::vector<std::int8_t> q(n);
    std::vector<float> scales(n / gs);
    for (std::size_t g = 0; g < n / gs; ++g) {
      float wmax = 0.0f;
      for (std::size_t j = g * gs; j < (g + 1) * gs; ++j) wmax = std::max(wmax, std::fabs(src[j]));
      const float scale = wmax / 127.0f;
      scales[g] = scale;
      for (std::size_t j = g * gs; j < (g + 1) * gs; ++j)
        q[j] = scale > 0.0f ? static_cast<std::int8_t>(std::nearbyint(src[j] / scale)) : 0;
    }
    detail::put_bytes(out, q.data(), q.size());
    detail::put_bytes(out, scales.data(), scales.size() * sizeof(float));
  }
  return {};
}

/// Writes `m` to `path` (atomically) as a checkpoint of `version`.
inline Status write_checkpoint(const Model& m, int version, const std::string& path,
                               int group_size = 64) {
  std::vector<unsigned char> bytes;
  TOPTHETA_RETURN_IF_ERROR(serialize_checkpoint(m, version, &bytes, group_size));
  return toptheta::write_file_atomic(
      path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

}  // namespace llama2c
