// The `neural_ode` and `broyden` solver plugins, loaded through the registry as the host loads them:
// the exact fixed point of contractive linear maps, maps without a fixed point (best state back,
// converged = false, no exception), traces and counters, parameter validation, and their use as the
// backward solver of implicit differentiation (gradients equal those with anderson / fixed_point).
// The properties every solver shares are asserted in test_solvers.cpp (EverySolver).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "mhd/kits/broyden.h"
#include "core/implicit.h"
#include "mhd/error.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "mhd/solver.h"
#include "solver_test_maps.h"
#include "plugin_host/registry.h"

namespace {

using solver_test::Overrides;

mhd::PluginRegistry& registry() {
  auto& reg = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_FIXED_POINT, MHD_PLUGIN_ANDERSON, MHD_PLUGIN_NEURAL_ODE, MHD_PLUGIN_BROYDEN})
    reg.load_file(path, mhd::PluginKind::Solver);
  return reg;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides = {}) {
  return solver_test::make_solver_from(registry(), name, overrides);
}

using solver_test::AffineMap;
using solver_test::extra;
using solver_test::matrix_with_norm;

AffineMap affine(std::int64_t batch, std::int64_t dim, const at::Tensor& w) {
  return {w, at::randn({batch, dim}, w.options())};
}

// Eigenvalues evenly spread in [-norm, norm] (symmetric): plain iteration's slowest modes contract by
// only `norm` per step.
at::Tensor near_critical(std::int64_t dim, double norm, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({dim, dim}, opts)));
  return q.matmul(at::diag(at::linspace(-norm, norm, dim, opts))).matmul(q.t());
}

class NewSolver : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { at::manual_seed(0); }
};

// ||z - z*|| <= ||f(z) - z|| / (1 - ||W||) for each row: with ||W|| = 0.9 the error is at most ten
// times the residual, which the stopping rule bounds by tol ||f(z)||.
TEST_P(NewSolver, ReachesTheExactFixedPointOfAContractiveLinearMap) {
  const AffineMap map = affine(4, 24, matrix_with_norm(24, 0.9, at::kDouble));
  const mhd::SolveLimits limits{1000, 1e-10};
  const at::Tensor z0 = at::zeros({4, 24}, at::kDouble);
  const auto result = make_solver(GetParam())->solve({map.f(), {}, {}}, z0, limits);

  ASSERT_TRUE(result.info.converged);
  const at::Tensor exact = map.fixed_point();
  const at::Tensor fz = map.f()(result.z);
  const at::Tensor error = (result.z - exact).norm(2, {1});      // [B]
  const at::Tensor bound = 10.0 * limits.tol * fz.norm(2, {1});  // [B]
  EXPECT_TRUE(error.le(bound * (1 + 1e-6)).all().item<bool>()) << error << bound;
  EXPECT_LT(((result.z - exact).norm() / exact.norm()).item<double>(), 1e-8);
}

TEST_P(NewSolver, ReachesTheFixedPointInFloat32) {
  const AffineMap map = affine(8, 64, near_critical(64, 0.9, at::kFloat));
  const mhd::SolveLimits limits{2000, 1e-5};
  const auto result = make_solver(GetParam())->solve({map.f(), {}, {}}, at::zeros({8, 64}), limits);
  ASSERT_TRUE(result.info.converged);
  const at::Tensor exact = map.fixed_point();
  EXPECT_LT(((result.z - exact).norm() / exact.norm()).item<double>(), 1e-3);
}

// f(z) = z + (1.5 + sin z)(1 + |z|) elementwise has no fixed point, and its relative residual stays
// above 1/7 however large z grows (with f(z) - z bounded instead, a solver that runs off to large |z|
// meets the relative rule there: seen with z + 1 + sin z / 2). The solve must use its whole budget and
// come back with each sample's best state, never throw.
TEST_P(NewSolver, MapWithoutAFixedPointReturnsTheBestStateUnconverged) {
  const mhd::TensorMap f = [](const at::Tensor& z) { return z + (1.5 + at::sin(z)) * (1.0 + z.abs()); };
  const at::Tensor z0 = at::randn({3, 8}, at::kDouble);
  const mhd::SolveLimits limits{40, 1e-6};
  mhd::SolveResult result;
  ASSERT_NO_THROW(result = make_solver(GetParam())->solve({f, {}, {}}, z0, limits));

  EXPECT_FALSE(result.info.converged);
  EXPECT_EQ(result.info.iterations, limits.max_iter);
  EXPECT_TRUE(at::isfinite(result.z).all().item<bool>());
  const mhd::Residuals r = mhd::residuals(result.z, f(result.z));
  EXPECT_TRUE(r.rel.allclose(result.info.final_rel, 1e-12, 1e-14));  // the final residuals are the returned point's
  const double best_seen = *std::min_element(result.info.rel_trace.begin(), result.info.rel_trace.end());
  EXPECT_LE(r.rel.max().item<double>(), best_seen + 1e-12);
  EXPECT_TRUE(r.rel.le(mhd::residuals(z0, f(z0)).rel + 1e-12).all().item<bool>());  // never worse than z0
}

// One trace entry per iteration; the solve stops at the first iteration below tol.
TEST_P(NewSolver, TracesAreConsistent) {
  const AffineMap map = affine(5, 32, matrix_with_norm(32, 0.9, at::kFloat));
  const mhd::SolveLimits limits{500, 1e-5};
  const auto result = make_solver(GetParam())->solve({map.f(), {}, {}}, at::zeros({5, 32}), limits);
  const auto& info = result.info;

  ASSERT_TRUE(info.converged);
  EXPECT_EQ(static_cast<std::int64_t>(info.rel_trace.size()), info.iterations);
  EXPECT_EQ(static_cast<std::int64_t>(info.abs_trace.size()), info.iterations);
  EXPECT_LT(info.rel_trace.back(), limits.tol);
  for (std::size_t k = 0; k + 1 < info.rel_trace.size(); ++k) EXPECT_GE(info.rel_trace[k], limits.tol) << k;
  EXPECT_LT(info.final_rel.max().item<double>(), limits.tol);
  if (GetParam() == "neural_ode") EXPECT_EQ(info.f_evals, 1 + 6 * static_cast<std::int64_t>(extra(info, "ode_trials")));
  if (GetParam() == "broyden")
    EXPECT_EQ(info.f_evals, info.iterations + static_cast<std::int64_t>(extra(info, "broyden_line_search_evals")));
  EXPECT_GT(info.wall_ms, 0.0);
}

using solver_test::ToyLayer;

double relative_difference(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

TEST_P(NewSolver, AsBackwardSolverGivesTheGradientsOfAndersonAndFixedPoint) {
  ToyLayer layer;
  const auto anderson = layer.gradients(*make_solver("anderson"), *make_solver("anderson"), nullptr);
  const auto fixed_point = layer.gradients(*make_solver("anderson"), *make_solver("fixed_point"), nullptr);
  auto info = std::make_shared<mhd::SolverInfo>();
  const auto got = layer.gradients(*make_solver("anderson"), *make_solver(GetParam()), info);

  EXPECT_TRUE(info->converged) << "the backward solve must reach its tolerance";
  EXPECT_GT(info->iterations, 1);
  EXPECT_LT(relative_difference(got.first, anderson.first), 1e-6);
  EXPECT_LT(relative_difference(got.second, anderson.second), 1e-6);
  EXPECT_LT(relative_difference(got.first, fixed_point.first), 1e-6);
  EXPECT_LT(relative_difference(got.second, fixed_point.second), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(OdeAndBroyden, NewSolver, ::testing::Values("neural_ode", "broyden"),
                         [](const auto& p) { return p.param; });

// ---------------------------------------------------------------- parameters

// Each bad value is refused when the solver is built, with one line naming the plugin and the key.
TEST(NewSolverParams, BadValuesAreRefusedNamingTheKey) {
  const std::vector<std::tuple<std::string, std::string, mhd::ParamValue>> cases = {
      {"neural_ode", "rtol", -1e-3},
      {"neural_ode", "atol", -1.0},
      {"neural_ode", "safety", 1.5},
      {"neural_ode", "max_growth", 0.5},
      {"neural_ode", "min_shrink", 1.0},
      {"neural_ode", "h0", 0.0},
      {"neural_ode", "max_rejects", std::int64_t{0}},
      {"neural_ode", "rtol", std::string("tight")},
      {"broyden", "memory", std::int64_t{0}},
      {"broyden", "armijo_c1", 0.9},
      {"broyden", "backtrack", 1.0},
      {"broyden", "max_backtracks", std::int64_t{-1}},
      {"broyden", "memory", 2.5},
  };
  for (const auto& [solver, key, value] : cases) {
    try {
      make_solver(solver, {{key, value}});
      ADD_FAILURE() << solver << "." << key << " = " << mhd::format_param_value(value) << " was accepted";
    } catch (const mhd::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(solver), std::string::npos) << what;
      EXPECT_NE(what.find("'" + key + "'"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
  // rtol = atol = 0 would divide the error estimate by zero.
  EXPECT_THROW(make_solver("neural_ode", {{"rtol", 0.0}, {"atol", 0.0}}), mhd::Error);
}

// ---------------------------------------------------------------- neural_ode

TEST(NeuralOde, OneSampleAdvancesOneAcceptedStepPerIteration) {
  at::manual_seed(1);
  const AffineMap map = affine(1, 16, matrix_with_norm(16, 0.9, at::kDouble));
  const auto result = make_solver("neural_ode")->solve({map.f(), {}, {}}, at::zeros({1, 16}, at::kDouble), {500, 1e-10});
  const auto& info = result.info;
  ASSERT_TRUE(info.converged);
  EXPECT_EQ(extra(info, "ode_accepted_steps"), static_cast<double>(info.iterations - 1));
  EXPECT_EQ(extra(info, "ode_trials"), extra(info, "ode_accepted_steps") + extra(info, "ode_rejected_steps"));
  EXPECT_EQ(info.f_evals, 1 + 6 * static_cast<std::int64_t>(extra(info, "ode_trials")));
  EXPECT_GT(extra(info, "ode_final_step_min"), 0.0);
  EXPECT_EQ(extra(info, "ode_stalled_samples"), 0.0);
}

TEST(NeuralOde, OversizedFirstStepIsRejectedThenShrunk) {
  at::manual_seed(2);
  const AffineMap map = affine(3, 16, matrix_with_norm(16, 0.9, at::kDouble));
  const mhd::SolveLimits limits{500, 1e-8};
  const at::Tensor z0 = at::zeros({3, 16}, at::kDouble);
  const auto big = make_solver("neural_ode", {{"h0", 50.0}, {"rtol", 1e-6}})->solve({map.f(), {}, {}}, z0, limits);
  ASSERT_TRUE(big.info.converged);
  EXPECT_GE(extra(big.info, "ode_rejected_steps"), 3.0);  // every sample rejected its first try at least
  EXPECT_LT(((big.z - map.fixed_point()).norm() / map.fixed_point().norm()).item<double>(), 1e-6);
}

TEST(NeuralOde, TighterLocalToleranceTakesMoreSteps) {
  at::manual_seed(3);
  const AffineMap map = affine(2, 16, matrix_with_norm(16, 0.9, at::kDouble));
  const mhd::SolveLimits limits{2000, 1e-8};
  const at::Tensor z0 = at::zeros({2, 16}, at::kDouble);
  const auto loose = make_solver("neural_ode", {{"rtol", 1e-2}})->solve({map.f(), {}, {}}, z0, limits);
  const auto tight = make_solver("neural_ode", {{"rtol", 1e-9}, {"atol", 1e-12}})->solve({map.f(), {}, {}}, z0, limits);
  ASSERT_TRUE(loose.info.converged);
  ASSERT_TRUE(tight.info.converged);
  EXPECT_GT(tight.info.iterations, loose.info.iterations);
  EXPECT_LT(extra(tight.info, "ode_final_step_min"), extra(loose.info, "ode_final_step_max"));
}

// With tol = 0 a sample that sits exactly at its fixed point keeps being integrated with zero error:
// its step grows to a cap instead of overflowing to inf (inf * 0 = NaN would end the solve).
TEST(NeuralOde, ExactFixedPointWithZeroTolStaysFinite) {
  const at::Tensor c = at::tensor({1.0, -2.0, 0.5}, at::kDouble).unsqueeze(0);  // [1, 3]
  const mhd::TensorMap f = [c](const at::Tensor& z) { return c.expand_as(z).clone(); };
  const auto result = make_solver("neural_ode")->solve({f, {}, {}}, c.clone(), {400, 0.0});
  EXPECT_EQ(result.info.iterations, 400);
  EXPECT_TRUE(std::isnan(extra(result.info, "nonfinite_samples")));  // never reported
  EXPECT_TRUE(at::equal(result.z, c));
  EXPECT_TRUE(std::isfinite(extra(result.info, "ode_final_step_max")));
}

// dz/dt = f(z) - z = z + 1 carries z away from the fixed point -1 like e^t: the budget runs out and the
// best state comes back, here the start (rel residual (z + 1) / |2 z + 1| is 0.125 at z = -0.9 and
// larger everywhere the flow goes).
TEST(NeuralOde, UnstableFlowReturnsTheStartUnconverged) {
  const mhd::TensorMap f = [](const at::Tensor& z) { return 2.0 * z + 1.0; };
  const at::Tensor z0 = at::full({2, 4}, -0.9, at::kDouble);
  const auto result = make_solver("neural_ode")->solve({f, {}, {}}, z0, {30, 1e-8});
  EXPECT_FALSE(result.info.converged);
  EXPECT_EQ(result.info.iterations, 30);
  EXPECT_TRUE(at::allclose(result.z, z0));
  EXPECT_GT(result.info.rel_trace.back(), result.info.rel_trace.front());
}

// ---------------------------------------------------------------- broyden

TEST(Broyden, FewerEvaluationsThanFixedPointOnANearCriticalMap) {
  at::manual_seed(4);
  const AffineMap map = affine(8, 64, near_critical(64, 0.95, at::kFloat));
  const mhd::SolveLimits limits{2000, 1e-5};
  const at::Tensor z0 = at::zeros({8, 64});
  const auto fp = make_solver("fixed_point")->solve({map.f(), {}, {}}, z0, limits);
  const auto br = make_solver("broyden")->solve({map.f(), {}, {}}, z0, limits);
  ASSERT_TRUE(fp.info.converged);
  ASSERT_TRUE(br.info.converged);
  EXPECT_LT(br.info.f_evals, fp.info.f_evals / 2);
  EXPECT_LT(((br.z - map.fixed_point()).norm() / map.fixed_point().norm()).item<double>(), 1e-3);
}

// A secant method needs no contraction: f(z) = A z + b with A's eigenvalues in [1.2, 1.5] has the fixed
// point (I - A)^{-1} b, which plain iteration runs away from.
TEST(Broyden, SolvesAnExpandingLinearMapThatPlainIterationCannot) {
  at::manual_seed(5);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({8, 8}, opts)));
  const AffineMap map{q.matmul(at::diag(at::linspace(1.2, 1.5, 8, opts))).matmul(q.t()), at::randn({2, 8}, opts)};
  const mhd::SolveLimits limits{200, 1e-10};
  const at::Tensor z0 = at::zeros({2, 8}, at::kDouble);
  const auto fp = make_solver("fixed_point")->solve({map.f(), {}, {}}, z0, limits);
  const auto br = make_solver("broyden")->solve({map.f(), {}, {}}, z0, limits);
  EXPECT_FALSE(fp.info.converged);
  ASSERT_TRUE(br.info.converged);
  EXPECT_LT(((br.z - map.fixed_point()).norm() / map.fixed_point().norm()).item<double>(), 1e-8);
}

// The bench's rank_one family: f(z) = tanh(0.99 mean(z) 1 + x) with x_b equal across coordinates, so
// every iterate from 0 is a multiple of 1 and Anderson's residual history is exactly rank one. Without
// regularisation (lam = 0) its bordered system is singular (with fallback = raise_lam it takes damped
// steps, each sample at least once); Broyden's rank-one secant update captures this Jacobian (a
// multiple of 1 1^T) directly.
mhd::TensorMap rank_one_map(std::int64_t batch, std::int64_t dim) {
  const at::Tensor x = 0.1 * at::randn({batch, 1}) * at::ones({1, dim});  // [B, D]
  return [x](const at::Tensor& z) { return at::tanh(0.99 * z.mean(1, true) + x); };
}

const Overrides kRaiseLam{{"fallback", std::string("raise_lam")}};
const Overrides kBroyden{{"fallback", std::string("broyden")}};

TEST(Broyden, RankOneMapWhereAndersonsSystemIsSingular) {
  at::manual_seed(8);
  const mhd::TensorMap f = rank_one_map(4, 64);
  const mhd::SolveLimits limits{2000, 1e-4};
  const at::Tensor z0 = at::zeros({4, 64});
  const auto fp = make_solver("fixed_point")->solve({f, {}, {}}, z0, limits);
  const auto plain =
      make_solver("anderson", {{"lam", 0.0}, {"fallback", std::string("raise_lam")}})->solve({f, {}, {}}, z0, limits);
  const auto aa = make_solver("anderson", kRaiseLam)->solve({f, {}, {}}, z0, limits);
  const auto br = make_solver("broyden")->solve({f, {}, {}}, z0, limits);
  ASSERT_TRUE(fp.info.converged);
  ASSERT_TRUE(br.info.converged);
  EXPECT_GE(extra(plain.info, "anderson_fallbacks"), 4.0);
  EXPECT_EQ(extra(aa.info, "anderson_fallbacks"), 0.0);  // lam > 0 keeps the system regular
  EXPECT_LT(br.info.f_evals, aa.info.f_evals);
  EXPECT_LT(br.info.f_evals, plain.info.f_evals);
  EXPECT_LT(3 * br.info.f_evals, fp.info.f_evals);
  EXPECT_LT((br.z - fp.z).abs().max().item<double>(), 1e-3);
}

// ---------------------------------------------------------------- anderson's Broyden fallback

// At the default lam the regularised system is regular, yet the rank-one history is degenerate at
// lam's resolution: with fallback = broyden (and every other parameter at its default) Anderson hands
// the solve to Broyden, logs it, and needs fewer evaluations than raising lam (which, never seeing a
// failed solve, runs the biased regularised steps to the end).
TEST(AndersonFallback, RankOneHistoryHandsTheSolveToBroyden) {
  at::manual_seed(8);
  const mhd::TensorMap f = rank_one_map(4, 64);
  const mhd::SolveLimits limits{2000, 1e-4};
  const at::Tensor z0 = at::zeros({4, 64});
  const auto fp = make_solver("fixed_point")->solve({f, {}, {}}, z0, limits);
  const auto fb = make_solver("anderson", kBroyden)->solve({f, {}, {}}, z0, limits);
  const auto raised = make_solver("anderson", kRaiseLam)->solve({f, {}, {}}, z0, limits);
  ASSERT_TRUE(fb.info.converged);
  ASSERT_TRUE(raised.info.converged);
  EXPECT_EQ(extra(fb.info, "anderson_broyden_fallbacks"), 1.0);
  EXPECT_EQ(extra(fb.info, "anderson_degenerate_samples"), 4.0);
  // Two history entries are the first with a system to solve, and a rank-one pair is already singular.
  EXPECT_EQ(extra(fb.info, "anderson_fallback_iteration"), 1.0);
  EXPECT_EQ(extra(fb.info, "anderson_fallbacks"), 0.0);
  EXPECT_EQ(extra(raised.info, "anderson_broyden_fallbacks"), 0.0);
  EXPECT_LT(fb.info.f_evals, raised.info.f_evals);
  // One set of traces over both phases; the evaluations are the iterations plus Broyden's backtracking.
  EXPECT_EQ(static_cast<std::int64_t>(fb.info.rel_trace.size()), fb.info.iterations);
  const auto backtracking = static_cast<std::int64_t>(extra(fb.info, "broyden_line_search_evals"));
  EXPECT_EQ(fb.info.f_evals, fb.info.iterations + backtracking);
  EXPECT_LT(fb.info.rel_trace.back(), limits.tol);
  EXPECT_LT((fb.z - fp.z).abs().max().item<double>(), 1e-3);
  // The budget is the whole solve's, Broyden's steps included.
  const auto capped = make_solver("anderson", kBroyden)->solve({f, {}, {}}, z0, {4, 1e-12});
  EXPECT_EQ(capped.info.iterations, 4);
  EXPECT_EQ(extra(capped.info, "anderson_broyden_fallbacks"), 1.0);
}

// Well-conditioned maps, float32 and float64: no fallback, and the very same iterates as with
// fallback = raise_lam (the default, and the solver as it was before the fallback existed).
TEST(AndersonFallback, WellConditionedMapsAreUnchanged) {
  at::manual_seed(10);
  const AffineMap lin32 = affine(8, 64, matrix_with_norm(64, 0.9, at::kFloat));
  const AffineMap crit64 = affine(4, 32, near_critical(32, 0.95, at::kDouble));
  const at::Tensor w = near_critical(64, 0.95, at::kFloat), x = at::randn({8, 64});
  const mhd::TensorMap tanh_cell = [w, x](const at::Tensor& z) { return at::tanh(at::addmm(x, z, w.t())); };
  const std::vector<std::tuple<mhd::TensorMap, at::Tensor, mhd::SolveLimits>> cases = {
      {lin32.f(), at::zeros({8, 64}), {500, 1e-5}},
      {tanh_cell, at::zeros({8, 64}), {500, 1e-5}},
      {crit64.f(), at::zeros({4, 32}, at::kDouble), {500, 1e-11}},
  };
  for (const auto& [f, z0, limits] : cases) {
    const auto fb = make_solver("anderson", kBroyden)->solve({f, {}, {}}, z0, limits);
    const auto raised = make_solver("anderson", kRaiseLam)->solve({f, {}, {}}, z0, limits);
    ASSERT_TRUE(fb.info.converged);
    EXPECT_EQ(extra(fb.info, "anderson_broyden_fallbacks"), 0.0);
    EXPECT_EQ(fb.info.f_evals, raised.info.f_evals);
    EXPECT_EQ(fb.info.rel_trace, raised.info.rel_trace);
    EXPECT_TRUE(at::equal(fb.z, raised.z));
  }
}

TEST(AndersonFallback, UnknownFallbackIsRejected) {
  EXPECT_THROW(make_solver("anderson", {{"fallback", std::string("restart")}}), mhd::Error);
}

// The core as another solver would use it on falling back: it continues from a state the caller has
// already evaluated and recorded, appends to the caller's traces, counts max_iter over the whole solve
// and returns through the caller's best iterate.
TEST(BroydenCore, ContinuesACallersSolve) {
  at::manual_seed(9);
  const AffineMap map = affine(3, 16, near_critical(16, 0.95, at::kDouble));
  const mhd::FixedPointProblem problem{map.f(), {}, {}};
  const mhd::SolveLimits limits{200, 1e-10};
  mhd::SolverInfo info;
  mhd::BestIterate best;
  at::Tensor z = at::zeros({3, 16}, at::kDouble), fz;
  for (int k = 0; k < 3; ++k) {  // three plain iterations by "the caller"
    fz = problem.f(z);
    ++info.f_evals;
    const mhd::Residuals r = mhd::residuals(z, fz);
    ASSERT_FALSE(mhd::record_iteration(info, r, limits.tol));
    best.observe(z, r);
    if (k < 2) z = fz;
  }
  mhd::broyden::Core core("test", mhd::broyden::Options{});
  core.run(problem, z, fz, limits, info, best);
  best.finish(info);

  EXPECT_TRUE(info.converged);
  EXPECT_EQ(static_cast<std::int64_t>(info.rel_trace.size()), info.iterations);
  EXPECT_EQ(info.iterations, 3 + core.stats().steps);
  EXPECT_EQ(info.f_evals, info.iterations + core.stats().line_search_evals);
  EXPECT_LT(((best.best() - map.fixed_point()).norm() / map.fixed_point().norm()).item<double>(), 1e-8);

  // The budget is the whole solve's: a caller that has used 3 of 5 iterations leaves the core 2.
  mhd::SolverInfo short_info;
  short_info.iterations = 3;
  mhd::BestIterate short_best;
  short_best.observe(z, mhd::residuals(z, fz));
  mhd::broyden::Core short_core("test", mhd::broyden::Options{});
  short_core.run(problem, z, fz, {5, 1e-10}, short_info, short_best);
  EXPECT_EQ(short_info.iterations, 5);
  EXPECT_EQ(short_core.stats().steps, 2);
}

TEST(Broyden, WithoutLineSearchEveryEvaluationIsAnIteration) {
  at::manual_seed(6);
  const AffineMap map = affine(4, 32, matrix_with_norm(32, 0.9, at::kDouble));
  const auto result = make_solver("broyden", {{"max_backtracks", std::int64_t{0}}})
                          ->solve({map.f(), {}, {}}, at::zeros({4, 32}, at::kDouble), {500, 1e-10});
  ASSERT_TRUE(result.info.converged);
  EXPECT_EQ(result.info.f_evals, result.info.iterations);
  EXPECT_EQ(extra(result.info, "broyden_line_search_evals"), 0.0);
  EXPECT_EQ(extra(result.info, "broyden_backtracks"), 0.0);
}

TEST(Broyden, MemoryOfOnePairStillConverges) {
  at::manual_seed(7);
  const AffineMap map = affine(4, 32, matrix_with_norm(32, 0.9, at::kDouble));
  const auto result =
      make_solver("broyden", {{"memory", std::int64_t{1}}})->solve({map.f(), {}, {}}, at::zeros({4, 32}, at::kDouble), {1000, 1e-10});
  ASSERT_TRUE(result.info.converged);
  EXPECT_LT(((result.z - map.fixed_point()).norm() / map.fixed_point().norm()).item<double>(), 1e-8);
}

}  // namespace
