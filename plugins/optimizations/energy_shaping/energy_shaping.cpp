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
// The gradient reaches the parameters through E with z* held fixed (detached): the shape of the
// energy around the equilibrium is penalised, not the equilibrium's own motion. It is the gradient
// of the estimate itself, the change of the Krylov space with the parameters included.
//
// Memory. Every product p_j = H q_j differentiated as a graph (create_graph) is a double-backward
// graph through the whole dynamics (with the fused Mamba scan, a per-timestep reference recomputed
// under it); keeping all probes x lanczos_steps of them in the returned term until the trainer's
// loss.backward() made the term hold them all at once, beside the step's own graph (7.8 GB on the
// ablation's small model, 19x an L-BFGS step). So the term is differentiated here, one product at a
// time, and returned as a surrogate that holds no such graph:
//   1. Forward: p_j = H q_j without a graph (a backward through dE/dz's graph, freed at once);
//      the Krylov basis, T, the Ritz values and the statistics are built on a small graph whose
//      only connection to H is a node per product (HessianProduct below).
//   2. Backward over that small graph. A product's node receives a_j = d term / d p_j and, with
//      q_j held fixed, builds H q_j once more with a graph, takes s_j = a_j . H q_j and
//      differentiates it with respect to q_j (= H^T a_j, passed on down the small graph) and to
//      the parameters (d term / d theta = sum_j d s_j / d theta: the chain rule, q_j's own
//      dependence on theta flowing through the first part), then drops that graph.
//   3. The term returned is value + sum_theta ((theta - sg(theta)) . g_theta): its value is the
//      estimate, its gradient the one accumulated in 2, and its graph one multiply per parameter.
// Peak memory is then dE/dz's graph plus one product's graph (a small multiple of a plain step),
// for 3 products per Krylov step instead of 1 (about 1.5x the time).
// Metrics are means over every objective_term call since the last metrics() call.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>

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

// The leaves (parameters) t's graph reaches, except `skip`: what the term's gradient is taken for.
std::vector<at::Tensor> leaves_of(const at::Tensor& t, const at::Tensor& skip) {
  std::vector<at::Tensor> out;
  if (!t.grad_fn()) return out;
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack{t.grad_fn().get()};
  while (!stack.empty()) {
    torch::autograd::Node* node = stack.back();
    stack.pop_back();
    if (!seen.insert(node).second) continue;
    if (const auto* acc = dynamic_cast<const torch::autograd::AccumulateGrad*>(node)) {
      if (!acc->variable.is_same(skip)) out.push_back(acc->variable);
      continue;
    }
    for (const auto& edge : node->next_edges())
      if (edge.function) stack.push_back(edge.function.get());
  }
  return out;
}

// The Hessian of sum_b E_b at z (a leaf with requires_grad), applied to u: [B, S]; and, for the
// backward of a product (see the top), the parameters' gradient of a_j . H q_j.
class HessianProducts {
 public:
  HessianProducts(const mhd::TensorMap& energy, const at::Tensor& z, bool trains) : z_(z) {
    const at::Tensor e = energy(z_);
    if (!e.defined() || e.dim() != 1 || e.size(0) != z.size(0))
      throw mhd::Error("energy_shaping: the energy must map z [B, S] to [B]");
    if (!e.requires_grad()) return;  // E does not depend on z: H = 0
    grad_ = torch::autograd::grad({e.sum()}, {z_}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];  // [B, S]
    if (trains && grad_.requires_grad()) {
      parameters_ = leaves_of(grad_, z_);
      gradients_.resize(parameters_.size());
    }
  }
  bool curved() const { return grad_.defined() && grad_.requires_grad(); }
  bool trains() const { return !parameters_.empty(); }

  // H u without a graph: [B, S].
  at::Tensor operator()(const at::Tensor& u) const {
    if (!curved()) return at::zeros_like(u);  // E is affine in z: H = 0
    at::AutoGradMode enable(true);
    const auto hu = torch::autograd::grad({rowdot(grad_, u.detach()).sum()}, {z_}, {}, /*retain_graph=*/true,
                                          /*create_graph=*/false, /*allow_unused=*/true)[0];
    return hu.defined() ? hu.detach() : at::zeros_like(u);
  }

  // d (a . H q) / dq = H^T a: [B, S]; adds d (a . H q) / d theta to the parameters' gradients. One
  // product's graph, dropped on return.
  at::Tensor backward(const at::Tensor& q, const at::Tensor& a) {
    if (!curved() || !a.defined()) return at::zeros_like(q);
    at::AutoGradMode enable(true);
    const at::Tensor qq = q.detach().requires_grad_(true);
    const at::Tensor hq = torch::autograd::grad({rowdot(grad_, qq).sum()}, {z_}, {}, /*retain_graph=*/true,
                                                /*create_graph=*/true, /*allow_unused=*/true)[0];
    if (!hq.defined() || !hq.requires_grad()) return at::zeros_like(q);
    std::vector<at::Tensor> inputs{qq};
    inputs.insert(inputs.end(), parameters_.begin(), parameters_.end());
    const auto g = torch::autograd::grad({rowdot(hq, a.detach()).sum()}, inputs, {}, /*retain_graph=*/true,
                                         /*create_graph=*/false, /*allow_unused=*/true);
    for (std::size_t i = 0; i < parameters_.size(); ++i) {
      const at::Tensor& gi = g[i + 1];
      if (!gi.defined()) continue;
      gradients_[i] = gradients_[i].defined() ? gradients_[i] + gi : gi;
    }
    return g[0].defined() ? g[0] : at::zeros_like(q);
  }

  // value + sum_theta (theta - sg(theta)) . g_theta: the value, with the accumulated gradient.
  at::Tensor surrogate(const at::Tensor& value) const {
    at::Tensor out = value.detach();
    for (std::size_t i = 0; i < parameters_.size(); ++i)
      if (gradients_[i].defined()) out = out + ((parameters_[i] - parameters_[i].detach()) * gradients_[i]).sum();
    return out;
  }

 private:
  at::Tensor z_, grad_;
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> gradients_;  // d term / d parameter, filled by backward()
};

// p = H q as a node of the small graph: the value without a graph, the backward as above.
class HessianProduct : public torch::autograd::Function<HessianProduct> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q, HessianProducts* hvp) {
    ctx->saved_data["hvp"] = reinterpret_cast<std::int64_t>(hvp);
    ctx->save_for_backward({q});
    return (*hvp)(q);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                  torch::autograd::variable_list grads) {
    auto* hvp = reinterpret_cast<HessianProducts*>(ctx->saved_data["hvp"].toInt());
    return {hvp->backward(ctx->get_saved_variables()[0], grads[0]), at::Tensor()};
  }
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

// With `graph` the products are HessianProduct nodes of a small graph from q_1 (grad mode on);
// otherwise plain values.
ProbeStats probe(HessianProducts& hvp, const at::Tensor& z, double target, std::int64_t steps, bool graph) {
  at::Tensor v = at::randint(0, 2, z.sizes(), z.options()).mul_(2).sub_(1);  // Rademacher: [B, S]
  if (graph) v.requires_grad_(true);  // the small graph's input (its gradient is not used)
  auto product = [&](const at::Tensor& q) { return graph ? HessianProduct::apply(q, &hvp) : hvp(q); };
  std::vector<at::Tensor> basis{v / std::sqrt(static_cast<double>(z.size(1)))};   // q_1 = v / ||v||
  std::vector<at::Tensor> products{product(basis[0])};                             // H q_1
  ProbeStats s;
  s.rayleigh = rowdot(basis[0], products[0]);
  s.square = products[0].pow(2).sum(1);
  s.deviation = (products[0] - target * basis[0]).pow(2).sum(1);
  for (std::int64_t j = 1; j < std::min<std::int64_t>(steps, z.size(1)); ++j) {
    const at::Tensor w = orthogonalised(products.back(), basis);
    basis.push_back(w / w.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12));
    products.push_back(product(basis.back()));
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
    at::AutoGradMode enable(true);
    const at::Tensor z = z_star.detach().requires_grad_(true);  // [B, S]
    HessianProducts hvp(energy, z, trains);
    const bool graph = hvp.trains();  // the small graph of the products (see the top)
    std::vector<ProbeStats> stats;
    for (std::int64_t p = 0; p < o_.probes; ++p)
      stats.push_back(probe(hvp, z, o_.target_curvature, o_.lanczos_steps, graph));
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
    if (!graph) return term.detach();
    // Step 2 (the top): the small graph's backward runs each product's backward in turn.
    torch::autograd::backward({term});
    return hvp.surrogate(term);
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
