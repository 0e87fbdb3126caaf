// The solver plugins (fixed_point, anderson, neural_ode, broyden, early_exit) loaded through the registry, as the
// host loads them. Every property is asserted on every solver (value-parameterised), then the
// solver-specific ones (neural_ode and broyden have theirs in test_ode_broyden.cpp).
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "mhd/solver.h"
#include "solver_test_maps.h"

namespace {

using Overrides = std::map<std::string, mhd::ParamValue>;

const char* plugin_path(const std::string& name) {
  if (name == "anderson") return MHD_PLUGIN_ANDERSON;
  if (name == "neural_ode") return MHD_PLUGIN_NEURAL_ODE;
  if (name == "broyden") return MHD_PLUGIN_BROYDEN;
  if (name == "early_exit") return MHD_PLUGIN_EARLY_EXIT;
  if (name == "learned") return MHD_PLUGIN_LEARNED;
  return MHD_PLUGIN_FIXED_POINT;
}

const mhd::Manifest& manifest(const std::string& name) {
  auto& reg = mhd::PluginRegistry::global();
  reg.load_file(plugin_path(name), mhd::PluginKind::Solver);
  reg.load_file(MHD_PLUGIN_FIXED_POINT, mhd::PluginKind::Solver);  // early_exit's default inner solver
  return *reg.require(mhd::PluginKind::Solver, name).manifest;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides = {}) {
  mhd::Params params = mhd::Params::defaults(manifest(name).params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return mhd::PluginRegistry::global().make<mhd::Solver>(name, params);
}

using solver_test::AffineMap;
using solver_test::extra;
using solver_test::matrix_with_norm;

AffineMap contractive_affine(std::int64_t batch, std::int64_t dim, double norm, at::ScalarType dtype) {
  return {matrix_with_norm(dim, norm, dtype), at::randn({batch, dim}, at::TensorOptions().dtype(dtype))};
}

double relative_error(const at::Tensor& z, const at::Tensor& reference) {
  return ((z - reference).norm() / reference.norm()).item<double>();
}

// Evaluations of f a solve should have made, from its iterations and counters: one per iteration for
// fixed_point, anderson and early_exit; for neural_ode 1 + 6 per Dormand-Prince trial (rejected ones included);
// for broyden one per iteration plus its line search's extra trials.
std::int64_t expected_f_evals(const std::string& solver, const mhd::SolverInfo& info) {
  if (solver == "neural_ode") return 1 + 6 * static_cast<std::int64_t>(extra(info, "ode_trials"));
  if (solver == "broyden") return info.iterations + static_cast<std::int64_t>(extra(info, "broyden_line_search_evals"));
  return info.iterations;
}

void expect_consistent_info(const mhd::SolverInfo& info, const std::string& solver) {
  EXPECT_EQ(info.f_evals, expected_f_evals(solver, info));
  EXPECT_GE(info.f_evals, info.iterations);
  EXPECT_EQ(static_cast<std::int64_t>(info.abs_trace.size()), info.iterations);
  EXPECT_EQ(static_cast<std::int64_t>(info.rel_trace.size()), info.iterations);
  EXPECT_GT(info.wall_ms, 0.0);
}

class EverySolver : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

TEST_P(EverySolver, DefaultsValidateAgainstTheSchema) {
  const mhd::Manifest& m = manifest(GetParam());
  EXPECT_EQ(m.kind, mhd::PluginKind::Solver);
  EXPECT_EQ(m.name, GetParam());
  EXPECT_FALSE(m.description.empty());
  ASSERT_TRUE(m.make_solver);
  for (const auto& spec : m.params) {
    EXPECT_FALSE(mhd::check_param_value(spec, spec.default_value).has_value()) << spec.name;
    EXPECT_FALSE(spec.doc.empty()) << spec.name;
  }
}

TEST_P(EverySolver, ReachesTolOnContractiveAffineMap) {
  const AffineMap map = contractive_affine(4, 32, 0.9, at::kFloat);
  const mhd::SolveLimits limits{500, 1e-5};
  const auto result = make_solver(GetParam())->solve({map.f(), {}, {}}, at::zeros({4, 32}), limits);

  EXPECT_TRUE(result.info.converged);
  EXPECT_LT(result.info.final_rel.max().item<double>(), limits.tol);
  // ||z - z*|| <= ||f(z) - z|| / (1 - ||W||): ten times the residual at most.
  EXPECT_LT(relative_error(result.z, map.fixed_point()), 1e-3);
  EXPECT_TRUE(result.info.energy_trace.empty());
  expect_consistent_info(result.info, GetParam());
}

// The backward solve of implicit differentiation: g = J_f(z*)^T g + v, with J^T g by autograd
// (mhd::vector_jacobian_product), no energy, a tight tol, and checked against the direct solve.
TEST_P(EverySolver, SolvesTheBackwardLinearFixedPoint) {
  const std::int64_t batch = 3, dim = 16;
  const at::Tensor w = matrix_with_norm(dim, 0.9, at::kDouble);
  const at::Tensor c = at::randn({batch, dim}, at::kDouble);
  const mhd::TensorMap layer = [w, c](const at::Tensor& z) { return at::tanh(at::addmm(c, z, w.t())); };
  const at::Tensor z_star = at::randn({batch, dim}, at::kDouble);
  const at::Tensor v = at::randn({batch, dim}, at::kDouble);

  mhd::FixedPointProblem backward;
  backward.f = [&](const at::Tensor& g) { return mhd::vector_jacobian_product(layer, z_star, g) + v; };
  const mhd::SolveLimits limits{400, 1e-10};
  const auto result = make_solver(GetParam())->solve(backward, v, limits);

  // J_b = diag(1 - tanh^2(W z_b + c_b)) W;  g_b = (I - J_b^T)^{-1} v_b.   J: [B, D, D]
  const at::Tensor slope = 1 - at::tanh(at::addmm(c, z_star, w.t())).pow(2);  // [B, D]
  const at::Tensor jac = slope.unsqueeze(2) * w.unsqueeze(0);
  const at::Tensor eye = at::eye(dim, at::kDouble).expand({batch, dim, dim});
  const at::Tensor direct = at::linalg_solve(eye - jac.transpose(1, 2), v.unsqueeze(2)).squeeze(2);

  EXPECT_TRUE(result.info.converged);
  EXPECT_LT(relative_error(result.z, direct), 1e-8);
  EXPECT_TRUE(result.info.energy_trace.empty());
  expect_consistent_info(result.info, GetParam());
}

// Row b of the batch follows exactly the trajectory it would follow alone: no quantity (for Anderson:
// no mixing coefficient) is shared across samples. One easy sample (contraction 0.09), one hard (0.9).
TEST_P(EverySolver, SamplesAreSolvedIndependently) {
  const std::int64_t dim = 24;
  const at::Tensor w = matrix_with_norm(dim, 0.9, at::kDouble);
  const at::Tensor scale = at::tensor({0.1, 1.0}, at::kDouble).unsqueeze(1);  // [2, 1]
  const at::Tensor b = at::randn({2, dim}, at::kDouble);
  auto map_for = [&](std::int64_t first, std::int64_t count) -> mhd::TensorMap {
    const at::Tensor s = scale.narrow(0, first, count), bb = b.narrow(0, first, count);
    return [w, s, bb](const at::Tensor& z) { return s * z.matmul(w.t()) + bb; };
  };
  auto solver = make_solver(GetParam());
  const at::Tensor z0 = at::zeros({2, dim}, at::kDouble);

  const mhd::SolveLimits fixed_steps{12, 0.0};  // tol 0: exactly 12 iterations for everyone
  const auto both = solver->solve({map_for(0, 2), {}, {}}, z0, fixed_steps);
  const auto easy = solver->solve({map_for(0, 1), {}, {}}, z0.narrow(0, 0, 1), fixed_steps);
  const auto hard = solver->solve({map_for(1, 1), {}, {}}, z0.narrow(0, 1, 1), fixed_steps);
  EXPECT_EQ(both.info.iterations, 12);
  EXPECT_TRUE(at::allclose(both.z.narrow(0, 0, 1), easy.z, 1e-12, 1e-12));
  EXPECT_TRUE(at::allclose(both.z.narrow(0, 1, 1), hard.z, 1e-12, 1e-12));

  // To tol: the batch runs until the hard sample converges; the easy one stops moving once it has
  // converged, so it comes back exactly as when solved alone.
  const mhd::SolveLimits to_tol{500, 1e-8};
  const auto solved = solver->solve({map_for(0, 2), {}, {}}, z0, to_tol);
  const auto easy_alone = solver->solve({map_for(0, 1), {}, {}}, z0.narrow(0, 0, 1), to_tol);
  EXPECT_TRUE(solved.info.converged);
  EXPECT_GT(solved.info.iterations, easy_alone.info.iterations);
  EXPECT_LT(solved.info.final_rel[0].item<double>(), to_tol.tol);
  EXPECT_LT(solved.info.final_rel[1].item<double>(), to_tol.tol);
  EXPECT_TRUE(at::allclose(solved.z.narrow(0, 0, 1), easy_alone.z, 1e-12, 1e-12));
}

TEST_P(EverySolver, NonFiniteMapIsReportedNotLooped) {
  auto calls = std::make_shared<int>(0);
  // Row 1 turns NaN at the 4th evaluation; row 0 stays a harmless contraction.
  const mhd::TensorMap f = [calls](const at::Tensor& z) {
    at::Tensor out = 0.5 * z + 1.0;
    if (++*calls >= 4) out.select(0, 1).fill_(std::nan(""));
    return out;
  };
  const auto result = make_solver(GetParam())->solve({f, {}, {}}, at::zeros({2, 8}), {1000, 0.0});

  EXPECT_FALSE(result.info.converged);
  EXPECT_EQ(result.info.f_evals, 4);
  EXPECT_EQ(extra(result.info, "nonfinite_samples"), 1.0);
  if (GetParam() == "neural_ode") {
    // The 4th evaluation is a stage of the first step: no state was accepted, so nothing more is recorded.
    EXPECT_EQ(result.info.iterations, 1);
  } else {
    EXPECT_EQ(result.info.iterations, 4);
    EXPECT_TRUE(std::isnan(result.info.rel_trace.back()));
  }
  EXPECT_TRUE(at::isfinite(result.z).all().item<bool>());  // the last finite iterate comes back
}

// On an expanding map the iterates run away; each sample comes back at its best point, and the
// reported final residuals are those of the returned point.
TEST_P(EverySolver, ReturnsEachSamplesBestIterateWhenTheMapExpands) {
  const mhd::TensorMap f = [](const at::Tensor& z) { return 1.5 * z + 1.0; };  // fixed point -2, L = 1.5
  const at::Tensor z0 = at::tensor({-2.1, 3.0}, at::kDouble).view({2, 1});
  const auto result = make_solver(GetParam())->solve({f, {}, {}}, z0, {6, 1e-12});
  const auto r = mhd::residuals(result.z, f(result.z));
  ASSERT_TRUE(result.info.final_rel.defined());
  EXPECT_TRUE(r.rel.allclose(result.info.final_rel));
  // Nothing returned is worse than the start, whatever the last iterate was.
  EXPECT_TRUE(r.rel.le(mhd::residuals(z0, f(z0)).rel + 1e-12).all().item<bool>());
  EXPECT_LE(r.rel.max().item<double>(), *std::min_element(result.info.rel_trace.begin(), result.info.rel_trace.end()) + 1e-12);
}

TEST_P(EverySolver, RecordsEnergyEveryIterationWhenPresent) {
  const AffineMap map = contractive_affine(3, 16, 0.9, at::kFloat);
  const at::Tensor z_star = map.fixed_point();
  mhd::FixedPointProblem problem{map.f(), [z_star](const at::Tensor& z) { return 0.5 * (z - z_star).pow(2).sum(1); },
                                 {}};
  const auto result = make_solver(GetParam())->solve(problem, at::zeros({3, 16}), {200, 1e-4});
  EXPECT_TRUE(result.info.converged);
  EXPECT_EQ(static_cast<std::int64_t>(result.info.energy_trace.size()), result.info.iterations);
  EXPECT_LT(result.info.energy_trace.back(), result.info.energy_trace.front());
}

TEST_P(EverySolver, RejectsBadInputsWithClearErrors) {
  auto solver = make_solver(GetParam());
  const mhd::TensorMap identity = [](const at::Tensor& z) { return z; };
  EXPECT_THROW(solver->solve({identity, {}, {}}, at::zeros({8}), {10, 1e-3}), mhd::Error);
  EXPECT_THROW(solver->solve({identity, {}, {}}, at::zeros({2, 8}), {0, 1e-3}), mhd::Error);
  EXPECT_THROW(solver->solve({{}, {}, {}}, at::zeros({2, 8}), {10, 1e-3}), mhd::Error);
  const mhd::TensorMap wrong = [](const at::Tensor& z) { return z.narrow(1, 0, 4); };
  EXPECT_THROW(solver->solve({wrong, {}, {}}, at::zeros({2, 8}), {10, 1e-3}), mhd::Error);
}

INSTANTIATE_TEST_SUITE_P(Solvers, EverySolver, ::testing::Values("fixed_point", "anderson", "neural_ode", "broyden", "early_exit",
                                                          "learned"),
                         [](const auto& p) { return p.param; });

// ---------------------------------------------------------------- fixed_point

TEST(FixedPoint, ResidualTraceIsNonIncreasingOnContractiveMap) {
  at::manual_seed(1);
  const AffineMap map = contractive_affine(4, 32, 0.9, at::kDouble);
  const auto result = make_solver("fixed_point")->solve({map.f(), {}, {}}, at::zeros({4, 32}, at::kDouble),
                                                        {500, 1e-10});
  ASSERT_TRUE(result.info.converged);
  ASSERT_GT(result.info.abs_trace.size(), 5u);
  // ||r_{k+1}|| = ||W r_k|| <= 0.9 ||r_k|| for every sample, hence for the worst one.
  for (std::size_t k = 1; k < result.info.abs_trace.size(); ++k)
    EXPECT_LE(result.info.abs_trace[k], 0.9 * result.info.abs_trace[k - 1] * (1 + 1e-12)) << "iteration " << k;
}

TEST(FixedPoint, DampingConvergesWherePlainIterationDiverges) {
  // f(z) = -1.5 z + b: plain iteration oscillates and grows; with damping 0.5 the map becomes
  // z -> -0.25 z + 0.5 b, contractive, with the same fixed point b / 2.5.
  const at::Tensor b = at::tensor({1.0, -2.0, 3.0}, at::kDouble).unsqueeze(0);  // [1, 3]
  const mhd::TensorMap f = [b](const at::Tensor& z) { return -1.5 * z + b; };
  const mhd::SolveLimits limits{200, 1e-10};
  const at::Tensor z0 = at::zeros({1, 3}, at::kDouble);

  const auto plain = make_solver("fixed_point")->solve({f, {}, {}}, z0, limits);
  const auto damped = make_solver("fixed_point", {{"damping", 0.5}})->solve({f, {}, {}}, z0, limits);
  EXPECT_FALSE(plain.info.converged);
  EXPECT_TRUE(damped.info.converged);
  EXPECT_TRUE(at::allclose(damped.z, b / 2.5, 1e-8, 1e-8));
}

TEST(FixedPoint, OverflowingMapStopsEarly) {
  // z^2 + 1 has no real fixed point and overflows float32 after a handful of squarings.
  const mhd::TensorMap f = [](const at::Tensor& z) { return z * z + 1.0; };
  const auto result = make_solver("fixed_point")->solve({f, {}, {}}, at::ones({2, 4}), {1000, 1e-6});
  EXPECT_FALSE(result.info.converged);
  EXPECT_LT(result.info.iterations, 20);
  EXPECT_EQ(extra(result.info, "nonfinite_samples"), 2.0);
}

// ---------------------------------------------------------------- anderson

TEST(Anderson, NeedsFewerEvaluationsThanFixedPoint) {
  at::manual_seed(2);
  const AffineMap map = contractive_affine(8, 64, 0.9, at::kFloat);
  const mhd::SolveLimits limits{500, 1e-5};
  const at::Tensor z0 = at::zeros({8, 64});
  const auto fp = make_solver("fixed_point")->solve({map.f(), {}, {}}, z0, limits);
  const auto aa = make_solver("anderson")->solve({map.f(), {}, {}}, z0, limits);
  ASSERT_TRUE(fp.info.converged);
  ASSERT_TRUE(aa.info.converged);
  EXPECT_LT(aa.info.f_evals, fp.info.f_evals);
  EXPECT_EQ(extra(aa.info, "anderson_fallbacks"), 0.0);
  EXPECT_LT(relative_error(aa.z, map.fixed_point()), 1e-3);
}

TEST(Anderson, FallsBackOnASingularHistory) {
  // f(z) = z + 1 moves every iterate by the same vector, so every residual in the history is the
  // same: with lam = 0 the bordered system is exactly singular (integer arithmetic, no rounding).
  // fallback = raise_lam: the damped step and a raised lam (the Broyden fallback: test_ode_broyden.cpp).
  const mhd::TensorMap shift = [](const at::Tensor& z) { return z + 1.0; };
  const auto result = make_solver("anderson", {{"lam", 0.0}, {"fallback", std::string("raise_lam")}})
                          ->solve({shift, {}, {}}, at::zeros({3, 4}), {10, 1e-6});
  EXPECT_FALSE(result.info.converged);
  EXPECT_EQ(result.info.iterations, 10);
  EXPECT_GE(extra(result.info, "anderson_fallbacks"), 3.0);  // every sample, at least once
  EXPECT_GT(extra(result.info, "anderson_lam_max"), 0.0);    // and its lam was raised
  EXPECT_TRUE(at::isfinite(result.z).all().item<bool>());
}

TEST(Anderson, HistoryOfOneIsPlainIteration) {
  at::manual_seed(3);
  const AffineMap map = contractive_affine(2, 16, 0.9, at::kDouble);
  const mhd::SolveLimits limits{500, 1e-8};
  const at::Tensor z0 = at::zeros({2, 16}, at::kDouble);
  const auto fp = make_solver("fixed_point", {{"damping", 0.7}})->solve({map.f(), {}, {}}, z0, limits);
  const auto anderson = make_solver("anderson", {{"m", std::int64_t{1}}, {"beta", 0.7}});
  const auto aa = anderson->solve({map.f(), {}, {}}, z0, limits);
  EXPECT_EQ(aa.info.iterations, fp.info.iterations);
  EXPECT_TRUE(at::allclose(aa.z, fp.z, 1e-12, 1e-12));
}

}  // namespace
