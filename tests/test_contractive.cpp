// The `contractive` optimization plugin loaded through the registry: spectral normalisation
// (bound, gradient through sigma), damping, and the Lipschitz probe at equilibria.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "mhd/optimization.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

using Overrides = std::map<std::string, mhd::ParamValue>;

const mhd::Manifest& manifest() {
  auto& reg = mhd::PluginRegistry::global();
  reg.load_file(MHD_PLUGIN_CONTRACTIVE, mhd::PluginKind::Optimization);
  return *reg.require(mhd::PluginKind::Optimization, "contractive").manifest;
}

std::shared_ptr<mhd::Optimization> make_contractive(const Overrides& overrides = {}) {
  mhd::Params params = mhd::Params::defaults(manifest().params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return mhd::PluginRegistry::global().make<mhd::Optimization>("contractive", params);
}

double spectral_norm(const at::Tensor& w) { return at::linalg_svdvals(w.detach()).max().item<double>(); }

class Contractive : public ::testing::Test {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

TEST_F(Contractive, DefaultsValidateAgainstTheSchema) {
  const mhd::Manifest& m = manifest();
  EXPECT_EQ(m.kind, mhd::PluginKind::Optimization);
  EXPECT_EQ(m.name, "contractive");
  ASSERT_TRUE(m.make_optimization);
  for (const auto& spec : m.params) {
    EXPECT_FALSE(mhd::check_param_value(spec, spec.default_value).has_value()) << spec.name;
    EXPECT_FALSE(spec.doc.empty()) << spec.name;
  }
}

TEST_F(Contractive, BoundsTheSpectralNormOfALargeWeight) {
  auto opt = make_contractive({{"factor", 0.9}});
  const at::Tensor w = 3.0 * at::randn({32, 24});  // sigma ~ 30
  const at::Tensor w_sn = opt->reparametrize_weight("W_out", w);

  EXPECT_LE(spectral_norm(w_sn), 0.9 + 1e-3);
  EXPECT_GE(spectral_norm(w_sn), 0.9 - 1e-3);  // active bound: scaled to the factor, not below
  const auto metrics = opt->metrics();
  ASSERT_TRUE(metrics.count("spectral_sigma_W_out"));
  EXPECT_NEAR(metrics.at("spectral_sigma_W_out"), spectral_norm(w), 1e-3 * spectral_norm(w));
}

// Training: every optimizer step changes the weight in place; one power step per change keeps the
// bound while the weight drifts (here by 3% of its scale per step, far more than a real step).
TEST_F(Contractive, TracksAWeightThatChangesInPlace) {
  auto opt = make_contractive({{"factor", 0.9}});
  const at::Tensor w = 3.0 * at::randn({32, 24});
  for (int step = 0; step < 30; ++step) {
    w.add_(0.1 * at::randn({32, 24}));
    const at::Tensor w_sn = opt->reparametrize_weight("W_out", w);
    EXPECT_LE(spectral_norm(w_sn), 0.9 + 1e-3) << "step " << step;
  }
}

// The dynamics calls reparametrize_weight at every evaluation of f: with unchanged weights the
// map must not change between the iterations of a solve.
TEST_F(Contractive, UnchangedWeightGivesTheSameMapEveryCall) {
  auto opt = make_contractive({{"factor", 0.5}});
  const at::Tensor w = at::randn({16, 16});
  const at::Tensor first = opt->reparametrize_weight("W_q", w);
  for (int call = 0; call < 5; ++call) EXPECT_TRUE(opt->reparametrize_weight("W_q", w).equal(first));
}

TEST_F(Contractive, LeavesASmallWeightUnchanged) {
  auto opt = make_contractive({{"factor", 0.9}});
  at::Tensor w = at::randn({16, 16});
  w = w * (0.5 / spectral_norm(w));
  EXPECT_TRUE(opt->reparametrize_weight("W_q", w).equal(w));
}

// The gradient flows through sigma as torch's spectral_norm's does: with u, v converged (the first
// call iterates to convergence), d(W factor / sigma(W)) matches autograd through the exact sigma.
TEST_F(Contractive, GradientFlowsThroughSigma) {
  auto opt = make_contractive({{"factor", 0.9}});
  const at::Tensor w = (2.0 * at::randn({12, 10}, at::kDouble)).requires_grad_(true);
  const at::Tensor probe = at::randn({12, 10}, at::kDouble);
  const at::Tensor ours = torch::autograd::grad({(opt->reparametrize_weight("W_g", w) * probe).sum()}, {w})[0];
  const at::Tensor exact_sigma = at::linalg_svdvals(w).max();
  const at::Tensor reference = torch::autograd::grad({(w * (0.9 / exact_sigma) * probe).sum()}, {w})[0];
  // Had sigma been detached, the d sigma term (as large as the other) would be missing entirely.
  EXPECT_TRUE(at::allclose(ours, reference, 1e-4, 1e-6)) << (ours - reference).abs().max().item<double>();
  const at::Tensor detached = torch::autograd::grad({(w * (0.9 / exact_sigma.detach()) * probe).sum()}, {w})[0];
  EXPECT_GT((detached - reference).abs().max().item<double>(), 100 * (ours - reference).abs().max().item<double>());
}

TEST_F(Contractive, DampingWrapsTheMapExactly) {
  const mhd::TensorMap f = [](const at::Tensor& z) { return 2.0 * at::tanh(z) + 0.3; };
  const at::Tensor z = at::randn({4, 8});

  const auto damped = make_contractive({{"damping", 0.25}})->wrap_dynamics(f);
  EXPECT_TRUE(damped(z).equal(z + 0.25 * (f(z) - z)));
  const auto undamped = make_contractive({{"damping", 1.0}})->wrap_dynamics(f);
  EXPECT_TRUE(undamped(z).equal(f(z)));
}

// U diag(s) V^T with random orthogonal U, V: a linear map whose spectral norm is known by construction.
at::Tensor matrix_with_singular_values(const at::Tensor& s) {
  const std::int64_t d = s.size(0);
  const at::Tensor u = std::get<0>(at::linalg_qr(at::randn({d, d})));
  const at::Tensor v = std::get<0>(at::linalg_qr(at::randn({d, d})));
  return u.matmul(at::diag(s)).matmul(v.t());
}

// z -> z W^T (each sample's Jacobian is W): the per-sample estimate must be sigma(W) within 1%.
// The probe is power iteration, a lower bound converging like (s2/s1)^(2k): with the default 10
// steps the map below (s2/s1 = 0.8) is resolved; a random Gaussian W (gap often ~0.95) needs more.
TEST_F(Contractive, LipschitzEstimateOfALinearMapIsItsSpectralNorm) {
  auto opt = make_contractive();  // default lipschitz_iterations = 10
  const at::Tensor w = matrix_with_singular_values(at::linspace(1.2, 0.1, 16).index_put_({0}, 1.5));
  const double sigma = spectral_norm(w);
  ASSERT_NEAR(sigma, 1.5, 1e-5);
  const mhd::TensorMap f = [w](const at::Tensor& z) { return z.matmul(w.t()); };

  opt->on_equilibrium(f, at::randn({6, 16}), at::Tensor());
  const auto metrics = opt->metrics();
  ASSERT_TRUE(metrics.count("lipschitz_mean") && metrics.count("lipschitz_max") && metrics.count("contractive_share"));
  EXPECT_NEAR(metrics.at("lipschitz_mean"), sigma, 0.01 * sigma);
  EXPECT_NEAR(metrics.at("lipschitz_max"), sigma, 0.01 * sigma);
  EXPECT_EQ(metrics.at("contractive_share"), 0.0);

  // metrics() reports what was seen since its last call.
  EXPECT_FALSE(opt->metrics().count("lipschitz_mean"));
}

TEST_F(Contractive, LipschitzEstimateOfARandomMapWithMoreIterations) {
  auto opt = make_contractive({{"lipschitz_iterations", std::int64_t{100}}});
  const at::Tensor w = at::randn({16, 16});
  const double sigma = spectral_norm(w);
  opt->on_equilibrium([w](const at::Tensor& z) { return z.matmul(w.t()); }, at::randn({6, 16}), at::Tensor());
  const auto metrics = opt->metrics();
  EXPECT_NEAR(metrics.at("lipschitz_mean"), sigma, 0.01 * sigma);
  EXPECT_LE(metrics.at("lipschitz_max"), sigma * (1 + 1e-5));  // power iteration never overshoots
}

TEST_F(Contractive, ContractiveShareCountsSamplesBelowOne) {
  auto opt = make_contractive({{"lipschitz_iterations", std::int64_t{30}}});
  at::Tensor w = at::randn({8, 8});
  w = w / spectral_norm(w);
  // Sample b's Jacobian is s_b W: L = 0.5, 0.8, 1.5, 2.0 -> half of them contractive.
  const at::Tensor s = at::tensor({0.5f, 0.8f, 1.5f, 2.0f}).unsqueeze(1);
  const mhd::TensorMap f = [w, s](const at::Tensor& z) { return s * z.matmul(w.t()); };
  opt->on_equilibrium(f, at::randn({4, 8}), at::Tensor());
  const auto metrics = opt->metrics();
  EXPECT_DOUBLE_EQ(metrics.at("contractive_share"), 0.5);
  EXPECT_NEAR(metrics.at("lipschitz_max"), 2.0, 0.02);
  EXPECT_NEAR(metrics.at("lipschitz_mean"), (0.5 + 0.8 + 1.5 + 2.0) / 4, 0.02);
}

}  // namespace
