// 02_calibrate_and_decode: calibrate Top-θ thresholds on synthetic attention with realistic
// structure, then compare every Top-θ variant with dense and top-k decoding.
//
// Structure of the synthetic heads: each query points at a few strong keys, every query sees an
// attention sink (token 0), recent tokens get a mild boost (recency), and everything is noisy.
// Thresholds are calibrated on one set of queries and evaluated on fresh ones.
#include <toptheta/toptheta.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

using namespace toptheta;

namespace {

constexpr Index kL = 4096, kHq = 8, kHkv = 2, kD = 64, kK = 64;

struct Synthetic {
  std::vector<float> k, v;  // (L, Hkv, d) interleaved
  std::mt19937 rng{7};

  Synthetic() : k(kL * kHkv * kD), v(kL * kHkv * kD) {
    std::normal_distribution<float> n(0.f, 1.f);
    for (float& x : k) x = n(rng);
    for (float& x : v) x = n(rng);
    for (Index g = 0; g < kHkv; ++g)  // the sink: a long key every query aligns with
      for (Index i = 0; i < kD; ++i) k[g * kD + i] = (i % 2 ? 3.f : -3.f);
  }
  const float* key(Index j, Index g) const { return &k[(j * kHkv + g) * kD]; }

  // A query for head h: a few strong keys, the sink, the last tokens, noise.
  void query(Index h, float* q) {
    const Index g = h / (kHq / kHkv);
    std::normal_distribution<float> n(0.f, 1.f);
    std::uniform_int_distribution<Index> pos(1, kL - 1);
    for (Index i = 0; i < kD; ++i) q[i] = 0.6f * n(rng);
    for (int s = 0; s < 6; ++s) {  // strong keys, strength varies per key
      const float a = 0.25f + 0.1f * float(s) + 0.05f * float(h % 3);
      const float* kr = key(pos(rng), g);
      for (Index i = 0; i < kD; ++i) q[i] += a * kr[i];
    }
    for (Index i = 0; i < kD; ++i) q[i] += 0.16f * key(0, g)[i];  // sink
    for (Index j = kL - 16; j < kL; ++j)                          // recency
      for (Index i = 0; i < kD; ++i) q[i] += 0.02f * key(j, g)[i];
  }
};

struct Variant {
  std::string name;
  AttentionMode mode;
  Placement placement;
  SdcMode sdc;
  VmcMode vmc;
};

}  // namespace

int main() {
  Synthetic syn;
  std::vector<float> q(kHq * kD), out(kHq * kD), dense_out(kHq * kD);
  AttentionArgs<float> args;
  args.q = HeadsView<const float>::token_major(q.data(), 1, kHq, kD);
  args.k = HeadsView<const float>::token_major(syn.k.data(), kL, kHkv, kD);
  args.v = HeadsView<const float>::token_major(syn.v.data(), kL, kHkv, kD);
  args.out = HeadsView<float>::token_major(out.data(), 1, kHq, kD);
  // [readme:vsum]
  // The running V sum for VMC: an engine adds each token's V rows after the step that appended
  // them (O(d) per token); here the cache is complete, so it sums the rows before the last one.
  RunningVSum<float> v_sum(kHkv, kD);
  (void)v_sum.add(args.v.slice_tokens(0, kL - 1));
  args.v_sum = v_sum.data();  // the V rows before the new token; the kernel adds the new one
  // [/readme:vsum]

  // Calibration queries, kept to replay them for the SDC pass.
  const int calib_queries = 256, eval_queries = 64;
  std::vector<std::vector<float>> calib(calib_queries, std::vector<float>(kHq * kD));
  for (auto& cq : calib)
    for (Index h = 0; h < kHq; ++h) syn.query(h, cq.data() + h * kD);

  auto calibrate = [&](Placement placement, const ThresholdTable* sdc_from,
                       ThresholdTable* table) -> Status {
    // [readme:calibrate]
    CalibrationOptions co;
    co.num_layers = 1;
    co.num_heads = kHq;
    co.default_k = kK;
    co.placement = placement;
    co.lambda = 0.1;
    co.tac = TacMode::kOff;  // one layer: nothing downstream to sparsify
    co.sdc_thresholds = sdc_from;
    Calibrator cal(co);
    AttentionOptions o;
    o.mode = AttentionMode::kCalibrate;
    o.calibrator = &cal;
    for (auto& cq : calib) {
      q = cq;
      TOPTHETA_RETURN_IF_ERROR(decode(args, o));
    }
    // theta(l, h, L) = mean + lambda * std of the (k+1)-th largest; an error names any
    // (layer, head) that saw no row, and any rejected row
    return cal.finalize(table);
    // [/readme:calibrate]
  };
  ThresholdTable pre_theta, pre_table, post_table;
  Status calibrated = calibrate(Placement::kPreSoftmax, nullptr, &pre_theta);
  if (calibrated.ok())  // the same queries again, with the SDC terms of pre_theta's thresholds
    calibrated = calibrate(Placement::kPreSoftmax, &pre_theta, &pre_table);
  if (calibrated.ok()) calibrated = calibrate(Placement::kPostSoftmax, nullptr, &post_table);
  if (!calibrated.ok()) {
    std::fprintf(stderr, "FAILED: calibration: %s\n", calibrated.to_string().c_str());
    return 1;
  }

  const std::vector<Variant> variants = {
      {"top-k (pre)", AttentionMode::kTopK, Placement::kPreSoftmax, SdcMode::kNone, VmcMode::kOff},
      {"top-k + exact SDC + VMC", AttentionMode::kTopK, Placement::kPreSoftmax, SdcMode::kExact,
       VmcMode::kOn},
      {"Top-θ pre", AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kNone,
       VmcMode::kOff},
      {"Top-θ pre + exact SDC", AttentionMode::kTopTheta, Placement::kPreSoftmax, SdcMode::kExact,
       VmcMode::kOff},
      {"Top-θ pre + exact SDC + VMC", AttentionMode::kTopTheta, Placement::kPreSoftmax,
       SdcMode::kExact, VmcMode::kOn},
      {"Top-θ pre + exp-thr SDC + VMC", AttentionMode::kTopTheta, Placement::kPreSoftmax,
       SdcMode::kExpThreshold, VmcMode::kOn},
      {"Top-θ pre + calib. SDC + VMC", AttentionMode::kTopTheta, Placement::kPreSoftmax,
       SdcMode::kCalibrated, VmcMode::kOn},
      {"Top-θ post", AttentionMode::kTopTheta, Placement::kPostSoftmax, SdcMode::kNone,
       VmcMode::kOff},
      {"Top-θ post + VMC", AttentionMode::kTopTheta, Placement::kPostSoftmax, SdcMode::kNone,
       VmcMode::kOn},
  };

  // Fresh evaluation queries.
  std::vector<std::vector<float>> eval(eval_queries, std::vector<float>(kHq * kD));
  for (auto& eq : eval)
    for (Index h = 0; h < kHq; ++h) syn.query(h, eq.data() + h * kD);

  std::printf("Synthetic decode: L=%td, Hq=%td, Hkv=%td, d=%td, k=%td; %d calibration and %d "
              "held-out queries\n\n",
              kL, kHq, kHkv, kD, kK, calib_queries, eval_queries);
  std::printf("%-32s %12s %12s %14s %12s\n", "variant", "kept frac", "V rows read",
              "kept/row", "rel. error");
  for (const Variant& var : variants) {
    // [readme:toptheta]
    AttentionOptions o;
    o.mode = var.mode;
    o.k = kK;
    o.placement = var.placement;
    o.sdc = var.sdc;
    o.vmc = var.vmc;
    o.thresholds = var.placement == Placement::kPreSoftmax ? &pre_table : &post_table;
    AttentionStats stats;
    o.stats = &stats;  // stats.kept_fraction(), stats.vrows_fraction()
    // [/readme:toptheta]
    AttentionOptions dense_opt;
    std::vector<std::byte> ws(std::max(workspace_size(args, o), workspace_size(args, dense_opt)));
    const Workspace w{ws.data(), ws.size()};
    double err2 = 0, ref2 = 0;
    for (auto& eq : eval) {
      q = eq;
      Status st = decode(args, dense_opt, w);
      dense_out = out;
      if (st.ok()) st = decode(args, o, w);
      if (!st.ok()) {
        std::fprintf(stderr, "%s: %s\n", var.name.c_str(), st.to_string().c_str());
        return 1;
      }
      for (Index i = 0; i < kHq * kD; ++i) {
        err2 += double(out[i] - dense_out[i]) * double(out[i] - dense_out[i]);
        ref2 += double(dense_out[i]) * double(dense_out[i]);
      }
    }
    std::printf("%-32s %12.4f %12.4f %14.1f %12.4f\n", var.name.c_str(), stats.kept_fraction(),
                stats.vrows_fraction(), stats.kept_per_thresholded_row(), std::sqrt(err2 / ref2));
  }
  std::printf("\nkept frac: kept attention elements / L per head; V rows read: union over the %td "
              "query heads of a KV group / L;\nrel. error: ||o - o_dense|| / ||o_dense|| over all "
              "held-out queries.\n",
              kHq / kHkv);
  return 0;
}
