// mhd: run, check and report studies of the Unified Mamba-Hopfield-DEQ framework.
#include <iostream>

#include <CLI/CLI.hpp>
#include <torch/cuda.h>
#include <torch/version.h>

#include "commands.h"
#include "distributed/data_parallel.h"
#include "run/dp_worker.h"
#include "mhd/runtime.h"

int main(int argc, char** argv) {
  // Every command (generate, studies run in-process, probes) gets every core unless told otherwise.
  mhd::use_all_cores();
  mhd::keep_freed_memory();
  // Hidden: ranks 1..K-1 of a data-parallel trial (train.world_size = K), started by rank 0.
  if (const int code = mhd::data_parallel_worker_main(argc, argv); code >= 0) return code;
  CLI::App app{"mhd: plugin-based experiments with the Unified Mamba-Hopfield-DEQ model"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] {
    std::string text = "mhd 0.1.0 (LibTorch " TORCH_VERSION ")\n" + mhd::runtime_summary(torch::cuda::is_available() ? "cpu, cuda available" : "cpu (no CUDA)");
    if (const auto warning = mhd::reference_blas_warning(); !warning.empty()) text += warning + "\n";
    return text;
  });

  mhd::cli::RunArgs run_args;
  auto* run = app.add_subcommand("run", "Run every trial of a study and write the results file");
  run->add_option("study", run_args.study, "Study file (TOML)")->required();
  run->add_option("--out", run_args.output, "Results file (default: the study's output)");
  run->add_option("--device", run_args.device, "Device for every trial")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  run->add_option("--only", run_args.only, "Run only this variant");
  run->add_flag("--resume", run_args.resume,
                "Continue the study in the results file: keep finished trials, restart interrupted ones, "
                "re-run trials whose configuration changed");
  run->add_option("--jobs,-j", run_args.jobs, "Trials run in parallel (cores split between them)")
      ->check(CLI::Range(1, 1024));
  run->add_option("--shard", run_args.shard, "Run shard I of N (1-based): trials with index % N == I-1");
  run->add_flag("--in-process", run_args.in_process, "Train trials in this process (no crash isolation)");

  // Hidden: one trial in a child process of `mhd run` (crash isolation).
  mhd::cli::WorkerCliArgs worker_args;
  auto* run_trial = app.add_subcommand("run-trial", "");
  run_trial->group("");
  run_trial->add_option("--results", worker_args.results)->required();
  run_trial->add_option("--trial-id", worker_args.trial_id)->required();
  run_trial->add_option("--threads", worker_args.threads);
  run_trial->add_option("--device", worker_args.device);
  run_trial->add_option("--prefix", worker_args.prefix);
  run_trial->add_option("--plugin-path", worker_args.plugin_path);

  std::string merge_output;
  std::vector<std::string> merge_inputs;
  auto* merge = app.add_subcommand("merge", "Combine the results files of a study's shards (mhd run --shard) into one");
  merge->add_option("output", merge_output, "Merged results file (new)")->required();
  merge->add_option("inputs", merge_inputs, "Shard results files")->required();

  mhd::cli::SlurmArgs slurm_args;
  auto* slurm = app.add_subcommand("slurm", "Write Slurm scripts: a job array of shards, then a dependent merge");
  slurm->add_option("study", slurm_args.study, "Study file (TOML)")->required();
  slurm->add_option("--shards", slurm_args.shards, "Number of shards (array tasks)")->required()->check(CLI::Range(1, 100000));
  slurm->add_option("--out", slurm_args.out_dir, "Directory for the scripts and results (default slurm/NAME)");
  slurm->add_option("--partition", slurm_args.partition, "#SBATCH --partition");
  slurm->add_option("--time", slurm_args.time, "#SBATCH --time, e.g. 04:00:00");

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
  std::int64_t last_k = 10;
  auto* report = app.add_subcommand("report", "Final metrics per variant and sweep point, mean +- std over seeds");
  report->add_option("file", file, "Results file (.sqlite)")->required();
  report->add_option("--metric", metrics, "Metric(s) to show (repeatable); default a standard set");
  report->add_flag("--csv", csv, "Comma-separated output for machines");
  report->add_option("--last", last_k,
                     "A per-step metric's final value is the mean of its last K logged steps (held-out eval_*/val_* "
                     "metrics: the last evaluation)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1000000}));

  mhd::cli::GenerateArgs gen_args;
  auto* generate = app.add_subcommand("generate", "Generate from a checkpoint with the recurrent decode");
  generate->add_option("checkpoint", gen_args.checkpoint, "Checkpoint file (written by [train] checkpoint_every)")
      ->required();
  generate->add_option("--prompt", gen_args.prompt,
                       "Prompt: text for an lm_bytes model, whitespace-separated token ids otherwise")
      ->required();
  generate->add_option("--max-length", gen_args.max_length, "Tokens to generate after the prompt")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000}));
  generate->add_option("--temperature", gen_args.temperature, "Softmax temperature; 0 is greedy")
      ->check(CLI::Range(0.0, 1e6));
  generate->add_option("--top-k", gen_args.top_k, "Sample among the k most likely tokens (0: all)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1} << 40));
  generate->add_option("--top-p", gen_args.top_p, "Nucleus: the smallest set whose probability >= p (1: all)")
      ->check(CLI::Range(1e-9, 1.0));
  generate->add_option("--seed", gen_args.seed, "Sampling seed");
  generate->add_flag("--cold", gen_args.cold, "Start every solve from z0 instead of the previous z*");

  mhd::cli::MetaTrainArgs meta_args;
  auto* meta = app.add_subcommand("meta-train",
                                  "Train the learned solver's accelerator (or, with --exit-predictor, the early_exit solver's predictor) on a checkpoint's frozen model (writes --out)");
  meta->add_option("checkpoint", meta_args.checkpoint, "Checkpoint file (written by [train] checkpoint_every)")
      ->required();
  meta->add_option("--out", meta_args.out, "Accelerator file to write ([solver] plugin = \"learned\", path = ...)")
      ->required();
  meta->add_option("--steps", meta_args.steps, "Optimizer steps")->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000}));
  meta->add_option("--batches", meta_args.batches, "Training batches whose fixed points are solved once and cycled")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}));
  meta->add_option("--eval-batches", meta_args.eval_batches, "Held-out batches for iterations to tol")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}));
  meta->add_option("--batch", meta_args.batch, "Sequences per batch (0: the checkpoint's [train] batch)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{100000}));
  meta->add_option("--unroll", meta_args.unroll, "Solver steps unrolled in the loss (K)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1000}));
  meta->add_option("--hidden", meta_args.hidden, "Hidden width of the initialiser and the mixer")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}));
  meta->add_option("--m", meta_args.m, "Anderson history size")->check(CLI::Range(std::int64_t{1}, std::int64_t{64}));
  meta->add_option("--lr", meta_args.lr, "Adam learning rate")->check(CLI::Range(1e-9, 10.0));
  meta->add_option("--tol", meta_args.tol, "Tol of the iterations-to-tol measure (0: the checkpoint's)")
      ->check(CLI::Range(0.0, 1.0));
  meta->add_option("--seed", meta_args.seed, "Seed of the accelerator's initialisation and the training batches");
  meta->add_flag("--exit-predictor", meta_args.exit_predictor,
                 "Fit the early_exit solver's convergence predictor on recorded solver trajectories instead "
                 "([solver] plugin = \"early_exit\", predictor_path = ...)");
  meta->add_option("--inner", meta_args.inner,
                   "With --exit-predictor: the solver whose trajectories are recorded (default: the checkpoint's)");
  meta->add_option("--threshold", meta_args.threshold, "With --exit-predictor: the confidence it is measured at")
      ->check(CLI::Range(0.5, 1.0));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : mhd::cli::kExitBadInput;
  }
  if (*run) return mhd::cli::run(run_args);
  if (*run_trial) return mhd::cli::run_trial(worker_args);
  if (*merge) return mhd::cli::merge(merge_output, merge_inputs);
  if (*slurm) return mhd::cli::slurm(slurm_args);
  if (*validate) return mhd::cli::validate(study_path);
  if (*plan) return mhd::cli::plan(study_path);
  if (*plugins) return mhd::cli::plugins(kind);
  if (*report) return mhd::cli::report(file, metrics, csv, last_k);
  if (*generate) return mhd::cli::generate(gen_args);
  if (*meta) return mhd::cli::meta_train(meta_args);
  return mhd::cli::kExitBadInput;
}
