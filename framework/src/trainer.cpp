#include "mhd/trainer.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include "mhd/error.h"
#include "mhd/jacobian.h"
#include "mhd/memory.h"
#include "mhd/model.h"
#include "mhd/optimization.h"
#include "mhd/probe.h"
#include "mhd/study.h"
#include "mhd/task.h"

namespace mhd {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

torch::Device resolve_device(const std::string& wanted) {
  if (wanted == "cuda" && !torch::cuda::is_available())
    throw Error("study.device = \"cuda\" but this LibTorch has no usable CUDA device; use \"auto\" or \"cpu\"");
  if (wanted == "cuda" || (wanted == "auto" && torch::cuda::is_available())) return torch::Device(torch::kCUDA);
  return torch::Device(torch::kCPU);
}

// Cross-entropy over labelled positions and the share of them predicted right.
struct TaskScore {
  at::Tensor loss;  // scalar, with graph
  double accuracy = 0;
};

TaskScore score(const at::Tensor& logits, const at::Tensor& targets) {
  // logits: [B, L, V], targets: [B, L]
  const auto V = logits.size(2);
  auto flat_logits = logits.reshape({-1, V});
  auto flat_targets = targets.reshape({-1});
  TaskScore s;
  s.loss = at::cross_entropy_loss(flat_logits, flat_targets, {}, at::Reduction::Mean, kIgnoreIndex);
  auto labelled = flat_targets != kIgnoreIndex;
  const auto n = labelled.sum().item<double>();
  auto right = (flat_logits.argmax(1) == flat_targets).logical_and(labelled).sum().item<double>();
  s.accuracy = n > 0 ? right / n : 0.0;
  return s;
}

// ||f(z* + d) - f(z*)|| / ||d|| per sample with the graph kept, so the stability term can push
// the dynamics towards contraction (the seeds' finite-difference estimate). [B]
at::Tensor finite_difference_lipschitz(const TensorMap& f, const at::Tensor& z_star) {
  auto z = z_star.detach();
  auto d = at::randn_like(z);
  d = 1e-2 * d / d.norm(2, {1}, true);
  return (f(z + d) - f(z)).norm(2, {1}) / d.norm(2, {1});
}

bool finite(const at::Tensor& t) { return !t.defined() || at::isfinite(t).all().item<bool>(); }

class TrialTrainer {
 public:
  TrialTrainer(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink)
      : config_(config), registry_(registry), sink_(sink), device_(resolve_device(config.run.text("device"))) {
    torch::manual_seed(static_cast<std::uint64_t>(config.seed));
    task_ = make_task(config.task_kind, config.task, static_cast<std::uint64_t>(config.seed));
    model_ = std::make_shared<UnifiedModel>(config, registry, task_->vocab_size());
    model_->to(device_);
    const auto& t = config.train;
    optimizer_ = std::make_unique<torch::optim::AdamW>(
        model_->parameters(), torch::optim::AdamWOptions(t.real("lr")).weight_decay(t.real("weight_decay")));
  }

  TrainResult run(const std::function<void(const TrainProgress&)>& on_progress) {
    const auto& t = config_.train;
    const std::int64_t steps = t.integer("steps");
    const std::int64_t eval_every = t.integer("eval_every");
    const std::int64_t log_every = t.integer("log_every");
    result_.parameter_count = model_->parameter_count();
    result_.chance_accuracy = task_->chance_accuracy();
    emit(0, "parameter_count", static_cast<double>(result_.parameter_count));
    emit(0, "chance_accuracy", result_.chance_accuracy);

    TrainProgress progress;
    progress.steps = steps;
    const auto start = Clock::now();
    for (std::int64_t step = 1; step <= steps; ++step) {
      if (!train_step(step, progress)) return result_;
      const bool eval_now = step == steps || (eval_every > 0 && step % eval_every == 0);
      if (eval_now) {
        progress.accuracy = evaluate(step);
        if (sink_.flush) sink_.flush();
      }
      progress.step = step;
      progress.seconds_per_step = seconds_since(start) / static_cast<double>(step);
      if (on_progress && (eval_now || (log_every > 0 && step % log_every == 0))) on_progress(progress);
    }
    if (steps == 0) evaluate(0);
    run_trial_probes(steps);
    return result_;
  }

  // --- probes (probe.h, issue 3): measurements of the trained model after the last step ---
  // Their metrics go through emit() so they are also among the TrainResult's final metrics; a
  // probe that throws fails the trial ("probe NAME: message").
  void run_trial_probes(std::int64_t step) {
    if (config_.probes.empty()) return;
    MetricSink probe_sink = sink_;
    probe_sink.metric = [this](std::int64_t s, const std::string& name, double value) { emit(s, name, value); };
    try {
      run_probes(config_, registry_, *model_, *task_, device_, probe_sink, step);
    } catch (const std::exception& e) {
      result_.status = TrialStatus::Failed;
      result_.error = e.what();
    }
  }

 private:
  void emit(std::int64_t step, const std::string& name, double value) {
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

  void diverge(std::int64_t step, const std::string& what) {
    result_.status = TrialStatus::Diverged;
    result_.diverged_step = step;
    result_.error = what + " became non-finite at step " + std::to_string(step);
    emit(step, "diverged_step", static_cast<double>(step));
  }

  // The seeds' objective: task + energy * mean E(z*) + convergence * iterations / max_iter
  // + stability * relu(L_fd - contraction_target) + jacobian * ||J_f(z*)||_F^2 / D; each weighted
  // term is logged as objective_<name> (only the terms whose weight is not zero).
  at::Tensor objective(std::int64_t step, const ModelOutput& out, const TaskScore& task) {
    const auto& w = config_.objective;
    at::Tensor loss = w.real("task") * task.loss;
    emit(step, "objective_task", loss.item<double>());
    if (!model_->deq_enabled()) return loss;
    auto add = [&](const std::string& name, const at::Tensor& term) {
      const double weight = w.real(name);
      if (weight == 0) return;
      loss = loss + weight * term;
      emit(step, "objective_" + name, weight * term.item<double>());
    };
    if (out.energy.total.defined()) add("energy", out.energy.total.mean());
    // Iterations carry no gradient; the term is there so the objective's value is the seeds' one.
    const double convergence = static_cast<double>(out.forward_info.iterations) /
                               static_cast<double>(model_->forward_limits().max_iter);
    emit(step, "convergence_term", convergence);
    add("convergence", at::scalar_tensor(convergence, loss.options()));
    const TensorMap f = model_->dynamics().solver_map(out.context);
    if (w.real("stability") != 0) {
      auto lipschitz = finite_difference_lipschitz(f, out.z_star).mean();
      emit(step, "lipschitz_fd", lipschitz.item<double>());
      add("stability", at::relu(lipschitz - w.real("contraction_target")));
    }
    if (w.real("jacobian") != 0) {
      auto frobenius = hutchinson_jacobian_frobenius(f, out.z_star.detach()).mean() / out.z_star.size(1);
      emit(step, "jacobian_fro2", frobenius.item<double>());
      add("jacobian", frobenius);
    }
    return loss;
  }

  bool train_step(std::int64_t step, TrainProgress& progress) {
    const auto step_start = Clock::now();
    model_->train();
    Batch batch = task_->train_batch(config_.train.integer("batch"));
    auto inputs = batch.inputs.to(device_);
    auto targets = batch.targets.to(device_);

    ModelOutput out = model_->forward(inputs);
    TaskScore task = score(out.logits, targets);
    at::Tensor loss = objective(step, out, task);
    if (!finite(loss) || !finite(out.z_star)) {
      diverge(step, !finite(out.z_star) ? "the equilibrium z*" : "the loss");
      return false;
    }
    optimizer_->zero_grad();
    loss.backward();
    // A non-finite gradient (e.g. a backward solve that blew up on one batch) skips the update, as
    // mixed-precision loss scaling does; only a run of them in a row counts as divergence.
    const double clip = config_.train.real("grad_clip");
    const double norm = torch::nn::utils::clip_grad_norm_(model_->parameters(),
                                                          clip > 0 ? clip : std::numeric_limits<double>::infinity());
    emit(step, "grad_norm", norm);
    if (std::isfinite(norm)) {
      optimizer_->step();
      skipped_in_a_row_ = 0;
    } else {
      optimizer_->zero_grad();
      emit(step, "skipped_step", 1.0);
      if (++skipped_in_a_row_ >= kMaxSkippedInARow) {
        diverge(step, "the gradient (" + std::to_string(kMaxSkippedInARow) + " steps in a row)");
        return false;
      }
    }

    emit(step, "loss", loss.item<double>());
    emit(step, "task_loss", task.loss.item<double>());
    emit(step, "train_accuracy", task.accuracy);
    if (model_->deq_enabled()) log_equilibrium(step, out);
    const double ms = 1e3 * seconds_since(step_start);
    emit(step, "step_ms", ms);

    progress.loss = loss.item<double>();
    progress.solver_iters = static_cast<double>(out.forward_info.iterations);
    progress.rel_residual = out.forward_info.rel_trace.empty() ? 0.0 : out.forward_info.rel_trace.back();
    return true;
  }

  void log_equilibrium(std::int64_t step, const ModelOutput& out) {
    const auto& info = out.forward_info;
    emit(step, "solver_iters", static_cast<double>(info.iterations));
    emit(step, "solver_f_evals", static_cast<double>(info.f_evals));
    emit(step, "converged", info.converged ? 1.0 : 0.0);
    emit(step, "warm_started", out.warm_started ? 1.0 : 0.0);
    if (out.memory_writes >= 0) emit(step, "memory_writes", static_cast<double>(out.memory_writes));
    converged_solves_ += info.converged ? 1 : 0;
    // Share of training steps so far whose forward solve reached tol: the trial's convergence rate.
    emit(step, "converged_share", static_cast<double>(converged_solves_) / static_cast<double>(step));
    if (!info.abs_trace.empty()) {
      emit(step, "abs_residual", info.abs_trace.back());
      emit(step, "rel_residual", info.rel_trace.back());
    }
    emit(step, "solver_ms", info.wall_ms);
    for (const auto& [name, value] : info.extra) emit(step, name, value);
    if (out.energy.total.defined()) {
      emit(step, "energy", out.energy.total.mean().item<double>());
      emit(step, "energy_memory", out.energy.memory.mean().item<double>());
      emit(step, "energy_consistency", out.energy.consistency.mean().item<double>());
      emit(step, "energy_l2", out.energy.l2.mean().item<double>());
      emit(step, "energy_smooth", out.energy.smooth.mean().item<double>());
    }
    const auto& back = *out.backward_info;
    if (back.iterations > 0) {
      emit(step, "backward_iters", static_cast<double>(back.iterations));
      emit(step, "backward_rel_residual", back.rel_trace.back());
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
    const std::int64_t batches = config_.train.integer("eval_batches");
    double loss = 0, accuracy = 0, iters = 0;
    for (std::int64_t i = 0; i < batches; ++i) {
      Batch batch = task_->eval_batch(config_.train.integer("batch"), i);
      ModelOutput out = model_->forward(batch.inputs.to(device_), /*observe=*/i == 0);
      TaskScore s = score(out.logits, batch.targets.to(device_));
      loss += s.loss.item<double>();
      accuracy += s.accuracy;
      iters += static_cast<double>(out.forward_info.iterations);
      if (i == 0 && model_->deq_enabled()) {
        if (auto* memory = model_->dynamics().memory())
          for (const auto& [name, value] : memory->stats(model_->dynamics().query(out.z_star))) emit(step, "memory_" + name, value);
        for (const auto& opt : model_->optimizations())
          for (const auto& [name, value] : opt->metrics()) emit(step, name, value);
      }
    }
    const double n = static_cast<double>(batches);
    emit(step, "eval_loss", loss / n);
    emit(step, "eval_accuracy", accuracy / n);
    if (model_->deq_enabled()) emit(step, "eval_solver_iters", iters / n);
    return accuracy / n;
  }

  const TrialConfig& config_;
  PluginRegistry& registry_;  // for probes
  const MetricSink& sink_;
  torch::Device device_;
  std::unique_ptr<Task> task_;
  std::shared_ptr<UnifiedModel> model_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  TrainResult result_;
  static constexpr int kMaxSkippedInARow = 10;
  int skipped_in_a_row_ = 0;
  std::int64_t converged_solves_ = 0;
};

}  // namespace

TrainResult train_trial(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink,
                        const std::function<void(const TrainProgress&)>& on_progress) {
  TrialTrainer trainer(config, registry, sink);
  return trainer.run(on_progress);
}

}  // namespace mhd
