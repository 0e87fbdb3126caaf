// `mhd meta-train CHECKPOINT`: trains the `learned` solver's accelerator on a checkpoint's frozen
// model (train/meta_train.h) and prints iterations to tol before and after (docs/design.md §3,
// "Learned solver"); with --exit-predictor, fits the `early_exit` solver's convergence predictor on
// the recorded trajectories of a solver instead ("Early exit").
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
#include "mhd/kits/exit_predictor.h"
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

// The solver whose trajectories the exit predictor is fitted on: --inner, else the checkpoint's solver
// (early_exit's own inner when the checkpoint already runs early_exit).
std::string inner_solver_name(const MetaTrainArgs& args, const TrialConfig& config) {
  if (!args.inner.empty()) return args.inner;
  if (config.solver.plugin == "early_exit") return config.solver.params.text("inner");
  return config.solver.plugin;
}

std::shared_ptr<Solver> early_exit_solver(PluginRegistry& registry, const std::string& inner,
                                          const std::string& predictor_path, double threshold) {
  Params p = Params::defaults(registry.require(PluginKind::Solver, "early_exit").manifest->params);
  p.set("inner", inner);
  p.set("confidence_threshold", threshold);
  if (!predictor_path.empty()) {
    p.set("predictor", std::string("exit"));
    p.set("predictor_path", predictor_path);
  }
  return registry.make_solver("early_exit", p);
}

std::string exit_stats_text(const EarlyExitStats& s) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(1) << s.sample_evals << " sample evaluations, " << s.f_evals
      << " evaluations of f per solve, " << 100.0 * s.converged_share << "% of solves at tol (worst residual "
      << std::scientific << std::setprecision(2) << s.worst_rel << "), " << std::fixed << std::setprecision(2)
      << s.mean_wall_ms << " ms/solve";
  return out.str();
}

// `mhd meta-train CHECKPOINT --exit-predictor`: records the inner solver's trajectories on the
// training batches, fits the predictor, saves it, then runs early_exit without and with it on the
// held-out batches.
int fit_exit_predictor_command(const MetaTrainArgs& args, UnifiedModel& model, const TrialConfig& config,
                               const std::vector<at::Tensor>& train_tokens, const std::vector<at::Tensor>& eval_tokens,
                               PluginRegistry& registry) {
  const std::string inner_name = inner_solver_name(args, config);
  auto inner = registry.make_solver(inner_name, Params::defaults(registry.require(PluginKind::Solver, inner_name).manifest->params));
  ExitPredictorOptions options;
  options.limits = model.forward_limits();
  if (args.tol > 0) options.limits.tol = args.tol;
  options.fit.steps = args.steps;
  options.fit.lr = args.lr;
  options.fit.threshold = args.threshold;
  torch::manual_seed(args.seed);
  exit_predictor::Predictor predictor(args.hidden);
  const ExitPredictorReport r = mhd::fit_exit_predictor(model, predictor, train_tokens, eval_tokens, *inner, options);
  exit_predictor::save_predictor(args.out, predictor);

  std::cout << "recorded " << r.train_rows << " training and " << r.held_out_rows << " held-out row evaluations of "
            << inner_name << " (tol " << options.limits.tol << ", max_iter " << options.limits.max_iter << "); "
            << std::fixed << std::setprecision(1) << 100.0 * r.fit.positive_share
            << "% of training rows land below tol after one more step" << std::endl;
  std::cout << "cross-entropy " << std::setprecision(4) << r.fit.first_loss << " -> " << r.fit.last_loss << " in "
            << args.steps << " steps; held out at p >= " << std::setprecision(2) << args.threshold << ": precision "
            << std::setprecision(3) << r.fit.precision << ", recall " << r.fit.recall << std::endl;
  auto without = early_exit_solver(registry, inner_name, "", args.threshold);
  auto with = early_exit_solver(registry, inner_name, args.out, args.threshold);
  std::cout << "early_exit(" << inner_name << ") on " << eval_tokens.size() << " held-out batches:" << std::endl;
  std::cout << "  exits at tol only:   " << exit_stats_text(measure_early_exit(model, eval_tokens, *without, options.limits))
            << std::endl;
  std::cout << "  with the predictor:  " << exit_stats_text(measure_early_exit(model, eval_tokens, *with, options.limits))
            << std::endl;
  std::cout << "wrote " << args.out << " (hidden " << args.hidden << "): use it with [solver] plugin = \"early_exit\", inner = \""
            << inner_name << "\", predictor = \"exit\", predictor_path = \"" << args.out << "\"" << std::endl;
  return kExitOk;
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

    if (args.exit_predictor) return fit_exit_predictor_command(args, model, config, train_tokens, eval_tokens, registry);

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
