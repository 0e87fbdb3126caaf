// Optimization: hooks at fixed points of the pipeline (docs/design.md §3). Every hook has a neutral
// default, so a plugin overrides only what it changes.
#pragma once

#include <map>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>
#include <boost/config.hpp>

#include "mhd/solver.h"

namespace mhd {

class BOOST_SYMBOL_VISIBLE Optimization {
 public:
  virtual ~Optimization() = default;

  // Called each time the dynamics uses one of its linear maps (names: "W_q", "W_g", "W_out");
  // returns the weight to use instead (e.g. spectrally normalised). Must stay differentiable.
  virtual at::Tensor reparametrize_weight(const std::string& /*name*/, const at::Tensor& weight) {
    return weight;
  }

  // Wraps the fixed-point map the solvers see (e.g. damping z + a (f(z) - z)).
  virtual TensorMap wrap_dynamics(TensorMap f) { return f; }

  // The map one forward solve iterates, given that solve's limits: the model applies it to the
  // solver's f (already wrapped by wrap_dynamics) right before each forward solve, and nothing else
  // sees the result, so per-solve state (e.g. which iteration this is) lives in the returned closure.
  // Evaluations outside the solve (the implicit backward's f(z*), energies, probes) use the
  // wrap_dynamics map. E.g. the first iterations in reduced precision.
  virtual TensorMap wrap_solve(TensorMap f, const SolveLimits& /*limits*/) { return f; }

  // An extra energy term added to E(z): [B]; undefined tensor for none.
  virtual at::Tensor extra_energy(const at::Tensor& /*z*/) { return at::Tensor(); }

  // A warm start for the solve of a batch whose context summary is `key` ([B, D]).
  virtual std::optional<at::Tensor> warm_start(const at::Tensor& /*key*/) { return std::nullopt; }

  // Sees every equilibrium: the map that was solved (wrapped), z*: [B, D], and the context key.
  // Runs outside the training graph; the hook may enable gradients for its own probes.
  virtual void on_equilibrium(const TensorMap& /*f*/, const at::Tensor& /*z_star*/,
                              const at::Tensor& /*key*/) {}

  // A term the trainer adds to the training objective as is (the plugin applies its own weights):
  // a scalar with a graph to the parameters, or undefined for none. `energy`: z -> E(z): [B] of the
  // trained dynamics (docs/design.md §4), differentiable in z and the parameters; z_star: [B, S] the
  // step's equilibrium (carrying its graph). E.g. a curvature penalty on E at z*.
  virtual at::Tensor objective_term(const TensorMap& /*energy*/, const at::Tensor& /*z_star*/) { return at::Tensor(); }

  // The plugin's own metrics since the last call (e.g. Lipschitz estimate, cache hit rate).
  virtual std::map<std::string, double> metrics() { return {}; }
};

}  // namespace mhd
