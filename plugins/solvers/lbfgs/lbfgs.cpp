// Solver plugin `lbfgs`: the fixed point z* = f(z*) as the minimum of
//
//     phi(z) = 1/2 ||z - f(z)||^2 + energy_weight * E(z)          (per sample)
//
// by batched L-BFGS (mhd::lbfgs_minimize: per-sample history, two-loop recursion, Armijo
// backtracking, curvature-pair skipping). grad phi = r - J_f(z)^T r (+ energy_weight grad E), r = z - f(z),
// with J^T r by autograd inside the solver (mhd::residual_objective: one f evaluation per trial point).
// The original design's LBFGSSolver minimises ||z - f(z)||^2 + lambda E(z); its
// early-exit predictor and mixed precision are other plugins' business.
//
// Iterations: one per L-BFGS step, plus the start point; each records the residual of its iterate
// (mhd::record_iteration, so converged means what it means for every solver). f_evals counts every
// evaluation of f, line-search trials included; "vjp_evals" equals it (each trial also backpropagates).
// A sample at tol stops moving. The solve ends at tol, at max_iter, or when every remaining sample's
// line search fails even along -grad ("stalled" = 1: phi is flat to round-off there).
// With energy_weight > 0 the minimum is a compromise between the fixed point and the energy minimum,
// and its residual need not reach tol.
//
// f must be differentiable by autograd. The backward map of implicit differentiation
// (g -> J^T g + v) is built without a graph, so this solver refuses to be a backward solver with a
// clear error; use fixed_point, anderson or hybrid there.
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/kits/lbfgs.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

struct Options {
  std::int64_t history = 10;
  double energy_weight = 0.0;
  std::int64_t max_backtracks = 20;
};

class LbfgsSolver final : public mhd::Solver {
 public:
  explicit LbfgsSolver(Options options) : opt_(options) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("lbfgs", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;
    const bool weighted_energy = opt_.energy_weight > 0.0 && problem.energy && problem.grad_energy;
    std::int64_t energy_evals = 0;

    mhd::BatchedObjective phi = [&](const at::Tensor& z) {
      ++info.f_evals;
      const mhd::ResidualObjective ro = mhd::residual_objective(problem.f, z);
      if (!ro.grad.defined())
        throw mhd::Error(
            "lbfgs: f(z) has no autograd graph to differentiate (as in the backward solve of implicit "
            "differentiation); use fixed_point, anderson or hybrid as the backward solver");
      mhd::ObjectiveEval e{ro.value, ro.grad, {ro.fz}};
      if (weighted_energy) {
        ++energy_evals;
        const at::Tensor energy = problem.energy(z);
        e.value = e.value + opt_.energy_weight * energy;
        e.grad = e.grad + opt_.energy_weight * problem.grad_energy(z);
        e.aux.push_back(energy);
      }
      return e;
    };
    bool nonfinite = false;
    mhd::LbfgsObserver observer = [&](const at::Tensor& z, const mhd::ObjectiveEval& e) -> at::Tensor {
      const at::Tensor& fz = e.aux[0];
      at::Tensor energy;
      if (weighted_energy) {
        energy = e.aux[1];
      } else if (problem.energy) {  // the energy trace, as every solver records it
        ++energy_evals;
        energy = problem.energy(z);
      }
      const mhd::Residuals r = mhd::residuals(z, fz);
      const bool done = mhd::record_iteration(info, r, limits.tol, energy);
      nonfinite = mhd::stop_if_nonfinite(info, fz);
      if (done || nonfinite || info.iterations >= limits.max_iter)
        return at::ones({z.size(0)}, z.options().dtype(at::kBool));
      return r.rel.lt(limits.tol);  // a sample at tol stays where it is
    };

    mhd::LbfgsOptions lo;
    lo.history = opt_.history;
    lo.max_steps = limits.max_iter;
    lo.max_backtracks = opt_.max_backtracks;
    const mhd::LbfgsResult res = mhd::lbfgs_minimize(phi, z0, lo, observer);

    out.z = res.z;
    info.extra.emplace_back("vjp_evals", static_cast<double>(info.f_evals));
    info.extra.emplace_back("energy_evals", static_cast<double>(energy_evals));
    info.extra.emplace_back("lbfgs_skipped_pairs", static_cast<double>(res.skipped_pairs));
    info.extra.emplace_back("line_search_failures", static_cast<double>(res.line_search_failures));
    info.extra.emplace_back("stalled", res.stop == mhd::LbfgsStop::Stalled ? 1.0 : 0.0);
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  Options opt_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "lbfgs";
  m.version = "1.0.0";
  m.description =
      "Batched L-BFGS on 1/2 ||z - f(z)||^2 (+ energy_weight E(z)) with per-sample Armijo line search; "
      "needs f differentiable (not a backward solver)";
  m.params = {
      mhd::int_param("history", 10, "curvature pairs (s, y) kept per sample (the seeds: 10)", 1, 100),
      mhd::float_param("energy_weight", 0.0,
                       "lambda in 1/2 ||z - f(z)||^2 + lambda E(z); 0 solves the fixed point alone. Ignored "
                       "when the problem has no energy",
                       0.0, 1e6),
      mhd::int_param("max_backtracks", 20, "line search: halvings of the step before a sample's search fails", 1,
                     100),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    Options o;
    o.history = p.integer("history");
    o.energy_weight = p.real("energy_weight");
    o.max_backtracks = p.integer("max_backtracks");
    return std::make_shared<LbfgsSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
