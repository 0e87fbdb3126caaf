#include "core/dynamics.h"

#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/optimization.h"

namespace mhd {

UnifiedDynamics::UnifiedDynamics(const DynamicsOptions& options, std::shared_ptr<Backbone> block,
                                 std::shared_ptr<Memory> memory,
                                 std::vector<std::shared_ptr<Optimization>> optimizations)
    : options_(options), block_(std::move(block)), memory_(std::move(memory)), optimizations_(std::move(optimizations)) {
  if (!block_) throw Error("unified dynamics needs a backbone block");
  if (options_.use_memory && !memory_) throw Error("unified dynamics: use_memory is on but no memory was given");
  const auto D = options_.d_model;
  register_module("block", block_);
  if (memory_) register_module("memory", memory_);
  W_q_ = register_module("W_q", torch::nn::Linear(D, D));
  W_g_ = register_module("W_g", torch::nn::Linear(2 * D, D));
  W_out_ = register_module("W_out", torch::nn::Linear(D, D));
  if (options_.state_norm == StateNorm::LayerNorm)
    state_norm_ = register_module("state_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  // A small W_out keeps f close to the identity at the start, where every solver converges at once;
  // training grows it.
  torch::NoGradGuard no_grad;
  W_out_->weight.mul_(options_.out_init_scale);
  W_out_->bias.zero_();
}

torch::Tensor UnifiedDynamics::linear(const std::string& name, const torch::nn::Linear& layer, const torch::Tensor& x) {
  torch::Tensor weight = layer->weight;
  for (const auto& opt : optimizations_) weight = opt->reparametrize_weight(name, weight);
  return at::linear(x, weight, layer->bias);
}

torch::Tensor UnifiedDynamics::memory_energy(const torch::Tensor& z) {
  return retrieving() ? memory_->energy(query(z)) : at::zeros({z.size(0)}, z.options());
}

torch::Tensor UnifiedDynamics::memory_energy_gradient(const torch::Tensor& z) {
  // dE_mem/dz with a graph when the caller trains through it (z carries a graph), detached otherwise
  // (inside a solve, under NoGradGuard, where only the value is traced).
  const bool train_through = at::GradMode::is_enabled() && z.requires_grad();
  torch::AutoGradMode enable(true);
  auto zz = train_through ? z : z.detach().requires_grad_(true);
  auto energy = memory_energy(zz).sum();
  if (!energy.requires_grad()) return at::zeros_like(z);  // memory off: E_mem is constant
  auto grad = torch::autograd::grad({energy}, {zz}, {}, /*retain_graph=*/true, /*create_graph=*/train_through)[0];
  return train_through ? grad : grad.detach();
}

RecurrentState UnifiedDynamics::prepare(const torch::Tensor& X) { return block_->forward_with_state(X).second; }

torch::Tensor UnifiedDynamics::query(const torch::Tensor& z) { return linear("W_q", W_q_, z); }

DynamicsComponents UnifiedDynamics::components(const torch::Tensor& z, const RecurrentState& context) {
  DynamicsComponents c;
  // The block sees tanh(z): a Mamba step grows like ||z||^3 in its input (the input, the step size
  // and the read-out are all linear in it), so one wild extrapolation of a solver would send the
  // iterates to infinity. tanh bounds the input with Lipschitz constant 1; LayerNorm, the other
  // candidate, is scale-invariant and amplifies small states (measured: solves stopped converging).
  c.mamba = block_->step(at::tanh(z), context).first;  // u: [B, D]
  c.memory = retrieving() ? memory_->retrieve(query(z)) : at::zeros_like(z);  // r: [B, D]
  auto gate_in = at::cat({c.mamba, c.memory}, 1);  // [B, 2D]
  auto pre = linear("W_g", W_g_, gate_in);
  c.gate = options_.gate == Gate::Sigmoid ? at::sigmoid(pre) : at::tanh(pre);
  auto blended = c.gate * c.mamba + (1 - c.gate) * c.memory;
  c.next = linear("W_out", W_out_, blended);
  if (options_.residual) c.next = z + c.next;
  if (state_norm_) c.next = state_norm_->forward(c.next);
  return c;
}

torch::Tensor UnifiedDynamics::forward(const torch::Tensor& z, const RecurrentState& context) {
  return components(z, context).next;
}

TensorMap UnifiedDynamics::solver_map(const RecurrentState& context) {
  TensorMap f = [this, context](const at::Tensor& z) { return forward(z, context); };
  for (const auto& opt : optimizations_) f = opt->wrap_dynamics(f);
  return f;
}

EnergyComponents UnifiedDynamics::energy(const torch::Tensor& z, const RecurrentState& context) {
  EnergyComponents e;
  const auto f = solver_map(context);
  e.memory = memory_energy(z);
  e.consistency = options_.alpha * (z - f(z)).pow(2).sum(1);
  e.l2 = options_.lambda_l2 * z.pow(2).sum(1);
  e.smooth = options_.lambda_smooth > 0 ? options_.lambda_smooth * memory_energy_gradient(z).pow(2).sum(1)
                                        : at::zeros({z.size(0)}, z.options());
  e.extra = at::zeros({z.size(0)}, z.options());
  for (const auto& opt : optimizations_) {
    auto term = opt->extra_energy(z);
    if (term.defined()) e.extra = e.extra + term;
  }
  e.total = e.memory + e.consistency + e.l2 + e.smooth + e.extra;
  return e;
}

torch::Tensor UnifiedDynamics::grad_energy(const torch::Tensor& z, const RecurrentState& context) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto total = energy(zz, context).total.sum();
  return torch::autograd::grad({total}, {zz})[0].detach();
}

}  // namespace mhd
