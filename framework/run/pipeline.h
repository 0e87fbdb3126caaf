// Running a study: every trial trained, results written as they come (docs/design.md §5-7), each trial
// in its own process when a worker executable is given (crash isolation), resumable, in parallel
// (--jobs) and in shards (--shard I/N). See docs/studies.md "Running studies you can trust".
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace mhd {

class PluginRegistry;
struct Study;

struct RunOptions {
  std::string output;        // overrides study.output when set
  std::string device;        // overrides study.device when set ("cpu" | "cuda" | "auto")
  std::string only_variant;  // run just this variant when set
  // Continue the newest study row of the same name (and shard) in the output: finished trials are
  // kept, interrupted and failed ones run again, trials whose configuration changed are reset.
  // Without it a new study row is started (earlier rows stay in the file).
  bool resume = false;
  int jobs = 1;  // trials run at once (needs worker_executable when > 1)
  // 1-based shard I of N: the trials whose index i (0-based, in expansion order) has i % N == I - 1.
  // 0/0: every trial.
  int shard_index = 0, shard_count = 0;
  // When set, each trial runs in a child process `worker_executable run-trial ...` (the mhd runner
  // passes itself), so a plugin that crashes fails only its trial. Empty: in this process.
  std::string worker_executable;
};

struct RunSummary {
  std::int64_t study_id = 0;
  std::string output;
  int done = 0, failed = 0, diverged = 0;
  int kept = 0;          // finished before this (resumed) run and not run again
  int changed = 0;       // re-run because their configuration changed
  int removed = 0;       // no longer in the study file
  bool interrupted = false;  // stopped by request_stop() (SIGINT); resume to finish
};

// Runs the study's trials and prints progress and a closing summary table to `log`.
// A trial that throws (or, isolated, crashes) is marked failed with the message and the study
// goes on; a full results file (ResultsFileFull) stops the study instead, throwing that error once
// the running trials have ended. Returns early with `interrupted` when request_stop() was called: the running trials
// flush their rows and go back to pending.
RunSummary run_study(const Study& study, PluginRegistry& registry, const RunOptions& options, std::ostream& log);

// The child side of crash isolation: `mhd run-trial`. Runs the already-claimed trial `trial_id`
// of `results` (its configuration read from the file), writes its metrics and final status there
// and prints progress lines starting with `prefix` to `log`. Returns the process exit code: 0 when
// the trial finished (done, failed or diverged are all recorded), 130 when interrupted.
struct WorkerArgs {
  std::string results;
  std::int64_t trial_id = 0;
  std::int64_t threads = 1;
  std::string device;  // overrides the stored device when set
  std::string prefix;
  std::vector<std::string> plugin_path;  // directories the caller scans into the registry
};
int run_trial_worker(const WorkerArgs& args, PluginRegistry& registry, std::ostream& log);
// run_trial_worker's exit code when the results file is full (ResultsFileFull): the parent stops
// starting trials and ends the study with that one line.
inline constexpr int kWorkerExitResultsFull = 75;

// SIGINT: a handler that asks the running study to stop after the current flush (a second SIGINT
// exits at once; `mhd run --resume` then restarts the interrupted trials).
void install_stop_on_sigint();
void request_stop();
bool stop_requested();

// "I/N" -> {I, N}; throws mhd::Error unless 1 <= I <= N.
std::pair<int, int> parse_shard(const std::string& text);
// results/x.sqlite -> results/x.shard1-of-3.sqlite
std::string shard_output_path(const std::string& output, int index, int count);

// `mhd slurm`: a job-array script running shard $SLURM_ARRAY_TASK_ID of N, and a merge job that
// depends on the whole array. Writes DIR/NAME.shards.sbatch, DIR/NAME.merge.sbatch and
// DIR/NAME.submit.sh (runs sbatch twice, the merge with --dependency=afterok), returns their paths.
struct SlurmOptions {
  std::string study_path;  // made absolute in the scripts
  std::string mhd_executable;
  std::string out_dir;     // where scripts, shard results and the merged file go
  int shards = 2;
  std::string partition, time;  // optional #SBATCH lines
  std::string output;           // the merged results file (default out_dir/NAME.sqlite)
};
std::vector<std::string> write_slurm_scripts(const Study& study, const SlurmOptions& options);

}  // namespace mhd
