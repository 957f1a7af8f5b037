// toptheta-llama2c: a llama2.c-format LLaMA runner on toptheta attention.
//
//   toptheta-llama2c generate  --model M --tokenizer T [--prompt S] [--steps N] ... [attention]
//   toptheta-llama2c calibrate --model M (--tokens F | --sample-sequences N --seq-len L --seed S)
//                              --k K[,K...] [--form compact|per-length] [--layer-k l:k,...] [--placement pre|post] [--sigma X]
//                              [--tac on|off] [--sample-fraction F] [--sdc-terms] --out FILE
//                              [--format native|reference]
//   toptheta-llama2c eval      --model M (--tokens F | --sample-sequences N --seq-len L --seed S)
//                              --attention dense|topk|toptheta [attention options] [--json]
//   toptheta-llama2c eval-grid --model M --tokens F --grid FILE [--length-edges E1,E2,...]
//
// Run any subcommand with --help for every option. Exit status: 0 success, 1 runtime failure,
// 2 usage or input error (commands.hpp).

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <exception>
#include <new>

#include "cli_options.hpp"
#include "commands.hpp"

namespace {

int report(const llama2c::CommandStatus& s) {
  if (!s.ok()) std::fprintf(stderr, "toptheta-llama2c: %s\n", s.message().c_str());
  return s.exit_code();
}

int run(int argc, char** argv) {
  CLI::App app{
      "toptheta-llama2c: a llama2.c-format LLaMA model (e.g. karpathy's stories260K.bin) running "
      "on toptheta attention. Generation uses the decode kernel, teacher-forced evaluation and "
      "calibration the prefill kernel. Exit status: 0 success, 1 runtime failure (an output "
      "cannot be written, a kernel fails), 2 usage or input error."};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Print the help of every subcommand");

  llama2c::GenerateOptions gen_opts;
  llama2c::CalibrateOptions cal_opts;
  llama2c::EvalOptions eval_opts;
  llama2c::EvalGridOptions grid_opts;
  CLI::App* gen = llama2c::cli::add_generate(&app, &gen_opts);
  CLI::App* cal = llama2c::cli::add_calibrate(&app, &cal_opts);
  CLI::App* ev = llama2c::cli::add_eval(&app, &eval_opts);
  CLI::App* eg = llama2c::cli::add_eval_grid(&app, &grid_opts);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints the help (stdout) or the error (stderr)
    // The help went to stdout: a write error there is a runtime failure, as for any output.
    return rc == 0 ? report(llama2c::cmd::flush_stdout()) : llama2c::CommandStatus::kInput;
  }
  // The kernels' SIMD path (TOPTHETA_ISA) once, before a subcommand loads anything.
  const llama2c::CommandStatus isa = llama2c::cmd::check_isa();
  if (!isa.ok()) return report(isa);
  if (gen->parsed()) return report(llama2c::run_generate(gen_opts));
  if (cal->parsed()) return report(llama2c::run_calibrate(cal_opts));
  if (ev->parsed()) return report(llama2c::run_eval(eval_opts));
  if (eg->parsed()) return report(llama2c::run_eval_grid(grid_opts));
  return report(llama2c::CommandStatus::input("no subcommand"));
}

}  // namespace

int main(int argc, char** argv) {
#ifdef SIGXFSZ
  // A save beyond a file size limit (ulimit -f) is then an error (exit 1, the old file intact,
  // no temporary file left) instead of the signal killing the process mid-write
  // (toptheta/io/atomic_write.hpp).
  std::signal(SIGXFSZ, SIG_IGN);
#endif
  try {
    return run(argc, argv);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "toptheta-llama2c: out of memory\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "toptheta-llama2c: %s\n", e.what());
  }
  return llama2c::CommandStatus::kRuntime;
}
