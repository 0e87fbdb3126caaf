// Anderson, the hybrid solver's three modes, L-BFGS, neural_ode, broyden, early_exit (around Anderson and
// fixed point) and learned (untrained) vs fixed point on contractive
// maps, B = 32, D = 256, to tol 1e-4 (worst sample's relative residual), every plugin loaded through the
// registry as the host loads it, with its default parameters (variant rows: anderson_broyden = Anderson
// with fallback = broyden, the hand-over to Broyden on a degenerate system; anderson_lam0 = Anderson
// with lam 0; broyden_no_ls = Broyden with max_backtracks 0). These problems have no energy, so the
// hybrid modes run as they do without one: alternating = fixed-point iteration, simultaneous = descent
// on ||z - f(z)||^2, cascade = fixed point for half the budget then L-BFGS on 1/2 ||z - f(z)||^2.
//
// Cases (the benchmark argument):
//   0 gaussian       z -> z W^T + x,        W Gaussian scaled to ||W||_2 = 0.95 (non-normal; its
//                                             eigenvalues fill a disc of radius ~0.5)
//   1 near_critical  z -> z W^T + x,        W = Q diag(lambda) Q^T, lambda uniform in [-0.95, 0.95]:
//                                             the slowest modes contract by only 0.95 per step
//   2 tanh_critical  z -> tanh(z W^T + x),  the near_critical W inside a DEQ-style tanh cell
//   3 rank_one       z -> tanh(0.99 mean(z) 1 + x), x_b = beta_b 1, beta_b ~ N(0, 0.01): W = 0.99 1 1^T / D
//                                             (rank one) and an input equal across coordinates, so every
//                                             iterate from z0 = 0 is a multiple of 1 and Anderson's
//                                             residual history is exactly rank one: its unregularised
//                                             (lam = 0) bordered system is singular (run by fixed_point,
//                                             the Anderson, neural_ode and Broyden rows only)
// Counters per solve: f_evals, iterations, converged (0/1), final_rel (worst sample), and for Anderson
// its fallbacks (raise_lam's damped sample-steps; broyden_fallback: 1 when the solve went over to
// Broyden, at iteration fallback_iter); for neural_ode its Dormand-Prince trials and rejected
// sample-steps; for broyden its line search's extra evaluations and failures and its memory
// restarts; for the descent solvers
// vjp_evals (backward passes through f, one per f evaluation of the residual objective), the line
// search's failures and the hybrid's stop_rule. Time is wall time per solve, with one intra-op thread (see main).
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <benchmark/benchmark.h>

#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/runtime.h"
#include "plugin_host/registry.h"
#include "mhd/solver.h"

namespace {

constexpr std::int64_t kBatch = 32;
constexpr std::int64_t kDim = 256;
constexpr double kNorm = 0.95;
constexpr double kTol = 1e-4;
constexpr std::int64_t kMaxIter = 2000;

const char* const kCaseNames[] = {"gaussian", "near_critical", "tanh_critical", "rank_one"};

const char* plugin_file(const std::string& name) {
  if (name == "anderson") return MHD_PLUGIN_ANDERSON;
  if (name == "hybrid") return MHD_PLUGIN_HYBRID;
  if (name == "lbfgs") return MHD_PLUGIN_LBFGS;
  if (name == "neural_ode") return MHD_PLUGIN_NEURAL_ODE;
  if (name == "broyden") return MHD_PLUGIN_BROYDEN;
  if (name == "early_exit") return MHD_PLUGIN_EARLY_EXIT;
  if (name == "learned") return MHD_PLUGIN_LEARNED;
  return MHD_PLUGIN_FIXED_POINT;
}

using Overrides = std::map<std::string, mhd::ParamValue>;

// The plugin's defaults, with `overrides` (e.g. the hybrid solver's mode) on top.
std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides) {
  auto& reg = mhd::PluginRegistry::global();
  // Every solver, so that early_exit finds the inner solver it wraps.
  for (const char* solver : {"fixed_point", "anderson", "hybrid", "lbfgs", "neural_ode", "broyden", "early_exit", "learned"})
    reg.load_file(plugin_file(solver), mhd::PluginKind::Solver);
  auto params = mhd::Params::defaults(reg.require(mhd::PluginKind::Solver, name).manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return reg.make<mhd::Solver>(name, params);
}

// W: [D, D] with ||W||_2 = kNorm.
at::Tensor gaussian_weight() {
  const at::Tensor a = at::randn({kDim, kDim});
  return a * (kNorm / at::linalg_svdvals(a).max().item<double>());
}

at::Tensor near_critical_weight() {
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({kDim, kDim})));  // orthogonal
  const at::Tensor lambda = at::linspace(-kNorm, kNorm, kDim);
  return q.matmul(at::diag(lambda)).matmul(q.t());
}

mhd::FixedPointProblem make_problem(std::int64_t which) {
  at::manual_seed(0);
  mhd::FixedPointProblem p;
  if (which == 3) {
    // One input per sample, equal across coordinates: [B, D]. mean(z) 1 = z W^T with W = 1 1^T / D.
    const at::Tensor x = 0.1 * at::randn({kBatch, 1}) * at::ones({1, kDim});
    p.f = [x](const at::Tensor& z) { return at::tanh(0.99 * z.mean(1, /*keepdim=*/true) + x); };
    return p;
  }
  const at::Tensor w = which == 0 ? gaussian_weight() : near_critical_weight();
  const at::Tensor x = at::randn({kBatch, kDim});  // the input injection: [B, D]
  if (which == 2) {
    p.f = [w, x](const at::Tensor& z) { return at::tanh(at::addmm(x, z, w.t())); };
  } else {
    p.f = [w, x](const at::Tensor& z) { return at::addmm(x, z, w.t()); };
  }
  return p;
}

double extra(const mhd::SolverInfo& info, const std::string& key) {
  for (const auto& [k, v] : info.extra)
    if (k == key) return v;
  return 0.0;
}

// Single-entry overrides, as functions: a brace list would split into macro arguments at its commas.
Overrides lam(double value) { return {{"lam", value}}; }
Overrides fallback(const char* value) { return {{"fallback", std::string(value)}}; }
Overrides mode(const char* value) { return {{"mode", std::string(value)}}; }
Overrides backtracks(std::int64_t value) { return {{"max_backtracks", value}}; }
Overrides inner(const char* value) { return {{"inner", std::string(value)}}; }

void BM_Solve(benchmark::State& state, const std::string& solver_name, const Overrides& overrides = {}) {
  const std::int64_t which = state.range(0);
  const mhd::FixedPointProblem problem = make_problem(which);
  const auto solver = make_solver(solver_name, overrides);
  const at::Tensor z0 = at::zeros({kBatch, kDim});
  const mhd::SolveLimits limits{kMaxIter, kTol};
  at::NoGradGuard no_grad;

  mhd::SolveResult last;
  for (auto _ : state) {
    last = solver->solve(problem, z0, limits);
    benchmark::DoNotOptimize(last.z.data_ptr());
  }
  state.SetLabel(kCaseNames[which]);
  state.counters["f_evals"] = static_cast<double>(last.info.f_evals);
  state.counters["iterations"] = static_cast<double>(last.info.iterations);
  state.counters["converged"] = last.info.converged ? 1.0 : 0.0;
  state.counters["final_rel"] = last.info.rel_trace.back();
  if (solver_name == "anderson") {
    state.counters["fallbacks"] = extra(last.info, "anderson_fallbacks");
    state.counters["broyden_fallback"] = extra(last.info, "anderson_broyden_fallbacks");
    state.counters["fallback_iter"] = extra(last.info, "anderson_fallback_iteration");
  }
  if (solver_name == "hybrid" || solver_name == "lbfgs") {
    state.counters["vjp_evals"] = extra(last.info, "vjp_evals");
    state.counters["ls_failures"] = extra(last.info, "line_search_failures");
  }
  if (solver_name == "hybrid") state.counters["stop_rule"] = extra(last.info, "stop_rule");
  if (solver_name == "neural_ode") {
    state.counters["ode_trials"] = extra(last.info, "ode_trials");
    state.counters["ode_rejected"] = extra(last.info, "ode_rejected_steps");
  }
  if (solver_name == "early_exit") {
    state.counters["sample_evals"] = extra(last.info, "early_exit_sample_evals");
    state.counters["evals_saved"] = extra(last.info, "early_exit_f_evals_saved");
  }
  if (solver_name == "broyden") {
    state.counters["ls_evals"] = extra(last.info, "broyden_line_search_evals");
    state.counters["ls_failures"] = extra(last.info, "broyden_ls_failures");
    state.counters["restarts"] = extra(last.info, "broyden_restarts");
  }
}

BENCHMARK_CAPTURE(BM_Solve, fixed_point, std::string("fixed_point"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, anderson, std::string("anderson"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Anderson handing the solve to Broyden when its small system is degenerate (fallback = broyden).
BENCHMARK_CAPTURE(BM_Solve, anderson_broyden, std::string("anderson"), fallback("broyden"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Plain (unregularised) Anderson: lam = 0, so a singular bordered system shows up as fallbacks.
BENCHMARK_CAPTURE(BM_Solve, anderson_lam0, std::string("anderson"), lam(0.0))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, neural_ode, std::string("neural_ode"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, broyden, std::string("broyden"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Broyden without its line search (every step the full step): what the line search costs or saves.
BENCHMARK_CAPTURE(BM_Solve, broyden_no_ls, std::string("broyden"), backtracks(0))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, hybrid_alternating, std::string("hybrid"), mode("alternating"))
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, hybrid_simultaneous, std::string("hybrid"), mode("simultaneous"))
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, hybrid_cascade, std::string("hybrid"), mode("cascade"))
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Per-row exits around Anderson and fixed point: the same iterations, fewer sample evaluations.
BENCHMARK_CAPTURE(BM_Solve, early_exit_anderson, std::string("early_exit"), inner("anderson"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, early_exit_fixed_point, std::string("early_exit"), inner("fixed_point"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// The learned solver without an accelerator file: Anderson's mixing from the same plugin (its
// trained form needs a model's context: mhd meta-train, docs/experiments.md).
BENCHMARK_CAPTURE(BM_Solve, learned_untrained, std::string("learned"))
    ->DenseRange(0, 3)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Solve, lbfgs, std::string("lbfgs"))
    ->DenseRange(0, 2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

// Every core, like every mhd command, unless OMP_NUM_THREADS says otherwise; the tables in
// docs/benchmarks.md were taken with OMP_NUM_THREADS=1, so the numbers measure the solvers, not how
// the thread pool competes with whatever else runs on a small shared machine.
int main(int argc, char** argv) {
  mhd::use_all_cores();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
