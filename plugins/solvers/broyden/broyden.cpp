// Solver plugin `broyden`: limited-memory good Broyden on g(z) = f(z) - z with a per-sample
// backtracking line search on ||g|| (the method: mhd/kits/broyden.h).
//
// Iterations: the start point, then one per Broyden step; each records the residual of the accepted
// point (mhd::record_iteration, the same stopping rule as every solver) and each sample returns its
// lowest-residual iterate (mhd::BestIterate). f_evals counts every evaluation:
// iterations + info.extra "broyden_line_search_evals" (the backtracking trials). A sample at tol stops
// moving. Running out of max_iter returns the best states with converged = false; a non-finite f(z)
// ends the solve (mhd::stop_if_nonfinite).
//
// Only f is used (no autograd through it), so it also serves as the backward solver of implicit
// differentiation, where f(g) = J^T g + v is linear and Broyden's secant model becomes exact along
// the directions it has explored.
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "mhd/kits/broyden.h"
#include "mhd/error.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

constexpr const char* kName = "broyden";

class BroydenSolver final : public mhd::Solver {
 public:
  explicit BroydenSolver(mhd::broyden::Options options) : opt_(options) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs(kName, problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;

    const at::Tensor fz = problem.f(z0);  // [B, D]
    ++info.f_evals;
    mhd::check_map_shape(kName, z0, fz);
    const mhd::Residuals r = mhd::residuals(z0, fz);
    const bool done = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z0));
    mhd::BestIterate best;
    best.observe(z0, r);
    // One core per solve: its counters describe this solve, and a solver object may be shared.
    mhd::broyden::Core core(kName, opt_);
    if (!mhd::stop_if_nonfinite(info, fz) && !done) core.run(problem, z0, fz, limits, info, best);

    out.z = best.best();
    best.finish(info);
    const mhd::broyden::Stats& st = core.stats();
    info.extra.emplace_back("broyden_line_search_evals", static_cast<double>(st.line_search_evals));
    info.extra.emplace_back("broyden_backtracks", static_cast<double>(st.backtracks));
    info.extra.emplace_back("broyden_ls_failures", static_cast<double>(st.line_search_failures));
    info.extra.emplace_back("broyden_skipped_updates", static_cast<double>(st.skipped_updates));
    info.extra.emplace_back("broyden_resets", static_cast<double>(st.resets));
    info.extra.emplace_back("broyden_restarts", static_cast<double>(st.restarts));
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  mhd::broyden::Options opt_;
};

// The schema's ranges, checked here too: a solver built directly (tests, benchmarks, another plugin)
// gets the same one-line error as a study would.
void validate(const mhd::Params& p, const mhd::ParamSchema& schema) {
  for (const auto& spec : schema) {
    auto it = p.values().find(spec.name);
    if (it == p.values().end()) continue;  // the getter names a missing key
    if (auto why = mhd::check_param_value(spec, it->second))
      throw mhd::Error(std::string(kName) + ": parameter '" + spec.name + "' " + *why);
  }
}

mhd::ParamSchema schema() {
  return {
      mhd::int_param("memory", 10,
                     "secant pairs (u, v) kept per sample in the inverse-Jacobian approximation -I + U V^T; when "
                     "full it restarts from -I",
                     1, 1000),
      mhd::float_param("armijo_c1", 1e-4,
                       "line search: a step t is accepted when ||g(z + t d)|| <= (1 - armijo_c1 t) ||g(z)||", 0.0,
                       0.5),
      mhd::float_param("backtrack", 0.5, "line search: t <- backtrack * t after a failed test", 0.01, 0.99),
      mhd::int_param("max_backtracks", 3,
                     "line search: trials beyond the full step before the last one is taken anyway; 0 always "
                     "takes the full step (no line search)",
                     0, 60),
      mhd::int_param("nonmonotone", 10,
                     "line search: the test compares with the largest ||g|| of the last this-many iterates (1: "
                     "plain monotone Armijo), so Broyden's usual non-monotone steps are not cut back",
                     1, 100),
  };
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = kName;
  m.version = "1.0.0";
  m.description = "Limited-memory good Broyden on f(z) - z with a per-sample backtracking line search";
  m.params = schema();
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    validate(p, schema());
    mhd::broyden::Options o;
    o.memory = p.integer("memory");
    o.armijo_c1 = p.real("armijo_c1");
    o.backtrack = p.real("backtrack");
    o.max_backtracks = p.integer("max_backtracks");
    o.nonmonotone = p.integer("nonmonotone");
    return std::make_shared<BroydenSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
