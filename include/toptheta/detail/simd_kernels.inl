// detail/simd_kernels.inl: the SIMD primitives of one instruction-set path, written once against
// the vector interface of vec_one_lane.inl. detail/simd.hpp includes this file once per path,
// inside namespace toptheta::detail::<path>, with
//   TT_ATTR      the path's function attribute (target("avx2,...") etc.; empty for scalar),
//   TT_VEC       the path's float vector type (VecAvx512, VecAvx2, VecOneLane<float, ..>, ...),
//   TT_VEC_D     the path's one-lane double type (VecOneLane<double, kFusedFma> of
//                vec_one_lane.inl: fused on the SIMD paths, as the build targets on scalar),
//   TT_ISA       the Isa value of the path.
// No include guard on purpose. Everything here is a static member of `struct Ops`.
//
// Determinism: every result is computed by a sequence of operations that depends only on its
// own inputs (never on how many rows, keys or heads are processed together, nor on thread
// counts): a dot product accumulates lane-wise in d order and reduces by the vector type's
// fixed tree; an output element accumulates its rows one after another in the given order.
// A multiply-add is always V::fma (rounded as the path decides, vec_one_lane.inl), never
// `x * y + z` written with the vector operators: GCC implements the x86 and NEON mul / add
// intrinsics as plain vector * and +, and may contract such a pair in one inlined copy and not
// in another.

struct Ops {
  static constexpr Isa kIsa = TT_ISA;

  /// Vector type for accumulation type Acc (double always runs one lane at a time).
  template <class Acc>
  using Vec = std::conditional_t<std::is_same_v<Acc, float>, TT_VEC, TT_VEC_D>;

  // ------------------------------------------------------------------------------------------
  // Register blocking of the prefill tile micro-kernels
  // ------------------------------------------------------------------------------------------
  // qk_micro and pv_micro keep a block of accumulators in registers across their innermost
  // loop. A block that needs, with the operands of one step, more vector registers than the
  // path has (V::kRegisters: 16 on AVX2, 32 on AVX-512 and NEON; one lane: 16 on x86, 32 on
  // AArch64) is spilled by the compiler:
  // its multiply-adds then also load and store accumulators on the stack. Their blocks are sized
  // from the register count: the AVX-512 blocks (6 x 4 accumulators) spilled on AVX2, where
  // 6 x 2 made dense prefill about 1.4x faster (Zen 3, f16, T = 4096). The blocking never
  // changes a result: each output element accumulates its own terms in the same order whatever
  // block it falls in.
  // The decode kernels are sized the same way (dot_keys_per_step, accumulate_vectors), except
  // the value-sum blocks that skip zero weights by a branch (calls with a zero weight on AVX2,
  // NEON and the one-lane paths): 4 x 4, which spills on AVX2, where 4 x 2 and 4 x 3 with the
  // branch measured slower (each pass over the rows repeats the weight tests).

  /// The most blocks (at most kCap) of kPerBlock accumulators plus one operand vector each that
  /// fit the path's registers with one more register for a broadcast or a shared operand:
  /// (kPerBlock + 1) x blocks + 1 <= V::kRegisters. The formula behind qk_query_vectors,
  /// pv_column_vectors, dot_keys_per_step and accumulate_vectors (whose one-head blocks over
  /// rows in the accumulator type need no operand register: half the registers).
  template <class V, int kPerBlock, int kCap>
  static constexpr int registers_fit() {
    constexpr int fit = (V::kRegisters - 1) / (kPerBlock + 1);
    static_assert(fit >= 1, "a register block needs kPerBlock + 2 registers");
    return fit < kCap ? fit : kCap;
  }

  /// Keys per qk_micro step: KU key broadcasts against MV query vectors.
  template <class V>
  static constexpr int qk_keys_per_step() { return V::W >= 8 ? 6 : 4; }
  /// Widest qk_micro block of query vectors (4, 2 or 1) whose KU x MV accumulators, MV query
  /// vectors and one key broadcast fit the registers.
  template <class V>
  static constexpr int qk_query_vectors() {
    constexpr int fit = registers_fit<V, qk_keys_per_step<V>(), 4>();
    return fit >= 4 ? 4 : fit >= 2 ? 2 : 1;
  }
  /// Output rows per pv_micro step: MR weight broadcasts against CV vectors of a V row.
  template <class V>
  static constexpr int pv_rows_per_step() { return V::W >= 8 ? 6 : 4; }
  /// Widest pv_micro block of column vectors (at most 8) whose MR x CV accumulators, CV V-row
  /// vectors and one weight broadcast fit the registers.
  template <class V>
  static constexpr int pv_column_vectors() {
    return registers_fit<V, pv_rows_per_step<V>(), 8>();
  }

  // ------------------------------------------------------------------------------------------
  // Loads of storage rows
  // ------------------------------------------------------------------------------------------

  /// Values [i, i + W) of a storage row as a vector (i a multiple of W; q8_0: of a block part).
  template <class T, class V>
  TT_ATTR static V ld(const T* row, Index i) {
    if constexpr (std::is_same_v<std::remove_const_t<T>, BlockQ8_0>) {
      if constexpr (detail::HasLoadQ8<V>::value) {
        return V::load_q8(row + i / 32, int(i % 32));
      } else {
        float tmp[V::W];
        for (int l = 0; l < V::W; ++l) tmp[l] = value_at(row, i + l);
        return V::load(tmp);
      }
    } else {
      return V::template load_cvt<T>(row + i);
    }
  }
  /// Values [i, i + n) (n < W) of a storage row, zero above.
  template <class T, class V>
  TT_ATTR static V ld_n(const T* row, Index i, int n) {
    if constexpr (std::is_same_v<std::remove_const_t<T>, BlockQ8_0> && detail::HasLoadQ8<V>::value) {
      // W divides the 32 values of a block and i is a multiple of W: the whole vector lies in
      // one block, so the full load reads no byte past the row. (q8_0 rows have d a multiple of
      // 32: the kernels never load a partial q8_0 vector, only the tests do. Without this branch
      // the kernels kept value_at's out-of-line call, see scripts/check_kernel_calls.py.)
      static_assert(32 % V::W == 0, "a q8_0 block holds whole vectors");
      return V::select(V::first_n(n), V::load_q8(row + i / 32, int(i % 32)), V::zero());
    } else if constexpr (std::is_same_v<std::remove_const_t<T>, BlockQ8_0>) {
      float tmp[V::W] = {};
      for (int l = 0; l < n; ++l) tmp[l] = value_at(row, i + l);
      return V::load(tmp);
    } else {
      return V::template load_cvt_n<T>(row + i, n);
    }
  }

  // ------------------------------------------------------------------------------------------
  // Rows
  // ------------------------------------------------------------------------------------------

  /// max_i a[i] (no NaN in a); -inf for n = 0.
  template <class Acc>
  TT_ATTR static Acc row_max(const Acc* a, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    V m = V::set1(-std::numeric_limits<Acc>::infinity());
    Index i = 0;
    for (; i + W <= n; i += W) m = V::max(m, V::load(a + i));
    Acc r = m.reduce_max();
    for (; i < n; ++i) r = a[i] > r ? a[i] : r;
    return r;
  }

  /// min and max of a[0..n) (no NaN), +inf / -inf for n = 0.
  template <class Acc>
  TT_ATTR static void row_min_max(const Acc* a, Index n, Acc* mn, Acc* mx) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    V lo = V::set1(std::numeric_limits<Acc>::infinity());
    V hi = V::set1(-std::numeric_limits<Acc>::infinity());
    Index i = 0;
    for (; i + W <= n; i += W) {
      const V x = V::load(a + i);
      lo = V::min(lo, x);
      hi = V::max(hi, x);
    }
    Acc l = -((V::zero() - lo).reduce_max()), h = hi.reduce_max();
    for (; i < n; ++i) {
      l = a[i] < l ? a[i] : l;
      h = a[i] > h ? a[i] : h;
    }
    *mn = l;
    *mx = h;
  }

  /// out[i] = exp(s[i] - m) (0 for s[i] = -inf, all 0 for m = -inf); returns sum_i out[i],
  /// summed lane-wise in index order and reduced by the vector type's tree.
  template <class Acc>
  TT_ATTR static Acc exp_shifted(const Acc* s, Index n, Acc m, Acc* out) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    if (m == -std::numeric_limits<Acc>::infinity()) {
      for (Index i = 0; i < n; ++i) out[i] = Acc(0);
      return Acc(0);
    }
    const V mv = V::set1(m);
    V sum = V::zero();
    Index i = 0;
    for (; i + W <= n; i += W) {
      const V e = V::exp(V::load(s + i) - mv);
      e.store(out + i);
      sum = sum + e;
    }
    if (i < n) {
      const int r = int(n - i);
      const V e = V::select(V::first_n(r), V::exp(V::load_n(s + i, r) - mv), V::zero());
      e.store_n(out + i, r);
      sum = sum + e;
    }
    return sum.reduce_sum();
  }

  /// out[i] = exp(s[i] - m) as exp_shifted() (`out` may be `s`); returns the sum of out[i] over
  /// the i that indices_above(s, n, theta) leaves out (not s[i] > theta), lane-wise in index
  /// order: the dropped keys' D~ term of the chunk, exactly 0 when every dropped key's
  /// exponential is 0 (masked keys, s = -inf), which total - kept sum is not.
  template <class Acc>
  TT_ATTR static Acc exp_shifted_dropped(const Acc* s, Index n, Acc m, Acc theta, Acc* out) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    if (m == -std::numeric_limits<Acc>::infinity()) {
      for (Index i = 0; i < n; ++i) out[i] = Acc(0);
      return Acc(0);
    }
    const V mv = V::set1(m), tv = V::set1(theta);
    V dropped = V::zero();
    Index i = 0;
    for (; i + W <= n; i += W) {
      const V sv = V::load(s + i);
      const V e = V::exp(sv - mv);
      e.store(out + i);
      dropped = dropped + V::select(V::gt(sv, tv), V::zero(), e);
    }
    if (i < n) {
      const int r = int(n - i);
      const V sv = V::load_n(s + i, r);
      const V e = V::select(V::first_n(r), V::exp(sv - mv), V::zero());
      e.store_n(out + i, r);
      dropped = dropped + V::select(V::gt(sv, tv), V::zero(), e);
    }
    return dropped.reduce_sum();
  }

  /// Writes the indices j < n with a[j] > theta (strict) to out, ascending; returns the count.
  template <class Acc>
  TT_ATTR static Index indices_above(const Acc* a, Index n, Acc theta, std::int32_t* out) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V tv = V::set1(theta);
    Index c = 0, j = 0;
    for (; j + W <= n; j += W) {
      std::uint64_t bits = V::bits(V::gt(V::load(a + j), tv));
      while (bits) {
        out[c++] = static_cast<std::int32_t>(j + Index(__builtin_ctzll(bits)));
        bits &= bits - 1;
      }
    }
    for (; j < n; ++j) {
      out[c] = static_cast<std::int32_t>(j);
      c += a[j] > theta;
    }
    return c;
  }

  /// s[i] = sanitize(s[i] + bias[i]) for i < n (bias may be null): NaN becomes -inf (a masked
  /// key), +inf the largest finite value (semantics §2).
  template <class Acc>
  TT_ATTR static void finish_scores(Acc* s, const float* bias, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V ninf = V::set1(-std::numeric_limits<Acc>::infinity());
    const V big = V::set1(std::numeric_limits<Acc>::max());
    const V pinf = V::set1(std::numeric_limits<Acc>::infinity());
    Index i = 0;
    for (; i + W <= n; i += W) {
      V x = V::load(s + i);
      if (bias) {
        if constexpr (std::is_same_v<Acc, float>) x = x + V::load(bias + i);
        else for (int l = 0; l < W; ++l) x.r += Acc(bias[i + l]);
      }
      const auto nan = V::ne(x, x);
      const auto notinf = V::ne(x, pinf);
      V::select(nan, ninf, V::select(notinf, x, big)).store(s + i);
    }
    for (; i < n; ++i) {
      Acc x = s[i] + (bias ? Acc(bias[i]) : Acc(0));
      if (x != x) x = -std::numeric_limits<Acc>::infinity();
      else if (x == std::numeric_limits<Acc>::infinity()) x = std::numeric_limits<Acc>::max();
      s[i] = x;
    }
  }

  /// Number of j < n with a[j] > theta.
  template <class Acc>
  TT_ATTR static Index count_above(const Acc* a, Index n, Acc theta) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V tv = V::set1(theta);
    Index c = 0, j = 0;
    for (; j + W <= n; j += W) c += __builtin_popcountll(V::bits(V::gt(V::load(a + j), tv)));
    for (; j < n; ++j) c += a[j] > theta;
    return c;
  }

  /// dst[i] = (Acc)src[i], i < n; returns true when every value is finite.
  template <class T, class Acc = acc_t<T>>
  TT_ATTR static bool convert_row(const T* src, Index n, Acc* dst) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    typename V::Mask bad{};
    Index i = 0;
    for (; i + W <= n; i += W) {
      const V x = ld<T, V>(src, i);
      bad = typename V::Mask(bad | V::nonfinite(x));
      x.store(dst + i);
    }
    if (i < n) {
      const V x = ld_n<T, V>(src, i, int(n - i));
      bad = typename V::Mask(bad | V::nonfinite(x));
      x.store_n(dst + i, int(n - i));
    }
    return V::bits(bad) == 0;
  }

  // ------------------------------------------------------------------------------------------
  // Decode: scores of key rows against a GQA group, weighted sums of value rows.
  // ------------------------------------------------------------------------------------------

  /// Query heads per dot_rows batch (4, or the lane count below 4).
  template <class V>
  static constexpr int dot_heads_per_step() { return V::W >= 4 ? 4 : V::W; }
  /// Keys per dot_rows step of HB heads: the most whose HB x KB accumulators, KB key vectors
  /// and one query vector fit the registers, with at most 16 accumulators and 8 keys. AVX-512:
  /// 4 keys for 4 heads (16 accumulators); AVX2: 3 for 4 heads (12 accumulators, all 16
  /// registers) or 3 heads, 5 for 2, 7 for 1. Each query vector loaded serves KB multiply-adds: AVX2 ran 2
  /// keys per step (8 accumulators, each query vector loaded twice, the loop bound by its
  /// loads), measured 1.2-1.3x slower in isolation (Zen 3, f16, G = 4, d = 128, 16 keys).
  template <class V, int HB>
  static constexpr int dot_keys_per_step() {
    return registers_fit<V, HB, (16 / HB < 8 ? 16 / HB : 8)>();
  }

  /// Scores of HB heads (q: HB rows of d values) against nb batches of KB keys (keys[0 ..
  /// nb * KB)), HB x KB accumulators in registers. Out of line (a call per run of batches), so
  /// that scripts/check_kernel_calls.py --spills finds every block.
  template <int HB, int KB, class T, class Acc>
  TT_ATTR TOPTHETA_NOINLINE static void dot_batch(const Acc* q, Index d, const T* const* keys,
                                                  Index nb, Acc* out, Index out_stride) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    constexpr int NA = HB * KB;           // accumulators
    constexpr int NR = (NA + W - 1) / W;  // reduce_many calls (W accumulators each)
    const Index full = d - d % W;
    const int rem = int(d % W);
    for (Index b = 0; b < nb; ++b) {
      const T* const* kp = keys + b * KB;
      V acc[NR * W];  // the last NR * W - NA stay zero
      TOPTHETA_UNROLL
      for (int a = 0; a < NR * W; ++a) acc[a] = V::zero();
      for (Index i = 0; i < full; i += W) {
        V kv[KB];
        TOPTHETA_UNROLL
        for (int kb = 0; kb < KB; ++kb) kv[kb] = ld<T, V>(kp[kb], i);
        TOPTHETA_UNROLL
        for (int hb = 0; hb < HB; ++hb) {
          const V qv = V::load(q + hb * d + i);
          TOPTHETA_UNROLL
          for (int kb = 0; kb < KB; ++kb)
            acc[hb * KB + kb] = V::fma(qv, kv[kb], acc[hb * KB + kb]);
        }
      }
      if (rem) {
        V kv[KB];
        TOPTHETA_UNROLL
        for (int kb = 0; kb < KB; ++kb) kv[kb] = ld_n<T, V>(kp[kb], full, rem);
        TOPTHETA_UNROLL
        for (int hb = 0; hb < HB; ++hb) {
          const V qv = V::load_n(q + hb * d + full, rem);
          TOPTHETA_UNROLL
          for (int kb = 0; kb < KB; ++kb)
            acc[hb * KB + kb] = V::fma(qv, kv[kb], acc[hb * KB + kb]);
        }
      }
      Acc sums[NR * W];
      TOPTHETA_UNROLL
      for (int r = 0; r < NR; ++r) V::reduce_many(acc + r * W).store(sums + r * W);
      TOPTHETA_UNROLL
      for (int hb = 0; hb < HB; ++hb)
        TOPTHETA_UNROLL
        for (int kb = 0; kb < KB; ++kb) out[hb * out_stride + b * KB + kb] = sums[hb * KB + kb];
    }
  }

  /// dot_rows of HB heads: batches of KB = dot_keys_per_step keys, then the keys left over in
  /// batches of 2 and 1 (a run of 3 keys per batch leaving one key over gives its last batch's
  /// keys to 2 + 2 instead: a one-key batch has only HB accumulators in flight).
  template <int HB, class T, class Acc>
  TT_ATTR static void dot_heads(const Acc* q, Index d, const T* const* keys, Index n, Acc* out,
                                Index out_stride) {
    constexpr int KB = dot_keys_per_step<Vec<Acc>, HB>();
    Index nb = n / KB;
    if (KB == 3 && nb > 0 && n - nb * KB == 1) --nb;
    if (nb > 0) dot_batch<HB, KB>(q, d, keys, nb, out, out_stride);
    Index u = nb * KB;
    if constexpr (KB > 2) {
      if (n - u >= 2) {
        const Index pairs = (n - u) / 2;
        dot_batch<HB, 2>(q, d, keys + u, pairs, out + u, out_stride);
        u += 2 * pairs;
      }
    }
    if constexpr (KB > 1) {
      if (u < n) dot_batch<HB, 1>(q, d, keys + u, n - u, out + u, out_stride);
    }
  }

  /// out[h * out_stride + u] = q_h . keys[u] for h < G, u < n. q: G rows of d values
  /// (contiguous, already scaled); keys: row pointers in storage type T, converted in registers.
  /// Heads go dot_heads_per_step at a time, the last heads of the group in one smaller batch
  /// (an MHA group, G = 1, computes its one head, not four copies of it). Each result depends
  /// only on (q_h, keys[u], d): its lanes accumulate in d order and reduce by reduce_many's
  /// tree, whatever batch of heads and keys it falls in.
  template <class T, class Acc = acc_t<T>>
  TT_ATTR TOPTHETA_NOINLINE static void dot_rows(const Acc* q, Index G, Index d,
                                                 const T* const* keys, Index n, Acc* out,
                                                 Index out_stride) {
    constexpr int HB = dot_heads_per_step<Vec<Acc>>();
    Index h0 = 0;
    for (; h0 + HB <= G; h0 += HB)
      dot_heads<HB>(q + h0 * d, d, keys, n, out + h0 * out_stride, out_stride);
    if (h0 == G) return;
    q += h0 * d;
    out += h0 * out_stride;
    if constexpr (HB >= 4) {
      if (G - h0 == 3) return dot_heads<3>(q, d, keys, n, out, out_stride);
    }
    if constexpr (HB >= 3) {
      if (G - h0 == 2) return dot_heads<2>(q, d, keys, n, out, out_stride);
    }
    dot_heads<1>(q, d, keys, n, out, out_stride);
  }

  /// Column vectors per accumulate_rows block of NH heads over rows of storage type T when no
  /// weight of the call is zero: the most (at most 4) whose NH x NV accumulators, NV row
  /// vectors and one weight broadcast fit the registers (AVX2: 3 for 3 or 4 heads; AVX-512 and
  /// NEON: 4). One head holds more accumulators, each a chain of dependent multiply-adds: the
  /// prefill's per-query kept-row gathers (f32, Zen 3, post-softmax T = 1024) took 13% of the
  /// samples with 4, 8.7% with 8. Rows in the accumulator type go straight into their
  /// multiply-adds (a memory operand): up to 8 accumulators and the broadcast, half the
  /// registers at most. f16 and bf16 rows are converted into a register first: NV accumulators
  /// and NV converted vectors (AVX2: 7; 8 spilled a converted row per row). q8_0 rows also
  /// hold the block's scale and the integer widening's temporaries: at most 4, as for several
  /// heads (AVX2: 6 to 8 spilled accumulators, scripts/check_kernel_calls.py --spills).
  template <class V, int NH, class T, class Acc>
  static constexpr int accumulate_vectors() {
    if constexpr (NH == 1 && std::is_same_v<std::remove_const_t<T>, Acc>)
      return V::kRegisters / 2 < 8 ? V::kRegisters / 2 : 8;
    else if constexpr (NH == 1 && !std::is_same_v<std::remove_const_t<T>, BlockQ8_0>)
      return registers_fit<V, 1, 8>();
    else
      return registers_fit<V, NH, 4>();
  }

  /// True when a[i] == 0 (either sign) for some i < n.
  template <class Acc>
  TT_ATTR static bool any_zero(const Acc* a, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    constexpr std::uint64_t all = W >= 64 ? ~std::uint64_t(0) : (std::uint64_t(1) << W) - 1;
    const V z = V::zero();
    Index i = 0;
    for (; i + W <= n; i += W)
      if (V::bits(V::ne(V::load(a + i), z)) != all) return true;
    for (; i < n; ++i)
      if (a[i] == Acc(0)) return true;
    return false;
  }

  /// True when some weight w[u * w_u + h * w_h] (u < n, h < G) is zero (either sign).
  template <class Acc>
  TT_ATTR static bool any_zero_weight(const Acc* w, Index w_u, Index w_h, Index G, Index n) {
    if (w_u == 1) {
      for (Index h = 0; h < G; ++h)
        if (any_zero(w + h * w_h, n)) return true;
    } else if (w_h == 1) {
      for (Index u = 0; u < n; ++u)
        if (any_zero(w + u * w_u, G)) return true;
    } else {
      for (Index u = 0; u < n; ++u)
        for (Index h = 0; h < G; ++h)
          if (w[u * w_u + h * w_h] == Acc(0)) return true;
    }
    return false;
  }

  /// One block of accumulate_rows: NH heads x NV vectors of columns starting at c0,
  /// accumulators in registers (out of line, as dot_batch: scripts/check_kernel_calls.py
  /// --spills finds every block). kPartial: one vector of `last` < W columns (the last columns of
  /// a row whose d is not a multiple of W), in a block of its own: the masks of a partial load
  /// held across the row loop would take registers from the whole blocks' accumulators.
  /// kSkipZero: a (row, head) pair of weight 0 is skipped (a masked multiply-add or a branch);
  /// without it every pair is added (the caller has checked that no weight is 0).
  template <int NH, int NV, bool kSkipZero, bool kPartial, class T, class Acc>
  TT_ATTR TOPTHETA_NOINLINE static void accumulate_block(Acc* acc, Index d, Index c0, int last,
                                                         const T* const* rows, const Acc* w,
                                                         Index w_u, Index w_h, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    static_assert(!kPartial || NV == 1, "a partial vector is a block of its own");
    V a[NH][NV];
    TOPTHETA_UNROLL
    for (int hb = 0; hb < NH; ++hb)
      TOPTHETA_UNROLL
      for (int v = 0; v < NV; ++v) {
        const Acc* p = acc + hb * d + c0 + v * W;
        a[hb][v] = kPartial ? V::load_n(p, last) : V::load(p);
      }
    for (Index u = 0; u < n; ++u) {
      const T* r = rows[u];
      V x[NV];
      TOPTHETA_UNROLL
      for (int v = 0; v < NV; ++v)
        x[v] = kPartial ? ld_n<T, V>(r, c0 + v * W, last) : ld<T, V>(r, c0 + v * W);
      const Acc* wu = w + u * w_u;
      TOPTHETA_UNROLL
      for (int hb = 0; hb < NH; ++hb) {
        const Acc wv = wu[hb * w_h];
        const V ww = V::set1(wv);
        if constexpr (!kSkipZero) {
          TOPTHETA_UNROLL
          for (int v = 0; v < NV; ++v) a[hb][v] = V::fma(ww, x[v], a[hb][v]);
        } else if constexpr (V::kFreeMaskedFma) {
          // A zero weight never lets its row into the sum: a masked FMA, no branch (sparse
          // gathers weigh a union of keys whose weights are zero for some heads at random).
          const auto m = V::ne(ww, V::zero());
          TOPTHETA_UNROLL
          for (int v = 0; v < NV; ++v) a[hb][v] = V::fma_masked(ww, x[v], a[hb][v], m);
        } else {
          if (wv == Acc(0)) continue;
          TOPTHETA_UNROLL
          for (int v = 0; v < NV; ++v) a[hb][v] = V::fma(ww, x[v], a[hb][v]);
        }
      }
    }
    TOPTHETA_UNROLL
    for (int hb = 0; hb < NH; ++hb)
      TOPTHETA_UNROLL
      for (int v = 0; v < NV; ++v) {
        Acc* p = acc + hb * d + c0 + v * W;
        if (kPartial) a[hb][v].store_n(p, last);
        else a[hb][v].store(p);
      }
  }

  /// accumulate_block of nv (1 <= nv <= NV) whole vectors.
  template <int NH, int NV, bool kSkipZero, class T, class Acc>
  TT_ATTR static void accumulate_block_upto(int nv, Acc* acc, Index d, Index c0,
                                            const T* const* rows, const Acc* w, Index w_u,
                                            Index w_h, Index n) {
    if constexpr (NV > 1) {
      if (nv < NV)
        return accumulate_block_upto<NH, NV - 1, kSkipZero>(nv, acc, d, c0, rows, w, w_u, w_h, n);
    }
    accumulate_block<NH, NV, kSkipZero, false>(acc, d, c0, Vec<Acc>::W, rows, w, w_u, w_h, n);
  }

  /// accumulate_rows for NH heads, every column: blocks of NV whole vectors of columns (4 when
  /// skipping zero weights, else accumulate_vectors), then a block for the columns of a partial
  /// last vector. A block that would leave one vector for the last whole block takes one vector
  /// fewer: a one-vector block has only NH accumulators in flight (d = 128 on AVX2: 3, 3, 3, 3,
  /// 2, 2 vectors rather than 3, 3, 3, 3, 3, 1).
  template <int NH, bool kSkipZero, class T, class Acc>
  TT_ATTR static void accumulate_heads(Acc* acc, Index d, const T* const* rows, const Acc* w,
                                       Index w_u, Index w_h, Index n) {
    constexpr int W = Vec<Acc>::W;
    constexpr int NV = kSkipZero ? 4 : accumulate_vectors<Vec<Acc>, NH, T, Acc>();
    const Index nvec = d / W;
    for (Index v0 = 0; v0 < nvec;) {
      Index nv = nvec - v0 < NV ? nvec - v0 : NV;
      if (nv > 2 && nvec - v0 - nv == 1) --nv;
      accumulate_block_upto<NH, NV, kSkipZero>(int(nv), acc, d, v0 * W, rows, w, w_u, w_h, n);
      v0 += nv;
    }
    if (d % W)
      accumulate_block<NH, 1, kSkipZero, true>(acc, d, nvec * W, int(d % W), rows, w, w_u, w_h, n);
  }

  template <bool kSkipZero, class T, class Acc>
  TT_ATTR static void accumulate_groups(Acc* acc, Index G, Index d, const T* const* rows,
                                        const Acc* w, Index w_u, Index w_h, Index n) {
    Index h0 = 0;
    for (; h0 + 4 <= G; h0 += 4)
      accumulate_heads<4, kSkipZero>(acc + h0 * d, d, rows, w + h0 * w_h, w_u, w_h, n);
    acc += h0 * d;
    w += h0 * w_h;
    switch (G - h0) {
      case 3: accumulate_heads<3, kSkipZero>(acc, d, rows, w, w_u, w_h, n); break;
      case 2: accumulate_heads<2, kSkipZero>(acc, d, rows, w, w_u, w_h, n); break;
      case 1: accumulate_heads<1, kSkipZero>(acc, d, rows, w, w_u, w_h, n); break;
      default: break;
    }
  }

  /// acc[h * d + i] += sum_u w[u * w_u + h * w_h] * rows[u][i] for h < G, i < d, rows in
  /// order. A (row, head) pair whose weight is exactly 0 is skipped: its row never enters that
  /// head's sum (a non-finite value there cannot reach the output). Paths without a free masked
  /// multiply-add check the weights once per call and, when none is 0 (a dense walk's tiles but
  /// for masked or underflowing keys), run blocks without the per-(row, head) test: on AVX2 the
  /// test's branches made the walk 2-2.7x slower than the plain blocks (Zen 3, f16, G = 4,
  /// d = 128, 16 rows, in isolation). Each output element accumulates its rows one after another
  /// in order either way: the same bits.
  template <class T, class Acc = acc_t<T>>
  TT_ATTR TOPTHETA_NOINLINE static void accumulate_rows(Acc* acc, Index G, Index d,
                                                        const T* const* rows, const Acc* w,
                                                        Index w_u, Index w_h, Index n) {
    if constexpr (!Vec<Acc>::kFreeMaskedFma) {
      if (!any_zero_weight(w, w_u, w_h, G, n))
        return accumulate_groups<false>(acc, G, d, rows, w, w_u, w_h, n);
    }
    accumulate_groups<true>(acc, G, d, rows, w, w_u, w_h, n);
  }

  /// y[i] += a * x[i], i < n.
  template <class Acc>
  TT_ATTR static void axpy(Acc a, const Acc* x, Acc* y, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V av = V::set1(a);
    Index i = 0;
    for (; i + W <= n; i += W) V::fma(av, V::load(x + i), V::load(y + i)).store(y + i);
    if (i < n) V::fma(av, V::load_n(x + i, int(n - i)), V::load_n(y + i, int(n - i))).store_n(y + i, int(n - i));
  }

  /// Vectors of columns per scatter_row block: the NV row vectors stay in registers with the
  /// weight's broadcast and one output vector (8 at most; AVX2's 16 registers hold 8 + 2).
  /// q8_0 rows also hold the block's scale and the widening's temporaries while they load: 4,
  /// as accumulate_vectors takes for them.
  template <class V, class T>
  static constexpr int scatter_vectors() {
    constexpr int cap = std::is_same_v<std::remove_const_t<T>, BlockQ8_0> ? 4 : 8;
    return V::kRegisters - 2 < cap ? V::kRegisters - 2 : cap;
  }

  /// One block of scatter_row: NV vectors of columns from c0 (kPartial: one vector of `last`
  /// < W columns), the row's vectors loaded (converted) once for all n outputs.
  template <int NV, bool kPartial, class T, class Acc>
  TT_ATTR TOPTHETA_NOINLINE static void scatter_block(Acc* const* outs, const Acc* w, Index n,
                                                      const T* row, Index c0, int last) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    static_assert(!kPartial || NV == 1, "a partial vector is a block of its own");
    V x[NV];
    TOPTHETA_UNROLL
    for (int v = 0; v < NV; ++v)
      x[v] = kPartial ? ld_n<T, V>(row, c0 + v * W, last) : ld<T, V>(row, c0 + v * W);
    for (Index i = 0; i < n; ++i) {
      const V ww = V::set1(w[i]);
      Acc* p = outs[i] + c0;
      TOPTHETA_UNROLL
      for (int v = 0; v < NV; ++v) {
        if constexpr (kPartial) V::fma(ww, x[v], V::load_n(p, last)).store_n(p, last);
        else V::fma(ww, x[v], V::load(p + v * W)).store(p + v * W);
      }
    }
  }

  /// scatter_block of nv (1 <= nv <= NV) whole vectors.
  template <int NV, class T, class Acc>
  TT_ATTR static void scatter_block_upto(int nv, Acc* const* outs, const Acc* w, Index n,
                                         const T* row, Index c0) {
    if constexpr (NV > 1) {
      if (nv < NV) return scatter_block_upto<NV - 1>(nv, outs, w, n, row, c0);
    }
    scatter_block<NV, false>(outs, w, n, row, c0, Vec<Acc>::W);
  }

  /// outs[i][c] += w[i] * row[c] for i < n, c < d: one V row (storage type T) into n outputs,
  /// its columns loaded and converted once per block of scatter_vectors() vectors rather than
  /// once per output. Each output element takes one multiply-add (V::fma): an output that
  /// receives rows by successive calls accumulates them in call order, as accumulate_rows
  /// accumulates its rows in order. Every weight is added, 0 included (the caller leaves out
  /// the pairs that must not be added).
  template <class T, class Acc = acc_t<T>>
  TT_ATTR TOPTHETA_NOINLINE static void scatter_row(Acc* const* outs, const Acc* w, Index n,
                                                    const T* row, Index d) {
    constexpr int W = Vec<Acc>::W;
    constexpr int NV = scatter_vectors<Vec<Acc>, T>();
    const Index nvec = d / W;
    for (Index v0 = 0; v0 < nvec; v0 += NV) {
      const Index nv = nvec - v0 < NV ? nvec - v0 : NV;
      scatter_block_upto<NV>(int(nv), outs, w, n, row, v0 * W);
    }
    if (d % W) scatter_block<1, true>(outs, w, n, row, nvec * W, int(d % W));
  }

  /// y[i] *= a, i < n.
  template <class Acc>
  TT_ATTR static void scale(Acc* y, Acc a, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V av = V::set1(a);
    Index i = 0;
    for (; i + W <= n; i += W) (V::load(y + i) * av).store(y + i);
    if (i < n) (V::load_n(y + i, int(n - i)) * av).store_n(y + i, int(n - i));
  }

  // ------------------------------------------------------------------------------------------
  // Prefill: tiles of a query block (M rows = block rows x group heads) against key tiles.
  // Layout: Qt is d x Mp (query rows transposed, Mp = M rounded up to the vector width, zero
  // padded); St / Pt are n x Mp (one key per row): row-wise softmax statistics are then plain
  // vector operations across the M query rows.
  // ------------------------------------------------------------------------------------------

  /// Rows per vector of the prefill tiles (Mp is a multiple of it).
  static constexpr int kLanes = TT_VEC::W;

  // qk_micro and pv_micro stay out of line (a call per block of d or n multiply-add steps), so
  // that scripts/check_kernel_calls.py --spills finds every block the path uses.
  template <int KU, int MV, class Acc>
  TT_ATTR TOPTHETA_NOINLINE static void qk_micro(const Acc* Qt, Index Mp, Index d, const Acc* K,
                                                 Index ldk, Acc* St) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    V acc[KU][MV];
    TOPTHETA_UNROLL
    for (int k = 0; k < KU; ++k)
      TOPTHETA_UNROLL
      for (int v = 0; v < MV; ++v) acc[k][v] = V::zero();
    for (Index i = 0; i < d; ++i) {
      V qv[MV];
      TOPTHETA_UNROLL
      for (int v = 0; v < MV; ++v) qv[v] = V::load(Qt + i * Mp + v * W);
      TOPTHETA_UNROLL
      for (int k = 0; k < KU; ++k) {
        const V kb = V::set1(K[k * ldk + i]);
        TOPTHETA_UNROLL
        for (int v = 0; v < MV; ++v) acc[k][v] = V::fma(kb, qv[v], acc[k][v]);
      }
    }
    TOPTHETA_UNROLL
    for (int k = 0; k < KU; ++k)
      TOPTHETA_UNROLL
      for (int v = 0; v < MV; ++v) acc[k][v].store(St + k * Mp + v * W);
  }

  /// qk_micro<r, MV> for 1 <= r <= KU: the last r < KU keys of a tile in one block.
  template <int KU, int MV, class Acc>
  TT_ATTR static void qk_micro_upto(int r, const Acc* Qt, Index Mp, Index d, const Acc* K,
                                    Index ldk, Acc* St) {
    if constexpr (KU > 1) {
      if (r < KU) return qk_micro_upto<KU - 1, MV>(r, Qt, Mp, d, K, ldk, St);
    }
    qk_micro<KU, MV>(Qt, Mp, d, K, ldk, St);
  }

  template <int MV, class Acc>
  TT_ATTR static void qk_keys(const Acc* Qt, Index Mp, Index d, const Acc* K, Index ldk, Index n,
                              Acc* St) {
    constexpr int KU = qk_keys_per_step<Vec<Acc>>();
    Index u = 0;
    for (; u + KU <= n; u += KU) qk_micro<KU, MV>(Qt, Mp, d, K + u * ldk, ldk, St + u * Mp);
    if (u < n) qk_micro_upto<KU - 1, MV>(int(n - u), Qt, Mp, d, K + u * ldk, ldk, St + u * Mp);
  }

  /// St[u * Mp + m] = sum_{i < d} K[u * ldk + i] * Qt[i * Mp + m] for u < n, m < Mp: each
  /// element accumulates in i order.
  template <class Acc>
  TT_ATTR static void qk_tile(const Acc* Qt, Index Mp, Index d, const Acc* K, Index ldk, Index n,
                              Acc* St) {
    constexpr int W = Vec<Acc>::W;
    constexpr int MV = qk_query_vectors<Vec<Acc>>();
    Index m0 = 0;
    if constexpr (MV >= 4)
      for (; m0 + 4 * W <= Mp; m0 += 4 * W) qk_keys<4>(Qt + m0, Mp, d, K, ldk, n, St + m0);
    if constexpr (MV >= 2)
      for (; m0 + 2 * W <= Mp; m0 += 2 * W) qk_keys<2>(Qt + m0, Mp, d, K, ldk, n, St + m0);
    for (; m0 < Mp; m0 += W) qk_keys<1>(Qt + m0, Mp, d, K, ldk, n, St + m0);
  }

  template <int MR, int CV, class Acc>
  TT_ATTR TOPTHETA_NOINLINE static void pv_micro(Acc* O, Index ldo, Index c0, int last,
                                                 const Acc* Pt, Index Mp,
                               const Acc* Vf, Index ldv, Index n) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    V acc[MR][CV];
    TOPTHETA_UNROLL
    for (int r = 0; r < MR; ++r)
      TOPTHETA_UNROLL
      for (int v = 0; v < CV; ++v) {
        Acc* p = O + r * ldo + c0 + v * W;
        acc[r][v] = v + 1 < CV ? V::load(p) : V::load_n(p, last);
      }
    for (Index u = 0; u < n; ++u) {
      V x[CV];
      TOPTHETA_UNROLL
      for (int v = 0; v < CV; ++v) x[v] = V::load(Vf + u * ldv + c0 + v * W);
      TOPTHETA_UNROLL
      for (int r = 0; r < MR; ++r) {
        const V pb = V::set1(Pt[u * Mp + r]);
        TOPTHETA_UNROLL
        for (int v = 0; v < CV; ++v) acc[r][v] = V::fma(pb, x[v], acc[r][v]);
      }
    }
    TOPTHETA_UNROLL
    for (int r = 0; r < MR; ++r)
      TOPTHETA_UNROLL
      for (int v = 0; v < CV; ++v) {
        Acc* p = O + r * ldo + c0 + v * W;
        if (v + 1 < CV) acc[r][v].store(p);
        else acc[r][v].store_n(p, last);
      }
  }

  /// pv_micro<r, CV> for 1 <= r <= MR: the last r < MR output rows in one block.
  template <int MR, int CV, class Acc>
  TT_ATTR static void pv_micro_upto(int r, Acc* O, Index ldo, Index c0, int last, const Acc* Pt,
                                    Index Mp, const Acc* Vf, Index ldv, Index n) {
    if constexpr (MR > 1) {
      if (r < MR) return pv_micro_upto<MR - 1, CV>(r, O, ldo, c0, last, Pt, Mp, Vf, ldv, n);
    }
    pv_micro<MR, CV>(O, ldo, c0, last, Pt, Mp, Vf, ldv, n);
  }

  template <int CV, class Acc>
  TT_ATTR static void pv_rows(Acc* O, Index ldo, Index M, Index c0, int last, const Acc* Pt,
                              Index Mp, const Acc* Vf, Index ldv, Index n) {
    constexpr int MR = pv_rows_per_step<Vec<Acc>>();
    Index m = 0;
    for (; m + MR <= M; m += MR)
      pv_micro<MR, CV>(O + m * ldo, ldo, c0, last, Pt + m, Mp, Vf, ldv, n);
    if (m < M)
      pv_micro_upto<MR - 1, CV>(int(M - m), O + m * ldo, ldo, c0, last, Pt + m, Mp, Vf, ldv, n);
  }

  /// pv_rows<nv> for 1 <= nv <= CV (only the block widths the path uses are instantiated).
  template <int CV, class Acc>
  TT_ATTR static void pv_rows_upto(int nv, Acc* O, Index ldo, Index M, Index c0, int last,
                                   const Acc* Pt, Index Mp, const Acc* Vf, Index ldv, Index n) {
    if constexpr (CV > 1) {
      if (nv < CV) return pv_rows_upto<CV - 1>(nv, O, ldo, M, c0, last, Pt, Mp, Vf, ldv, n);
    }
    pv_rows<CV>(O, ldo, M, c0, last, Pt, Mp, Vf, ldv, n);
  }

  /// O[m * ldo + c] += sum_{u < n} Pt[u * Mp + m] * Vf[u * ldv + c] for m < M, c < d, keys in
  /// order. Vf rows hold ldv >= d values (ldv a multiple of the vector width, padding finite);
  /// every Vf row must be finite (callers handle non-finite rows separately).
  template <class Acc>
  TT_ATTR static void pv_tile(Acc* O, Index ldo, Index M, Index d, const Acc* Pt, Index Mp,
                              const Acc* Vf, Index ldv, Index n) {
    constexpr int W = Vec<Acc>::W;
    constexpr int CB = pv_column_vectors<Vec<Acc>>();
    for (Index c0 = 0; c0 < d; c0 += Index(CB) * W) {
      const Index cols = d - c0 < Index(CB) * W ? d - c0 : Index(CB) * W;
      const int nv = int((cols + W - 1) / W);
      const int last = int(cols - Index(nv - 1) * W);
      pv_rows_upto<CB>(nv, O, ldo, M, c0, last, Pt, Mp, Vf, ldv, n);
    }
  }

  /// Online-softmax update of one key tile for Mp query rows (vectors across rows):
  ///   St[u][m] (n x Mp) holds final scores (masked = -inf); keep threshold theta[m] (a key is
  ///   kept iff St > theta; -inf keeps every unmasked key);
  ///   run_max[m] = max over all scores so far; alpha[m] = exp(old max - new max);
  ///   Pt[u][m] = exp(St - new max) for kept keys, 0 otherwise (in place of St);
  ///   kept_sum[m] = alpha * kept_sum + sum of kept Pt; drop_sum[m] likewise for the others
  ///   (only when `drop_sum` is not null); n_kept[m] += kept count (as Acc);
  ///   best[m] / best_idx[m]: first maximum so far and its key index (when not null);
  ///   keep_bits[u] (when not null, Mp <= 64): bit m set iff row m keeps key u.
  /// Returns true when some alpha[m] != 1 (the caller rescales its output rows).
  template <class Acc>
  TT_ATTR static bool softmax_tile(Acc* St, Index n, Index Mp, Index key0, const Acc* theta,
                                   Acc* run_max, Acc* alpha, Acc* kept_sum, Acc* drop_sum,
                                   Acc* n_kept, Acc* best, Acc* best_idx,
                                   std::uint64_t* keep_bits) {
    if (keep_bits)
      for (Index u = 0; u < n; ++u) keep_bits[u] = 0;
    using V = Vec<Acc>;
    constexpr int W = V::W;
    bool rescale = false;
    const V ninf = V::set1(-std::numeric_limits<Acc>::infinity());
    for (Index m0 = 0; m0 < Mp; m0 += W) {
      V tmax = ninf;
      for (Index u = 0; u < n; ++u) tmax = V::max(tmax, V::load(St + u * Mp + m0));
      const V old = V::load(run_max + m0);
      const V nm = V::max(old, tmax);
      nm.store(run_max + m0);
      const V al = V::exp(old - nm);  // old = -inf: 0 (nothing accumulated yet)
      al.store(alpha + m0);
      // Rows whose max moved and had something accumulated.
      if (V::bits(V::gt(nm, old) & V::gt(old, ninf))) rescale = true;
      const V th = V::load(theta + m0);
      V ks = V::zero(), ds = V::zero(), nk = V::zero();
      const V one = V::set1(Acc(1));
      V bv = best ? V::load(best + m0) : ninf, bi = best ? V::load(best_idx + m0) : V::zero();
      for (Index u = 0; u < n; ++u) {
        const V s = V::load(St + u * Mp + m0);
        const auto keep = V::gt(s, th);
        if (keep_bits) keep_bits[u] |= V::bits(keep) << m0;
        const V p = V::exp(s - nm);
        const V pk = V::select(keep, p, V::zero());
        pk.store(St + u * Mp + m0);
        ks = ks + pk;
        if (drop_sum) ds = ds + V::select(keep, V::zero(), p);
        nk = nk + V::select(keep, one, V::zero());
        if (best) {
          const auto up = V::gt(s, bv);
          bv = V::select(up, s, bv);
          bi = V::select(up, V::set1(Acc(key0 + u)), bi);
        }
      }
      (V::fma(al, V::load(kept_sum + m0), ks)).store(kept_sum + m0);
      if (drop_sum) (V::fma(al, V::load(drop_sum + m0), ds)).store(drop_sum + m0);
      (V::load(n_kept + m0) + nk).store(n_kept + m0);
      if (best) {
        bv.store(best + m0);
        bi.store(best_idx + m0);
      }
    }
    return rescale;
  }

  /// Running maximum of one key tile for Mp query rows (pass 1 of the post-softmax prefill):
  /// St[u][m] (n x Mp) holds final scores (masked = -inf); run_max[m] = max over all scores so
  /// far; best_idx[m] = key index (as Acc) of the first maximum (kept unless the maximum strictly
  /// grows).
  template <class Acc>
  TT_ATTR static void max_tile(const Acc* St, Index n, Index Mp, Index key0, Acc* run_max,
                               Acc* best_idx) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    const V ninf = V::set1(-std::numeric_limits<Acc>::infinity());
    for (Index m0 = 0; m0 < Mp; m0 += W) {
      V tmax = ninf, ti = V::zero();
      for (Index u = 0; u < n; ++u) {
        const V s = V::load(St + u * Mp + m0);
        const auto up = V::gt(s, tmax);
        tmax = V::select(up, s, tmax);
        ti = V::select(up, V::set1(Acc(key0 + u)), ti);
      }
      const V old = V::load(run_max + m0);
      V::max(old, tmax).store(run_max + m0);
      V::select(V::gt(tmax, old), ti, V::load(best_idx + m0)).store(best_idx + m0);
    }
  }

  /// Softmax denominators of Mp query rows summed exactly as exp_shifted() sums one row: lane l
  /// of a row's sum adds exp(s_j - mx) of the keys j = l (mod W) in key order. Adds the tile
  /// St (n x Mp, keys key0 .. key0 + n - 1, key0 a multiple of W) to the lane sums
  /// zl[l * Mp + m] (l < W); lane_sum() then reduces a row's W lane sums by the same tree.
  template <class Acc>
  TT_ATTR static void exp_sum_tile(const Acc* St, Index n, Index Mp, const Acc* mx, Acc* zl) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    for (Index m0 = 0; m0 < Mp; m0 += W) {
      const V mv = V::load(mx + m0);
      for (Index l = 0; l < W && l < n; ++l) {
        V a = V::load(zl + l * Mp + m0);
        for (Index u = l; u < n; u += W) a = a + V::exp(V::load(St + u * Mp + m0) - mv);
        a.store(zl + l * Mp + m0);
      }
    }
  }

  /// The reduction of W lane sums (lane[0..W)) by the vector type's tree (as exp_shifted()).
  template <class Acc>
  TT_ATTR static Acc lane_sum(const Acc* lane) {
    return Vec<Acc>::load(lane).reduce_sum();
  }

  /// Post-softmax selection of one key tile for Mp query rows (pass 2 of the post-softmax
  /// prefill, row maxima and denominators final): with p = exp(St[u][m] - mx[m]) * inv[m], row m
  /// keeps key key0 + u iff (St > bound[m] and p > theta[m]) or key0 + u < lim[m].
  /// Pt[u][m] = p for kept keys, 0 otherwise (Pt may alias St); wsum[m] += kept p (key order);
  /// n_kept[m] += kept count (as Acc); keep_bits[u] (Mp <= 64): bit m set iff row m keeps u.
  /// Returns true when anything is kept. Branch-free: every vector takes its exp and adds to the
  /// sums. The former form skipped the exp when no lane passed `bound` or `lim`, and the sums
  /// when no lane was kept; at 5-15% kept those tests go either way at random per vector. The
  /// change measured neutral: this walk took 1.99x the samples of exp_sum_tile (which takes
  /// every exp) before and 1.90-2.05x after (perf, post-softmax prefill T = 1024, f16,
  /// 1 thread, AVX-512). It stays for its simpler flow. The values are the same: a skipped
  /// vector kept nothing, and adding +0 to the non-negative sums is exact.
  template <class Acc>
  TT_ATTR static bool threshold_tile(const Acc* St, Acc* Pt, Index n, Index Mp, Index key0,
                                     const Acc* bound, const Acc* mx, const Acc* inv,
                                     const Acc* theta, const Acc* lim, Acc* wsum, Acc* n_kept,
                                     std::uint64_t* keep_bits) {
    using V = Vec<Acc>;
    using Mask = typename V::Mask;
    constexpr int W = V::W;
    for (Index u = 0; u < n; ++u) keep_bits[u] = 0;
    std::uint64_t kept_any = 0;
    const V one = V::set1(Acc(1));
    for (Index m0 = 0; m0 < Mp; m0 += W) {
      const V bd = V::load(bound + m0), mv = V::load(mx + m0), iv = V::load(inv + m0);
      const V th = V::load(theta + m0), lm = V::load(lim + m0);
      V ws = V::load(wsum + m0), nk = V::load(n_kept + m0);
      for (Index u = 0; u < n; ++u) {
        const V s = V::load(St + u * Mp + m0);
        const Mask above = V::gt(s, bd);
        const Mask early = V::gt(lm, V::set1(Acc(key0 + u)));
        const V p = V::exp(s - mv) * iv;
        const Mask keep = Mask(Mask(above & V::gt(p, th)) | early);
        const std::uint64_t kb = V::bits(keep);
        const V pk = V::select(keep, p, V::zero());
        pk.store(Pt + u * Mp + m0);
        kept_any |= kb;
        keep_bits[u] |= kb << m0;
        ws = ws + pk;
        nk = nk + V::select(keep, one, V::zero());
      }
      ws.store(wsum + m0);
      nk.store(n_kept + m0);
    }
    return kept_any != 0;
  }

  /// Bit u * 64 ... : for each key u < n, the bits of the rows m < Mp (Mp <= 64) whose Pt is
  /// non-zero (kept with a non-zero weight) into mask[u].
  template <class Acc>
  TT_ATTR static void nonzero_masks(const Acc* Pt, Index n, Index Mp, std::uint64_t* mask) {
    using V = Vec<Acc>;
    constexpr int W = V::W;
    for (Index u = 0; u < n; ++u) {
      std::uint64_t b = 0;
      for (Index m0 = 0; m0 < Mp; m0 += W)
        b |= V::bits(V::ne(V::load(Pt + u * Mp + m0), V::zero())) << m0;
      mask[u] = b;
    }
  }
};
