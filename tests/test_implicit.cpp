// Implicit differentiation through an equilibrium: gradients equal finite differences (float64)
// and unrolled backprop, with either backward solver.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "core/implicit.h"
#include "mhd/kits/jacobian.h"
#include "plugin_host/registry.h"

namespace {

std::shared_ptr<mhd::Solver> load_solver(const std::string& path, const std::string& name) {
  auto& registry = mhd::PluginRegistry::global();
  const auto& plugin = registry.load_file(path, mhd::PluginKind::Solver);
  return registry.make<mhd::Solver>(name, mhd::Params::defaults(plugin.manifest->params));
}

// A small contractive DEQ layer: f(z) = tanh(W z + U x + b), ||W|| = 0.6 so a unique fixed point exists.
struct ToyLayer {
  at::Tensor W, U, b, x;  // W: [D, D], U: [D, D], b: [D], x: [B, D]
  ToyLayer(std::int64_t B, std::int64_t D) {
    at::manual_seed(3);
    auto opts = at::TensorOptions().dtype(at::kDouble);
    W = at::randn({D, D}, opts);
    W = (0.6 * W / at::linalg_matrix_norm(W, 2)).detach().requires_grad_(true);
    U = (at::randn({D, D}, opts) / std::sqrt(double(D))).requires_grad_(true);
    b = (0.1 * at::randn({D}, opts)).requires_grad_(true);
    x = at::randn({B, D}, opts).requires_grad_(true);
  }
  mhd::TensorMap map() const {
    return [this](const at::Tensor& z) { return at::tanh(at::matmul(z, W.t()) + at::matmul(x, U.t()) + b); };
  }
};

// L(z*) = sum(c * z*^2): a non-linear read-out so dL/dz* depends on z*.
at::Tensor loss_of(const at::Tensor& z, const at::Tensor& c) { return (c * z * z).sum(); }

at::Tensor solve_forward(const mhd::TensorMap& f, mhd::Solver& solver, const at::Tensor& z0) {
  at::NoGradGuard no_grad;
  auto result = solver.solve({f, {}, {}}, z0, {500, 1e-13});
  EXPECT_TRUE(result.info.converged);
  return result.z;
}

double loss_at(ToyLayer& layer, mhd::Solver& solver, const at::Tensor& c) {
  auto z0 = at::zeros_like(layer.x);
  return loss_of(solve_forward(layer.map(), solver, z0), c).item<double>();
}

class ImplicitGradient : public ::testing::TestWithParam<std::string> {};

TEST_P(ImplicitGradient, MatchesFiniteDifferencesInDouble) {
  auto solver = GetParam() == "anderson" ? load_solver(MHD_PLUGIN_ANDERSON, "anderson")
                                         : load_solver(MHD_PLUGIN_FIXED_POINT, "fixed_point");
  ToyLayer layer(3, 6);
  auto c = at::randn({3, 6}, at::kDouble);
  auto f = layer.map();
  auto z_star = solve_forward(f, *solver, at::zeros_like(layer.x));
  auto info = std::make_shared<mhd::SolverInfo>();
  auto z = mhd::implicit_equilibrium(f, z_star, *solver, {500, 1e-13}, info);
  loss_of(z, c).backward();
  EXPECT_TRUE(info->converged) << "the backward solve must reach its tolerance";

  // Central differences on every entry of W and x.
  const double eps = 1e-6;
  for (at::Tensor* param : {&layer.W, &layer.x}) {
    auto analytic = param->grad().clone();
    auto flat = param->detach().view({-1});
    auto numeric = at::zeros_like(flat);
    for (std::int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + eps;
      const double up = loss_at(layer, *solver, c);
      flat[i] = orig - eps;
      const double down = loss_at(layer, *solver, c);
      flat[i] = orig;
      numeric[i] = (up - down) / (2 * eps);
    }
    const double rel = (analytic.view({-1}) - numeric).norm().item<double>() / numeric.norm().item<double>();
    EXPECT_LT(rel, 1e-4) << "relative error of the implicit gradient against finite differences";
  }
}

TEST_P(ImplicitGradient, MatchesUnrolledBackprop) {
  auto solver = GetParam() == "anderson" ? load_solver(MHD_PLUGIN_ANDERSON, "anderson")
                                         : load_solver(MHD_PLUGIN_FIXED_POINT, "fixed_point");
  ToyLayer layer(4, 8);
  auto c = at::randn({4, 8}, at::kDouble);
  auto f = layer.map();

  auto z_star = solve_forward(f, *solver, at::zeros_like(layer.x));
  loss_of(mhd::implicit_equilibrium(f, z_star, *solver, {500, 1e-12}), c).backward();
  auto implicit_W = layer.W.grad().clone();
  auto implicit_b = layer.b.grad().clone();
  layer.W.mutable_grad().zero_();
  layer.b.mutable_grad().zero_();

  auto unrolled = mhd::unrolled_fixed_point(f, at::zeros_like(layer.x), {400, 1e-14});
  loss_of(unrolled.z, c).backward();
  EXPECT_LT((implicit_W - layer.W.grad()).norm().item<double>() / layer.W.grad().norm().item<double>(), 1e-6);
  EXPECT_LT((implicit_b - layer.b.grad()).norm().item<double>() / layer.b.grad().norm().item<double>(), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(BackwardSolvers, ImplicitGradient, ::testing::Values("fixed_point", "anderson"));

TEST(JacobianProbes, HutchinsonEstimatesTheFrobeniusNorm) {
  at::manual_seed(1);
  auto W = at::randn({6, 6}, at::kDouble);
  mhd::TensorMap f = [W](const at::Tensor& z) { return at::matmul(z, W.t()); };
  // Each row is one probe of the same Jacobian W: the mean over 20000 rows is within 3% of ||W||_F^2.
  auto estimate = mhd::hutchinson_jacobian_frobenius(f, at::zeros({20000, 6}, at::kDouble)).mean().item<double>();
  const double exact = W.pow(2).sum().item<double>();
  EXPECT_NEAR(estimate, exact, 0.03 * exact);
}

TEST(JacobianProbes, SpectralNormByPowerIteration) {
  at::manual_seed(2);
  auto W = at::randn({8, 8}, at::kDouble);
  mhd::TensorMap f = [W](const at::Tensor& z) { return at::tanh(at::matmul(z, W.t())); };
  // At z = 0, J = W (tanh'(0) = 1).
  auto sigma = mhd::jacobian_spectral_norm(f, at::zeros({2, 8}, at::kDouble), 200);
  const double exact = at::linalg_svdvals(W).max().item<double>();
  EXPECT_NEAR(sigma[0].item<double>(), exact, 1e-6 * exact);
  EXPECT_NEAR(sigma[1].item<double>(), exact, 1e-6 * exact);
}

TEST(ImplicitGradient, ForwardValueIsTheEquilibrium) {
  auto solver = load_solver(MHD_PLUGIN_ANDERSON, "anderson");
  ToyLayer layer(2, 5);
  auto f = layer.map();
  auto z_star = solve_forward(f, *solver, at::zeros_like(layer.x));
  auto z = mhd::implicit_equilibrium(f, z_star, *solver, {100, 1e-10});
  EXPECT_LT((z - z_star).abs().max().item<double>(), 1e-10);
  EXPECT_TRUE(z.requires_grad());
}

TEST(ImplicitGradient, NoGraphWhenGradientsAreOff) {
  auto solver = load_solver(MHD_PLUGIN_FIXED_POINT, "fixed_point");
  ToyLayer layer(2, 5);
  at::NoGradGuard no_grad;
  auto z = mhd::implicit_equilibrium(layer.map(), at::zeros_like(layer.x), *solver, {10, 1e-6});
  EXPECT_FALSE(z.requires_grad());
}

}  // namespace
