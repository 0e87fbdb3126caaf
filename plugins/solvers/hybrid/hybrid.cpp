// Solver plugin `hybrid`: the original design's unified equilibrium solver, which looks for
// a state that is both a fixed point z* = f(z*) and a minimum of the energy E (docs/design.md §4), in the
// seeds' three modes:
//
//   alternating   fixed-point steps z <- z + damping (f(z) - z) and energy-descent steps
//                 z <- z - eta grad E(z) in turn (iterations 0, 2, 4, ... and 1, 3, 5, ...).
//   simultaneous  gradient descent on Phi(z) = w ||z - f(z)||^2 + E(z); grad Phi needs J_f(z)^T r,
//                 taken by autograd inside the solver (mhd::residual_objective). Steps are
//                 Barzilai-Borwein scaled with a per-sample Armijo line search (mhd::lbfgs_minimize
//                 with history 0) where the seeds used Adam with a fixed learning rate.
//   cascade       fixed-point iteration until the residual rule or fp_share * max_iter iterations,
//                 then L-BFGS (mhd::lbfgs_minimize, history m) on E from the best fixed-point iterate
//                 for the rest of the budget.
//
// grad E is the problem's grad_energy, which includes the consistency term's dependence on z through
// f (docs/design.md §4; the original design's energy_gradient drops it).
//
// Stopping (the original design's three criteria; the first that holds ends the solve, and info.extra
// "stop_rule" says which: 0 max_iter, 1 residual, 2 energy_grad, 3 plateau, 4 non-finite, 5 stalled):
//   residual     the worst relative residual < tol (mhd::record_iteration, as every solver; this is
//                also what info.converged means). Not in cascade's energy phase, which starts from
//                a point that may already meet it.
//   energy_grad  the worst ||grad E(z)|| < grad_tol (where grad E is evaluated: alternating's energy
//                steps, every simultaneous and cascade-refinement iterate).
//   plateau      |change of the batch-mean energy| < plateau_tol for `patience` iterations in a row.
// The seeds stop only when all three hold at once; fixed points and energy minima need not coincide
// (docs/design.md §4: the original design's Theorem 2 is a hypothesis), so that rule would mostly run to max_iter.
//
// Without an energy (the study's energy off, or the backward solve of implicit differentiation):
// alternating is damped fixed-point iteration; simultaneous minimises w ||z - f(z)||^2; cascade
// refines with L-BFGS on 1/2 ||z - f(z)||^2 (with the residual rule on). When f(z) has no autograd
// graph — the backward map g -> J^T g + v is built detached — simultaneous and cascade's refinement
// cannot form J^T r and continue as damped fixed-point iteration ("no_graph_fallback" = 1).
//
// Returned point: alternating and the fixed-point phases return each sample's best iterate
// (mhd::BestIterate, lowest residual); simultaneous and cascade's refinement return their last
// iterate, the lowest value of the objective they descend (their line searches are monotone), whose
// residual is then the one reported.
#include <cmath>
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

enum class Mode { Alternating, Simultaneous, Cascade };

enum StopRule : int { kMaxIter = 0, kResidual = 1, kEnergyGrad = 2, kPlateau = 3, kNonfinite = 4, kStalled = 5 };

struct HybridOptions {
  Mode mode = Mode::Alternating;
  double damping = 1.0;
  double eta = 0.01;
  double grad_tol = 1e-3;
  double plateau_tol = 1e-4;
  std::int64_t patience = 5;
  std::int64_t history = 10;
  double fp_share = 0.5;
  double residual_weight = 1.0;
};

// Thrown by an objective whose f(z) has no autograd graph, caught by the mode that built it.
struct NoGraph {};

// |change of the batch-mean energy| < tol for `patience` consecutive iterations.
class Plateau {
 public:
  Plateau(double tol, std::int64_t patience) : tol_(tol), patience_(patience) {}
  bool observe(const at::Tensor& energy) {  // energy: [B] or undefined
    if (!energy.defined() || tol_ <= 0.0) return false;
    const double e = energy.mean().item<double>();
    count_ = (seen_ && std::abs(e - last_) < tol_) ? count_ + 1 : 0;
    last_ = e;
    seen_ = true;
    return count_ >= patience_;
  }

 private:
  double tol_;
  std::int64_t patience_;
  double last_ = 0.0;
  bool seen_ = false;
  std::int64_t count_ = 0;
};

// One solve: the problem, the budget, the record and the counts every mode shares.
class SolveRun {
 public:
  SolveRun(const mhd::FixedPointProblem& problem, const mhd::SolveLimits& limits, const HybridOptions& opt,
           mhd::SolverInfo& info)
      : problem(problem), limits(limits), opt(opt), info(info), plateau(opt.plateau_tol, opt.patience) {}

  bool has_energy() const { return static_cast<bool>(problem.energy) && static_cast<bool>(problem.grad_energy); }

  at::Tensor f(const at::Tensor& z) {  // [B, D]
    ++info.f_evals;
    at::Tensor fz = problem.f(z);
    mhd::check_map_shape("hybrid", z, fz);
    return fz;
  }
  at::Tensor energy(const at::Tensor& z) {  // [B], undefined without an energy
    if (!problem.energy) return {};
    ++energy_evals;
    return problem.energy(z);
  }
  at::Tensor grad_energy(const at::Tensor& z) {  // [B, D]
    ++grad_evals;
    at::Tensor g = problem.grad_energy(z);
    if (!g.defined() || !g.sizes().equals(z.sizes())) throw mhd::Error("hybrid: grad_energy(z) must have z's shape");
    return g;
  }
  // 1/2 ||z - f(z)||^2, its gradient and f(z); throws NoGraph when f(z) cannot be differentiated.
  mhd::ResidualObjective residual_objective(const at::Tensor& z) {
    ++info.f_evals;
    ++vjp_evals;
    mhd::ResidualObjective ro = mhd::residual_objective(problem.f, z);
    if (!ro.grad.defined()) throw NoGraph{};
    return ro;
  }

  bool record(const mhd::Residuals& r, const at::Tensor& energy) {
    return mhd::record_iteration(info, r, limits.tol, energy);
  }
  bool budget_left() const { return info.iterations < limits.max_iter; }
  // The energy_grad rule on g = grad E(z): [B, D].
  bool grad_small(const at::Tensor& g) {
    last_grad_norm = g.norm(2, {1}).max().item<double>();
    return opt.grad_tol > 0.0 && last_grad_norm < opt.grad_tol;
  }

  const mhd::FixedPointProblem& problem;
  const mhd::SolveLimits& limits;
  const HybridOptions& opt;
  mhd::SolverInfo& info;
  Plateau plateau;
  int stop = kMaxIter;
  std::int64_t fp_steps = 0, energy_steps = 0, descent_steps = 0, lbfgs_steps = 0;
  std::int64_t energy_evals = 0, grad_evals = 0, vjp_evals = 0;
  std::int64_t skipped_pairs = 0, line_search_failures = 0;
  bool no_graph = false;
  double last_grad_norm = std::nan("");
};

// z + damping (f(z) - z); exactly f(z) for damping 1.
at::Tensor damped(const at::Tensor& z, const at::Tensor& fz, double damping) {
  return damping == 1.0 ? fz : z + damping * (fz - z);
}

// Fixed-point iterations from z until `budget` recorded iterations in all, a rule or a non-finite
// f(z). energy_steps: every odd iteration is an energy-descent step (alternating); energy_rules:
// the energy_grad and plateau rules apply. Returns each sample's best iterate.
at::Tensor fixed_point_phase(SolveRun& run, at::Tensor z, std::int64_t budget, bool energy_steps, bool energy_rules) {
  mhd::BestIterate best;
  energy_steps = energy_steps && run.has_energy();
  for (std::int64_t k = 0; run.info.iterations < budget; ++k) {
    const at::Tensor fz = run.f(z);  // [B, D]
    const at::Tensor energy = run.energy(z);
    const mhd::Residuals r = mhd::residuals(z, fz);
    const bool done = run.record(r, energy);
    best.observe(z, r);
    if (mhd::stop_if_nonfinite(run.info, fz)) {
      run.stop = kNonfinite;
      break;
    }
    if (done) {
      run.stop = kResidual;
      break;
    }
    if (energy_rules && run.plateau.observe(energy)) {
      run.stop = kPlateau;
      break;
    }
    // Samples at tol stay where they are, as in fixed_point (rows are independent problems). [B, 1]
    const at::Tensor active = at::logical_not(r.rel.lt(run.limits.tol)).unsqueeze(1);
    if (energy_steps && k % 2 == 1) {
      const at::Tensor g = run.grad_energy(z);  // [B, D]
      if (energy_rules && run.grad_small(g)) {
        run.stop = kEnergyGrad;
        break;
      }
      z = at::where(active, z - run.opt.eta * g, z);
      ++run.energy_steps;
    } else {
      z = at::where(active, damped(z, fz, run.opt.damping), z);
      ++run.fp_steps;
    }
  }
  best.finish(run.info);
  return best.best();
}

void count(SolveRun& run, const mhd::LbfgsResult& res, std::int64_t& steps) {
  steps += res.steps;
  run.skipped_pairs += res.skipped_pairs;
  run.line_search_failures += res.line_search_failures;
}

// Every sample: [B] all true (ends the minimisation).
at::Tensor all_rows(const at::Tensor& z) { return at::ones({z.size(0)}, z.options().dtype(at::kBool)); }

at::Tensor simultaneous(SolveRun& run, const at::Tensor& z0) {
  const double w = run.opt.residual_weight;
  const bool with_energy = run.has_energy();
  mhd::BatchedObjective phi = [&](const at::Tensor& z) {
    const mhd::ResidualObjective ro = run.residual_objective(z);
    mhd::ObjectiveEval e;
    e.value = 2.0 * w * ro.value;  // w ||r||^2
    e.grad = 2.0 * w * ro.grad;
    e.aux = {ro.fz};
    if (with_energy) {
      const at::Tensor energy = run.energy(z), g = run.grad_energy(z);
      e.value = e.value + energy;
      e.grad = e.grad + g;
      e.aux.push_back(energy);
      e.aux.push_back(g);
    }
    return e;
  };
  mhd::LbfgsObserver observer = [&](const at::Tensor& z, const mhd::ObjectiveEval& e) -> at::Tensor {
    const at::Tensor& fz = e.aux[0];
    const at::Tensor energy = with_energy ? e.aux[1] : at::Tensor();
    const mhd::Residuals r = mhd::residuals(z, fz);
    const bool done = run.record(r, energy);
    int rule = -1;
    if (mhd::stop_if_nonfinite(run.info, fz))
      rule = kNonfinite;
    else if (done)
      rule = kResidual;
    else if (with_energy && run.grad_small(e.aux[2]))
      rule = kEnergyGrad;
    else if (run.plateau.observe(energy))
      rule = kPlateau;
    else if (!run.budget_left())
      rule = kMaxIter;
    if (rule >= 0) {
      run.stop = rule;
      return all_rows(z);
    }
    return r.rel.lt(run.limits.tol);  // samples at tol stay where they are
  };
  mhd::LbfgsOptions lo;
  lo.history = 0;  // gradient descent, Barzilai-Borwein scaled
  lo.max_steps = run.limits.max_iter;
  try {
    const mhd::LbfgsResult res = mhd::lbfgs_minimize(phi, z0, lo, observer);
    count(run, res, run.descent_steps);
    if (res.stop == mhd::LbfgsStop::Stalled) run.stop = kStalled;
    return res.z;
  } catch (const NoGraph&) {
    run.no_graph = true;
    return fixed_point_phase(run, z0, run.limits.max_iter, false, false);
  }
}

at::Tensor cascade(SolveRun& run, const at::Tensor& z0) {
  const std::int64_t fp_budget =
      std::max<std::int64_t>(1, std::llround(run.opt.fp_share * static_cast<double>(run.limits.max_iter)));
  const at::Tensor z_fp = fixed_point_phase(run, z0, fp_budget, false, false);
  if (run.stop == kNonfinite || !run.budget_left()) return z_fp;

  const bool with_energy = run.has_energy();
  // The energy when there is one, else the residual objective (then the residual rule applies).
  mhd::BatchedObjective objective = [&](const at::Tensor& z) {
    mhd::ObjectiveEval e;
    if (with_energy) {
      e.value = run.energy(z);
      e.grad = run.grad_energy(z);
    } else {
      const mhd::ResidualObjective ro = run.residual_objective(z);
      e.value = ro.value;
      e.grad = ro.grad;
      e.aux = {ro.fz};
    }
    return e;
  };
  bool at_start = true;
  mhd::LbfgsObserver observer = [&](const at::Tensor& z, const mhd::ObjectiveEval& e) -> at::Tensor {
    int rule = -1;
    if (at_start) {  // the start point was recorded by the fixed-point phase
      at_start = false;
      if (with_energy && run.grad_small(e.grad)) rule = kEnergyGrad;
    } else {
      const at::Tensor fz = with_energy ? run.f(z) : e.aux[0];
      const at::Tensor energy = with_energy ? e.value : run.energy(z);
      const mhd::Residuals r = mhd::residuals(z, fz);
      const bool done = run.record(r, energy);
      if (mhd::stop_if_nonfinite(run.info, fz))
        rule = kNonfinite;
      else if (!with_energy && done)
        rule = kResidual;
      else if (with_energy && run.grad_small(e.grad))
        rule = kEnergyGrad;
      else if (run.plateau.observe(energy))
        rule = kPlateau;
      else if (!run.budget_left())
        rule = kMaxIter;
    }
    if (rule >= 0) {
      run.stop = rule;
      return all_rows(z);
    }
    return at::Tensor();
  };
  mhd::LbfgsOptions lo;
  lo.history = run.opt.history;
  lo.max_steps = run.limits.max_iter - run.info.iterations;
  try {
    run.stop = kMaxIter;
    const mhd::LbfgsResult res = mhd::lbfgs_minimize(objective, z_fp, lo, observer);
    count(run, res, run.lbfgs_steps);
    if (res.stop == mhd::LbfgsStop::Stalled) run.stop = kStalled;
    // No step taken: the fixed-point phase's best iterate and its recorded residuals stand.
    return res.z;
  } catch (const NoGraph&) {
    run.no_graph = true;
    return fixed_point_phase(run, z_fp, run.limits.max_iter, false, false);
  }
}

class HybridSolver final : public mhd::Solver {
 public:
  explicit HybridSolver(HybridOptions options) : opt_(options) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("hybrid", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    SolveRun run(problem, limits, opt_, out.info);
    switch (opt_.mode) {
      case Mode::Alternating: out.z = fixed_point_phase(run, z0, limits.max_iter, true, true); break;
      case Mode::Simultaneous: out.z = simultaneous(run, z0); break;
      case Mode::Cascade: out.z = cascade(run, z0); break;
    }
    auto& extra = out.info.extra;
    extra.emplace_back("stop_rule", run.stop);
    extra.emplace_back("fp_steps", static_cast<double>(run.fp_steps));
    extra.emplace_back("energy_steps", static_cast<double>(run.energy_steps));
    extra.emplace_back("descent_steps", static_cast<double>(run.descent_steps));
    extra.emplace_back("lbfgs_steps", static_cast<double>(run.lbfgs_steps));
    extra.emplace_back("energy_evals", static_cast<double>(run.energy_evals));
    extra.emplace_back("grad_energy_evals", static_cast<double>(run.grad_evals));
    extra.emplace_back("vjp_evals", static_cast<double>(run.vjp_evals));
    extra.emplace_back("lbfgs_skipped_pairs", static_cast<double>(run.skipped_pairs));
    extra.emplace_back("line_search_failures", static_cast<double>(run.line_search_failures));
    extra.emplace_back("no_graph_fallback", run.no_graph ? 1.0 : 0.0);
    if (!std::isnan(run.last_grad_norm)) extra.emplace_back("energy_grad_norm", run.last_grad_norm);
    out.info.wall_ms = watch.ms();
    return out;
  }

 private:
  HybridOptions opt_;
};

Mode mode_from(const std::string& name) {
  if (name == "simultaneous") return Mode::Simultaneous;
  if (name == "cascade") return Mode::Cascade;
  return Mode::Alternating;  // the schema admits only the three names
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "hybrid";
  m.version = "1.0.0";
  m.description =
      "the original design's hybrid equilibrium solver (fixed point and energy minimum): alternating, simultaneous or "
      "cascade, stopping on residual, energy gradient or energy plateau (extra stop_rule)";
  m.params = {
      mhd::choice_param(
          "mode", "alternating", {"alternating", "simultaneous", "cascade"},
          "alternating: fixed-point and energy-descent steps in turn; simultaneous: descent on "
          "w ||z - f(z)||^2 + E(z); cascade: fixed-point iteration, then L-BFGS on E. Without an energy (energy "
          "off, backward solve): alternating = damped fixed point, simultaneous = descent on w ||z - f(z)||^2, "
          "cascade = fixed point then L-BFGS on 1/2 ||z - f(z)||^2; where f has no autograd graph (the "
          "implicit backward map) simultaneous and cascade continue as damped fixed point"),
      mhd::float_param("damping", 1.0, "fixed-point steps z <- z + damping (f(z) - z)", 1e-6, 1.0),
      mhd::float_param("eta", 0.01, "alternating: energy-descent step z <- z - eta grad E(z)", 0.0, 1e3),
      mhd::float_param("grad_tol", 1e-3,
                       "energy_grad rule: stop when the worst ||grad E(z)|| < grad_tol; 0 turns it off", 0.0, 1e6),
      mhd::float_param("plateau_tol", 1e-4,
                       "plateau rule: stop when the batch-mean energy changes by < plateau_tol for `patience` "
                       "iterations in a row; 0 turns it off",
                       0.0, 1e6),
      mhd::int_param("patience", 5, "plateau rule: consecutive iterations", 1, 1000),
      mhd::int_param("history", 10, "cascade: L-BFGS curvature pairs per sample", 1, 100),
      mhd::float_param("fp_share", 0.5, "cascade: share of max_iter for the fixed-point phase (the seeds: 1/2)",
                       0.0, 1.0),
      mhd::float_param("residual_weight", 1.0, "simultaneous: w in w ||z - f(z)||^2 + E(z)", 0.0, 1e6),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    HybridOptions o;
    o.mode = mode_from(p.text("mode"));
    o.damping = p.real("damping");
    o.eta = p.real("eta");
    o.grad_tol = p.real("grad_tol");
    o.plateau_tol = p.real("plateau_tol");
    o.patience = p.integer("patience");
    o.history = p.integer("history");
    o.fp_share = p.real("fp_share");
    o.residual_weight = p.real("residual_weight");
    return std::make_shared<HybridSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
