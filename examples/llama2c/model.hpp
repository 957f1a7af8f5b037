#pragma once
/// \file model.hpp
/// A llama2.c-format LLaMA checkpoint and its forward pass, with attention through toptheta's
/// `decode` (one new token) and `prefill` (several new tokens) kernels.
///
/// Checkpoint format (karpathy/llama2.c `run.c`, "version 0"): 7 int32 header fields
/// `dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len` (a negative vocab_size
/// means the classifier is stored separately instead of being shared with the embedding), then
/// float32 tensors, all row-major `(out, in)`:
///
///     token_embedding (vocab, dim)       rms_att (layers, dim)
///     wq (layers, dim, dim)              wk (layers, kv_dim, dim)     wv (layers, kv_dim, dim)
///     wo (layers, dim, dim)              rms_ffn (layers, dim)
///     w1 (layers, hidden, dim)           w2 (layers, dim, hidden)     w3 (layers, hidden, dim)
///     rms_final (dim)                    freq_cis_real, freq_cis_imag (seq_len, head_dim / 2):
///     skipped wcls (vocab, dim)                  only when vocab_size < 0 in the header
///
/// with `head_dim = dim / n_heads` and `kv_dim = head_dim * n_kv_heads`. The loader checks every
/// header field, the exact file size and that every weight is finite.
///
/// Forward pass: RMSNorm (eps 1e-5), RoPE rotating adjacent pairs (x[2i], x[2i+1]) within each
/// head with frequency 10000^(-2i / head_dim), grouped-query attention (query head h reads KV
/// head h / (n_heads / n_kv_heads)), SwiGLU feed-forward, final RMSNorm and classifier.

#include <toptheta/toptheta.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace llama2c {

using toptheta::Index;
using toptheta::Status;

/// The 7 header fields of a checkpoint.
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
           " n_kv_heads=" + std::to_string(n_kv_heads) +
           " vocab_size=" + std::to_string(shared_classifier ? vocab_size : -vocab_size) +
           " seq_len=" + std::to_string(seq_len);
  }
};

namespace detail {

inline constexpr std::size_t kHeaderBytes = 7 * sizeof(std::int32_t);

/// Checks the header fields; on success `*floats` is the number of float32 values that follow.
inline Status check_header(const std::int32_t h[7], Config* c, std::uint64_t* floats) {
  static const char* const names[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                       "n_kv_heads", "vocab_size", "seq_len"};
  constexpr std::int64_t kMaxField = 1 << 20;  // generous; rules out garbage headers
  for (int i = 0; i < 7; ++i) {
    const std::int64_t v = i == 5 ? std::int64_t(h[i]) * (h[i] < 0 ? -1 : 1) : h[i];
    if (v <= 0 || v > kMaxField)
      return Status::data_loss("header field " + std::string(names[i]) + " = " +
                               std::to_string(h[i]) + " is out of range (expected " +
                               (i == 5 ? "0 < |vocab_size|" : std::string("0 < ") + names[i]) +
                               " <= " + std::to_string(kMaxField) + ")");
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
  const std::uint64_t dim = std::uint64_t(c->dim), hid = std::uint64_t(c->hidden_dim),
                      nl = std::uint64_t(c->n_layers), kv = std::uint64_t(c->kv_dim()),
                      voc = std::uint64_t(c->vocab_size), sl = std::uint64_t(c->seq_len),
                      hd = std::uint64_t(c->head_dim());
  std::uint64_t n = voc * dim;                // token embedding
  n += nl * dim;                              // rms_att
  n += nl * dim * dim + 2 * nl * kv * dim;    // wq, wk, wv
  n += nl * dim * dim;                        // wo
  n += nl * dim;                              // rms_ffn
  n += 3 * nl * hid * dim;                    // w1, w2, w3
  n += dim;                                   // rms_final
  n += sl * hd;                               // freq_cis_real + freq_cis_imag (hd/2 each)
  if (!c->shared_classifier) n += voc * dim;  // wcls
  // Each field is <= 2^20, so n < 2^63; keep the byte count (4 n + 28) from wrapping.
  if (n > (std::uint64_t(1) << 56))
    return Status::data_loss("header (" + c->to_string() + ") implies an implausibly large file");
  *floats = n;
  return {};
}

}  // namespace detail

/// A loaded checkpoint: configuration and weights (owned, float32). Movable, not copyable.
class Model {
 public:
  Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;

  /// Loads a llama2.c checkpoint. Fails with a message naming the file when it cannot be read,
  /// when a header field is out of range or inconsistent, when the file size differs from the
  /// size the header implies (truncated or trailing data), or when a weight is not finite.
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
    std::uint64_t floats = 0;
    TOPTHETA_RETURN_IF_ERROR(m.read_header(bytes, size, &floats));
    m.data_.resize(static_cast<std::size_t>(floats));
    std::memcpy(m.data_.data(), bytes + detail::kHeaderBytes, m.data_.size() * sizeof(float));
    TOPTHETA_RETURN_IF_ERROR(m.bind());
    *out = std::move(m);
    return {};
  }

  const Config& config() const { return config_; }

  // Tensor accessors (see the file comment for shapes). Layer tensors take the layer index.
  const float* token_embedding() const { return ptr(off_.emb); }
  const float* rms_att(int l) const { return ptr(off_.rms_att) + std::size_t(l) * dsz(); }
  const float* wq(int l) const { return ptr(off_.wq) + std::size_t(l) * dsz() * dsz(); }
  const float* wk(int l) const { return ptr(off_.wk) + std::size_t(l) * kvsz() * dsz(); }
  const float* wv(int l) const { return ptr(off_.wv) + std::size_t(l) * kvsz() * dsz(); }
  const float* wo(int l) const { return ptr(off_.wo) + std::size_t(l) * dsz() * dsz(); }
  const float* rms_ffn(int l) const { return ptr(off_.rms_ffn) + std::size_t(l) * dsz(); }
  const float* w1(int l) const { return ptr(off_.w1) + std::size_t(l) * hsz() * dsz(); }
  const float* w2(int l) const { return ptr(off_.w2) + std::size_t(l) * dsz() * hsz(); }
  const float* w3(int l) const { return ptr(off_.w3) + std::size_t(l) * hsz() * dsz(); }
  const float* rms_final() const { return ptr(off_.rms_final); }
  const float* classifier() const { return ptr(off_.wcls); }

 private:
  struct Offsets {
    std::size_t emb = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0, w1 = 0, w2 = 0,
                w3 = 0, rms_final = 0, rope = 0, wcls = 0;
  };
  std::size_t dsz() const { return std::size_t(config_.dim); }
  std::size_t kvsz() const { return std::size_t(config_.kv_dim()); }
  std::size_t hsz() const { return std::size_t(config_.hidden_dim); }
  const float* ptr(std::size_t off) const { return data_.data() + off; }

  /// Checks the header at `bytes` against the total file size; `*floats` gets the number of
  /// float32 values after the header.
  Status read_header(const unsigned char* bytes, std::uint64_t size, std::uint64_t* floats) {
    if (size < detail::kHeaderBytes)
      return Status::data_loss("file is " + std::to_string(size) +
                               " bytes, shorter than the 28-byte header");
    std::int32_t h[7];
    std::memcpy(h, bytes, sizeof h);
    TOPTHETA_RETURN_IF_ERROR(detail::check_header(h, &config_, floats));
    const std::uint64_t expected = detail::kHeaderBytes + *floats * sizeof(float);
    if (size != expected)
      return Status::data_loss(
          "file is " + std::to_string(size) + " bytes but its header (" + config_.to_string() +
          ") implies " + std::to_string(expected) + " bytes: " +
          (size < expected ? "the file is truncated"
                           : "there is trailing data (or a corrupted header)"));
    return {};
  }
  /// Reads a checkpoint of `size` bytes from `f` (positioned at its start).
  Status read(std::FILE* f, std::uint64_t size) {
    unsigned char header[detail::kHeaderBytes] = {};
    const std::size_t got = std::fread(header, 1, sizeof header, f);
    if (got < sizeof header && std::ferror(f)) return Status::io_error("read error");
    std::uint64_t floats = 0;
    TOPTHETA_RETURN_IF_ERROR(read_header(header, got < sizeof header ? got : size, &floats));
    data_.resize(static_cast<std::size_t>(floats));
    if (std::fread(data_.data(), sizeof(float), data_.size(), f) != data_.size())
      return Status::io_error("read error (the file changed while being read?)");
    return bind();
  }
  /// Computes the tensor offsets and checks that every weight (not the skipped RoPE tables) is
  /// finite.
  Status bind() {
    const std::size_t d = dsz(), kv = kvsz(), hid = hsz(), nl = std::size_t(config_.n_layers),
                      voc = std::size_t(config_.vocab_size);
    struct Tensor {
      const char* name;
      std::size_t* off;
      std::size_t size;
      bool check;
    };
    const Tensor tensors[] = {
        {"token_embedding", &off_.emb, voc * d, true},
        {"rms_att", &off_.rms_att, nl * d, true},
        {"wq", &off_.wq, nl * d * d, true},
        {"wk", &off_.wk, nl * kv * d, true},
        {"wv", &off_.wv, nl * kv * d, true},
        {"wo", &off_.wo, nl * d * d, true},
        {"rms_ffn", &off_.rms_ffn, nl * d, true},
        {"w1", &off_.w1, nl * hid * d, true},
        {"w2", &off_.w2, nl * d * hid, true},
        {"w3", &off_.w3, nl * hid * d, true},
        {"rms_final", &off_.rms_final, d, true},
        {"freq_cis (skipped)", &off_.rope,
         std::size_t(config_.seq_len) * std::size_t(config_.head_dim()), false},
        {"wcls", &off_.wcls, config_.shared_classifier ? 0 : voc * d, true},
    };
    std::size_t off = 0;
    for (const Tensor& t : tensors) {
      *t.off = off;
      if (t.check)
        for (std::size_t i = 0; i < t.size; ++i)
          if (!std::isfinite(data_[off + i]))
            return Status::data_loss(
                "tensor " + std::string(t.name) + " holds a non-finite value (" +
                std::to_string(data_[off + i]) + ") at element " + std::to_string(i) +
                " (file offset " + std::to_string(detail::kHeaderBytes + (off + i) * 4) +
                "): corrupted checkpoint");
      off += t.size;
    }
    if (config_.shared_classifier) off_.wcls = off_.emb;
    return {};
  }

  Config config_;
  std::vector<float> data_;
  Offsets off_;
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
 public:
  explicit Runner(const Model& model) : m_(&model) {
    // The matrix products here are tiny; Eigen's own OpenMP parallelisation of them (active when
    // the program is built with OpenMP) only makes threads spin. Threads belong to the attention
    // kernels (AttentionOptions::threads).
    Eigen::setNbThreads(1);
    const Config& c = model.config();
    toptheta::KvCacheOptions ko;
    ko.num_kv_heads = c.n_kv_heads;
    ko.head_dim = c.head_dim();
    ko.capacity = c.seq_len;
    caches_.reserve(std::size_t(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) caches_.emplace_back(ko);
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
  /// Tokens processed so far (the position of the next token).
  Index position() const { return caches_.empty() ? 0 : caches_[0].size(); }
  void reset() {
    for (auto& c : caches_) c.clear();
  }

  /// Runs `T` new tokens at positions `position() .. position() + T - 1` and writes their
  /// next-token logits `(T, vocab)` to `logits` (resized). Attention goes through
  /// `toptheta::decode` when T == 1 (unless `kernel` forces prefill) and `toptheta::prefill`
  /// otherwise. Fails when the context would exceed seq_len, on a bad token id, or when the
  /// attention kernel rejects its arguments (the message names the layer).
  Status forward(const std::int32_t* tokens, Index T, const AttentionSetup& setup,
                 std::vector<float>* logits, Kernel kernel = Kernel::kAuto) {
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
    if (!setup.layer_k.empty() && Index(setup.layer_k.size()) != c.n_layers)
      return Status::invalid_argument("forward: layer_k has " +
                                      std::to_string(setup.layer_k.size()) + " entries for " +
                                      std::to_string(c.n_layers) + " layers");

    const Index dim = c.dim, hid = c.hidden_dim, kvd = c.kv_dim(), hd = c.head_dim();
    const Index Hq = c.n_heads, Hkv = c.n_kv_heads, V = c.vocab_size;
    x_.resize(std::size_t(T * dim));
    xb_.resize(std::size_t(T * dim));
    q_.resize(std::size_t(T * dim));
    k_.resize(std::size_t(T * kvd));
    v_.resize(std::size_t(T * kvd));
    att_.resize(std::size_t(T * dim));
    hb_.resize(std::size_t(T * hid));
    hb2_.resize(std::size_t(T * hid));
    vsum_prev_.resize(std::size_t(Hkv * hd));

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

      toptheta::KvCache<float>& cache = caches_[std::size_t(l)];
      const bool use_decode = T == 1 && kernel == Kernel::kAuto;
      // prefill wants the V sum of the P earlier tokens, decode the sum including the new one.
      if (!use_decode) copy_vsum(cache, vsum_prev_.data(), Hkv, hd);
      TOPTHETA_RETURN_IF_ERROR(
          cache.append(toptheta::HeadsView<const float>::token_major(k_.data(), T, Hkv, hd),
                       toptheta::HeadsView<const float>::token_major(v_.data(), T, Hkv, hd)));

      toptheta::AttentionArgs<float> args;
      args.q = toptheta::HeadsView<const float>::token_major(q_.data(), T, Hq, hd);
      args.k = cache.keys();
      args.v = cache.values();
      args.out = toptheta::HeadsView<float>::token_major(att_.data(), T, Hq, hd);
      args.v_sum = use_decode ? cache.v_sum() : vsum_prev_.data();
      args.v_sum_stride = hd;
      args.layer = l;
      toptheta::AttentionOptions opt = setup.options;
      if (!setup.layer_k.empty()) opt.k = setup.layer_k[std::size_t(l)];
      opt.stats = setup.layer_stats ? &(*setup.layer_stats)[std::size_t(l)] : nullptr;
      const std::size_t ws = toptheta::workspace_size(args, opt);
      if (workspace_.size() < ws) workspace_.resize(ws);
      const toptheta::Workspace w{workspace_.data(), workspace_.size()};
      Status s = use_decode ? toptheta::decode(args, opt, w) : toptheta::prefill(args, opt, w);
      if (!s.ok())
        return Status(s.code(), "layer " + std::to_string(l) + " attention (" +
                                    (use_decode ? "decode" : "prefill") + "): " + s.message());

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

 private:
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
  static void copy_vsum(const toptheta::KvCache<float>& cache, float* out, Index Hkv, Index hd) {
    // KvCache keeps its (Hkv, d) sums with row stride d.
    std::memcpy(out, cache.v_sum(), std::size_t(Hkv * hd) * sizeof(float));
  }

  const Model* m_;
  std::vector<toptheta::KvCache<float>> caches_;
  std::vector<float> rope_cos_, rope_sin_;
  std::vector<float> x_, xb_, q_, k_, v_, att_, hb_, hb2_, vsum_prev_;
  std::vector<std::byte> workspace_;
};

}  // namespace llama2c
