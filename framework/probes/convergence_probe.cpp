// Probe `convergence`: contraction, energy descent, fixed-point stability
// and Lyapunov rate of a trained model's dynamics on held-out batches (convergence.h says what each
// number means). The map measured is the one the solvers see (optimizations' wrapping included),
// with each batch's context fixed, from the model's own z0 and z*.
//
// Metrics (at the trial's last step), over every probed sample:
//   convergence_samples                   samples measured
//   convergence_contraction_share         share with L = ||J_f(z*)||_2 < 1
//   convergence_lipschitz_mean/_max       L
//   convergence_lyapunov_bound            mean log L (local bound on the rate at z*)
//   convergence_energy_violation_rate     share of iteration steps z_k -> z_{k+1} where E increases
//   convergence_energy_violating_share    share of trajectories with at least one such step
//   convergence_return_share              share whose perturbation decays below return_ratio
//   convergence_return_ratio_median       ||f^T(z*+d) - f^T(z*)|| / ||d||, median
//   convergence_drift_mean                ||f^T(z*) - z*|| / ||z*||
//   convergence_lyapunov_rate             mean log growth per iteration of nearby trajectories
//   convergence_residual_mean             rel residual of the model's z*
// ProbePoints (probe "convergence"), for the first `curves` samples (lipschitz: every sample):
//   lipschitz                i sample, x = i, y = value = L
//   energy_along_iterations  i sample, j = x = k, y = value = E(z_k)
//   return_ratio             i sample, j = x = t, y = value = ratio after t iterations
//   lyapunov_log_distance    i sample, j = x = k, y = value = cumulative log growth after k steps
#include "probes/convergence.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "core/model.h"
#include "probes/probe.h"
#include "train/records.h"
#include "config/trial_config.h"
#include "tasks/task.h"

namespace mhd {

namespace {

at::Tensor row_norm(const at::Tensor& x) { return x.norm(2, {1}); }  // [B, D] -> [B]

// Random unit rows like `like` ([B, D]), drawn on the CPU so the stream is the same on any device.
at::Tensor unit_rows(const at::Tensor& like, at::Generator& gen) {
  auto d = at::randn(like.sizes(), gen, like.options().device(at::kCPU)).to(like.device());
  return d / row_norm(d).clamp_min(1e-12).unsqueeze(1);
}

// E(z) detached; gradients on locally because E may differentiate (the smoothness term).
at::Tensor energy_at(const TensorMap& energy, const at::Tensor& z) {
  at::AutoGradMode enable(true);
  return energy(z.detach()).detach();
}

at::Tensor map_once(const TensorMap& f, const at::Tensor& z) {
  at::NoGradGuard no_grad;
  return f(z).detach();
}

}  // namespace

ConvergenceMeasurement measure_convergence(const TensorMap& f, const TensorMap& energy, const at::Tensor& z0,
                                           const at::Tensor& z_star, const ConvergenceOptions& o) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  ConvergenceMeasurement m;
  const at::Tensor zs = z_star.detach();

  // Contraction at z*.
  m.lipschitz = jacobian_spectral_norm(f, zs, o.power_iterations);  // [B]
  const at::Tensor f_zs = map_once(f, zs);
  m.residual = row_norm(f_zs - zs) / (row_norm(f_zs) + 1e-8);

  // One plain iteration from z0 serves the energy trajectory and the Lyapunov rate: the neighbour
  // w is kept at relative distance `separation` from z_k (renormalised after each step).
  std::vector<at::Tensor> energies, increases, growths;
  at::Tensor z = z0.detach();
  // Distances are relative to the larger of ||z_k|| and ||z*||: the sequence form starts at z0 = 0,
  // where a gap relative to ||z0|| alone would vanish in float32 rounding.
  const at::Tensor floor = row_norm(zs).clamp_min(1e-6);  // [B]
  auto scale = [&floor](const at::Tensor& at) { return at::maximum(row_norm(at), floor); };
  at::Tensor w = z + o.separation * scale(z).unsqueeze(1) * unit_rows(z, gen);
  if (energy) energies.push_back(energy_at(energy, z));
  for (std::int64_t k = 0; k < o.iterations; ++k) {
    const at::Tensor before = row_norm(w - z);  // [B]
    const at::Tensor z_next = map_once(f, z);
    const at::Tensor d = map_once(f, w) - z_next;  // [B, D]
    const at::Tensor after = row_norm(d);
    growths.push_back(at::log(after / before.clamp_min(1e-30)));
    const at::Tensor gap = o.separation * scale(z_next);
    w = z_next + d / after.clamp_min(1e-30).unsqueeze(1) * gap.unsqueeze(1);
    z = z_next;
    if (energy) {
      const at::Tensor e = energy_at(energy, z);
      const at::Tensor& previous = energies.back();
      const at::Tensor slack = o.energy_tolerance * (previous.abs() + 1.0);
      increases.push_back((e > previous + slack).logical_or(at::isfinite(e).logical_not()));
      energies.push_back(e);
    }
  }
  if (energy) {
    m.energy = at::stack(energies, 1);
    m.energy_increase = o.iterations > 0 ? at::stack(increases, 1) : at::zeros({zs.size(0), 0}, zs.options().dtype(at::kBool));
  }
  m.lyapunov_growth = o.iterations > 0 ? at::stack(growths, 1) : at::zeros({zs.size(0), 0}, zs.options());
  m.lyapunov_rate = o.iterations > 0 ? m.lyapunov_growth.mean(1) : at::zeros({zs.size(0)}, zs.options());

  // Stability of z*: a perturbation of size perturbation ||z*||, followed for T iterations.
  const at::Tensor size = o.perturbation * row_norm(zs).clamp_min(1e-6);  // [B]
  at::Tensor a = zs;
  at::Tensor b = zs + size.unsqueeze(1) * unit_rows(zs, gen);
  std::vector<at::Tensor> ratios = {row_norm(b - a) / size};
  for (std::int64_t t = 0; t < o.return_iterations; ++t) {
    a = map_once(f, a);
    b = map_once(f, b);
    ratios.push_back(row_norm(b - a) / size);
  }
  m.return_ratio = at::stack(ratios, 1);
  m.returned = ratios.back() < o.return_ratio;  // NaN (a blown-up trajectory) does not return
  m.drift = row_norm(a - zs) / row_norm(zs).clamp_min(1e-12);
  return m;
}

namespace {

// Mean over the finite entries (NaN when there are none).
double finite_mean(const at::Tensor& t) {
  const at::Tensor v = t.to(at::kDouble).flatten();
  const at::Tensor keep = at::isfinite(v);
  if (keep.sum().item<std::int64_t>() == 0) return std::nan("");
  return v.masked_select(keep).mean().item<double>();
}

double share(const at::Tensor& flags) { return flags.numel() == 0 ? std::nan("") : flags.to(at::kDouble).mean().item<double>(); }

class ConvergenceProbe : public Probe {
 public:
  explicit ConvergenceProbe(const Params& p) : batches_(p.integer("batches")), curves_(p.integer("curves")) {
    options_.power_iterations = p.integer("power_iterations");
    options_.iterations = p.integer("iterations");
    options_.energy_tolerance = p.real("energy_tolerance");
    options_.perturbation = p.real("perturbation");
    options_.return_iterations = p.integer("return_iterations");
    options_.return_ratio = p.real("return_ratio");
    options_.separation = p.real("separation");
    options_.seed = static_cast<std::uint64_t>(p.integer("seed"));
  }

  void run(ProbeContext& c) override {
    if (!c.model.deq_enabled()) throw Error("needs the DEQ equilibrium (model.deq = true)");
    const std::int64_t batch_size = c.config.train.integer("batch");
    std::vector<ConvergenceMeasurement> parts;
    for (std::int64_t b = 0; b < batches_; ++b) {
      const Batch batch = c.task.eval_batch(batch_size, b);
      ModelOutput out = c.model.forward(batch.inputs.to(c.device));
      UnifiedDynamics& dynamics = c.model.dynamics();
      const DynamicsContext& context = out.context;
      const TensorMap f = dynamics.solver_map(context);
      const TensorMap energy = [&](const at::Tensor& z) { return dynamics.energy(z, context).total; };
      ConvergenceOptions options = options_;
      options.seed += static_cast<std::uint64_t>(b);
      parts.push_back(measure_convergence(f, energy, out.z0.detach(), out.z_star.detach(), options));
    }
    record(c, parts);
  }

 private:
  static at::Tensor cat(const std::vector<ConvergenceMeasurement>& parts, at::Tensor ConvergenceMeasurement::*field) {
    std::vector<at::Tensor> all;
    for (const auto& p : parts) all.push_back(p.*field);
    return at::cat(all, 0).cpu();
  }

  void record(ProbeContext& c, const std::vector<ConvergenceMeasurement>& parts) const {
    using M = ConvergenceMeasurement;
    const at::Tensor L = cat(parts, &M::lipschitz).to(at::kDouble);
    const at::Tensor energy = cat(parts, &M::energy).to(at::kDouble);
    const at::Tensor increase = cat(parts, &M::energy_increase);
    const at::Tensor ratio = cat(parts, &M::return_ratio).to(at::kDouble);
    const at::Tensor growth = cat(parts, &M::lyapunov_growth).to(at::kDouble);
    auto metric = [&](const std::string& name, double value) { c.sink.metric(c.step, "convergence_" + name, value); };
    metric("samples", static_cast<double>(L.size(0)));
    metric("contraction_share", share(L < 1.0));
    metric("lipschitz_mean", finite_mean(L));
    metric("lipschitz_max", L.max().item<double>());
    metric("lyapunov_bound", finite_mean(at::log(L)));
    metric("energy_violation_rate", share(increase));
    metric("energy_violating_share", increase.size(1) == 0 ? std::nan("") : share(increase.any(1)));
    metric("return_share", share(cat(parts, &M::returned)));
    metric("return_ratio_median", ratio.select(1, ratio.size(1) - 1).nanmedian().item<double>());
    metric("drift_mean", finite_mean(cat(parts, &M::drift)));
    metric("lyapunov_rate", finite_mean(cat(parts, &M::lyapunov_rate)));
    metric("residual_mean", finite_mean(cat(parts, &M::residual)));
    if (!c.sink.point) return;

    // Drawn at (x, y) = (j, value), except lipschitz at (i, L).
    auto point = [&](const char* name, std::int64_t i, std::int64_t j, double value) {
      c.sink.point(ProbePoint{"convergence", name, i, j, static_cast<double>(j), value, value});
    };
    for (std::int64_t i = 0; i < L.size(0); ++i) {
      const double l = L[i].item<double>();
      c.sink.point(ProbePoint{"convergence", "lipschitz", i, 0, static_cast<double>(i), l, l});
    }
    const std::int64_t shown = std::min<std::int64_t>(curves_, L.size(0));
    const at::Tensor cumulative = growth.cumsum(1);
    for (std::int64_t i = 0; i < shown; ++i) {
      for (std::int64_t k = 0; k < energy.size(1); ++k) point("energy_along_iterations", i, k, energy[i][k].item<double>());
      for (std::int64_t t = 0; t < ratio.size(1); ++t) point("return_ratio", i, t, ratio[i][t].item<double>());
      for (std::int64_t k = 0; k < cumulative.size(1); ++k)
        point("lyapunov_log_distance", i, k + 1, cumulative[i][k].item<double>());
    }
  }

  std::int64_t batches_, curves_;
  ConvergenceOptions options_;
};

}  // namespace

MHD_REGISTER_PROBE(convergence, [] {
  return ProbeDefinition{
      "convergence",
      "Contraction (||J_f(z*)||_2), energy descent along f's iterations, stability of z* under perturbation and "
      "the Lyapunov rate, on held-out batches.",
      {
          int_param("batches", 2, "Held-out batches (of train.batch samples) to measure.", 1, 1000),
          int_param("power_iterations", 20, "Power iterations for L = ||J_f(z*)||_2.", 1, 1000),
          int_param("iterations", 30, "Iterations z_{k+1} = f(z_k) from z0 for energy descent and the Lyapunov rate.", 1,
                    100000),
          float_param("energy_tolerance", 1e-6,
                      "A step violates descent when E(z_{k+1}) > E(z_k) + energy_tolerance (|E(z_k)| + 1).", 0.0, 1.0),
          float_param("perturbation", 1e-2, "Size of the perturbation of z*, relative to ||z*||.", 1e-8, 10.0),
          int_param("return_iterations", 30, "Iterations of f after perturbing z*.", 1, 100000),
          float_param("return_ratio", 0.1,
                      "A perturbed z* returns when ||f^T(z*+d) - f^T(z*)|| / ||d|| ends below this.", 1e-12, 1e6),
          float_param("separation", 1e-3, "Distance of the Lyapunov neighbour, relative to ||z_k||.", 1e-8, 1.0),
          int_param("curves", 8, "Samples whose curves (energy, return ratio, Lyapunov) are stored as probe points.", 0,
                    100000),
          int_param("seed", 0, "Seed of the random perturbation and neighbour directions.", 0, 1000000000),
      },
      [](const Params& p) { return std::make_unique<ConvergenceProbe>(p); }};
});

}  // namespace mhd
