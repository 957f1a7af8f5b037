// 01_dense_decode: one decode step of dense and top-k attention over an interleaved KV cache.
//
// A KV cache in llama.cpp's [token][kv_head][dim] layout is used in place through strided views;
// the workspace is sized once and reused, so the decode call itself does not allocate.
#include <toptheta/toptheta.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  using namespace toptheta;
  const Index L = 4096, Hq = 32, Hkv = 8, d = 128;

  // The caller's cache: [token][kv_head][dim], float; plus one new query per head.
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> k_cache(L * Hkv * d), v_cache(L * Hkv * d), q(Hq * d), out(Hq * d);
  for (float& x : k_cache) x = normal(rng);
  for (float& x : v_cache) x = normal(rng);
  for (float& x : q) x = 2.f * normal(rng);

  // [readme:decode]
  AttentionArgs<float> args;
  args.q = HeadsView<const float>::token_major(q.data(), 1, Hq, d);          // (1, Hq, d)
  args.k = HeadsView<const float>::token_major(k_cache.data(), L, Hkv, d);   // (L, Hkv, d)
  args.v = HeadsView<const float>::token_major(v_cache.data(), L, Hkv, d);   // (L, Hkv, d)
  args.out = HeadsView<float>::token_major(out.data(), 1, Hq, d);            // (1, Hq, d)

  AttentionOptions dense;  // mode = kDense
  AttentionStats stats;
  dense.stats = &stats;
  std::vector<std::byte> workspace(workspace_size(args, dense));
  Status st = decode(args, dense, Workspace{workspace.data(), workspace.size()});
  if (!st.ok()) {
    std::fprintf(stderr, "decode failed: %s\n", st.to_string().c_str());
    return 1;
  }
  // [/readme:decode]
  const std::vector<float> dense_out = out;

  AttentionOptions topk = dense;
  topk.mode = AttentionMode::kTopK;
  topk.k = 64;
  AttentionStats topk_stats;
  topk.stats = &topk_stats;
  workspace.resize(workspace_size(args, topk));
  st = decode(args, topk, Workspace{workspace.data(), workspace.size()});
  if (!st.ok()) {
    std::fprintf(stderr, "decode failed: %s\n", st.to_string().c_str());
    return 1;
  }
  double err = 0, norm = 0;
  for (Index i = 0; i < Hq * d; ++i) {
    err += double(out[i] - dense_out[i]) * double(out[i] - dense_out[i]);
    norm += double(dense_out[i]) * double(dense_out[i]);
  }
  std::printf("toptheta %s: decode of L=%td tokens, %td query heads over %td KV heads, d=%td\n",
              kVersionString, L, Hq, Hkv, d);
  std::printf("  dense : kept %.4f of attention elements, read %.4f of V rows\n",
              stats.kept_fraction(), stats.vrows_fraction());
  std::printf("  top-64: kept %.4f of attention elements, read %.4f of V rows, "
              "relative L2 error vs dense %.3g\n",
              topk_stats.kept_fraction(), topk_stats.vrows_fraction(), std::sqrt(err / norm));
  std::printf("  out[head 0][0..3] dense = %.5f %.5f %.5f %.5f\n", dense_out[0], dense_out[1],
              dense_out[2], dense_out[3]);

  // A bad call reports both shapes instead of crashing.
  AttentionArgs<float> bad = args;
  bad.v.tokens = L - 1;
  st = decode(bad, dense);
  std::printf("  shape mismatch is reported: %s\n", st.to_string().c_str());
  return 0;
}
