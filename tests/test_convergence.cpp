// The convergence measurements (convergence.h) on hand-built dynamics with known answers, and the
// `convergence` probe on a trained tiny model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <unistd.h>

#include <ATen/ATen.h>

#include "probes/convergence.h"
#include "run/pipeline.h"
#include "probes/probe.h"
#include "results/results.h"
#include "study/study.h"
#include "test_plugins_loaded.h"
#include "tiny_study.h"

namespace {

constexpr std::int64_t B = 6, D = 5;

// f(z) = scale Q z + c with Q orthogonal: ||J||_2 = scale exactly, every distance scales by it.
mhd::TensorMap scaled_rotation(double scale) {
  at::manual_seed(3);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({D, D}, at::kDouble)));
  const at::Tensor c = at::randn({D}, at::kDouble);
  return [=](const at::Tensor& z) { return scale * at::matmul(z, q.t()) + c; };
}

// E(z) = 1/2 z^T A z with A = diag(1..D)/D (convex); gradient A z.
at::Tensor curvature() { return at::arange(1, D + 1, at::kDouble) / static_cast<double>(D); }
mhd::TensorMap quadratic_energy() {
  return [](const at::Tensor& z) { return 0.5 * (z * z * curvature()).sum(1); };
}

at::Tensor start() {
  at::manual_seed(5);
  return at::randn({B, D}, at::kDouble);
}

TEST(Convergence, ContractiveMap) {
  const double L = 0.5;
  const auto f = scaled_rotation(L);
  mhd::ConvergenceOptions o;
  o.iterations = 10;
  o.return_iterations = 10;
  // z* of the affine map: iterate far enough that it is a fixed point to double precision.
  at::Tensor z_star = start();
  for (int i = 0; i < 80; ++i) z_star = f(z_star);
  const auto m = mhd::measure_convergence(f, quadratic_energy(), start(), z_star, o);
  EXPECT_TRUE(at::allclose(m.lipschitz, at::full({B}, L, at::kDouble), 1e-6, 1e-8)) << m.lipschitz;
  EXPECT_TRUE((m.lipschitz < 1.0).all().item<bool>()) << "contraction share 1";
  // Every distance halves: the Lyapunov rate is log L for any direction.
  EXPECT_TRUE(at::allclose(m.lyapunov_rate, at::full({B}, std::log(L), at::kDouble), 1e-6, 1e-6)) << m.lyapunov_rate;
  // The perturbation shrinks as L^t and returns; z* does not drift.
  EXPECT_NEAR(m.return_ratio[0][10].item<double>(), std::pow(L, 10), 1e-9);
  EXPECT_TRUE(m.returned.all().item<bool>());
  EXPECT_LT(m.drift.max().item<double>(), 1e-9);
  EXPECT_LT(m.residual.max().item<double>(), 1e-9);
  EXPECT_EQ(m.energy.sizes(), (at::IntArrayRef{B, 11}));
}

TEST(Convergence, ExpansiveMap) {
  const double L = 2.0;
  const auto f = scaled_rotation(L);
  mhd::ConvergenceOptions o;
  o.iterations = 8;
  o.return_iterations = 8;
  // The affine map's fixed point solves z = 2 Q z + c; it exists but repels.
  at::manual_seed(3);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({D, D}, at::kDouble)));
  const at::Tensor c = at::randn({D}, at::kDouble);
  const at::Tensor fixed = at::linalg_solve(at::eye(D, at::kDouble) - L * q, c.unsqueeze(1)).squeeze(1);
  const at::Tensor z_star = fixed.unsqueeze(0).expand({B, D}).contiguous();
  const auto m = mhd::measure_convergence(f, quadratic_energy(), start(), z_star, o);
  EXPECT_TRUE(at::allclose(m.lipschitz, at::full({B}, L, at::kDouble), 1e-6, 1e-8));
  EXPECT_FALSE((m.lipschitz < 1.0).any().item<bool>()) << "contraction share 0";
  EXPECT_TRUE(at::allclose(m.lyapunov_rate, at::full({B}, std::log(L), at::kDouble), 1e-6, 1e-6)) << m.lyapunov_rate;
  EXPECT_NEAR(m.return_ratio[0][8].item<double>(), std::pow(L, 8), 1e-6);
  EXPECT_FALSE(m.returned.any().item<bool>());
}

TEST(Convergence, EnergyDescentOfGradientMaps) {
  mhd::ConvergenceOptions o;
  o.iterations = 20;
  o.power_iterations = 200;  // singular values 0.9 and 0.8 are close: power iteration needs many steps
  const auto energy = quadratic_energy();
  // Gradient descent z - eta A z on a convex quadratic with eta < 2 / max A: E decreases every step.
  const mhd::TensorMap descent = [](const at::Tensor& z) { return z - 0.5 * z * curvature(); };
  const auto down = mhd::measure_convergence(descent, energy, start(), at::zeros({B, D}, at::kDouble), o);
  EXPECT_EQ(down.energy_increase.sum().item<std::int64_t>(), 0) << down.energy;
  // A = diag: the Jacobian is I - eta A, so L = max |1 - 0.5 a| = 1 - 0.5/D.
  EXPECT_NEAR(down.lipschitz[0].item<double>(), 1.0 - 0.5 / D, 1e-6);
  // Gradient ascent z + eta A z: E increases every step.
  const mhd::TensorMap ascent = [](const at::Tensor& z) { return z + 0.5 * z * curvature(); };
  const auto up = mhd::measure_convergence(ascent, energy, start(), at::zeros({B, D}, at::kDouble), o);
  EXPECT_EQ(up.energy_increase.sum().item<std::int64_t>(), B * 20) << up.energy;
  // Without an energy there is nothing to check, and no error.
  const auto none = mhd::measure_convergence(descent, nullptr, start(), at::zeros({B, D}, at::kDouble), o);
  EXPECT_FALSE(none.energy.defined());
}

TEST(ConvergenceProbe, RunsOnATrainedModel) {
  auto& registry = registry_with_all_plugins();
  const auto dir = std::filesystem::temp_directory_path() / ("mhd_convergence_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const std::string out = (dir / "c.sqlite").string();
  const auto study = mhd::parse_study(tiny_study("convergence_probe", out, R"([probes.convergence]
batches = 2
iterations = 6
return_iterations = 6
power_iterations = 5
curves = 2
)"),
                                      "convergence.toml", registry);
  std::ostringstream log;
  const auto summary = mhd::run_study(study, registry, {}, log);
  ASSERT_EQ(summary.done, 1) << log.str();
  auto db = mhd::ResultsDb::open(out, true);
  const auto trial = db->trials(summary.study_id).at(0).id;
  const auto metrics = db->final_metrics(trial);
  EXPECT_EQ(metrics.at("convergence_samples"), 8.0) << "2 batches of 4";
  for (const char* name : {"convergence_contraction_share", "convergence_energy_violation_rate",
                           "convergence_energy_violating_share", "convergence_return_share"}) {
    EXPECT_GE(metrics.at(name), 0.0) << name;
    EXPECT_LE(metrics.at(name), 1.0) << name;
  }
  EXPECT_GT(metrics.at("convergence_lipschitz_mean"), 0.0);
  EXPECT_GE(metrics.at("convergence_lipschitz_max"), metrics.at("convergence_lipschitz_mean"));
  EXPECT_TRUE(std::isfinite(metrics.at("convergence_lyapunov_rate")));
  EXPECT_EQ(db->probe_points(trial, "convergence", "lipschitz").size(), 8u);
  EXPECT_EQ(db->probe_points(trial, "convergence", "energy_along_iterations").size(), 2u * 7u);
  EXPECT_EQ(db->probe_points(trial, "convergence", "lyapunov_log_distance").size(), 2u * 6u);
}

}  // namespace
