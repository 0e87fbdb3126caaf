// One trial across processes: who joins as which rank, spawning ranks 1..K-1, and the hidden
// `dp-worker` subcommand those ranks run (data_parallel.h).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>

#include "distributed/data_parallel.h"
#include "mhd/error.h"
#include "config/trial_config.h"
#include "mhd/plugin.h"
#include "os/process.h"
#include "plugin_host/registry.h"

extern char** environ;

namespace mhd {
namespace {

// Set by data_parallel_worker_main: this process is rank `rank` of the trial it trains.
struct WorkerIdentity {
  bool set = false;
  int rank = 0, world = 1;
  std::string rendezvous;
  bool external = false;  // --study mode: groups share one store, a scope per trial
};
WorkerIdentity& identity() {
  static WorkerIdentity id;
  return id;
}

// External launches run the same trials in the same order on every rank: the n-th group of this
// process meets the n-th group of the others.
std::string next_external_scope() {
  static int trials = 0;
  return "trial" + std::to_string(trials++);
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name) {
  const char* v = env(name);
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (*end != '\0') throw Error(std::string("data parallel: environment variable ") + name + " = \"" + v + "\" is not an integer");
  return static_cast<int>(n);
}

std::chrono::milliseconds rendezvous_timeout(const TrialConfig& config) {
  return std::chrono::milliseconds(static_cast<long>(1000.0 * config.train.real("rendezvous_timeout")));
}

}  // namespace

std::string external_rendezvous() {
  if (const char* r = env("MHD_RENDEZVOUS")) return r;
  if (!env("MASTER_ADDR") || !env("MASTER_PORT"))
    throw Error("data parallel: WORLD_SIZE is set but neither MHD_RENDEZVOUS nor MASTER_ADDR and MASTER_PORT are");
  return std::string("tcp://") + env("MASTER_ADDR") + ":" + env("MASTER_PORT");
}

namespace {

}  // namespace

int threads_per_rank(const TrialConfig& config, int world) {
  const std::int64_t wanted = config.run.integer("threads");
  const std::int64_t total = wanted > 0 ? wanted : std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  return static_cast<int>(std::max<std::int64_t>(1, total / world));
}

namespace {

std::string signal_or_status(int status) {
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

}  // namespace

void act_as_data_parallel_worker(int rank, int world, const std::string& rendezvous, bool external) {
  identity() = {true, rank, world, rendezvous, external};
}

TrialGroup::~TrialGroup() {
  dp_.reset();  // closes the sockets: ranks blocked in a collective fail at once
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int pid : workers_) {
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  if (!temp_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(temp_dir_, ignored);
  }
  if (saved_threads_ > 0) at::set_num_threads(saved_threads_);
}

std::string TrialGroup::finish() {
  std::string why;
  for (std::size_t i = 0; i < workers_.size(); ++i) {
    int status = 0;
    ::waitpid(workers_[i], &status, 0);
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) && why.empty())
      why = "data parallel: rank " + std::to_string(i + 1) + " " + signal_or_status(status);
  }
  workers_.clear();
  return why;
}

void check_data_parallel_config(const TrialConfig& config) {
  const std::int64_t world = config.train.integer("world_size");
  if (world <= 1) return;
  const std::int64_t batch = config.train.integer("batch");
  if (batch % world != 0)
    throw Error("train.batch = " + std::to_string(batch) + " is not divisible by train.world_size = " + std::to_string(world));
  if (config.model.flag("memory_writes"))
    throw Error("model.memory_writes = true cannot be combined with train.world_size > 1 (each rank would write "
                "different equilibria into its own memory)");
  if (!config.train.text("rendezvous").empty()) Rendezvous::parse(config.train.text("rendezvous"));
}

std::unique_ptr<TrialGroup> join_trial_group(const TrialConfig& config, PluginRegistry& registry, c10::Device device) {
  const int world = static_cast<int>(config.train.integer("world_size"));
  if (world <= 1) return nullptr;
  check_data_parallel_config(config);

  auto group = std::unique_ptr<TrialGroup>(new TrialGroup());
  DataParallelSpec spec;
  spec.world_size = world;
  spec.timeout = rendezvous_timeout(config);
  spec.tag = config.hash();
  const auto& id = identity();
  if (id.set) {  // a dp-worker process
    if (id.world != world)
      throw Error("data parallel: this worker was started for world_size " + std::to_string(id.world) +
                  " but the trial has train.world_size = " + std::to_string(world));
    spec.rank = id.rank;
    spec.rendezvous = id.rendezvous;
    spec.local = !id.external;
    if (id.external) spec.scope = next_external_scope();
  } else if (env("WORLD_SIZE")) {  // external launch, this process is `mhd run` (rank 0)
    if (env_int("WORLD_SIZE") != world)
      throw Error("data parallel: WORLD_SIZE = " + std::string(env("WORLD_SIZE")) + " but train.world_size = " +
                  std::to_string(world));
    spec.rank = env("RANK") ? env_int("RANK") : 0;
    if (spec.rank != 0)
      throw Error("data parallel: `mhd run` is rank 0; start ranks 1.." + std::to_string(world - 1) +
                  " with `mhd dp-worker --study FILE` (RANK = " + std::to_string(spec.rank) + ")");
    spec.rendezvous = external_rendezvous();
    spec.scope = next_external_scope();
  } else {  // spawn ranks 1..K-1 of this executable
    char dir_template[] = "/tmp/mhd-dp-XXXXXX";
    if (!::mkdtemp(dir_template)) throw Error("data parallel: cannot create a temporary folder in /tmp");
    group->temp_dir_ = dir_template;
    const std::string config_path = group->temp_dir_ + "/trial.json";
    std::ofstream(config_path) << config.to_json();
    const std::string wanted = config.train.text("rendezvous");
    spec.rendezvous = wanted.empty() ? "file://" + group->temp_dir_ + "/store" : wanted;
    spec.local = true;
    const int threads = threads_per_rank(config, world);
    group->saved_threads_ = at::get_num_threads();
    at::set_num_threads(threads);

    std::vector<std::string> args{"dp-worker", "--config-json", config_path, "--world",
                                  std::to_string(world), "--rendezvous", spec.rendezvous, "--threads",
                                  std::to_string(threads), "--timeout", std::to_string(config.train.real("rendezvous_timeout"))};
    for (const auto* plugin : registry.all()) {
      args.push_back("--plugin");
      args.push_back(plugin->path);
    }
    for (int rank = 1; rank < world; ++rank) {
      std::vector<std::string> a = args;
      a.push_back("--rank");
      a.push_back(std::to_string(rank));
      const pid_t pid = spawn_process("/proc/self/exe", a, /*capture_output=*/false).pid;
      group->workers_.push_back(pid);
    }
  }
  group->dp_ = std::make_unique<DataParallel>(spec, device);
  return group;
}

}  // namespace mhd
