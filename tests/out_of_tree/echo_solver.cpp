// The smallest useful solver: plain iteration z <- f(z), written outside the project tree.
#include <ATen/ATen.h>

#include "mhd/plugin.h"
#include "mhd/solver.h"

namespace {

class EchoSolver : public mhd::Solver {
 public:
  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::SolveResult out;
    at::Tensor z = z0;
    for (std::int64_t i = 0; i < limits.max_iter; ++i) {
      at::Tensor fz = problem.f(z);
      ++out.info.f_evals;
      const bool done = mhd::record_iteration(out.info, mhd::residuals(z, fz), limits.tol);
      z = fz;
      if (done) break;
    }
    out.z = z;
    return out;
  }
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "echo_solver";
  m.version = "1.0.0";
  m.description = "Plain iteration, built out of tree.";
  m.make_solver = [](const mhd::Params&) { return std::make_shared<EchoSolver>(); };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
