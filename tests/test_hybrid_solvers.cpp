// The batched L-BFGS core (mhd/lbfgs.h) and the solver plugins built on it: `hybrid` (the seeds'
// alternating / simultaneous / cascade modes and their stopping rules) and `lbfgs`.
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "core/implicit.h"
#include "mhd/kits/lbfgs.h"
#include "config/model_options.h"
#include "core/model.h"
#include "plugin_host/registry.h"
#include "mhd/solver.h"
#include "solver_test_maps.h"
#include "study/study.h"
#include "test_plugins_loaded.h"

namespace {

using solver_test::Overrides;

mhd::PluginRegistry& registry() {
  auto& reg = registry_with_all_plugins();
  reg.load_file(MHD_PLUGIN_HYBRID);
  reg.load_file(MHD_PLUGIN_LBFGS);
  return reg;
}

std::shared_ptr<mhd::Solver> make_solver(const std::string& name, const Overrides& overrides = {}) {
  return solver_test::make_solver_from(registry(), name, overrides);
}

using solver_test::extra;

constexpr std::int64_t kBatch = 4;
constexpr std::int64_t kDim = 8;

// f(z) = W z + b row by row with ||W||_2 = 0.5, and the energy
//   E(z) = ||z - f(z)||^2 + mu ||z - c||^2,   grad E = 2 (I - W)^T (z - f(z)) + 2 mu (z - c),
// whose minimiser is the fixed point z* when mu = 0 and z_E = (M + mu I)^{-1} (M z* + mu c),
// M = (I - W)^T (I - W), otherwise. Float64 throughout.
struct AffineProblem {
  at::Tensor w, b, c;  // [D, D], [B, D], [B, D]
  double mu = 0.0;

  explicit AffineProblem(double mu_ = 0.0, double norm = 0.5) : mu(mu_) {
    at::manual_seed(11);
    const auto opts = at::TensorOptions().dtype(at::kDouble);
    const at::Tensor a = at::randn({kDim, kDim}, opts);
    w = a * (norm / at::linalg_svdvals(a).max().item<double>());
    b = at::randn({kBatch, kDim}, opts);
    c = 2.0 * at::randn({kBatch, kDim}, opts);
  }
  at::Tensor f(const at::Tensor& z) const { return at::addmm(b, z, w.t()); }
  at::Tensor i_minus_w() const { return at::eye(kDim, w.options()) - w; }
  at::Tensor energy(const at::Tensor& z) const {
    return (z - f(z)).pow(2).sum(1) + mu * (z - c).pow(2).sum(1);
  }
  at::Tensor grad_energy(const at::Tensor& z) const {  // rows: 2 r (I - W) + 2 mu (z - c)
    return 2.0 * (z - f(z)).matmul(i_minus_w()) + 2.0 * mu * (z - c);
  }
  mhd::FixedPointProblem problem(bool with_energy = true) const {
    mhd::FixedPointProblem p;
    p.f = [this](const at::Tensor& z) { return f(z); };
    if (with_energy) {
      p.energy = [this](const at::Tensor& z) { return energy(z); };
      p.grad_energy = [this](const at::Tensor& z) { return grad_energy(z); };
    }
    return p;
  }
  at::Tensor fixed_point() const { return at::linalg_solve(i_minus_w(), b.t()).t(); }
  at::Tensor energy_minimiser() const {
    const at::Tensor m = i_minus_w().t().matmul(i_minus_w());
    const at::Tensor rhs = m.matmul(fixed_point().t()) + mu * c.t();
    return at::linalg_solve(m + mu * at::eye(kDim, w.options()), rhs).t();
  }
  at::Tensor z0() const { return at::zeros({kBatch, kDim}, w.options()); }
};

double max_error(const at::Tensor& z, const at::Tensor& reference) {
  return (z - reference).abs().max().item<double>();
}

// ---------------------------------------------------------------------------------------------
// The L-BFGS core

TEST(LbfgsCore, QuadraticReachesTheAnalyticMinimiser) {
  at::manual_seed(1);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  // A = Q diag(1 .. 50) Q^T: condition number 50. phi(z) = 1/2 z^T A z - b^T z, minimiser A^{-1} b.
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({12, 12}, opts)));
  const at::Tensor a = q.matmul(at::diag(at::linspace(1.0, 50.0, 12, opts))).matmul(q.t());
  const at::Tensor b = at::randn({3, 12}, opts);
  mhd::BatchedObjective phi = [&](const at::Tensor& z) {
    const at::Tensor az = z.matmul(a);
    return mhd::ObjectiveEval{0.5 * (z * az).sum(1) - (b * z).sum(1), az - b, {}};
  };
  mhd::LbfgsOptions o;
  // ||z - z*|| <= ||grad|| / lambda_min = 1e-7. (Much smaller gradients change phi by less than its
  // round-off, where no line search can tell a descent.)
  o.grad_tol = 1e-7;
  const auto res = mhd::lbfgs_minimize(phi, at::zeros({3, 12}, opts), o);
  EXPECT_EQ(res.stop, mhd::LbfgsStop::Converged);
  EXPECT_LE(res.steps, 30) << "12-dimensional quadratic, history 10";
  EXPECT_LT(max_error(res.z, at::linalg_solve(a, b.t()).t()), 1e-7);
}

mhd::ObjectiveEval rosenbrock(const at::Tensor& z) {  // z: [B, 2]
  const at::Tensor x = z.select(1, 0), y = z.select(1, 1);
  const at::Tensor value = (1 - x).pow(2) + 100 * (y - x * x).pow(2);
  const at::Tensor gx = -2 * (1 - x) - 400 * x * (y - x * x);
  const at::Tensor gy = 200 * (y - x * x);
  return {value, at::stack({gx, gy}, 1), {}};
}

TEST(LbfgsCore, RosenbrockInFewIterations) {
  const at::Tensor starts = at::tensor({-1.2, 1.0, 0.0, 0.0, 1.5, 2.0}, at::kDouble).view({3, 2});
  mhd::LbfgsOptions o;
  o.grad_tol = 1e-8;
  const auto res = mhd::lbfgs_minimize(rosenbrock, starts, o);
  EXPECT_EQ(res.stop, mhd::LbfgsStop::Converged);
  EXPECT_LT(res.steps, 60) << "the classic start (-1.2, 1) takes 30-40 quasi-Newton steps";
  EXPECT_LT(max_error(res.z, at::ones_like(starts)), 1e-6);
}

TEST(LbfgsCore, RowsAreIndependentProblems) {
  const at::Tensor starts = at::tensor({-1.2, 1.0, 0.0, 0.0, 1.5, 2.0}, at::kDouble).view({3, 2});
  mhd::LbfgsOptions o;
  o.grad_tol = 1e-8;
  const at::Tensor together = mhd::lbfgs_minimize(rosenbrock, starts, o).z;
  for (std::int64_t i = 0; i < 3; ++i) {
    const at::Tensor alone = mhd::lbfgs_minimize(rosenbrock, starts.narrow(0, i, 1), o).z;
    EXPECT_LT(max_error(together.narrow(0, i, 1), alone), 1e-12) << "row " << i;
  }
}

TEST(LbfgsCore, SkipsPairsWithoutPositiveCurvature) {
  // phi(x) = x^4/4 - x^2/2 is concave around 0: the first step from 0.05 outwards has s^T y < 0.
  mhd::BatchedObjective phi = [](const at::Tensor& z) {
    return mhd::ObjectiveEval{(z.pow(4) / 4 - z.pow(2) / 2).sum(1), z.pow(3) - z, {}};
  };
  mhd::LbfgsOptions o;
  o.grad_tol = 1e-10;
  const auto res = mhd::lbfgs_minimize(phi, at::full({1, 1}, 0.05, at::kDouble), o);
  EXPECT_GE(res.skipped_pairs, 1);
  EXPECT_NEAR(res.z.item<double>(), 1.0, 1e-8) << "still reaches the minimum at x = 1";
}

TEST(LbfgsCore, ObserverFreezesAndStopsSamples) {
  const at::Tensor starts = at::tensor({-1.2, 1.0, 0.0, 0.0}, at::kDouble).view({2, 2});
  int calls = 0;
  at::Tensor frozen_at;
  mhd::LbfgsObserver observer = [&](const at::Tensor& z, const mhd::ObjectiveEval&) {
    ++calls;
    if (calls == 1) frozen_at = z.select(0, 1).clone();
    return at::tensor({0, 1}).to(at::kBool);  // row 1 never moves
  };
  mhd::LbfgsOptions o;
  o.grad_tol = 1e-8;
  const auto res = mhd::lbfgs_minimize(rosenbrock, starts, o, observer);
  EXPECT_TRUE(res.z.select(0, 1).equal(frozen_at));
  EXPECT_LT(max_error(res.z.select(0, 0), at::ones({2}, at::kDouble)), 1e-6);
  EXPECT_EQ(calls, res.steps + 1) << "once at the start, once per step";
}

TEST(ResidualObjective, GradientIsRMinusJTransposeR) {
  const AffineProblem p;
  const at::Tensor z = at::randn({kBatch, kDim}, at::kDouble);
  const auto ro = mhd::residual_objective([&](const at::Tensor& x) { return p.f(x); }, z);
  const at::Tensor r = z - p.f(z);
  EXPECT_LT(max_error(ro.grad, r.matmul(p.i_minus_w())), 1e-12);  // rows: r (I - W) = r - J^T r
  EXPECT_LT(max_error(ro.value, 0.5 * r.pow(2).sum(1)), 1e-12);
  const auto detached = mhd::residual_objective([&](const at::Tensor& x) { return p.f(x).detach(); }, z);
  EXPECT_FALSE(detached.grad.defined()) << "a map without a graph is reported, not differentiated";
}

// ---------------------------------------------------------------------------------------------
// hybrid: every mode reaches the known fixed point

class HybridModes : public ::testing::TestWithParam<std::string> {};

TEST_P(HybridModes, ReachTheFixedPointOfAContractiveAffineMap) {
  const AffineProblem p;  // mu = 0: the energy's minimum is the fixed point
  auto solver = make_solver("hybrid", {{"mode", GetParam()}, {"eta", 0.1}, {"grad_tol", 1e-12}, {"plateau_tol", 0.0}});
  at::NoGradGuard no_grad;
  const auto res = solver->solve(p.problem(), p.z0(), {300, 1e-9});
  EXPECT_TRUE(res.info.converged) << "final rel residual " << res.info.rel_trace.back();
  EXPECT_LT(max_error(res.z, p.fixed_point()), 1e-7);
  EXPECT_LT(res.info.final_rel.max().item<double>(), 1e-9) << "reported residuals are the returned point's";
  EXPECT_EQ(static_cast<std::int64_t>(res.info.rel_trace.size()), res.info.iterations);
  EXPECT_EQ(static_cast<std::int64_t>(res.info.energy_trace.size()), res.info.iterations);
}

TEST_P(HybridModes, WithoutEnergyStillSolvesTheFixedPoint) {
  const AffineProblem p;
  auto solver = make_solver("hybrid", {{"mode", GetParam()}, {"fp_share", 0.05}});
  at::NoGradGuard no_grad;
  const auto res = solver->solve(p.problem(false), p.z0(), {200, 1e-10});
  EXPECT_TRUE(res.info.converged);
  EXPECT_EQ(extra(res.info, "stop_rule"), 1.0) << "the residual rule";
  EXPECT_LT(max_error(res.z, p.fixed_point()), 1e-8);
  EXPECT_EQ(extra(res.info, "energy_evals"), 0.0);
  if (GetParam() == "cascade") EXPECT_GT(extra(res.info, "lbfgs_steps"), 0.0) << "L-BFGS on the residual";
}

INSTANTIATE_TEST_SUITE_P(Modes, HybridModes, ::testing::Values("alternating", "simultaneous", "cascade"));

TEST(HybridSolver, AlternatingWithoutEnergyIsFixedPointIteration) {
  const AffineProblem p;
  at::NoGradGuard no_grad;
  const auto hybrid = make_solver("hybrid", {{"damping", 0.7}})->solve(p.problem(false), p.z0(), {200, 1e-10});
  const auto plain = make_solver("fixed_point", {{"damping", 0.7}})->solve(p.problem(false), p.z0(), {200, 1e-10});
  EXPECT_EQ(hybrid.info.iterations, plain.info.iterations);
  EXPECT_TRUE(hybrid.z.equal(plain.z));
  EXPECT_EQ(extra(hybrid.info, "energy_steps"), 0.0);
}

TEST(HybridSolver, AlternatingCountsBothStepKinds) {
  const AffineProblem p;
  at::NoGradGuard no_grad;
  const auto res = make_solver("hybrid", {{"eta", 0.1}, {"grad_tol", 0.0}, {"plateau_tol", 0.0}})
                       ->solve(p.problem(), p.z0(), {21, 0.0});
  EXPECT_EQ(res.info.iterations, 21);
  EXPECT_EQ(res.info.f_evals, 21);
  // Iterations 0, 2, ..., 20 take fixed-point steps (the last one's result is never evaluated: the
  // budget ends), 1, 3, ..., 19 energy steps.
  EXPECT_EQ(extra(res.info, "fp_steps"), 11.0);
  EXPECT_EQ(extra(res.info, "energy_steps"), 10.0);
  EXPECT_EQ(extra(res.info, "grad_energy_evals"), 10.0);
  EXPECT_EQ(extra(res.info, "stop_rule"), 0.0) << "max_iter";
}

// ---------------------------------------------------------------------------------------------
// hybrid: each stopping rule fires in the case built for it, and not otherwise

TEST(HybridStopRules, ResidualRule) {
  const AffineProblem p;
  at::NoGradGuard no_grad;
  const auto res = make_solver("hybrid", {{"eta", 0.1}, {"grad_tol", 0.0}, {"plateau_tol", 0.0}})
                       ->solve(p.problem(), p.z0(), {300, 1e-8});
  EXPECT_EQ(extra(res.info, "stop_rule"), 1.0);
  EXPECT_TRUE(res.info.converged);
  EXPECT_LT(res.info.rel_trace.back(), 1e-8);
  // The same solve with tol 0 cannot stop on the residual: it runs to max_iter.
  const auto never = make_solver("hybrid", {{"eta", 0.1}, {"grad_tol", 0.0}, {"plateau_tol", 0.0}})
                         ->solve(p.problem(), p.z0(), {40, 0.0});
  EXPECT_EQ(extra(never.info, "stop_rule"), 0.0);
  EXPECT_EQ(never.info.iterations, 40);
}

TEST(HybridStopRules, EnergyGradientRule) {
  const AffineProblem p(0.5);  // the energy minimum is not the fixed point: the residual rule cannot end it
  at::NoGradGuard no_grad;
  const auto res = make_solver("hybrid", {{"mode", "cascade"}, {"grad_tol", 1e-8}, {"plateau_tol", 0.0}})
                       ->solve(p.problem(), p.z0(), {200, 1e-10});
  EXPECT_EQ(extra(res.info, "stop_rule"), 2.0);
  EXPECT_LT(extra(res.info, "energy_grad_norm"), 1e-8);
  EXPECT_LT(p.grad_energy(res.z).norm(2, {1}).max().item<double>(), 1e-8);
  EXPECT_FALSE(res.info.converged) << "an energy minimum away from the fixed point";
  EXPECT_LT(res.info.iterations, 200);
  // With the rule off the same solve ends some other way.
  const auto off = make_solver("hybrid", {{"mode", "cascade"}, {"grad_tol", 0.0}, {"plateau_tol", 0.0}})
                       ->solve(p.problem(), p.z0(), {60, 1e-10});
  EXPECT_NE(extra(off.info, "stop_rule"), 2.0);
}

TEST(HybridStopRules, PlateauRule) {
  const AffineProblem p;
  at::NoGradGuard no_grad;
  // tol 0 and grad_tol 0: only the plateau can end the solve before max_iter.
  const auto res = make_solver("hybrid", {{"eta", 0.1}, {"grad_tol", 0.0}, {"plateau_tol", 1e-6}, {"patience", 3}})
                       ->solve(p.problem(), p.z0(), {200, 0.0});
  EXPECT_EQ(extra(res.info, "stop_rule"), 3.0);
  ASSERT_GE(res.info.energy_trace.size(), 4u);
  const auto& e = res.info.energy_trace;
  for (std::size_t i = e.size() - 3; i < e.size(); ++i) EXPECT_LT(std::abs(e[i] - e[i - 1]), 1e-6);
  EXPECT_GE(std::abs(e[e.size() - 4] - e[e.size() - 5]), 1e-6) << "and not one iteration earlier";
  const auto off = make_solver("hybrid", {{"eta", 0.1}, {"grad_tol", 0.0}, {"plateau_tol", 0.0}})
                       ->solve(p.problem(), p.z0(), {res.info.iterations + 5, 0.0});
  EXPECT_EQ(extra(off.info, "stop_rule"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// hybrid: cascade's refinement lowers the energy where the fixed point and the energy minimum differ

TEST(HybridSolver, CascadeEndsAtLowerEnergyThanFixedPointAlone) {
  const AffineProblem p(0.5);
  at::NoGradGuard no_grad;
  const auto fp = make_solver("fixed_point")->solve(p.problem(), p.z0(), {200, 1e-10});
  const auto cascade = make_solver("hybrid", {{"mode", "cascade"}, {"grad_tol", 1e-9}})
                           ->solve(p.problem(), p.z0(), {200, 1e-10});
  const double e_fp = p.energy(fp.z).mean().item<double>();
  const double e_cascade = p.energy(cascade.z).mean().item<double>();
  const double e_min = p.energy(p.energy_minimiser()).mean().item<double>();
  EXPECT_LT(e_cascade, e_fp - 0.1 * (e_fp - e_min)) << "fixed point " << e_fp << ", minimum " << e_min;
  EXPECT_NEAR(e_cascade, e_min, 1e-9 * std::abs(e_min));
  EXPECT_LT(max_error(cascade.z, p.energy_minimiser()), 1e-6);
  EXPECT_GT(extra(cascade.info, "fp_steps"), 0.0);
  EXPECT_GT(extra(cascade.info, "lbfgs_steps"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// lbfgs plugin

TEST(LbfgsSolver, SolvesTheFixedPointInFewerEvaluationsOnASlowMap) {
  AffineProblem p;
  // W = Q diag(-0.95 .. 0.95) Q^T: plain iteration's slowest modes contract by only 0.95 per step.
  const at::Tensor q = std::get<0>(at::linalg_qr(at::randn({kDim, kDim}, at::kDouble)));
  p.w = q.matmul(at::diag(at::linspace(-0.95, 0.95, kDim, at::kDouble))).matmul(q.t());
  at::NoGradGuard no_grad;
  const auto fp = make_solver("fixed_point")->solve(p.problem(false), p.z0(), {2000, 1e-10});
  const auto lb = make_solver("lbfgs")->solve(p.problem(false), p.z0(), {200, 1e-10});
  EXPECT_TRUE(lb.info.converged);
  // rel residual 1e-10 with sigma_min(I - W) = 0.05: the error is at most ~2e-9 ||z*||.
  EXPECT_LT(max_error(lb.z, p.fixed_point()), 1e-8 * p.fixed_point().abs().max().item<double>());
  EXPECT_LT(lb.info.f_evals * 3, fp.info.f_evals) << "lbfgs " << lb.info.f_evals << " vs " << fp.info.f_evals;
  EXPECT_EQ(extra(lb.info, "stalled"), 0.0);
}

TEST(LbfgsSolver, EnergyWeightMovesTheMinimumTowardsTheEnergyMinimum) {
  const AffineProblem p(0.5);
  at::NoGradGuard no_grad;
  const auto plain = make_solver("lbfgs")->solve(p.problem(), p.z0(), {60, 1e-10});
  // The weighted minimum is not a fixed point: the solve runs to max_iter (or stalls at round-off).
  const auto weighted = make_solver("lbfgs", {{"energy_weight", 1.0}})->solve(p.problem(), p.z0(), {60, 1e-10});
  EXPECT_LT(max_error(plain.z, p.fixed_point()), 1e-8);
  // phi = 1/2 ||r||^2 + E: its minimiser solves (1.5 M + mu I) z = 1.5 M z* + mu c, analytically.
  AffineProblem reweighted(0.5 / 1.5);
  EXPECT_LT(max_error(weighted.z, reweighted.energy_minimiser()), 1e-6);
  EXPECT_LT(p.energy(weighted.z).mean().item<double>(), p.energy(plain.z).mean().item<double>());
}

// ---------------------------------------------------------------------------------------------
// As the backward solver of implicit differentiation, and as the forward solver of the model

using solver_test::ToyLayer;

TEST_P(HybridModes, AsBackwardSolverMatchesAnderson) {
  ToyLayer layer;
  auto anderson = make_solver("anderson");
  auto hybrid = make_solver("hybrid", {{"mode", GetParam()}});
  const auto reference = layer.gradients(*make_solver("anderson"), *anderson, nullptr);
  auto info = std::make_shared<mhd::SolverInfo>();
  const auto got = layer.gradients(*make_solver("anderson"), *hybrid, info);
  EXPECT_TRUE(info->converged);
  EXPECT_LT((got.first - reference.first).norm().item<double>() / reference.first.norm().item<double>(), 1e-8);
  EXPECT_LT((got.second - reference.second).norm().item<double>() / reference.second.norm().item<double>(), 1e-8);
  // The backward map carries no graph: simultaneous and cascade say they fell back to fixed point.
  EXPECT_EQ(extra(*info, "no_graph_fallback"), GetParam() == "alternating" ? 0.0 : 1.0);
}

TEST(LbfgsSolver, RefusesToBeABackwardSolverWithAClearError) {
  ToyLayer layer;
  auto lbfgs = make_solver("lbfgs");
  try {
    layer.gradients(*make_solver("anderson"), *lbfgs, nullptr);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("backward solver"), std::string::npos) << e.what();
  }
}

const char* kModelStudy = R"(
[study]
name = "hybrid_model_test"
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
residual = false
[backbone]
plugin = "mamba"
d_state = 4
expand = 2
[memory]
plugin = "hopfield"
size = 8
beta = 1.0
[backward]
mode = "implicit"
solver = "hybrid"
max_iter = 40
tol = 1e-6
[train]
steps = 1
)";

TEST_P(HybridModes, ForwardSolverOfOneModelTrainingStep) {
  const std::string solver = "[solver]\nplugin = \"hybrid\"\nmode = \"" + GetParam() + "\"\nmax_iter = 20\ntol = 1e-4\n";
  auto study = mhd::parse_study(std::string(kModelStudy) + solver, "hybrid_model_test.toml", registry());
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(study.trials.front(), 16), registry());
  model.train();
  at::manual_seed(7);
  const at::Tensor tokens = at::randint(16, {4, 8}, at::kLong);
  const at::Tensor targets = at::randint(16, {4 * 8}, at::kLong);
  auto out = model.forward(tokens);
  ASSERT_TRUE(out.energy.total.defined()) << "the energy is on: the hybrid modes use it";
  const at::Tensor loss = at::cross_entropy_loss(out.logits.reshape({-1, 16}), targets) + 0.01 * out.energy.total.mean();
  ASSERT_TRUE(std::isfinite(loss.item<double>()));
  loss.backward();
  EXPECT_GT(out.forward_info.iterations, 0);
  EXPECT_FALSE(std::isnan(extra(out.forward_info, "stop_rule")));
  EXPECT_GT(extra(out.forward_info, "energy_evals"), 0.0);
  EXPECT_GT(out.backward_info->iterations, 0) << "the hybrid backward solve ran";
  std::int64_t with_grad = 0;
  for (const auto& item : model.named_parameters()) {
    if (!item.value().grad().defined()) continue;
    ASSERT_TRUE(at::isfinite(item.value().grad()).all().item<bool>()) << item.key();
    with_grad += item.value().grad().abs().sum().item<double>() > 0.0;
  }
  EXPECT_GT(with_grad, 5);
  // One plain gradient step lowers the loss on this batch.
  {
    at::NoGradGuard no_grad;
    for (auto& p : model.parameters())
      if (p.grad().defined()) p.sub_(0.05 * p.grad());
  }
  auto after = model.forward(tokens);
  const at::Tensor loss_after =
      at::cross_entropy_loss(after.logits.reshape({-1, 16}), targets) + 0.01 * after.energy.total.mean();
  EXPECT_LT(loss_after.item<double>(), loss.item<double>());
}

}  // namespace
