#pragma once
/// \file detail/decode_impl.hpp
/// Decode orchestration (one query token). Four phases in one parallel region:
///  A. scores, split over fixed token chunks: each chunk walks its tokens with all KV heads
///     together (contiguous on an interleaved cache), converting each key row once and dotting
///     it with the G queries of its group;            S (Hq, L)
///  B. per KV group: the per-head pipeline (selection, weights, calibration, stats), the union
///     of the group's kept sets and its compact weights;  U_g, W_g (|U_g|, G)
///  C. gather, split over the same token chunks: each chunk reads the V rows of every group's
///     union that fall in it, once per group, into per-chunk partial outputs;
///  D. per head: sum of the partial outputs in chunk order, plus VMC.
/// Chunks depend only on L, so results are bit-identical for any thread count.

#include <algorithm>
#include <cstring>

#include "../gather.hpp"
#include "../workspace.hpp"
#include "attention_common.hpp"
#include "dot.hpp"
#include "simd.hpp"

namespace toptheta::detail {

struct DecodePlan {
  Index L, Hq, Hkv, G, d;
  Index chunk, num_chunks;
  int threads;
  bool need_vbar, per_head_stats;
};

template <class T>
DecodePlan make_decode_plan(const AttentionArgs<T>& a, const AttentionOptions& o) {
  DecodePlan p{};
  p.L = a.k.tokens;
  p.Hq = a.q.heads;
  p.Hkv = a.k.heads;
  p.G = p.Hq / std::max<Index>(p.Hkv, 1);
  p.d = a.q.dim;
  // At most 64 chunks of at least 256 tokens: a function of L only (determinism).
  p.chunk = std::max<Index>(256, (p.L + 63) / 64);
  p.num_chunks = std::max<Index>(1, (p.L + p.chunk - 1) / p.chunk);
  const Index work = std::max(p.num_chunks, p.Hkv);
  p.threads = call_threads(o.threads, 2.0 * double(p.L) * double(p.Hq) * double(p.d), work);
  p.need_vbar = o.mode != AttentionMode::kDense &&
                (o.vmc == VmcMode::kOn || o.empty_row == EmptyRowPolicy::kMeanV);
  p.per_head_stats = o.stats && !o.stats->kept_per_head.empty();
  return p;
}

template <class Acc>
struct DecodeThread {
  Acc* tile;           // (kGatherTile, d) converted V rows
  Acc* sel;            // (L) selection scratch
  std::int32_t* kept;  // (G, L)
  Acc* w;              // (G, L)
  std::uint8_t* mark;  // (L), zero between uses
  StatSink sink;
};

template <class Acc>
struct DecodeBuffers {
  Acc* q = nullptr;             // (Hq, d) scaled queries
  Acc* s = nullptr;             // (Hq, L) scores
  std::int32_t* uni = nullptr;  // (Hkv, L) union of kept indices per group
  Index* nuni = nullptr;        // (Hkv)
  Acc* wc = nullptr;            // (Hkv, L, G) compact weights
  Acc* coeff = nullptr;         // (Hq) coefficient of vbar
  Acc* vbar = nullptr;          // (Hkv, d)
  Acc* partial = nullptr;       // (num_chunks, Hq, d)
  std::uint8_t* touched = nullptr;  // (num_chunks)
  DecodeThread<Acc>* threads = nullptr;

  DecodeBuffers(Arena& ar, const DecodePlan& p) {
    const Index L = p.L, d = p.d;
    q = ar.take<Acc>(p.Hq * d);
    s = ar.take<Acc>(p.Hq * L);
    uni = ar.take<std::int32_t>(p.Hkv * L);
    nuni = ar.take<Index>(p.Hkv);
    wc = ar.take<Acc>(p.Hkv * L * p.G);
    coeff = ar.take<Acc>(p.Hq);
    if (p.need_vbar) vbar = ar.take<Acc>(p.Hkv * d);
    partial = ar.take<Acc>(p.num_chunks * p.Hq * d);
    touched = ar.take<std::uint8_t>(p.num_chunks);
    threads = ar.take<DecodeThread<Acc>>(p.threads);
    for (int i = 0; i < p.threads; ++i) {
      DecodeThread<Acc> t{};
      t.tile = ar.take<Acc>(kGatherTile * d);
      t.sel = ar.take<Acc>(L);
      t.kept = ar.take<std::int32_t>(p.G * L);
      t.w = ar.take<Acc>(p.G * L);
      t.mark = ar.take<std::uint8_t>(L);
      t.sink = carve_sink(ar, p.Hq, p.per_head_stats);
      if (threads) threads[i] = t;
    }
  }
};

template <class T>
std::size_t decode_workspace(const AttentionArgs<T>& a, const AttentionOptions& o) {
  const DecodePlan p = make_decode_plan(a, o);
  Arena ar;
  DecodeBuffers<acc_t<T>> b(ar, p);
  return ar.used();
}

/// Phase A for tokens [j0, j1), two tokens at a time (each query load serves both keys).
template <class T>
void decode_scores(const AttentionArgs<T>& a, const DecodePlan& p, const DecodeBuffers<acc_t<T>>& b,
                   Index j0, Index j1) {
  using Acc = acc_t<T>;
  const Index G = p.G, d = p.d, L = p.L;
  Acc sc0[kMaxGroup], sc1[kMaxGroup];
  constexpr Index kPrefetchTokens = 16;  // ~16 token rows ahead keep enough reads in flight
  for (Index j = j0; j < j1; j += 2) {
    const bool pair = j + 1 < j1;
    for (Index jp = j + kPrefetchTokens; jp < std::min(j + kPrefetchTokens + 2, j1); ++jp)
      for (Index g = 0; g < p.Hkv; ++g) prefetch_row(a.k.row(jp, g), d);
    for (Index g = 0; g < p.Hkv; ++g) {
      dot_group2(b.q + g * G * d, G, a.k.row(j, g), pair ? a.k.row(j + 1, g) : nullptr, d, sc0,
                 sc1);
      for (int e = 0; e < (pair ? 2 : 1); ++e) {
        const Acc* sc = e ? sc1 : sc0;
        const Acc bias = a.bias.empty() ? Acc(0) : Acc(a.bias(0, j + e));
        for (Index hh = 0; hh < G; ++hh) {
          const Acc x = sc[hh] + bias;
          b.s[(g * G + hh) * L + j + e] = sanitize_score(x);
        }
      }
    }
  }
}

/// Phase B for KV group g.
template <class Acc>
void decode_select(const RowContext<Acc>& cx, const DecodePlan& p, const DecodeBuffers<Acc>& b,
                   Index g, const DecodeThread<Acc>& ts) {
  const Index G = p.G, L = p.L;
  Index counts[kMaxGroup];
  for (Index hh = 0; hh < G; ++hh) {
    const Index h = g * G + hh;
    const HeadRow<Acc> hr = process_head_row(cx, h, b.s + h * L, L, ts.sel, ts.kept + hh * L,
                                             ts.w + hh * L, ts.sink);
    counts[hh] = hr.count;
    b.coeff[h] = hr.vbar_coeff;
  }
  // Union of the kept lists (ascending) and compact weights wc[u * G + hh].
  std::int32_t* uni = b.uni + g * L;
  Acc* wc = b.wc + g * L * G;
  Index total = 0;
  for (Index hh = 0; hh < G; ++hh) total += counts[hh];
  Index nu = 0;
  if (total == G * L) {  // every head kept every key (dense rows): the union is 0..L-1
    for (Index j = 0; j < L; ++j) uni[j] = static_cast<std::int32_t>(j);
    for (Index hh = 0; hh < G; ++hh) {
      const Acc* w = ts.w + hh * L;
      for (Index j = 0; j < L; ++j) wc[j * G + hh] = w[j];
    }
    nu = L;
  } else if (total > 0) {
    for (Index hh = 0; hh < G; ++hh)
      for (Index i = 0; i < counts[hh]; ++i) ts.mark[ts.kept[hh * L + i]] = 1;
    for (Index j = 0; j < L; ++j) {
      uni[nu] = static_cast<std::int32_t>(j);
      nu += ts.mark[j];
      ts.mark[j] = 0;
    }
    std::fill(wc, wc + nu * G, Acc(0));
    for (Index hh = 0; hh < G; ++hh) {
      const std::int32_t* kept = ts.kept + hh * L;
      const Acc* w = ts.w + hh * L;
      Index u = 0;
      for (Index i = 0; i < counts[hh]; ++i) {
        while (uni[u] != kept[i]) ++u;
        wc[u * G + hh] = w[i];
      }
    }
  }
  b.nuni[g] = nu;
#ifndef TOPTHETA_NO_STATS
  ts.sink.counters->vrows_total += std::uint64_t(L);
  ts.sink.counters->vrows_read += std::uint64_t(nu);
#endif
}

/// Phase C for chunk c = tokens [j0, j1): partial[c] = sum over the unions in the chunk, in
/// tiles of tokens walked with all groups together.
template <class T>
void decode_gather(const AttentionArgs<T>& a, const DecodePlan& p,
                   const DecodeBuffers<acc_t<T>>& b, Index c, Index j0, Index j1,
                   acc_t<T>* tile) {
  using Acc = acc_t<T>;
  const Index G = p.G, d = p.d, L = p.L;
  Index pos[kMaxKv], end[kMaxKv], pf[kMaxKv];
  bool any = false;
  for (Index g = 0; g < p.Hkv; ++g) {
    const std::int32_t* uni = b.uni + g * L;
    pos[g] = std::lower_bound(uni, uni + b.nuni[g], std::int32_t(j0)) - uni;
    end[g] = std::lower_bound(uni, uni + b.nuni[g], std::int32_t(j1)) - uni;
    pf[g] = pos[g];
    any = any || pos[g] < end[g];
  }
  b.touched[c] = any;
  if (!any) return;
  Acc* part = b.partial + c * p.Hq * d;
  std::fill(part, part + p.Hq * d, Acc(0));
  const Acc* rows[kGatherTile];
  // Tiles of 8 tokens: all groups of a tile touch the same few token rows, which keeps an
  // interleaved cache streaming; the converted rows stay in L1 for the G heads.
  constexpr Index kTileTokens = 8;
  static_assert(kTileTokens <= kGatherTile, "rows[] holds one tile");
  for (Index t0 = j0; t0 < j1; t0 += kTileTokens) {
    const Index t1 = std::min(j1, t0 + kTileTokens);
    for (Index g = 0; g < p.Hkv; ++g) {
      const std::int32_t* uni = b.uni + g * L;
      Index e = pos[g];
      while (e < end[g] && uni[e] < t1) ++e;
      const Index n = e - pos[g];
      if (n == 0) continue;
      // Software prefetch of the next union rows of this group (random rows defeat the
      // hardware prefetcher); each row is prefetched once, kGatherTile entries ahead.
      const Index pf_end = std::min(e + kGatherTile, b.nuni[g]);
      for (; pf[g] < pf_end; ++pf[g]) prefetch_row(a.v.row(uni[pf[g]], g), d);
      for (Index u = 0; u < n; ++u) {
        const T* vr = a.v.row(uni[pos[g] + u], g);
        if constexpr (std::is_same_v<T, Acc>) {
          rows[u] = vr;
        } else {
          load_row(vr, d, tile + u * d);
          rows[u] = tile + u * d;
        }
      }
      const Acc* wc = b.wc + (g * L + pos[g]) * G;
      for (Index hh = 0; hh < G; ++hh)
        accumulate_rows(part + (g * G + hh) * d, rows, wc + hh, G, n, d);
      pos[g] = e;
    }
  }
}

template <class T>
Status run_decode(const AttentionArgs<T>& a, const AttentionOptions& o, Workspace ws) {
  using Acc = acc_t<T>;
  const DecodePlan p = make_decode_plan(a, o);
  // Checked before anything is carved or written: the measure assumes the worst alignment.
  const std::size_t need = decode_workspace(a, o);
  if (ws.data == nullptr || ws.bytes < need) return workspace_too_small(ws, need);
  Arena ar(ws);
  DecodeBuffers<Acc> b(ar, p);
  TOPTHETA_ASSERT(!ar.overflowed(), "decode: workspace measure and carve disagree");
  const RowContext<Acc> cx = RowContext<Acc>::make(a, o);
  const Index G = p.G, d = p.d, L = p.L;
  for (Index h = 0; h < p.Hq; ++h) {
    load_row(a.q.row(0, h), d, b.q + h * d);
    for (Index i = 0; i < d; ++i) b.q[h * d + i] *= cx.scale;
  }
  for (int i = 0; i < p.threads; ++i) {
    zero_sink(b.threads[i].sink, p.Hq);
    std::memset(b.threads[i].mark, 0, std::size_t(L));
  }
  if (b.vbar) {
    const Index stride = a.v_sum_stride > 0 ? a.v_sum_stride : d;
    for (Index g = 0; g < p.Hkv; ++g) {
      Acc* vb = b.vbar + g * d;
      if (a.v_sum) std::memcpy(vb, a.v_sum + g * stride, sizeof(Acc) * std::size_t(d));
      else {
        std::fill(vb, vb + d, Acc(0));
        add_v_rows(a.v, g, 0, L, vb);
      }
      for (Index i = 0; i < d; ++i) vb[i] /= Acc(L);
    }
  }
  auto chunk_range = [&](Index c, Index* j0, Index* j1) {
    *j0 = c * p.chunk;
    *j1 = std::min(L, *j0 + p.chunk);
  };
  auto phases = [&](int tid) {
    const DecodeThread<Acc>& ts = b.threads[tid];
    Index j0, j1;
#if TOPTHETA_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (Index c = 0; c < p.num_chunks; ++c) {
      chunk_range(c, &j0, &j1);
      decode_scores(a, p, b, j0, j1);
    }
#if TOPTHETA_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (Index g = 0; g < p.Hkv; ++g) decode_select(cx, p, b, g, ts);
#if TOPTHETA_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (Index c = 0; c < p.num_chunks; ++c) {
      chunk_range(c, &j0, &j1);
      decode_gather(a, p, b, c, j0, j1, ts.tile);
    }
#if TOPTHETA_HAS_OPENMP
#pragma omp for schedule(static)
#endif
    for (Index h = 0; h < p.Hq; ++h) {
      Acc* out = a.out.row(0, h);
      std::fill(out, out + d, Acc(0));
      for (Index c = 0; c < p.num_chunks; ++c)
        if (b.touched[c]) {
          const Acc* part = b.partial + (c * p.Hq + h) * d;
          for (Index i = 0; i < d; ++i) out[i] += part[i];
        }
      if (b.vbar && b.coeff[h] != Acc(0)) axpy(b.coeff[h], b.vbar + (h / G) * d, out, d);
    }
  };
#if TOPTHETA_HAS_OPENMP
  if (p.threads > 1) {
#pragma omp parallel num_threads(p.threads)
    phases(omp_get_thread_num());
  } else
#endif
  {
    phases(0);
  }
  for (int i = 0; i < p.threads; ++i) merge_stats(o.stats, &b.threads[i].sink, 1, p.Hq);
  return {};
}

}  // namespace toptheta::detail
