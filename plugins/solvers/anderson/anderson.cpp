// Solver plugin `anderson`: Anderson acceleration (type II), per sample and batched.
//
// Each sample b keeps its own history of the last n <= m iterates x_i and values f_i = f(x_i),
// with residuals g_i = f_i - x_i. Every step solves, for each sample separately,
//
//     min_a || sum_i a_i g_i ||^2 + reg_b ||a||^2   s.t.  sum_i a_i = 1
//
// through its KKT ("bordered") system
//
//     [ 0   1^T              ] [ mu ]   [ 1 ]
//     [ 1   G G^T + reg_b I  ] [ a  ] = [ 0 ]        G: [n, D] the residual history of sample b
//
// (all samples at once with at::linalg_solve_ex on [B, n+1, n+1]), then mixes
//
//     x_next = beta * sum_i a_i f_i + (1 - beta) * sum_i a_i x_i.
//
// The regularisation is relative, reg_b = lam_b * tr(G G^T) / n, so the same lam behaves the same
// whether residuals are O(1) (forward solve) or O(1e-8) (backward solve with a tight tol); an
// absolute lam would swamp the Gram matrix near convergence and turn the step into plain averaging.
//
// A degenerate small system: with fallback = "broyden" the rest of the solve runs
// limited-memory Broyden (mhd/kits/broyden.h, its defaults) from each sample's best state so far, on
// the same traces and the same max_iter; info.extra "anderson_broyden_fallbacks" (0 or 1),
// "anderson_fallback_iteration" and "anderson_degenerate_samples" log it, and the Broyden core's
// "broyden_line_search_evals" (f_evals = iterations + that). Degenerate means, for some sample still
// iterating: the solve failed or gave non-finite values, or its history is rank deficient at the
// resolution of the regularisation, lambda_min(G G^T) <= 1e-8 reg_b (see degenerate_history()).
// With fallback = "raise_lam" a sample whose solve fails or gives non-finite values takes a plain damped
// step x_next = beta f(x) + (1 - beta) x for that iteration instead, and its lam is raised (x10,
// at least 1e-8, at most 1) for the rest of the solve, so a rank-deficient history does not fail every step.
// The number of such sample-steps is reported as info.extra "anderson_fallbacks". Until a fallback
// both modes take exactly the same steps. raise_lam is the default because the Broyden hand-over is
// per solve: one degenerate sample moves the whole batch to Broyden, so a sample's result depends on
// the rest of its batch, and a data-parallel split of a training batch changes the run
// (docs/benchmarks.md, "Neural-ODE and Broyden solvers").
//
// Iteration accounting matches fixed_point: one f evaluation per iteration, the residual of the
// evaluated iterate is recorded, and each sample returns its best iterate (lowest residual, mhd::BestIterate). As there, a sample that has
// reached tol stays where it is while the others iterate (its result does not depend on the rest of
// the batch, and an extrapolation cannot throw it out again).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <tuple>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/kits/broyden.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

struct AndersonOptions {
  std::int64_t m = 5;
  double lam = 1e-4;
  double beta = 1.0;
  bool broyden_fallback = false;  // fallback = "broyden"; false: "raise_lam" (the default)
};

// lambda_min(G G^T) at or below this fraction of reg_b: in that direction of the coefficients the
// history carries less than 1e-8 of what the regulariser adds, so the step there is set by lam alone:
// the system is singular but for lam. An exactly rank-deficient history lands near float64 rounding
// (~1e-16 of tr(G G^T)), far below; a history of distinct float32 residuals stays far above, since
// their rounding alone leaves each residual ~1e-7 of its norm off any other's span. With lam = 0
// the test reads lambda_min <= 0: singular.
constexpr double kDegenerateRatio = 1e-8;

// The last m (x_i, f_i) pairs of every sample, in a ring: the least-squares problem does not depend
// on the order of the history, so slots are overwritten oldest first without shifting. The residuals
// g_i = f_i - x_i and their Gram matrix G G^T are kept in float64 and updated one row/column per push
// (O(B m D) instead of O(B m^2 D) per step).
class History {
 public:
  History(const at::Tensor& z0, std::int64_t m)
      : x_(at::zeros({z0.size(0), m, z0.size(1)}, z0.options())),
        f_(at::zeros_like(x_)),
        g_(at::zeros(x_.sizes(), x_.options().dtype(at::kDouble))),
        gram_(at::zeros({z0.size(0), m, m}, g_.options())),
        m_(m) {}

  void push(const at::Tensor& x, const at::Tensor& fx) {  // x, fx: [B, D]
    const std::int64_t j = next_;
    x_.select(1, j).copy_(x);
    f_.select(1, j).copy_(fx);
    g_.select(1, j).copy_(fx - x);
    next_ = (j + 1) % m_;
    count_ = std::min(count_ + 1, m_);
    // Only row and column j of G G^T change: <g_i, g_j> for the valid slots i.   [B, n]
    const at::Tensor inner = (gs() * g_.select(1, j).unsqueeze(1)).sum(-1);
    gram_.select(1, j).narrow(1, 0, count_).copy_(inner);
    gram_.select(2, j).narrow(1, 0, count_).copy_(inner);
  }

  // While the ring fills up, the valid slots are 0 .. n-1; afterwards all m are.
  at::Tensor xs() const { return x_.narrow(1, 0, count_); }                    // [B, n, D]
  at::Tensor fs() const { return f_.narrow(1, 0, count_); }                    // [B, n, D]
  at::Tensor gs() const { return g_.narrow(1, 0, count_); }                    // [B, n, D] float64
  at::Tensor gram() const { return gram_.narrow(1, 0, count_).narrow(2, 0, count_); }  // [B, n, n] float64
  std::int64_t size() const { return count_; }

 private:
  at::Tensor x_, f_;  // [B, m, D], the state's dtype
  at::Tensor g_;      // [B, m, D] float64: the Gram matrix squares G's condition number, and float32
                      // residuals would lose half their digits in it
  at::Tensor gram_;   // [B, m, m] float64
  std::int64_t m_;
  std::int64_t next_ = 0;
  std::int64_t count_ = 0;
};

struct Coefficients {
  at::Tensor alpha;  // [B, n] float64, sum_i alpha_i = 1 per sample where solved
  at::Tensor solved; // [B] bool: the small system was regular
};

// Solves every sample's bordered system. gram: [B, n, n], lam: [B], both float64.
Coefficients anderson_coefficients(const at::Tensor& gram, const at::Tensor& lam) {
  const std::int64_t batch = gram.size(0);
  const std::int64_t n = gram.size(1);
  const at::Tensor scale = gram.diagonal(0, 1, 2).mean(1);  // tr(G G^T) / n: [B]
  // The tiny floor keeps the system regular when a sample's whole history is exactly at its fixed
  // point (G = 0) while others still iterate; it is far below any float32/float64 residual scale.
  const at::Tensor reg = lam * scale + 1e-300;              // [B]

  at::Tensor kkt = at::zeros({batch, n + 1, n + 1}, gram.options());  // [B, n+1, n+1]
  kkt.select(1, 0).narrow(1, 1, n).fill_(1.0);
  kkt.select(2, 0).narrow(1, 1, n).fill_(1.0);
  kkt.narrow(1, 1, n).narrow(2, 1, n).copy_(gram + reg.view({batch, 1, 1}) * at::eye(n, gram.options()));
  at::Tensor rhs = at::zeros({batch, n + 1, 1}, gram.options());  // [B, n+1, 1] = (1, 0, ..., 0)
  rhs.select(1, 0).fill_(1.0);

  // linalg_solve_ex reports a singular system per sample (info != 0) instead of throwing for the
  // whole batch, which is what lets one degenerate sample fall back alone.
  at::Tensor solution, info;
  std::tie(solution, info) = at::linalg_solve_ex(kkt, rhs);
  return {solution.narrow(1, 1, n).squeeze(2), info.eq(0)};
}

// Per sample: is the (unregularised) history rank deficient at the regulariser's resolution? [B] bool.
// The point of the test: a positive lam keeps the bordered system regular, so "the solve failed" never
// fires however degenerate the history is; the regularised solve then returns a biased step instead.
// lambda_min <= t exactly when G G^T - t I is not positive definite, i.e. when its Cholesky
// factorisation fails: one small potrf per sample instead of an eigenvalue decomposition (an
// eigvalsh version cost up to ~1.4x Anderson's CPU time per solve in a development run under load).
at::Tensor degenerate_history(const at::Tensor& gram, const at::Tensor& lam) {
  const std::int64_t batch = gram.size(0);
  const at::Tensor scale = gram.diagonal(0, 1, 2).mean(1);                     // [B]
  const at::Tensor threshold = kDegenerateRatio * (lam * scale + 1e-300);      // [B]
  const at::Tensor shifted = gram - threshold.view({batch, 1, 1}) * at::eye(gram.size(1), gram.options());
  return std::get<1>(at::linalg_cholesky_ex(shifted)).ne(0);
}

// sum_i alpha_i v_i per sample. alpha: [B, n], v: [B, n, D] -> [B, D]. A broadcast multiply-sum:
// for these skinny shapes it is several times faster than bmm on CPU.
at::Tensor combine(const at::Tensor& alpha, const at::Tensor& v) {
  return (alpha.to(v.scalar_type()).unsqueeze(2) * v).sum(1);
}

class AndersonSolver final : public mhd::Solver {
 public:
  explicit AndersonSolver(AndersonOptions options) : opt_(options) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs("anderson", problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;

    History history(z0, opt_.m);
    // Per-sample regularisation, raised only for samples whose solve failed.
    at::Tensor lam = at::full({z0.size(0)}, opt_.lam, z0.options().dtype(at::kDouble));  // [B]
    std::int64_t fallbacks = 0;

    at::Tensor z = z0;  // [B, D]
    mhd::BestIterate best;
    // Each sample's best state and its f, the same choice as `best` makes: Broyden starts from there
    // without evaluating again.   [B, D], [B, D], [B]
    at::Tensor best_z, best_fz, best_rel;
    std::int64_t degenerate = 0;  // active samples with a degenerate system when the fallback fired
    for (std::int64_t k = 0; k < limits.max_iter; ++k) {
      const at::Tensor fz = problem.f(z);  // [B, D]
      ++info.f_evals;
      mhd::check_map_shape("anderson", z, fz);
      const mhd::Residuals r = mhd::residuals(z, fz);
      const bool done = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z));
      best.observe(z, r);
      if (mhd::stop_if_nonfinite(info, fz) || done) break;
      if (opt_.broyden_fallback) keep_best(z, fz, r.rel, best_z, best_fz, best_rel);
      // Not yet converged: [B]; !(rel < tol) keeps a sample with a NaN residual moving (see fixed_point).
      const at::Tensor active = at::logical_not(r.rel.lt(limits.tol));
      history.push(z, fz);
      const at::Tensor next = next_iterate(history, z, fz, active, lam, fallbacks, degenerate);
      if (degenerate > 0) break;
      z = at::where(active.unsqueeze(1), next, z);
    }
    std::unique_ptr<mhd::broyden::Core> core;
    if (degenerate > 0) {
      // This iteration is recorded already; Broyden's steps continue the count towards max_iter.
      info.extra.emplace_back("anderson_fallback_iteration", static_cast<double>(info.iterations - 1));
      core = std::make_unique<mhd::broyden::Core>("anderson", mhd::broyden::Options{});
      core->run(problem, best_z, best_fz, limits, info, best);
    }

    out.z = best.best();
    best.finish(info);
    info.extra.emplace_back("anderson_fallbacks", static_cast<double>(fallbacks));
    info.extra.emplace_back("anderson_lam_max", lam.max().item<double>());
    info.extra.emplace_back("anderson_broyden_fallbacks", degenerate > 0 ? 1.0 : 0.0);
    if (core) {
      info.extra.emplace_back("anderson_degenerate_samples", static_cast<double>(degenerate));
      info.extra.emplace_back("broyden_line_search_evals", static_cast<double>(core->stats().line_search_evals));
    }
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  // The Anderson mix for every sample whose small solve succeeded, a damped step for the others.
  // Updates lam (raised where the solve failed) and the fallback count, both for active samples only
  // (a converged sample keeps pushing the same pair, a history that is singular by construction).
  // With the Broyden fallback, a degenerate system of an active sample sets `degenerate` (their
  // count) instead, and the returned step is not to be taken.
  at::Tensor next_iterate(const History& history, const at::Tensor& z, const at::Tensor& fz, const at::Tensor& active,
                          at::Tensor& lam, std::int64_t& fallbacks, std::int64_t& degenerate) const {
    const at::Tensor damped = mix(fz, z);  // [B, D]
    // One entry of history: the constrained problem has the single solution a = 1, i.e. the damped step.
    if (history.size() == 1) return damped;

    const Coefficients c = anderson_coefficients(history.gram(), lam);
    const at::Tensor f_mix = combine(c.alpha, history.fs());
    const at::Tensor accelerated = opt_.beta == 1.0 ? f_mix : mix(f_mix, combine(c.alpha, history.xs()));
    // A non-finite alpha (a solve that "succeeded" on a numerically singular system) shows up here too.
    const at::Tensor ok = c.solved.logical_and(at::isfinite(accelerated).all(1));  // [B]
    if (opt_.broyden_fallback) {
      const at::Tensor bad =
          at::logical_not(ok).logical_or(degenerate_history(history.gram(), lam)).logical_and(active);
      degenerate = bad.sum().item<std::int64_t>();
      if (degenerate > 0) return damped;
    }

    const at::Tensor failed = at::logical_not(ok).logical_and(active);  // [B]
    const auto failures = failed.sum().item<std::int64_t>();
    if (failures > 0) {
      fallbacks += failures;
      // x10 (from at least 1e-8, to at most 1 or the configured lam): enough to make a rank-deficient
      // Gram matrix regular without turning every later step into plain averaging.
      lam = at::where(failed, at::clamp(lam * 10.0, 1e-8, std::max(1.0, opt_.lam)), lam);
    }
    // where() picks per element, so NaNs in the rejected rows of `accelerated` do not leak.
    return at::where(ok.unsqueeze(1), accelerated, damped);
  }

  // The rule of mhd::BestIterate (lowest relative residual, NaN never best), keeping f as well.
  static void keep_best(const at::Tensor& z, const at::Tensor& fz, const at::Tensor& rel, at::Tensor& best_z,
                        at::Tensor& best_fz, at::Tensor& best_rel) {
    const at::Tensor finite_rel = at::where(at::isnan(rel), at::full_like(rel, INFINITY), rel);
    if (!best_z.defined()) {
      best_z = z, best_fz = fz, best_rel = finite_rel;
      return;
    }
    const at::Tensor better = finite_rel.lt(best_rel);  // [B]
    best_z = at::where(better.unsqueeze(1), z, best_z);
    best_fz = at::where(better.unsqueeze(1), fz, best_fz);
    best_rel = at::where(better, finite_rel, best_rel);
  }

  // beta * f_part + (1 - beta) * x_part; exactly f_part for beta == 1.
  at::Tensor mix(const at::Tensor& f_part, const at::Tensor& x_part) const {
    if (opt_.beta == 1.0) return f_part;
    return opt_.beta * f_part + (1.0 - opt_.beta) * x_part;
  }

  AndersonOptions opt_;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = "anderson";
  m.version = "1.0.0";
  m.description =
      "Anderson acceleration with a per-sample history, regularised bordered solve, damped or Broyden fallback";
  m.params = {
      mhd::int_param("m", 5, "history size: how many past (x, f(x)) pairs each sample mixes", 1, 64),
      mhd::float_param("lam", 1e-4,
                       "Tikhonov regularisation of the small solve, relative to the mean squared residual of "
                       "the history (G G^T + lam tr(G G^T)/n I); with fallback = raise_lam, raised "
                       "automatically for a sample whose solve fails",
                       0.0, 1e3),
      mhd::float_param("beta", 1.0,
                       "mixing in (0, 2]: x = beta sum a_i f_i + (1 - beta) sum a_i x_i; 1 uses the values "
                       "only, smaller values damp",
                       1e-6, 2.0),
      mhd::choice_param("fallback", "raise_lam", {"broyden", "raise_lam"},
                        "when a sample's small system is degenerate (solve failed, or the history rank "
                        "deficient at the resolution of lam): broyden runs the rest of the solve as "
                        "limited-memory Broyden from the best states; raise_lam takes a damped step for that "
                        "sample and raises its lam x10"),
  };
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    AndersonOptions o;
    o.m = p.integer("m");
    o.lam = p.real("lam");
    o.beta = p.real("beta");
    // Checked here as well as by the schema: a solver built directly (tests, benchmarks) gets the error too.
    const std::string& fallback = p.text("fallback");
    if (fallback != "broyden" && fallback != "raise_lam")
      throw mhd::Error("anderson: parameter 'fallback' must be broyden or raise_lam, got '" + fallback + "'");
    o.broyden_fallback = fallback == "broyden";
    return std::make_shared<AndersonSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
