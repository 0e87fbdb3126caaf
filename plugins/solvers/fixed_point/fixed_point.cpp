// Solver plugin `fixed_point`: damped Picard iteration  z <- (1 - damping) z + damping f(z).
//
// The baseline every other solver is measured against, and the simplest backward solver of
// implicit differentiation (there f(g) = J^T g + v is linear; nothing here assumes an energy).
//
// Per iteration k (one f evaluation):  fz = f(z_k); residuals of (z_k, fz) are recorded with
// mhd::record_iteration; if the worst sample is below tol, z_k is returned, else
// z_{k+1} = z_k + damping (fz - z_k) for every sample still above tol. Each sample returns its
// iterate with the lowest measured residual (mhd::BestIterate: the last one when the iteration
// contracts), and info.final_abs / final_rel describe exactly the returned state.
//
// A sample that has reached tol stays where it is while the others iterate: its result is then the
// same whatever else is in the batch (rows are independent problems), and later steps cannot move it
// away again.
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

class FixedPointSolver final : public mhd::Solver {
 public:
  explicit FixedPointSolver(double damping) : damping_(damping) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("fixed_point", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;

    at::Tensor z = z0;  // [B, D]
    mhd::BestIterate best;
    for (std::int64_t k = 0; k < limits.max_iter; ++k) {
      const at::Tensor fz = problem.f(z);  // [B, D]
      ++info.f_evals;
      mhd::check_map_shape("fixed_point", z, fz);
      const mhd::Residuals r = mhd::residuals(z, fz);
      const bool done = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z));
      best.observe(z, r);
      if (mhd::stop_if_nonfinite(info, fz) || done) break;
      // Not yet converged: [B, 1]. Written as !(rel < tol) so that a NaN residual (a norm that
      // overflowed) keeps its sample moving rather than freezing it.
      const at::Tensor active = at::logical_not(r.rel.lt(limits.tol)).unsqueeze(1);
      z = at::where(active, damped_step(z, fz), z);
    }

    out.z = best.best();
    best.finish(info);
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  // z + d (f(z) - z) == (1 - d) z + d f(z); with d == 1 exactly f(z), without rounding.
  at::Tensor damped_step(const at::Tensor& z, const at::Tensor& fz) const {
    if (damping_ == 1.0) return fz;
    return z + damping_ * (fz - z);
  }

  double damping_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "fixed_point";
  m.version = "1.0.0";
  m.description = "Damped fixed-point (Picard) iteration z <- (1 - damping) z + damping f(z)";
  m.params = {
      mhd::float_param("damping", 1.0,
                       "step size in (0, 1]: z <- (1 - damping) z + damping f(z); 1 is plain iteration, "
                       "smaller values stabilise maps that are not contractive",
                       1e-6, 1.0),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    return std::make_shared<FixedPointSolver>(p.real("damping"));
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
