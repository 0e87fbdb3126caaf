// The optimizations `mixed_precision` and `energy_shaping` on the quickstart model
// (docs/benchmarks.md, "Mixed precision and energy shaping"):
//
//   bench_mixed_shaping solve [SOLVES=20] [D_MODEL=64] [BATCH=32] [ENERGY=1]
//       ms per forward solve (SolverInfo::wall_ms), iterations, the largest final relative residual
//       and the share of solves at tol, for float32 and mixed_precision (reduced_share 0.7 and 1.0),
//       each on a fresh model with the same weights and the same batches (evaluation mode, no graph).
//   bench_mixed_shaping shaping [STEPS=60] [BATCH=32]
//       the quickstart trained STEPS steps without and with energy_shaping (defaults): mean step ms,
//       mean solver iterations, the held-out accuracy at the end, and the shaping metrics.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/runtime.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/trainer.h"

namespace {

std::string quickstart_text() {
  std::ifstream in(std::string(MHD_SOURCE_DIR) + "/studies/quickstart.toml");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The quickstart with d_model, the energy switch and extra optimization tables.
mhd::TrialConfig quickstart(std::int64_t d_model, bool energy, const std::string& extra) {
  std::string text = quickstart_text();
  const std::string key = "d_model = 64";
  text.replace(text.find(key), key.size(), "d_model = " + std::to_string(d_model));
  const auto train = text.find("[train]");
  text.insert(train, extra + (energy ? "" : "[energy]\nenabled = false\n"));
  return mhd::parse_study(text, "quickstart.toml", mhd::PluginRegistry::global()).trials.front();
}

struct SolveRow {
  double ms = 0, iterations = 0, worst_rel = 0, converged = 0;
};

SolveRow time_solves(const mhd::TrialConfig& trial, int solves, std::int64_t batch) {
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), mhd::PluginRegistry::global());
  model.eval();
  at::NoGradGuard no_grad;
  SolveRow row;
  const int warmup = 2;
  for (int s = 0; s < warmup + solves; ++s) {
    const auto out = model.forward(task->eval_batch(batch, s % 4).inputs);
    if (s < warmup) continue;
    row.ms += out.forward_info.wall_ms / solves;
    row.iterations += static_cast<double>(out.forward_info.iterations) / solves;
    row.worst_rel = std::max(row.worst_rel, out.forward_info.final_rel.max().item<double>());
    row.converged += (out.forward_info.converged ? 1.0 : 0.0) / solves;
  }
  return row;
}

int solve_mode(int solves, std::int64_t d_model, std::int64_t batch, bool energy) {
  std::printf("quickstart model, d_model %lld, batch %lld, energy %s, %d timed solves after 2\n\n",
              static_cast<long long>(d_model), static_cast<long long>(batch), energy ? "on" : "off", solves);
  std::printf("| variant | ms / solve | iterations | worst final rel | at tol | float32 ms / this |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
  double base = 0;
  for (const auto& [name, extra] : std::vector<std::pair<std::string, std::string>>{
           {"float32", ""},
           {"mixed 0.7", "[optimizations.mixed_precision]\nreduced_share = 0.7\n"},
           {"mixed 1.0", "[optimizations.mixed_precision]\nreduced_share = 1.0\n"}}) {
    const SolveRow r = time_solves(quickstart(d_model, energy, extra), solves, batch);
    if (base == 0) base = r.ms;
    std::printf("| %s | %.2f | %.1f | %.2e | %.0f%% | %.2fx |\n", name.c_str(), r.ms, r.iterations, r.worst_rel,
                100.0 * r.converged, base / r.ms);
  }
  return 0;
}

int shaping_mode(std::int64_t steps, std::int64_t batch) {
  std::printf("quickstart trained %lld steps, batch %lld\n\n", static_cast<long long>(steps),
              static_cast<long long>(batch));
  std::printf("| variant | ms / step | solver iters | eval accuracy | curvature mean | spread | negative share |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  double base = 0;
  for (const auto& [name, extra] : std::vector<std::pair<std::string, std::string>>{
           {"without", ""}, {"energy_shaping", "[optimizations.energy_shaping]\n"}}) {
    mhd::TrialConfig trial = quickstart(64, true, extra);
    trial.train.set("steps", steps);
    trial.train.set("batch", batch);
    trial.train.set("eval_every", steps);
    std::map<std::string, double> sum, last;
    std::map<std::string, int> count;
    mhd::MetricSink sink;
    sink.metric = [&](std::int64_t, const std::string& metric, double value) {
      sum[metric] += value;
      ++count[metric];
      last[metric] = value;
    };
    const auto result = mhd::train_trial(trial, mhd::PluginRegistry::global(), sink);
    if (result.status != mhd::TrialStatus::Done) std::printf("(%s: %s)\n", name.c_str(), result.error.c_str());
    auto mean = [&](const std::string& m) { return count[m] ? sum[m] / count[m] : 0.0; };
    if (base == 0) base = mean("step_ms");
    std::printf("| %s | %.1f (%.2fx) | %.2f | %.3f | %.3g | %.3g | %.2f |\n", name.c_str(), mean("step_ms"),
                mean("step_ms") / base, mean("solver_iters"), last["eval_accuracy"], last["shaping_curvature_mean"],
                last["shaping_curvature_spread"], last["shaping_negative_share"]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "solve";
  mhd::use_all_cores();
  std::cout << mhd::runtime_summary("cpu");
  mhd::PluginRegistry::global().scan_default_paths();
  if (mode == "solve")
    return solve_mode(argc > 2 ? std::atoi(argv[2]) : 20, argc > 3 ? std::atoll(argv[3]) : 64,
                      argc > 4 ? std::atoll(argv[4]) : 32, argc > 5 ? std::atoi(argv[5]) != 0 : true);
  if (mode == "shaping") return shaping_mode(argc > 2 ? std::atoll(argv[2]) : 60, argc > 3 ? std::atoll(argv[3]) : 32);
  std::fprintf(stderr, "usage: bench_mixed_shaping solve [SOLVES] [D_MODEL] [BATCH] [ENERGY 0|1] | shaping [STEPS] [BATCH]\n");
  return 2;
}
