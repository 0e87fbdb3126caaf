// The unified dynamics and energy (docs/design.md §4).
//
// Sequence form (the default): one state per position, Z: [B, L, D], solved jointly.
//   f(Z) = W_out( g * S + (1 - g) * R )      (z + W_out(...) when residual; LayerNorm when state_norm)
//   S    = block(tanh(Z) + X)                the dynamics' backbone block run over the sequence: causal,
//                                            so position t of S reads positions <= t only
//   R    = retrieval of Q = W_q Z at every position, from the bank, the context (K = W_k X,
//          V = W_v X at positions <= t, each row scaled to unit norm) or both (their mean)
//   g    = act(W_g [S ; R])                  act = sigmoid or tanh
// Recurrent form: one position's state z: [B, D] against the block's state after the positions
// before it: S = block.step(tanh(z) + x_t, state). Decoding solves the sequence form one position at
// a time with it; the `pooled` form (one z per sequence, from the state after the whole sequence,
// no injection) is the same map with x_t = 0.
//   E(z) = E_mem(W_q z) + alpha ||z - f(z)||^2 + lambda_l2 ||z||^2 + lambda_smooth ||dE_mem/dz||^2
//          (+ optimizations' extra terms), summed over positions.
//
// Solvers see each sample's state flattened to one row: z: [B, P * D] with P = L (sequence) or 1.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "mhd/backbone.h"
#include "mhd/solver.h"

namespace mhd {

class Memory;
class Optimization;

enum class Gate { Sigmoid, Tanh };           // act of g = act(W_g [S ; R])
enum class StateNorm { None, LayerNorm };    // applied to f(z)
enum class Equilibrium { Sequence, Pooled }; // one state per position, or one per sequence
enum class MemorySource { Bank, Context, Both };

struct DynamicsOptions {
  std::int64_t d_model = 64;
  bool use_memory = true;
  Equilibrium equilibrium = Equilibrium::Sequence;
  MemorySource memory_source = MemorySource::Bank;
  Gate gate = Gate::Sigmoid;
  double out_init_scale = 1.0;
  bool residual = false;                 // f(z) = z + W_out(...) (true) or W_out(...) (false)
  StateNorm state_norm = StateNorm::None;
  double alpha = 1.0;      // energy: consistency weight
  double lambda_l2 = 1e-3; // energy: ||z||^2 weight
  double lambda_smooth = 0.0;  // energy: ||dE_mem/dz||^2 weight
};

// What a solve runs against: made once per forward, never changed by the solve.
struct DynamicsContext {
  bool recurrent = false;    // false: the sequence form over X; true: one position per row
  torch::Tensor X;           // sequence: [B, L, D], the input injected at every iteration
  torch::Tensor inject;      // recurrent: [B, D] added to tanh(z) before the step (undefined: none)
  RecurrentState block;      // recurrent: the block's state after the positions before this one
  torch::Tensor keys, values;  // [B, Lk, D] W_k X, W_v X (defined when retrieval reads the context)

  std::int64_t positions() const;  // P: L in the sequence form, 1 in the recurrent form
  // The context of one row (sample) repeated n times, detached: for probes that ask about many
  // states of one sample at once.
  DynamicsContext repeated_row(std::int64_t sample, std::int64_t n) const;
};

// The parts of one evaluation of f, for diagnostics. [B, P, D] each.
struct DynamicsComponents {
  torch::Tensor block;   // S
  torch::Tensor memory;  // R (zeros when the memory is off)
  torch::Tensor gate;    // g
  torch::Tensor next;    // f(z)
};

struct EnergyComponents {
  torch::Tensor memory;       // E_mem(W_q z): [B]
  torch::Tensor consistency;  // alpha ||z - f(z)||^2: [B]
  torch::Tensor l2;           // lambda_l2 ||z||^2: [B]
  torch::Tensor smooth;       // lambda_smooth ||dE_mem(W_q z)/dz||^2: [B]
  torch::Tensor extra;        // optimizations' terms: [B]
  torch::Tensor total;        // [B]
};

class UnifiedDynamics;

// One forward solve as the memory sees it (Memory::begin_solve): opened with the solve's first
// iterate, closed when the scope ends. Nothing happens while f does not retrieve from the memory.
class SolveScope {
 public:
  SolveScope(UnifiedDynamics& dynamics, const torch::Tensor& start);  // start: [B, P * D]
  ~SolveScope();
  SolveScope(const SolveScope&) = delete;
  SolveScope& operator=(const SolveScope&) = delete;

 private:
  Memory* memory_ = nullptr;  // set while a solve is open
};

class UnifiedDynamics : public torch::nn::Module {
 public:
  UnifiedDynamics(const DynamicsOptions& options, std::shared_ptr<Backbone> block, std::shared_ptr<Memory> memory,
                  std::vector<std::shared_ptr<Optimization>> optimizations);

  // The context of a solve over X: [B, L, D] in the configured form (pooled: the block run once
  // over X, its state kept).
  DynamicsContext prepare(const torch::Tensor& X);
  // The state a solve starts from without warm start: [B, P * D]. Sequence: zeros; pooled: X[:, -1].
  torch::Tensor initial_state(const DynamicsContext& context, const torch::Tensor& X) const;
  // Each position's input, what a learned initialiser reads (FixedPointProblem::context):
  // [B, P, D]; X itself in the sequence form, X[:, -1:] pooled (where z0 comes from). Detached.
  torch::Tensor position_inputs(const DynamicsContext& context, const torch::Tensor& X) const;

  // Decoding one position (recurrent form): x_t: [B, D], the block's state after the positions
  // before t, and the context keys/values so far ([B, t, D] or undefined at t = 0). Appends W_k x_t,
  // W_v x_t when retrieval reads the context.
  DynamicsContext position_context(const torch::Tensor& x_t, const RecurrentState& block_state,
                                   const torch::Tensor& keys, const torch::Tensor& values);
  // The block's state after position t once z_t is solved: what decoding carries to t + 1.
  RecurrentState advance(const torch::Tensor& z_t, const DynamicsContext& position);
  // The last position of a solved sequence as a recurrent problem of its own ([B, D] states, the
  // earlier positions held at their equilibrium): what per-position probes (landscape) analyse.
  // z_star: [B, L * D] -> the context of position L - 1 (its state is z_star's last D entries).
  DynamicsContext last_position(const DynamicsContext& sequence, const torch::Tensor& z_star);

  // f(z) for z: [B, P * D] (before any optimization's wrapping).
  torch::Tensor forward(const torch::Tensor& z, const DynamicsContext& context);
  DynamicsComponents components(const torch::Tensor& z, const DynamicsContext& context);

  // The map the solvers see: f with every optimization's wrap_dynamics applied, in order.
  TensorMap solver_map(const DynamicsContext& context);

  // E(z) and its parts; f is the solver map, so the consistency term matches what is solved.
  EnergyComponents energy(const torch::Tensor& z, const DynamicsContext& context);
  // dE/dz including the consistency term's dependence on z through f (docs/design.md §4).
  torch::Tensor grad_energy(const torch::Tensor& z, const DynamicsContext& context);
  // E_mem(W_q z) summed over positions: [B] (zeros when the memory is off)
  torch::Tensor memory_energy(const torch::Tensor& z, const DynamicsContext& context);

  // W_q z for states of any shape [..., D]: the memory query.
  torch::Tensor query(const torch::Tensor& z);
  // Every position's query as rows: z: [B, P * D] -> [B * P, D] (what the bank's stats read).
  torch::Tensor query_rows(const torch::Tensor& z);

  const DynamicsOptions& options() const { return options_; }
  Memory* memory() const { return memory_.get(); }
  Backbone& block() { return *block_; }
  // Whether retrieval reads the bank / the sequence's own keys and values.
  bool reads_bank() const { return options_.memory_source != MemorySource::Context; }
  bool reads_context() const { return options_.memory_source != MemorySource::Bank; }

  // The curriculum's memory switch ([train] memory_enable_step): while off, f runs without
  // retrieval (R = 0) and E_mem = 0, as with use_memory = false, but the memory stays in the model.
  void set_retrieval(bool on) { retrieval_on_ = on; }
  // Whether f retrieves from the memory now (use_memory and the switch).
  bool retrieving() const { return options_.use_memory && retrieval_on_; }

 private:
  torch::Tensor positions_of(const torch::Tensor& z, const DynamicsContext& context) const;  // [B, P, D]
  torch::Tensor retrieval(const torch::Tensor& Q, const DynamicsContext& context);         // [B, P, D]
  // The context source's keys W_k x and values W_v x, each scaled to unit norm: [..., D].
  torch::Tensor context_keys(const torch::Tensor& x);
  torch::Tensor context_values(const torch::Tensor& x);
  torch::Tensor memory_energy_gradient(const torch::Tensor& z, const DynamicsContext& context);
  torch::Tensor linear(const std::string& name, const torch::nn::Linear& layer, const torch::Tensor& x);

  DynamicsOptions options_;
  bool retrieval_on_ = true;
  std::shared_ptr<Backbone> block_;
  std::shared_ptr<Memory> memory_;
  std::vector<std::shared_ptr<Optimization>> optimizations_;
  torch::nn::Linear W_q_{nullptr}, W_g_{nullptr}, W_out_{nullptr};
  torch::nn::Linear W_k_{nullptr}, W_v_{nullptr};  // the context source's keys and values, from X
  torch::nn::LayerNorm state_norm_{nullptr};
};

}  // namespace mhd
