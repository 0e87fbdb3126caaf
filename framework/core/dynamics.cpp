#include "core/dynamics.h"

#include <ATen/TensorIndexing.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/optimization.h"

namespace mhd {
namespace {

torch::Tensor repeated(const torch::Tensor& t, std::int64_t sample, std::int64_t n) {
  if (!t.defined()) return t;
  std::vector<std::int64_t> sizes = t.sizes().vec();
  sizes[0] = n;
  return t.detach().narrow(0, sample, 1).expand(sizes).contiguous();
}

}  // namespace

SolveScope::SolveScope(UnifiedDynamics& dynamics, const torch::Tensor& start) {
  if (!dynamics.retrieving() || !dynamics.memory()) return;
  torch::NoGradGuard no_grad;
  dynamics.memory()->begin_solve(dynamics.query_rows(start.detach()));  // [B * P, D]
  memory_ = dynamics.memory();
}

SolveScope::~SolveScope() {
  if (!memory_) return;
  try {
    memory_->begin_solve(torch::Tensor());
  } catch (...) {
    // Ending a solve only drops what begin_solve fixed; a memory that throws here keeps it until
    // its next begin_solve, which replaces it.
  }
}

std::int64_t DynamicsContext::positions() const { return recurrent ? 1 : X.size(1); }

DynamicsContext DynamicsContext::repeated_row(std::int64_t sample, std::int64_t n) const {
  DynamicsContext c;
  c.recurrent = recurrent;
  c.X = repeated(X, sample, n);
  c.inject = repeated(inject, sample, n);
  for (const auto& t : block.tensors) c.block.tensors.push_back(repeated(t, sample, n));
  c.keys = repeated(keys, sample, n);
  c.values = repeated(values, sample, n);
  return c;
}

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
  if (options_.use_memory && reads_context()) {
    // Keys and values come from X, not Z: they are fixed for the whole solve (computed once, not per
    // iteration), a decoder appends exactly the ones the full forward uses, and the fixed point
    // couples positions only through the causal block (docs/design.md §4).
    W_k_ = register_module("W_k", torch::nn::Linear(D, D));
    W_v_ = register_module("W_v", torch::nn::Linear(D, D));
  }
  if (options_.state_norm == StateNorm::LayerNorm)
    state_norm_ = register_module("state_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({D})));
  torch::NoGradGuard no_grad;
  W_out_->weight.mul_(options_.out_init_scale);
  W_out_->bias.zero_();
}

torch::Tensor UnifiedDynamics::linear(const std::string& name, const torch::nn::Linear& layer, const torch::Tensor& x) {
  torch::Tensor weight = layer->weight;
  for (const auto& opt : optimizations_) weight = opt->reparametrize_weight(name, weight);
  return at::linear(x, weight, layer->bias);
}

torch::Tensor UnifiedDynamics::positions_of(const torch::Tensor& z, const DynamicsContext& context) const {
  return z.reshape({z.size(0), context.positions(), options_.d_model});  // [B, P, D]
}

torch::Tensor UnifiedDynamics::query(const torch::Tensor& z) { return linear("W_q", W_q_, z); }

torch::Tensor UnifiedDynamics::query_rows(const torch::Tensor& z) {
  return query(z.reshape({-1, options_.d_model}));  // [B * P, D]
}

DynamicsContext UnifiedDynamics::prepare(const torch::Tensor& X) {
  DynamicsContext c;
  if (options_.equilibrium == Equilibrium::Sequence) {
    c.X = X;
  } else {
    c.recurrent = true;
    c.block = block_->forward_with_state(X).second;
  }
  if (W_k_) {
    c.keys = context_keys(X);      // K: [B, L, D]
    c.values = context_values(X);  // V: [B, L, D]
  }
  return c;
}

// Keys and values lie on the unit sphere, the scale of a bank's patterns (N(0, 1/D) entries): raw
// projections of X have norm ~sqrt(D / 3), which made beta q.k saturate the softmax and the retrieval's
// Lipschitz constant in z ~ beta ||K|| ||V|| too large for a contraction (measured: the context source
// stalled at a relative residual of ~0.8 at d_model 64, L = 64).
torch::Tensor UnifiedDynamics::context_keys(const torch::Tensor& x) {
  const auto k = linear("W_k", W_k_, x);
  return k / k.norm(2, -1, true).clamp_min(1e-6);
}

torch::Tensor UnifiedDynamics::context_values(const torch::Tensor& x) {
  const auto v = linear("W_v", W_v_, x);
  return v / v.norm(2, -1, true).clamp_min(1e-6);
}

torch::Tensor UnifiedDynamics::initial_state(const DynamicsContext& context, const torch::Tensor& X) const {
  if (context.recurrent) return X.select(1, X.size(1) - 1);  // pooled: z0 = X[:, -1]: [B, D]
  return at::zeros({X.size(0), X.size(1) * X.size(2)}, X.options());
}

torch::Tensor UnifiedDynamics::position_inputs(const DynamicsContext& context, const torch::Tensor& X) const {
  return (context.recurrent ? X.narrow(1, X.size(1) - 1, 1) : X).detach();  // [B, P, D]
}

DynamicsContext UnifiedDynamics::position_context(const torch::Tensor& x_t, const RecurrentState& block_state,
                                                  const torch::Tensor& keys, const torch::Tensor& values) {
  DynamicsContext c;
  c.recurrent = true;
  c.inject = x_t;
  c.block = block_state;
  if (W_k_) {
    const auto k = context_keys(x_t).unsqueeze(1), v = context_values(x_t).unsqueeze(1);  // [B, 1, D]
    c.keys = keys.defined() ? at::cat({keys, k}, 1) : k;
    c.values = values.defined() ? at::cat({values, v}, 1) : v;
  }
  return c;
}

RecurrentState UnifiedDynamics::advance(const torch::Tensor& z_t, const DynamicsContext& position) {
  auto input = at::tanh(z_t);
  if (position.inject.defined()) input = input + position.inject;
  return block_->step(input, position.block).second;
}

DynamicsContext UnifiedDynamics::last_position(const DynamicsContext& sequence, const torch::Tensor& z_star) {
  if (sequence.recurrent) return sequence;
  const auto& X = sequence.X;  // [B, L, D]
  const std::int64_t B = X.size(0), L = X.size(1);
  const auto Z = positions_of(z_star, sequence);  // [B, L, D]
  DynamicsContext c;
  c.recurrent = true;
  c.inject = X.select(1, L - 1);
  c.block = L > 1 ? block_->forward_with_state(at::tanh(Z.narrow(1, 0, L - 1)) + X.narrow(1, 0, L - 1)).second
                  : block_->initial_state(B);
  c.keys = sequence.keys;
  c.values = sequence.values;
  return c;
}

torch::Tensor UnifiedDynamics::retrieval(const torch::Tensor& Q, const DynamicsContext& context) {
  const auto D = options_.d_model;
  torch::Tensor bank, from_context;
  if (reads_bank()) bank = memory_->retrieve(Q.reshape({-1, D})).view(Q.sizes());  // [B, P, D]
  if (reads_context()) {
    if (!context.keys.defined()) throw Error("unified dynamics: the context source needs the context's keys");
    from_context = memory_->retrieve_context(Q, context.keys, context.values);  // [B, P, D]
  }
  if (!bank.defined()) return from_context;
  if (!from_context.defined()) return bank;
  return 0.5 * (bank + from_context);
}

DynamicsComponents UnifiedDynamics::components(const torch::Tensor& z, const DynamicsContext& context) {
  DynamicsComponents c;
  const auto Z = positions_of(z, context);  // [B, P, D]
  // The block sees tanh(Z): a Mamba step grows like ||z||^3 in its input (the input, the step size
  // and the read-out are all linear in it), so one wild extrapolation of a solver would send the
  // iterates to infinity. tanh bounds the input with Lipschitz constant 1; the injected X is added
  // after it, so the block always sees the token content at its own scale.
  if (!context.recurrent) {
    c.block = block_->forward(at::tanh(Z) + context.X);  // S: [B, L, D]
  } else {
    auto input = at::tanh(Z.squeeze(1));
    if (context.inject.defined()) input = input + context.inject;
    c.block = block_->step(input, context.block).first.unsqueeze(1);  // S: [B, 1, D]
  }
  c.memory = retrieving() ? retrieval(query(Z), context) : at::zeros_like(Z);  // R: [B, P, D]
  auto pre = linear("W_g", W_g_, at::cat({c.block, c.memory}, -1));          // [B, P, D]
  c.gate = options_.gate == Gate::Sigmoid ? at::sigmoid(pre) : at::tanh(pre);
  auto blended = c.gate * c.block + (1 - c.gate) * c.memory;
  c.next = linear("W_out", W_out_, blended);
  if (options_.residual) c.next = Z + c.next;
  if (state_norm_) c.next = state_norm_->forward(c.next);
  return c;
}

torch::Tensor UnifiedDynamics::forward(const torch::Tensor& z, const DynamicsContext& context) {
  return components(z, context).next.reshape({z.size(0), -1});  // [B, P * D]
}

TensorMap UnifiedDynamics::solver_map(const DynamicsContext& context) {
  TensorMap f = [this, context](const at::Tensor& z) { return forward(z, context); };
  for (const auto& opt : optimizations_) f = opt->wrap_dynamics(f);
  return f;
}

torch::Tensor UnifiedDynamics::memory_energy(const torch::Tensor& z, const DynamicsContext& context) {
  if (!retrieving()) return at::zeros({z.size(0)}, z.options());
  const auto Q = query(positions_of(z, context));  // [B, P, D]
  const auto B = Q.size(0), P = Q.size(1);
  auto energy = at::zeros({B}, z.options());
  if (reads_bank()) energy = energy + memory_->energy(Q.reshape({B * P, -1})).view({B, P}).sum(1);
  if (reads_context()) energy = energy + memory_->context_energy(Q, context.keys).sum(1);
  return energy;
}

torch::Tensor UnifiedDynamics::memory_energy_gradient(const torch::Tensor& z, const DynamicsContext& context) {
  // dE_mem/dz with a graph when the caller trains through it (z carries a graph), detached otherwise
  // (inside a solve, under NoGradGuard, where only the value is traced).
  const bool train_through = at::GradMode::is_enabled() && z.requires_grad();
  torch::AutoGradMode enable(true);
  auto zz = train_through ? z : z.detach().requires_grad_(true);
  auto energy = memory_energy(zz, context).sum();
  if (!energy.requires_grad()) return at::zeros_like(z);  // memory off: E_mem is constant
  auto grad = torch::autograd::grad({energy}, {zz}, {}, /*retain_graph=*/true, /*create_graph=*/train_through)[0];
  return train_through ? grad : grad.detach();
}

EnergyComponents UnifiedDynamics::energy(const torch::Tensor& z, const DynamicsContext& context) {
  EnergyComponents e;
  const auto f = solver_map(context);
  e.memory = memory_energy(z, context);
  e.consistency = options_.alpha * (z - f(z)).pow(2).sum(1);
  e.l2 = options_.lambda_l2 * z.pow(2).sum(1);
  e.smooth = options_.lambda_smooth > 0 ? options_.lambda_smooth * memory_energy_gradient(z, context).pow(2).sum(1)
                                        : at::zeros({z.size(0)}, z.options());
  e.extra = at::zeros({z.size(0)}, z.options());
  for (const auto& opt : optimizations_) {
    auto term = opt->extra_energy(z);
    if (term.defined()) e.extra = e.extra + term;
  }
  e.total = e.memory + e.consistency + e.l2 + e.smooth + e.extra;
  return e;
}

torch::Tensor UnifiedDynamics::grad_energy(const torch::Tensor& z, const DynamicsContext& context) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto total = energy(zz, context).total.sum();
  return torch::autograd::grad({total}, {zz})[0].detach();
}

}  // namespace mhd
