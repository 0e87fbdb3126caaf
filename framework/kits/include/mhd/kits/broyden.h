// Batched limited-memory Broyden ("good" Broyden) for z* = f(z*), i.e. the root of g(z) = f(z) - z.
//
// In the kits (docs/design.md §2) so that other solvers can run it as a fallback from a
// state they have already evaluated (run() continues the caller's traces and best iterate).
//
// Per sample b, the inverse Jacobian of g is approximated in low-rank form, the form DEQ solvers use:
//
//     H_b = -I + U_b V_b^T,          U_b, V_b: [m, D], at most m = `memory` pairs
//
// (H = -I: the first direction -H g = g is the plain fixed-point step). A step goes along
// d = -H g with a backtracking line search on ||g|| (non-monotone: against the largest ||g|| of the
// last few iterates); after the accepted step s = t d, y = g_new - g,
// the good Broyden update (Sherman-Morrison of the rank-one Jacobian update) adds the pair
//
//     u = (s - H y) / (s^T H y),      v = H^T s,          so that H_new y = s.
//
// When all m slots are used the memory is cleared and H restarts from -I with the newest pair alone
// (restarted Broyden: memory stays bounded however many iterations run). Everything else is per
// sample: step length, line search, pairs, skips and resets; no quantity is shared across the batch.
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd {
namespace broyden {

struct Options {
  std::int64_t memory = 10;         // m pairs (u, v) per sample
  double armijo_c1 = 1e-4;          // accept t when ||g(z + t d)|| <= (1 - c1 t) ||g(z)||
  double backtrack = 0.5;           // t <- backtrack * t after a failed test
  std::int64_t max_backtracks = 3;  // 0: no line search, the full step is always taken
  std::int64_t nonmonotone = 10;    // the test compares with the largest ||g|| of the last this-many iterates
};

struct Stats {
  std::int64_t steps = 0;                 // Broyden steps (iterations after the start point)
  std::int64_t line_search_evals = 0;     // batch evaluations of f beyond each step's first trial
  std::int64_t backtracks = 0;            // sample-level step halvings
  std::int64_t line_search_failures = 0;  // sample-steps with no sufficient decrease: the last trial is taken
  std::int64_t skipped_updates = 0;       // sample-steps whose pair was degenerate (s^T H y ~ 0) and not stored
  std::int64_t resets = 0;                // sample memories cleared after two failures in a row
  std::int64_t restarts = 0;              // full memories cleared (every sample at the same step)
};

class Core {
 public:
  // `who` names the solver in error messages.
  Core(std::string who, Options options);

  // Continues a solve from z ([B, D]) with fz = f(z), whose iteration the caller has already recorded
  // in `info` and shown to `best`. Each Broyden step records one more iteration; runs until the
  // stopping rule holds, info.iterations reaches limits.max_iter, or f turns non-finite
  // (mhd::stop_if_nonfinite). Samples at tol do not move. Returns nothing: the result is best.best().
  void run(const FixedPointProblem& problem, at::Tensor z, at::Tensor fz, const SolveLimits& limits,
           SolverInfo& info, BestIterate& best);

  const Stats& stats() const { return stats_; }

 private:
  std::string who_;
  Options opt_;
  Stats stats_;
};

}  // namespace broyden
}  // namespace mhd
