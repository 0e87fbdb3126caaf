// Solver: finds z* = f(z*) (docs/design.md §3, §4). The same solvers serve the backward pass, where
// f is the linear map g -> J^T g + grad.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <boost/config.hpp>

namespace mhd {

using TensorMap = std::function<at::Tensor(const at::Tensor&)>;

// The problem a solver sees. States are [B, D]; each row is an independent sample.
struct FixedPointProblem {
  TensorMap f;            // z -> f(z)
  TensorMap energy;       // z -> E(z): [B]; empty when the study's energy is off
  TensorMap grad_energy;  // z -> dE/dz: [B, D]; empty when the energy is off
  // Each row's input per position, [B, P, D] with D * P = the state's width: what a learned
  // initialiser predicts z0 from (docs/design.md §3, "Learned solver"). The model sets the injection
  // X (pooled: X[:, -1:]; decoding: x_t); undefined in backward solves and for plain maps.
  at::Tensor context;
};

struct SolveLimits {
  std::int64_t max_iter = 30;
  double tol = 1e-3;  // on the largest relative residual in the batch
};

// Per-sample residuals of a candidate z with value fz = f(z) (docs/design.md §4):
// abs = ||f(z) - z||, rel = abs / (||f(z)|| + 1e-8). Both [B].
struct Residuals {
  at::Tensor abs;
  at::Tensor rel;
};
Residuals residuals(const at::Tensor& z, const at::Tensor& fz);

struct SolverInfo {
  bool converged = false;
  std::int64_t iterations = 0;
  std::int64_t f_evals = 0;
  // One entry per iteration: the batch's largest abs / rel residual (the stopping rule's view),
  // and the batch-mean energy when the problem has one.
  std::vector<double> abs_trace;
  std::vector<double> rel_trace;
  std::vector<double> energy_trace;
  at::Tensor final_abs;  // [B]
  at::Tensor final_rel;  // [B]
  double wall_ms = 0.0;
  // Anything solver-specific worth logging (e.g. Anderson's fallbacks to plain iteration).
  std::vector<std::pair<std::string, double>> extra;
};

struct SolveResult {
  at::Tensor z;  // [B, D]
  SolverInfo info;
};

// Records one iteration in `info` and tells whether the stopping rule is met. Every solver uses it
// so that traces and the stopping rule mean the same thing across solvers.
bool record_iteration(SolverInfo& info, const Residuals& r, double tol,
                      const at::Tensor& energy = at::Tensor());

// Keeps, per sample, the iterate with the lowest relative residual seen so far (as torchdeq does),
// so a solve that wanders off on a map that is not contractive everywhere still returns its best
// point instead of its last. Solvers call observe() with each iterate z and its residuals, then
// return best() and finish(info) so the reported final residuals are those of the returned point.
class BestIterate {
 public:
  void observe(const at::Tensor& z, const Residuals& r);  // z: [B, D]
  const at::Tensor& best() const { return z_; }            // [B, D]
  void finish(SolverInfo& info) const;

 private:
  at::Tensor z_, abs_, rel_;  // [B, D], [B], [B]
};

// Building blocks every solver uses, so input errors, the non-finite stop and timing read the same
// whichever solver runs. `solver` names the plugin in messages.
void check_solve_inputs(const char* solver, const FixedPointProblem& problem, const at::Tensor& z0,
                        const SolveLimits& limits);
void check_map_shape(const char* solver, const at::Tensor& z, const at::Tensor& fz);
// E(z): [B] when the problem has an energy, else undefined (always so in a backward solve).
at::Tensor energy_of(const FixedPointProblem& problem, const at::Tensor& z);
// A non-finite f(z) ends the solve instead of iterating on NaN until max_iter. The iteration is
// already recorded (its residual is NaN/inf in the traces); "nonfinite_samples" counts the rows.
bool stop_if_nonfinite(SolverInfo& info, const at::Tensor& fz);

class BOOST_SYMBOL_VISIBLE Solver {
 public:
  virtual ~Solver() = default;
  // Runs without building an autograd graph (the caller holds a NoGradGuard).
  virtual SolveResult solve(const FixedPointProblem& problem, const at::Tensor& z0,
                            const SolveLimits& limits) = 0;
};

// Solvers that run another solver (early_exit wraps an inner one) build it by name, with its default
// parameters, through the host: the plugin host installs the maker when it creates its registry, so
// a plugin needs nothing but this header. Throws mhd::Error for an unknown name (with the known ones)
// or when no host has installed a maker.
using SolverMaker = std::function<std::shared_ptr<Solver>(const std::string& name)>;
void install_solver_maker(SolverMaker maker);
std::shared_ptr<Solver> make_solver_by_name(const std::string& name);

}  // namespace mhd
