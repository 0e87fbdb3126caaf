// mhd: run, check and report studies of the Unified Mamba-Hopfield-DEQ framework.
#include <iostream>

#include <CLI/CLI.hpp>

#include "commands.h"
#include "mhd/data_parallel.h"

int main(int argc, char** argv) {
  // Hidden: ranks 1..K-1 of a data-parallel trial (train.world_size = K), started by rank 0.
  if (const int code = mhd::data_parallel_worker_main(argc, argv); code >= 0) return code;
  CLI::App app{"mhd: plugin-based experiments with the Unified Mamba-Hopfield-DEQ model"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mhd 0.1.0");

  mhd::cli::RunArgs run_args;
  auto* run = app.add_subcommand("run", "Run every trial of a study and write the results file");
  run->add_option("study", run_args.study, "Study file (TOML)")->required();
  run->add_option("--out", run_args.output, "Results file (default: the study's output)");
  run->add_option("--device", run_args.device, "Device for every trial")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  run->add_option("--only", run_args.only, "Run only this variant");

  std::string study_path;
  auto* validate = app.add_subcommand("validate", "Parse, validate and expand a study without running it");
  validate->add_option("study", study_path, "Study file (TOML)")->required();
  auto* plan = app.add_subcommand("plan", "List the trials a study would run");
  plan->add_option("study", study_path, "Study file (TOML)")->required();

  std::string kind;
  auto* plugins = app.add_subcommand("plugins", "List discovered plugins and their parameters");
  plugins->add_option("--kind", kind, "Only this kind")->check(CLI::IsMember({"backbone", "memory", "solver", "optimization"}));

  std::string file;
  std::vector<std::string> metrics;
  bool csv = false;
  auto* report = app.add_subcommand("report", "Final metrics per variant and sweep point, mean +- std over seeds");
  report->add_option("file", file, "Results file (.sqlite)")->required();
  report->add_option("--metric", metrics, "Metric(s) to show (repeatable); default a standard set");
  report->add_flag("--csv", csv, "Comma-separated output for machines");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : mhd::cli::kExitBadInput;
  }
  if (*run) return mhd::cli::run(run_args);
  if (*validate) return mhd::cli::validate(study_path);
  if (*plan) return mhd::cli::plan(study_path);
  if (*plugins) return mhd::cli::plugins(kind);
  if (*report) return mhd::cli::report(file, metrics, csv);
  return mhd::cli::kExitBadInput;
}
