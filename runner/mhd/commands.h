// The `mhd` subcommands (DESIGN.md §7). Each returns the process exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mhd::cli {

// Exit codes: 0 fine, 1 a runtime failure, 2 a bad study or command line, 3 some trials failed.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;
constexpr int kExitTrialsFailed = 3;

// Exit code of a run stopped by SIGINT (128 + 2, as shells report it); resume with --resume.
constexpr int kExitInterrupted = 130;

struct RunArgs {
  std::string study, output, device, only;
  bool resume = false;
  int jobs = 1;
  std::string shard;  // "I/N"
  bool in_process = false;
};
int run(const RunArgs& args);

struct WorkerCliArgs {
  std::string results, device, prefix;
  std::int64_t trial_id = 0, threads = 1;
  std::vector<std::string> plugin_path;
};
int run_trial(const WorkerCliArgs& args);
int merge(const std::string& output, const std::vector<std::string>& inputs);

struct SlurmArgs {
  std::string study, out_dir, partition, time;
  int shards = 2;
};
int slurm(const SlurmArgs& args);
int validate(const std::string& study);
int plan(const std::string& study);
int plugins(const std::string& kind);
int report(const std::string& file, const std::vector<std::string>& metrics, bool csv);

}  // namespace mhd::cli
