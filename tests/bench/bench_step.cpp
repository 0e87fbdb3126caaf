// Where one training step of the quickstart model goes (docs/benchmarks.md, "Profile of a training
// step"), for the fused scan's `avx2` build (the kernel before the AVX-512 work) and its default
// build, in one process:
//
//   bench_step [STEPS=30] [STUDY=studies/quickstart.toml]
//
// Each step does what the trainer does for this study: the forward (context layers, the forward
// solve, the equilibrium's graph, the energy, the head at the labelled positions), the objective's
// stability term (f at z* and at a perturbed z*, with the graph), the backward (the implicit
// backward solve, then the backbone, memory and head gradients), gradient clipping and AdamW. The
// solves time themselves (SolverInfo::wall_ms); the context stack is timed once more on its own, so
// its share is that of a forward pass of it, and the rest of the forward is the remainder.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/runtime.h"
#include "mhd/stopwatch.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/scoring.h"

namespace {

using Phases = std::map<std::string, double>;  // phase -> total ms over the timed steps

const std::vector<std::string> kPhases = {"context layers",  "forward solve",  "rest of forward", "stability term",
                                          "backward solve",  "rest of backward", "clip + AdamW"};

Phases profile(mhd::TrialConfig trial, const std::string& scan_build, int steps, double& step_ms) {
  trial.backbone.params.set("scan_build", scan_build);
  auto& registry = mhd::PluginRegistry::global();
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry);
  model.train();
  torch::optim::AdamW optimizer(model.parameters(), torch::optim::AdamWOptions(trial.train.real("lr")));
  const double stability = trial.objective.real("stability"), target = trial.objective.real("contraction_target");
  const double energy_weight = trial.objective.real("energy");
  Phases t;
  double total = 0;
  const int warmup = 3;
  for (int s = 0; s < warmup + steps; ++s) {
    const mhd::Batch batch = task->train_batch(trial.train.integer("batch"));
    const bool timed = s >= warmup;
    {  // the context stack alone, outside the step's time
      mhd::Stopwatch w;
      auto X = model.context(batch.inputs);
      if (timed) t["context layers"] += w.ms();
    }
    const mhd::Stopwatch step;
    mhd::Stopwatch w;
    auto scored = mhd::forward_scored(model, batch.inputs, batch.targets);
    const double forward_ms = w.ms();
    at::Tensor loss = scored.task.loss;
    if (energy_weight != 0 && scored.out.energy.total.defined()) loss = loss + energy_weight * scored.out.energy.total.mean();
    w = mhd::Stopwatch();
    if (stability != 0) {
      const auto f = model.dynamics().solver_map(scored.out.context);
      auto z = scored.out.z_star.detach();
      auto d = at::randn_like(z);
      d = 1e-2 * d / d.norm(2, {1}, true);
      auto lipschitz = (f(z + d) - f(z)).norm(2, {1}) / d.norm(2, {1});
      loss = loss + stability * at::relu(lipschitz - target).mean();
    }
    const double stability_ms = w.ms();
    optimizer.zero_grad();
    w = mhd::Stopwatch();
    loss.backward();
    const double backward_ms = w.ms();
    w = mhd::Stopwatch();
    torch::nn::utils::clip_grad_norm_(model.parameters(), trial.train.real("grad_clip"));
    optimizer.step();
    const double optimizer_ms = w.ms();
    const double this_step = step.ms();
    if (!timed) continue;
    total += this_step;
    t["forward solve"] += scored.out.forward_info.wall_ms;
    t["rest of forward"] += forward_ms - scored.out.forward_info.wall_ms;
    t["stability term"] += stability_ms;
    t["backward solve"] += scored.out.backward_info->wall_ms;
    t["rest of backward"] += backward_ms - scored.out.backward_info->wall_ms;
    t["clip + AdamW"] += optimizer_ms;
  }
  // The context layers run inside the forward: take their time out of the rest of the forward.
  t["rest of forward"] -= t["context layers"];
  for (auto& [phase, ms] : t) ms /= steps;
  step_ms = total / steps;
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 30;
  const std::string study_path = argc > 2 ? argv[2] : std::string(MHD_SOURCE_DIR) + "/studies/quickstart.toml";
  mhd::use_all_cores();
  mhd::keep_freed_memory();  // as mhd does
  std::cout << mhd::runtime_summary("cpu");
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_default_paths();
  const auto study = mhd::load_study(study_path, registry);
  const auto& trial = study.trials.front();
  std::printf("%s, %d timed steps after 3 warm-up steps, batch %lld\n", study_path.c_str(), steps,
              static_cast<long long>(trial.train.integer("batch")));
  double before_ms = 0, after_ms = 0;
  const Phases before = profile(trial, "avx2", steps, before_ms);
  const Phases after = profile(trial, "auto", steps, after_ms);
  std::printf("\n| phase | scan avx2: ms | share | scan auto (avx512 here): ms | share |\n| --- | ---: | ---: | ---: | ---: |\n");
  for (const auto& phase : kPhases)
    std::printf("| %s | %.2f | %.0f%% | %.2f | %.0f%% |\n", phase.c_str(), before.at(phase),
                100.0 * before.at(phase) / before_ms, after.at(phase), 100.0 * after.at(phase) / after_ms);
  std::printf("| whole step | %.2f | | %.2f | |\n\nstep time avx2 / auto: %.2fx\n", before_ms, after_ms,
              before_ms / after_ms);
  return 0;
}
