// The unified dynamics and energy (docs/design.md §4).
//
//   f(z) = z + W_out( g * u + (1 - g) * r )   (then LayerNorm when state_norm is on; no `z +` when
//                                              residual is off)
//   u    = mamba_update(z, X)      the dynamics' backbone block stepped once from the context state,
//                                  fed tanh(z), which bounds the step's input
//   r    = memory.retrieve(W_q z)
//   g    = act(W_g [u ; r])        act = sigmoid or tanh
//   E(z) = E_mem(W_q z) + alpha ||z - f(z)||^2 + lambda_l2 ||z||^2 + lambda_smooth ||dE_mem/dz||^2
//          (+ optimizations' extra terms)
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

enum class Gate { Sigmoid, Tanh };          // act of g = act(W_g [u ; r])
enum class StateNorm { None, LayerNorm };   // applied to f(z)

struct DynamicsOptions {
  std::int64_t d_model = 64;
  bool use_memory = true;
  Gate gate = Gate::Sigmoid;
  double out_init_scale = 1.0;
  bool residual = true;                  // f(z) = z + W_out(...) (true) or W_out(...) (false)
  StateNorm state_norm = StateNorm::None;
  double alpha = 1.0;      // energy: consistency weight
  double lambda_l2 = 1e-3; // energy: ||z||^2 weight
  double lambda_smooth = 0.0;  // energy: ||dE_mem/dz||^2 weight
};

// The parts of one evaluation of f, for diagnostics.
struct DynamicsComponents {
  torch::Tensor mamba;   // u: [B, D]
  torch::Tensor memory;  // r: [B, D] (zeros when the memory is off)
  torch::Tensor gate;    // g: [B, D]
  torch::Tensor next;    // f(z): [B, D]
};

struct EnergyComponents {
  torch::Tensor memory;       // E_mem(W_q z): [B]
  torch::Tensor consistency;  // alpha ||z - f(z)||^2: [B]
  torch::Tensor l2;           // lambda_l2 ||z||^2: [B]
  torch::Tensor smooth;       // lambda_smooth ||dE_mem(W_q z)/dz||^2: [B]
  torch::Tensor extra;        // optimizations' terms: [B]
  torch::Tensor total;        // [B]
};

class UnifiedDynamics : public torch::nn::Module {
 public:
  UnifiedDynamics(const DynamicsOptions& options, std::shared_ptr<Backbone> block, std::shared_ptr<Memory> memory,
                  std::vector<std::shared_ptr<Optimization>> optimizations);

  // Runs the dynamics' block over the context once per solve. X: [B, L, D].
  RecurrentState prepare(const torch::Tensor& X);

  // f(z) for z: [B, D] against a prepared context (before any optimization's wrapping).
  torch::Tensor forward(const torch::Tensor& z, const RecurrentState& context);
  DynamicsComponents components(const torch::Tensor& z, const RecurrentState& context);

  // The map the solvers see: f with every optimization's wrap_dynamics applied, in order.
  TensorMap solver_map(const RecurrentState& context);

  // E(z) and its parts; f is the solver map, so the consistency term matches what is solved.
  EnergyComponents energy(const torch::Tensor& z, const RecurrentState& context);
  // dE/dz including the consistency term's dependence on z through f (docs/design.md §4).
  torch::Tensor grad_energy(const torch::Tensor& z, const RecurrentState& context);

  // E_mem(W_q z): [B] (zeros when the memory is off)
  torch::Tensor memory_energy(const torch::Tensor& z);

  // W_q z: the memory query. [B, D]
  torch::Tensor query(const torch::Tensor& z);

  const DynamicsOptions& options() const { return options_; }
  Memory* memory() const { return memory_.get(); }
  // The dynamics' backbone block; prepare(X) is its state after X, which recurrent decoding
  // (UnifiedModel::step) advances one position at a time instead.
  Backbone& block() { return *block_; }

  // The curriculum's memory switch ([train] memory_enable_step): while off, f runs without
  // retrieval (r = 0) and E_mem = 0, as with use_memory = false, but the memory stays in the model.
  void set_retrieval(bool on) { retrieval_on_ = on; }
  // Whether f retrieves from the memory now (use_memory and the switch).
  bool retrieving() const { return options_.use_memory && retrieval_on_; }

 private:
  torch::Tensor memory_energy_gradient(const torch::Tensor& z);  // [B, D]
  torch::Tensor linear(const std::string& name, const torch::nn::Linear& layer, const torch::Tensor& x);

  DynamicsOptions options_;
  bool retrieval_on_ = true;
  std::shared_ptr<Backbone> block_;
  std::shared_ptr<Memory> memory_;
  std::vector<std::shared_ptr<Optimization>> optimizations_;
  torch::nn::Linear W_q_{nullptr}, W_g_{nullptr}, W_out_{nullptr};
  torch::nn::LayerNorm state_norm_{nullptr};
};

}  // namespace mhd
