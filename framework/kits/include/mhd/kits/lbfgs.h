// Batched L-BFGS: every row of z [B, D] is an independent minimisation problem with its own
// history, step and line search, so one slow or stuck sample never changes another's result.
// Used by the `lbfgs` and `hybrid` solver plugins (docs/design.md §2), written once here.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd {

// The objective at a batch of points: value [B], gradient [B, D], and per-sample by-products
// ([B, ...], e.g. f(z)) that are carried along to the accepted points, so a caller can use them
// without evaluating again.
struct ObjectiveEval {
  at::Tensor value;  // [B]
  at::Tensor grad;   // [B, D]
  std::vector<at::Tensor> aux;
};
using BatchedObjective = std::function<ObjectiveEval(const at::Tensor& z)>;

struct LbfgsOptions {
  std::int64_t history = 10;      // m curvature pairs per sample; 0 = steepest descent with
                                  // Barzilai-Borwein step scaling from the last pair
  std::int64_t max_steps = 100;   // accepted iterations
  double grad_tol = 0.0;          // a sample stops once ||grad|| <= grad_tol (0: never on this rule)
  double armijo_c1 = 1e-4;        // sufficient decrease: phi(z + t d) <= phi(z) + c1 t grad^T d
  double backtrack = 0.5;         // t <- backtrack * t while the Armijo test fails
  std::int64_t max_backtracks = 30;
  double curvature_eps = 1e-10;   // a pair is kept only if s^T y > eps ||s|| ||y||
};

// Called at the start point and after every iteration with the current points and their
// evaluation. Returns the samples the caller considers finished ([B] bool; undefined = none):
// they stop moving. Returning all true ends the minimisation.
using LbfgsObserver = std::function<at::Tensor(const at::Tensor& z, const ObjectiveEval& eval)>;

enum class LbfgsStop {
  MaxSteps,   // the step budget ran out
  Observer,   // the observer marked every sample finished
  Converged,  // every sample finished, by grad_tol or the observer
  Stalled,    // some samples found no Armijo point even along -grad (round-off or a bad objective)
};

struct LbfgsResult {
  at::Tensor z;                // [B, D]
  ObjectiveEval eval;          // at z
  at::Tensor grad_converged;   // [B] bool: ||grad|| <= grad_tol
  LbfgsStop stop = LbfgsStop::MaxSteps;
  std::int64_t steps = 0;                 // iterations (each: one direction, one line search)
  std::int64_t evaluations = 0;           // objective evaluations, line-search trials included
  std::int64_t skipped_pairs = 0;         // sample-steps whose pair failed the curvature test
  std::int64_t line_search_failures = 0;  // sample-steps with no Armijo point (history then reset)
};

// Minimises each row of the objective from z0 [B, D]: two-loop recursion over the sample's last
// `history` accepted pairs (s, y), initial scaling gamma = s^T y / y^T y of the newest pair, a
// backtracking Armijo line search from t = 1 (first step: t = min(1, 1 / ||grad||)), pairs skipped
// when s^T y is not positive enough. A sample whose line search fails is reset to steepest descent;
// if that fails too it stops (counted in line_search_failures, LbfgsStop::Stalled).
// The objective is always evaluated on the whole batch (rows of the problem may share a context).
LbfgsResult lbfgs_minimize(const BatchedObjective& objective, const at::Tensor& z0, const LbfgsOptions& options,
                           const LbfgsObserver& observe = {});

// The fixed-point residual objective per sample: value 1/2 ||z - f(z)||^2 [B], its gradient
// r - J_f(z)^T r with r = z - f(z) [B, D] (one autograd pass, run with gradients enabled whatever
// the caller's mode), and f(z) [B, D] itself: one evaluation of f for all three.
// (mhd::vector_jacobian_product would evaluate f a second time, as its vector depends on f(z).)
// When f(z) carries no autograd graph — the backward map g -> J^T g + v of implicit
// differentiation is built detached — grad is undefined and the caller must fall back.
struct ResidualObjective {
  at::Tensor value;  // [B]
  at::Tensor grad;   // [B, D], or undefined
  at::Tensor fz;     // [B, D]
};
ResidualObjective residual_objective(const TensorMap& f, const at::Tensor& z);

}  // namespace mhd
