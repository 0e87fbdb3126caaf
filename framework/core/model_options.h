// What the model is built from (docs/design.md §4): typed options, checked once by validate(),
// so core/ never reads the study format. config/model_options.h builds them from a trial's
// configuration.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dynamics.h"
#include "mhd/params.h"
#include "mhd/solver.h"

namespace mhd {


enum class BackwardMode {
  Implicit,  // solve g = J_f(z*)^T g + dL/dz* with the backward solver
  Phantom,   // a few damped steps of f from z* with the graph (cheap, approximate)
  Unrolled,  // backprop through every forward iteration (for checking)
};

struct ModelOptions {
  std::int64_t vocab_size = 0;
  std::int64_t d_model = 64;
  std::int64_t n_layers = 2;
  ComponentConfig backbone;  // each context layer, and the dynamics' block

  bool deq = true;  // false: the backbone-only baseline (no dynamics, memory or solver)
  DynamicsOptions dynamics;
  ComponentConfig memory;  // used when dynamics.use_memory
  std::vector<ComponentConfig> optimizations;
  ComponentConfig solver, backward_solver;
  SolveLimits forward_limits, backward_limits;
  bool energy = true;  // the energy terms and the problem's energy(z) for solvers
  BackwardMode backward_mode = BackwardMode::Implicit;
  std::int64_t phantom_steps = 5;
  double phantom_damping = 0.5;
  bool warm_start = false;     // start each solve from the previous equilibrium of the stream
  bool memory_writes = false;  // novelty-gated writes of W_q z* into the memory
  double write_threshold = 0.7;

  // Throws mhd::Error naming the first option out of range.
  void validate() const;
};

}  // namespace mhd
