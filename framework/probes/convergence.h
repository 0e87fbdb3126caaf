// The convergence measurements of the `convergence` probe, on any map f
// and energy E, so they can be checked on hand-built dynamics. Every number is a measurement with
// its conditions (docs/design.md §4: the original design's energy-descent "Theorem 2" is a hypothesis to measure).
//
//   contraction   L = ||J_f(z*)||_2 per sample (power iteration, jacobian.h); contractive when L < 1
//   energy        E(z_k) along the plain iteration z_{k+1} = f(z_k) from z0; a step violates descent
//                 when E(z_{k+1}) > E(z_k) + energy_tolerance (|E(z_k)| + 1), or E is not finite
//   stability     z* and z* + d, ||d|| = perturbation ||z*||, both iterated `return_iterations`
//                 times with f; ratio = ||f^T(z* + d) - f^T(z*)|| / ||d||; returned when ratio <
//                 return_ratio (comparing with the iterated z* itself, not with z*, keeps the solver's
//                 residual at z* out of the measure); drift = ||f^T(z*) - z*|| / ||z*||
//   Lyapunov      the mean log growth per iteration of the distance between the trajectory from z0
//                 and a neighbour at relative distance `separation`, renormalised every step
//                 (Benettin): < 0 contracting, > 0 expanding; log L is its local bound at z*
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd {

struct ConvergenceOptions {
  std::int64_t power_iterations = 20;   // for L = ||J_f(z*)||_2
  std::int64_t iterations = 30;         // K: length of the energy and Lyapunov trajectories
  double energy_tolerance = 1e-6;       // relative slack before an energy increase counts
  double perturbation = 1e-2;           // ||d|| / ||z*||
  std::int64_t return_iterations = 30;  // T
  double return_ratio = 0.1;            // returned when ||f^T(z*+d) - f^T(z*)|| / ||d|| below this
  double separation = 1e-3;             // Lyapunov neighbour distance / ||z_k||
  std::uint64_t seed = 0;               // directions of d and of the Lyapunov neighbour
};

// Per-sample results ([B] unless noted), detached.
struct ConvergenceMeasurement {
  at::Tensor lipschitz;         // ||J_f(z*)||_2
  at::Tensor energy;            // [B, K + 1]: E(z_k), k = 0..K
  at::Tensor energy_increase;   // [B, K] bool: step k -> k+1 violates descent
  at::Tensor return_ratio;      // [B, T + 1]: ||f^t(z*+d) - f^t(z*)|| / ||d||, t = 0..T
  at::Tensor returned;          // bool: return_ratio[:, T] < options.return_ratio
  at::Tensor drift;             // ||f^T(z*) - z*|| / ||z*||
  at::Tensor lyapunov_growth;   // [B, K]: log(distance after / before) of step k
  at::Tensor lyapunov_rate;     // mean of lyapunov_growth over the K steps
  at::Tensor residual;          // ||f(z*) - z*|| / (||f(z*)|| + 1e-8) at the given z*
};

// f and energy act on rows independently (z: [B, D] -> [B, D] and -> [B]); energy may be empty
// (then `energy` and `energy_increase` are undefined). z0, z_star: [B, D].
ConvergenceMeasurement measure_convergence(const TensorMap& f, const TensorMap& energy, const at::Tensor& z0,
                                           const at::Tensor& z_star, const ConvergenceOptions& options);

}  // namespace mhd
