#include "mhd/kits/broyden.h"

#include <algorithm>
#include <limits>
#include <utility>

#include <ATen/ATen.h>

namespace mhd {
namespace broyden {
namespace {

// sum_i u_i (v_i . x) per sample: the low-rank part of H x.   u, v: [B, n, D], x: [B, D] -> [B, D].
// Broadcast multiply-sums: measured 1.3x faster per solve than bmm for these skinny shapes on CPU.
at::Tensor low_rank(const at::Tensor& u, const at::Tensor& v, const at::Tensor& x) {
  const at::Tensor coef = (v * x.unsqueeze(1)).sum(2);  // [B, n]
  return (coef.unsqueeze(2) * u).sum(1);
}

double degenerate_ratio(at::ScalarType dtype) {
  // |s^T H y| below this fraction of ||H^T s|| ||y|| would give a pair u of enormous norm: skipped.
  return dtype == at::kDouble ? 10 * std::numeric_limits<double>::epsilon()
                              : 10 * static_cast<double>(std::numeric_limits<float>::epsilon());
}

}  // namespace

Core::Core(std::string who, Options options) : who_(std::move(who)), opt_(options) {}

void Core::run(const FixedPointProblem& problem, at::Tensor z, at::Tensor fz, const SolveLimits& limits,
               SolverInfo& info, BestIterate& best) {
  const std::int64_t batch = z.size(0);
  const std::int64_t m = opt_.memory;
  // The pairs of every sample; slot `used` is written by every sample at the same step (a sample that
  // stores nothing writes a zero pair, which adds nothing to H), so one count serves all and the
  // restarts happen at the same step whatever else is in the batch.
  at::Tensor us = at::zeros({batch, m, z.size(1)}, z.options());  // [B, m, D]
  at::Tensor vs = at::zeros_like(us);                             // [B, m, D]
  std::int64_t used = 0;
  const double ratio = degenerate_ratio(z.scalar_type());
  const auto bool_opts = z.options().dtype(at::kBool);
  at::Tensor failed_before = at::zeros({batch}, bool_opts);  // [B] the last step's line search failed

  Residuals r = residuals(z, fz);
  at::Tensor g = fz - z;  // g(z): [B, D]
  // The line search's reference: each sample's largest ||g|| over its last `nonmonotone` iterates
  // (a ring, filled with the start's norm), so a step may raise ||g|| above the last iterate's as
  // Broyden's steps often do on the way, but never above the recent worst.   [B, window]
  const std::int64_t window = std::max<std::int64_t>(opt_.nonmonotone, 1);
  at::Tensor recent_norms = g.norm(2, {1}).unsqueeze(1).repeat({1, window});
  std::int64_t norm_slot = 0;
  while (info.iterations < limits.max_iter) {
    // Not yet converged: [B]; !(rel < tol) keeps a NaN residual moving, as in fixed_point.
    const at::Tensor active = at::logical_not(r.rel.lt(limits.tol));
    if (!active.any().item<bool>()) break;
    ++stats_.steps;
    const at::Tensor d = used == 0 ? g : g - low_rank(us.narrow(1, 0, used), vs.narrow(1, 0, used), g);  // -H g: [B, D]

    // Backtracking on ||g||, per sample: t = 1, backtrack, backtrack^2, ...; the last trial is taken
    // whatever it gives (the best iterate is kept separately, so a bad step cannot lose the best point).
    const at::Tensor g_ref = std::get<0>(recent_norms.max(1));  // [B]
    at::Tensor t = at::ones({batch, 1}, z.options());          // [B, 1]
    at::Tensor pending = active;                               // [B]
    at::Tensor z_next = z, f_next = fz;                        // [B, D]
    at::Tensor failed = at::zeros({batch}, bool_opts);         // [B]
    for (std::int64_t trial = 0;; ++trial) {
      const at::Tensor z_try = z + t * d;
      const at::Tensor f_try = problem.f(z_try);
      ++info.f_evals;
      check_map_shape(who_.c_str(), z_try, f_try);
      if (trial > 0) ++stats_.line_search_evals;
      const at::Tensor pending_col = pending.unsqueeze(1);
      if (at::logical_not(at::isfinite(f_try).all(1)).logical_and(pending).any().item<bool>()) {
        // The framework's rule: a non-finite f(z) ends the solve, its iteration recorded.
        const at::Tensor z_rec = at::where(pending_col, z_try, z_next);
        const at::Tensor f_rec = at::where(pending_col, f_try, f_next);
        const Residuals rr = residuals(z_rec, f_rec);
        record_iteration(info, rr, limits.tol, energy_of(problem, z_rec));
        best.observe(z_rec, rr);
        stop_if_nonfinite(info, f_rec);
        return;
      }
      const bool last = trial >= opt_.max_backtracks;
      const at::Tensor decrease = (f_try - z_try).norm(2, {1}).le((1.0 - opt_.armijo_c1 * t.squeeze(1)) * g_ref);
      const at::Tensor take = last ? pending : pending.logical_and(decrease);
      // Without a line search (max_backtracks = 0) nothing can fail: the full step is the method.
      if (last && opt_.max_backtracks > 0) failed = pending.logical_and(at::logical_not(decrease));
      z_next = at::where(take.unsqueeze(1), z_try, z_next);
      f_next = at::where(take.unsqueeze(1), f_try, f_next);
      pending = pending.logical_and(at::logical_not(take));
      const auto still = pending.sum().item<std::int64_t>();
      if (still == 0) break;
      stats_.backtracks += still;
      t = at::where(pending.unsqueeze(1), t * opt_.backtrack, t);
    }
    stats_.line_search_failures += failed.sum().item<std::int64_t>();

    // The good Broyden pair from s = z_next - z, y = g_next - g (both zero for samples that did not move).
    const at::Tensor g_next = f_next - z_next;
    const at::Tensor s = z_next - z;                                            // [B, D]
    const at::Tensor y = g_next - g;                                            // [B, D]
    // Full: restart from H = -I with this step's pair alone (for H = -I: u = (s + y) / (-s^T y),
    // v = -s). Overwriting just the oldest pair (a ring) would keep pairs computed against updates no
    // longer present; measured, that diverged on a near-critical linear map in float64 where
    // restarting converged (docs/benchmarks.md, "Neural-ODE and Broyden solvers").
    if (used == m) {
      us.zero_();
      vs.zero_();
      used = 0;
      ++stats_.restarts;
    }
    const at::Tensor u_now = us.narrow(1, 0, used), v_now = vs.narrow(1, 0, used);
    const at::Tensor hy = used == 0 ? -y : -y + low_rank(u_now, v_now, y);  // H y
    const at::Tensor v = used == 0 ? -s : -s + low_rank(v_now, u_now, s);   // H^T s
    const at::Tensor denom = (v * y).sum(1);                                // s^T H y: [B]
    const at::Tensor u = (s - hy) / denom.unsqueeze(1);                     // H_new y = H y + u (v.y) = s
    // A NaN or infinite denominator compares false too, so such a pair is never stored.
    const at::Tensor regular = denom.abs().gt(ratio * v.norm(2, {1}) * y.norm(2, {1}));
    // Two failed line searches in a row: the model H misleads this sample; start again from -I.
    const at::Tensor reset = failed.logical_and(failed_before);
    const auto resets = reset.sum().item<std::int64_t>();
    if (resets > 0) {
      stats_.resets += resets;
      const at::Tensor keep = at::logical_not(reset).to(us.scalar_type()).view({batch, 1, 1});
      us.mul_(keep);
      vs.mul_(keep);
    }
    failed_before = failed;
    const at::Tensor store = active.logical_and(regular).logical_and(at::logical_not(reset));  // [B]
    stats_.skipped_updates += active.logical_and(at::logical_not(regular)).sum().item<std::int64_t>();
    const at::Tensor store_col = store.unsqueeze(1);
    // where() picks per element, so the NaN/inf of a degenerate pair never reaches the memory.
    us.select(1, used).copy_(at::where(store_col, u, at::zeros_like(u)));
    vs.select(1, used).copy_(at::where(store_col, v, at::zeros_like(v)));
    ++used;

    z = z_next;
    fz = f_next;
    g = g_next;
    recent_norms.select(1, norm_slot).copy_(at::where(active, g.norm(2, {1}), recent_norms.select(1, norm_slot)));
    norm_slot = (norm_slot + 1) % window;
    r = residuals(z, fz);
    const bool done = record_iteration(info, r, limits.tol, energy_of(problem, z));
    best.observe(z, r);
    if (done) break;
  }
}

}  // namespace broyden
}  // namespace mhd
