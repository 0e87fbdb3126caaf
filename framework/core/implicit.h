// Gradients through an equilibrium (docs/design.md §4).
#pragma once

#include <memory>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd {

// Implicit differentiation as a custom autograd function. Given z* (found without a graph) and
// the map f, returns a tensor equal to f(z*) ~ z* whose backward solves the transposed linear
// fixed point g = J_f(z*)^T g + dL/dz* with `backward_solver` and passes g on through f's graph
// to f's parameters and inputs. Never conjugate gradient: I - J^T is not symmetric.
// `backward_info`, when given, receives the backward solve's SolverInfo once backward has run.
at::Tensor implicit_equilibrium(const TensorMap& f, const at::Tensor& z_star, Solver& backward_solver,
                                const SolveLimits& limits, std::shared_ptr<SolverInfo> backward_info = nullptr);

// Phantom gradient (the cheap, robust estimate of torchdeq): `steps` damped iterations
// z <- (1 - damping) z + damping f(z) from z* (detached) with the graph kept. Its value stays at
// the equilibrium; its gradient approximates the implicit one without a linear solve.
at::Tensor phantom_equilibrium(const TensorMap& f, const at::Tensor& z_star, std::int64_t steps, double damping);

// Unrolled backprop: `max_iter` plain iterations z <- f(z) from z0 with the graph kept (for
// checking implicit gradients, and as a training mode). Stops early at `tol` like a solver.
SolveResult unrolled_fixed_point(const TensorMap& f, const at::Tensor& z0, const SolveLimits& limits);

}  // namespace mhd
