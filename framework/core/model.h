// The Unified Mamba-Hopfield-DEQ model (docs/design.md §4):
//   tokens -> Embedding -> n_layers x (x + layer(LayerNorm(x))) -> X: [B, L, D]
//   Z* = DEQ solve of the unified dynamics (dynamics.h) over the whole sequence: [B, L, D]
//        (pooled form: one z* [B, D] from the state after the sequence, broadcast over L)
//   logits = Head(LayerNorm(X + Z*))
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/dynamics.h"
#include "core/model_options.h"
#include "mhd/solver.h"

namespace mhd {

class PluginRegistry;
class Optimization;

struct ModelOutput {
  torch::Tensor logits;  // [B, L, V]; [N, V] at the N scored positions when forward() was given a mask
  torch::Tensor z_star;  // [B, P * D] (P = L, or 1 pooled); gradients reach the parameters through the backward mode
  SolverInfo forward_info;
  // Filled by the implicit backward solve once loss.backward() has run.
  std::shared_ptr<SolverInfo> backward_info = std::make_shared<SolverInfo>();
  EnergyComponents energy;  // at z*, with a graph (defined only when [energy] enabled and deq on)
  DynamicsContext context;  // what the solve ran against
  torch::Tensor z0;         // [B, P * D] where the solve started without warm start
  torch::Tensor key;        // [B, D] X averaged over positions, the context summary optimizations' hooks see
  bool warm_started = false;  // the solve started from the previous equilibrium
  std::int64_t memory_writes = -1;  // patterns written by novelty-gated writes (-1: writes off)
};

// Recurrent decoding (generate.h): everything the model keeps about a prefix, O(1) in its length.
struct DecodeState {
  std::vector<RecurrentState> layers;  // each context layer's backbone state
  RecurrentState dynamics;             // the dynamics' block after the prefix (run on tanh(z*) + x)
  torch::Tensor keys, values;          // [B, t, D] the context memory's keys and values so far
  torch::Tensor z_star;                // [B, D] the last position's equilibrium (undefined before any)
  std::int64_t position = 0;           // tokens consumed
};

struct DecodeStep {
  torch::Tensor logits;  // [B, V] for the token after the one consumed
  SolverInfo info;       // the forward solve of this position (empty without deq)
  bool warm_started = false;
};

class UnifiedModel : public torch::nn::Module {
 public:
  // The plugins the options name must be loaded in `registry`; throws mhd::Error on bad options.
  UnifiedModel(const ModelOptions& options, PluginRegistry& registry);

  // tokens: [B, L] int64. `observe` lets optimizations probe the equilibrium (on_equilibrium),
  // which may cost extra work; the trainer asks for it at evaluation steps. `scored` ([B, L] bool,
  // optional) runs the head only where it is true: logits are then [N, V], the scored positions in
  // row-major order. The [B, L, V] head is most of a step at a large vocabulary while a task may
  // score a few positions (associative recall: 4 of 64).
  ModelOutput forward(const torch::Tensor& tokens, bool observe = false, const torch::Tensor& scored = {});

  // The context X: [B, L, D] for tokens [B, L].
  torch::Tensor context(const torch::Tensor& tokens);

  bool deq_enabled() const { return deq_; }
  UnifiedDynamics& dynamics() { return *dynamics_; }
  const std::vector<std::shared_ptr<Optimization>>& optimizations() const { return optimizations_; }
  SolveLimits forward_limits() const { return forward_limits_; }
  // The curriculum's knobs (trainer): the forward solve's limits, and the memory branch (retrieval
  // and novelty-gated writes) on or off; a model without memory ignores set_memory_enabled.
  void set_forward_limits(const SolveLimits& limits) { forward_limits_ = limits; }
  void set_memory_enabled(bool on);
  bool memory_enabled() const { return memory_enabled_; }
  std::int64_t parameter_count() const;
  // Writes the novel patterns the last training forward chose (ModelOutput::memory_writes of them)
  // into the memory. The trainer calls it after the optimizer step; forward() also commits what is
  // still pending, so the bank never changes while a step's graph may still need it. Returns how
  // many were written.
  std::int64_t commit_memory_writes();
  // Forgets the previous equilibria (a new sequence of streams starts).
  void reset_warm_start();

  // Recurrent decoding, defined in generate.cpp. The state before any token, for B streams.
  DecodeState initial_decode_state(std::int64_t batch);
  // Consumes tokens: [B] (one per stream) and returns the logits for the next position, equal to
  // forward(prefix + tokens).logits[:, -1] up to the solver's tolerance: each context layer takes one
  // recurrent step, then only the new position's z_t is solved with the dynamics' block stepped from
  // the states of the positions before it, from the previous position's z* when `warm_start`
  // (docs/design.md §4). O(1) per token, except the context memory's keys (O(t)). No autograd.
  DecodeStep step(const torch::Tensor& tokens, DecodeState& state, bool warm_start = true);

 private:
  std::int64_t stage_novel_patterns(const torch::Tensor& z_star);
  // Head(LayerNorm(H)) for H: [B, L, D], at every position or only where `scored` is true ([N, V]).
  torch::Tensor head(const torch::Tensor& H, const torch::Tensor& scored);

  bool deq_ = true;
  bool energy_on_ = true;
  BackwardMode backward_mode_ = BackwardMode::Implicit;
  std::int64_t phantom_steps_ = 5;
  double phantom_damping_ = 0.5;
  SolveLimits forward_limits_, backward_limits_;
  bool warm_start_ = false;
  bool memory_writes_ = false;
  bool memory_enabled_ = true;
  double write_threshold_ = 0.7;
  torch::Tensor pending_writes_;  // [N, D] queries chosen by the last training forward, not yet written
  torch::Tensor last_train_z_, last_eval_z_;  // previous equilibria per stream, detached
  std::shared_ptr<Solver> solver_, backward_solver_;
  std::vector<std::shared_ptr<Optimization>> optimizations_;

  torch::nn::Embedding embedding_{nullptr};
  std::vector<std::shared_ptr<Backbone>> layers_;
  std::vector<torch::nn::LayerNorm> layer_norms_;
  std::shared_ptr<UnifiedDynamics> dynamics_;
  torch::nn::LayerNorm head_norm_{nullptr};
  torch::nn::Linear head_{nullptr};
};

}  // namespace mhd
