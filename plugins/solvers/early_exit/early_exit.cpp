// Solver plugin `early_exit`: damped fixed-point iteration with per-sample exits (docs/design.md §3).
//
// Each row of the batch is an independent problem (docs/design.md §4). A row leaves the iteration
// (its state is frozen and no longer updated) as soon as
//   * its relative residual is below tol (always), or
//   * with `predictor = "exit"`, after `min_iter` iterations, a confidence predictor says it has
//     converged: p = sigmoid(w0 + w1 x1 + w2 x2) >= confidence_threshold, with the features
//       x1 = log10(rel_k / tol)            how far the row is from tol,
//       x2 = log10(rel_k / rel_{k-1})      its contraction over the last step (< 0: contracting).
//     The default weights (0, -10, -10) make p = sigmoid(-10 log10(rel_k * (rel_k / rel_{k-1}) / tol)):
//     the row's residual extrapolated one step ahead, measured against tol; p >= 0.95 means the
//     extrapolation lands below ~tol/2. These weights are fixed, not learned: the trained
//     confidence MLP over (z, residual history) is out of scope; the three weights are parameters
//     so a fitted logistic model can be plugged in.
// A predicted exit freezes a row whose measured residual is still above tol, so such a solve reports
// converged = false (the framework's rule, judged on the returned state). `predictor = "audit"` makes
// the same predictions without acting on them: the run continues past each prediction, every row
// iterates to tol, and the predictor's precision and recall are measured against what happened.
//
// The map is the batch's (the model's f closes over the batch's context, the backward's over its
// z*), so f is still called on all B rows while any row is active: frozen rows cost nothing in
// updates but are evaluated with the rest. `early_exit_f_evals_saved` therefore counts sample
// evaluations (rows x iterations) that a per-row map would not have needed: B * f_evals minus the
// evaluations of rows that were still active. The batch itself stops when every row has exited.
//
// Extras (SolverInfo::extra): early_exit_exits_at_<k> (rows that exited at iteration k, 1-based,
// only iterations with exits), early_exit_tol_exits, early_exit_predicted_exits,
// early_exit_sample_evals, early_exit_f_evals_saved, early_exit_mean_exit_iter; with "audit" also
// early_exit_predictor_precision, early_exit_predictor_recall (NaN when undefined) and
// early_exit_predicted_iters_ahead (mean iterations between a correct prediction and tol).
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

enum class PredictorMode { Off, Exit, Audit };

struct EarlyExitOptions {
  double damping = 1.0;
  std::int64_t min_iter = 3;
  PredictorMode predictor = PredictorMode::Off;
  double confidence_threshold = 0.95;
  double w_bias = 0.0, w_log_residual = -10.0, w_log_ratio = -10.0;
};

class EarlyExitSolver final : public mhd::Solver {
 public:
  explicit EarlyExitSolver(EarlyExitOptions o) : o_(o) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("early_exit", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;
    const std::int64_t B = z0.size(0);
    const auto flags = z0.options().dtype(at::kBool);
    const auto counts = z0.options().dtype(at::kLong);

    at::Tensor z = z0;                               // [B, D]
    at::Tensor frozen = at::zeros({B}, flags);       // rows that have exited (tol or predicted)
    at::Tensor prev_rel;                             // [B], the previous iteration's rel
    at::Tensor exit_iter = at::full({B}, -1, counts);     // 1-based iteration of the exit
    at::Tensor predicted_at = at::full({B}, -1, counts);  // first prediction (audit and exit)
    at::Tensor tol_at = at::full({B}, -1, counts);        // first iteration below tol
    std::int64_t sample_evals = 0, tol_exits = 0, predicted_exits = 0;
    std::vector<std::int64_t> exits_at;
    mhd::BestIterate best;

    for (std::int64_t k = 0; k < limits.max_iter; ++k) {
      sample_evals += B - frozen.sum().item<std::int64_t>();  // rows that needed this evaluation
      const at::Tensor fz = problem.f(z);  // [B, D]
      ++info.f_evals;
      mhd::check_map_shape("early_exit", z, fz);
      const mhd::Residuals r = mhd::residuals(z, fz);
      const bool all_below_tol = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z));
      best.observe(z, r);
      if (mhd::stop_if_nonfinite(info, fz)) break;

      const std::int64_t iter = k + 1;
      const at::Tensor active = at::logical_not(frozen);
      // Below tol, written as rel < tol so that a NaN residual never counts as converged.
      const at::Tensor below = r.rel.lt(limits.tol);
      tol_at = at::where(below & tol_at.lt(0), at::full_like(tol_at, iter), tol_at);
      const at::Tensor tol_exit = active & below;
      at::Tensor predicted_exit = at::zeros({B}, flags);
      if (o_.predictor != PredictorMode::Off && prev_rel.defined() && k >= o_.min_iter && limits.tol > 0) {
        const at::Tensor said = active & at::logical_not(below) & confident(r.rel, prev_rel, limits.tol);
        predicted_at = at::where(said & predicted_at.lt(0), at::full_like(predicted_at, iter), predicted_at);
        if (o_.predictor == PredictorMode::Exit) predicted_exit = said;
      }
      const at::Tensor exiting = tol_exit | predicted_exit;
      const std::int64_t n_exit = exiting.sum().item<std::int64_t>();
      if (n_exit > 0) {
        exits_at.resize(static_cast<std::size_t>(iter), 0);
        exits_at[static_cast<std::size_t>(k)] = n_exit;
        tol_exits += tol_exit.sum().item<std::int64_t>();
        predicted_exits += predicted_exit.sum().item<std::int64_t>();
        exit_iter = at::where(exiting, at::full_like(exit_iter, iter), exit_iter);
        frozen = frozen | exiting;
      }
      if (all_below_tol || frozen.all().item<bool>()) break;
      // Only rows still active move; a frozen row stays exactly where it exited.
      z = at::where(frozen.unsqueeze(1), z, damped_step(z, fz));
      prev_rel = r.rel;
    }

    out.z = best.best();
    best.finish(info);
    report(info, B, sample_evals, tol_exits, predicted_exits, exits_at, exit_iter, predicted_at, tol_at);
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  // p >= confidence_threshold per row: [B] bool. Rows whose residual grew (x2 >= 0) are never
  // predicted converged, whatever the weights.
  at::Tensor confident(const at::Tensor& rel, const at::Tensor& prev_rel, double tol) const {
    const at::Tensor safe = rel.clamp_min(1e-300);
    const at::Tensor x1 = at::log10(safe / tol);
    const at::Tensor x2 = at::log10(safe / prev_rel.clamp_min(1e-300));
    const at::Tensor p = at::sigmoid(o_.w_bias + o_.w_log_residual * x1 + o_.w_log_ratio * x2);
    return p.ge(o_.confidence_threshold) & x2.lt(0) & at::isfinite(x1) & at::isfinite(x2);
  }

  void report(mhd::SolverInfo& info, std::int64_t B, std::int64_t sample_evals, std::int64_t tol_exits,
              std::int64_t predicted_exits, const std::vector<std::int64_t>& exits_at, const at::Tensor& exit_iter,
              const at::Tensor& predicted_at, const at::Tensor& tol_at) const {
    auto add = [&info](const std::string& key, double value) { info.extra.emplace_back(key, value); };
    for (std::size_t k = 0; k < exits_at.size(); ++k)
      if (exits_at[k] > 0) add("early_exit_exits_at_" + std::to_string(k + 1), static_cast<double>(exits_at[k]));
    add("early_exit_tol_exits", static_cast<double>(tol_exits));
    add("early_exit_predicted_exits", static_cast<double>(predicted_exits));
    add("early_exit_sample_evals", static_cast<double>(sample_evals));
    add("early_exit_f_evals_saved", static_cast<double>(B * info.f_evals - sample_evals));
    const at::Tensor exited = exit_iter.ge(0);
    add("early_exit_mean_exit_iter", exited.any().item<bool>()
                                         ? exit_iter.index({exited}).to(at::kDouble).mean().item<double>()
                                         : std::nan(""));
    if (o_.predictor != PredictorMode::Audit) return;
    // The run continued past every prediction, so each has its outcome: the row reached tol later
    // (true positive) or never did within max_iter (false positive). A row could be predicted only
    // if it was still above tol after min_iter iterations: those that then reached tol are the
    // positives recall is measured over.
    const at::Tensor said = predicted_at.ge(0);
    const at::Tensor reached = tol_at.ge(0);
    const at::Tensor tp = said & reached;
    const at::Tensor positives = tol_at.gt(o_.min_iter + 1);
    const double n_said = said.sum().item<double>(), n_pos = positives.sum().item<double>();
    add("early_exit_predictor_precision", n_said > 0 ? tp.sum().item<double>() / n_said : std::nan(""));
    add("early_exit_predictor_recall",
        n_pos > 0 ? (tp & positives).sum().item<double>() / n_pos : std::nan(""));
    add("early_exit_predicted_iters_ahead",
        tp.any().item<bool>() ? (tol_at - predicted_at).index({tp}).to(at::kDouble).mean().item<double>()
                              : std::nan(""));
  }

  // z + d (f(z) - z) == (1 - d) z + d f(z); with d == 1 exactly f(z), without rounding.
  at::Tensor damped_step(const at::Tensor& z, const at::Tensor& fz) const {
    if (o_.damping == 1.0) return fz;
    return z + o_.damping * (fz - z);
  }

  EarlyExitOptions o_;
};

PredictorMode predictor_mode(const std::string& name) {
  if (name == "exit") return PredictorMode::Exit;
  if (name == "audit") return PredictorMode::Audit;
  return PredictorMode::Off;
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "early_exit";
  m.version = "1.0.0";
  m.description = "Damped fixed-point iteration with per-sample exits: converged (or predicted converged) rows freeze";
  m.params = {
      mhd::float_param("damping", 1.0, "step size in (0, 1] of the inner iteration z <- z + damping (f(z) - z)",
                       1e-6, 1.0),
      mhd::choice_param("predictor", "off", {"off", "exit", "audit"},
                        "the convergence predictor: off (rows exit at tol only), exit (a row also exits when "
                        "predicted converged; it may come back above tol), audit (predict, do not act, and "
                        "log precision/recall)"),
      mhd::int_param("min_iter", 3, "iterations before the predictor may exit a row", 1, 100000),
      mhd::float_param("confidence_threshold", 0.95, "a row is predicted converged when p >= this", 0.5, 1.0),
      mhd::float_param("w_bias", 0.0, "predictor logit weight: bias"),
      mhd::float_param("w_log_residual", -10.0, "predictor logit weight on log10(rel / tol)"),
      mhd::float_param("w_log_ratio", -10.0, "predictor logit weight on log10(rel_k / rel_{k-1})"),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    EarlyExitOptions o;
    o.damping = p.real("damping");
    o.predictor = predictor_mode(p.text("predictor"));
    o.min_iter = p.integer("min_iter");
    o.confidence_threshold = p.real("confidence_threshold");
    o.w_bias = p.real("w_bias");
    o.w_log_residual = p.real("w_log_residual");
    o.w_log_ratio = p.real("w_log_ratio");
    return std::make_shared<EarlyExitSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
