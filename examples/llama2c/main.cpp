// toptheta-llama2c: a llama2.c-format LLaMA runner on toptheta attention.
//
//   toptheta-llama2c generate  --model M --tokenizer T [--prompt S] [--steps N] ... [attention]
//   toptheta-llama2c calibrate --model M (--tokens F | --sample-sequences N --seq-len L --seed S)
//                              --k K [--layer-k l:k,...] [--placement pre|post] [--sigma X]
//                              [--tac on|off] [--sample-fraction F] [--sdc-terms] --out FILE
//                              [--format native|reference]
//   toptheta-llama2c eval      --model M (--tokens F | --sample-sequences N --seq-len L --seed S)
//                              --attention dense|topk|toptheta [attention options] [--json]
//
// Run any subcommand with --help for every option.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "eval.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace {

using llama2c::AttentionSetup;
using llama2c::Model;
using llama2c::Sequence;
using toptheta::Index;
using toptheta::Status;

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label)
      : label_(std::move(label)),
        enabled_(isatty(STDERR_FILENO) == 1),
        start_(std::chrono::steady_clock::now()) {}
  ~ProgressBar() { finish(); }
  void operator()(std::size_t done, std::size_t total) {
    if (!enabled_ || total == 0) return;
    constexpr int kWidth = 30;
    const int filled = int(double(done) / double(total) * kWidth);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::fprintf(stderr, "\r%s [%s%s] %zu/%zu %.1fs", label_.c_str(),
                 std::string(std::size_t(filled), '#').c_str(),
                 std::string(std::size_t(kWidth - filled), ' ').c_str(), done, total, secs);
    std::fflush(stderr);
    drawn_ = true;
  }
  llama2c::ProgressFn fn() {
    return [this](std::size_t d, std::size_t t) { (*this)(d, t); };
  }
  void finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "toptheta-llama2c: %s\n", what.c_str());
  std::exit(1);
}
void check(const Status& s, const std::string& context = "") {
  if (!s.ok()) die(context.empty() ? s.to_string() : context + ": " + s.to_string());
}

/// Parses "l:k,l:k,..." into a per-layer budget vector (default k elsewhere).
std::vector<Index> parse_layer_k(const std::string& spec, int n_layers, Index default_k) {
  std::vector<Index> k(std::size_t(n_layers), default_k);
  std::vector<bool> seen(std::size_t(n_layers), false);
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto colon = item.find(':');
    char* e1 = nullptr;
    char* e2 = nullptr;
    if (colon == std::string::npos) die("--layer-k: '" + item + "' is not of the form layer:k");
    const std::string ls = item.substr(0, colon), ks = item.substr(colon + 1);
    const long l = std::strtol(ls.c_str(), &e1, 10);
    const long kv = std::strtol(ks.c_str(), &e2, 10);
    if (ls.empty() || ks.empty() || *e1 != '\0' || *e2 != '\0')
      die("--layer-k: '" + item + "' is not of the form layer:k");
    if (l < 0 || l >= n_layers)
      die("--layer-k: layer " + ls + " outside [0, " + std::to_string(n_layers) + ")");
    if (kv < 1) die("--layer-k: k must be >= 1 in '" + item + "'");
    if (seen[std::size_t(l)]) die("--layer-k: layer " + ls + " given twice");
    seen[std::size_t(l)] = true;
    k[std::size_t(l)] = Index(kv);
  }
  return k;
}

std::string join(const std::vector<Index>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

Model load_model(const std::string& path) {
  Model m;
  check(Model::load(path, &m));
  return m;
}

// ---------------------------------------------------------------------------------------------
// Sequence sources shared by calibrate and eval.
struct SequenceCli {
  std::string tokens_file;
  int sample_sequences = 0;
  int seq_len = 256;
  std::uint64_t seed = 1;
  std::string save_tokens;

  void add(CLI::App* app) {
    auto* tok = app->add_option("--tokens", tokens_file,
                                "Token file: one sequence per line, space-separated token ids, "
                                "BOS (1) first, at most the model's context")
                    ->check(CLI::ExistingFile);
    auto* ns = app->add_option("--sample-sequences", sample_sequences,
                               "Instead of --tokens: draw N sequences from the dense model at "
                               "temperature 1 (decode kernel)")
                   ->check(CLI::PositiveNumber);
    tok->excludes(ns);
    app->add_option("--seq-len", seq_len,
                    "Tokens per sampled sequence, BOS included (with --sample-sequences)")
        ->capture_default_str()
        ->check(CLI::Range(2, 1 << 20));
    app->add_option("--seed", seed,
                    "Seed of the sampled sequences; sequence i uses mix(seed, i), so the first n "
                    "sequences are the same for any N. Use different seeds for calibration and "
                    "evaluation sets (they must be disjoint)")
        ->capture_default_str();
    app->add_option("--save-tokens", save_tokens,
                    "Also write the sequences used to this token file (reusable with --tokens)");
  }

  std::vector<Sequence> load(const Model& model, int threads) const {
    std::vector<Sequence> seqs;
    const auto& c = model.config();
    if (!tokens_file.empty()) {
      check(llama2c::read_token_file(tokens_file, c.vocab_size, c.seq_len, &seqs));
    } else if (sample_sequences > 0) {
      ProgressBar bar("sampling   ");
      check(llama2c::sample_sequences(model, sample_sequences, seq_len, seed, 1.0f, &seqs,
                                      AttentionSetup::dense(threads), bar.fn()),
            "sampling");
    } else {
      die("give either --tokens FILE or --sample-sequences N (with --seq-len and --seed)");
    }
    if (!save_tokens.empty()) check(llama2c::write_token_file(save_tokens, seqs));
    return seqs;
  }
};

// ---------------------------------------------------------------------------------------------
// Attention options shared by generate and eval.
struct AttentionCli {
  std::string attention = "dense";
  Index k = 16;
  std::string layer_k;
  std::string thresholds;
  std::string sdc_file;
  std::string placement;
  std::string sdc = "none";
  double sdc_scale = 1.0;
  bool vmc = false;
  Index cap_k = 0;
  std::string empty_row = "keep-max";
  std::string lookup = "nearest";
  int threads = 1;
  CLI::Option* k_opt = nullptr;
  CLI::Option* layer_k_opt = nullptr;

  toptheta::ThresholdTable table;  // loaded thresholds (Top-θ)

  void add(CLI::App* app, bool attention_required) {
    auto* a = app->add_option("--attention", attention,
                              "Attention: dense (exact), topk (the k largest scores per row) or "
                              "toptheta (calibrated thresholds from --thresholds)")
                  ->check(CLI::IsMember({"dense", "topk", "toptheta"}));
    if (attention_required)
      a->required();
    else
      a->capture_default_str();
    k_opt = app->add_option("--k", k,
                            "Budget k per row for topk (rows with L <= k are dense). For "
                            "toptheta the budgets come from the threshold file; --k, if given, "
                            "must match them")
                ->capture_default_str()
                ->check(CLI::PositiveNumber);
    layer_k_opt = app->add_option("--layer-k", layer_k,
                                  "Per-layer budgets overriding --k, e.g. 0:64,1:64 (the paper "
                                  "keeps layers 0 and 1 at a larger k); for toptheta they must "
                                  "match the threshold file");
    app->add_option("--thresholds", thresholds,
                    "Threshold file for toptheta: native format, or the authors' th.txt "
                    "(detected from the content)")
        ->check(CLI::ExistingFile);
    app->add_option("--sdc-file", sdc_file,
                    "The authors' sdc.txt with calibrated SDC terms, merged into a th.txt given "
                    "by --thresholds (native files carry their SDC terms inline)")
        ->check(CLI::ExistingFile);
    app->add_option("--placement", placement,
                    "Compare with theta before (pre: raw scores) or after (post: softmax "
                    "probabilities) the softmax. Default: the threshold file's placement for "
                    "toptheta (the authors' th.txt records none: it loads as pre unless given "
                    "here), pre for topk")
        ->check(CLI::IsMember({"pre", "post"}));
    app->add_option("--sdc", sdc,
                    "Softmax-denominator compensation (pre-softmax only): none (renormalise over "
                    "the kept set), exact (add the dropped exp-sum), exp-threshold (dropped "
                    "count x exp(theta - max)), calibrated (C(l,h,L) from the threshold file)")
        ->capture_default_str()
        ->check(CLI::IsMember({"none", "exact", "exp-threshold", "calibrated"}));
    app->add_option("--sdc-scale", sdc_scale, "Scale of the SDC term: D + scale * D~")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app->add_flag("--vmc", vmc,
                  "V-mean compensation: add (1 - sum of kept weights) * mean(V[0:L]) to the "
                  "output of thresholded rows");
    app->add_option("--cap-k", cap_k,
                    "Keep at most N elements per thresholded row (the most recent); 0 = no cap")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app->add_option("--empty-row", empty_row,
                    "Thresholded row where nothing passes: keep-max (keep the row maximum) or "
                    "mean-v (output the mean of V, i.e. uniform attention)")
        ->capture_default_str()
        ->check(CLI::IsMember({"keep-max", "mean-v"}));
    app->add_option("--lookup", lookup,
                    "theta for a row length absent from the table: nearest calibrated length, "
                    "or linear interpolation")
        ->capture_default_str()
        ->check(CLI::IsMember({"nearest", "linear"}));
    app->add_option("--threads", threads, "Threads of the attention kernels (0 = OpenMP default)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
  }

  /// Builds the setup (loads the thresholds for toptheta). `table` must outlive the setup.
  AttentionSetup setup(const Model& model) {
    const auto& c = model.config();
    AttentionSetup s;
    toptheta::AttentionOptions& o = s.options;
    (void)toptheta::parse(attention, o.mode);
    (void)toptheta::parse(sdc, o.sdc);
    (void)toptheta::parse(empty_row, o.empty_row);
    (void)toptheta::parse(lookup, o.lookup);
    o.sdc_scale = sdc_scale;
    o.vmc = vmc ? toptheta::VmcMode::kOn : toptheta::VmcMode::kOff;
    o.cap_k = cap_k;
    o.threads = threads;
    o.k = k;
    if (!placement.empty()) (void)toptheta::parse(placement, o.placement);
    const bool sparse = o.mode != toptheta::AttentionMode::kDense;
    if (!sparse && (!thresholds.empty() || !layer_k.empty() || vmc || sdc != "none"))
      die("--attention dense takes no --thresholds, --layer-k, --sdc or --vmc");
    if (o.mode == toptheta::AttentionMode::kTopK) {
      if (!thresholds.empty()) die("--thresholds is for --attention toptheta");
      if (!layer_k.empty()) s.layer_k = parse_layer_k(layer_k, c.n_layers, k);
    }
    if (o.mode == toptheta::AttentionMode::kTopTheta) {
      if (thresholds.empty()) die("--attention toptheta needs --thresholds FILE");
      toptheta::LoadOptions lo;
      if (!placement.empty()) lo.expected_placement = o.placement;
      lo.expected_layers = c.n_layers;
      lo.expected_heads = c.n_heads;
      lo.sdc_path = sdc_file;
      check(toptheta::load_thresholds(thresholds, &table, lo));
      if (!sdc_file.empty() && !table.has_sdc())
        die("--sdc-file: '" + sdc_file + "' gave no SDC terms to '" + thresholds +
            "' (native threshold files carry them inline; --sdc-file is for the authors' th.txt)");
      if (placement.empty()) o.placement = table.placement();
      if (o.sdc == toptheta::SdcMode::kCalibrated &&
          o.placement == toptheta::Placement::kPreSoftmax && !table.has_sdc())
        die("--sdc calibrated: '" + thresholds +
            "' has no SDC terms (calibrate with --sdc-terms; "
            "for the authors' th.txt pass their sdc.txt with --sdc-file)");
      std::vector<Index> want(std::size_t(c.n_layers), k);
      if (!layer_k.empty()) want = parse_layer_k(layer_k, c.n_layers, k);
      if (k_opt->count() > 0 || !layer_k.empty())
        for (int l = 0; l < c.n_layers; ++l)
          if (table.k(l) != want[std::size_t(l)])
            die("--k/--layer-k ask for k = " + std::to_string(want[std::size_t(l)]) + " at layer " +
                std::to_string(l) + " but '" + thresholds +
                "' was calibrated with k = " + std::to_string(table.k(l)) +
                " (recalibrate, or drop --k/--layer-k to use the file's budgets)");
      o.thresholds = &table;
    }
    return s;
  }

  std::string describe(const Model& model, const AttentionSetup& s) const {
    const auto& o = s.options;
    std::string d = toptheta::to_string(o.mode);
    if (o.mode == toptheta::AttentionMode::kDense) return d;
    d += std::string(" ") + toptheta::to_string(o.placement) + "-softmax";
    if (o.placement == toptheta::Placement::kPreSoftmax)
      d += std::string(", sdc ") + toptheta::to_string(o.sdc);
    d += o.vmc == toptheta::VmcMode::kOn ? ", vmc" : ", no vmc";
    if (o.mode == toptheta::AttentionMode::kTopTheta)
      d += std::string(", empty rows ") + toptheta::to_string(o.empty_row);
    if (o.cap_k > 0) d += ", cap " + std::to_string(o.cap_k);
    d += ", k per layer " + join(llama2c::layer_budgets(model, s));
    return d;
  }
};

// ---------------------------------------------------------------------------------------------
int run_generate(const std::string& model_path, const std::string& tok_path,
                 const std::string& prompt, int steps, double temperature, std::uint64_t seed,
                 AttentionCli& ac) {
  Model model = load_model(model_path);
  llama2c::Tokenizer tok;
  check(llama2c::Tokenizer::load(tok_path, model.config().vocab_size, &tok));
  AttentionSetup setup = ac.setup(model);
  std::vector<toptheta::AttentionStats> stats(std::size_t(model.config().n_layers));
  setup.layer_stats = &stats;
  const Sequence in = tok.encode(prompt, /*bos=*/true);
  Sequence out;
  check(llama2c::generate(model, in, steps, float(temperature), seed, setup, &out));
  std::cout << tok.decode(out) << "\n\n";
  toptheta::AttentionStats total;
  for (const auto& s : stats) total.merge(s);
  std::printf("attention: %s\n", ac.describe(model, setup).c_str());
  std::printf("tokens: %zu (prompt %zu)\n", out.size(), in.size());
  std::printf("attention elements kept: %.2f%%\n", 100.0 * total.kept_fraction());
  std::printf("V rows read:             %.2f%%\n", 100.0 * total.vrows_fraction());
  return 0;
}

int run_calibrate(const std::string& model_path, const SequenceCli& sc, Index k,
                  const std::string& layer_k, const std::string& placement, double sigma,
                  const std::string& tac, double sample_fraction, bool sdc_terms,
                  const std::string& out, const std::string& format, int threads) {
  Model model = load_model(model_path);
  const auto& c = model.config();
  const std::vector<Sequence> seqs = sc.load(model, threads);
  toptheta::CalibrationOptions co;
  co.default_k = k;
  if (!layer_k.empty()) co.layer_k = parse_layer_k(layer_k, c.n_layers, k);
  (void)toptheta::parse(placement, co.placement);
  co.lambda = sigma;
  co.sample_fraction = sample_fraction;
  co.seed = sc.seed;
  co.tac = tac == "on" ? toptheta::TacMode::kOn : toptheta::TacMode::kOff;
  const std::string slash = model_path.substr(model_path.find_last_of('/') + 1);
  co.model_id = slash;
  AttentionSetup output;  // TAC output: plain top-k (no SDC, no VMC)
  output.options.threads = threads;
  toptheta::ThresholdTable table;
  {
    ProgressBar bar("calibrating");
    check(llama2c::calibrate(model, seqs, co, sdc_terms, output, &table, bar.fn()), "calibration");
  }
  toptheta::SaveOptions so;
  (void)toptheta::parse(format, so.format);
  check(toptheta::save_thresholds(out, table, so));
  std::size_t tokens = 0;
  for (const auto& s : seqs) tokens += s.size();
  std::printf(
      "calibrated %s-softmax thresholds on %zu sequences (%zu tokens), k per layer %s, "
      "sigma %g, TAC %s%s\n",
      placement.c_str(), seqs.size(), tokens,
      join(co.layer_k.empty() ? std::vector<Index>(std::size_t(c.n_layers), k) : co.layer_k)
          .c_str(),
      sigma, tac.c_str(), sdc_terms ? ", with SDC terms" : "");
  std::printf("%zu entries from %llu rows written to %s (%s format)\n", table.size(),
              static_cast<unsigned long long>(table.metadata().calibration_rows), out.c_str(),
              format.c_str());
  return 0;
}

nlohmann::json stats_json(const toptheta::AttentionStats& s) {
  return {{"attention_kept_fraction", s.kept_fraction()},
          {"vrows_read_fraction", s.vrows_fraction()},
          {"kept_per_row_mean", s.kept_per_thresholded_row()},
          {"empty_row_fraction", s.empty_row_fraction()}};
}

int run_eval(const std::string& model_path, const SequenceCli& sc, AttentionCli& ac, bool json) {
  Model model = load_model(model_path);
  const AttentionSetup setup = ac.setup(model);
  const std::vector<Sequence> seqs = sc.load(model, ac.threads);
  llama2c::EvalResult r;
  {
    ProgressBar bar("evaluating ");
    check(llama2c::evaluate(model, seqs, setup, &r, bar.fn()), "evaluation");
  }
  if (json) {
    nlohmann::json j;
    j["perplexity"] = r.perplexity;
    j["dense_perplexity"] = r.dense_perplexity;
    j["kl_mean"] = r.kl_mean;
    j["top1_agreement"] = r.top1_agreement;
    j["attention_kept_fraction"] = r.total.kept_fraction();
    j["vrows_read_fraction"] = r.total.vrows_fraction();
    j["kept_per_row_mean"] = r.total.kept_per_thresholded_row();
    j["empty_row_fraction"] = r.total.empty_row_fraction();
    nlohmann::json layers = nlohmann::json::array();
    for (std::size_t l = 0; l < r.per_layer.size(); ++l) {
      nlohmann::json e = stats_json(r.per_layer[l]);
      e["layer"] = l;
      e["k"] = r.layer_k[l];
      layers.push_back(e);
    }
    j["per_layer"] = layers;
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::size_t tokens = 0;
  for (const auto& s : seqs) tokens += s.size();
  std::printf("sequences:                %zu (%zu tokens, %llu predictions)\n", seqs.size(), tokens,
              static_cast<unsigned long long>(r.predictions));
  std::printf("attention:                %s\n", ac.describe(model, setup).c_str());
  std::printf("perplexity:               %.4f (dense %.4f, %+.3f%%)\n", r.perplexity,
              r.dense_perplexity, 100.0 * (r.perplexity / r.dense_perplexity - 1.0));
  std::printf("KL(dense || sparse):      %.6f nats per token\n", r.kl_mean);
  std::printf("top-1 agreement:          %.2f%%\n", 100.0 * r.top1_agreement);
  std::printf("attention elements kept:  %.2f%% of causal attention elements\n",
              100.0 * r.total.kept_fraction());
  std::printf("V rows read (decode):     %.2f%% (union over the query heads of a KV group)\n",
              100.0 * r.total.vrows_fraction());
  std::printf("kept per thresholded row: %.2f\n", r.total.kept_per_thresholded_row());
  std::printf("empty thresholded rows:   %.3f%%\n", 100.0 * r.total.empty_row_fraction());
  std::printf("per layer:\n  layer     k    kept%%  vrows%%  kept/row  empty%%\n");
  for (std::size_t l = 0; l < r.per_layer.size(); ++l) {
    const auto& s = r.per_layer[l];
    std::printf("  %5zu %5lld  %6.2f  %6.2f  %8.2f  %6.3f\n", l,
                static_cast<long long>(r.layer_k[l]), 100.0 * s.kept_fraction(),
                100.0 * s.vrows_fraction(), s.kept_per_thresholded_row(),
                100.0 * s.empty_row_fraction());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "toptheta-llama2c: a llama2.c-format LLaMA model (e.g. karpathy's stories260K.bin) running "
      "on toptheta attention. Generation uses the decode kernel, teacher-forced evaluation and "
      "calibration the prefill kernel."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print the help of every subcommand");

  // generate
  std::string model_path, tok_path, prompt;
  int steps = 256;
  double temperature = 1.0;
  std::uint64_t gen_seed = 42;
  AttentionCli gen_attn;
  auto* gen = app.add_subcommand(
      "generate",
      "Generate text from a prompt, then print the fraction of attention elements kept and of V "
      "rows read");
  gen->add_option("--model", model_path, "llama2.c checkpoint (.bin)")
      ->required()
      ->check(CLI::ExistingFile);
  gen->add_option("--tokenizer", tok_path, "llama2.c tokenizer (.bin), e.g. tok512.bin")
      ->required()
      ->check(CLI::ExistingFile);
  gen->add_option("--prompt", prompt, "Text to continue (BOS is prepended); empty: start from BOS");
  gen->add_option("--steps", steps,
                  "Maximum number of new tokens (generation also stops at a story boundary, "
                  "BOS/EOS, or at the model's context)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  gen->add_option("--seed", gen_seed, "Seed of the sampler")->capture_default_str();
  gen_attn.add(gen, /*attention_required=*/false);

  // calibrate
  SequenceCli cal_seq;
  Index cal_k = 16;
  std::string cal_layer_k, cal_placement = "post", tac = "on", out_path, format = "native";
  double sigma = 0.1, sample_fraction = 1.0;
  bool sdc_terms = false;
  int cal_threads = 1;
  auto* cal = app.add_subcommand(
      "calibrate",
      "Calibrate Top-theta thresholds theta(layer, head, L) on sequences and save them");
  cal->add_option("--model", model_path, "llama2.c checkpoint (.bin)")
      ->required()
      ->check(CLI::ExistingFile);
  cal_seq.add(cal);
  cal->add_option("--k", cal_k, "Budget k: theta is set so that about k elements of a row pass")
      ->required()
      ->check(CLI::PositiveNumber);
  cal->add_option("--layer-k", cal_layer_k,
                  "Per-layer budgets overriding --k, e.g. 0:64,1:64 (paper style: layers 0 and 1 "
                  "keep a larger k)");
  cal->add_option("--placement", cal_placement,
                  "Calibrate thresholds on raw scores (pre) or softmax probabilities (post; the "
                  "recommended variant with --vmc at evaluation, see docs/results.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"pre", "post"}));
  cal->add_option("--sigma", sigma,
                  "lambda of theta = mean(tau) + lambda * std(tau) over the calibration rows")
      ->capture_default_str();
  cal->add_option("--tac", tac,
                  "Top-k at calibration: thresholded rows output exact top-k while calibrating, "
                  "so later layers are calibrated on sparsified activations (paper setting)")
      ->capture_default_str()
      ->check(CLI::IsMember({"on", "off"}));
  cal->add_option("--sample-fraction", sample_fraction,
                  "Fraction of eligible rows used, sampled with --seed (1 = all)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cal->add_flag("--sdc-terms", sdc_terms,
                "Second pass: also calibrate the SDC terms C(l, h, L) (for --sdc calibrated)");
  cal->add_option("--out", out_path, "Output threshold file (written atomically)")->required();
  cal->add_option("--format", format,
                  "native (versioned, with metadata) or reference (the authors' th.txt, plus "
                  "sdc.txt in the same directory with --sdc-terms)")
      ->capture_default_str()
      ->check(CLI::IsMember({"native", "reference"}));
  cal->add_option("--threads", cal_threads, "Threads of the attention kernels (0 = OpenMP default)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);

  // eval
  SequenceCli ev_seq;
  AttentionCli ev_attn;
  bool json = false;
  auto* ev = app.add_subcommand(
      "eval",
      "Teacher-forced evaluation (prefill kernel) of dense vs sparse attention on the same "
      "sequences: perplexity, dense perplexity, KL(dense || sparse), top-1 agreement, kept "
      "fractions, per-layer breakdown");
  ev->add_option("--model", model_path, "llama2.c checkpoint (.bin)")
      ->required()
      ->check(CLI::ExistingFile);
  ev_seq.add(ev);
  ev_attn.add(ev, /*attention_required=*/true);
  ev->add_flag("--json", json,
               "Print one JSON object on stdout with the keys perplexity, dense_perplexity, "
               "kl_mean, top1_agreement, attention_kept_fraction, vrows_read_fraction, "
               "kept_per_row_mean, empty_row_fraction, per_layer");

  CLI11_PARSE(app, argc, argv);

  if (gen->parsed())
    return run_generate(model_path, tok_path, prompt, steps, temperature, gen_seed, gen_attn);
  if (cal->parsed()) {
    if (!(sample_fraction > 0.0)) die("--sample-fraction must be in (0, 1]");
    return run_calibrate(model_path, cal_seq, cal_k, cal_layer_k, cal_placement, sigma, tac,
                         sample_fraction, sdc_terms, out_path, format, cal_threads);
  }
  if (ev->parsed()) return run_eval(model_path, ev_seq, ev_attn, json);
  return 1;
}
