// Solver plugin `neural_ode`: the fixed point z* = f(z*) as the steady state of the ODE
//
//     dz/dt = F(z) = f(z) - z,        z(0) = z0,        z: [B, D]
//
// integrated by the adaptive Dormand-Prince 5(4) pair (the 5th-order solution is propagated, the
// embedded 4th-order one only estimates the local error). F(z*) = 0 exactly at a fixed point, so the steady state is z*; where
// f is a contraction every eigenvalue of J_f - I has real part below 0 and the flow converges from any
// start. Plain iteration z <- f(z) is the explicit Euler step with h = 1 of the same flow.
//
// Per sample b (nothing is shared across the batch; rows are independent problems):
//   * its own step size h_b (starting at h0) and its own error norm err_b of the local error estimate
//     e = h (sum_i E_i k_i), the difference of the 5th- and 4th-order solutions, measured by default
//     against the residual F(z) (error_scale = "residual": rms(e_b) / (atol + rtol rms(F))) rather
//     than the state z (the textbook test, error_scale = "state"; see error_norm() for why);
//   * the step is accepted when err_b <= 1; the next step size is h_b * clamp(safety err_b^(-1/5),
//     min_shrink, max_growth), never growing right after a rejection (the standard controller);
//   * a rejected sample retries with its smaller step while the samples that accepted wait, so every
//     moving sample advances by exactly one accepted step per iteration; a sample rejected
//     max_rejects times in a row in one step is stalled: it stops moving and is counted.
//
// FSAL ("first same as last"): the 7th stage is evaluated at the accepted point z_new, so it is both
// k1 of the next step and the value f(z_new) the stopping rule needs; a trial costs 6 evaluations.
//
// Iterations: the start point, then one per accepted step; each records the residual of the batch's
// current states (mhd::record_iteration, the same rule as every solver), and each sample returns its
// lowest-residual iterate (mhd::BestIterate). A sample at tol stops moving. f_evals counts every
// evaluation: 1 + 6 per trial (info.extra "ode_trials"). Running out of max_iter returns the best
// states with converged = false. A non-finite f(z) at any stage ends the solve (mhd::stop_if_nonfinite);
// the trial it belonged to is not recorded, as no state was accepted.
//
// As a backward solver (implicit differentiation: f(g) = J^T g + v, linear) nothing changes: the
// flow dg/dt = (J^T - I) g + v converges to the same g as the other solvers.
#include <cstdint>
#include <memory>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "mhd/stopwatch.h"

namespace {

constexpr const char* kName = "neural_ode";

// Dormand-Prince 5(4) tableau. Row i: the coefficients of k1 .. k_{i-1} in stage i (c_i is not needed:
// the ODE is autonomous). B: the 5th-order weights (= row 7, so stage 7 sits at z_new). E: B minus the
// 4th-order weights, the error estimate's coefficients.
constexpr double kA21 = 1.0 / 5.0;
constexpr double kA31 = 3.0 / 40.0, kA32 = 9.0 / 40.0;
constexpr double kA41 = 44.0 / 45.0, kA42 = -56.0 / 15.0, kA43 = 32.0 / 9.0;
constexpr double kA51 = 19372.0 / 6561.0, kA52 = -25360.0 / 2187.0, kA53 = 64448.0 / 6561.0,
                 kA54 = -212.0 / 729.0;
constexpr double kA61 = 9017.0 / 3168.0, kA62 = -355.0 / 33.0, kA63 = 46732.0 / 5247.0, kA64 = 49.0 / 176.0,
                 kA65 = -5103.0 / 18656.0;
constexpr double kB1 = 35.0 / 384.0, kB3 = 500.0 / 1113.0, kB4 = 125.0 / 192.0, kB5 = -2187.0 / 6784.0,
                 kB6 = 11.0 / 84.0;
constexpr double kE1 = 71.0 / 57600.0, kE3 = -71.0 / 16695.0, kE4 = 71.0 / 1920.0, kE5 = -17253.0 / 339200.0,
                 kE6 = 22.0 / 525.0, kE7 = -1.0 / 40.0;

enum class ErrorScale { Residual, State };

// A sample exactly at its fixed point (F = 0, possible with tol = 0) has zero error and would grow its
// step by max_growth forever, until h = inf and h * 0 = NaN; no useful step is anywhere near this.
constexpr double kMaxStep = 1e6;

struct Options {
  ErrorScale error_scale = ErrorScale::Residual;
  double rtol = 1e-1;
  double atol = 0.0;
  double safety = 0.9;
  double max_growth = 10.0;
  double min_shrink = 0.2;
  double h0 = 1.0;
  std::int64_t max_rejects = 30;
};

struct Counters {
  std::int64_t trials = 0;    // batch-wide Dormand-Prince trials (6 evaluations each)
  std::int64_t accepted = 0;  // sample-steps accepted
  std::int64_t rejected = 0;  // sample-steps rejected
};

// One accepted step for every moving sample. Rows that did not move keep their inputs.
struct Step {
  at::Tensor z, fz, h;  // [B, D], [B, D], [B, 1]
  at::Tensor accepted;  // [B] bool
  at::Tensor stalled;   // [B] bool: rejected max_rejects times in a row
  bool nonfinite = false;
};

class NeuralOdeSolver final : public mhd::Solver {
 public:
  explicit NeuralOdeSolver(Options options) : opt_(options) {}

  mhd::SolveResult solve(const mhd::FixedPointProblem& problem, const at::Tensor& z0,
                         const mhd::SolveLimits& limits) override {
    mhd::check_solve_inputs(kName, problem, z0, limits);
    at::NoGradGuard no_grad;
    const mhd::Stopwatch watch;
    mhd::SolveResult out;
    mhd::SolverInfo& info = out.info;
    Counters counters;
    const std::int64_t batch = z0.size(0);

    at::Tensor z = z0;  // [B, D]
    at::Tensor fz = evaluate(problem, z, info);
    mhd::Residuals r = mhd::residuals(z, fz);
    bool stop = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z));
    mhd::BestIterate best;
    best.observe(z, r);
    stop = mhd::stop_if_nonfinite(info, fz) || stop;

    at::Tensor h = at::full({batch, 1}, opt_.h0, z.options());              // [B, 1]
    at::Tensor stalled = at::zeros({batch}, z.options().dtype(at::kBool));  // [B]
    while (!stop && info.iterations < limits.max_iter) {
      // Above tol ([B]; !(rel < tol) keeps a NaN residual moving, as in fixed_point) and not stalled.
      const at::Tensor moving = at::logical_not(r.rel.lt(limits.tol)).logical_and(at::logical_not(stalled));
      if (!moving.any().item<bool>()) break;
      const Step s = step(problem, z, fz, h, moving, info, counters);
      if (s.nonfinite) break;
      stalled = stalled.logical_or(s.stalled);
      if (!s.accepted.any().item<bool>()) break;  // every moving sample stalled: nothing new to record
      z = s.z;
      fz = s.fz;
      h = s.h;
      r = mhd::residuals(z, fz);
      stop = mhd::record_iteration(info, r, limits.tol, mhd::energy_of(problem, z));
      best.observe(z, r);
    }

    out.z = best.best();
    best.finish(info);
    info.extra.emplace_back("ode_trials", static_cast<double>(counters.trials));
    info.extra.emplace_back("ode_accepted_steps", static_cast<double>(counters.accepted));
    info.extra.emplace_back("ode_rejected_steps", static_cast<double>(counters.rejected));
    info.extra.emplace_back("ode_stalled_samples", static_cast<double>(stalled.sum().item<std::int64_t>()));
    info.extra.emplace_back("ode_final_step_min", h.min().item<double>());
    info.extra.emplace_back("ode_final_step_max", h.max().item<double>());
    info.wall_ms = watch.ms();
    return out;
  }

 private:
  static at::Tensor evaluate(const mhd::FixedPointProblem& problem, const at::Tensor& y, mhd::SolverInfo& info) {
    at::Tensor fy = problem.f(y);  // [B, D]
    ++info.f_evals;
    mhd::check_map_shape(kName, y, fy);
    return fy;
  }

  // Trials until every moving sample has accepted (or stalled). z, fz: the current states and f(z)
  // (FSAL: k1 = fz - z); h: [B, 1] each sample's proposed step; moving: [B].
  Step step(const mhd::FixedPointProblem& problem, const at::Tensor& z, const at::Tensor& fz, at::Tensor h,
            const at::Tensor& moving, mhd::SolverInfo& info, Counters& counters) const {
    const at::Tensor k1 = fz - z;  // F(z): [B, D]
    Step out{z, fz, h, at::zeros_like(moving), at::zeros_like(moving)};
    at::Tensor pending = moving;                                  // [B] still looking for a step
    at::Tensor rejected_before = at::zeros_like(moving);          // [B] rejected earlier in this step
    at::Tensor rejects = at::zeros({z.size(0)}, z.options().dtype(at::kLong));  // [B]

    while (true) {
      ++counters.trials;
      // k_i = F(y_i) = f(y_i) - y_i; any non-finite f ends the solve (the framework's rule).
      at::Tensor f_last;
      auto stage = [&](const at::Tensor& y) -> at::Tensor {
        f_last = evaluate(problem, y, info);
        return f_last - y;
      };
      const at::Tensor k2 = stage(z + h * (kA21 * k1));
      if (mhd::stop_if_nonfinite(info, f_last)) return nonfinite(out);
      const at::Tensor k3 = stage(z + h * (kA31 * k1 + kA32 * k2));
      if (mhd::stop_if_nonfinite(info, f_last)) return nonfinite(out);
      const at::Tensor k4 = stage(z + h * (kA41 * k1 + kA42 * k2 + kA43 * k3));
      if (mhd::stop_if_nonfinite(info, f_last)) return nonfinite(out);
      const at::Tensor k5 = stage(z + h * (kA51 * k1 + kA52 * k2 + kA53 * k3 + kA54 * k4));
      if (mhd::stop_if_nonfinite(info, f_last)) return nonfinite(out);
      const at::Tensor k6 = stage(z + h * (kA61 * k1 + kA62 * k2 + kA63 * k3 + kA64 * k4 + kA65 * k5));
      if (mhd::stop_if_nonfinite(info, f_last)) return nonfinite(out);
      const at::Tensor z_new = z + h * (kB1 * k1 + kB3 * k3 + kB4 * k4 + kB5 * k5 + kB6 * k6);  // [B, D]
      const at::Tensor k7 = stage(z_new);
      const at::Tensor f_new = f_last;  // f(z_new): the stopping rule's value, and k1 of the next step
      if (mhd::stop_if_nonfinite(info, f_new)) return nonfinite(out);

      // Local error estimate and its per-sample norm.    e: [B, D], err: [B]
      const at::Tensor e = h * (kE1 * k1 + kE3 * k3 + kE4 * k4 + kE5 * k5 + kE6 * k6 + kE7 * k7);
      const at::Tensor err = error_norm(e, z, z_new, k1, k7);
      const at::Tensor ok = pending.logical_and(err.le(1.0));       // [B]
      const at::Tensor rejected = pending.logical_and(at::logical_not(ok));

      // err = 0 gives an infinite factor, clamped to max_growth. After a rejection in this step a
      // sample may not grow its step again (it would only be rejected once more).
      at::Tensor factor = at::clamp(opt_.safety * err.pow(-0.2), opt_.min_shrink, opt_.max_growth);  // [B]
      factor = at::where(rejected_before, at::clamp_max(factor, 1.0), factor).unsqueeze(1);          // [B, 1]
      const at::Tensor h_new = at::clamp_max(h * factor, kMaxStep);

      const at::Tensor ok_col = ok.unsqueeze(1);
      out.z = at::where(ok_col, z_new, out.z);
      out.fz = at::where(ok_col, f_new, out.fz);
      out.h = at::where(ok_col, h_new, out.h);
      out.accepted = out.accepted.logical_or(ok);
      counters.accepted += ok.sum().item<std::int64_t>();
      counters.rejected += rejected.sum().item<std::int64_t>();

      // A rejected sample retries with its shrunk step (err > 1 makes factor <= safety < 1).
      h = at::where(rejected.unsqueeze(1), h_new, h);
      rejected_before = rejected_before.logical_or(rejected);
      rejects = rejects + rejected.to(at::kLong);
      const at::Tensor give_up = rejected.logical_and(rejects.ge(opt_.max_rejects));
      out.stalled = out.stalled.logical_or(give_up);
      pending = rejected.logical_and(at::logical_not(give_up));
      if (!pending.any().item<bool>()) return out;
    }
  }

  // err_b <= 1 accepts sample b's step. ErrorScale::State is the textbook mixed test on the state,
  // sqrt(mean_d (e_bd / (atol + rtol max(|z_bd|, |z_new_bd|)))^2). ErrorScale::Residual measures e
  // against the residual F(z) instead, rms(e_b) / (atol + rtol max(rms(k1_b), rms(k7_b))): the
  // flow's residual obeys the same linearised ODE as z - z*, so this is the usual relative error
  // control applied to the quantity that must reach 0. Relative to |z| the controller lets the modes
  // at the edge of the stability region grow back until the local error reaches rtol |z|, and the
  // residual then stalls near that level (docs/benchmarks.md, "Neural-ODE and Broyden solvers").
  at::Tensor error_norm(const at::Tensor& e, const at::Tensor& z, const at::Tensor& z_new, const at::Tensor& k1,
                        const at::Tensor& k7) const {
    if (opt_.error_scale == ErrorScale::State) {
      const at::Tensor scale = opt_.atol + opt_.rtol * at::maximum(z.abs(), z_new.abs());  // [B, D]
      return (e / scale).pow(2).mean(1).sqrt();
    }
    auto rms = [](const at::Tensor& v) { return v.pow(2).mean(1).sqrt(); };  // [B, D] -> [B]
    const at::Tensor scale = opt_.atol + opt_.rtol * at::maximum(rms(k1), rms(k7));  // [B]
    // scale == 0 only when atol == 0 and the sample sits exactly at its fixed point: then e == 0 too.
    return at::where(scale.gt(0), rms(e) / scale, at::zeros_like(scale));
  }

  static Step nonfinite(Step out) {
    out.nonfinite = true;
    return out;
  }

  Options opt_;
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
  if (p.real("rtol") <= 0.0 && p.real("atol") <= 0.0)
    throw mhd::Error(std::string(kName) + ": parameter 'atol' must be > 0 when rtol is 0 (the error norm divides by atol + rtol |.|)");
  if (p.text("error_scale") == "state" && p.real("atol") <= 0.0)
    throw mhd::Error(std::string(kName) + ": parameter 'atol' must be > 0 with error_scale = \"state\" (a zero entry of z would divide by 0)");
}

mhd::ParamSchema schema() {
  return {
      mhd::choice_param("error_scale", "residual", {"residual", "state"},
                        "what the local error is measured against: the residual f(z) - z (its size sets the "
                        "step, so the flow keeps converging) or the state z (the textbook test, which lets the "
                        "residual stall near rtol |z|)"),
      mhd::float_param("rtol", 1e-1,
                       "relative tolerance of the local error estimate (against error_scale; tol, not this, "
                       "decides convergence)",
                       0.0, 1.0),
      mhd::float_param("atol", 0.0,
                       "absolute tolerance of the local error estimate; with error_scale = residual keep it far "
                       "below tol |f(z)|, or the residual stalls near it",
                       0.0, 1e3),
      mhd::float_param("safety", 0.9, "step-size controller safety factor: h <- h * safety * err^(-1/5)", 1e-3, 1.0),
      mhd::float_param("max_growth", 10.0, "largest factor by which a step size grows after an accepted step", 1.0,
                       1e3),
      mhd::float_param("min_shrink", 0.2, "smallest factor by which a step size shrinks after a rejected step", 1e-4,
                       0.99),
      mhd::float_param("h0", 1.0,
                       "initial step size; 1 is the natural time scale of dz/dt = f(z) - z (plain iteration is "
                       "Euler with h = 1)",
                       1e-8, 1e3),
      mhd::int_param("max_rejects", 30,
                     "rejections in a row within one step after which a sample stops moving (stalled)", 1, 1000),
  };
}

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Solver;
  m.name = kName;
  m.version = "1.0.0";
  m.description =
      "Steady state of dz/dt = f(z) - z by adaptive Dormand-Prince 5(4), per-sample step sizes and error norms";
  m.params = schema();
  m.make_solver = [](const mhd::Params& p) -> std::shared_ptr<mhd::Solver> {
    validate(p, schema());
    Options o;
    o.error_scale = p.text("error_scale") == "state" ? ErrorScale::State : ErrorScale::Residual;
    o.rtol = p.real("rtol");
    o.atol = p.real("atol");
    o.safety = p.real("safety");
    o.max_growth = p.real("max_growth");
    o.min_shrink = p.real("min_shrink");
    o.h0 = p.real("h0");
    o.max_rejects = p.integer("max_rejects");
    return std::make_shared<NeuralOdeSolver>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Solver, make_manifest)
