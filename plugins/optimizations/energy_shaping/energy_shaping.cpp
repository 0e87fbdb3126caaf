// Optimization plugin `energy_shaping`: curvature regularisation of the energy E(z) at the
// equilibrium (docs/design.md §3, §4), added to the training objective through objective_term.
//
// H_b = d^2 E_b / dz^2 at z*_b: [S, S] per sample (S = P * D; rows are independent, so one
// Hessian-vector product of sum_b E_b gives every sample's H_b u_b). H is never formed: each probe
// is a Rademacher vector v: [B, S] and everything is built from Hessian-vector products (double
// backprop through E):
//
// * Curvature spread around a target c. With q = v / ||v|| (||v||^2 = S for Rademacher),
//       ||H q - c q||^2 = v^T (H - cI)^2 v / S,   E_v[.] = tr((H - cI)^2) / S = mean_i (lambda_i - c)^2,
//   the mean squared distance of H's eigenvalues from c (Hutchinson). Its mean over samples and
//   probes is `curvature_penalty`, weighted by `curvature_weight`. The same product gives
//   q^T H q (estimates tr H / S, the mean eigenvalue: `shaping_curvature_mean`) and ||H q||^2
//   (estimates mean lambda^2; with the mean, the eigenvalues' standard deviation:
//   `shaping_curvature_spread`).
// * Saddle avoidance. Rayleigh-Ritz on the Krylov space K_k(H, q) (k = `lanczos_steps`, an
//   orthonormal basis Q: [B, S, k] by Gram-Schmidt, twice, on the products): the smallest
//   eigenvalue theta of T = Q^T H Q: [B, k, k]. By interlacing theta >= lambda_min(H), so
//   theta < 0 only when H has negative curvature, and it tends to lambda_min as k grows (k = 1 is
//   the curvature along the probe itself). `saddle_penalty` = mean relu(-theta), weighted by
//   `saddle_weight`; `shaping_negative_share` the share of (sample, probe) pairs with theta < 0.
//
// The gradient reaches the parameters through E (create_graph) with z* held fixed (detached): the
// shape of the energy around the equilibrium is penalised, not the equilibrium's own motion.
// The Krylov basis keeps its graph (it is built from H's products), so the gradient is that of the
// estimate itself, the change of the Krylov space with the parameters included.
// Metrics are means over every objective_term call since the last metrics() call.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/optimization.h"
#include "mhd/plugin.h"

namespace {

struct ShapingOptions {
  double curvature_weight = 1e-3;
  double target_curvature = 1.0;
  double saddle_weight = 1e-2;
  std::int64_t probes = 1;
  std::int64_t lanczos_steps = 3;
  std::int64_t every = 1;
};

// Per-row inner product of [B, S] tensors: [B].
at::Tensor rowdot(const at::Tensor& a, const at::Tensor& b) { return (a * b).sum(1); }

// The Hessian of sum_b E_b at z (a leaf with requires_grad), applied to u: [B, S].
class HessianProducts {
 public:
  HessianProducts(const mhd::TensorMap& energy, const at::Tensor& z, bool keep_graph) : z_(z), keep_(keep_graph) {
    const at::Tensor e = energy(z_);
    if (!e.defined() || e.dim() != 1 || e.size(0) != z.size(0))
      throw mhd::Error("energy_shaping: the energy must map z [B, S] to [B]");
    grad_ = torch::autograd::grad({e.sum()}, {z_}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];  // [B, S]
  }
  at::Tensor operator()(const at::Tensor& u) const {
    if (!grad_.requires_grad()) return at::zeros_like(u);  // E is affine in z: H = 0
    const auto hu = torch::autograd::grad({rowdot(grad_, u).sum()}, {z_}, {}, /*retain_graph=*/true,
                                          /*create_graph=*/keep_, /*allow_unused=*/true)[0];
    return hu.defined() ? hu : at::zeros_like(u);  // [B, S]
  }

 private:
  at::Tensor z_, grad_;
  bool keep_;
};

// One probe's statistics, per sample: [B] each.
struct ProbeStats {
  at::Tensor rayleigh;   // q^T H q
  at::Tensor square;     // ||H q||^2
  at::Tensor deviation;  // ||H q - c q||^2
  at::Tensor ritz_min;   // smallest eigenvalue of Q^T H Q over K_k(H, q)
};

// Removes from w its components along the basis vectors (rows of each [B, S]), twice for stability.
at::Tensor orthogonalised(at::Tensor w, const std::vector<at::Tensor>& basis) {
  for (int pass = 0; pass < 2; ++pass)
    for (const auto& q : basis) w = w - rowdot(w, q).unsqueeze(1) * q;
  return w;
}

ProbeStats probe(const HessianProducts& hvp, const at::Tensor& z, double target, std::int64_t steps) {
  const at::Tensor v = at::randint(0, 2, z.sizes(), z.options()).mul_(2).sub_(1);  // Rademacher: [B, S]
  std::vector<at::Tensor> basis{v / std::sqrt(static_cast<double>(z.size(1)))};   // q_1 = v / ||v||
  std::vector<at::Tensor> products{hvp(basis[0])};                                 // H q_1 (with graph)
  ProbeStats s;
  s.rayleigh = rowdot(basis[0], products[0]);
  s.square = products[0].pow(2).sum(1);
  s.deviation = (products[0] - target * basis[0]).pow(2).sum(1);
  for (std::int64_t j = 1; j < std::min<std::int64_t>(steps, z.size(1)); ++j) {
    const at::Tensor w = orthogonalised(products.back(), basis);
    basis.push_back(w / w.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
    products.push_back(hvp(basis.back()));
  }
  const at::Tensor Q = at::stack(basis, 2);             // [B, S, k]
  const at::Tensor HQ = at::stack(products, 2);          // [B, S, k]
  at::Tensor T = at::bmm(Q.transpose(1, 2), HQ);         // [B, k, k]
  T = 0.5 * (T + T.transpose(1, 2));
  s.ritz_min = at::linalg_eigvalsh(T).select(1, 0);      // ascending: [B]
  return s;
}

class EnergyShaping final : public mhd::Optimization {
 public:
  explicit EnergyShaping(ShapingOptions o) : o_(o) {}

  at::Tensor objective_term(const mhd::TensorMap& energy, const at::Tensor& z_star) override {
    if (!energy || !z_star.defined() || z_star.dim() != 2) return at::Tensor();
    // Its Hessian-vector products run through the whole dynamics twice per Krylov step, several
    // times a plain training step: `every` spends that on one step in N (the others add no term).
    if (seen_++ % o_.every != 0) return at::Tensor();
    const bool trains = at::GradMode::is_enabled() && (o_.curvature_weight > 0 || o_.saddle_weight > 0);
    torch::AutoGradMode enable(true);
    const at::Tensor z = z_star.detach().requires_grad_(true);  // [B, S]
    const HessianProducts hvp(energy, z, trains);
    std::vector<ProbeStats> stats;
    for (std::int64_t p = 0; p < o_.probes; ++p) stats.push_back(probe(hvp, z, o_.target_curvature, o_.lanczos_steps));
    auto stacked = [&](at::Tensor ProbeStats::*field) {
      std::vector<at::Tensor> parts;
      for (const auto& s : stats) parts.push_back(s.*field);
      return at::stack(parts);  // [probes, B]
    };
    const at::Tensor rayleigh = stacked(&ProbeStats::rayleigh), square = stacked(&ProbeStats::square);
    const at::Tensor curvature = stacked(&ProbeStats::deviation).mean();
    const at::Tensor ritz = stacked(&ProbeStats::ritz_min);
    const at::Tensor saddle = at::relu(-ritz).mean();
    record(rayleigh.detach(), square.detach(), ritz.detach(), curvature.item<double>(), saddle.item<double>());
    const at::Tensor term = o_.curvature_weight * curvature + o_.saddle_weight * saddle;
    return trains ? term : term.detach();
  }

  std::map<std::string, double> metrics() override {
    if (calls_ == 0) return {};
    const double n = static_cast<double>(calls_);
    const double mean = sum_mean_ / n;
    std::map<std::string, double> m{
        {"shaping_curvature_mean", mean},
        {"shaping_curvature_spread", std::sqrt(std::max(0.0, sum_square_ / n - mean * mean))},
        {"shaping_ritz_min", sum_ritz_ / n},
        {"shaping_negative_share", sum_negative_ / n},
        {"shaping_curvature_penalty", sum_curvature_ / n},
        {"shaping_saddle_penalty", sum_saddle_ / n},
        {"shaping_term", (o_.curvature_weight * sum_curvature_ + o_.saddle_weight * sum_saddle_) / n},
    };
    calls_ = 0;
    sum_mean_ = sum_square_ = sum_ritz_ = sum_negative_ = sum_curvature_ = sum_saddle_ = 0.0;
    return m;
  }

 private:
  void record(const at::Tensor& rayleigh, const at::Tensor& square, const at::Tensor& ritz, double curvature,
              double saddle) {
    ++calls_;
    sum_mean_ += rayleigh.mean().item<double>();
    sum_square_ += square.mean().item<double>();
    sum_ritz_ += ritz.mean().item<double>();
    sum_negative_ += ritz.lt(0).to(at::kDouble).mean().item<double>();
    sum_curvature_ += curvature;
    sum_saddle_ += saddle;
  }

  ShapingOptions o_;
  std::int64_t seen_ = 0;   // objective_term calls, shaped or not
  std::int64_t calls_ = 0;  // shaped calls since the last metrics()
  double sum_mean_ = 0, sum_square_ = 0, sum_ritz_ = 0, sum_negative_ = 0, sum_curvature_ = 0, sum_saddle_ = 0;
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Optimization;
  m.name = "energy_shaping";
  m.version = "1.0.0";
  m.description =
      "Energy shaping: Hutchinson curvature-spread and Krylov saddle penalties on E's Hessian at z* (objective)";
  m.params = {
      mhd::float_param("curvature_weight", 1e-3,
                       "weight of the mean squared distance of E's Hessian eigenvalues from target_curvature", 0.0,
                       1e6),
      mhd::float_param("target_curvature", 1.0, "the curvature c the Hessian's eigenvalues are pulled to", -1e6,
                       1e6),
      mhd::float_param("saddle_weight", 1e-2, "weight of relu(-theta_min), the negative curvature found per probe",
                       0.0, 1e6),
      mhd::int_param("probes", 1, "Rademacher probe vectors per step (Hessian-vector products: probes x lanczos_steps)",
                     1, 256),
      mhd::int_param("lanczos_steps", 3,
                     "Krylov dimension of the saddle search per probe (1: the curvature along the probe only)", 1, 64),
      mhd::int_param("every", 1,
                     "shape the energy at one objective in this many (1: every step); the others add no term",
                     1, 1000000),
  };
  m.make_optimization = [](const mhd::Params& p) -> std::shared_ptr<mhd::Optimization> {
    ShapingOptions o;
    o.curvature_weight = p.real("curvature_weight");
    o.target_curvature = p.real("target_curvature");
    o.saddle_weight = p.real("saddle_weight");
    o.probes = p.integer("probes");
    o.lanczos_steps = p.integer("lanczos_steps");
    o.every = p.integer("every");
    return std::make_shared<EnergyShaping>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Optimization, make_manifest)
