// Solver plugin `early_exit`: any inner solver with per-sample exits (docs/design.md §3, "Early exit").
//
// Each row of the batch is an independent problem (docs/design.md §4). The plugin runs the `inner`
// solver (any solver plugin, at its default parameters) on a wrapped map that watches every
// evaluation of f. A row leaves the solve as soon as
//   * its relative residual is below tol (always): it is frozen at that z, or
//   * with `predictor = "exit"`, after `min_iter` evaluations, the convergence predictor says that one
//     plain step lands below tol, p >= confidence_threshold: it is frozen at f(z).
// From then on the wrapped map reads f(z) = z for that row wherever the inner solver holds it, so every
// solver (Anderson's mixing, L-BFGS's line search, the ODE's stages) sees a zero residual there and
// takes no step; the returned state of a frozen row is its frozen state. Once every row has exited,
// the wrapped map stops calling f at all.
//
// The predictor: with `predictor_path` empty, the logistic model on the two residual features
//   p = sigmoid(w_bias + w_log_residual x1 + w_log_ratio x2), x1 = log10(rel_k / tol),
//   x2 = log10(rel_k / rel_{k-1}) (rows whose residual grew are never predicted);
// the defaults (0, -10, -10) extrapolate the residual one step and compare it with tol. With a path,
// the MLP on the row's state and residual history that `mhd meta-train --exit-predictor` fits to the
// framework's recorded solver trajectories (mhd/kits/exit_predictor.h). A predicted exit's residual is
// not measured when it is taken, so when any row exited by prediction the solve ends with one more
// evaluation of f at the returned state: its final residuals and `converged` are those of the returned
// point, as for every solver. `predictor = "audit"` predicts without acting: every row iterates to tol
// and the predictions are scored against what then happened (a prediction is right when its row
// reached tol later in the solve).
//
// The map is the batch's (the model's f closes over the batch's context), so f is evaluated on all B
// rows while any row is active: `early_exit_f_evals_saved` counts the sample evaluations (rows x
// evaluations) spent on rows that had already exited, i.e. what a per-row map would not have needed,
// plus every evaluation the inner solver asked for after all rows had exited.
//
// Extras (SolverInfo::extra): early_exit_exits_at_<k> (rows that exited at evaluation k, 1-based, only
// evaluations with exits), early_exit_tol_exits, early_exit_predicted_exits, early_exit_sample_evals,
// early_exit_f_evals_saved, early_exit_mean_exit_iter, early_exit_check_evals (0 or 1); with "audit"
// also early_exit_predictor_precision, early_exit_predictor_recall (NaN when undefined) and
// early_exit_predicted_iters_ahead (mean evaluations between a correct prediction and tol). They follow
// the inner solver's own extras.
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/kits/exit_predictor.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

namespace xp = mhd::exit_predictor;

enum class PredictorMode { Off, Exit, Audit };

struct EarlyExitOptions {
  std::string inner = "fixed_point";
  std::int64_t min_iter = 3;
  PredictorMode predictor = PredictorMode::Off;
  double confidence_threshold = 0.95;
  double w_bias = 0.0, w_log_residual = -10.0, w_log_ratio = -10.0;
  std::string predictor_path;
};

// What one solve learns about its rows as the inner solver evaluates the wrapped map.
struct ExitLedger {
  at::Tensor frozen;        // [B] bool: rows that have exited
  at::Tensor by_prediction; // [B] bool: exited by prediction (their residual is unmeasured)
  at::Tensor z_exit;        // [B, D] each exited row's frozen state
  at::Tensor rel_exit, abs_exit;  // [B] the residuals measured at a tol exit
  at::Tensor exit_at, predicted_at, tol_at;  // [B] long, 1-based evaluation, -1 for none
  xp::RowHistory history;
  std::vector<std::int64_t> exits_at;
  std::int64_t evaluations = 0, calls = 0, sample_evals = 0, tol_exits = 0, predicted_exits = 0;
};

class EarlyExitSolver final : public mhd::Solver {
 public:
  EarlyExitSolver(EarlyExitOptions o, std::shared_ptr<mhd::Solver> inner, std::shared_ptr<xp::Predictor> mlp)
      : o_(std::move(o)), inner_(std::move(inner)), mlp_(std::move(mlp)) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("early_exit", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    const std::int64_t B = z0.size(0);
    ExitLedger ledger;
    ledger.frozen = at::zeros({B}, z0.options().dtype(at::kBool));
    ledger.by_prediction = ledger.frozen.clone();
    ledger.z_exit = at::zeros_like(z0);
    ledger.rel_exit = at::zeros({B}, z0.options());
    ledger.abs_exit = at::zeros({B}, z0.options());
    ledger.exit_at = at::full({B}, -1, z0.options().dtype(at::kLong));
    ledger.predicted_at = ledger.exit_at.clone();
    ledger.tol_at = ledger.exit_at.clone();

    mhd::FixedPointProblem wrapped = problem;
    wrapped.f = [&](const at::Tensor& z) { return watched_map(problem, z, limits.tol, ledger); };
    mhd::SolveResult out = inner_->solve(wrapped, z0, limits);

    const at::Tensor frozen = ledger.frozen.unsqueeze(1);
    out.z = at::where(frozen, ledger.z_exit.to(out.z.dtype()), out.z);
    judge_returned_state(problem, out, ledger, limits.tol);
    report(out.info, B, ledger);
    out.info.wall_ms = watch.ms();
    return out;
  }

 private:
  // The map the inner solver sees: f for active rows, the frozen state for exited ones.
  at::Tensor watched_map(const mhd::FixedPointProblem& problem, const at::Tensor& z, double tol,
                         ExitLedger& ledger) const {
    ++ledger.calls;
    if (ledger.frozen.all().item<bool>()) return z.clone();  // nothing left to solve: no evaluation of f
    ledger.sample_evals += z.size(0) - ledger.frozen.sum().item<std::int64_t>();
    const at::Tensor fz = problem.f(z);  // [B, D]
    mhd::check_map_shape("early_exit", z, fz);
    const std::int64_t k = ++ledger.evaluations;
    const mhd::Residuals r = mhd::residuals(z.detach(), fz.detach());
    const at::Tensor features = ledger.history.observe(z, r.rel, tol);  // [B, F]
    const at::Tensor active = at::logical_not(ledger.frozen);
    const at::Tensor below = r.rel.lt(tol);  // rel < tol: a NaN residual never counts as converged
    ledger.tol_at = at::where(below & ledger.tol_at.lt(0), at::full_like(ledger.tol_at, k), ledger.tol_at);
    const at::Tensor tol_exit = active & below;
    at::Tensor predicted_exit = at::zeros_like(tol_exit);
    if (o_.predictor != PredictorMode::Off && k > o_.min_iter && tol > 0) {
      const at::Tensor said = active & at::logical_not(below) & confident(features);
      ledger.predicted_at =
          at::where(said & ledger.predicted_at.lt(0), at::full_like(ledger.predicted_at, k), ledger.predicted_at);
      if (o_.predictor == PredictorMode::Exit) predicted_exit = said;
    }
    const at::Tensor exiting = tol_exit | predicted_exit;
    const std::int64_t n_exit = exiting.sum().item<std::int64_t>();
    if (n_exit > 0) {
      ledger.exits_at.resize(static_cast<std::size_t>(k), 0);
      ledger.exits_at[static_cast<std::size_t>(k - 1)] = n_exit;
      ledger.tol_exits += tol_exit.sum().item<std::int64_t>();
      ledger.predicted_exits += predicted_exit.sum().item<std::int64_t>();
      const at::Tensor here = at::where(predicted_exit.unsqueeze(1), fz.detach(), z.detach());  // [B, D]
      ledger.z_exit = at::where(exiting.unsqueeze(1), here.to(ledger.z_exit.dtype()), ledger.z_exit);
      ledger.rel_exit = at::where(tol_exit, r.rel.to(ledger.rel_exit.dtype()), ledger.rel_exit);
      ledger.abs_exit = at::where(tol_exit, r.abs.to(ledger.abs_exit.dtype()), ledger.abs_exit);
      ledger.exit_at = at::where(exiting, at::full_like(ledger.exit_at, k), ledger.exit_at);
      ledger.by_prediction = ledger.by_prediction | predicted_exit;
      ledger.frozen = ledger.frozen | exiting;
    }
    // Exited rows read as fixed points wherever the solver holds them (f(z) = z: residual 0, no step);
    // active rows get f(z), with its graph for solvers that differentiate the map.
    return at::where(ledger.frozen.unsqueeze(1), z.to(fz.dtype()), fz);
  }

  // p >= confidence_threshold per row: [B] bool.
  at::Tensor confident(const at::Tensor& features) const {
    if (mlp_) return at::sigmoid(mlp_->logits(features)).ge(o_.confidence_threshold);
    const at::Tensor x1 = features.select(1, 0), x2 = features.select(1, 1);
    const at::Tensor p = at::sigmoid(o_.w_bias + o_.w_log_residual * x1 + o_.w_log_ratio * x2);
    return p.ge(o_.confidence_threshold) & x2.lt(0);
  }

  // The inner solver judged exited rows against the wrapped map (residual 0 there). Rows frozen at
  // tol keep the residual measured when they exited; rows frozen by prediction are measured now,
  // with one evaluation of f at the returned state.
  void judge_returned_state(const mhd::FixedPointProblem& problem, mhd::SolveResult& out, ExitLedger& ledger,
                            double tol) const {
    mhd::SolverInfo& info = out.info;
    info.f_evals = ledger.evaluations;
    if (!info.final_rel.defined()) return;
    const at::Tensor at_tol = ledger.frozen & at::logical_not(ledger.by_prediction);
    at::Tensor rel = at::where(at_tol, ledger.rel_exit.to(info.final_rel.dtype()), info.final_rel);
    at::Tensor abs = at::where(at_tol, ledger.abs_exit.to(info.final_abs.dtype()), info.final_abs);
    std::int64_t check_evals = 0;
    if (ledger.by_prediction.any().item<bool>()) {
      const mhd::Residuals r = mhd::residuals(out.z, problem.f(out.z));
      ++info.f_evals;
      check_evals = 1;
      rel = at::where(ledger.by_prediction, r.rel.to(rel.dtype()), rel);
      abs = at::where(ledger.by_prediction, r.abs.to(abs.dtype()), abs);
    }
    info.final_rel = rel;
    info.final_abs = abs;
    info.converged = rel.lt(tol).all().item<bool>();
    // The traces are the inner solver's view, in which exited rows read 0; their last entry is what a
    // run reports as the solve's residual, so once a row has exited it is the returned state's.
    if (ledger.frozen.any().item<bool>() && !info.rel_trace.empty()) {
      info.rel_trace.back() = rel.max().item<double>();
      info.abs_trace.back() = abs.max().item<double>();
    }
    info.extra.emplace_back("early_exit_check_evals", static_cast<double>(check_evals));
  }

  // After the inner solver's own extras (e.g. nonfinite_samples, anderson's fallbacks).
  void report(mhd::SolverInfo& info, std::int64_t B, const ExitLedger& ledger) const {
    auto add = [&info](const std::string& key, double value) { info.extra.emplace_back(key, value); };
    for (std::size_t k = 0; k < ledger.exits_at.size(); ++k)
      if (ledger.exits_at[k] > 0) add("early_exit_exits_at_" + std::to_string(k + 1), static_cast<double>(ledger.exits_at[k]));
    add("early_exit_tol_exits", static_cast<double>(ledger.tol_exits));
    add("early_exit_predicted_exits", static_cast<double>(ledger.predicted_exits));
    add("early_exit_sample_evals", static_cast<double>(ledger.sample_evals));
    add("early_exit_f_evals_saved", static_cast<double>(B * ledger.calls - ledger.sample_evals));
    const at::Tensor exited = ledger.exit_at.ge(0);
    add("early_exit_mean_exit_iter", exited.any().item<bool>()
                                         ? ledger.exit_at.index({exited}).to(at::kDouble).mean().item<double>()
                                         : std::nan(""));
    if (o_.predictor == PredictorMode::Audit) report_audit(info, ledger);
  }

  // Audit: the solve went on past every prediction, so each has its outcome: the row reached tol
  // later (true positive) or never did (false positive). Recall is over the rows that were still
  // above tol after min_iter evaluations and then reached tol.
  void report_audit(mhd::SolverInfo& info, const ExitLedger& ledger) const {
    const at::Tensor said = ledger.predicted_at.ge(0);
    const at::Tensor tp = said & ledger.tol_at.ge(0);
    const at::Tensor positives = ledger.tol_at.gt(o_.min_iter + 1);
    const double n_said = said.sum().item<double>(), n_pos = positives.sum().item<double>();
    info.extra.emplace_back("early_exit_predictor_precision", n_said > 0 ? tp.sum().item<double>() / n_said : std::nan(""));
    info.extra.emplace_back("early_exit_predictor_recall",
                            n_pos > 0 ? (tp & positives).sum().item<double>() / n_pos : std::nan(""));
    info.extra.emplace_back(
        "early_exit_predicted_iters_ahead",
        tp.any().item<bool>() ? (ledger.tol_at - ledger.predicted_at).index({tp}).to(at::kDouble).mean().item<double>()
                              : std::nan(""));
  }

  EarlyExitOptions o_;
  std::shared_ptr<mhd::Solver> inner_;
  std::shared_ptr<xp::Predictor> mlp_;
};

PredictorMode predictor_mode(const std::string& name) {
  if (name == "exit") return PredictorMode::Exit;
  if (name == "audit") return PredictorMode::Audit;
  return PredictorMode::Off;
}

// "early_exit: inner: ..." for an inner solver that cannot be built (unknown, or early_exit itself).
std::shared_ptr<mhd::Solver> make_inner(const std::string& name) {
  if (name == "early_exit") throw mhd::Error("early_exit: inner: cannot wrap early_exit itself; name another solver");
  try {
    return mhd::make_solver_by_name(name);
  } catch (const mhd::Error& e) {
    throw mhd::Error(std::string("early_exit: inner: ") + e.what());
  }
}

std::shared_ptr<xp::Predictor> load_mlp(const std::string& path) {
  if (path.empty()) return nullptr;
  try {
    return xp::load_predictor(path);
  } catch (const mhd::Error& e) {
    std::string why = e.what();
    const std::string ours = "early_exit: ";
    if (why.rfind(ours, 0) == 0) why.erase(0, ours.size());
    throw mhd::Error("early_exit: predictor_path: " + why);
  }
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "early_exit";
  m.version = "2.0.0";
  m.description = "Any inner solver with per-sample exits: converged (or predicted converged) rows freeze";
  m.params = {
      mhd::string_param("inner", "fixed_point",
                        "the solver plugin that runs the iterations (at its default parameters), e.g. anderson, lbfgs"),
      mhd::choice_param("predictor", "off", {"off", "exit", "audit"},
                        "the convergence predictor: off (rows exit at tol only), exit (a row also exits at f(z) when "
                        "one step is predicted to land below tol), audit (predict, do not act, log precision/recall)"),
      mhd::string_param("predictor_path", "",
                        "a trained predictor (mhd meta-train CHECKPOINT --exit-predictor --out FILE); empty: the "
                        "logistic model of the w_* weights"),
      mhd::int_param("min_iter", 3, "evaluations before the predictor may exit a row", 1, 100000),
      mhd::float_param("confidence_threshold", 0.95, "a row is predicted converged when p >= this", 0.5, 1.0),
      mhd::float_param("w_bias", 0.0, "logistic predictor's logit weight: bias"),
      mhd::float_param("w_log_residual", -10.0, "logistic predictor's logit weight on log10(rel / tol)"),
      mhd::float_param("w_log_ratio", -10.0, "logistic predictor's logit weight on log10(rel_k / rel_{k-1})"),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    EarlyExitOptions o;
    o.inner = p.text("inner");
    o.predictor = predictor_mode(p.text("predictor"));
    o.predictor_path = p.text("predictor_path");
    o.min_iter = p.integer("min_iter");
    o.confidence_threshold = p.real("confidence_threshold");
    o.w_bias = p.real("w_bias");
    o.w_log_residual = p.real("w_log_residual");
    o.w_log_ratio = p.real("w_log_ratio");
    auto inner = make_inner(o.inner);
    auto mlp = load_mlp(o.predictor_path);
    return std::make_shared<EarlyExitSolver>(std::move(o), std::move(inner), std::move(mlp));
  };
  m.check = [](const mhd::Params& p, const mhd::ModelDims&) {
    make_inner(p.text("inner"));
    load_mlp(p.text("predictor_path"));
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
