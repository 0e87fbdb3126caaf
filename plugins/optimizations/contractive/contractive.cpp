// Optimization plugin `contractive`: keeps the DEQ dynamics contractive, so that the fixed point
// exists, is unique, and plain iteration converges (and the original design's energy-descent hypothesis has a
// chance to hold).
//
// 1. Spectral normalisation of every linear map of the dynamics (reparametrize_weight):
//        W_sn = W * min(1, factor / sigma(W))
//    A bound, not a rescaling: a map already within `factor` is used unchanged (so the constraint
//    costs no capacity where it is not needed); a larger one is scaled to norm exactly `factor`.
//    sigma(W) is estimated as torch's spectral_norm does: power iteration with a persistent pair
//    (u, v) per weight name, then sigma = u^T W v with u, v held constant, so the gradient flows
//    through sigma (d sigma/dW = u v^T at convergence).
//    The dynamics calls this at every evaluation of f (every solver iteration), so u, v are refined
//    only when the weight itself changed (a new tensor, or an in-place update such as an optimizer
//    step, seen through its version counter): `power_iterations` steps per change, and at the first
//    call power iteration to convergence. Within one solve the weights are fixed, so the map the
//    solver iterates is exactly the same at every iteration — a solver's residuals would otherwise
//    measure a moving target.
// 2. Damping of the map the solvers see (wrap_dynamics): f_a(z) = z + alpha (f(z) - z). If f is
//    L-Lipschitz, f_a is (1 - alpha + alpha L)-Lipschitz and has the same fixed points.
// 3. A measurement (on_equilibrium): the per-sample Lipschitz constant ||J_f(z*)||_2 of the map that
//    was solved, reported by metrics() as its mean, max and the share of samples with L < 1.
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "mhd/optimization.h"
#include "mhd/plugin.h"

namespace {

// The first estimate of a weight's sigma starts from a random u and runs power iteration until sigma
// changes by less than ten rounding units of the weight's dtype per step (at most kMaxWarmupSteps
// steps); later weight changes are small (optimizer steps) and are tracked with power_iterations
// steps each.
constexpr std::int64_t kMaxWarmupSteps = 500;

double warmup_tolerance(at::ScalarType dtype) {
  return 10.0 * (dtype == at::kDouble ? std::numeric_limits<double>::epsilon()
                                      : static_cast<double>(std::numeric_limits<float>::epsilon()));
}

struct ContractiveOptions {
  double factor = 0.9;
  double damping = 0.5;
  std::int64_t power_iterations = 1;
  std::int64_t lipschitz_iterations = 10;
};

at::Tensor normalized(const at::Tensor& v) { return v / (v.norm() + 1e-12); }

// A weak reference to a weight's TensorImpl: it never keeps the weight (or an autograd graph hanging
// off a non-leaf weight) alive, but it does keep the address from being reused by a new tensor, so
// "same impl" really means the same tensor.
using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

// The persistent power-iteration state of one named weight, and which weight it was computed for.
struct PowerState {
  at::Tensor u;      // left singular vector estimate: [out]
  at::Tensor v;      // right singular vector estimate: [in]
  at::Tensor sigma;  // latest estimate of the un-normalised weight's sigma: scalar, detached
  std::optional<WeakImpl> seen;  // the weight, its data and in-place version when last refined
  const void* data = nullptr;
  std::int64_t version = -1;
};

bool same_weight(const PowerState& s, const at::Tensor& weight) {
  return s.seen && !s.seen->expired() && s.seen->_unsafe_get_target() == weight.unsafeGetTensorImpl() &&
         s.data == weight.data_ptr() && s.version == weight._version();
}

void remember_weight(PowerState& s, const at::Tensor& weight) {
  s.seen.emplace(weight.getIntrusivePtr());
  s.data = weight.data_ptr();
  s.version = weight._version();
}

// One power step on W W^T: v <- W^T u / ||.||, u <- W v / ||.||; returns ||W v|| (the new estimate
// of sigma) as a scalar tensor. w: [out, in], detached.
at::Tensor power_step(PowerState& s, const at::Tensor& w) {
  s.v = normalized(at::mv(w.t(), s.u));
  const at::Tensor wv = at::mv(w, s.v);
  const at::Tensor norm = wv.norm();
  s.u = wv / (norm + 1e-12);
  return norm;
}

class ContractiveOptimization final : public mhd::Optimization {
 public:
  explicit ContractiveOptimization(ContractiveOptions o) : opt_(o) {}

  at::Tensor reparametrize_weight(const std::string& name, const at::Tensor& weight) override {
    if (weight.dim() < 1) throw mhd::Error("contractive: weight '" + name + "' must have at least one dimension");
    // Weights of any rank are normalised as [out, in...] flattened to [out, rest], like torch's spectral_norm.
    const at::Tensor w = weight.reshape({weight.size(0), -1});  // [out, in]
    PowerState& state = power_state(name, w);
    if (!same_weight(state, weight)) {
      refine(state, w);
      remember_weight(state, weight);
    }
    // sigma = u^T W v with u, v constants: differentiable in W.
    const at::Tensor sigma = at::dot(state.u, at::mv(w, state.v));
    state.sigma = sigma.detach();
    // min(1, factor / sigma); clamp_max passes no gradient where the bound is inactive.
    const at::Tensor scale = at::clamp_max(opt_.factor / sigma, 1.0);
    return weight * scale;
  }

  mhd::TensorMap wrap_dynamics(mhd::TensorMap f) override {
    if (opt_.damping == 1.0) return f;  // z + 1 (f - z) == f; keep f exact
    const double alpha = opt_.damping;
    return [f = std::move(f), alpha](const at::Tensor& z) { return z + alpha * (f(z) - z); };
  }

  void on_equilibrium(const mhd::TensorMap& f, const at::Tensor& z_star, const at::Tensor& /*key*/) override {
    const at::Tensor lipschitz = mhd::jacobian_spectral_norm(f, z_star, opt_.lipschitz_iterations);  // [B]
    lipschitz_.push_back(lipschitz.to(at::kCPU, at::kDouble));
  }

  std::map<std::string, double> metrics() override {
    std::map<std::string, double> out;
    for (const auto& [name, state] : states_) {
      if (state.sigma.defined()) out["spectral_sigma_" + name] = state.sigma.item<double>();
    }
    if (!lipschitz_.empty()) {
      const at::Tensor l = at::cat(lipschitz_);  // every sample seen since the last call
      out["lipschitz_mean"] = l.mean().item<double>();
      out["lipschitz_max"] = l.max().item<double>();
      out["contractive_share"] = l.lt(1.0).to(at::kDouble).mean().item<double>();
      lipschitz_.clear();
    }
    return out;
  }

 private:
  // The state of `name`, (re)started from a random u when the weight is new or changed shape/device.
  static PowerState& fresh_if_needed(PowerState& s, const at::Tensor& w) {
    const bool fresh = !s.u.defined() || s.u.size(0) != w.size(0) || (s.v.defined() && s.v.size(0) != w.size(1)) ||
                       s.u.device() != w.device() || s.u.scalar_type() != w.scalar_type();
    if (fresh) {
      s = PowerState();
      s.u = normalized(at::randn({w.size(0)}, w.options().requires_grad(false)));
    }
    return s;
  }

  PowerState& power_state(const std::string& name, const at::Tensor& w) { return fresh_if_needed(states_[name], w); }

  // Power iteration outside autograd: to convergence for a new state, power_iterations steps after.
  void refine(PowerState& s, const at::Tensor& w) const {
    at::NoGradGuard no_grad;
    const at::Tensor wd = w.detach();
    if (s.v.defined()) {
      for (std::int64_t i = 0; i < opt_.power_iterations; ++i) power_step(s, wd);
      return;
    }
    const double tolerance = warmup_tolerance(wd.scalar_type());
    double previous = 0.0;
    for (std::int64_t i = 0; i < kMaxWarmupSteps; ++i) {
      const double sigma = power_step(s, wd).item<double>();
      if (i >= opt_.power_iterations && std::abs(sigma - previous) <= tolerance * sigma) break;
      previous = sigma;
    }
  }

  ContractiveOptions opt_;
  std::map<std::string, PowerState> states_;
  std::vector<at::Tensor> lipschitz_;  // [B] per on_equilibrium call, float64 on CPU
};

mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Optimization;
  m.name = "contractive";
  m.version = "1.0.0";
  m.description = "Contractive dynamics: spectral-norm bound on the linear maps, damping, Lipschitz probe";
  m.params = {
      mhd::float_param("factor", 0.9,
                       "bound on each linear map's spectral norm, in (0, 10]: W * min(1, factor/sigma(W))", 1e-6,
                       10.0),
      mhd::float_param("damping", 0.5, "alpha in (0, 1] of the damped map z + alpha (f(z) - z); 1 disables damping",
                       1e-6, 1.0),
      mhd::int_param("power_iterations", 1,
                     "power-iteration steps tracking sigma(W) each time the weight changes (the first use "
                     "iterates to convergence)",
                     1, 100),
      mhd::int_param("lipschitz_iterations", 10,
                     "power-iteration steps of the per-sample ||J_f(z*)||_2 estimate at each equilibrium", 1, 1000),
  };
  m.make_optimization = [](const mhd::Params& p) -> std::shared_ptr<mhd::Optimization> {
    ContractiveOptions o;
    o.factor = p.real("factor");
    o.damping = p.real("damping");
    o.power_iterations = p.integer("power_iterations");
    o.lipschitz_iterations = p.integer("lipschitz_iterations");
    return std::make_shared<ContractiveOptimization>(o);
  };
  return m;
}

}  // namespace

MHD_PLUGIN(mhd::PluginKind::Optimization, make_manifest)
