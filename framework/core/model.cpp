#include "core/model.h"

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "core/implicit.h"
#include "mhd/memory.h"
#include "mhd/optimization.h"
#include "plugin_host/registry.h"

namespace mhd {

UnifiedModel::UnifiedModel(const ModelOptions& options, PluginRegistry& registry) {
  options.validate();
  const std::int64_t D = options.d_model;
  const ModelDims dims{D, options.vocab_size};
  deq_ = options.deq;
  energy_on_ = options.energy;
  backward_mode_ = options.backward_mode;
  phantom_steps_ = options.phantom_steps;
  phantom_damping_ = options.phantom_damping;
  forward_limits_ = options.forward_limits;
  warm_start_ = options.warm_start;
  memory_writes_ = options.memory_writes;
  write_threshold_ = options.write_threshold;
  backward_limits_ = options.backward_limits;

  embedding_ = register_module("embedding", torch::nn::Embedding(options.vocab_size, D));
  for (std::int64_t i = 0; i < options.n_layers; ++i) {
    layer_norms_.push_back(register_module("norm" + std::to_string(i), torch::nn::LayerNorm(
                                                                           torch::nn::LayerNormOptions({D}))));
    layers_.push_back(register_module("layer" + std::to_string(i),
                                      registry.make<mhd::Backbone>(options.backbone.plugin, options.backbone.params, dims)));
  }
  head_norm_ = register_module("head_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  head_ = register_module("head", torch::nn::Linear(D, options.vocab_size));
  if (!deq_) return;  // the backbone-only baseline has no dynamics, memory or solver

  for (const auto& opt : options.optimizations)
    optimizations_.push_back(registry.make<mhd::Optimization>(opt.plugin, opt.params));
  auto block = registry.make<mhd::Backbone>(options.backbone.plugin, options.backbone.params, dims);
  std::shared_ptr<Memory> memory;
  if (options.dynamics.use_memory) memory = registry.make<mhd::Memory>(options.memory.plugin, options.memory.params, dims);
  dynamics_ = register_module("dynamics", std::make_shared<UnifiedDynamics>(options.dynamics, block, memory, optimizations_));
  solver_ = registry.make<mhd::Solver>(options.solver.plugin, options.solver.params);
  backward_solver_ = registry.make<mhd::Solver>(options.backward_solver.plugin, options.backward_solver.params);
}

torch::Tensor UnifiedModel::context(const torch::Tensor& tokens) {
  if (tokens.dim() != 2) throw Error("model input must be [B, L] token ids, got " + std::to_string(tokens.dim()) + " dims");
  auto x = embedding_->forward(tokens);  // [B, L, D]
  for (std::size_t i = 0; i < layers_.size(); ++i) x = x + layers_[i]->forward(layer_norms_[i]->forward(x));
  return x;
}

torch::Tensor UnifiedModel::head(const torch::Tensor& H, const torch::Tensor& scored) {
  if (!scored.defined()) return head_->forward(head_norm_->forward(H));  // [B, L, V]
  if (scored.sizes() != H.sizes().slice(0, 2))
    throw Error("model: the scored mask must be [B, L] like the tokens");
  auto rows = H.reshape({-1, H.size(2)}).index({scored.reshape({-1})});  // [N, D]
  return head_->forward(head_norm_->forward(rows));                     // [N, V]
}

ModelOutput UnifiedModel::forward(const torch::Tensor& tokens, bool observe, const torch::Tensor& scored) {
  commit_memory_writes();  // a caller that did not commit after its last step
  ModelOutput out;
  auto X = context(tokens);  // [B, L, D]
  if (!deq_) {
    out.logits = head(X, scored);
    return out;
  }
  out.context = dynamics_->prepare(X);
  out.z0 = dynamics_->initial_state(out.context, X).detach();  // [B, P * D]
  // The optimizations' context summary: X averaged over positions. X[:, -1] alone is mostly the last
  // token's embedding (sequences ending in the same token got keys with cosine > 0.999). It only
  // chooses a warm start, so reading every position moves Z* by at most the solver tolerance.
  out.key = X.mean(1).detach();  // [B, D]
  const TensorMap f = dynamics_->solver_map(out.context);

  at::Tensor start = out.z0;
  torch::Tensor& previous = is_training() ? last_train_z_ : last_eval_z_;
  if (warm_start_ && previous.defined() && previous.sizes() == start.sizes()) {
    start = previous;
    out.warm_started = true;
  }
  for (const auto& opt : optimizations_)
    if (auto warm = opt->warm_start(out.key); warm && warm->sizes() == start.sizes()) start = *warm;
  // The memory's read set is fixed from the first iterate until the equilibrium's graph and energy
  // are built (Memory::begin_solve; docs/design.md §3, "Memory at scale").
  const SolveScope solve_scope(*dynamics_, start);

  // The map this solve iterates: f with each optimization's per-solve wrapping (docs/design.md §3);
  // everything after the solve (the backward's f(z*), the energy, probes) uses f itself.
  TensorMap solve_map = f;
  for (const auto& opt : optimizations_) solve_map = opt->wrap_solve(solve_map, forward_limits_);

  if (backward_mode_ != BackwardMode::Unrolled) {
    FixedPointProblem problem;
    problem.f = solve_map;
    problem.context = dynamics_->position_inputs(out.context, X);  // [B, P, D]
    if (energy_on_) {
      problem.energy = [&](const at::Tensor& z) { return dynamics_->energy(z, out.context).total; };
      problem.grad_energy = [&](const at::Tensor& z) { return dynamics_->grad_energy(z, out.context); };
    }
    SolveResult solved;
    {
      torch::NoGradGuard no_grad;
      solved = solver_->solve(problem, start, forward_limits_);
    }
    out.forward_info = solved.info;
    out.z_star = backward_mode_ == BackwardMode::Implicit
                     ? implicit_equilibrium(f, solved.z, *backward_solver_, backward_limits_, out.backward_info)
                     : phantom_equilibrium(f, solved.z, phantom_steps_, phantom_damping_);
  } else {
    SolveResult solved = unrolled_fixed_point(solve_map, start, forward_limits_);
    out.forward_info = solved.info;
    out.z_star = solved.z;
  }
  if (observe) {
    torch::NoGradGuard no_grad;
    for (const auto& opt : optimizations_) opt->on_equilibrium(f, out.z_star.detach(), out.key);
  }
  if (warm_start_) previous = out.z_star.detach();
  if (memory_writes_ && memory_enabled_ && is_training()) out.memory_writes = stage_novel_patterns(out.z_star.detach());
  if (energy_on_) out.energy = dynamics_->energy(out.z_star, out.context);
  // X + Z*: [B, L, D] (the pooled z*: [B, 1, D], broadcast over L)
  auto combined = X + out.z_star.view({X.size(0), out.context.positions(), X.size(2)});
  out.logits = head(combined, scored);
  return out;
}

std::int64_t UnifiedModel::stage_novel_patterns(const torch::Tensor& z_star) {
  // The original design's policy: store what the memory does not already hold. Queries W_q z* are stored, the
  // space retrieval compares against; outside autograd. One per sequence, its last position's: the
  // state that has read the whole sequence (every position's would flood the bank L times faster).
  torch::NoGradGuard no_grad;
  Memory& memory = *dynamics_->memory();
  const auto D = dynamics_->options().d_model;
  auto queries = dynamics_->query(z_star.narrow(1, z_star.size(1) - D, D));  // [B, D]
  auto novel = memory.max_similarity(queries).lt(write_threshold_);  // [B]
  pending_writes_ = queries.index({novel}).clone();                  // [N, D]
  return pending_writes_.size(0);
}

std::int64_t UnifiedModel::commit_memory_writes() {
  if (!pending_writes_.defined()) return 0;
  // Applied only now because the step's graph (the implicit backward's f, the energy) still holds
  // the bank: writing into it in place before backward would invalidate that graph.
  torch::NoGradGuard no_grad;
  auto patterns = std::move(pending_writes_);
  pending_writes_ = torch::Tensor();
  return patterns.size(0) > 0 ? dynamics_->memory()->write(patterns) : 0;
}

void UnifiedModel::set_memory_enabled(bool on) {
  memory_enabled_ = on;
  if (dynamics_) dynamics_->set_retrieval(on);
}

void UnifiedModel::reset_warm_start() {
  last_train_z_ = torch::Tensor();
  last_eval_z_ = torch::Tensor();
}

std::int64_t UnifiedModel::parameter_count() const {
  std::int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace mhd
