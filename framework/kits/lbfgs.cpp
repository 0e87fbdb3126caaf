#include "mhd/kits/lbfgs.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <string>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd {

namespace {

// mask: [B] bool, broadcast over the trailing dimensions of a and b: [B, ...].
at::Tensor rows_where(const at::Tensor& mask, const at::Tensor& a, const at::Tensor& b) {
  std::vector<std::int64_t> shape(static_cast<std::size_t>(a.dim()), 1);
  shape[0] = mask.size(0);
  return at::where(mask.view(shape), a, b);
}

ObjectiveEval rows_where(const at::Tensor& mask, const ObjectiveEval& a, const ObjectiveEval& b) {
  ObjectiveEval out;
  out.value = at::where(mask, a.value, b.value);
  out.grad = rows_where(mask, a.grad, b.grad);
  for (std::size_t i = 0; i < a.aux.size(); ++i)
    out.aux.push_back(a.aux[i].defined() ? rows_where(mask, a.aux[i], b.aux[i]) : a.aux[i]);
  return out;
}

// Each sample's last m accepted curvature pairs, newest first. An empty slot has rho = 0, which makes
// it a no-op in both loops of the recursion, so samples with different numbers of pairs share one
// batched computation. gamma = s^T y / y^T y of the newest pair scales the initial Hessian (0: none).
class PairHistory {
 public:
  PairHistory(const at::Tensor& z, std::int64_t m) : m_(m), gamma_(at::zeros({z.size(0)}, z.options())) {
    if (m_ > 0) {
      s_ = at::zeros({z.size(0), m_, z.size(1)}, z.options());  // [B, m, D]
      y_ = at::zeros_like(s_);                                    // [B, m, D]
      rho_ = at::zeros({z.size(0), m_}, z.options());             // [B, m]
    }
  }

  at::Tensor has_scale() const { return gamma_.gt(0); }  // [B]

  // -H g by the two-loop recursion. g: [B, D] -> [B, D]
  at::Tensor direction(const at::Tensor& g) const {
    at::Tensor q = g;
    std::vector<at::Tensor> alpha(static_cast<std::size_t>(m_));
    for (std::int64_t i = 0; i < m_; ++i) {  // newest to oldest
      alpha[i] = rho_.select(1, i) * (s_.select(1, i) * q).sum(1);  // [B]
      q = q - alpha[i].unsqueeze(1) * y_.select(1, i);
    }
    const at::Tensor scale = at::where(has_scale(), gamma_, at::ones_like(gamma_));
    at::Tensor r = scale.unsqueeze(1) * q;
    for (std::int64_t i = m_ - 1; i >= 0; --i) {  // oldest to newest
      const at::Tensor beta = rho_.select(1, i) * (y_.select(1, i) * r).sum(1);
      r = r + (alpha[i] - beta).unsqueeze(1) * s_.select(1, i);
    }
    return -r;
  }

  // Pushes (s, y) for the samples in `accept` ([B] bool); s, y: [B, D], sy = s^T y: [B] (> 0 there).
  void push(const at::Tensor& s, const at::Tensor& y, const at::Tensor& sy, const at::Tensor& accept) {
    // Division where sy or y^T y is 0 gives inf/nan only in rows where() does not pick.
    gamma_ = at::where(accept, sy / (y * y).sum(1), gamma_);
    if (m_ == 0) return;
    s_ = rows_where(accept, at::cat({s.unsqueeze(1), s_.narrow(1, 0, m_ - 1)}, 1), s_);
    y_ = rows_where(accept, at::cat({y.unsqueeze(1), y_.narrow(1, 0, m_ - 1)}, 1), y_);
    rho_ = rows_where(accept, at::cat({(1.0 / sy).unsqueeze(1), rho_.narrow(1, 0, m_ - 1)}, 1), rho_);
  }

  // Forgets every pair of the samples in `mask` ([B] bool): their next direction is -grad.
  void reset(const at::Tensor& mask) {
    gamma_ = at::where(mask, at::zeros_like(gamma_), gamma_);
    if (m_ > 0) rho_ = rows_where(mask, at::zeros_like(rho_), rho_);
  }

 private:
  std::int64_t m_;
  at::Tensor s_, y_, rho_;
  at::Tensor gamma_;  // [B]
};

void check_options(const LbfgsOptions& o) {
  if (o.history < 0) throw Error("lbfgs: history must be >= 0, got " + std::to_string(o.history));
  if (!(o.backtrack > 0.0 && o.backtrack < 1.0))
    throw Error("lbfgs: backtrack must be in (0, 1), got " + std::to_string(o.backtrack));
  if (!(o.armijo_c1 > 0.0 && o.armijo_c1 < 1.0))
    throw Error("lbfgs: armijo_c1 must be in (0, 1), got " + std::to_string(o.armijo_c1));
}

}  // namespace

LbfgsResult lbfgs_minimize(const BatchedObjective& objective, const at::Tensor& z0, const LbfgsOptions& options,
                           const LbfgsObserver& observe) {
  check_options(options);
  if (!z0.defined() || z0.dim() != 2)
    throw Error("lbfgs: z0 must be a [B, D] tensor, got " + (z0.defined() ? shape_string(z0.sizes()) : "none"));
  LbfgsResult res;
  auto evaluate = [&](const at::Tensor& z) {
    ++res.evaluations;
    ObjectiveEval e = objective(z);
    if (!e.value.defined() || e.value.dim() != 1 || e.value.size(0) != z.size(0) || !e.grad.defined() ||
        !e.grad.sizes().equals(z.sizes()))
      throw Error("lbfgs: the objective must return value [B] and grad [B, D] for z " + shape_string(z.sizes()));
    return e;
  };
  const auto no_rows = [&] { return at::zeros({z0.size(0)}, z0.options().dtype(at::kBool)); };

  at::Tensor z = z0;            // [B, D]
  ObjectiveEval ev = evaluate(z);
  at::Tensor finished = no_rows();  // by the observer
  at::Tensor stalled = no_rows();   // no Armijo point even along -grad
  const auto grad_done = [&] {      // [B]
    return options.grad_tol > 0.0 ? ev.grad.norm(2, {1}).le(options.grad_tol) : no_rows();
  };
  const auto ask_observer = [&] {
    if (!observe) return false;
    const at::Tensor done = observe(z, ev);
    if (done.defined()) finished = finished.logical_or(done);
    return finished.all().item<bool>();
  };

  bool observer_stop = ask_observer();
  bool nothing_active = false;
  PairHistory history(z, options.history);
  for (std::int64_t step = 0; !observer_stop && step < options.max_steps; ++step) {
    const at::Tensor active = at::logical_not(finished.logical_or(grad_done()).logical_or(stalled));  // [B]
    if (!active.any().item<bool>()) {
      nothing_active = true;
      break;
    }
    const at::Tensor& g = ev.grad;  // [B, D]
    at::Tensor d = history.direction(g);
    at::Tensor gd = (g * d).sum(1);  // [B]
    // Not a descent direction (a poor pair or round-off): steepest descent, history forgotten.
    const at::Tensor uphill = active.logical_and(at::logical_not(gd.lt(0)));
    if (uphill.any().item<bool>()) {
      history.reset(uphill);
      d = rows_where(uphill, -g, d);
      gd = at::where(uphill, -(g * g).sum(1), gd);
    }
    d = rows_where(active, d, at::zeros_like(d));
    // t = 1 once a pair scales the step; before that min(1, 1/||g||) keeps the first step bounded.
    const at::Tensor first = at::clamp_max(1.0 / (g.norm(2, {1}) + 1e-30), 1.0);
    at::Tensor t = at::where(active, at::where(history.has_scale(), at::ones_like(first), first), at::zeros_like(first));

    // Backtracking line search, per sample: every trial evaluates the whole batch; samples already
    // accepted sit at their accepted point, inactive ones at z (d = 0).
    at::Tensor pending = active.clone();
    at::Tensor t_accepted = at::zeros_like(t);
    at::Tensor z_new = z;
    ObjectiveEval ev_new = ev;
    for (std::int64_t bt = 0; bt <= options.max_backtracks; ++bt) {
      const at::Tensor trial_t = at::where(pending, t, t_accepted);
      const at::Tensor z_try = z + trial_t.unsqueeze(1) * d;
      const ObjectiveEval e = evaluate(z_try);
      const at::Tensor armijo = e.value.le(ev.value + options.armijo_c1 * t * gd);  // false for NaN
      const at::Tensor ok = pending.logical_and(armijo).logical_and(at::isfinite(e.value));
      z_new = rows_where(ok, z_try, z_new);
      ev_new = rows_where(ok, e, ev_new);
      t_accepted = at::where(ok, t, t_accepted);
      pending = pending.logical_and(at::logical_not(ok));
      if (!pending.any().item<bool>()) break;
      t = at::where(pending, t * options.backtrack, t);
    }
    // A failed search along an L-BFGS direction retries along -grad next time; along -grad it stops.
    const at::Tensor failed = pending;
    res.line_search_failures += failed.sum().item<std::int64_t>();
    stalled = stalled.logical_or(failed.logical_and(at::logical_not(history.has_scale())));
    history.reset(failed);

    const at::Tensor moved = active.logical_and(at::logical_not(failed));
    const at::Tensor s = z_new - z;         // [B, D]
    const at::Tensor y = ev_new.grad - g;   // [B, D]
    const at::Tensor sy = (s * y).sum(1);   // [B]
    const at::Tensor curved = sy.gt(options.curvature_eps * s.norm(2, {1}) * y.norm(2, {1}));
    const at::Tensor keep = moved.logical_and(curved);
    res.skipped_pairs += moved.logical_and(at::logical_not(curved)).sum().item<std::int64_t>();
    history.push(s, y, sy, keep);

    z = z_new;
    ev = ev_new;
    ++res.steps;
    observer_stop = ask_observer();
  }

  if (!observer_stop && !nothing_active && res.steps == options.max_steps) {
    // The budget ran out, unless every sample happened to finish on the last step.
    const at::Tensor active = at::logical_not(finished.logical_or(grad_done()).logical_or(stalled));
    nothing_active = !active.any().item<bool>();
  }
  res.z = z;
  res.eval = ev;
  res.grad_converged = grad_done();
  if (observer_stop)
    res.stop = LbfgsStop::Observer;
  else if (nothing_active)
    res.stop = stalled.any().item<bool>() ? LbfgsStop::Stalled : LbfgsStop::Converged;
  else
    res.stop = LbfgsStop::MaxSteps;
  return res;
}

ResidualObjective residual_objective(const TensorMap& f, const at::Tensor& z) {
  torch::AutoGradMode enable(true);
  const at::Tensor zz = z.detach().requires_grad_(true);
  const at::Tensor fz = f(zz);  // [B, D]
  ResidualObjective out;
  if (!fz.defined() || !fz.sizes().equals(z.sizes()))
    throw Error("residual objective: f(z) has shape " + (fz.defined() ? shape_string(fz.sizes()) : "none") +
                " but z has shape " + shape_string(z.sizes()));
  if (!fz.requires_grad()) {  // no graph to differentiate through
    out.fz = fz.detach();
    out.value = 0.5 * (z.detach() - out.fz).pow(2).sum(1);
    return out;
  }
  const at::Tensor value = 0.5 * (zz - fz).pow(2).sum(1);  // [B]
  // d/dz 1/2 ||z - f(z)||^2 = r - J^T r; rows are independent, so the gradient of the sum is per row.
  out.grad = torch::autograd::grad({value.sum()}, {zz})[0].detach();
  out.value = value.detach();
  out.fz = fz.detach();
  return out;
}

}  // namespace mhd
