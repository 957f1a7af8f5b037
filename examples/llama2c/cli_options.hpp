#pragma once
/// \file cli_options.hpp
/// The options of every `toptheta-llama2c` subcommand, one typed struct per subcommand, and
/// their registration with CLI11. Every option's value is checked while parsing (integers and
/// finite reals in their ranges, lists, choices); check_attention_flags() checks the attention
/// flags that only fail together, before anything is loaded; checks that need the threshold file
/// (its placement, SDC terms) or the model (layer indices, table shapes) happen in commands.hpp.

#include <CLI/CLI.hpp>

#include <toptheta/toptheta.hpp>

#include "../../tools/cli_checks.hpp"
#include "kv_cache_type.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace llama2c {

using toptheta::Index;

/// `--layer-k l:k,l:k,...`: per-layer budgets. The syntax is checked while parsing the command
/// line; the layer indices against the model later.
struct LayerBudgets {
  std::vector<std::pair<long, long>> items;  ///< (layer, k), in the order given

  bool empty() const { return items.empty(); }

  /// Parses `spec`; returns an error message, empty on success.
  static std::string parse(const std::string& spec, LayerBudgets* out) {
    LayerBudgets b;
    std::size_t start = 0;
    while (start <= spec.size()) {
      const std::size_t comma = spec.find(',', start);
      const std::string item =
          spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const auto colon = item.find(':');
      if (colon == std::string::npos) return "'" + item + "' is not of the form layer:k";
      const std::string ls = item.substr(0, colon), ks = item.substr(colon + 1);
      char* e1 = nullptr;
      char* e2 = nullptr;
      // strtol saturates beyond long's range (ERANGE): such a number is refused, not clamped.
      errno = 0;
      const long l = std::strtol(ls.c_str(), &e1, 10);
      const bool l_huge = errno == ERANGE && l > 0;
      errno = 0;
      const long k = std::strtol(ks.c_str(), &e2, 10);
      const bool k_huge = errno == ERANGE && k > 0;
      if (ls.empty() || ks.empty() || *e1 != '\0' || *e2 != '\0')
        return "'" + item + "' is not of the form layer:k";
      if (l_huge) return "layer " + ls + " is too large";
      if (l < 0) return "layer " + ls + " is negative";
      if (k_huge) return "k " + ks + " is too large";
      if (k < 1) return "k must be >= 1 in '" + item + "'";
      for (const auto& p : b.items)
        if (p.first == l) return "layer " + ls + " given twice";
      b.items.emplace_back(l, k);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    *out = std::move(b);
    return {};
  }

  /// Budgets of `n_layers` layers (`default_k` where none is given); fails (message in
  /// `*error`) when a layer index is outside the model.
  bool resolve(int n_layers, Index default_k, std::vector<Index>* out, std::string* error) const {
    std::vector<Index> k(std::size_t(n_layers), default_k);
    for (const auto& p : items) {
      if (p.first >= n_layers) {
        *error = "--layer-k: layer " + std::to_string(p.first) + " outside [0, " +
                 std::to_string(n_layers) + ") (the model has " + std::to_string(n_layers) +
                 " layers)";
        return false;
      }
      k[std::size_t(p.first)] = Index(p.second);
    }
    *out = std::move(k);
    return true;
  }
};

/// Where the sequences of calibrate and eval come from.
struct SequenceOptions {
  std::string tokens_file;  ///< --tokens
  int sample_sequences = 0;  ///< --sample-sequences (0: not given)
  int seq_len = 256;
  std::uint64_t seed = 1;
  std::string save_tokens;  ///< --save-tokens (empty: none)
};

/// Attention flags of generate and eval.
struct AttentionFlags {
  toptheta::AttentionMode mode = toptheta::AttentionMode::kDense;
  Index k = 16;
  bool k_given = false;  ///< --k was on the command line
  LayerBudgets layer_k;
  std::string thresholds;
  std::string sdc_file;
  std::optional<toptheta::Placement> placement;  ///< unset: the table's (toptheta) or pre
  toptheta::SdcMode sdc = toptheta::SdcMode::kNone;
  double sdc_scale = 1.0;  ///< the kernels use it as a float: checked in float's range
  bool sdc_scale_given = false;  ///< --sdc-scale was on the command line
  bool vmc = false;
  Index cap_k = 0;
  toptheta::EmptyRowPolicy empty_row = toptheta::EmptyRowPolicy::kKeepMax;
  toptheta::LookupPolicy lookup = toptheta::LookupPolicy::kNearest;
  int threads = 1;
  KvCacheType kv_cache = KvCacheType::kF32;  ///< --kv-cache
};

struct GenerateOptions {
  std::string model;
  std::string tokenizer;
  std::string prompt;
  std::string prompt_tokens;  ///< --prompt-tokens: a token file whose first line is the prompt
  int prompt_length = 0;      ///< --prompt-length: keep the first N prompt tokens (0: all)
  bool compare_dense = false;  ///< --compare-dense: run dense first, then the attention asked
  bool no_stop = false;        ///< --no-stop: do not stop at BOS/EOS
  int steps = 256;
  double temperature = 1.0;  ///< generate() takes a float: checked in float's range
  std::uint64_t seed = 42;
  AttentionFlags attention;
};

struct CalibrateOptions {
  std::string model;
  SequenceOptions sequences;
  Index k = 16;               ///< the smallest of ks
  std::vector<Index> ks;      ///< --k K or --k K1,K2,...: one table per k
  std::string form;              ///< --form compact|per-length; empty: compact, or per-length for --format reference
  std::string per_length_out;    ///< --per-length-out: also the per-length tables ({k} in the name)
  int buckets_per_octave = 2;
  std::uint64_t min_bucket_samples = 32;
  std::string report;            ///< --report: JSON of the bucket sample counts
  LayerBudgets layer_k;
  toptheta::Placement placement = toptheta::Placement::kPostSoftmax;
  double sigma = 0.1;
  bool tac = true;
  double sample_fraction = 1.0;
  bool sdc_terms = false;
  std::string out;
  toptheta::ThresholdFormat format = toptheta::ThresholdFormat::kNative;
  int threads = 1;
  KvCacheType kv_cache = KvCacheType::kF32;  ///< --kv-cache
};

struct EvalOptions {
  std::string model;
  SequenceOptions sequences;
  AttentionFlags attention;
  bool json = false;
};

struct EvalGridOptions {
  std::string model;
  SequenceOptions sequences;
  std::string grid;              ///< lines "name attention-flags..."
  std::vector<Index> length_edges;  ///< --length-edges: kept per row by row-length bucket
  int threads = 1;
};

namespace detail {
/// Parses "16" or "16,32,64" (each an integer >= 1, distinct) into `*out`; `what` names one item
/// in the messages ("budget k", "length edge"). Returns an error message, empty on success.
inline std::string parse_positive_list(const std::string& spec, const std::string& what,
                                       std::vector<Index>* out) {
  std::vector<Index> v;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = spec.find(',', start);
    const std::string item = spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* e = nullptr;
    errno = 0;
    const long long x = std::strtoll(item.c_str(), &e, 10);
    if (item.empty() || e != item.c_str() + item.size() || errno == ERANGE || x < 1 ||
        x > std::numeric_limits<Index>::max())
      return "'" + item + "' is not a " + what + " (an integer >= 1)";
    for (Index y : v)
      if (y == x) return what + " " + item + " given twice";
    v.push_back(Index(x));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  *out = std::move(v);
  return {};
}
}  // namespace detail

/// `--k` of calibrate: "16" or "16,32,64" (each >= 1, distinct); returns an error message,
/// empty on success.
inline std::string parse_k_list(const std::string& spec, std::vector<Index>* out) {
  return detail::parse_positive_list(spec, "budget k", out);
}

/// `--length-edges` of eval-grid: "64,128,256" (each >= 1, strictly ascending); returns an error
/// message, empty on success.
inline std::string parse_length_edges(const std::string& spec, std::vector<Index>* out) {
  std::vector<Index> v;
  std::string e = detail::parse_positive_list(spec, "length edge", &v);
  if (e.empty() && !std::is_sorted(v.begin(), v.end())) e = "length edges must ascend";
  if (e.empty()) *out = std::move(v);
  return e;
}

/// Why an SDC option would go unused: SDC compensates the softmax denominator of pre-softmax
/// rows, and post-softmax rows have none (the kernels ignore the option there). `sdc` names the
/// option ("--sdc exact compensates"), `post` what makes the rows post-softmax, `fix` the way out.
inline std::string sdc_needs_pre_softmax(const std::string& sdc, const std::string& post,
                                         const std::string& fix) {
  return sdc + " the softmax denominator of pre-softmax rows; " + post + " (" + fix + ")";
}

/// The attention flags that the kernels reject together or would ignore, checked without the
/// model or a threshold file (commands.hpp runs it before loading anything, and again on each
/// eval-grid line; load_table() checks --sdc against the placement of a threshold file):
/// returns an error message naming the flags, empty when they go together.
inline std::string check_attention_flags(const AttentionFlags& f) {
  using toptheta::AttentionMode;
  if (!(f.sdc_scale >= 0 && f.sdc_scale <= double(std::numeric_limits<float>::max())))
    return "--sdc-scale must be a finite float >= 0";  // the kernels use it as a float
  if (f.k < 1) return "--k must be >= 1";
  if (f.cap_k < 0) return "--cap-k must be >= 0";
  if (f.threads < 0) return "--threads must be >= 0";
  switch (f.mode) {
    case AttentionMode::kDense:
      if (!f.thresholds.empty() || !f.sdc_file.empty() || !f.layer_k.empty() || f.vmc ||
          f.sdc != toptheta::SdcMode::kNone)
        return "--attention dense takes no --thresholds, --sdc-file, --layer-k, --sdc or --vmc";
      // Flags dense attention has no use for: refused, never silently ignored.
      if (f.k_given || f.cap_k != 0 || f.placement.has_value() ||
          f.empty_row != toptheta::EmptyRowPolicy::kKeepMax ||
          f.lookup != toptheta::LookupPolicy::kNearest)
        return "--attention dense takes no --k, --cap-k, --placement, --empty-row or --lookup";
      break;
    case AttentionMode::kTopK:
      if (!f.thresholds.empty() || !f.sdc_file.empty())
        return "--thresholds and --sdc-file are for --attention toptheta";
      if (f.empty_row != toptheta::EmptyRowPolicy::kKeepMax ||
          f.lookup != toptheta::LookupPolicy::kNearest)
        return "--empty-row and --lookup are for --attention toptheta (top-k rows are never empty "
               "and look up no threshold)";
      break;
    case AttentionMode::kTopTheta:
      if (f.thresholds.empty()) return "--attention toptheta needs --thresholds FILE";
      break;
    case AttentionMode::kCalibrate:
      return "--attention takes dense, topk or toptheta";
  }
  if (f.placement == toptheta::Placement::kPostSoftmax) {
    if (f.sdc != toptheta::SdcMode::kNone)
      return sdc_needs_pre_softmax(
          std::string("--sdc ") + toptheta::to_string(f.sdc) + " compensates",
          "--placement post has none", "drop --sdc, or use --placement pre");
    if (!f.sdc_file.empty())
      return sdc_needs_pre_softmax("--sdc-file: SDC terms compensate", "--placement post has none",
                                   "drop --sdc-file, or use --placement pre");
  }
  if (f.sdc_scale_given && f.sdc == toptheta::SdcMode::kNone)
    return "--sdc-scale scales the SDC term, and there is none without --sdc (add --sdc exact, "
           "exp-threshold or calibrated, or drop --sdc-scale)";
  // The kernel: calibrated SDC takes its terms from a threshold file; top-k has none.
  if (f.mode == AttentionMode::kTopK && f.sdc == toptheta::SdcMode::kCalibrated)
    return "--sdc calibrated needs the SDC terms of a threshold file (--attention toptheta); "
           "--attention topk has none (use --sdc exact or exp-threshold)";
  return {};
}

namespace cli {

using toptheta::cli::finite_in;   // tools/cli_checks.hpp
using toptheta::cli::integer_in;  // decimal integers in a range

/// An option holding one of `names`, stored into `*target` with toptheta::parse.
template <class E>
CLI::Option* add_choice(CLI::App* app, const std::string& flag, E* target,
                        std::vector<std::string> names, const std::string& help) {
  return app
      ->add_option_function<std::string>(
          flag, [target](const std::string& s) { (void)toptheta::parse(s, *target); }, help)
      ->check(CLI::IsMember(std::move(names)))
      ->default_str(toptheta::to_string(*target));
}

/// `--kv-cache f32|f16|bf16|q8_0`.
inline CLI::Option* add_kv_cache(CLI::App* app, KvCacheType* target, const std::string& help) {
  return app
      ->add_option_function<std::string>(
          "--kv-cache", [target](const std::string& s) { (void)parse_kv_cache_type(s, target); },
          help)
      ->check(CLI::IsMember({"f32", "f16", "bf16", "q8_0"}))
      ->default_str(to_string(*target));
}

inline CLI::Option* add_layer_k(CLI::App* app, LayerBudgets* target, const std::string& help) {
  return app
      ->add_option_function<std::string>(
          "--layer-k", [target](const std::string& s) { (void)LayerBudgets::parse(s, target); },
          help)
      ->check(CLI::Validator(
          [](std::string& s) {
            LayerBudgets b;
            return LayerBudgets::parse(s, &b);
          },
          "l:k,l:k,..."));
}

inline void add_model(CLI::App* app, std::string* model) {
  app->add_option("--model", *model,
                  "llama2.c checkpoint (.bin): version 0 (legacy), 1 (float32) or 2 (int8 Q8_0) "
                  "of llama2.c export.py")
      ->required()
      ->check(CLI::ExistingFile);
}

inline void add_sequences(CLI::App* app, SequenceOptions* o) {
  auto* tok = app->add_option("--tokens", o->tokens_file,
                              "Token file: one sequence per line, space-separated token ids, "
                              "BOS (1) first, at most the model's context")
                  ->check(CLI::ExistingFile);
  auto* ns = app->add_option("--sample-sequences", o->sample_sequences,
                             "Instead of --tokens: draw N sequences from the dense model at "
                             "temperature 1 (decode kernel)")
                 ->transform(integer_in<int>(1));
  tok->excludes(ns);
  app->add_option("--seq-len", o->seq_len,
                  "Tokens per sampled sequence, BOS included (with --sample-sequences)")
      ->capture_default_str()
      ->transform(integer_in<int>(2, 1 << 20));
  app->add_option("--seed", o->seed,
                  "Seed of the sampled sequences; sequence i uses mix(seed, i), so the first n "
                  "sequences are the same for any N. Use different seeds for calibration and "
                  "evaluation sets (they must be disjoint)")
      ->capture_default_str()
      ->transform(integer_in<std::uint64_t>(0));
  app->add_option("--save-tokens", o->save_tokens,
                  "Also write the sequences used to this token file (reusable with --tokens)");
}

inline void add_attention(CLI::App* app, AttentionFlags* o, bool attention_required) {
  auto* a = add_choice(app, "--attention", &o->mode, {"dense", "topk", "toptheta"},
                       "Attention: dense (exact), topk (the k largest scores per row) or "
                       "toptheta (calibrated thresholds from --thresholds)");
  if (attention_required) a->required();
  app->add_option_function<Index>(
         "--k",
         [o](const Index& k) {
           o->k = k;
           o->k_given = true;
         },
         "Budget k per row for topk (rows with L <= k are dense). For toptheta the budgets come "
         "from the threshold file; --k, if given, must match them")
      ->default_str(std::to_string(o->k))
      ->transform(integer_in<Index>(1));
  add_layer_k(app, &o->layer_k,
              "Per-layer budgets overriding --k, e.g. 0:64,1:64 (the paper keeps layers 0 and 1 "
              "at a larger k); for toptheta they must match the threshold file");
  app->add_option("--thresholds", o->thresholds,
                  "Threshold file for toptheta: native format, or the authors' th.txt (detected "
                  "from the content)")
      ->check(CLI::ExistingFile);
  app->add_option("--sdc-file", o->sdc_file,
                  "The authors' sdc.txt with calibrated SDC terms, merged into a th.txt given by "
                  "--thresholds (native files carry their SDC terms inline); pre-softmax only")
      ->check(CLI::ExistingFile);
  app->add_option_function<std::string>(
         "--placement",
         [o](const std::string& s) {
           toptheta::Placement p{};
           (void)toptheta::parse(s, p);
           o->placement = p;
         },
         "Compare with theta before (pre: raw scores) or after (post: softmax probabilities) "
         "the softmax. Default: the threshold file's placement for toptheta (the authors' "
         "th.txt records none: it loads as pre unless given here), pre for topk")
      ->check(CLI::IsMember({"pre", "post"}));
  add_choice(app, "--sdc", &o->sdc, {"none", "exact", "exp-threshold", "calibrated"},
             "Softmax-denominator compensation, pre-softmax only (refused with --placement post "
             "or a post-softmax threshold file): none (renormalise over the kept set), exact "
             "(add the dropped exp-sum), exp-threshold (dropped count x exp(theta - max)), "
             "calibrated (C(l,h,L) from the threshold file)");
  app->add_option_function<double>(
         "--sdc-scale",
         [o](const double& x) {
           o->sdc_scale = x;
           o->sdc_scale_given = true;
         },
         "Scale of the SDC term: D + scale * D~ (a finite float >= 0; needs --sdc)")
      ->default_str("1")
      ->check(finite_in<float>(0.0));
  app->add_flag("--vmc", o->vmc,
                "V-mean compensation: add (1 - sum of kept weights) * mean(V[0:L]) to the output "
                "of thresholded rows");
  app->add_option("--cap-k", o->cap_k,
                  "Keep at most N elements per thresholded row (the most recent); 0 = no cap")
      ->capture_default_str()
      ->transform(integer_in<Index>(0));
  add_choice(app, "--empty-row", &o->empty_row, {"keep-max", "mean-v"},
             "Thresholded row where nothing passes: keep-max (keep the row maximum) or mean-v "
             "(output the mean of V, i.e. uniform attention)");
  add_choice(app, "--lookup", &o->lookup, {"nearest", "linear"},
             "theta for a row length absent from the table: nearest calibrated length, or "
             "linear interpolation");
  app->add_option("--threads", o->threads, "Threads of the attention kernels (0 = OpenMP default)")
      ->capture_default_str()
      ->transform(integer_in<int>(0));
  add_kv_cache(app, &o->kv_cache,
               "Storage of the K and V caches: f32, f16, bf16 or q8_0 (llama.cpp's blocks of 32 "
               "int8 values and an fp16 scale; needs a head dim that is a multiple of 32). "
               "Queries stay f32; the kernels read the cache in place. eval's dense reference "
               "pass (and --sample-sequences) always uses f32");
}

/// `generate`: text from a prompt.
inline CLI::App* add_generate(CLI::App* app, GenerateOptions* o) {
  auto* gen = app->add_subcommand(
      "generate",
      "Generate text from a prompt, then print the fraction of attention elements kept and of V "
      "rows read");
  add_model(gen, &o->model);
  gen->add_option("--tokenizer", o->tokenizer, "llama2.c tokenizer (.bin), e.g. tok512.bin")
      ->required()
      ->check(CLI::ExistingFile);
  auto* pr = gen->add_option("--prompt", o->prompt,
                             "Text to continue (BOS is prepended); empty: start from BOS");
  auto* pt = gen->add_option("--prompt-tokens", o->prompt_tokens,
                             "Instead of --prompt: the first line of this token file (ids, BOS "
                             "first) is the prompt")
                 ->check(CLI::ExistingFile);
  pr->excludes(pt);
  gen->add_option("--prompt-length", o->prompt_length,
                  "Keep only the first N tokens of the prompt (0: all); a --prompt-tokens line "
                  "longer than the context is cut before its length is checked")
      ->transform(integer_in<int>(0));
  gen->add_flag("--compare-dense", o->compare_dense,
                "Generate twice from the same prompt and seed: dense attention first, then the "
                "attention asked; prints the decode speed and attention share of both");
  gen->add_flag("--no-stop", o->no_stop, "Do not stop at BOS/EOS (only --steps or the context)");
  gen->add_option("--steps", o->steps,
                  "Maximum number of new tokens (generation also stops at a story boundary, "
                  "BOS/EOS, or at the model's context)")
      ->capture_default_str()
      ->transform(integer_in<int>(0));
  gen->add_option("--temperature", o->temperature,
                  "Sampling temperature, a finite float >= 0; 0 = greedy")
      ->capture_default_str()
      ->check(finite_in<float>(0.0));
  gen->add_option("--seed", o->seed, "Seed of the sampler")
      ->capture_default_str()
      ->transform(integer_in<std::uint64_t>(0));
  add_attention(gen, &o->attention, /*attention_required=*/false);
  return gen;
}

/// `calibrate`: thresholds from sequences.
inline CLI::App* add_calibrate(CLI::App* app, CalibrateOptions* o) {
  auto* cal = app->add_subcommand(
      "calibrate",
      "Calibrate Top-theta thresholds theta(layer, head, L) on sequences and save them");
  add_model(cal, &o->model);
  add_sequences(cal, &o->sequences);
  cal->add_option_function<std::string>(
         "--k",
         [o](const std::string& s) {
           (void)parse_k_list(s, &o->ks);
           o->k = *std::min_element(o->ks.begin(), o->ks.end());
         },
         "Budget k: theta is set so that about k elements of a row pass. Several, e.g. "
         "16,32,64,128,256: one table per k from one pass (compact form; TAC outputs top-k at the "
         "smallest), the k is chosen at load time")
      ->required()
      ->check(CLI::Validator(
          [](std::string& s) {
            std::vector<Index> v;
            return parse_k_list(s, &v);
          },
          "K[,K...]"));
  cal->add_option("--form", o->form,
                  "compact: theta(L) as a curve over log-spaced length buckets (native format "
                  "version 2, several k per file); per-length: one theta per calibrated length "
                  "(version 1, one k). Default: compact, per-length with --format reference")
      ->check(CLI::IsMember({"compact", "per-length"}));
  cal->add_option("--per-length-out", o->per_length_out,
                  "Also write the per-length tables of the same pass; with several k the name "
                  "must contain {k}, replaced by each k");
  cal->add_option("--buckets-per-octave", o->buckets_per_octave,
                  "Compact form: length buckets per octave")
      ->capture_default_str()
      ->transform(integer_in<int>(1, 16));
  cal->add_option("--min-bucket-samples", o->min_bucket_samples,
                  "Compact form: buckets with fewer rows get no knot of their own (warned); a head "
                  "none of whose buckets reaches it gets a knot in every non-empty bucket (warned)")
      ->capture_default_str()
      ->transform(integer_in<std::uint64_t>(1));
  cal->add_option("--report", o->report,
                  "Write the per-(k, layer, head, bucket) sample counts as JSON to this file");
  add_layer_k(cal, &o->layer_k,
              "Per-layer budgets overriding --k, e.g. 0:64,1:64 (paper style: layers 0 and 1 "
              "keep a larger k)");
  add_choice(cal, "--placement", &o->placement, {"pre", "post"},
             "Calibrate thresholds on raw scores (pre) or softmax probabilities (post; the "
             "recommended variant with --vmc at evaluation, see docs/results.md)");
  cal->add_option("--sigma", o->sigma,
                  "lambda of theta = mean(tau) + lambda * std(tau) over the calibration rows (a "
                  "finite number >= 0; refused after calibrating when a threshold does not fit a "
                  "float)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cal->add_option_function<std::string>(
         "--tac", [o](const std::string& s) { o->tac = s == "on"; },
         "Top-k at calibration: thresholded rows output exact top-k while calibrating, so later "
         "layers are calibrated on sparsified activations (paper setting)")
      ->default_str("on")
      ->check(CLI::IsMember({"on", "off"}));
  cal->add_option("--sample-fraction", o->sample_fraction,
                  "Fraction of eligible rows used, sampled with --seed, in (0, 1] (1 = all)")
      ->capture_default_str()
      ->check(finite_in(0.0, 1.0, /*open_lo=*/true));
  cal->add_flag("--sdc-terms", o->sdc_terms,
                "Second pass: also calibrate the SDC terms C(l, h, L) (for --sdc calibrated; "
                "needs --placement pre)");
  cal->add_option("--out", o->out, "Output threshold file (written atomically)")->required();
  add_choice(cal, "--format", &o->format, {"native", "reference"},
             "native (versioned, with metadata) or reference (the authors' th.txt, plus sdc.txt "
             "in the same directory with --sdc-terms)");
  cal->add_option("--threads", o->threads, "Threads of the attention kernels (0 = OpenMP default)")
      ->capture_default_str()
      ->transform(integer_in<int>(0));
  add_kv_cache(cal, &o->kv_cache,
               "Storage of the K and V caches during calibration: f32, f16, bf16 or q8_0 "
               "(head dim a multiple of 32); --sample-sequences always uses f32");
  return cal;
}

/// `eval`: teacher-forced dense vs sparse.
inline CLI::App* add_eval(CLI::App* app, EvalOptions* o) {
  auto* ev = app->add_subcommand(
      "eval",
      "Teacher-forced evaluation (prefill kernel) of dense vs sparse attention on the same "
      "sequences: perplexity, dense perplexity, KL(dense || sparse), top-1 agreement, kept "
      "fractions, per-layer breakdown");
  add_model(ev, &o->model);
  add_sequences(ev, &o->sequences);
  add_attention(ev, &o->attention, /*attention_required=*/true);
  ev->add_flag("--json", o->json,
               "Print one JSON object on stdout with the keys perplexity, dense_perplexity, "
               "kl_mean, top1_agreement, attention_kept_fraction, vrows_read_fraction, "
               "kept_per_row_mean, empty_row_fraction, extrapolated_row_fraction, per_layer");
  return ev;
}

/// `eval-grid`: several attention setups against one dense pass.
inline CLI::App* add_eval_grid(CLI::App* app, EvalGridOptions* o) {
  auto* ev = app->add_subcommand(
      "eval-grid",
      "Teacher-forced evaluation of several attention setups on the same sequences, sharing one "
      "dense pass per sequence; prints one JSON object per setup (the keys of eval --json, plus "
      "name and, with --length-edges, by_length)");
  add_model(ev, &o->model);
  add_sequences(ev, &o->sequences);
  ev->add_option("--grid", o->grid,
                 "File of setups, one per line: a name, then eval's attention flags (e.g. "
                 "'post64 --attention toptheta --thresholds t.toptheta --k 64 --vmc'); '#' lines "
                 "are comments")
      ->required()
      ->check(CLI::ExistingFile);
  ev->add_option_function<std::string>(
        "--length-edges",
        [o](const std::string& s) { (void)parse_length_edges(s, &o->length_edges); },
        "Ascending row lengths e1,e2,...: also report kept per thresholded row for the rows with "
        "length in (e_i-1, e_i]")
      ->check(CLI::Validator(
          [](std::string& s) {
            std::vector<Index> v;
            return parse_length_edges(s, &v);
          },
          "E1,E2,..."));
  ev->add_option("--threads", o->threads, "Threads of the attention kernels (0 = OpenMP default)")
      ->capture_default_str()
      ->transform(integer_in<int>(0));
  return ev;
}

}  // namespace cli
}  // namespace llama2c
