// The unified model at 125M / 350M / 760M parameters (docs/experiments.md, "Scaling"): forward-only
// time and peak resident memory per token of one batch of short sequences, then one training step
// (forward, backward, AdamW) where it fits in the memory available.
//
//   bench_model_size [BATCH=4] [SEQ_LEN=64] [SIZES=125,350,760]
//
// Each size is d_model and a number of mamba layers chosen so that parameter_count() (measured on the
// built model, not estimated) lands near the target; vocab 256 (bytes), the dynamics' block one more
// mamba layer, hopfield memory 1024 slots, anderson forward solve (max_iter 10, tol 1e-3), implicit
// backward. One intra-op thread (as the studies run). Before building a size the bench estimates its
// bytes (float32 parameters; a training step adds gradients and AdamW's two moments: 4x) and refuses
// the size, printing those bytes, when they exceed MemAvailable.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/optim/adamw.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/stopwatch.h"
#include "os/resources.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/scoring.h"

namespace {

struct Size {
  std::int64_t target_millions;
  std::int64_t d_model;
  std::int64_t n_layers;
};

// d_model as in the Mamba paper's sizes; layers chosen from the measured per-layer count below.
std::int64_t width_for(std::int64_t target_millions) {
  return target_millions <= 200 ? 768 : target_millions <= 500 ? 1024 : 1536;
}

std::string study_text(std::int64_t d_model, std::int64_t n_layers, std::int64_t seq_len) {
  std::ostringstream s;
  s << "[study]\nname = \"model_size\"\nthreads = 1\n"
    << "[task]\nkind = \"associative_recall\"\nvocab_size = 256\nnum_pairs = 4\nseq_len = " << seq_len << "\n"
    << "[model]\nd_model = " << d_model << "\nn_layers = " << n_layers << "\nresidual = false\n"
    << "[backbone]\nplugin = \"mamba\"\n"
    << "[memory]\nplugin = \"hopfield\"\nsize = 1024\nbeta = 2.0\n"
    << "[solver]\nplugin = \"anderson\"\nmax_iter = 10\ntol = 1e-3\n"
    << "[backward]\nmode = \"implicit\"\nsolver = \"anderson\"\nmax_iter = 10\ntol = 1e-4\n"
    << "[train]\nsteps = 1\nbatch = 4\nlr = 1e-4\n";
  return s.str();
}

std::int64_t available_bytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string name, unit;
  std::int64_t kib = 0;
  while (meminfo >> name >> kib >> unit)
    if (name == "MemAvailable:") return kib * 1024;
  return -1;
}

double resident_mb() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return static_cast<double>(resident) * 4096.0 / (1024.0 * 1024.0);
}

std::int64_t parameters_of(mhd::PluginRegistry& registry, std::int64_t d_model, std::int64_t n_layers) {
  const auto trial = mhd::parse_study(study_text(d_model, n_layers, 16), "model_size.toml", registry).trials.front();
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry);
  return model.parameter_count();
}

// n_layers for the target: the model at 1 and 2 layers gives the fixed part and the per-layer part.
Size size_for(mhd::PluginRegistry& registry, std::int64_t target_millions) {
  const std::int64_t D = width_for(target_millions);
  const std::int64_t one = parameters_of(registry, D, 1), two = parameters_of(registry, D, 2);
  const double per_layer = static_cast<double>(two - one), fixed = static_cast<double>(one) - per_layer;
  const auto layers = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(std::llround((static_cast<double>(target_millions) * 1e6 - fixed) / per_layer)));
  return {target_millions, D, layers};
}

void run_size(mhd::PluginRegistry& registry, const Size& size, std::int64_t batch, std::int64_t seq_len) {
  const auto trial = mhd::parse_study(study_text(size.d_model, size.n_layers, seq_len), "model_size.toml", registry)
                         .trials.front();
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  // Estimate before building: D^2 terms dominate; the 2-layer probe above is small.
  const std::int64_t estimate_params = parameters_of(registry, size.d_model, 1) +
                                       (size.n_layers - 1) * (parameters_of(registry, size.d_model, 2) -
                                                              parameters_of(registry, size.d_model, 1));
  const std::int64_t forward_bytes = estimate_params * 4, train_bytes = estimate_params * 16;
  const std::int64_t available = available_bytes();
  std::printf("| %lldM | %lld | %lld | ", static_cast<long long>(size.target_millions),
              static_cast<long long>(size.d_model), static_cast<long long>(size.n_layers));
  if (available > 0 && forward_bytes * 2 > available) {
    std::printf("refused: parameters need %lld bytes (x2 headroom), %lld available |\n",
                static_cast<long long>(forward_bytes), static_cast<long long>(available));
    return;
  }
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry);
  const std::int64_t params = model.parameter_count();
  const mhd::Batch b = task->train_batch(batch);
  const double tokens = static_cast<double>(batch * seq_len);

  // Forward only (evaluation mode, no graph): a warm-up pass, then the timed one.
  model.eval();
  double forward_ms = 0, forward_peak = 0, before_forward = 0;
  std::int64_t iters = 0;
  {
    torch::NoGradGuard no_grad;
    model.forward(b.inputs);
    before_forward = resident_mb();
    mhd::reset_peak_resident();
    const mhd::Stopwatch w;
    const auto out = model.forward(b.inputs);
    forward_ms = w.ms();
    forward_peak = mhd::peak_resident_mb();
    iters = out.forward_info.iterations;
  }
  std::printf("%.1fM | %.0f | %lld | %.3f | %.0f | %.0f | %.3f | ", static_cast<double>(params) / 1e6, forward_ms,
              static_cast<long long>(iters), forward_ms / tokens, before_forward, forward_peak,
              1024.0 * (forward_peak - before_forward) / tokens);
  std::fflush(stdout);

  // One training step: forward with the graph, backward (implicit), AdamW.
  const std::int64_t train_need = train_bytes - forward_bytes;  // what the step adds to the built model
  const std::int64_t available_now = available_bytes();
  if (available_now > 0 && train_need * 3 / 2 > available_now) {
    std::printf("refused: gradients + AdamW need %lld bytes (x1.5 headroom), %lld available |\n",
                static_cast<long long>(train_need), static_cast<long long>(available_now));
    return;
  }
  model.train();
  torch::optim::AdamW optimizer(model.parameters(), torch::optim::AdamWOptions(1e-4));
  mhd::reset_peak_resident();
  const mhd::Stopwatch w;
  auto scored = mhd::forward_scored(model, b.inputs, b.targets);
  optimizer.zero_grad();
  scored.task.loss.backward();
  optimizer.step();
  std::printf("%.0f | %.0f |\n", w.ms(), mhd::peak_resident_mb());
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t batch = argc > 1 ? std::atoll(argv[1]) : 4;
  const std::int64_t seq_len = argc > 2 ? std::atoll(argv[2]) : 64;
  std::vector<std::int64_t> targets = {125, 350, 760};
  if (argc > 3) {
    targets.clear();
    std::stringstream list(argv[3]);
    for (std::string item; std::getline(list, item, ',');) targets.push_back(std::atoll(item.c_str()));
  }
  at::set_num_threads(1);
  auto& registry = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_MAMBA, MHD_PLUGIN_HOPFIELD, MHD_PLUGIN_ANDERSON}) registry.load_file(path);
  std::printf("batch %lld x %lld tokens, 1 thread, MemAvailable %.1f GiB at start\n\n", static_cast<long long>(batch),
              static_cast<long long>(seq_len), static_cast<double>(available_bytes()) / (1 << 30));
  std::printf("| target | d_model | layers | parameters | forward ms | solver iters | forward ms/token | RSS before "
              "forward MiB | forward peak MiB | forward KiB/token | train step ms | train step peak MiB |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto target : targets) {
    std::fflush(stdout);
    run_size(registry, size_for(registry, target), batch, seq_len);
  }
  return 0;
}
