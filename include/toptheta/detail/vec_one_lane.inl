// detail/vec_one_lane.inl: the one-lane "vector" VecOneLane<Acc, kFusedFma>, with the interface
// of the SIMD vector types (vec_avx2.hpp, vec_avx512.hpp, vec_neon.hpp), so the kernels of
// simd_kernels.inl are written once. It is the scalar path's float and double vector and every
// path's double vector (double always runs one lane at a time).
//
// detail/simd.hpp includes this file once per path, inside namespace toptheta::detail::<path>,
// with TT_ATTR the path's function attribute: the members then carry the path's target and are
// inlined into its kernels (a plain inline function is not inlined into a function whose target
// or tuning differs, and every multiply-add would be a call). No include guard on purpose.
//
// kFusedFma says how fma() rounds a * b + c: once (the FMA instruction) or twice. It is decided
// by the path, never left to the compiler: where FMA is enabled GCC contracts a plain
// `a * b + c` in some inlined copies and not in others (it did so in qk_keys<4>, <2>, <1> of the
// scalar path), and a score's bits then depended on which micro-kernel its tile position took
// (found by test_post_prefill, ScoreTileBudgetBetweenNoneAndAll). The scalar path fuses exactly
// when the build targets FMA hardware (kBuildTargetsFma); the AVX2, AVX-512 and NEON paths
// always fuse (the AVX functions' target attribute enables FMA even in a build without -mfma,
// and every AArch64 CPU has it).
// tests/test_rounding.cpp checks it for every path and both accumulation types.

template <class Acc, bool kFusedFma>
struct VecOneLane {
  /// True when a masked fused multiply-add costs what a plain one does.
  static constexpr bool kFreeMaskedFma = false;
  static constexpr int W = 1;
  /// Architectural vector registers the path's kernels can use: their register blocking keeps
  /// accumulators and operands within it (the prefill tiles of simd_kernels.inl).
#if defined(__aarch64__)
  static constexpr int kRegisters = 32;  // v0-v31
#else
  static constexpr int kRegisters = 16;  // xmm0-15 (x86: the scalar path's float, every path's double)
#endif
  using Mask = std::uint32_t;  ///< bit 0: the lane
  Acc r;

  TT_ATTR static VecOneLane zero() { return {Acc(0)}; }
  TT_ATTR static VecOneLane set1(Acc x) { return {x}; }
  TT_ATTR static VecOneLane load(const Acc* p) { return {*p}; }
  TT_ATTR static VecOneLane load_n(const Acc* p, int n) { return {n > 0 ? *p : Acc(0)}; }
  /// Storage element -> Acc (half and bfloat16 through float, exactly).
  template <class T>
  TT_ATTR static Acc cvt(T x) {
    if constexpr (std::is_same_v<std::remove_const_t<T>, Acc>) return x;
    else return static_cast<Acc>(static_cast<float>(x));
  }
  template <class T>
  TT_ATTR static VecOneLane load_cvt(const T* p) {
    return {cvt(*p)};
  }
  template <class T>
  TT_ATTR static VecOneLane load_cvt_n(const T* p, int n) {
    return {n > 0 ? cvt(*p) : Acc(0)};
  }
  TT_ATTR void store(Acc* p) const { *p = r; }
  TT_ATTR void store_n(Acc* p, int n) const {
    if (n > 0) *p = r;
  }
  TT_ATTR friend VecOneLane operator+(VecOneLane a, VecOneLane b) { return {a.r + b.r}; }
  TT_ATTR friend VecOneLane operator-(VecOneLane a, VecOneLane b) { return {a.r - b.r}; }
  TT_ATTR friend VecOneLane operator*(VecOneLane a, VecOneLane b) { return {a.r * b.r}; }
  /// a * b + c, rounded once when kFusedFma, else twice (see the top of this file).
  TT_ATTR static VecOneLane fma(VecOneLane a, VecOneLane b, VecOneLane c) {
    if constexpr (!kFusedFma) return {a.r * b.r + c.r};
    else if constexpr (std::is_same_v<Acc, float>) return {__builtin_fmaf(a.r, b.r, c.r)};
    else return {__builtin_fma(a.r, b.r, c.r)};
  }
  TT_ATTR static VecOneLane max(VecOneLane a, VecOneLane b) { return {a.r > b.r ? a.r : b.r}; }
  TT_ATTR static VecOneLane min(VecOneLane a, VecOneLane b) { return {a.r < b.r ? a.r : b.r}; }
  TT_ATTR static VecOneLane exp(VecOneLane x) {
    if constexpr (std::is_same_v<Acc, float>) return {exp_poly<kFusedFma>(x.r)};
    else return {x.r == -std::numeric_limits<double>::infinity() || std::isnan(x.r) ? 0.0 : std::exp(x.r)};
  }
  TT_ATTR static Mask gt(VecOneLane a, VecOneLane b) { return a.r > b.r ? 1u : 0u; }
  TT_ATTR static Mask ne(VecOneLane a, VecOneLane b) { return a.r != b.r ? 1u : 0u; }
  /// Lanes that hold NaN or +-infinity.
  TT_ATTR static Mask nonfinite(VecOneLane a) { return std::isfinite(a.r) ? 0u : 1u; }
  TT_ATTR static VecOneLane select(Mask m, VecOneLane a, VecOneLane b) { return (m & 1u) ? a : b; }
  /// acc + a * b in the lanes of m, acc elsewhere (a zero weight never touches acc).
  TT_ATTR static VecOneLane fma_masked(VecOneLane a, VecOneLane b, VecOneLane acc, Mask m) {
    return (m & 1u) ? fma(a, b, acc) : acc;
  }
  TT_ATTR static std::uint64_t bits(Mask m) { return m & 1u; }
  TT_ATTR static Mask first_n(int n) { return n > 0 ? 1u : 0u; }
  TT_ATTR Acc reduce_sum() const { return r; }
  TT_ATTR Acc reduce_max() const { return r; }
  /// out lane i = sum of the lanes of acc[i] (W accumulators): the same tree for every i.
  TT_ATTR static VecOneLane reduce_many(const VecOneLane* acc) { return acc[0]; }
};
