#pragma once
/// \file model.hpp
/// A llama2.c checkpoint in memory and its forward pass, with attention through toptheta's
/// `decode` (one new token) and `prefill` (several new tokens) kernels.
///
/// The checkpoint formats (versions 0, 1 and 2 of llama2.c's export.py) are described and read
/// in checkpoint.hpp; every version ends up as the same float32 weights here.
///
/// Forward pass: RMSNorm (eps 1e-5), RoPE rotating adjacent pairs (x[2i], x[2i+1]) within each
/// head with frequency 10000^(-2i / head_dim), grouped-query attention (query head h reads KV
/// head h / (n_heads / n_kv_heads)), SwiGLU feed-forward, final RMSNorm and classifier.
///
/// KV cache storage (`AttentionSetup::kv_cache`): f32, f16, bf16 or llama.cpp's q8_0 blocks
/// (head_dim a multiple of 32). The K and V rows are computed in f32 and stored in that type
/// (rounded, or quantised per row of head_dim values); queries stay f32 and the kernels read the
/// cache in place (`AttentionArgs<CacheT, float>`), with no per-step copy or conversion of it.

#include <toptheta/toptheta.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "checkpoint.hpp"
#include "kv_cache_type.hpp"

namespace llama2c {

using toptheta::Index;
using toptheta::Status;

/// A loaded checkpoint: header and weights (owned, float32). Movable, not copyable.
class Model {
 public:
  Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  /// Loads a llama2.c checkpoint of version 0, 1 or 2 (checkpoint.hpp). Fails with a message
  /// naming the file when it cannot be read, when the format or version is unknown, when a
  /// header field is out of range or inconsistent, when the file size differs from the size the
  /// header implies (truncated or trailing data), or when a weight is not finite.
  static Status load(const std::string& path, Model* out) {
    std::error_code ec;
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    if (ec)
      return Status(ec == std::errc::no_such_file_or_directory ? toptheta::StatusCode::kNotFound
                                                               : toptheta::StatusCode::kIoError,
                    "checkpoint '" + path + "': cannot open: " + ec.message());
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return Status::not_found("checkpoint '" + path + "': cannot open");
    Model m;
    Status s = m.read(f, size);
    std::fclose(f);
    if (!s.ok()) return Status(s.code(), "checkpoint '" + path + "': " + s.message());
    *out = std::move(m);
    return {};
  }

  /// Same as load() for a checkpoint held in memory.
  static Status from_bytes(const unsigned char* bytes, std::size_t size, Model* out) {
    Model m;
    TOPTHETA_RETURN_IF_ERROR(parse_checkpoint_header(
        bytes, std::min<std::size_t>(size, kVersionedHeaderBytes), size, &m.header_));
    ByteSource src(bytes, size, m.header_.header_bytes);
    TOPTHETA_RETURN_IF_ERROR(read_weights(m.header_, src, &m.data_, &m.off_));
    *out = std::move(m);
    return {};
  }

  const Config& config() const { return header_.config; }
  /// Format version (0, 1, 2), group size (version 2) and size of the file it came from.
  const CheckpointHeader& header() const { return header_; }

  /// A whole tensor (all layers, see checkpoint.hpp for shapes); the classifier aliases the
  /// embedding when shared.
  const float* tensor(Tensor t) const { return data_.data() + off_[std::size_t(t)]; }

  // Tensor accessors (see checkpoint.hpp for shapes). Layer tensors take the layer index.
  const float* token_embedding() const { return tensor(Tensor::kEmbedding); }
  const float* rms_att(int l) const { return layer(Tensor::kRmsAtt, l); }
  const float* wq(int l) const { return layer(Tensor::kWq, l); }
  const float* wk(int l) const { return layer(Tensor::kWk, l); }
  const float* wv(int l) const { return layer(Tensor::kWv, l); }
  const float* wo(int l) const { return layer(Tensor::kWo, l); }
  const float* rms_ffn(int l) const { return layer(Tensor::kRmsFfn, l); }
  const float* w1(int l) const { return layer(Tensor::kW1, l); }
  const float* w2(int l) const { return layer(Tensor::kW2, l); }
  const float* w3(int l) const { return layer(Tensor::kW3, l); }
  const float* rms_final() const { return tensor(Tensor::kRmsFinal); }
  const float* classifier() const { return tensor(Tensor::kClassifier); }

 private:
  const float* layer(Tensor t, int l) const {
    return tensor(t) + std::size_t(l) * std::size_t(tensor_layer_size(config(), t));
  }

  /// Reads a checkpoint of `size` bytes from `f` (positioned at its start).
  Status read(std::FILE* f, std::uint64_t size) {
    unsigned char header[kVersionedHeaderBytes] = {};
    const std::size_t want = std::size_t(std::min<std::uint64_t>(size, sizeof header));
    if (std::fread(header, 1, want, f) != want)
      return Status::io_error("read error in the header (the file changed while being read?)");
    TOPTHETA_RETURN_IF_ERROR(parse_checkpoint_header(header, want, size, &header_));
    if (std::fseek(f, long(header_.header_bytes), SEEK_SET) != 0)
      return Status::io_error("seek error after the header");
    ByteSource src(f, header_.header_bytes);
    return read_weights(header_, src, &data_, &off_);
  }

  CheckpointHeader header_;
  std::vector<float> data_;
  TensorOffsets off_{};
};

/// How every layer's attention runs in a forward pass.
struct AttentionSetup {
  AttentionSetup() { options.threads = 1; }
  /// Mode, placement, compensations, thresholds, calibrator... `options.stats` is ignored (see
  /// `layer_stats`); `options.k` is the top-k budget of layers without an entry in `layer_k`.
  /// `options.threads` defaults to 1 here: this model's attention calls are far too small to
  /// win from an OpenMP region per call.
  toptheta::AttentionOptions options;
  /// Per-layer top-k budgets (kTopK only; Top-θ takes k_l from its table and calibration from
  /// the calibrator). Empty: `options.k` for every layer.
  std::vector<Index> layer_k;
  /// Optional per-layer statistics (size n_layers); counts are added.
  std::vector<toptheta::AttentionStats>* layer_stats = nullptr;
  /// Optional statistics by row length: prefill calls are split at these row lengths
  /// (ascending); the rows with length L in (length_edges[i-1], length_edges[i]] run as one call
  /// whose statistics are added to (*length_stats)[i] (all layers), those above the last edge to
  /// the last element (size length_edges.size() + 1). Outputs equal the unsplit ones up to rounding.
  std::vector<Index> length_edges;
  std::vector<toptheta::AttentionStats>* length_stats = nullptr;
  /// Storage of the KV caches. A runner's caches hold one type at a time: a forward pass with
  /// another type than the tokens already cached fails (reset() first).
  KvCacheType kv_cache = KvCacheType::kF32;

  /// Dense attention on `threads` threads.
  static AttentionSetup dense(int threads = 1) {
    AttentionSetup s;
    s.options.threads = threads;
    return s;
  }
};

/// Which kernel a forward pass uses.
enum class Kernel {
  kAuto,     ///< decode for one new token, prefill for more
  kPrefill,  ///< prefill even for one new token
};

/// Per-sequence state: one KV cache per layer and scratch buffers. Runs the forward pass.
class Runner {
  // The per-layer caches of every storage type (only the types used are allocated).
  template <class CacheT>
  using Caches = std::vector<toptheta::KvCache<CacheT>>;
  using CacheSet = std::tuple<Caches<float>, Caches<Eigen::half>, Caches<Eigen::bfloat16>,
                              Caches<toptheta::BlockQ8_0>>;

  /// f(the per-layer caches of type t).
  template <class F>
  decltype(auto) with_caches(KvCacheType t, F&& f) {
    switch (t) {
      case KvCacheType::kF16: return f(std::get<1>(caches_));
      case KvCacheType::kBf16: return f(std::get<2>(caches_));
      case KvCacheType::kQ8_0: return f(std::get<3>(caches_));
      case KvCacheType::kF32: break;
    }
    return f(std::get<0>(caches_));
  }
  template <class F>
  decltype(auto) with_caches(KvCacheType t, F&& f) const {
    return const_cast<Runner*>(this)->with_caches(t, [&](const auto& v) { return f(v); });
  }
 public:
  explicit Runner(const Model& model) : m_(&model) {
    // The matrix products here are tiny; Eigen's own OpenMP parallelisation of them (active when
    // the program is built with OpenMP) only makes threads spin. Threads belong to the attention
    // kernels (AttentionOptions::threads).
    Eigen::setNbThreads(1);
    const Config& c = model.config();
    // RoPE table: (seq_len, head_dim / 2) cos and sin, computed as llama2.c run.c does.
    const int hd = c.head_dim();
    rope_cos_.resize(std::size_t(c.seq_len) * std::size_t(hd / 2));
    rope_sin_.resize(rope_cos_.size());
    for (int pos = 0; pos < c.seq_len; ++pos)
      for (int i = 0; i < hd; i += 2) {
        const float freq = 1.0f / std::pow(10000.0f, float(i) / float(hd));
        const float val = float(pos) * freq;
        rope_cos_[std::size_t(pos) * std::size_t(hd / 2) + std::size_t(i / 2)] = std::cos(val);
        rope_sin_[std::size_t(pos) * std::size_t(hd / 2) + std::size_t(i / 2)] = std::sin(val);
      }
  }

  const Model& model() const { return *m_; }
  /// Wall time spent in forward() and in its attention kernel calls, since construction or
  /// reset_timing().
  double forward_seconds() const { return forward_s_; }
  double attention_seconds() const { return attention_s_; }
  void reset_timing() { forward_s_ = attention_s_ = 0.0; }
  /// Tokens processed so far (the position of the next token).
  Index position() const {
    return with_caches(active_, [](const auto& v) { return v.empty() ? Index(0) : v[0].size(); });
  }
  /// Storage type of the cached tokens (meaningful when position() > 0).
  KvCacheType cache_type() const { return active_; }
  void reset() {
    std::apply([](auto&... v) { (clear_all(v), ...); }, caches_);
  }

  /// Runs `T` new tokens at positions `position() .. position() + T - 1` and writes their
  /// next-token logits `(T, vocab)` to `logits` (resized). Attention goes through
  /// `toptheta::decode` when T == 1 (unless `kernel` forces prefill) and `toptheta::prefill`
  /// otherwise. K and V are stored in `setup.kv_cache`. Fails when the context would exceed
  /// seq_len, on a bad token id, when the cache type differs from the cached tokens' or does not
  /// fit the head dim (q8_0 needs a multiple of 32), or when the attention kernel rejects its
  /// arguments (the message names the layer).
  Status forward(const std::int32_t* tokens, Index T, const AttentionSetup& setup,
                 std::vector<float>* logits, Kernel kernel = Kernel::kAuto) {
    const auto t0 = std::chrono::steady_clock::now();
    const Status s = forward_impl(tokens, T, setup, logits, kernel);
    forward_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return s;
  }

 private:
  Status forward_impl(const std::int32_t* tokens, Index T, const AttentionSetup& setup,
                      std::vector<float>* logits, Kernel kernel) {
    const Config& c = m_->config();
    const Index P = position();
    if (T < 1) return Status::invalid_argument("forward: no tokens");
    if (P + T > c.seq_len)
      return Status::invalid_argument("forward: context of " + std::to_string(P + T) +
                                      " tokens exceeds the model's seq_len " +
                                      std::to_string(c.seq_len));
    for (Index t = 0; t < T; ++t)
      if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
        return Status::invalid_argument("forward: token id " + std::to_string(tokens[t]) +
                                        " outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
    if (setup.layer_stats && Index(setup.layer_stats->size()) != c.n_layers)
      return Status::invalid_argument("forward: layer_stats has " +
                                      std::to_string(setup.layer_stats->size()) + " entries for " +
                                      std::to_string(c.n_layers) + " layers");
    if (setup.length_stats && setup.length_stats->size() != setup.length_edges.size() + 1)
      return Status::invalid_argument("forward: length_stats needs length_edges.size() + 1 entries");
    if (!setup.layer_k.empty() && Index(setup.layer_k.size()) != c.n_layers)
      return Status::invalid_argument("forward: layer_k has " +
                                      std::to_string(setup.layer_k.size()) + " entries for " +
                                      std::to_string(c.n_layers) + " layers");
    if (P > 0 && setup.kv_cache != active_)
      return Status::invalid_argument(std::string("forward: the KV cache holds ") +
                                      to_string(active_) + " rows of " + std::to_string(P) +
                                      " tokens but the setup asks for a " +
                                      to_string(setup.kv_cache) + " cache (reset() first)");
    active_ = setup.kv_cache;
    TOPTHETA_RETURN_IF_ERROR(with_caches(active_, [&](auto& v) { return make_caches(&v); }));

    const Index dim = c.dim, hid = c.hidden_dim, kvd = c.kv_dim();
    const Index Hq = c.n_heads, Hkv = c.n_kv_heads, V = c.vocab_size;
    x_.resize(std::size_t(T * dim));
    xb_.resize(std::size_t(T * dim));
    q_.resize(std::size_t(T * dim));
    k_.resize(std::size_t(T * kvd));
    v_.resize(std::size_t(T * kvd));
    att_.resize(std::size_t(T * dim));
    hb_.resize(std::size_t(T * hid));
    hb2_.resize(std::size_t(T * hid));

    for (Index t = 0; t < T; ++t)
      std::memcpy(&x_[std::size_t(t * dim)],
                  m_->token_embedding() + std::size_t(tokens[t]) * std::size_t(dim),
                  std::size_t(dim) * sizeof(float));

    for (int l = 0; l < c.n_layers; ++l) {
      rmsnorm(xb_.data(), x_.data(), m_->rms_att(l), T, dim);
      matmul(q_.data(), xb_.data(), m_->wq(l), T, dim, dim);
      matmul(k_.data(), xb_.data(), m_->wk(l), T, dim, kvd);
      matmul(v_.data(), xb_.data(), m_->wv(l), T, dim, kvd);
      for (Index t = 0; t < T; ++t) {
        rope(&q_[std::size_t(t * dim)], Hq, P + t);
        rope(&k_[std::size_t(t * kvd)], Hkv, P + t);
      }

      const bool use_decode = T == 1 && kernel == Kernel::kAuto;
      TOPTHETA_RETURN_IF_ERROR(with_caches(active_, [&](auto& v) {
        return attend(v[std::size_t(l)], l, P, T, setup, use_decode);
      }));

      matmul(xb_.data(), att_.data(), m_->wo(l), T, dim, dim);
      for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += xb_[i];

      rmsnorm(xb_.data(), x_.data(), m_->rms_ffn(l), T, dim);
      matmul(hb_.data(), xb_.data(), m_->w1(l), T, dim, hid);
      matmul(hb2_.data(), xb_.data(), m_->w3(l), T, dim, hid);
      for (std::size_t i = 0; i < hb_.size(); ++i) {
        const float a = hb_[i];
        hb_[i] = a / (1.0f + std::exp(-a)) * hb2_[i];  // SiLU(w1 x) * (w3 x)
      }
      matmul(xb_.data(), hb_.data(), m_->w2(l), T, hid, dim);
      for (std::size_t i = 0; i < x_.size(); ++i) x_[i] += xb_[i];
    }
    rmsnorm(x_.data(), x_.data(), m_->rms_final(), T, dim);
    logits->resize(std::size_t(T * V));
    matmul(logits->data(), x_.data(), m_->classifier(), T, dim, V);
    return {};
  }

  template <class CacheT>
  static void clear_all(Caches<CacheT>& v) {
    for (auto& c : v) c.clear();
  }
  /// Allocates the per-layer caches of one type on first use (capacity seq_len).
  template <class CacheT>
  Status make_caches(Caches<CacheT>* v) const {
    if (!v->empty()) return {};
    const Config& c = m_->config();
    toptheta::KvCacheOptions ko;
    ko.num_kv_heads = c.n_kv_heads;
    ko.head_dim = c.head_dim();
    ko.capacity = c.seq_len;
    TOPTHETA_RETURN_IF_ERROR(toptheta::KvCache<CacheT>::validate(ko));
    v->reserve(std::size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) v->emplace_back(ko);
    return {};
  }

  /// One layer's attention: stores the T new K/V rows (k_, v_) in `cache`, then runs the kernel
  /// with float queries (q_) over the cache in place; output in att_.
  template <class CacheT>
  Status attend(toptheta::KvCache<CacheT>& cache, int l, Index P, Index T,
                const AttentionSetup& setup, bool use_decode) {
    const Config& c = m_->config();
    const Index hd = c.head_dim(), Hq = c.n_heads, Hkv = c.n_kv_heads;
    TOPTHETA_RETURN_IF_ERROR(
        cache.append(toptheta::HeadsView<const float>::token_major(k_.data(), T, Hkv, hd),
                     toptheta::HeadsView<const float>::token_major(v_.data(), T, Hkv, hd)));

    toptheta::AttentionArgs<CacheT, float> args;
    args.q = toptheta::HeadsView<const float>::token_major(q_.data(), T, Hq, hd);
    args.k = cache.keys();
    args.v = cache.values();
    args.out = toptheta::HeadsView<float>::token_major(att_.data(), T, Hq, hd);
    args.v_sum = cache.v_sum();  // the rows before this append; the kernel adds the new ones
    args.v_sum_stride = hd;
    args.layer = l;
    toptheta::AttentionOptions opt = setup.options;
    if (!setup.layer_k.empty()) opt.k = setup.layer_k[std::size_t(l)];
    opt.stats = setup.layer_stats ? &(*setup.layer_stats)[std::size_t(l)] : nullptr;
    const auto ta = std::chrono::steady_clock::now();
    Status s;
    if (!use_decode && setup.length_stats) {
      s = prefill_by_length(args, opt, setup, P, T, Hkv, hd);
    } else {
      const std::size_t ws = toptheta::workspace_size(args, opt);
      if (workspace_.size() < ws) workspace_.resize(ws);
      const toptheta::Workspace w{workspace_.data(), workspace_.size()};
      s = use_decode ? toptheta::decode(args, opt, w) : toptheta::prefill(args, opt, w);
    }
    attention_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - ta).count();
    if (!s.ok())
      return Status(s.code(), "layer " + std::to_string(l) + " attention (" +
                                  (use_decode ? "decode" : "prefill") + ", " +
                                  to_string(setup.kv_cache) + " KV cache): " + s.message());
    return {};
  }

  /// Prefill split at the row lengths of setup.length_edges (AttentionSetup); each piece is a
  /// prefill call over the first P + b cached tokens with the V sums of the rows before it (the
  /// rows as stored: rounded or dequantised, like the cache's own sum).
  template <class CacheT>
  Status prefill_by_length(const toptheta::AttentionArgs<CacheT, float>& all,
                           toptheta::AttentionOptions opt, const AttentionSetup& setup, Index P,
                           Index T, Index Hkv, Index hd) {
    const auto& edges = setup.length_edges;
    std::vector<float> vsum(all.v_sum, all.v_sum + Hkv * hd);  // rows before this call
    toptheta::AttentionStats* layer = opt.stats;
    Index a = 0;
    while (a < T) {
      const Index L = P + a + 1;  // length of row a
      std::size_t bi = 0;
      while (bi < edges.size() && L > edges[bi]) ++bi;
      Index b = bi < edges.size() ? std::min<Index>(T, edges[bi] - P) : T;
      if (b <= a) b = a + 1;
      toptheta::AttentionArgs<CacheT, float> args = all;
      args.q = all.q.slice_tokens(a, b - a);
      args.out = all.out.slice_tokens(a, b - a);
      args.k = all.k.slice_tokens(0, P + b);
      args.v = all.v.slice_tokens(0, P + b);
      args.v_sum = vsum.data();
      args.v_sum_stride = hd;
      toptheta::AttentionStats st;
      opt.stats = &st;
      const std::size_t ws = toptheta::workspace_size(args, opt);
      if (workspace_.size() < ws) workspace_.resize(ws);
      const toptheta::Workspace w{workspace_.data(), workspace_.size()};
      TOPTHETA_RETURN_IF_ERROR(toptheta::prefill(args, opt, w));
      if (layer) layer->merge(st);
      (*setup.length_stats)[bi].merge(st);
      for (Index t = a; t < b; ++t)
        for (Index g = 0; g < Hkv; ++g) {
          const CacheT* row = all.v.row(P + t, g);
          for (Index i = 0; i < hd; ++i)
            vsum[std::size_t(g * hd + i)] += float(toptheta::value_at(row, i));
        }
      a = b;
    }
    return {};
  }

  /// out (T, n_out) = x (T, n_in) * W^T, W (n_out, n_in) row-major.
  static void matmul(float* out, const float* x, const float* w, Index T, Index n_in, Index n_out) {
    using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMat> X(x, T, n_in);
    Eigen::Map<const RowMat> W(w, n_out, n_in);
    Eigen::Map<RowMat> O(out, T, n_out);
    O.noalias() = X * W.transpose();
  }
  /// out[t] = w * x[t] / sqrt(mean(x[t]^2) + 1e-5), rows of n; out may alias x.
  static void rmsnorm(float* out, const float* x, const float* w, Index T, Index n) {
    for (Index t = 0; t < T; ++t) {
      const float* xr = x + t * n;
      float* o = out + t * n;
      float ss = 0.0f;
      for (Index i = 0; i < n; ++i) ss += xr[i] * xr[i];
      ss = 1.0f / std::sqrt(ss / float(n) + 1e-5f);
      for (Index i = 0; i < n; ++i) o[i] = w[i] * (ss * xr[i]);
    }
  }
  /// Rotates the adjacent pairs of each of `heads` heads of one token at position `pos`.
  void rope(float* vec, Index heads, Index pos) const {
    const Index hd = m_->config().head_dim();
    const float* cs = &rope_cos_[std::size_t(pos * (hd / 2))];
    const float* sn = &rope_sin_[std::size_t(pos * (hd / 2))];
    for (Index h = 0; h < heads; ++h) {
      float* v = vec + h * hd;
      for (Index i = 0; i < hd / 2; ++i) {
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * cs[i] - v1 * sn[i];
        v[2 * i + 1] = v0 * sn[i] + v1 * cs[i];
      }
    }
  }

  const Model* m_;
  CacheSet caches_;  ///< per type, per layer; allocated on first use
  KvCacheType active_ = KvCacheType::kF32;
  std::vector<float> rope_cos_, rope_sin_;
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_;
  std::vector<std::byte> workspace_;
  double forward_s_ = 0.0, attention_s_ = 0.0;
};

}  // namespace llama2c
