#include "train/trainer.h"
#include "train/metric_names.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include "train/checkpoint.h"
#include "train/divergence.h"
#include "train/scoring.h"
#include "train/trainer_state.h"
#include "distributed/data_parallel.h"
#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "mhd/memory.h"
#include "config/model_options.h"
#include "core/model.h"
#include "mhd/optimization.h"
#include "mhd/stopwatch.h"
#include "config/trial_config.h"
#include "tasks/task.h"
#include "os/resources.h"

namespace mhd {
namespace {

torch::Device resolve_device(const std::string& wanted) {
  if (wanted == "cuda" && !torch::cuda::is_available())
    throw Error("study.device = \"cuda\" but this LibTorch has no usable CUDA device; use \"auto\" or \"cpu\"");
  if (wanted == "cuda" || (wanted == "auto" && torch::cuda::is_available())) return torch::Device(torch::kCUDA);
  return torch::Device(torch::kCPU);
}

// ||f(z* + d) - f(z*)|| / ||d|| per sample with the graph kept, so the stability term can push
// the dynamics towards contraction (the original design's finite-difference estimate). [B]
at::Tensor finite_difference_lipschitz(const TensorMap& f, const at::Tensor& z_star) {
  auto z = z_star.detach();
  auto d = at::randn_like(z);
  d = 1e-2 * d / d.norm(2, {1}, true);
  return (f(z + d) - f(z)).norm(2, {1}) / d.norm(2, {1});
}

bool finite(const at::Tensor& t) { return !t.defined() || at::isfinite(t).all().item<bool>(); }

// torch's generator for training step s: SplitMix64 of (seed, s), so the random draws of step s
// (stability probes, Hutchinson vectors, ...) do not depend on the steps before it (exact resume).
std::uint64_t step_seed(std::int64_t seed, std::int64_t step) {
  std::uint64_t x = static_cast<std::uint64_t>(seed) * 0xD1B54A32D192ED03ull + static_cast<std::uint64_t>(step) +
                    0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Held-out batches of validation are eval_batch indices from here on, apart from the evaluation's
// (0 .. eval_batches - 1).
constexpr std::int64_t kValidationIndex = 1000000;

class TrialTrainer {
 public:
  TrialTrainer(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink, DataParallel* dp = nullptr,
               const TrainOptions& options = {})
      : dp_(dp), config_(config), registry_(registry), sink_(sink), options_(options),
        device_(resolve_device(config.run.text("device"))) {
    // The trial's peak resident memory counts from here, before the model and task are built (a
    // runner that trains several trials in one process would otherwise report the largest so far).
    reset_peak_resident();
    check_training_config(config);
    continual_tasks_ = config.train.integer("continual_tasks");
    torch::manual_seed(static_cast<std::uint64_t>(config.seed));
    task_ = make_task(config.task_kind, config.task, static_cast<std::uint64_t>(config.seed));
    model_ = std::make_shared<UnifiedModel>(model_options(config, task_->vocab_size()), registry);
    model_->to(device_);
    if (dp_) broadcast_initial_state();  // data parallel: every rank starts from rank 0's model
    const auto& t = config.train;
    optimizer_ = std::make_unique<torch::optim::AdamW>(
        model_->parameters(), torch::optim::AdamWOptions(t.real("lr")).weight_decay(t.real("weight_decay")));
  }

  TrainResult run(const std::function<void(const TrainProgress&)>& on_progress) {
    const auto& t = config_.train;
    const std::int64_t steps = t.integer("steps");
    const std::int64_t eval_every = t.integer("eval_every");
    const std::int64_t log_every = t.integer("log_every");
    const std::int64_t validate_every = t.integer("validate_every");
    const std::int64_t checkpoint_every = t.integer("checkpoint_every");
    if (continual_tasks_ > 0) task_->select_part(0, continual_tasks_);
    result_.parameter_count = model_->parameter_count();
    result_.chance_accuracy = task_->chance_accuracy();
    emit(0, metric::kParameterCount, static_cast<double>(result_.parameter_count));
    emit(0, metric::kChanceAccuracy, result_.chance_accuracy);
    const std::int64_t first_step = resume() + 1;

    TrainProgress progress;
    progress.steps = steps;
    const Stopwatch run_watch;
    for (std::int64_t step = first_step; step <= steps; ++step) {
      begin_step(step);
      if (!(dp_ ? train_step_data_parallel(step, progress) : train_step(step, progress))) return result_;
      const bool eval_now = (step == steps || (eval_every > 0 && step % eval_every == 0)) && !dp_follower();
      if (eval_now) {
        progress.accuracy = evaluate(step);
        progress.accuracy_step = step;
        if (sink_.flush) sink_.flush();
      }
      if (validate_every > 0 && step % validate_every == 0 && !dp_follower()) validate(step);
      if (continual_tasks_ > 0 && step == phase_end(phase_of(step)) && !dp_follower()) evaluate_every_part(step);
      if (checkpoint_every > 0 && step % checkpoint_every == 0 && !options_.checkpoint_path.empty() && !dp_follower())
        write_checkpoint(step);
      progress.step = step;
      progress.seconds_per_step = run_watch.seconds() / static_cast<double>(step - first_step + 1);
      if (on_progress && (eval_now || (log_every > 0 && step % log_every == 0))) on_progress(progress);
    }
    // Data parallel: the ranks' parameters must still be equal (0 up to the bits).
    if (dp_) emit(steps, metric::kDpParamDrift, dp_->max_difference_from_rank0(model_->parameters()));
    if (dp_follower()) return result_;  // data parallel: rank 0 evaluates, probes and reports
    if (steps == 0) evaluate(0);
    after_training(steps);
    // Once per trial, at the end: the peak since the trainer began (or, where the kernel refused the
    // reset, since the process started; docs/studies.md, "Reading results").
    emit(steps, metric::kPeakRssMb, peak_resident_mb());
    return result_;
  }

  // TrainOptions::after_training (the runner's probes) on the trained model. Its metrics go through
  // emit() so they are also among the TrainResult's final metrics; if it throws, the trial fails
  // with its message.
  void after_training(std::int64_t step) {
    if (!options_.after_training) return;
    MetricSink sink = sink_;
    sink.metric = [this](std::int64_t s, const std::string& name, double value) { emit(s, name, value); };
    try {
      model_->eval();
      torch::NoGradGuard no_grad;
      options_.after_training(TrainedModel{*model_, *task_, device_, sink, step});
    } catch (const std::exception& e) {
      result_.status = TrialStatus::Failed;
      result_.error = e.what();
    }
  }

 private:
  void emit(std::int64_t step, const std::string& name, double value) {
    if (dp_step_metrics_) return dp_step_metrics_->push_back({step, name, value});  // averaged at step end
    result_.first_metrics.emplace(name, value);
    result_.final_metrics[name] = value;
    if (sink_.metric) sink_.metric(step, name, value);
  }

  void emit_traces(std::int64_t step, const std::string& phase, const SolverInfo& info) {
    if (!sink_.trace) return;
    for (std::size_t i = 0; i < info.rel_trace.size(); ++i) {
      const double energy = i < info.energy_trace.size() ? info.energy_trace[i] : std::nan("");
      sink_.trace({step, phase, static_cast<std::int64_t>(i + 1), info.abs_trace[i], info.rel_trace[i], energy});
    }
  }

  void diverge(std::int64_t step, const std::string& what) { diverge_because(step, what + " became non-finite"); }
  void diverge_because(std::int64_t step, const std::string& reason) {
    result_.status = TrialStatus::Diverged;
    result_.diverged_step = step;
    result_.error = reason + " at step " + std::to_string(step);
    emit(step, metric::kDivergedStep, static_cast<double>(step));
  }

  // The original design's objective: task + energy * mean E(z*) + convergence * iterations / max_iter
  // + stability * relu(L_est - contraction_target) + jacobian * ||J_f(z*)||_F^2 / D; each weighted
  // term is logged as objective_<name> (only the terms whose weight is not zero).
  at::Tensor objective(std::int64_t step, const ModelOutput& out, const TaskScore& task) {
    const auto& w = config_.objective;
    at::Tensor loss = w.real("task") * task.loss;
    emit(step, metric::kObjectiveTask, loss.item<double>());
    if (!model_->deq_enabled()) return loss;
    auto add = [&](const std::string& name, const at::Tensor& term) {
      const double weight = w.real(name);
      if (weight == 0) return;
      loss = loss + weight * term;
      emit(step, metric::kObjectivePrefix + name, weight * term.item<double>());
    };
    if (out.energy.total.defined()) add("energy", out.energy.total.mean());
    // Iterations carry no gradient; the term is there so the objective's value is the original design's one.
    const double convergence = static_cast<double>(out.forward_info.iterations) /
                               static_cast<double>(model_->forward_limits().max_iter);
    emit(step, metric::kConvergenceTerm, convergence);
    add("convergence", at::scalar_tensor(convergence, loss.options()));
    const TensorMap f = model_->dynamics().solver_map(out.context);
    // The terms below evaluate f near z*: with the memory's read set fixed at z*'s queries, so that a
    // sparse memory's candidates do not switch between f(z*) and f(z* + d) (docs/design.md §3).
    const SolveScope near_equilibrium(model_->dynamics(), out.z_star.detach());
    if (w.real("stability") != 0) {
      // power_iteration: ||J_f(z*)||_2 with its gradient through u^T J v (jacobian.h); the finite
      // difference only bounds it from below along one random direction.
      const bool power = w.text("lipschitz") == "power_iteration";
      auto lipschitz = power ? jacobian_spectral_norm_trainable(f, out.z_star.detach(), w.integer("lipschitz_iterations")).mean()
                             : finite_difference_lipschitz(f, out.z_star).mean();
      emit(step, power ? "lipschitz_power" : "lipschitz_fd", lipschitz.item<double>());
      add("stability", at::relu(lipschitz - w.real("contraction_target")));
    }
    if (w.real("jacobian") != 0) {
      auto frobenius = hutchinson_jacobian_frobenius(f, out.z_star.detach()).mean() / out.z_star.size(1);
      emit(step, metric::kJacobianFro2, frobenius.item<double>());
      add("jacobian", frobenius);
    }
    // Optimizations' own terms (docs/design.md §3), weighted by their parameters; logged as their sum.
    const TensorMap energy = [&](const at::Tensor& z) { return model_->dynamics().energy(z, out.context).total; };
    std::optional<double> terms;
    for (const auto& opt : model_->optimizations()) {
      const at::Tensor term = opt->objective_term(energy, out.z_star);
      if (!term.defined()) continue;
      loss = loss + term;
      terms = terms.value_or(0.0) + term.item<double>();
    }
    if (terms) emit(step, std::string(metric::kObjectivePrefix) + "optimizations", *terms);
    return loss;
  }

  bool train_step(std::int64_t step, TrainProgress& progress) {
    const Stopwatch step_watch;
    model_->train();
    Batch batch = task_->train_batch(config_.train.integer("batch"));
    if (dp_) batch = {dp_->slice_rows(batch.inputs), dp_->slice_rows(batch.targets)};  // this rank's rows
    auto inputs = batch.inputs.to(device_);
    auto targets = batch.targets.to(device_);

    auto [out, task] = forward_scored(*model_, inputs, targets);
    // Data parallel: this slice's mean becomes its share of the global batch's mean (exact average).
    if (dp_) task.loss = task.loss * dp_->mean_share((targets != kIgnoreIndex).sum().item<double>());
    at::Tensor loss = objective(step, out, task);
    if (any_rank(!finite(loss) || !finite(out.z_star))) {
      diverge(step, !finite(out.z_star) ? "the equilibrium z*" : "the loss");
      return false;
    }
    optimizer_->zero_grad();
    loss.backward();
    if (dp_) dp_->average_gradients(model_->parameters());  // = the global batch's gradient
    // A non-finite gradient (e.g. a backward solve that blew up on one batch) skips the update, as
    // mixed-precision loss scaling does; only a run of them in a row counts as divergence.
    const double clip = config_.train.real("grad_clip");
    const double norm = torch::nn::utils::clip_grad_norm_(model_->parameters(),
                                                          clip > 0 ? clip : std::numeric_limits<double>::infinity());
    emit(step, metric::kGradNorm, norm);
    if (std::isfinite(norm)) {
      optimizer_->step();
      skipped_in_a_row_ = 0;
    } else {
      optimizer_->zero_grad();
      emit(step, metric::kSkippedStep, 1.0);
      if (++skipped_in_a_row_ >= kMaxSkippedInARow) {
        diverge(step, "the gradient (" + std::to_string(kMaxSkippedInARow) + " steps in a row)");
        return false;
      }
    }
    model_->commit_memory_writes();  // after backward: the step's graph no longer needs the bank

    emit(step, metric::kLoss, loss.item<double>());
    emit(step, metric::kTaskLoss, task.loss.item<double>());
    emit(step, metric::kTrainAccuracy, task.accuracy);
    if (model_->deq_enabled()) log_equilibrium(step, out);
    const double ms = step_watch.ms();
    emit(step, metric::kStepMs, ms);

    progress.loss = loss.item<double>();
    progress.solver_iters = static_cast<double>(out.forward_info.iterations);
    progress.rel_residual = out.forward_info.rel_trace.empty() ? 0.0 : out.forward_info.rel_trace.back();
    return !finite_blow_up(step, progress.loss, out.forward_info.abs_trace);
  }

  // A finite loss far above its running level, or residuals that explode (train/divergence.h);
  // every rank takes the same branch.
  bool finite_blow_up(std::int64_t step, double loss, const std::vector<double>& abs_trace) {
    const auto why = divergence_.observe(step, loss, abs_trace.empty() ? std::nullopt : std::optional(abs_trace.back()));
    if (!any_rank(why.has_value())) return false;
    diverge_because(step, why ? *why : "another rank's loss or residual blew up");
    return true;
  }

  void log_equilibrium(std::int64_t step, const ModelOutput& out) {
    const auto& info = out.forward_info;
    emit(step, metric::kSolverIters, static_cast<double>(info.iterations));
    emit(step, metric::kSolverFEvals, static_cast<double>(info.f_evals));
    emit(step, metric::kConverged, info.converged ? 1.0 : 0.0);
    emit(step, metric::kWarmStarted, out.warm_started ? 1.0 : 0.0);
    if (out.memory_writes >= 0) emit(step, metric::kMemoryWrites, static_cast<double>(out.memory_writes));
    converged_solves_ += info.converged ? 1 : 0;
    // Share of training steps so far whose forward solve reached tol: the trial's convergence rate.
    emit(step, metric::kConvergedShare, static_cast<double>(converged_solves_) / static_cast<double>(step));
    if (!info.abs_trace.empty()) {
      emit(step, metric::kAbsResidual, info.abs_trace.back());
      emit(step, metric::kRelResidual, info.rel_trace.back());
    }
    emit(step, metric::kSolverMs, info.wall_ms);
    for (const auto& [name, value] : info.extra) emit(step, name, value);
    if (out.energy.total.defined()) {
      emit(step, metric::kEnergy, out.energy.total.mean().item<double>());
      emit(step, metric::kEnergyMemory, out.energy.memory.mean().item<double>());
      emit(step, metric::kEnergyConsistency, out.energy.consistency.mean().item<double>());
      emit(step, metric::kEnergyL2, out.energy.l2.mean().item<double>());
      emit(step, metric::kEnergySmooth, out.energy.smooth.mean().item<double>());
    }
    const auto& back = *out.backward_info;
    if (back.iterations > 0) {
      emit(step, metric::kBackwardIters, static_cast<double>(back.iterations));
      emit(step, metric::kBackwardRelResidual, back.rel_trace.back());
    }
    const std::int64_t every = config_.train.integer("trace_every");
    if (every > 0 && step % every == 0) {
      emit_traces(step, "forward", info);
      emit_traces(step, "backward", back);
    }
  }

  double evaluate(std::int64_t step) {
    model_->eval();
    torch::NoGradGuard no_grad;
    TargetLimits target(*model_, config_);
    const std::int64_t batches = config_.train.integer("eval_batches");
    double loss = 0, accuracy = 0, iters = 0;
    for (std::int64_t i = 0; i < batches; ++i) {
      Batch batch = task_->eval_batch(config_.train.integer("batch"), i);
      auto [out, s] = forward_scored(*model_, batch.inputs.to(device_), batch.targets.to(device_), /*observe=*/i == 0);
      loss += s.loss.item<double>();
      accuracy += s.accuracy;
      iters += static_cast<double>(out.forward_info.iterations);
      if (i == 0 && model_->deq_enabled()) {
        UnifiedDynamics& dynamics = model_->dynamics();
        if (auto* memory = dynamics.memory(); memory && dynamics.retrieving() && dynamics.reads_bank())
          for (const auto& [name, value] : memory->stats(dynamics.query_rows(out.z_star.detach())))
            emit(step, std::string(metric::kMemoryPrefix) + name, value);
        for (const auto& opt : model_->optimizations())
          for (const auto& [name, value] : opt->metrics()) emit(step, name, value);
      }
    }
    const double n = static_cast<double>(batches);
    emit(step, metric::kEvalLoss, loss / n);
    emit(step, metric::kEvalAccuracy, accuracy / n);
    if (model_->deq_enabled()) emit(step, metric::kEvalSolverIters, iters / n);
    return accuracy / n;
  }

  // --- curriculum, validation, continual learning, checkpoints ---

  // Evaluation and validation solve with the [solver] limits, whatever the curriculum's are now:
  // they measure the model as it will be used. Restores the training limits when it goes.
  struct TargetLimits {
    TargetLimits(UnifiedModel& model, const TrialConfig& config) : model_(model), saved_(model.forward_limits()) {
      model.set_forward_limits({config.solve.integer("max_iter"), config.solve.real("tol")});
    }
    ~TargetLimits() { model_.set_forward_limits(saved_); }
    UnifiedModel& model_;
    SolveLimits saved_;
  };

  // Everything random or scheduled at step s is set from (seed, s) alone, so a trial resumed at s
  // draws what an uninterrupted one would.
  void begin_step(std::int64_t step) {
    torch::manual_seed(step_seed(config_.seed, step));
    if (continual_tasks_ > 0) task_->select_part(phase_of(step), continual_tasks_);
    task_->seek(step);
    const CurriculumValues c = curriculum_at(config_, step);
    for (auto& group : optimizer_->param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(c.lr);
    emit(step, metric::kLr, c.lr);
    if (!model_->deq_enabled()) return;
    model_->set_forward_limits({c.max_iter, c.tol});
    emit(step, metric::kSolverMaxIter, static_cast<double>(c.max_iter));
    emit(step, metric::kSolverTol, c.tol);
    if (model_->dynamics().memory() == nullptr) return;
    model_->set_memory_enabled(c.memory_enabled);
    emit(step, metric::kMemoryEnabled, c.memory_enabled ? 1.0 : 0.0);
  }

  // The original design's validation: held-out batches, one forward solve each; the share of solves that
  // reached tol and the distribution of their iterations.
  void validate(std::int64_t step) {
    model_->eval();
    torch::NoGradGuard no_grad;
    TargetLimits target(*model_, config_);
    const std::int64_t batches = config_.train.integer("validate_batches");
    double loss = 0, accuracy = 0, converged = 0;
    std::vector<double> iterations;
    for (std::int64_t i = 0; i < batches; ++i) {
      Batch batch = task_->eval_batch(config_.train.integer("batch"), kValidationIndex + i);
      auto [out, s] = forward_scored(*model_, batch.inputs.to(device_), batch.targets.to(device_));
      loss += s.loss.item<double>();
      accuracy += s.accuracy;
      converged += out.forward_info.converged ? 1 : 0;
      iterations.push_back(static_cast<double>(out.forward_info.iterations));
    }
    const double n = static_cast<double>(batches);
    emit(step, metric::kValLoss, loss / n);
    emit(step, metric::kValAccuracy, accuracy / n);
    if (!model_->deq_enabled()) return;
    const IterationStats stats = iteration_stats(iterations);
    emit(step, metric::kValConvergenceRate, converged / n);
    emit(step, metric::kValItersMean, stats.mean);
    emit(step, metric::kValItersMedian, stats.median);
    emit(step, metric::kValItersMax, stats.max);
  }

  // Continual learning: part k is trained during steps (k * P, (k + 1) * P] with P = steps / K,
  // the last part also taking the remainder.
  std::int64_t phase_of(std::int64_t step) const {
    const std::int64_t per = config_.train.integer("steps") / continual_tasks_;
    return std::min(continual_tasks_ - 1, (step - 1) / per);
  }
  std::int64_t phase_end(std::int64_t phase) const {
    return phase == continual_tasks_ - 1 ? config_.train.integer("steps")
                                          : (phase + 1) * (config_.train.integer("steps") / continual_tasks_);
  }

  // After part i: accuracy on every part j on held-out batches -> A[i][j], stored as the probe
  // "continual" points and as metrics continual_acc_task<j>; after the last, the forgetting.
  void evaluate_every_part(std::int64_t step) {
    const std::int64_t i = phase_of(step);
    std::vector<double> row;
    {
      model_->eval();
      torch::NoGradGuard no_grad;
      TargetLimits target(*model_, config_);
      const std::int64_t batches = config_.train.integer("eval_batches");
      for (std::int64_t j = 0; j < continual_tasks_; ++j) {
        task_->select_part(j, continual_tasks_);
        double accuracy = 0;
        for (std::int64_t b = 0; b < batches; ++b) {
          Batch batch = task_->eval_batch(config_.train.integer("batch"), b);
          accuracy += forward_scored(*model_, batch.inputs.to(device_), batch.targets.to(device_)).task.accuracy;
        }
        row.push_back(accuracy / static_cast<double>(batches));
      }
      task_->select_part(i, continual_tasks_);
    }
    accuracy_matrix_.push_back(row);
    for (std::int64_t j = 0; j < continual_tasks_; ++j) {
      emit(step, metric::kContinualAccuracyPrefix + std::to_string(j), row[j]);
      if (sink_.point) sink_.point({"continual", "accuracy_matrix", i, j, std::nan(""), std::nan(""), row[j]});
    }
    if (i == continual_tasks_ - 1 && static_cast<std::int64_t>(accuracy_matrix_.size()) == continual_tasks_) {
      emit(step, metric::kContinualForgetting, average_forgetting(accuracy_matrix_));
      emit(step, metric::kContinualAvgAccuracy, average_final_accuracy(accuracy_matrix_));
    }
    if (sink_.flush) sink_.flush();
  }

  TrainerState trainer_state(std::int64_t step) const {
    return {step, converged_solves_, skipped_in_a_row_, accuracy_matrix_};
  }

  // The trainer's record first, then the checkpoint: a kill between the two leaves the previous
  // checkpoint, whose record is kept as the file's first line.
  void write_checkpoint(std::int64_t step) {
    // The results rows up to this step are persisted before the checkpoint exists: a run continued
    // from it (mhd run --resume deletes the rows after its step) then lacks none of the steps it covers.
    emit(step, metric::kCheckpointStep, static_cast<double>(step));
    if (sink_.flush) sink_.flush();
    const std::string record = trainer_state(step).record();
    write_trainer_state(options_.checkpoint_path, last_state_record_, record);
    save_checkpoint(options_.checkpoint_path, config_, step, *model_, optimizer_.get());
    last_state_record_ = record;
  }

  // With TrainOptions::resume and an existing checkpoint: restores it and returns its step (0 otherwise).
  std::int64_t resume() {
    if (!options_.resume || options_.checkpoint_path.empty() || !std::filesystem::exists(options_.checkpoint_path))
      return 0;
    const std::int64_t step = load_checkpoint(options_.checkpoint_path, *model_, optimizer_.get(), &config_);
    const TrainerState state = read_trainer_state(options_.checkpoint_path, step);
    converged_solves_ = state.converged_solves;
    skipped_in_a_row_ = static_cast<int>(state.skipped_in_a_row);
    accuracy_matrix_ = state.accuracy_matrix;
    last_state_record_ = state.record();
    result_.resumed_from_step = step;
    emit(step, metric::kResumedFromStep, static_cast<double>(step));
    return step;
  }

  // --- data parallel (data_parallel.h; nullptr when train.world_size is 1) ---
  bool dp_follower() const { return dp_ && dp_->rank() > 0; }
  bool any_rank(bool flag) { return dp_ ? dp_->any(flag) : flag; }  // every rank takes the same branch

  void broadcast_initial_state() {
    auto state = model_->parameters();
    for (const auto& buffer : model_->buffers()) state.push_back(buffer);
    dp_->broadcast_from_rank0(state);
  }

  // One step whose metrics are means over the ranks (loss and task_loss: exactly the global batch's).
  bool train_step_data_parallel(std::int64_t step, TrainProgress& progress) {
    dp_step_metrics_.emplace();
    const bool ok = train_step(step, progress);
    auto pending = std::move(*dp_step_metrics_);
    dp_step_metrics_.reset();
    std::vector<double> values;
    for (const auto& m : pending) values.push_back(m.value);
    dp_->mean_over_ranks(values);  // left as this rank's values if the ranks logged different metrics
    for (std::size_t i = 0; i < pending.size(); ++i) {
      emit(pending[i].step, pending[i].name, values[i]);
      if (pending[i].name == "loss") progress.loss = values[i];
    }
    return ok;
  }

  struct PendingMetric {
    std::int64_t step;
    std::string name;
    double value;
  };
  DataParallel* dp_ = nullptr;
  std::optional<std::vector<PendingMetric>> dp_step_metrics_;

  const TrialConfig& config_;
  PluginRegistry& registry_;  // for probes
  const MetricSink& sink_;
  TrainOptions options_;
  std::int64_t continual_tasks_ = 0;
  std::vector<std::vector<double>> accuracy_matrix_;  // continual: A[i][j] rows so far
  std::string last_state_record_;                    // the trainer record of the last checkpoint
  torch::Device device_;
  std::unique_ptr<Task> task_;
  std::shared_ptr<UnifiedModel> model_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  TrainResult result_;
  DivergenceMonitor divergence_{DivergenceOptions::from(config_)};
  static constexpr int kMaxSkippedInARow = 10;
  int skipped_in_a_row_ = 0;
  std::int64_t converged_solves_ = 0;
};

}  // namespace

TrainResult train_trial(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink,
                        const std::function<void(const TrainProgress&)>& on_progress, const TrainOptions& options) {
  // Data parallel (train.world_size > 1): join the trial's group; rank 0 starts the other ranks.
  auto group = join_trial_group(config, registry, resolve_device(config.run.text("device")));
  TrialTrainer trainer(config, registry, sink, group ? &group->dp() : nullptr, options);
  TrainResult result = trainer.run(on_progress);
  if (group) {
    const std::string why = group->finish();
    if (!why.empty() && result.status == TrialStatus::Done) {
      result.status = TrialStatus::Failed;
      result.error = why;
    }
  }
  return result;
}

}  // namespace mhd
