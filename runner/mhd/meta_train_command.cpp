// `mhd meta-train CHECKPOINT`: trains the `learned` solver's accelerator on a checkpoint's frozen
// model (train/meta_train.h) and prints iterations to tol before and after (docs/design.md §3,
// "Learned solver").
#include <algorithm>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "commands.h"
#include "config/trial_config.h"
#include "core/model.h"
#include "mhd/error.h"
#include "mhd/kits/learned_accelerator.h"
#include "plugin_host/registry.h"
#include "tasks/task.h"
#include "train/checkpoint.h"
#include "train/meta_train.h"

namespace mhd::cli {
namespace {

// The baseline the accelerator is measured against: the checkpoint's own solver when it is
// anderson (its m, lam, beta), else anderson's defaults.
std::shared_ptr<Solver> anderson_baseline(const TrialConfig& config, PluginRegistry& registry) {
  if (config.solver.plugin == "anderson") return registry.make_solver("anderson", config.solver.params);
  return registry.make_solver("anderson",
                              Params::defaults(registry.require(PluginKind::Solver, "anderson").manifest->params));
}

std::string stats_text(const SolveStats& s) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << s.mean_iterations << " iterations (" << std::setprecision(1)
      << 100.0 * s.converged_share << "% at tol, " << std::setprecision(2) << s.mean_wall_ms << " ms/solve)";
  return out.str();
}

}  // namespace

int meta_train(const MetaTrainArgs& args) {
  return guarded_command([&] {
    auto& registry = PluginRegistry::global();
    registry.scan_default_paths();
    auto loaded = load_model_from_checkpoint(args.checkpoint, registry);
    UnifiedModel& model = *loaded.model;
    if (!model.deq_enabled()) throw Error("meta-train: '" + args.checkpoint + "' has no DEQ solve ([model] deq = false)");
    const TrialConfig& config = *loaded.config;
    const std::int64_t batch = args.batch > 0 ? args.batch : config.train.integer("batch");

    // Training batches from the task's training stream (seeded), held-out ones from its eval stream.
    auto task = make_task(config.task_kind, config.task, args.seed);
    task->seek(1);
    std::vector<at::Tensor> train_tokens, eval_tokens;
    for (std::int64_t i = 0; i < args.batches; ++i) train_tokens.push_back(task->train_batch(batch).inputs);
    for (std::int64_t i = 0; i < args.eval_batches; ++i) eval_tokens.push_back(task->eval_batch(batch, i).inputs);

    MetaTrainOptions options;
    options.steps = args.steps;
    options.unroll = args.unroll;
    options.lr = args.lr;
    options.measure = model.forward_limits();
    if (args.tol > 0) options.measure.tol = args.tol;
    options.reference.tol = std::min(options.reference.tol, options.measure.tol * 1e-2);

    torch::manual_seed(args.seed);
    learned::AcceleratorDims dims;
    dims.d_model = model.dynamics().options().d_model;
    dims.hidden = args.hidden;
    dims.m = args.m;
    learned::Accelerator accelerator(dims);
    auto baseline = anderson_baseline(config, registry);
    const std::int64_t every = std::max<std::int64_t>(1, args.steps / 10);
    const MetaTrainReport r = mhd::meta_train(
        model, accelerator, train_tokens, eval_tokens, options, baseline.get(), [&](std::int64_t step, double loss) {
          if (step % every == 0 || step == 1 || step == args.steps)
            std::cout << "step " << step << "/" << args.steps << ": unrolled loss " << std::setprecision(4) << loss
                      << std::endl;
        });
    learned::save_accelerator(args.out, accelerator);

    std::cout << "reference fixed points (anderson, tol " << options.reference.tol << ", max_iter "
              << options.reference.max_iter << "): " << std::setprecision(3) << 100.0 * r.reference_converged_share
              << "% at tol" << std::endl;
    std::cout << "iterations to tol " << options.measure.tol << " (max_iter " << options.measure.max_iter << ") on "
              << eval_tokens.size() << " held-out batches of " << batch << ":" << std::endl;
    std::cout << "  anderson:           " << stats_text(r.baseline) << std::endl;
    std::cout << "  learned, untrained: " << stats_text(r.before) << std::endl;
    std::cout << "  learned, trained:   " << stats_text(r.after) << std::endl;
    const double fewer = r.baseline.mean_iterations > 0 ? 1.0 - r.after.mean_iterations / r.baseline.mean_iterations : 0.0;
    std::cout << "  trained vs anderson: " << std::fixed << std::setprecision(1) << 100.0 * fewer
              << "% fewer iterations; largest distance to the reference z*: " << std::scientific << std::setprecision(2)
              << r.max_distance_to_reference << std::endl;
    std::cout << "wrote " << args.out << " (d_model " << dims.d_model << ", hidden " << dims.hidden << ", m " << dims.m
              << "): use it with [solver] plugin = \"learned\", path = \"" << args.out << "\"" << std::endl;
    return kExitOk;
  });
}

}  // namespace mhd::cli
