#pragma once
/// \file commands.hpp
/// The `toptheta-llama2c` subcommands: each takes its options struct (cli_options.hpp) whole and
/// returns a CommandStatus; nothing here exits the process.
///
/// Exit statuses (CommandStatus::exit_code):
///   0  success;
///   1  runtime failure: an output file or stdout cannot be written, the forward pass or an
///      attention kernel fails on inputs that passed validation, the machine runs out of memory;
///   2  usage or input error: a bad option (CLI11 parse errors too), an unreadable, malformed or
///      mismatching model, tokenizer, token file or threshold file, a threshold table whose shape
///      or budgets do not fit the model, sequences or a prompt that do not fit the model.
/// Each command validates every input before it computes anything, so the phase an error comes
/// from decides its status; the option checks that need no file (check_options, and
/// TOPTHETA_ISA: check_isa) come first, then the threshold files (load_table), before the model
/// is loaded. One check follows the calibration: thresholds that --sigma puts beyond the float
/// range.

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "calibration.hpp"
#include "cli_options.hpp"
#include "evaluation.hpp"
#include "generation.hpp"
#include "model.hpp"
#include "sampling.hpp"
#include "token_file.hpp"
#include "tokenizer.hpp"

namespace llama2c {

/// The outcome of a command or of one of its steps.
class CommandStatus {
 public:
  enum Exit : int { kOk = 0, kRuntime = 1, kInput = 2 };

  CommandStatus() = default;
  static CommandStatus input(std::string message) { return {kInput, std::move(message)}; }
  static CommandStatus runtime(std::string message) { return {kRuntime, std::move(message)}; }
  /// `s` as an input error (ok stays ok); `context` prefixes the message.
  static CommandStatus input(const toptheta::Status& s, const std::string& context = "") {
    return from(kInput, s, context);
  }
  static CommandStatus runtime(const toptheta::Status& s, const std::string& context = "") {
    return from(kRuntime, s, context);
  }

  bool ok() const { return exit_ == kOk; }
  int exit_code() const { return int(exit_); }
  const std::string& message() const { return message_; }
  /// The same status with `context` prefixing the message (ok stays ok).
  CommandStatus within(const std::string& context) const {
    return ok() ? *this : CommandStatus(exit_, context + ": " + message_);
  }

 private:
  CommandStatus(Exit e, std::string m) : exit_(e), message_(std::move(m)) {}
  static CommandStatus from(Exit e, const toptheta::Status& s, const std::string& context) {
    if (s.ok()) return {};
    return {e, context.empty() ? s.to_string() : context + ": " + s.to_string()};
  }
  Exit exit_ = kOk;
  std::string message_;
};

#define LLAMA2C_TRY(expr)                            \
  do {                                               \
    ::llama2c::CommandStatus llama2c_status_ = (expr); \
    if (!llama2c_status_.ok()) return llama2c_status_; \
  } while (0)

namespace cmd {

/// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
 public:
  explicit ProgressBar(std::string label)
      : label_(std::move(label)),
        enabled_(isatty(STDERR_FILENO) == 1),
        start_(std::chrono::steady_clock::now()) {}
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
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
  ProgressFn fn() {
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

inline std::string join(const std::vector<Index>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

/// Everything printed goes through stdout; a write error there (full disk, closed pipe) is a
/// runtime failure.
inline CommandStatus flush_stdout() {
  std::cout.flush();
  const bool bad_stream = !std::cout;
  if (std::fflush(stdout) != 0 || std::ferror(stdout) || bad_stream)
    return CommandStatus::runtime("cannot write to standard output");
  return {};
}

/// The options of the sequences that need no file: --tokens or --sample-sequences.
inline CommandStatus check_options(const SequenceOptions& o) {
  if (o.tokens_file.empty() && o.sample_sequences < 1)
    return CommandStatus::input(
        "give either --tokens FILE or --sample-sequences N (with --seq-len and --seed)");
  return {};
}

/// The attention flags that only fail together (cli_options.hpp check_attention_flags()).
inline CommandStatus check_options(const AttentionFlags& f) {
  const std::string e = check_attention_flags(f);
  return e.empty() ? CommandStatus() : CommandStatus::input(e);
}

/// The kernels' SIMD path: the environment variable TOPTHETA_ISA as the library resolves it
/// (toptheta::resolve_isa(), which reads it once per process). main() checks it at start-up, so
/// a bad value is a usage error before anything loads, with the library's message (it was a
/// kernel failure, exit 1, after the model and eval's dense pass).
inline CommandStatus check_isa() {
  toptheta::Isa isa = toptheta::Isa::kAuto;
  return CommandStatus::input(toptheta::resolve_isa(toptheta::Isa::kAuto, &isa), "TOPTHETA_ISA");
}

inline CommandStatus load_model(const std::string& path, Model* m) {
  return CommandStatus::input(Model::load(path, m));
}

/// The sequences of calibrate / eval: read (input errors) or sampled (the sample size is an
/// input; the sampling itself runs the model); saved with --save-tokens (runtime errors).
inline CommandStatus load_sequences(const SequenceOptions& o, const Model& model, int threads,
                                    std::vector<Sequence>* seqs) {
  const Config& c = model.config();
  if (!o.tokens_file.empty()) {
    LLAMA2C_TRY(CommandStatus::input(
        read_token_file(o.tokens_file, c.vocab_size, c.seq_len, seqs)));
  } else if (o.sample_sequences > 0) {
    if (o.seq_len < 2 || o.seq_len > c.seq_len)
      return CommandStatus::input("--seq-len " + std::to_string(o.seq_len) + " outside [2, " +
                                  std::to_string(c.seq_len) + "] (the model's context)");
    ProgressBar bar("sampling   ");
    LLAMA2C_TRY(CommandStatus::runtime(
        sample_sequences(model, o.sample_sequences, o.seq_len, o.seed, 1.0f, seqs,
                         AttentionSetup::dense(threads), bar.fn()),
        "sampling"));
  } else {
    return CommandStatus::input(
        "give either --tokens FILE or --sample-sequences N (with --seq-len and --seed)");
  }
  if (!o.save_tokens.empty())
    LLAMA2C_TRY(CommandStatus::runtime(write_token_file(o.save_tokens, *seqs), "--save-tokens"));
  return {};
}

/// --kv-cache against the model: q8_0 needs a head dim that is a multiple of 32.
inline CommandStatus check_kv_cache(KvCacheType t, const Model& model) {
  const int hd = model.config().head_dim(), b = kv_cache_block(t);
  if (hd % b != 0)
    return CommandStatus::input(std::string("--kv-cache ") + to_string(t) + " stores blocks of " +
                                std::to_string(b) + " values, so it needs a head dim that is a "
                                "multiple of " + std::to_string(b) + "; this model's head dim is " +
                                std::to_string(hd) + " (use f32, f16 or bf16)");
  return {};
}

/// The threshold table of --attention toptheta (nothing to do for the other modes), read before
/// the model: its placement decides whether --sdc applies (post-softmax rows have no softmax
/// denominator), and --sdc calibrated needs its SDC terms. Its shape is checked against the
/// model by make_attention(). Every error is an input error.
inline CommandStatus load_table(const AttentionFlags& f, toptheta::ThresholdTable* table) {
  if (f.mode != toptheta::AttentionMode::kTopTheta) return {};
  toptheta::LoadOptions lo;
  if (f.placement) lo.expected_placement = *f.placement;
  lo.sdc_path = f.sdc_file;
  // --k picks the table of a file holding several (native version 2); --layer-k alone
  // picks the table whose smallest budget is the smallest of the resolved budgets.
  if (f.k_given) lo.k = f.k;
  LLAMA2C_TRY(CommandStatus::input(toptheta::load_thresholds(f.thresholds, table, lo)));
  if (!f.sdc_file.empty() && !table->has_sdc())
    return CommandStatus::input(
        "--sdc-file: '" + f.sdc_file + "' gave no SDC terms to '" + f.thresholds +
        "' (native threshold files carry them inline; --sdc-file is for the authors' th.txt)");
  if (f.sdc != toptheta::SdcMode::kNone && table->placement() == toptheta::Placement::kPostSoftmax)
    return CommandStatus::input(sdc_needs_pre_softmax(
        std::string("--sdc ") + toptheta::to_string(f.sdc) + " compensates",
        "--thresholds '" + f.thresholds + "' holds post-softmax thresholds, which have none",
        "drop --sdc, or use a table calibrated with --placement pre"));
  if (f.sdc == toptheta::SdcMode::kCalibrated && !table->has_sdc())
    return CommandStatus::input("--sdc calibrated: '" + f.thresholds +
                                "' has no SDC terms (calibrate with --sdc-terms; "
                                "for the authors' th.txt pass their sdc.txt with --sdc-file)");
  return {};
}

/// The attention setup of generate / eval, with the threshold table that load_table() read
/// (which must outlive the setup), checked against the model. Every error is an input error.
inline CommandStatus make_attention(const AttentionFlags& f, const Model& model,
                                    const toptheta::ThresholdTable* table, AttentionSetup* out) {
  const Config& c = model.config();
  AttentionSetup s;
  toptheta::AttentionOptions& o = s.options;
  o.mode = f.mode;
  o.sdc = f.sdc;
  o.empty_row = f.empty_row;
  o.lookup = f.lookup;
  o.sdc_scale = f.sdc_scale;
  o.vmc = f.vmc ? toptheta::VmcMode::kOn : toptheta::VmcMode::kOff;
  o.cap_k = f.cap_k;
  o.threads = f.threads;
  o.k = f.k;
  if (f.placement) o.placement = *f.placement;
  LLAMA2C_TRY(cmd::check_options(f));
  LLAMA2C_TRY(cmd::check_kv_cache(f.kv_cache, model));
  s.kv_cache = f.kv_cache;
  std::string err;
  if (o.mode == toptheta::AttentionMode::kTopK) {
    if (!f.layer_k.empty() && !f.layer_k.resolve(c.n_layers, f.k, &s.layer_k, &err))
      return CommandStatus::input(err);
  }
  if (o.mode == toptheta::AttentionMode::kTopTheta) {
    LLAMA2C_TRY(CommandStatus::input(table->check_shape(c.n_layers, c.n_heads),
                                     "--thresholds '" + f.thresholds + "'"));
    if (!f.placement) o.placement = table->placement();
    std::vector<Index> want(std::size_t(c.n_layers), f.k);
    if (!f.layer_k.empty() && !f.layer_k.resolve(c.n_layers, f.k, &want, &err))
      return CommandStatus::input(err);
    if (f.k_given || !f.layer_k.empty())
      for (int l = 0; l < c.n_layers; ++l)
        if (table->k(l) != want[std::size_t(l)])
          return CommandStatus::input(
              "--k/--layer-k ask for k = " + std::to_string(want[std::size_t(l)]) +
              " at layer " + std::to_string(l) + " but '" + f.thresholds +
              "' was calibrated with k = " + std::to_string(table->k(l)) +
              " (recalibrate, or drop --k/--layer-k to use the file's budgets)");
    o.thresholds = table;
  }
  *out = std::move(s);
  return {};
}

inline std::string describe(const Model& model, const AttentionSetup& s) {
  const auto& o = s.options;
  std::string d = toptheta::to_string(o.mode);
  const std::string kv = s.kv_cache == KvCacheType::kF32
                             ? std::string()
                             : std::string(", ") + to_string(s.kv_cache) + " KV cache";
  if (o.mode == toptheta::AttentionMode::kDense) return d + kv;
  d += std::string(" ") + toptheta::to_string(o.placement) + "-softmax";
  if (o.placement == toptheta::Placement::kPreSoftmax)
    d += std::string(", sdc ") + toptheta::to_string(o.sdc);
  d += o.vmc == toptheta::VmcMode::kOn ? ", vmc" : ", no vmc";
  if (o.mode == toptheta::AttentionMode::kTopTheta)
    d += std::string(", empty rows ") + toptheta::to_string(o.empty_row);
  if (o.cap_k > 0) d += ", cap " + std::to_string(o.cap_k);
  d += ", k per layer " + join(layer_budgets(model, s));
  return d + kv;
}

inline nlohmann::json stats_json(const toptheta::AttentionStats& s) {
  return {{"attention_kept_fraction", s.kept_fraction()},
          {"vrows_read_fraction", s.vrows_fraction()},
          {"kept_per_row_mean", s.kept_per_thresholded_row()},
          {"empty_row_fraction", s.empty_row_fraction()},
          {"extrapolated_row_fraction", s.extrapolated_fraction()}};
}

}  // namespace cmd

// ---------------------------------------------------------------------------------------------

/// `generate`: encodes the prompt, generates, prints the text, the attention statistics and the
/// decode speed (with --compare-dense: dense first, same prompt and seed).
inline CommandStatus run_generate(const GenerateOptions& o) {
  LLAMA2C_TRY(cmd::check_options(o.attention));
  toptheta::ThresholdTable table;
  LLAMA2C_TRY(cmd::load_table(o.attention, &table));
  Model model;
  LLAMA2C_TRY(cmd::load_model(o.model, &model));
  const Config& c = model.config();
  Tokenizer tok;
  LLAMA2C_TRY(CommandStatus::input(Tokenizer::load(o.tokenizer, c.vocab_size, &tok)));
  AttentionSetup setup;
  LLAMA2C_TRY(cmd::make_attention(o.attention, model, &table, &setup));
  Sequence in;
  if (!o.prompt_tokens.empty()) {
    std::vector<Sequence> seqs;
    // With --prompt-length a line of any length reads: it is cut before the context check.
    const int max_len = o.prompt_length > 0 ? std::numeric_limits<int>::max() : c.seq_len;
    LLAMA2C_TRY(
        CommandStatus::input(read_token_file(o.prompt_tokens, c.vocab_size, max_len, &seqs)));
    if (seqs.empty() || seqs.front().empty())
      return CommandStatus::input("--prompt-tokens: no sequence in '" + o.prompt_tokens + "'");
    in = seqs.front();
  } else {
    in = tok.encode(o.prompt, /*bos=*/true);
  }
  if (o.prompt_length > 0 && Index(in.size()) > o.prompt_length) in.resize(std::size_t(o.prompt_length));
  if (Index(in.size()) > c.seq_len)
    return CommandStatus::input(
        std::string(o.prompt_tokens.empty() ? "--prompt: " : "--prompt-tokens: ") +
        std::to_string(in.size()) + " tokens (BOS included" +
        (o.prompt_length > 0 ? "; --prompt-length " + std::to_string(o.prompt_length) : "") +
        ") exceed the model's context of " + std::to_string(c.seq_len));
  struct Run {
    std::string label;
    AttentionSetup setup;
  };
  std::vector<Run> runs;
  if (o.compare_dense) {  // same KV cache storage: the comparison is of the attention alone
    AttentionSetup dense = AttentionSetup::dense(o.attention.threads);
    dense.kv_cache = setup.kv_cache;
    runs.push_back({"dense", dense});
  }
  runs.push_back({toptheta::to_string(setup.options.mode), setup});
  for (Run& run : runs) {
    std::vector<toptheta::AttentionStats> stats(std::size_t(c.n_layers));
    run.setup.layer_stats = &stats;
    Sequence out;
    GenerationTiming timing;
    LLAMA2C_TRY(CommandStatus::runtime(generate(model, in, o.steps, float(o.temperature), o.seed,
                                                run.setup, &out, !o.no_stop, &timing),
                                       "generation"));
    if (runs.size() > 1) std::cout << "=== " << run.label << " ===\n";
    std::cout << tok.decode(Sequence(out.begin() + std::ptrdiff_t(in.size() > 1 && !o.prompt_tokens.empty() ? in.size() : 0), out.end())) << "\n\n";
    toptheta::AttentionStats total;
    for (const auto& s : stats) total.merge(s);
    std::cout.flush();
    std::printf("attention: %s\n", cmd::describe(model, run.setup).c_str());
    std::printf("tokens: %zu (prompt %zu)\n", out.size(), in.size());
    std::printf("attention elements kept: %.2f%%\n", 100.0 * total.kept_fraction());
    std::printf("V rows read:             %.2f%%\n", 100.0 * total.vrows_fraction());
    if (total.extrapolated_rows > 0)
      std::printf("rows past calibration:   %.2f%% of thresholded rows (extrapolated theta)\n",
                  100.0 * total.extrapolated_fraction());
    if (timing.decode_tokens > 0)
      std::printf("decode: %d tokens in %.3f s = %.2f tokens/s; attention %.1f%% of the step time "
                  "(%.2f ms of %.2f ms per token); prefill %.3f s\n",
                  timing.decode_tokens, timing.decode_seconds,
                  double(timing.decode_tokens) / timing.decode_seconds,
                  100.0 * timing.decode_attention_seconds / timing.decode_seconds,
                  1e3 * timing.decode_attention_seconds / timing.decode_tokens,
                  1e3 * timing.decode_seconds / timing.decode_tokens, timing.prefill_seconds);
  }
  return cmd::flush_stdout();
}

namespace cmd {
/// The thresholds of a calibration against --sigma: theta = mean + sigma * std must fit a float,
/// which the kernels compare in (the compact fit clamps it to FLT_MAX; a per-length table keeps
/// the double, which the kernels round down to FLT_MAX: either way no row would keep anything).
/// An input error naming the first threshold that does not fit.
inline CommandStatus check_thresholds_fit_float(const toptheta::ThresholdSet& set, double sigma) {
  constexpr double kMax = double(std::numeric_limits<float>::max());
  for (const toptheta::ThresholdTable& t : set.tables())
    for (Index l = 0; l < t.num_layers(); ++l)
      for (Index h = 0; h < t.num_heads(); ++h) {
        Index at = 0;  // the row length of the first threshold beyond the float range
        if (t.is_compact()) {
          for (const auto& knot : t.curve(l, h).knots)
            if (!(knot.value < kMax) && at == 0) at = knot.length;
        } else {
          for (const auto& e : t.entries(l, h))
            if (!(e.theta < kMax) && at == 0) at = e.length;
        }
        if (at == 0) continue;
        char text[32];
        std::snprintf(text, sizeof text, "%g", sigma);
        return CommandStatus::input(
            "--sigma " + std::string(text) + ": the threshold of layer " + std::to_string(l) +
            " head " + std::to_string(h) + " at length " + std::to_string(at) +
            " (k = " + std::to_string(t.k(l)) +
            "), mean + sigma * std of its rows, does not fit a float "
            "(the kernels compare in float; no row would keep anything): use a smaller --sigma");
      }
  return {};
}

inline std::string replace_k(std::string pattern, Index k) {
  const std::string ks = std::to_string(k);
  for (std::size_t p = pattern.find("{k}"); p != std::string::npos; p = pattern.find("{k}", p))
    pattern.replace(p, 3, ks), p += ks.size();  // every {k}, as --per-length-out says
  return pattern;
}
}  // namespace cmd

/// `calibrate`: thresholds (and with --sdc-terms the SDC terms) for one or several k, through
/// toptheta::calibrate_two_pass(); compact tables (version 2, all k in one file) or per-length
/// tables (version 1, one k); bucket warnings on stderr.
inline CommandStatus run_calibrate(const CalibrateOptions& o) {
  LLAMA2C_TRY(cmd::check_options(o.sequences));
  toptheta::CalibrationOptions co;
  const std::vector<Index> ks = o.ks.empty() ? std::vector<Index>{o.k} : o.ks;
  co.default_k = ks.front();
  std::string err;
  const bool per_length_form =
      o.form == "per-length" || (o.form.empty() && o.format == toptheta::ThresholdFormat::kReference);
  if (ks.size() > 1) {
    if (!o.layer_k.empty()) return CommandStatus::input("--layer-k needs a single --k");
    if (per_length_form || o.format == toptheta::ThresholdFormat::kReference)
      return CommandStatus::input(
          "several --k need --form compact in the native format (one file holds every k); "
          "per-length tables hold one k: use --per-length-out with {k} for them");
    if (!o.per_length_out.empty() && o.per_length_out.find("{k}") == std::string::npos)
      return CommandStatus::input("--per-length-out: with several --k the name needs {k}");
    co.k_values = ks;
  }
  if (!per_length_form && o.format == toptheta::ThresholdFormat::kReference)
    return CommandStatus::input("--format reference holds per-length tables: add --form per-length");
  if (o.sdc_terms && o.placement == toptheta::Placement::kPostSoftmax)
    return CommandStatus::input(
        sdc_needs_pre_softmax("--sdc-terms: SDC terms compensate", "--placement post has none",
                              "drop --sdc-terms, or calibrate with --placement pre"));
  Model model;
  LLAMA2C_TRY(cmd::load_model(o.model, &model));
  const Config& c = model.config();
  if (!o.layer_k.empty() && !o.layer_k.resolve(c.n_layers, o.k, &co.layer_k, &err))
    return CommandStatus::input(err);
  co.placement = o.placement;
  co.lambda = o.sigma;
  co.sample_fraction = o.sample_fraction;
  co.seed = o.sequences.seed;
  co.tac = o.tac ? toptheta::TacMode::kOn : toptheta::TacMode::kOff;
  co.model_id = o.model.substr(o.model.find_last_of('/') + 1);
  co.num_layers = c.n_layers;
  co.num_heads = c.n_heads;
  co.per_length = per_length_form || !o.per_length_out.empty();
  co.compact.buckets_per_octave = o.buckets_per_octave;
  co.compact.min_bucket_samples = o.min_bucket_samples;
  LLAMA2C_TRY(CommandStatus::input(toptheta::Calibrator(co).validate(), "calibration options"));
  LLAMA2C_TRY(cmd::check_kv_cache(o.kv_cache, model));
  std::vector<Sequence> seqs;
  LLAMA2C_TRY(cmd::load_sequences(o.sequences, model, o.threads, &seqs));
  std::size_t longest = 0, tokens = 0;
  for (const auto& s : seqs) {
    longest = std::max(longest, s.size());
    tokens += s.size();
  }
  const std::vector<Index> layer_ks =
      co.layer_k.empty() ? std::vector<Index>(std::size_t(c.n_layers), o.k) : co.layer_k;
  const Index min_k = *std::min_element(layer_ks.begin(), layer_ks.end());
  const Index max_k = *std::max_element(ks.begin(), ks.end());
  if (Index(longest) <= std::max(min_k, max_k))
    return CommandStatus::input("the longest sequence has " + std::to_string(longest) +
                                " tokens, not more than k = " + std::to_string(std::max(min_k, max_k)) +
                                ": calibration needs rows longer than k (longer sequences or a "
                                "smaller k)");
  AttentionSetup output;  // TAC output: plain top-k (no SDC, no VMC)
  output.options.threads = o.threads;
  output.kv_cache = o.kv_cache;
  toptheta::CalibrationResult result;
  {
    cmd::ProgressBar bar("calibrating");
    const toptheta::Status s = calibrate_all(model, seqs, co, o.sdc_terms, output, &result, bar.fn());
    // kFailedPrecondition: the inputs (sequences, k, --sample-fraction) gave no row to calibrate.
    if (s.code() == toptheta::StatusCode::kFailedPrecondition)
      return CommandStatus::input(s, "calibration");
    LLAMA2C_TRY(CommandStatus::runtime(s, "calibration"));
  }
  LLAMA2C_TRY(cmd::check_thresholds_fit_float(result.per_length, o.sigma));
  LLAMA2C_TRY(cmd::check_thresholds_fit_float(result.compact, o.sigma));
  const std::vector<std::string> warnings = result.report.warnings();
  for (const std::string& w : warnings) std::fprintf(stderr, "warning: sparse length bucket: %s\n", w.c_str());
  std::size_t entries = 0;
  if (per_length_form) {
    const toptheta::ThresholdTable& t = result.per_length.tables().front();
    toptheta::SaveOptions so;
    so.format = o.format;
    LLAMA2C_TRY(CommandStatus::runtime(toptheta::save_thresholds(o.out, t, so), "--out"));
    entries = t.size();
  } else {
    LLAMA2C_TRY(CommandStatus::runtime(toptheta::save_threshold_set(o.out, result.compact), "--out"));
    for (const auto& t : result.compact.tables()) entries += t.size();
  }
  if (!o.per_length_out.empty() && !per_length_form)
    for (const auto& t : result.per_length.tables())
      LLAMA2C_TRY(CommandStatus::runtime(
          toptheta::save_thresholds(cmd::replace_k(o.per_length_out, t.nominal_k()), t),
          "--per-length-out"));
  if (!o.report.empty()) {
    nlohmann::json j;
    const auto& r = result.report;
    j["buckets_per_octave"] = r.buckets_per_octave;
    j["min_bucket_samples"] = r.min_bucket_samples;
    j["layers"] = r.num_layers;
    j["heads"] = r.num_heads;
    j["ks"] = r.ks;
    j["counts"] = r.counts;
    j["warnings"] = warnings;
    nlohmann::json sum = nlohmann::json::array();
    for (std::size_t t = 0; t < r.ks.size(); ++t)
      for (const auto& b : r.summary(t))
        sum.push_back({{"k", r.ks[t]}, {"length_lo", b.length_lo}, {"length_hi", b.length_hi},
                       {"min_samples", b.min_samples}, {"max_samples", b.max_samples}});
    j["buckets"] = sum;
    LLAMA2C_TRY(
        CommandStatus::runtime(toptheta::write_file_atomic(o.report, j.dump() + "\n"), "--report"));
  }
  std::printf(
      "calibrated %s-softmax thresholds on %zu sequences (%zu tokens), k %s, sigma %g, TAC %s%s%s\n",
      toptheta::to_string(o.placement), seqs.size(), tokens,
      ks.size() > 1 ? cmd::join(ks).c_str() : ("per layer " + cmd::join(layer_ks)).c_str(), o.sigma,
      o.tac ? "on" : "off", o.sdc_terms ? ", with SDC terms" : "",
      o.kv_cache == KvCacheType::kF32 ? "" : (std::string(", ") + to_string(o.kv_cache) + " KV cache").c_str());
  std::printf("%zu %s written to %s (%s format, %s)%s\n", entries,
              per_length_form ? "entries" : "knots", o.out.c_str(), toptheta::to_string(o.format),
              per_length_form ? "per-length" : "compact",
              warnings.empty() ? "" : "; see the warnings about sparse length buckets");
  return cmd::flush_stdout();
}

/// `eval`: teacher-forced dense vs sparse, printed as text or JSON.
inline CommandStatus run_eval(const EvalOptions& o) {
  LLAMA2C_TRY(cmd::check_options(o.sequences));
  LLAMA2C_TRY(cmd::check_options(o.attention));
  toptheta::ThresholdTable table;
  LLAMA2C_TRY(cmd::load_table(o.attention, &table));
  Model model;
  LLAMA2C_TRY(cmd::load_model(o.model, &model));
  AttentionSetup setup;
  LLAMA2C_TRY(cmd::make_attention(o.attention, model, &table, &setup));
  std::vector<Sequence> seqs;
  LLAMA2C_TRY(cmd::load_sequences(o.sequences, model, o.attention.threads, &seqs));
  EvalResult r;
  {
    cmd::ProgressBar bar("evaluating ");
    LLAMA2C_TRY(CommandStatus::runtime(evaluate(model, seqs, setup, &r, bar.fn()), "evaluation"));
  }
  if (o.json) {
    nlohmann::json j;
    j["perplexity"] = r.perplexity;
    j["dense_perplexity"] = r.dense_perplexity;
    j["kl_mean"] = r.kl_mean;
    j["top1_agreement"] = r.top1_agreement;
    j["kv_cache"] = to_string(setup.kv_cache);
    j["attention_kept_fraction"] = r.total.kept_fraction();
    j["vrows_read_fraction"] = r.total.vrows_fraction();
    j["kept_per_row_mean"] = r.total.kept_per_thresholded_row();
    j["empty_row_fraction"] = r.total.empty_row_fraction();
    j["extrapolated_row_fraction"] = r.total.extrapolated_fraction();
    nlohmann::json layers = nlohmann::json::array();
    for (std::size_t l = 0; l < r.per_layer.size(); ++l) {
      nlohmann::json e = cmd::stats_json(r.per_layer[l]);
      e["layer"] = l;
      e["k"] = r.layer_k[l];
      layers.push_back(e);
    }
    j["per_layer"] = layers;
    std::cout << j.dump() << "\n";
    return cmd::flush_stdout();
  }
  std::size_t tokens = 0;
  for (const auto& s : seqs) tokens += s.size();
  std::printf("sequences:                %zu (%zu tokens, %llu predictions)\n", seqs.size(), tokens,
              static_cast<unsigned long long>(r.predictions));
  std::printf("attention:                %s\n", cmd::describe(model, setup).c_str());
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
  if (r.total.extrapolated_rows > 0)
    std::printf(
        "rows past calibration:    %.3f%% of thresholded rows are longer than their head's "
        "calibrated lengths (clamped or extrapolated theta)\n",
        100.0 * r.total.extrapolated_fraction());
  std::printf("per layer:\n  layer     k    kept%%  vrows%%  kept/row  empty%%\n");
  for (std::size_t l = 0; l < r.per_layer.size(); ++l) {
    const auto& s = r.per_layer[l];
    std::printf("  %5zu %5lld  %6.2f  %6.2f  %8.2f  %6.3f\n", l,
                static_cast<long long>(r.layer_k[l]), 100.0 * s.kept_fraction(),
                100.0 * s.vrows_fraction(), s.kept_per_thresholded_row(),
                100.0 * s.empty_row_fraction());
  }
  return cmd::flush_stdout();
}

/// `eval-grid`: every setup of the grid file against one shared dense pass; one JSON line each.
inline CommandStatus run_eval_grid(const EvalGridOptions& o) {
  LLAMA2C_TRY(cmd::check_options(o.sequences));
  // The grid's lines first (syntax, distinct names, the flags that fail together, the threshold
  // files), before the model loads.
  std::string grid;
  const toptheta::Status read = read_text_file(o.grid, "--grid", &grid);
  if (!read.ok()) return CommandStatus::input(read.message());
  struct GridLine {
    std::string where;  ///< "--grid FILE:LINE"
    std::string name;
    AttentionFlags flags;
    std::unique_ptr<toptheta::ThresholdTable> table;  ///< toptheta's, read by load_table()
  };
  std::vector<GridLine> lines;
  std::map<std::string, int> first_line;  // setup name -> the line that gave it
  int ln = 0;
  std::size_t pos = 0;
  for (std::string_view line; next_line(grid, &pos, &line);) {
    ++ln;
    // Blank lines (only std::isspace characters) and comments, as in token files.
    const std::size_t nul = line.find('\0');
    if (nul != std::string_view::npos)
      return CommandStatus::input("--grid " + o.grid + ":" + std::to_string(ln) +
                                  ": binary data: NUL byte at column " + std::to_string(nul + 1));
    const std::vector<std::string> fields = split_fields(line);
    if (fields.empty() || fields.front()[0] == '#') continue;
    GridLine g;
    g.where = "--grid " + o.grid + ":" + std::to_string(ln);
    g.name = fields.front();
    // The names key the output: two setups of one name could not be told apart.
    const auto named = first_line.emplace(g.name, ln);
    if (!named.second)
      return CommandStatus::input(g.where + ": setup name '" + g.name +
                                  "' given twice (first on line " +
                                  std::to_string(named.first->second) + ")");
    const std::size_t e = line.find(g.name) + g.name.size();
    CLI::App app{"grid line"};
    cli::add_attention(&app, &g.flags, /*attention_required=*/true);
    try {
      app.parse(std::string(line.substr(e)), false);
    } catch (const CLI::CallForHelp&) {
      return CommandStatus::input(g.where + ": --help is not an attention flag");
    } catch (const CLI::ParseError& x) {
      return CommandStatus::input(g.where + ": " + x.what());
    }
    g.flags.threads = o.threads;
    LLAMA2C_TRY(cmd::check_options(g.flags).within(g.where));
    g.table = std::make_unique<toptheta::ThresholdTable>();
    LLAMA2C_TRY(cmd::load_table(g.flags, g.table.get()).within(g.where));
    lines.push_back(std::move(g));
  }
  if (lines.empty()) return CommandStatus::input("--grid: no setups in '" + o.grid + "'");
  Model model;
  LLAMA2C_TRY(cmd::load_model(o.model, &model));
  std::vector<std::string> names;
  std::vector<AttentionSetup> setups;
  for (const GridLine& g : lines) {
    AttentionSetup s;
    LLAMA2C_TRY(cmd::make_attention(g.flags, model, g.table.get(), &s).within(g.where));
    s.length_edges = o.length_edges;
    names.push_back(g.name);
    setups.push_back(std::move(s));
  }
  std::vector<Sequence> seqs;
  LLAMA2C_TRY(cmd::load_sequences(o.sequences, model, o.threads, &seqs));
  std::vector<EvalResult> res;
  {
    cmd::ProgressBar bar("evaluating ");
    LLAMA2C_TRY(CommandStatus::runtime(evaluate_many(model, seqs, setups, &res, bar.fn()), "evaluation"));
  }
  for (std::size_t v = 0; v < res.size(); ++v) {
    const EvalResult& r = res[v];
    nlohmann::json j = cmd::stats_json(r.total);
    j["name"] = names[v];
    j["perplexity"] = r.perplexity;
    j["dense_perplexity"] = r.dense_perplexity;
    j["kl_mean"] = r.kl_mean;
    j["top1_agreement"] = r.top1_agreement;
    j["kv_cache"] = to_string(setups[v].kv_cache);
    j["predictions"] = r.predictions;
    j["sequences"] = seqs.size();
    j["layer_k"] = r.layer_k;
    if (!r.by_length.empty()) {
      nlohmann::json b = nlohmann::json::array();
      for (std::size_t i = 0; i < r.by_length.size(); ++i) {
        nlohmann::json e = cmd::stats_json(r.by_length[i]);
        e["length_lo"] = i == 0 ? 1 : o.length_edges[i - 1] + 1;
        e["length_hi"] = i < o.length_edges.size() ? o.length_edges[i] : 0;
        e["thresholded_rows"] = r.by_length[i].thresholded_rows;
        b.push_back(e);
      }
      j["by_length"] = b;
    }
    std::cout << j.dump() << "\n";
  }
  return cmd::flush_stdout();
}

}  // namespace llama2c
