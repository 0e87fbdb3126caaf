// The hidden `dp-worker` subcommand: one rank of a data-parallel trial (distributed/data_parallel.h).
#include "run/dp_worker.h"

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include <ATen/Parallel.h>

#include "config/trial_config.h"
#include "distributed/data_parallel.h"
#include "mhd/error.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "train/trainer.h"

namespace mhd {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name) { return std::atoi(env(name)); }

}  // namespace

int data_parallel_worker_main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "dp-worker") return -1;
  int rank = -1;
  try {
    std::string config_json, study_path, rendezvous;
    int world = 0, threads = 0;
    std::vector<std::string> plugins;
    double timeout = -1;
    for (int i = 2; i < argc; ++i) {
      const std::string flag = argv[i];
      if (i + 1 >= argc) throw Error("dp-worker: " + flag + " needs a value");
      const std::string value = argv[++i];
      if (flag == "--config-json") config_json = value;
      else if (flag == "--study") study_path = value;
      else if (flag == "--rank") rank = std::stoi(value);
      else if (flag == "--world") world = std::stoi(value);
      else if (flag == "--rendezvous") rendezvous = value;
      else if (flag == "--threads") threads = std::stoi(value);
      else if (flag == "--timeout") timeout = std::stod(value);
      else if (flag == "--plugin") plugins.push_back(value);
      else throw Error("dp-worker: unknown option " + flag);
    }
    auto& registry = PluginRegistry::global();
    for (const auto& p : plugins) registry.load_file(p);
    if (!config_json.empty()) {
      if (rank < 1 || world < 2 || rendezvous.empty())
        throw Error("dp-worker: --config-json needs --rank (>= 1), --world (>= 2) and --rendezvous");
      std::ifstream in(config_json);
      if (!in) throw Error("dp-worker: cannot read " + config_json);
      std::stringstream text;
      text << in.rdbuf();
      TrialConfig config = TrialConfig::from_json(text.str());
      if (timeout > 0) config.train.set("rendezvous_timeout", timeout);
      if (threads > 0) at::set_num_threads(threads);
      act_as_data_parallel_worker(rank, world, rendezvous, false);
      const TrainResult result = train_trial(config, registry, MetricSink{});
      if (result.status == TrialStatus::Failed) throw Error(result.error);
      return 0;
    }
    if (study_path.empty()) throw Error("dp-worker: give --config-json FILE or --study FILE");
    // External launch: rank and world from the environment, every data-parallel trial in order.
    if (!env("RANK") || !env("WORLD_SIZE")) throw Error("dp-worker --study: RANK and WORLD_SIZE must be set");
    rank = env_int("RANK");
    world = env_int("WORLD_SIZE");
    registry.scan_default_paths();
    Study study = load_study(study_path, registry);
    act_as_data_parallel_worker(rank, world, external_rendezvous(), true);
    for (const auto& config : study.trials) {
      if (config.train.integer("world_size") <= 1) continue;
      at::set_num_threads(threads > 0 ? threads : threads_per_rank(config, 1));
      const TrainResult result = train_trial(config, registry, MetricSink{});
      if (result.status == TrialStatus::Failed) throw Error(result.error);
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "mhd dp-worker (rank " << rank << "): error: " << e.what() << std::endl;
    return 1;
  }
}

}  // namespace mhd
