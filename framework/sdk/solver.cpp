#include "mhd/solver.h"

#include <ATen/ATen.h>

#include <cmath>

#include "mhd/plugin.h"
#include "mhd/shapes.h"
#include "mhd/error.h"

namespace mhd {

Residuals residuals(const at::Tensor& z, const at::Tensor& fz) {
  // z, fz: [B, D] -> abs, rel: [B]
  Residuals r;
  r.abs = (fz - z).norm(2, {1});
  r.rel = r.abs / (fz.norm(2, {1}) + 1e-8);
  return r;
}

bool record_iteration(SolverInfo& info, const Residuals& r, double tol, const at::Tensor& energy) {
  info.iterations += 1;
  const double worst_abs = r.abs.max().item<double>();
  const double worst_rel = r.rel.max().item<double>();
  info.abs_trace.push_back(worst_abs);
  info.rel_trace.push_back(worst_rel);
  if (energy.defined()) info.energy_trace.push_back(energy.mean().item<double>());
  info.final_abs = r.abs;
  info.final_rel = r.rel;
  info.converged = worst_rel < tol;
  return info.converged;
}

void check_solve_inputs(const char* solver, const FixedPointProblem& problem, const at::Tensor& z0,
                        const SolveLimits& limits) {
  const std::string who(solver);
  if (!problem.f) throw Error(who + ": the problem has no map f");
  if (!z0.defined() || z0.dim() != 2)
    throw Error(who + ": z0 must be a [B, D] tensor, got " + (z0.defined() ? shape_string(z0.sizes()) : "none"));
  if (limits.max_iter < 1) throw Error(who + ": max_iter must be >= 1, got " + std::to_string(limits.max_iter));
}

void check_map_shape(const char* solver, const at::Tensor& z, const at::Tensor& fz) {
  if (!fz.defined() || !fz.sizes().equals(z.sizes()))
    throw Error(std::string(solver) + ": f(z) has shape " + (fz.defined() ? shape_string(fz.sizes()) : "none") +
                " but z has shape " + shape_string(z.sizes()));
}

at::Tensor energy_of(const FixedPointProblem& problem, const at::Tensor& z) {
  return problem.energy ? problem.energy(z) : at::Tensor();
}

bool stop_if_nonfinite(SolverInfo& info, const at::Tensor& fz) {
  const at::Tensor bad_rows = at::logical_not(at::isfinite(fz).all(1));  // [B]
  const auto bad = bad_rows.sum().item<std::int64_t>();
  if (bad == 0) return false;
  info.converged = false;
  info.extra.emplace_back("nonfinite_samples", static_cast<double>(bad));
  return true;
}

void BestIterate::observe(const at::Tensor& z, const Residuals& r) {
  // NaN compares false, so a blown-up sample never replaces a finite best.
  const at::Tensor rel = at::where(at::isnan(r.rel), at::full_like(r.rel, INFINITY), r.rel);
  if (!z_.defined()) {
    z_ = z.clone();
    abs_ = r.abs.clone();
    rel_ = rel.clone();
    return;
  }
  const at::Tensor better = rel.lt(rel_);  // [B]
  z_ = at::where(better.unsqueeze(1), z, z_);
  abs_ = at::where(better, r.abs, abs_);
  rel_ = at::where(better, rel, rel_);
}

void BestIterate::finish(SolverInfo& info) const {
  if (!z_.defined()) return;
  info.final_abs = abs_;
  info.final_rel = rel_;
}

namespace {
SolverMaker& installed_solver_maker() {
  static SolverMaker maker;
  return maker;
}
}  // namespace

void install_solver_maker(SolverMaker maker) { installed_solver_maker() = std::move(maker); }

std::shared_ptr<Solver> make_solver_by_name(const std::string& name) {
  const SolverMaker& maker = installed_solver_maker();
  if (!maker) throw Error("solver '" + name + "': no plugin host has been set up to build solvers by name");
  return maker(name);
}

}  // namespace mhd
