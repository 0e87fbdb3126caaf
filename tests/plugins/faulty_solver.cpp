// A solver plugin that misbehaves on purpose, for the crash-isolation, divergence and kill/resume
// tests (tests/robustness.cmake): plain fixed-point iteration z <- f(z) until, on its
// `fault_at`-th solve, it does what `fault` says:
//   segv  raise SIGSEGV        abort  std::abort()        throw  a std::runtime_error
//   nan   return a NaN equilibrium (the trainer must mark the trial diverged at that step)
//   none  nothing (with sleep_ms: a slow, well-behaved solver to kill a study in the middle of)
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include <ATen/ATen.h>

#include "mhd/plugin.h"
#include "mhd/solver.h"

namespace {

class FaultySolver final : public mhd::Solver {
 public:
  FaultySolver(std::string fault, std::int64_t fault_at, std::int64_t sleep_ms)
      : fault_(std::move(fault)), fault_at_(fault_at), sleep_ms_(sleep_ms) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("faulty", problem, z0, limits);
    if (sleep_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    if (++calls_ == fault_at_) {
      if (fault_ == "segv") std::raise(SIGSEGV);
      if (fault_ == "abort") std::abort();
      if (fault_ == "throw") throw std::runtime_error("faulty solver: failing on purpose at solve " + std::to_string(calls_));
    }
    at::NoGradGuard no_grad;
    mhd::SolveResult out;
    at::Tensor z = z0;  // [B, D]
    for (std::int64_t k = 0; k < limits.max_iter; ++k) {
      const at::Tensor fz = problem.f(z);  // [B, D]
      ++out.info.f_evals;
      const bool done = mhd::record_iteration(out.info, mhd::residuals(z, fz), limits.tol);
      z = fz;
      if (done) break;
    }
    if (fault_ == "nan" && calls_ >= fault_at_) z = at::full_like(z, std::numeric_limits<double>::quiet_NaN());
    out.z = z;
    const mhd::Residuals r = mhd::residuals(z, problem.f(z));
    out.info.final_abs = r.abs;
    out.info.final_rel = r.rel;
    return out;
  }

 private:
  std::string fault_;
  std::int64_t fault_at_, sleep_ms_;
  std::int64_t calls_ = 0;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "faulty";
  m.version = "0.0.1";
  m.description = "Test solver that crashes, aborts, throws or returns NaN on purpose.";
  m.params = {
      mhd::choice_param("fault", "none", {"none", "segv", "abort", "throw", "nan"}, "what to do on solve fault_at"),
      mhd::int_param("fault_at", 1, "the solve (1-based) that misbehaves", 1, 1000000),
      mhd::int_param("sleep_ms", 0, "sleep before each solve (a slow solver)", 0, 100000),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    return std::make_shared<FaultySolver>(p.text("fault"), p.integer("fault_at"), p.integer("sleep_ms"));
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
