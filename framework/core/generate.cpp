// Generation (generate.h) and the model's recurrent decode step (model.h: UnifiedModel::step).
#include "core/generate.h"

#include <chrono>
#include <limits>
#include <numeric>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "core/model.h"
#include "mhd/optimization.h"

namespace mhd {

DecodeState UnifiedModel::initial_decode_state(std::int64_t batch) {
  DecodeState state;
  for (const auto& layer : layers_) state.layers.push_back(layer->initial_state(batch));
  if (deq_) state.dynamics = dynamics_->block().initial_state(batch);
  return state;
}

DecodeStep UnifiedModel::step(const torch::Tensor& tokens, DecodeState& state, bool warm_start) {
  if (tokens.dim() != 1) throw Error("decode step expects [B] token ids, got " + std::to_string(tokens.dim()) + " dims");
  if (state.layers.size() != layers_.size()) throw Error("decode state was not made by this model (initial_decode_state)");
  torch::NoGradGuard no_grad;
  DecodeStep out;
  // The context stack at one position: x_t <- x_t + layer(LayerNorm(x_t)), each layer stepped
  // from its state after the prefix. x: [B, D]
  auto x = embedding_->forward(tokens);
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    auto [y, next] = layers_[i]->step(layer_norms_[i]->forward(x), state.layers[i]);
    x = x + y;
    state.layers[i] = std::move(next);
  }
  ++state.position;
  if (!deq_) {
    out.logits = head_->forward(head_norm_->forward(x));
    return out;
  }
  const bool pooled = dynamics_->options().equilibrium == Equilibrium::Pooled;
  // Pooled: z* is solved against the block's state after the whole prefix (what prepare(X) keeps),
  // with no injection. Sequence: the block is stepped from the states of the positions before t,
  // fed tanh(z_t) + x_t, and only z_t: [B, D] is solved.
  if (pooled) state.dynamics = dynamics_->block().step(x, state.dynamics).second;
  DynamicsContext context = dynamics_->position_context(x, state.dynamics, state.keys, state.values);
  if (pooled) context.inject = torch::Tensor();
  state.keys = context.keys;
  state.values = context.values;
  FixedPointProblem problem;
  problem.f = dynamics_->solver_map(context);
  if (energy_on_) {
    problem.energy = [&](const at::Tensor& z) { return dynamics_->energy(z, context).total; };
    problem.grad_energy = [&](const at::Tensor& z) { return dynamics_->grad_energy(z, context); };
  }
  // Without warm start each position starts where the full forward starts (zeros; pooled: X_t);
  // warm, from the previous position's z*, usually the closer start.
  at::Tensor start = pooled ? x : at::zeros_like(x);
  if (warm_start && state.z_star.defined() && state.z_star.sizes() == x.sizes()) {
    start = state.z_star;
    out.warm_started = true;
  } else {
    for (const auto& opt : optimizations_)
      if (auto warm = opt->warm_start(x); warm && warm->sizes() == start.sizes()) start = *warm;
  }
  problem.context = x.detach().unsqueeze(1);  // [B, 1, D]: this position's input
  for (const auto& opt : optimizations_) problem.f = opt->wrap_solve(problem.f, forward_limits_);
  const SolveScope solve_scope(*dynamics_, start);  // the memory's read set, fixed for this solve
  SolveResult solved = solver_->solve(problem, start, forward_limits_);
  out.info = solved.info;
  state.z_star = solved.z;
  if (!pooled) state.dynamics = dynamics_->advance(solved.z, context);
  out.logits = head_->forward(head_norm_->forward(x + solved.z));  // [B, V]
  return out;
}

at::Tensor sampling_distribution(const at::Tensor& logits, const SamplingOptions& options) {
  if (logits.dim() != 2) throw Error("sampling expects logits [B, V], got " + std::to_string(logits.dim()) + " dims");
  if (options.top_k < 0) throw Error("top-k must be >= 0 (0: off), got " + std::to_string(options.top_k));
  if (!(options.top_p > 0.0 && options.top_p <= 1.0))
    throw Error("top-p must be in (0, 1] (1: off), got " + std::to_string(options.top_p));
  const auto l = logits.to(at::kDouble);  // [B, V]; double so the nucleus boundary is not blurred
  if (options.temperature <= 0.0) return at::zeros_like(l).scatter_(1, l.argmax(1, /*keepdim=*/true), 1.0);

  auto scaled = l / options.temperature;
  const std::int64_t V = l.size(1);
  if (options.top_k > 0 && options.top_k < V) {
    // Exactly k tokens (ties broken by topk's order), the rest at -inf.
    auto keep = at::zeros_like(scaled, at::kBool).scatter_(1, std::get<1>(scaled.topk(options.top_k, 1)), true);
    scaled = scaled.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  }
  auto probs = at::softmax(scaled, 1);  // [B, V]
  if (options.top_p < 1.0) {
    // Sorted descending, token i is needed while the mass before it is still < p: the kept set is
    // the smallest prefix whose mass reaches p (the most likely token always stays).
    auto [sorted, order] = probs.sort(1, /*descending=*/true);
    auto needed = (sorted.cumsum(1) - sorted).lt(options.top_p);  // [B, V] in sorted order
    auto keep = at::zeros_like(needed).scatter_(1, order, needed);
    probs = probs * keep;
    probs = probs / probs.sum(1, /*keepdim=*/true);
  }
  return probs;
}

at::Tensor sample_next(const at::Tensor& logits, const SamplingOptions& options, at::Generator& generator) {
  return at::multinomial(sampling_distribution(logits, options), 1, /*replacement=*/false, generator).squeeze(1);
}

double GenerationResult::tokens_per_second() const {
  return seconds > 0 ? static_cast<double>(iterations.size()) / seconds : 0.0;
}

double GenerationResult::mean_iterations() const {
  if (iterations.empty()) return 0.0;
  return static_cast<double>(std::accumulate(iterations.begin(), iterations.end(), std::int64_t{0})) /
         static_cast<double>(iterations.size());
}

GenerationResult generate(UnifiedModel& model, const std::vector<std::int64_t>& prompt,
                          const GenerationOptions& options) {
  if (prompt.empty()) throw Error("generation needs a prompt of at least one token");
  if (options.max_new_tokens < 0) throw Error("max length must be >= 0, got " + std::to_string(options.max_new_tokens));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  GenerationResult result;
  DecodeState state = model.initial_decode_state(1);
  DecodeStep last;
  auto consume = [&](std::int64_t token) {
    last = model.step(at::full({1}, token, at::kLong), state, options.warm_start);
    result.iterations.push_back(last.info.iterations);
    if (model.deq_enabled() && !last.info.converged) ++result.unconverged;
  };
  const auto started = std::chrono::steady_clock::now();
  for (std::int64_t token : prompt) consume(token);
  for (std::int64_t n = 0; n < options.max_new_tokens; ++n) {
    const std::int64_t next = sample_next(last.logits, options.sampling, generator).item<std::int64_t>();
    result.tokens.push_back(next);
    if (n + 1 < options.max_new_tokens) consume(next);  // the last token's successor is not needed
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return result;
}

}  // namespace mhd
